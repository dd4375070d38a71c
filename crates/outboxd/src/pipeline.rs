//! The pipeline: events in commit order → records → sink, and delivery
//! outcomes → `AckTracker` → acknowledgements to the source.
//!
//! One task does everything that has an order: it reads events in commit
//! order, hands each record to the sink before reading the next (a sink that
//! waits for room therefore stops reading the slot), and applies delivery
//! outcomes to the tracker. It works with any [`EventSource`] and any
//! [`Sink`]: nothing here names a broker.
//!
//! # Progress tracking
//!
//! What is acknowledged to Postgres is decided in three layers, each of which
//! can only hold the position back, never move it past the layer before:
//!
//! 1. **The delivered prefix** ([`outbox_core::AckTracker`]): the `end_lsn`
//!    of the longest prefix of transactions whose every record the sink
//!    reported delivered. Reports arrive in any order; a transaction with no
//!    outbox rows counts as delivered once its predecessors are. A record that
//!    fails for good stops the prefix before its transaction, for good.
//! 2. **The replay window** ([`outbox_core::RetentionWindow`]): a delivered
//!    position is released to the slot only once it is `retention.duration`
//!    old and `retention.bytes` behind the received position, so the WAL after
//!    it stays on the server for `outboxd replay`. The checkpoint still records
//!    the delivered prefix, so a restart re-sends nothing.
//! 3. **The idle advance** (in `pg-replication`): while nothing is in flight
//!    and no transaction is open, the stream itself may report the server's
//!    keepalive position, past transactions without outbox rows; it never
//!    does while the pipeline holds anything unacknowledged.
//!
//! The stream sends the acknowledged position as both `write` and `flush` of
//! its standby status updates on its own timer (see `pg-replication`'s
//! `progress` module and PostgreSQL's [streaming replication protocol]), so a
//! stalled sink never times the walsender out.
//!
//! A record that can never be delivered is handled by the policy: `stop`
//! (nothing past it is acknowledged; the run ends with an error naming the
//! event) or `dead-letter` (the record goes to the dead-letter destination
//! with the error in its headers; its transaction counts as delivered when
//! that record is). A failure that is not the record's own — a mapped column
//! missing from the table, which every later row shares — stops under either
//! policy: dead-lettering it would dead-letter the whole stream.
//!
//! [streaming replication protocol]: https://www.postgresql.org/docs/current/protocol-replication.html

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outbox_core::{
    header, AckTracker, ColumnLookup, ColumnMapping, Delivery, DeliveryError, ErrorClass, Lsn, MappingError,
    PermanentReason, Position, Record, RetentionWindow, Routing, Sink, TxSeq,
};
use pg_replication::{ReplicationEvent, StoredValue};
use pgoutput::PgTimestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{Checkpoint, LastEvent};
use crate::checkpoint_store::Checkpoints;
use crate::checkpoint_writer::CheckpointWriter;
use crate::config::PermanentErrorPolicy;
use crate::maintenance::KeptRows;
use crate::metrics::Metrics;
use crate::source::EventSource;

/// Header with the error of a dead-lettered record.
pub const DLQ_ERROR_HEADER: &str = "outboxd.error";
/// Header with the destination the dead-lettered record was meant for.
pub const DLQ_TOPIC_HEADER: &str = "outboxd.original_topic";
/// Header with the class of the error (`too_large`, `unroutable`, …).
pub const DLQ_REASON_HEADER: &str = "outboxd.error_reason";

/// How the pipeline behaves.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Rows to events.
    pub mapping: ColumnMapping,
    /// Events to records.
    pub routing: Routing,
    /// Permanent-error policy.
    pub policy: PermanentErrorPolicy,
    /// Dead-letter destination (a topic, a routing key, …).
    pub dead_letter_topic: String,
    /// How long shutdown waits for outstanding deliveries.
    pub drain_timeout: Duration,
    /// Minimum time between checkpoint writes while running (one is always
    /// written at the end).
    pub checkpoint_interval: Duration,
    /// Name of the outbox table(s), for error messages.
    pub tables: String,
    /// The replay window: how far the slot's confirmed position stays behind
    /// what was delivered.
    pub retention: Retention,
}

/// The replay window's size (see [`RetentionWindow`]). Zero for both:
/// acknowledge at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Minimum age of an acknowledged position.
    pub duration: Duration,
    /// Minimum WAL distance between the acknowledged and the received position.
    pub bytes: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records handed to the sink.
    pub sent: u64,
    /// Records the destination acknowledged.
    pub delivered: u64,
    /// Records sent to the dead-letter destination.
    pub dead_lettered: u64,
    /// The end of the delivered prefix.
    pub confirmed: Lsn,
}

/// Why a run stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A record could not be delivered and the policy is `stop` (or the
    /// failure is not the record's own).
    #[error(
        "outbox event id={id} from {table} (commit LSN {commit_lsn}, index {index}) cannot be delivered: {error}; \
         nothing from this transaction on was acknowledged (slot confirmed at {confirmed}). Fix the cause \
         and restart{hint}"
    )]
    Undeliverable {
        /// The event id (or `?` if the row had none).
        id: String,
        /// The outbox table(s).
        table: String,
        /// Commit LSN of its transaction.
        commit_lsn: Lsn,
        /// Index in the transaction.
        index: u64,
        /// What went wrong.
        error: String,
        /// Where acknowledgements stopped.
        confirmed: Lsn,
        /// What else the operator can do.
        hint: &'static str,
    },
    /// The sink is broken (a fatal error).
    #[error("the sink failed: {0}; nothing after {1} was acknowledged")]
    Sink(DeliveryError, Lsn),
    /// The replication stream failed.
    #[error(transparent)]
    Replication(#[from] pg_replication::ReplicationError),
    /// The stream ended without being asked to.
    #[error("the replication stream ended unexpectedly")]
    StreamEnded,
    /// Shutdown could not drain in time.
    #[error("{0} records were still undelivered after the drain timeout; they will be re-sent on restart")]
    DrainTimeout(usize),
    /// Internal bookkeeping failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// The checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(anyhow::Error),
    /// This instance may have lost the slot's lease; it stopped without
    /// confirming anything more (another instance takes over).
    #[error("the lease may be lost ({0}): stopped without confirming anything more; a standby takes over")]
    LeaseLost(String),
    /// A row dead-lettered without its value could not be marked as kept
    /// from cleanup (nothing from its transaction on was acknowledged).
    #[error("outbox event id={0} was dead-lettered without its value, but {1:#}")]
    Keep(String, anyhow::Error),
}

/// A record that failed for good, for the stop message.
#[derive(Debug)]
struct Failure {
    id: String,
    position: Position,
    error: String,
    /// Whether dead-lettering could have gone on past it.
    record_only: bool,
}

/// What the tracker keeps of each transaction in flight.
#[derive(Debug)]
struct TxData {
    commit_time: PgTimestamp,
    /// Its last outbox event so far (the checkpoint names the last delivered one).
    last: Option<LastEvent>,
    /// Ids of its dead-letter records awaiting their outcome: if one fails
    /// too, the run stops instead of dead-lettering it again.
    dead_letters: Vec<String>,
}

/// The running pipeline.
pub struct Pipeline<S> {
    options: PipelineOptions,
    sink: S,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    tracker: AckTracker<TxData>,
    window: RetentionWindow,
    checkpoint: Option<CheckpointWriter>,
    last_checkpoint: Instant,
    checkpointed: Lsn,
    /// The open transaction and its commit LSN.
    open: Option<(TxSeq, Lsn)>,
    failure: Option<Failure>,
    summary: Summary,
    metrics: Arc<Metrics>,
    /// End of the delivered prefix as last seen by `acknowledge`.
    delivered: Lsn,
    /// The last event of the delivered prefix, for the checkpoint.
    last_delivered: Option<LastEvent>,
    /// Records sent whose outcome has not arrived.
    outstanding: usize,
    /// Where rows dead-lettered without their value are recorded, so cleanup
    /// keeps them (when cleanup runs).
    kept: Option<KeptRows>,
}

impl<S> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Pipeline<S> {
    /// A pipeline starting at `start` (everything before it is delivered).
    /// The sink reports outcomes on `deliveries`.
    pub fn new(
        options: PipelineOptions,
        sink: S,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        start: Lsn,
        checkpoint: Option<Checkpoints>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        // The slot may be behind `start` (a replay window, or a checkpoint
        // written after the last status update): `start` is released to the
        // slot like any delivered position, subject to retention.
        let window = RetentionWindow::new(
            options.retention.duration,
            options.retention.bytes,
            start,
            now.into_std(),
        );
        Pipeline {
            options,
            sink,
            deliveries,
            tracker: AckTracker::new(start),
            window,
            checkpoint: checkpoint.map(CheckpointWriter::spawn),
            last_checkpoint: now,
            checkpointed: start,
            open: None,
            failure: None,
            summary: Summary {
                confirmed: start,
                ..Summary::default()
            },
            metrics,
            delivered: start,
            last_delivered: None,
            outstanding: 0,
            kept: None,
        }
    }

    /// Records rows dead-lettered without their value in `kept` before their
    /// dead-letter record is sent (so before their transaction can be
    /// acknowledged and cleaned up).
    pub fn keep_rows(mut self, kept: KeptRows) -> Self {
        self.kept = Some(kept);
        self
    }

    /// `start` was delivered `age` ago (when the checkpoint was written), so
    /// the replay window behind it ends when it would have without a restart.
    pub fn start_delivered_ago(mut self, age: Duration) -> Self {
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        self.window = RetentionWindow::new(
            self.options.retention.duration,
            self.options.retention.bytes,
            self.delivered,
            at.into_std(),
        );
        self
    }

    /// Runs until `shutdown` resolves (then drains and returns the summary)
    /// or a definite error. The source is shut down either way, after the
    /// final acknowledgement. When `lease_lost` resolves (this instance may no
    /// longer lead), it stops at once and acknowledges nothing more.
    pub async fn run<E: EventSource>(
        mut self,
        mut source: E,
        shutdown: impl Future<Output = ()>,
        lease_lost: impl Future<Output = String>,
    ) -> Result<Summary, PipelineError> {
        let result = self.stream_until(&mut source, shutdown, lease_lost).await;
        if let Err(PipelineError::LeaseLost(reason)) = &result {
            error!(reason = %reason, confirmed = %self.summary.confirmed,
                   "the lease may be lost: stopping without confirming anything more");
        } else {
            // Deliver what can be delivered and acknowledge it.
            let drained = self.drain().await;
            let acknowledged = self.acknowledge(&mut source, true);
            if result.is_ok() {
                drained?;
                acknowledged?;
            }
        }
        let written = match self.checkpoint.take() {
            Some(writer) => writer.finish().await.map_err(PipelineError::Checkpoint),
            None => Ok(()),
        };
        if let Err(err) = source.shutdown().await {
            warn!(error = %err, "replication stream did not shut down cleanly");
        }
        result?;
        written?;
        if let Some(failure) = self.failure.take() {
            return Err(self.undeliverable(failure));
        }
        info!(confirmed = %self.summary.confirmed, sent = self.summary.sent, delivered = self.summary.delivered,
              dead_lettered = self.summary.dead_lettered, "stopped");
        Ok(self.summary)
    }

    async fn stream_until<E: EventSource>(
        &mut self,
        source: &mut E,
        shutdown: impl Future<Output = ()>,
        lease_lost: impl Future<Output = String>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        tokio::pin!(lease_lost);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // Set once shutdown is requested: finish the open transaction (its
        // records may already be at the destination; stopping inside it would
        // leave them unacknowledged and re-sent after the restart), then stop.
        let mut stopping: Option<Instant> = None;
        loop {
            if self.failure.is_some() {
                // Stop reading; what is in flight is drained by the caller.
                return Ok(());
            }
            if let Some(deadline) = stopping {
                if self.open.is_none() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    warn!("shutdown inside a transaction: its records are re-sent after the restart");
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                reason = &mut lease_lost => return Err(PipelineError::LeaseLost(reason)),
                () = &mut shutdown, if stopping.is_none() => {
                    info!("shutdown requested: finish the open transaction, stop reading, drain deliveries");
                    stopping = Some(Instant::now() + self.options.drain_timeout / 2);
                }
                Some(delivery) = self.deliveries.recv() => self.on_delivery(delivery).await?,
                event = source.next() => match event {
                    Some(Ok(event)) => {
                        if !self.on_event(event, shutdown.as_mut(), stopping).await? {
                            warn!("shutdown while the sink had no room (broker unreachable?): stopping \
                                   inside a transaction; its records are re-sent after the restart");
                            return Ok(());
                        }
                    }
                    Some(Err(err)) => return Err(err.into()),
                    None => return Err(PipelineError::StreamEnded),
                },
                _ = tick.tick() => {}
            }
            self.acknowledge(source, false)?;
        }
    }

    /// Handles one event; `false` when shutdown came (or its deadline
    /// passed) while a record waited for room in the sink: the caller stops
    /// reading. `shutdown` is polled only while `stopping` is `None`.
    async fn on_event<F: Future<Output = ()>>(
        &mut self,
        event: ReplicationEvent,
        mut shutdown: std::pin::Pin<&mut F>,
        stopping: Option<Instant>,
    ) -> Result<bool, PipelineError> {
        match event {
            ReplicationEvent::Begin(begin) => {
                if let Some((_, open)) = self.open {
                    return Err(PipelineError::Internal(format!(
                        "a transaction (commit LSN {}) began inside another (commit LSN {open})",
                        begin.commit_lsn
                    )));
                }
                let seq = self.tracker.begin(TxData {
                    commit_time: begin.commit_time,
                    last: None,
                    dead_letters: Vec::new(),
                });
                self.open = Some((seq, begin.commit_lsn));
            }
            ReplicationEvent::Insert(_) | ReplicationEvent::Message(_) => {
                let (seq, _) = self.open_tx()?;
                let commit_time = self.tracker.data_mut(seq).map_err(internal)?.commit_time;
                let Some((position, record)) = to_record(
                    &self.options.mapping,
                    &self.options.routing,
                    &event,
                    Some(commit_time),
                ) else {
                    return Ok(true);
                };
                self.tracker.record(seq).map_err(internal)?;
                let id = match &record {
                    Ok(record) => &record.id,
                    Err(unmappable) => &unmappable.id,
                };
                let data = self.tracker.data_mut(seq).map_err(internal)?;
                note_event(&mut data.last, id, position);
                match record {
                    Ok(record) => {
                        self.metrics.sent(&record.topic, record_bytes(&record));
                        // A sink without room (broker down) may hold the send
                        // for long: SIGTERM must still be heard meanwhile. The
                        // send is cancel-safe: a record is accepted whole or not at all.
                        let sent = tokio::select! {
                            biased;
                            sent = self.sink.send(record, seq) => sent,
                            () = shutdown.as_mut(), if stopping.is_none() => return Ok(false),
                            () = sleep_until(stopping), if stopping.is_some() => return Ok(false),
                        };
                        sent.map_err(|e| PipelineError::Sink(e, self.tracker.confirmed()))?;
                        self.summary.sent += 1;
                        self.outstanding += 1;
                    }
                    Err(Unmappable {
                        id,
                        error,
                        every_row: false,
                    }) => {
                        let error = DeliveryError::permanent(PermanentReason::Malformed, error);
                        self.permanent(seq, None, id, position, error).await?
                    }
                    Err(Unmappable {
                        id,
                        error,
                        every_row: true,
                    }) => {
                        self.tracker.failed(seq).map_err(internal)?;
                        self.stop_at(id, position, error, false)?
                    }
                }
            }
            ReplicationEvent::Commit(commit) => {
                let (seq, _) = self.open_tx()?;
                self.tracker.commit(seq, commit.end_lsn).map_err(internal)?;
                self.open = None;
            }
            other => debug!(?other, "event ignored"),
        }
        Ok(true)
    }

    fn open_tx(&self) -> Result<(TxSeq, Lsn), PipelineError> {
        self.open
            .ok_or_else(|| PipelineError::Internal("an event outside a transaction".into()))
    }

    async fn on_delivery(&mut self, delivery: Delivery) -> Result<(), PipelineError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Err(err) = &delivery.result {
            self.metrics.delivery_error(err.class);
        }
        let dead_letter = {
            let data = self.tracker.data_mut(delivery.tx).map_err(internal)?;
            match data.dead_letters.iter().position(|id| *id == delivery.id) {
                Some(at) => {
                    data.dead_letters.swap_remove(at);
                    true
                }
                None => false,
            }
        };
        let Delivery {
            tx,
            id,
            position,
            result,
            returned,
        } = delivery;
        match result {
            Ok(()) => {
                self.summary.delivered += 1;
                self.metrics.delivered();
                self.tracker.delivered(tx).map_err(internal)
            }
            // A permanent failure: the record's count in the tracker passes
            // to its dead-letter record, or fails the transaction.
            Err(err) if err.class.is_permanent() && !dead_letter => {
                self.permanent(tx, returned, id, position, err).await
            }
            Err(err) => {
                self.tracker.failed(tx).map_err(internal)?;
                match err.class {
                    ErrorClass::Fatal => Err(PipelineError::Sink(err, self.tracker.confirmed())),
                    // The dead-letter destination refused it too: stop, never loop.
                    _ if dead_letter => {
                        let message = format!(
                            "dead-lettering to {} failed too: {}",
                            self.options.dead_letter_topic, err.message
                        );
                        self.stop_at(id, position, message, false)
                    }
                    // Sinks retry those themselves; one reported anyway is not
                    // the record's fault, so it is never dead-lettered: a later
                    // record of the same key could overtake it.
                    _ => {
                        let message = format!("the sink gave up on it: {}", err.message);
                        self.stop_at(id, position, message, false)
                    }
                }
            }
        }
    }

    /// A record that will never be delivered as it is: dead-letter it, or
    /// stop. The record is counted in the tracker as outstanding.
    async fn permanent(
        &mut self,
        seq: TxSeq,
        returned: Option<Record>,
        id: String,
        position: Position,
        error: DeliveryError,
    ) -> Result<(), PipelineError> {
        if self.options.policy == PermanentErrorPolicy::DeadLetter && self.failure.is_none() {
            let dead = dead_letter(&self.options.dead_letter_topic, returned, &id, position, &error);
            if let (None, Some(kept)) = (&dead.value, self.kept.as_mut()) {
                let reason = match error.class {
                    ErrorClass::Permanent { reason } => reason.as_str(),
                    _ => "unknown",
                };
                kept.keep(&id, reason)
                    .await
                    .map_err(|e| PipelineError::Keep(id.clone(), e))?;
            }
            warn!(id = %id, lsn = %position.commit_lsn, index = position.index, error = %error.message,
                  destination = %self.options.dead_letter_topic, "record dead-lettered");
            self.summary.dead_lettered += 1;
            self.metrics.dead_lettered();
            self.metrics.sent(&dead.topic, record_bytes(&dead));
            self.tracker
                .data_mut(seq)
                .map_err(internal)?
                .dead_letters
                .push(id);
            self.sink
                .send(dead, seq)
                .await
                .map_err(|e| PipelineError::Sink(e, self.tracker.confirmed()))?;
            self.outstanding += 1;
            return Ok(());
        }
        self.tracker.failed(seq).map_err(internal)?;
        self.stop_at(id, position, error.message, true)
    }

    /// Stops acknowledging at this record's transaction (the caller marked it
    /// failed in the tracker); the run ends naming the earliest such failure
    /// (a sink that stops after a permanent failure also reports the records
    /// behind it as failed, and those reports may come first).
    fn stop_at(
        &mut self,
        id: String,
        position: Position,
        error: String,
        record_only: bool,
    ) -> Result<(), PipelineError> {
        error!(id = %id, lsn = %position.commit_lsn, index = position.index, error = %error,
               "record cannot be delivered; stopping");
        if self.failure.as_ref().is_none_or(|f| position < f.position) {
            self.failure = Some(Failure {
                id,
                position,
                error,
                record_only,
            });
        }
        Ok(())
    }

    fn undeliverable(&self, failure: Failure) -> PipelineError {
        let hint = if failure.record_only && self.options.policy == PermanentErrorPolicy::Stop {
            ", or set sink.on_permanent_error = \"dead-letter\""
        } else {
            ""
        };
        PipelineError::Undeliverable {
            id: failure.id,
            table: self.options.tables.clone(),
            commit_lsn: failure.position.commit_lsn,
            index: failure.position.index,
            error: failure.error,
            confirmed: self.summary.confirmed,
            hint,
        }
    }

    /// Waits for outstanding deliveries (up to the drain timeout).
    async fn drain(&mut self) -> Result<(), PipelineError> {
        let deadline = Instant::now() + self.options.drain_timeout;
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Some(delivery)) => self.on_delivery(delivery).await?,
                Ok(None) => break,
                Err(_) => return Err(PipelineError::DrainTimeout(self.outstanding)),
            }
        }
        Ok(())
    }

    /// Acknowledges what the replay window releases of the delivered prefix;
    /// hands the checkpoint writer the delivered prefix now and then (always
    /// when `last`).
    fn acknowledge<E: EventSource>(&mut self, source: &mut E, last: bool) -> Result<(), PipelineError> {
        let now = Instant::now();
        for (end_lsn, data) in self.tracker.take_confirmed() {
            self.metrics.confirmed(data.commit_time);
            if data.last.is_some() {
                self.last_delivered = data.last;
            }
            self.delivered = end_lsn;
        }
        if self.delivered > self.summary.confirmed {
            self.summary.confirmed = self.delivered;
            self.metrics.acked(self.delivered);
            self.window.delivered(self.delivered, now.into_std());
        }
        if let Some(target) = self.window.release(source.received(), now.into_std()) {
            source.ack(target);
        }
        // The checkpoint records what was delivered (not the released position).
        let due = last || now.duration_since(self.last_checkpoint) >= self.options.checkpoint_interval;
        if due && self.delivered > self.checkpointed {
            if let Some(writer) = &self.checkpoint {
                writer
                    .write(Checkpoint::now(self.delivered, self.last_delivered.clone()))
                    .map_err(PipelineError::Checkpoint)?;
            }
            self.checkpointed = self.delivered;
            self.last_checkpoint = now;
        }
        Ok(())
    }
}

/// An outbox row or message that cannot become a record (a mapped column
/// missing or NULL, a message that is not a JSON object, an invalid topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    /// The event id if it could be read, else `?`.
    pub id: String,
    /// What is wrong, naming the table or message.
    pub error: String,
    /// The cause is the table, not the row (a mapped column is missing): every
    /// later row fails the same way, so it is never dead-lettered.
    pub every_row: bool,
}

/// The record for an outbox insert or outbox message (`None` for other
/// events), with the event's position. `commit_time`: of the event's
/// transaction, the record's timestamp unless a timestamp column is mapped.
pub fn to_record(
    mapping: &ColumnMapping,
    routing: &Routing,
    event: &ReplicationEvent,
    commit_time: Option<PgTimestamp>,
) -> Option<(Position, Result<Record, Unmappable>)> {
    let commit_time_ms = commit_time
        .and_then(|t| t.unix_micros())
        .map(|us| us.div_euclid(1000));
    match event {
        ReplicationEvent::Insert(insert) => {
            let position = Position {
                commit_lsn: insert.commit_lsn,
                index: insert.index,
            };
            let source = format!("table {}.{}", insert.relation.namespace, insert.relation.name);
            let type_of = |name: &str| {
                insert
                    .relation
                    .columns
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| c.type_id)
            };
            if let Some(error) = mapping
                .timestamp
                .as_deref()
                .and_then(|column| timestamp_type_error(column, type_of(column)?))
            {
                return unmappable(position, format!("{source}: {error}"), true);
            }
            // Values as stored: a bytea is its bytes, not its hex text.
            let lookup = |name: &str| match insert.stored(name) {
                None => ColumnLookup::Missing,
                Some(Ok(StoredValue::Null)) => ColumnLookup::Null,
                Some(Ok(StoredValue::Bytes(b))) => match type_of(name) {
                    Some(oid::BYTEA) => ColumnLookup::Binary(b),
                    Some(oid::JSON | oid::JSONB | oid::INT2 | oid::INT4 | oid::INT8) => ColumnLookup::Json(b),
                    _ => ColumnLookup::Value(b),
                },
                // Inserts carry every value; treat the impossible as absent.
                Some(Ok(StoredValue::Unchanged)) => ColumnLookup::Missing,
                Some(Err(err)) => ColumnLookup::Malformed(err.to_string()),
            };
            let id = insert
                .column(&mapping.id)
                .and_then(|v| v.as_text())
                .unwrap_or("?")
                .to_owned();
            let name = format!("{}.{}", insert.relation.namespace, insert.relation.name);
            let origin = Origin {
                source: &source,
                name: &name,
                table: true,
                commit_time_ms,
            };
            Some((
                position,
                map_and_route(mapping, routing, position, lookup, id, origin),
            ))
        }
        ReplicationEvent::Message(message) => {
            let position = Position {
                commit_lsn: message.commit_lsn,
                index: message.index,
            };
            let source = format!("logical message {:?}", message.prefix);
            let object: serde_json::Map<String, serde_json::Value> =
                match serde_json::from_slice(&message.content) {
                    Ok(object) => object,
                    Err(err) => {
                        return unmappable(
                            position,
                            format!("the {source} is not a JSON object: {err}"),
                            false,
                        )
                    }
                };
            let lookup = |name: &str| match object.get(name) {
                None => ColumnLookup::Missing,
                Some(serde_json::Value::Null) => ColumnLookup::Null,
                Some(serde_json::Value::String(s)) => ColumnLookup::Value(Bytes::from(s.clone())),
                Some(other) => ColumnLookup::Json(Bytes::from(other.to_string())),
            };
            let id = object
                .get(&mapping.id)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            let origin = Origin {
                source: &source,
                name: &message.prefix,
                table: false,
                commit_time_ms,
            };
            Some((
                position,
                map_and_route(mapping, routing, position, lookup, id, origin),
            ))
        }
        _ => None,
    }
}

/// An event that cannot be mapped before its id could be read.
fn unmappable(
    position: Position,
    error: String,
    every_row: bool,
) -> Option<(Position, Result<Record, Unmappable>)> {
    let id = "?".to_owned();
    Some((position, Err(Unmappable { id, error, every_row })))
}

/// Type OIDs the mapping reads values by (`pg_type.oid`, fixed for built-in types).
mod oid {
    pub(super) const BYTEA: u32 = 17;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const JSON: u32 = 114;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const JSONB: u32 = 3802;
}

/// Why a column of type `type_id` cannot be the record timestamp, if it cannot.
fn timestamp_type_error(column: &str, type_id: u32) -> Option<String> {
    match type_id {
        oid::TIMESTAMPTZ | oid::TIMESTAMP | oid::INT8 | oid::INT4 => None,
        other => Some(format!(
            "the timestamp column {column:?} has type OID {other}; it must be timestamptz, timestamp (read as \
             UTC) or bigint (milliseconds since 1970): change outbox.timestamp or the column's type"
        )),
    }
}

/// Where a row or message comes from.
struct Origin<'a> {
    /// For errors (`table public.outbox`).
    source: &'a str,
    /// The table (`public.outbox`) or message prefix.
    name: &'a str,
    /// The source is a table, whose columns every row shares (a field missing
    /// from one outbox message says nothing of the next).
    table: bool,
    /// Commit time of its transaction (ms since 1970).
    commit_time_ms: Option<i64>,
}

fn map_and_route(
    mapping: &ColumnMapping,
    routing: &Routing,
    position: Position,
    lookup: impl Fn(&str) -> ColumnLookup,
    id: String,
    origin: Origin<'_>,
) -> Result<Record, Unmappable> {
    let Origin {
        source,
        name,
        table,
        commit_time_ms,
    } = origin;
    let mut event = mapping.event_from_row(position, lookup).map_err(|e| Unmappable {
        every_row: table && matches!(e, MappingError::MissingColumn(_)),
        error: format!("{source}: {e}"),
        id: id.clone(),
    })?;
    event.commit_time_ms = commit_time_ms;
    event.source = Some(name.to_owned());
    routing.route(&event, None).map_err(|e| Unmappable {
        id,
        error: format!("{source}: {e}"),
        every_row: false,
    })
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Remembers `id` as the open transaction's last event, reusing the buffer.
fn note_event(last: &mut Option<LastEvent>, id: &str, position: Position) {
    match last {
        Some(last) => {
            last.id.clear();
            last.id.push_str(id);
            last.commit_lsn = position.commit_lsn;
            last.index = position.index;
        }
        None => {
            *last = Some(LastEvent {
                id: id.to_owned(),
                commit_lsn: position.commit_lsn,
                index: position.index,
            })
        }
    }
}

fn record_bytes(record: &Record) -> usize {
    record.key.len() + record.value.as_ref().map_or(0, Bytes::len)
}

fn internal(err: outbox_core::AckError) -> PipelineError {
    PipelineError::Internal(err.to_string())
}

/// The dead-letter record: the original key, value and headers when we have
/// them, plus the error and its reason. A record refused for its size keeps no
/// value (it would be refused again); the payload is still in the outbox table.
fn dead_letter(
    destination: &str,
    original: Option<Record>,
    id: &str,
    position: Position,
    error: &DeliveryError,
) -> Record {
    let mut headers = Vec::new();
    let mut timestamp_ms = None;
    let (key, value, original_topic) = match original {
        Some(record) => {
            headers = record.headers;
            timestamp_ms = record.timestamp_ms;
            let too_large = error.class
                == ErrorClass::Permanent {
                    reason: PermanentReason::TooLarge,
                };
            (
                record.key,
                if too_large { None } else { record.value },
                record.topic,
            )
        }
        None => {
            headers.push((header::ID.to_owned(), Bytes::from(id.to_owned())));
            headers.push((
                header::LSN.to_owned(),
                Bytes::from(position.commit_lsn.to_string()),
            ));
            headers.push((header::INDEX.to_owned(), Bytes::from(position.index.to_string())));
            (Bytes::new(), None, String::new())
        }
    };
    headers.push((DLQ_ERROR_HEADER.to_owned(), Bytes::from(error.message.clone())));
    if let ErrorClass::Permanent { reason } = error.class {
        headers.push((
            DLQ_REASON_HEADER.to_owned(),
            Bytes::from_static(reason.as_str().as_bytes()),
        ));
    }
    headers.push((DLQ_TOPIC_HEADER.to_owned(), Bytes::from(original_topic)));
    Record {
        topic: destination.to_owned(),
        key,
        value,
        headers,
        id: id.to_owned(),
        position,
        timestamp_ms,
        partition: None,
    }
}

#[cfg(test)]
mod tests;
