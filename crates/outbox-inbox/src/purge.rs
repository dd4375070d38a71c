//! Deleting old claims.

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::error::InboxError;

// ctid = any(array(..)): a TID scan of exactly the rows the index found.
const PURGE_BATCH: &str = "delete from inbox where ctid = any(array(\
                           select ctid from inbox \
                           where processed_at < now() - make_interval(secs => $1) \
                             and ($2::text is null or consumer = $2) \
                           limit $3))";

/// Deletes claims processed more than `older_than` ago (of `consumer`, or of
/// every consumer), `batch_size` rows per statement, each statement its own
/// transaction so locks and WAL stay small. Returns how many were deleted.
///
/// # The dedupe window
///
/// A purged claim no longer deduplicates: a re-delivery of that message
/// afterwards is processed again. So `older_than` must exceed the longest
/// time a message can be re-delivered after it was first processed:
///
/// - the broker's: how long the consumer may stay down or stuck and then
///   re-read from its last committed offset / unacknowledged messages (plus
///   the commit interval);
/// - the relay's: outboxd re-sends what was not acknowledged after a crash,
///   and `outboxd replay` re-publishes anything in its **replay window**
///   (`[retention]`, and the oldest LSN an operator may replay from), and a
///   failover re-publishes rows from the outbox table since the last
///   delivered `created_at`;
/// - any manual re-publication an operator may run.
///
/// Take the longest of these with a margin (days, not minutes). Events with
/// an aggregate and a position are further protected by the aggregate guard
/// (its table is never purged by age), which refuses any re-delivery older
/// than what the aggregate has applied, whatever the window.
pub async fn purge(
    client: &Client,
    older_than: Duration,
    consumer: Option<&str>,
    batch_size: u32,
) -> Result<u64, InboxError> {
    let seconds = older_than.as_secs_f64();
    let limit = i64::from(batch_size.max(1));
    let mut total = 0;
    loop {
        let deleted = client
            .execute_typed(
                PURGE_BATCH,
                &[
                    (&seconds, Type::FLOAT8),
                    (&consumer, Type::TEXT),
                    (&limit, Type::INT8),
                ],
            )
            .await
            .map_err(|e| InboxError::new("purging old claims", e))?;
        total += deleted;
        if deleted < limit as u64 {
            break;
        }
    }
    tracing::info!(deleted = total, older_than_s = seconds, "purged old inbox claims");
    Ok(total)
}
