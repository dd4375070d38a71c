//! # sink-redis: outbox records to Redis Streams, appended idempotently
//!
//! Place in outboxd: the pipeline routes each outbox event to a
//! [`outbox_core::Record`] and hands it to [`RedisSink::send`], from one task,
//! in WAL order. This crate appends it to the Redis stream named by the
//! record's topic (`outbox.event.${aggregatetype}` by default), one entry per
//! record with the fields `id`, `type`, `aggregatetype`, `outboxd.lsn`,
//! `outboxd.index` (and any extra headers), `aggregateid` and `payload`.
//!
//! * **Delivered** means the reply of the append script (see [`append`]) for
//!   that record — and, with `wait_replicas = n`, a `WAIT n` reply that says
//!   `n` replicas have it too.
//! * **No duplicates within the dedupe TTL.** The append checks and records
//!   the event id in a per-stream dedupe set in the same Lua script as the
//!   `XADD`, so a record re-sent after a crash, a reconnect or a timed-out
//!   reply is recognised and not appended twice (its second reply counts as
//!   delivered). Redis ≥ 8.6 has `XADD … IDMP` for this; [`server::probe`]
//!   says whether a server has it, but the script is used on every server
//!   because IDMP forgets ids after at most 24 h and 10,000 ids per producer,
//!   shorter than a replay window may need.
//! * **Order**: records are sent in pipelined batches of at most
//!   `max_in_flight`, one batch at a time, on one connection: Redis runs them
//!   in that order. A failed batch is retried whole before anything later is
//!   sent (the records of it that were appended are recognised), so retries
//!   never reorder. Per-key order holds within a stream: one stream per
//!   routed name.
//! * **Backpressure**: `send` waits while `max_in_flight` records have no
//!   outcome yet.
//! * **BullMQ mode** ([`Mode::BullMq`], [`bullmq`]): each record becomes a
//!   job written by BullMQ's own `addStandardJob` script exactly as
//!   `Queue.add` writes it (queue = the routed name, job name = the event
//!   type, data = the payload, job id = the event id, so BullMQ itself
//!   ignores a re-sent record while the job exists; the headers and the
//!   LSN in the job's options under `outboxd`).
//! * **Errors** are classified ([`classify`]): a lost connection, a timeout,
//!   `OOM`, `LOADING`, `READONLY` are retried (with backoff, reconnecting);
//!   refused credentials are fatal; a record over `max_record_bytes` or a
//!   destination key of another type is permanent for that record.

pub mod append;
pub mod bullmq;
mod classify;
mod config;
mod error;
pub mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::{Delivery, DeliveryError, ErrorClass, PermanentReason, Record, Sink, TxSeq};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

pub use classify::{classify, classify_reply};
pub use config::{defaults, Mode, RedisConfig};
pub use error::ConfigError;

/// The longest pause between two attempts of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A record accepted by `send`, holding its place in the window.
struct Pending {
    record: Record,
    tx: TxSeq,
    _permit: OwnedSemaphorePermit,
}

/// What the worker shares with the sink.
#[derive(Debug, Default)]
struct Shared {
    fatal: Mutex<Option<DeliveryError>>,
    progress: Notify,
}

impl Shared {
    fn fatal(&self) -> Option<DeliveryError> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_fatal(&self, err: DeliveryError) {
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(err);
        self.progress.notify_waiters();
    }
}

/// The Redis sink. See the crate notes.
pub struct RedisSink {
    queue: mpsc::UnboundedSender<Pending>,
    window: Arc<Semaphore>,
    max_in_flight: usize,
    max_record_bytes: usize,
    /// BullMQ mode: records whose job id BullMQ refuses are refused here.
    bullmq: bool,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    worker: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

impl RedisSink {
    /// Starts the sink (on the current tokio runtime); it connects when the
    /// first record comes, and reconnects by itself. Outcomes are reported on
    /// `deliveries`, at most `max_in_flight` pending at a time.
    pub fn new(
        config: RedisConfig,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let client = Client::open(config.connection_info().clone())
            .map_err(|e| ConfigError::Url(e.to_string().replace(&config.redacted_url(), "")))?;
        let (queue, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            client,
            connection: None,
            script: redis::Script::new(Worker::script_text(&config.mode)),
            config: config.clone(),
            shared: Arc::clone(&shared),
            deliveries: deliveries.clone(),
        };
        let worker = tokio::spawn(worker.run(rx));
        Ok(RedisSink {
            queue,
            window: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            max_record_bytes: config.max_record_bytes,
            bullmq: matches!(config.mode, Mode::BullMq { .. }),
            shared,
            deliveries,
            worker,
        })
    }

    /// Records accepted and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.window.available_permits()
    }

    /// The fatal error, once there is one: nothing more can be sent.
    pub fn fatal_error(&self) -> Option<DeliveryError> {
        self.shared.fatal()
    }
}

impl Sink for RedisSink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        if let Some(fatal) = self.shared.fatal() {
            return Err(fatal);
        }
        if self.bullmq {
            if let Err(error) = bullmq::job_id(&record) {
                let _ = self.deliveries.send(Delivery::failed(tx, record, error));
                return Ok(());
            }
        }
        let size = append::size(&record);
        if size > self.max_record_bytes {
            let error = DeliveryError::permanent(
                PermanentReason::TooLarge,
                format!(
                    "record too large: {size} bytes, more than redis.max_record_bytes = {}",
                    self.max_record_bytes
                ),
            );
            let _ = self.deliveries.send(Delivery::failed(tx, record, error));
            return Ok(());
        }
        // Cancel-safe: either the permit is taken and the record queued (no
        // await in between), or neither.
        let permit = tokio::select! {
            permit = Arc::clone(&self.window).acquire_owned() => permit.map_err(|_| closed())?,
            () = wait_fatal(&self.shared) => return Err(self.shared.fatal().unwrap_or_else(closed)),
        };
        self.queue
            .send(Pending {
                record,
                tx,
                _permit: permit,
            })
            .map_err(|_| self.shared.fatal().unwrap_or_else(closed))
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        loop {
            if let Some(fatal) = self.shared.fatal() {
                return Err(fatal);
            }
            if self.in_flight() == 0 {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), self.shared.progress.notified()).await;
        }
    }
}

fn closed() -> DeliveryError {
    DeliveryError::fatal("the redis sink's worker has stopped")
}

/// Resolves once the sink has a fatal error.
async fn wait_fatal(shared: &Shared) {
    while shared.fatal().is_none() {
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.progress.notified()).await;
    }
}

/// Why a batch has to be sent again (or cannot be).
#[derive(Debug)]
struct BatchError {
    class: ErrorClass,
    message: String,
    /// The connection is unusable: make a new one.
    reconnect: bool,
}

/// Sends batches, one at a time, in order; reports outcomes.
struct Worker {
    client: Client,
    connection: Option<MultiplexedConnection>,
    script: redis::Script,
    config: RedisConfig,
    shared: Arc<Shared>,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

impl Worker {
    fn script_text(mode: &Mode) -> &'static str {
        match mode {
            Mode::Streams => append::SCRIPT,
            Mode::BullMq { .. } => bullmq::SCRIPT,
        }
    }

    /// Appends the script call for `record` to `pipe`.
    fn command(&self, pipe: &mut redis::Pipeline, record: &Record, now_ms: u64) {
        let command = pipe.cmd("EVALSHA").arg(self.script.get_hash());
        match &self.config.mode {
            Mode::Streams => {
                command
                    .arg(2)
                    .arg(&record.topic)
                    .arg(append::dedupe_key(&record.topic))
                    .arg(append::dedupe_id(record))
                    .arg(self.config.dedupe_ttl.as_secs().max(1))
                    .arg(self.config.maxlen.unwrap_or(0));
                for (name, value) in append::fields(record) {
                    command.arg(name).arg(value.as_ref());
                }
            }
            Mode::BullMq { prefix } => {
                command.arg(9);
                for key in bullmq::keys(prefix, &record.topic) {
                    command.arg(key);
                }
                // `send` let only records with a valid job id through.
                let job_id = bullmq::job_id(record).unwrap_or_else(|_| record.id.clone());
                command
                    .arg(bullmq::args(prefix, &record.topic, &job_id, record, now_ms))
                    .arg(bullmq::data(record))
                    .arg(bullmq::opts(&job_id, record));
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.config.max_in_flight {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(50);
            let mut attempts = 0u32;
            let outcomes = loop {
                match self.attempt(&batch).await {
                    Ok(outcomes) => break outcomes,
                    Err(err) if err.class == ErrorClass::Fatal => {
                        error!(error = %err.message, "redis sink stopped");
                        self.shared.set_fatal(DeliveryError::fatal(err.message));
                        return;
                    }
                    Err(err) => {
                        attempts += 1;
                        if err.reconnect {
                            self.connection = None;
                        }
                        if attempts == 1 || attempts.is_multiple_of(10) {
                            warn!(error = %err.message, records = batch.len(), attempts,
                                  "redis append failed, retrying the batch");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            if attempts > 0 {
                info!(
                    records = batch.len(),
                    attempts, "redis append succeeded after retrying"
                );
            }
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let delivery = match outcome {
                    Ok(()) => Delivery::delivered(pending.tx, &pending.record),
                    Err(error) => Delivery::failed(pending.tx, pending.record, error),
                };
                // The receiver is gone only when the pipeline has stopped.
                let _ = self.deliveries.send(delivery);
            }
            self.shared.progress.notify_waiters();
        }
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, BatchError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.response_timeout)
            .set_response_timeout(self.config.response_timeout);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BatchError {
                class: classify(&e),
                message: format!("cannot connect to {}: {e}", self.config.redacted_url()),
                reconnect: true,
            })?;
        debug!(url = %self.config.redacted_url(), "connected to redis");
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// One attempt at the whole batch: one outcome per record, or an error
    /// that makes the whole batch go again.
    async fn attempt(&mut self, batch: &[Pending]) -> Result<Vec<Result<(), DeliveryError>>, BatchError> {
        let mut connection = self.connection().await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        for pending in batch {
            self.command(&mut pipe, &pending.record, now_ms);
        }
        let waits = self.config.wait_replicas > 0;
        if waits {
            pipe.cmd("WAIT")
                .arg(self.config.wait_replicas)
                .arg(self.config.wait_timeout.as_millis() as u64);
        }
        let count = batch.len() + usize::from(waits);
        // `req_packed_commands` keeps each reply, errors included, where the
        // pipeline's `query_async` would fail the whole batch on the first.
        let replies = connection
            .req_packed_commands(&pipe, 0, count)
            .await
            .map_err(|e| BatchError {
                class: classify(&e),
                message: format!("redis pipeline failed: {e}"),
                reconnect: true,
            })?;
        if replies.len() != count {
            return Err(BatchError {
                class: ErrorClass::Retriable,
                message: format!("{} replies to {count} commands", replies.len()),
                reconnect: true,
            });
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut retry: Option<BatchError> = None;
        for reply in &replies[..batch.len()] {
            match reply {
                Value::ServerError(err) => {
                    // The type is not exported by the crate; its methods are.
                    let message = match err.details() {
                        Some(details) => format!("{} {details}", err.code()),
                        None => err.code().to_owned(),
                    };
                    match classify_reply(err.code(), &message) {
                        ErrorClass::Permanent { reason } => {
                            outcomes.push(Err(DeliveryError::permanent(reason, message)));
                        }
                        class => {
                            if err.code() == "NOSCRIPT" {
                                self.load_script(&mut connection).await?;
                            }
                            retry.get_or_insert(BatchError {
                                class,
                                message,
                                reconnect: false,
                            });
                            outcomes.push(Ok(()));
                        }
                    }
                }
                // BullMQ's script answers a negative code for a job it
                // cannot add (a missing parent: never for these jobs).
                Value::Int(code) if *code < 0 => outcomes.push(Err(DeliveryError::permanent(
                    PermanentReason::Rejected,
                    format!("bullmq's addStandardJob refused the job (code {code})"),
                ))),
                // Streams: an entry id, appended; nil, appended before (a
                // re-send). BullMQ: the job id, added now or before.
                _ => outcomes.push(Ok(())),
            }
        }
        if let Some(err) = retry {
            return Err(err);
        }
        if waits {
            let acked = match &replies[batch.len()] {
                Value::Int(n) => *n,
                other => {
                    return Err(BatchError {
                        class: ErrorClass::Retriable,
                        message: format!("unexpected WAIT reply {other:?}"),
                        reconnect: false,
                    })
                }
            };
            if acked < i64::from(self.config.wait_replicas) {
                return Err(BatchError {
                    class: ErrorClass::Retriable,
                    message: format!(
                        "WAIT: {acked} of {} replicas acknowledged within {:?}",
                        self.config.wait_replicas, self.config.wait_timeout
                    ),
                    reconnect: false,
                });
            }
        }
        Ok(outcomes)
    }

    async fn load_script(&self, connection: &mut MultiplexedConnection) -> Result<(), BatchError> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(Self::script_text(&self.config.mode))
            .query_async::<String>(connection)
            .await
            .map(|_| ())
            .map_err(|e| BatchError {
                class: classify(&e),
                message: format!("cannot load the append script: {e}"),
                reconnect: true,
            })
    }
}
