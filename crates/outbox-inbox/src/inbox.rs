//! Processing one message exactly once: claim and effect in one transaction.
//!
//! # Why this is exactly-once
//!
//! The broker delivers at least once, and the consumer acknowledges a message
//! only after [`Inbox::process`] returned. Inside, one transaction holds:
//!
//! 1. the **claim**: `INSERT INTO inbox (consumer, message_id, ..) ON CONFLICT
//!    DO NOTHING`. Zero rows means a committed claim exists: a duplicate,
//!    rolled back without running the handler. A concurrent transaction
//!    holding the same claim makes this insert wait for it, then see it
//!    (committed: duplicate) or not (rolled back: ours), so two consumers
//!    never both apply one message;
//! 2. the optional **aggregate guard** (see [`Inbox::with_aggregate_guard`]);
//! 3. the **handler**, given the same transaction;
//! 4. `COMMIT`. The claim and the effect become visible together or not at
//!    all. A handler error rolls both back.
//!
//! A crash after the commit and before the acknowledgement re-delivers the
//! message; its committed claim makes it a duplicate. A crash before the
//! commit leaves nothing; the re-delivery processes it.
//!
//! Every statement is sent with its parameter types (`query_typed`): one round
//! trip each, no prepare, nothing cached per connection.

use std::future::Future;
use std::pin::Pin;

use outbox_core::{Lsn, Position};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

use crate::envelope::Envelope;
use crate::error::ProcessError;

/// What a handler returns: a boxed future borrowing the transaction.
///
/// ```ignore
/// inbox.process(&mut client, "billing", &envelope, |tx| Box::pin(async move {
///     tx.execute("update totals set n = n + 1", &[]).await?;
///     Ok::<_, tokio_postgres::Error>(())
/// })).await?;
/// ```
pub type HandlerFuture<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// What happened to a message. In every case the message may be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome<T> {
    /// New: the handler ran and its effect committed with the claim.
    Processed(T),
    /// Already claimed by a committed transaction: nothing was done.
    Duplicate,
    /// Refused by the aggregate guard: the aggregate has already applied an
    /// event at or after this one's position. The handler did not run; the
    /// claim is recorded with outcome `stale`, so the refusal stays visible
    /// and a re-delivery is a duplicate.
    Stale {
        /// Position of the last event applied for the aggregate.
        last: Position,
    },
}

impl<T> Outcome<T> {
    /// Whether the handler ran.
    pub fn is_processed(&self) -> bool {
        matches!(self, Outcome::Processed(_))
    }
}

/// The inbox: processes messages against the tables of [`setup`](crate::setup).
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    aggregate_guard: bool,
}

const CLAIM: &str = "insert into inbox (consumer, message_id, aggregate_id, lsn, event_index) \
                     values ($1, $2, $3, $4::pg_lsn, $5) on conflict (consumer, message_id) do nothing";

// Advances the aggregate's last position only forward; no row back means the
// stored position is at or after this one. The conflict path locks the row,
// so concurrent events of one aggregate are ordered by this statement.
const GUARD: &str =
    "insert into inbox_aggregate as a (consumer, aggregate_id, lsn, event_index, message_id) \
                     values ($1, $2, $3::pg_lsn, $4, $5) \
                     on conflict (consumer, aggregate_id) do update \
                     set lsn = excluded.lsn, event_index = excluded.event_index, \
                         message_id = excluded.message_id, updated_at = now() \
                     where (a.lsn, a.event_index) < (excluded.lsn, excluded.event_index) \
                     returning 1";

const LAST_APPLIED: &str = "select (lsn - '0/0'::pg_lsn)::int8, event_index from inbox_aggregate \
                            where consumer = $1 and aggregate_id = $2";

const MARK_STALE: &str = "update inbox set outcome = 'stale' where consumer = $1 and message_id = $2";

impl Inbox {
    /// An inbox that deduplicates by message id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also refuse stale events: an event of an aggregate whose position is at
    /// or before the last one applied for that aggregate (by this consumer)
    /// is not handled ([`Outcome::Stale`]). Dedupe alone cannot see this
    /// case once the older event's claim has been purged, or when the same
    /// change arrives under another id; with the guard, a re-delivery of an
    /// old event after a newer one was applied can never overwrite the newer
    /// state. Events without an aggregate or a position are not guarded.
    ///
    /// Positions are outboxd's `(commit LSN, index)`: the order in which the
    /// events' transactions committed, which is the order of the aggregate's
    /// changes. The guard relies on the consumer applying one aggregate's
    /// events in order (one key on one partition, handled in order); an
    /// out-of-order delivery of two *new* events would refuse the older one.
    pub fn with_aggregate_guard(mut self) -> Self {
        self.aggregate_guard = true;
        self
    }

    /// Processes `message` for `consumer`: claims its id and runs `handler`
    /// inside one transaction, then commits (see the module notes). Returns
    /// whether it was processed, a duplicate or stale; on `Err`, nothing was
    /// committed and the message must not be acknowledged.
    pub async fn process<T, E, F>(
        &self,
        client: &mut Client,
        consumer: &str,
        message: &Envelope,
        handler: F,
    ) -> Result<Outcome<T>, ProcessError<E>>
    where
        E: std::fmt::Display,
        F: for<'a> FnOnce(&'a Transaction<'a>) -> HandlerFuture<'a, T, E>,
    {
        let lsn = message.position.map(|p| p.commit_lsn.to_string());
        let index = message
            .position
            .map(|p| {
                i64::try_from(p.index).map_err(|_| ProcessError::IndexOutOfRange {
                    id: message.id.clone(),
                    index: p.index,
                })
            })
            .transpose()?;
        let tx = client.transaction().await.map_err(ProcessError::db("begin"))?;
        let claimed = tx
            .execute_typed(
                CLAIM,
                &[
                    (&consumer, Type::TEXT),
                    (&message.id, Type::TEXT),
                    (&message.aggregate_id, Type::TEXT),
                    (&lsn, Type::TEXT),
                    (&index, Type::INT8),
                ],
            )
            .await
            .map_err(ProcessError::db("claim"))?;
        if claimed == 0 {
            tx.rollback()
                .await
                .map_err(ProcessError::db("rollback of a duplicate"))?;
            tracing::debug!(consumer, id = %message.id, "duplicate message, already processed");
            return Ok(Outcome::Duplicate);
        }
        if self.aggregate_guard {
            if let (Some(aggregate), Some(lsn), Some(index)) = (&message.aggregate_id, &lsn, index) {
                let advanced = tx
                    .query_typed_opt(
                        GUARD,
                        &[
                            (&consumer, Type::TEXT),
                            (aggregate, Type::TEXT),
                            (lsn, Type::TEXT),
                            (&index, Type::INT8),
                            (&message.id, Type::TEXT),
                        ],
                    )
                    .await
                    .map_err(ProcessError::db("aggregate guard"))?;
                if advanced.is_none() {
                    let last = last_applied(&tx, consumer, aggregate).await?;
                    tx.execute_typed(MARK_STALE, &[(&consumer, Type::TEXT), (&message.id, Type::TEXT)])
                        .await
                        .map_err(ProcessError::db("recording a stale event"))?;
                    tx.commit()
                        .await
                        .map_err(ProcessError::db("commit of a stale event"))?;
                    tracing::warn!(
                        consumer,
                        id = %message.id,
                        aggregate,
                        lsn = %lsn,
                        index,
                        last_lsn = %last.commit_lsn,
                        last_index = last.index,
                        "stale event refused: its aggregate already applied a later one"
                    );
                    return Ok(Outcome::Stale { last });
                }
            }
        }
        match handler(&tx).await {
            Ok(value) => {
                tx.commit().await.map_err(ProcessError::db("commit"))?;
                Ok(Outcome::Processed(value))
            }
            Err(err) => {
                // The error that matters is the handler's; a failed rollback
                // leaves nothing committed either (the server aborts it).
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(consumer, id = %message.id, error = %rollback, "rollback after a handler error failed");
                }
                Err(ProcessError::Handler(err))
            }
        }
    }
}

async fn last_applied<E: std::fmt::Display>(
    tx: &Transaction<'_>,
    consumer: &str,
    aggregate: &str,
) -> Result<Position, ProcessError<E>> {
    let row = tx
        .query_typed_one(LAST_APPLIED, &[(&consumer, Type::TEXT), (&aggregate, Type::TEXT)])
        .await
        .map_err(ProcessError::db("reading the aggregate's last position"))?;
    // Both were written from a u64 LSN and a non-negative i64 index.
    let lsn: i64 = row.get(0);
    let index: i64 = row.get(1);
    Ok(Position {
        commit_lsn: Lsn::new(lsn as u64),
        index: index as u64,
    })
}
