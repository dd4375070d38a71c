//! The pipeline: replication stream → outbox events → records → sink, and
//! delivery reports → `AckTracker` → acknowledgements to the slot.
//!
//! One task does everything that has an order: it reads events in commit
//! order, sends each record to the sink before reading the next (a full
//! producer queue therefore stops reading the slot), and applies delivery
//! reports to the tracker. Only the tracker's confirmed position — the end of
//! the longest prefix of transactions whose every record was acknowledged by
//! the broker — is ever acknowledged to Postgres or written to the checkpoint.
//!
//! A record that can never be delivered is handled by the policy: `stop`
//! (nothing past it is acknowledged; the run ends with an error naming the
//! event) or `dead-letter` (the record goes to the dead-letter topic with the
//! error in its headers; its transaction counts as delivered when that
//! record is).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outbox_core::{
    header, AckTracker, ColumnLookup, ColumnMapping, Delivery, DeliveryError, ErrorClass, Lsn, Position,
    Record, Routing, Sink, TxSeq,
};
use pg_replication::{AckHandle, ReplicationEvent, ReplicationStream};
use pgoutput::ColumnValue;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{Checkpoint, CheckpointStore, LastEvent};
use crate::config::PermanentErrorPolicy;
use crate::metrics::Metrics;

/// Header with the error of a dead-lettered record.
pub const DLQ_ERROR_HEADER: &str = "outboxd.error";
/// Header with the topic the dead-lettered record was meant for.
pub const DLQ_TOPIC_HEADER: &str = "outboxd.original_topic";

/// How the pipeline behaves.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Rows to events.
    pub mapping: ColumnMapping,
    /// Events to records.
    pub routing: Routing,
    /// Permanent-error policy.
    pub policy: PermanentErrorPolicy,
    /// Dead-letter topic.
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

/// The replay window. The slot is acknowledged only up to a delivered
/// position that is at least `duration` old and at least `bytes` of WAL
/// behind the received position, so WAL after it stays on the server and
/// `outboxd replay` can re-read it. The checkpoint still records what was
/// delivered, so a restart re-sends nothing. Zero for both: acknowledge at
/// once. Measured against the received position (not the delivered one), so
/// an idle outbox in a busy database still lets the slot move on.
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
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// The last acknowledged position.
    pub confirmed: Lsn,
}

/// Why a run stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A record could not be delivered and the policy is `stop`.
    #[error(
        "outbox event id={id} from {table} (commit LSN {commit_lsn}, index {index}) cannot be delivered: {error}; \
         nothing from this transaction on was acknowledged (slot confirmed at {confirmed}). Fix the cause \
         and restart, or set kafka.on_permanent_error = \"dead-letter\""
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
    },
    /// The sink is broken (fatal producer error).
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
}

/// A record that failed for good, for the stop message.
#[derive(Debug)]
struct Failure {
    id: String,
    position: Position,
    error: String,
}

/// The running pipeline.
pub struct Pipeline<S> {
    options: PipelineOptions,
    sink: S,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    tracker: AckTracker,
    ack: AckHandle,
    checkpoint: Option<CheckpointStore>,
    last_checkpoint: Instant,
    checkpointed: Lsn,
    acked: Lsn,
    open: Option<(TxSeq, Lsn)>,
    failure: Option<Failure>,
    summary: Summary,
    metrics: Arc<Metrics>,
    /// Delivered positions not yet acknowledged because of retention, with
    /// when they were delivered (at most one entry per 100 ms).
    history: VecDeque<(Lsn, Instant)>,
    delivered: Lsn,
    stream_stats: Option<Arc<pg_replication::StreamStats>>,
    /// Records sent whose delivery report has not arrived.
    outstanding: usize,
    /// The last event of the open transaction.
    open_last: Option<LastEvent>,
    /// The last event of each committed transaction not yet confirmed, in
    /// stream order (one entry per transaction in flight).
    committed_last: VecDeque<(Lsn, LastEvent)>,
    /// The last event of the confirmed prefix, for the checkpoint.
    last_delivered: Option<LastEvent>,
    /// Dead-letter records awaiting their report, by transaction and event
    /// id: if one fails too, the run stops instead of dead-lettering it again.
    dead_letters: HashSet<(TxSeq, String)>,
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
    pub fn new(
        options: PipelineOptions,
        sink: S,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        ack: AckHandle,
        start: Lsn,
        checkpoint: Option<CheckpointStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pipeline {
            options,
            sink,
            deliveries,
            tracker: AckTracker::new(start),
            ack,
            checkpoint,
            last_checkpoint: Instant::now(),
            checkpointed: start,
            // The slot may be behind `start` (a replay window, or a
            // checkpoint written after the last status update): `start` is
            // acknowledged like any delivered position, subject to retention.
            acked: Lsn::ZERO,
            open: None,
            failure: None,
            summary: Summary {
                confirmed: start,
                ..Summary::default()
            },
            metrics,
            history: VecDeque::from([(start, Instant::now())]),
            delivered: start,
            stream_stats: None,
            outstanding: 0,
            open_last: None,
            committed_last: VecDeque::new(),
            last_delivered: None,
            dead_letters: HashSet::new(),
        }
    }

    /// `start` was delivered `age` ago (when the checkpoint was written), so
    /// the replay window behind it ends when it would have without a restart.
    pub fn start_delivered_ago(mut self, age: Duration) -> Self {
        if let Some(front) = self.history.front_mut() {
            front.1 = Instant::now().checked_sub(age).unwrap_or(front.1);
        }
        self
    }

    /// Runs until `shutdown` resolves (then drains and returns the summary)
    /// or a definite error. The stream is shut down either way, after the
    /// final acknowledgement.
    pub async fn run(
        mut self,
        mut stream: ReplicationStream,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary, PipelineError> {
        self.stream_stats = Some(stream.stats());
        let result = self.stream_until(&mut stream, shutdown).await;
        // Whatever happened, deliver what can be delivered and acknowledge it.
        let drained = self.drain().await;
        self.acknowledge(true)?;
        if let Err(err) = stream.shutdown().await {
            warn!(error = %err, "replication stream did not shut down cleanly");
        }
        result?;
        drained?;
        if let Some(failure) = self.failure.take() {
            return Err(self.undeliverable(failure));
        }
        info!(confirmed = %self.summary.confirmed, sent = self.summary.sent, delivered = self.summary.delivered,
              dead_lettered = self.summary.dead_lettered, "stopped");
        Ok(self.summary)
    }

    async fn stream_until(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // Set once shutdown is requested: finish the open transaction (its
        // records may already be in Kafka; stopping inside it would leave
        // them unacknowledged and re-sent after the restart), then stop.
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if self.failure.is_some() {
                // Stop reading; what is in flight is drained by the caller.
                return Ok(());
            }
            if let Some(deadline) = stopping {
                if self.open.is_none() {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    warn!("shutdown inside a transaction: its records are re-sent after the restart");
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown, if stopping.is_none() => {
                    info!("shutdown requested: finish the open transaction, stop reading, drain deliveries");
                    stopping = Some(tokio::time::Instant::now() + self.options.drain_timeout / 2);
                }
                Some(delivery) = self.deliveries.recv() => self.on_delivery(delivery).await?,
                event = stream.next() => match event {
                    Some(Ok(event)) => {
                        if !self.on_event(event, shutdown.as_mut(), stopping).await? {
                            warn!("shutdown while the producer queue is full (broker unreachable?): stopping \
                                   inside a transaction; its records are re-sent after the restart");
                            return Ok(());
                        }
                    }
                    Some(Err(err)) => return Err(err.into()),
                    None => return Err(PipelineError::StreamEnded),
                },
                _ = tick.tick() => {}
            }
            self.acknowledge(false)?;
        }
    }

    /// Handles one event; `false` when shutdown came (or its deadline
    /// passed) while a record waited for room in the sink: the caller stops
    /// reading. `shutdown` is polled only while `stopping` is `None`.
    async fn on_event<F: Future<Output = ()>>(
        &mut self,
        event: ReplicationEvent,
        mut shutdown: std::pin::Pin<&mut F>,
        stopping: Option<tokio::time::Instant>,
    ) -> Result<bool, PipelineError> {
        match event {
            ReplicationEvent::Begin(begin) => {
                if let Some((_, open)) = self.open {
                    return Err(PipelineError::Internal(format!(
                        "a transaction (commit LSN {}) began inside another (commit LSN {open})",
                        begin.commit_lsn
                    )));
                }
                let seq = self.tracker.begin();
                self.open = Some((seq, begin.commit_lsn));
            }
            ReplicationEvent::Insert(_) | ReplicationEvent::Message(_) => {
                let (seq, _) = self.open_tx()?;
                self.tracker.record(seq).map_err(internal)?;
                let Some((position, record)) =
                    to_record(&self.options.mapping, &self.options.routing, &event)
                else {
                    return Ok(true);
                };
                let id = match &record {
                    Ok(record) => &record.id,
                    Err(unmappable) => &unmappable.id,
                };
                note_event(&mut self.open_last, id, position);
                match record {
                    Ok(record) => {
                        self.metrics.sent(&record.topic, record_bytes(&record));
                        // A full queue (broker down) may hold the send for
                        // long: SIGTERM must still be heard meanwhile. The send
                        // is cancel-safe: a record is enqueued whole or not at all.
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
                    Err(Unmappable { id, error }) => self.permanent(seq, None, id, position, error).await?,
                }
            }
            ReplicationEvent::Commit(commit) => {
                let (seq, _) = self.open_tx()?;
                self.tracker.commit(seq, commit.end_lsn).map_err(internal)?;
                self.metrics.committed(commit.end_lsn, commit.commit_time);
                self.open = None;
                if let Some(last) = self.open_last.take() {
                    self.committed_last.push_back((commit.end_lsn, last));
                }
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
        let dead_letter =
            !self.dead_letters.is_empty() && self.dead_letters.remove(&(delivery.tx, delivery.id.clone()));
        match delivery.result {
            Ok(()) => {
                self.summary.delivered += 1;
                self.metrics.delivered();
                self.tracker.delivered(delivery.tx).map_err(internal)
            }
            Err(err) => match err.class {
                ErrorClass::Fatal => {
                    self.tracker.failed(delivery.tx).map_err(internal)?;
                    Err(PipelineError::Sink(err, self.tracker.confirmed()))
                }
                // The dead-letter topic refused it too: stop, never loop.
                _ if dead_letter => {
                    let message = format!(
                        "dead-lettering to {} failed too: {}",
                        self.options.dead_letter_topic, err.message
                    );
                    self.stop_at(delivery.tx, delivery.id, delivery.position, message)
                }
                // The producer retries those forever (message.timeout.ms=0, unlimited
                // retries); one reported anyway is not the record's fault, so it
                // is never dead-lettered: a later record of the same key could
                // overtake it.
                ErrorClass::Retriable => {
                    let message = format!("the producer gave up on it: {}", err.message);
                    self.stop_at(delivery.tx, delivery.id, delivery.position, message)
                }
                ErrorClass::Permanent => {
                    self.permanent(
                        delivery.tx,
                        delivery.returned,
                        delivery.id,
                        delivery.position,
                        err.message,
                    )
                    .await
                }
            },
        }
    }

    /// A record that will never be delivered as it is: dead-letter it, or stop.
    async fn permanent(
        &mut self,
        seq: TxSeq,
        returned: Option<Record>,
        id: String,
        position: Position,
        error: String,
    ) -> Result<(), PipelineError> {
        if self.options.policy == PermanentErrorPolicy::DeadLetter && self.failure.is_none() {
            let dead = dead_letter(&self.options.dead_letter_topic, returned, &id, position, &error);
            warn!(id = %id, lsn = %position.commit_lsn, index = position.index, error = %error,
                  topic = %self.options.dead_letter_topic, "record dead-lettered");
            self.summary.dead_lettered += 1;
            self.metrics.dead_lettered();
            self.metrics.sent(&dead.topic, record_bytes(&dead));
            self.sink
                .send(dead, seq)
                .await
                .map_err(|e| PipelineError::Sink(e, self.tracker.confirmed()))?;
            self.dead_letters.insert((seq, id));
            self.outstanding += 1;
            return Ok(());
        }
        self.stop_at(seq, id, position, error)
    }

    /// Stops acknowledging at this record's transaction; the run ends with
    /// the first such failure.
    fn stop_at(
        &mut self,
        seq: TxSeq,
        id: String,
        position: Position,
        error: String,
    ) -> Result<(), PipelineError> {
        error!(id = %id, lsn = %position.commit_lsn, index = position.index, error = %error,
               "record cannot be delivered; stopping");
        self.tracker.failed(seq).map_err(internal)?;
        if self.failure.is_none() {
            self.failure = Some(Failure { id, position, error });
        }
        Ok(())
    }

    fn undeliverable(&self, failure: Failure) -> PipelineError {
        PipelineError::Undeliverable {
            id: failure.id,
            table: self.options.tables.clone(),
            commit_lsn: failure.position.commit_lsn,
            index: failure.position.index,
            error: failure.error,
            confirmed: self.summary.confirmed,
        }
    }

    /// Waits for outstanding deliveries (up to the drain timeout).
    async fn drain(&mut self) -> Result<(), PipelineError> {
        let deadline = tokio::time::Instant::now() + self.options.drain_timeout;
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Some(delivery)) => self.on_delivery(delivery).await?,
                Ok(None) => break,
                Err(_) => return Err(PipelineError::DrainTimeout(self.outstanding)),
            }
        }
        Ok(())
    }

    /// Acknowledges the tracker's confirmed position; writes the checkpoint
    /// now and then (always when `last`).
    fn acknowledge(&mut self, last: bool) -> Result<(), PipelineError> {
        let confirmed = self.tracker.confirmed();
        let now = Instant::now();
        if confirmed > self.delivered {
            while self
                .committed_last
                .front()
                .is_some_and(|(end, _)| *end <= confirmed)
            {
                self.last_delivered = self.committed_last.pop_front().map(|(_, last)| last);
            }
            self.delivered = confirmed;
            self.summary.confirmed = confirmed;
            self.metrics.acked(confirmed);
            match self.history.back_mut() {
                Some(back) if now.duration_since(back.1) < Duration::from_millis(100) => {}
                _ => self.history.push_back((confirmed, now)),
            }
        }
        if self.history.back().is_some_and(|back| back.0 < self.delivered)
            && self
                .history
                .back()
                .is_some_and(|back| now.duration_since(back.1) >= Duration::from_millis(100))
        {
            self.history.push_back((self.delivered, now));
        }
        // The newest delivered position old enough and far enough behind.
        let retention = self.options.retention;
        let received = self.stream_stats.as_ref().map_or(Lsn::ZERO, |s| s.received());
        let mut target = None;
        while let Some(&(lsn, at)) = self.history.front() {
            let old_enough = now.duration_since(at) >= retention.duration;
            let far_enough = received.as_u64().saturating_sub(lsn.as_u64()) >= retention.bytes;
            if !(old_enough && far_enough) {
                break;
            }
            target = Some(lsn);
            self.history.pop_front();
        }
        if let Some(target) = target {
            if target > self.acked {
                self.ack.ack(target);
                self.acked = target;
            }
        }
        // The checkpoint records what was delivered (not the retained position).
        let due = last || self.last_checkpoint.elapsed() >= self.options.checkpoint_interval;
        if due && self.delivered > self.checkpointed {
            if let Some(store) = &self.checkpoint {
                store
                    .store(&Checkpoint::now(self.delivered, self.last_delivered.clone()))
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
}

/// The record for an outbox insert or outbox message (`None` for other
/// events), with the event's position.
pub fn to_record(
    mapping: &ColumnMapping,
    routing: &Routing,
    event: &ReplicationEvent,
) -> Option<(Position, Result<Record, Unmappable>)> {
    match event {
        ReplicationEvent::Insert(insert) => {
            let position = Position {
                commit_lsn: insert.commit_lsn,
                index: insert.index,
            };
            let source = format!("table {}.{}", insert.relation.namespace, insert.relation.name);
            let lookup = |name: &str| match insert.column(name) {
                None => ColumnLookup::Missing,
                Some(ColumnValue::Null) => ColumnLookup::Null,
                Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => ColumnLookup::Value(b.clone()),
                // Inserts carry every value; treat the impossible as absent.
                Some(ColumnValue::UnchangedToast) => ColumnLookup::Missing,
            };
            let id = insert
                .column(&mapping.id)
                .and_then(|v| v.as_text())
                .unwrap_or("?")
                .to_owned();
            Some((
                position,
                map_and_route(mapping, routing, position, lookup, id, &source),
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
                        let error = format!("the {source} is not a JSON object: {err}");
                        return Some((
                            position,
                            Err(Unmappable {
                                id: "?".into(),
                                error,
                            }),
                        ));
                    }
                };
            let lookup = |name: &str| match object.get(name) {
                None => ColumnLookup::Missing,
                Some(serde_json::Value::Null) => ColumnLookup::Null,
                Some(serde_json::Value::String(s)) => ColumnLookup::Value(Bytes::from(s.clone())),
                Some(other) => ColumnLookup::Value(Bytes::from(other.to_string())),
            };
            let id = object
                .get(&mapping.id)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            Some((
                position,
                map_and_route(mapping, routing, position, lookup, id, &source),
            ))
        }
        _ => None,
    }
}

fn map_and_route(
    mapping: &ColumnMapping,
    routing: &Routing,
    position: Position,
    lookup: impl Fn(&str) -> ColumnLookup,
    id: String,
    source: &str,
) -> Result<Record, Unmappable> {
    mapping
        .event_from_row(position, lookup)
        .map_err(|e| format!("{source}: {e}"))
        .and_then(|event| routing.route(&event, None).map_err(|e| format!("{source}: {e}")))
        .map_err(|error| Unmappable { id, error })
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
/// them, plus the error. A record refused for its size keeps no value (it
/// would be refused again); the payload is still in the outbox table.
fn dead_letter(topic: &str, original: Option<Record>, id: &str, position: Position, error: &str) -> Record {
    let mut headers = Vec::new();
    let (key, value, original_topic) = match original {
        Some(record) => {
            headers = record.headers;
            let too_large = error.contains("too large") || error.contains("MessageSizeTooLarge");
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
    headers.push((DLQ_ERROR_HEADER.to_owned(), Bytes::from(error.to_owned())));
    headers.push((DLQ_TOPIC_HEADER.to_owned(), Bytes::from(original_topic)));
    Record {
        topic: topic.to_owned(),
        key,
        value,
        headers,
        id: id.to_owned(),
        position,
    }
}
