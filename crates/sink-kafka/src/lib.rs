//! # sink-kafka: outbox records to Kafka, acknowledged by delivery reports
//!
//! Place in outboxd: the pipeline routes each outbox event to a
//! [`outbox_core::Record`] and hands it to [`KafkaSink::send`], from one task,
//! in WAL order. This crate produces it with librdkafka's idempotent producer
//! (settings in [`KafkaConfig`], unsafe overrides refused) and reports each
//! record's outcome as an [`outbox_core::Delivery`] on a channel; the pipeline
//! marks its `AckTracker` from those reports only. A successful delivery
//! report is the only thing that counts as delivered (not `send` returning,
//! not `flush`).
//!
//! * **Order**: one caller enqueues in stream order; the idempotent producer
//!   with at most 5 requests in flight keeps each partition's order through
//!   retries; records are never timed out (`message.timeout.ms=0`), so no
//!   record is dropped while later ones go out.
//! * **Backpressure**: when librdkafka's queue is full, `send` waits for
//!   deliveries to free space (the pipeline stops reading the slot meanwhile).
//!   Memory is bounded by `queue.buffering.max.messages` / `.kbytes`.
//! * **Errors** are classified ([`classify`]): permanent ones (too large, not
//!   authorized, unknown topic) are reported with the record returned, so the
//!   pipeline can stop or dead-letter; a fatal producer error makes every
//!   later `send` fail.
//! * **After a permanent failure** ([`AfterPermanentFailure`], from the
//!   policy): with `Continue` (policy `dead-letter`) librdkafka goes on with
//!   the records behind it, so later records of the same key reach the topic
//!   and the failed one is only in the dead-letter topic. With `Stop` (policy
//!   `stop`) nothing behind it is produced: `enable.gapless.guarantee=true`
//!   makes librdkafka stop instead of re-sequencing the partition and sending
//!   what was queued behind a batch the broker refused (it purges its queue);
//!   the sink purges what is queued and refuses later sends, reporting them
//!   failed. Requests already in flight behind the refused one are rejected
//!   by the broker's idempotence check (their sequence numbers follow one it
//!   never wrote).

mod classify;
mod config;
mod partition;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outbox_core::{
    AfterPermanentFailure, Delivery, DeliveryError, ErrorClass, Position, Record, Sink, TxSeq,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

pub use classify::classify;
pub use config::{ConfigError, KafkaConfig, DEFAULTS, REQUIRED};
pub use partition::{java_partition, murmur2};

/// Why the sink could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The settings are unsafe or incomplete.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// librdkafka refused the settings.
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
}

/// What travels with each record through librdkafka.
#[derive(Debug)]
struct Meta {
    tx: TxSeq,
    id: String,
    position: Position,
}

/// Receives librdkafka's callbacks on its polling thread.
#[derive(Debug)]
struct DeliveryContext {
    deliveries: mpsc::UnboundedSender<Delivery>,
    space: Arc<Notify>,
    fatal: Arc<Mutex<Option<String>>>,
    /// Set under [`AfterPermanentFailure::Stop`] once a record failed for good.
    fence: Option<Arc<AtomicBool>>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility = fac, "librdkafka: {log_message}"),
            RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            error!(error = %error, "kafka producer fatal error: {reason}");
            let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
            fatal.get_or_insert_with(|| reason.to_owned());
        } else {
            // Broker down, connection refused, …: librdkafka reconnects and retries.
            warn!(error = %error, "kafka client error: {reason}");
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Meta>;

    fn delivery(&self, result: &DeliveryResult<'_>, meta: Box<Meta>) {
        let delivery = match result {
            Ok(_) => Delivery {
                tx: meta.tx,
                id: meta.id,
                position: meta.position,
                result: Ok(()),
                returned: None,
            },
            Err((err, message)) => {
                let mut class = classify(err);
                let fenced = self.fence.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
                // Records librdkafka fails because the fence stopped it are
                // not the producer breaking: the earlier failure says why.
                if fenced && class == ErrorClass::Fatal {
                    class = ErrorClass::Retriable;
                }
                let returned = class.is_permanent().then(|| Record {
                    topic: message.topic().to_owned(),
                    key: Bytes::copy_from_slice(message.key().unwrap_or_default()),
                    value: message.payload().map(Bytes::copy_from_slice),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    id: meta.id.clone(),
                    position: meta.position,
                    timestamp_ms: message.timestamp().to_millis(),
                    partition: None,
                });
                Delivery {
                    tx: meta.tx,
                    id: meta.id,
                    position: meta.position,
                    result: Err(DeliveryError {
                        class,
                        message: err.to_string(),
                    }),
                    returned,
                }
            }
        };
        let permanent = matches!(&delivery.result, Err(e) if e.class.is_permanent());
        // The receiver is gone only when the pipeline has stopped.
        let _ = self.deliveries.send(delivery);
        // After the report: the failure reaches the pipeline before any
        // refusal of a record behind it.
        if let (true, Some(fence)) = (permanent, &self.fence) {
            fence.store(true, Ordering::SeqCst);
        }
        self.space.notify_one();
    }
}

/// The Kafka sink. See the crate notes.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    space: Arc<Notify>,
    fatal: Arc<Mutex<Option<String>>>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Set once a record failed for good under [`AfterPermanentFailure::Stop`].
    fence: Option<Arc<AtomicBool>>,
    /// Whether the queue was purged after the fence closed.
    purged: bool,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer; outcomes are reported on `deliveries`. The
    /// channel is unbounded but holds at most one report per record
    /// librdkafka holds, which its queue limits bound.
    pub fn new(config: &KafkaConfig, deliveries: mpsc::UnboundedSender<Delivery>) -> Result<Self, SinkError> {
        Self::with_after_permanent(config, deliveries, AfterPermanentFailure::Continue)
    }

    /// [`KafkaSink::new`], saying what happens to the records behind one that
    /// failed for good (see the crate notes).
    pub fn with_after_permanent(
        config: &KafkaConfig,
        deliveries: mpsc::UnboundedSender<Delivery>,
        after: AfterPermanentFailure,
    ) -> Result<Self, SinkError> {
        let space = Arc::new(Notify::new());
        let fatal = Arc::new(Mutex::new(None));
        let fence = (after == AfterPermanentFailure::Stop).then(|| Arc::new(AtomicBool::new(false)));
        let context = DeliveryContext {
            deliveries: deliveries.clone(),
            space: Arc::clone(&space),
            fatal: Arc::clone(&fatal),
            fence: fence.clone(),
        };
        let mut client_config = config.client_config();
        if fence.is_some() {
            client_config.set("enable.gapless.guarantee", "true");
        }
        let producer = client_config
            .create_with_context(context)
            .map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer,
            space,
            fatal,
            deliveries,
            fence,
            purged: false,
        })
    }

    /// Under [`AfterPermanentFailure::Stop`], whether a record failed for
    /// good: nothing more is produced. Purges librdkafka's queue the first
    /// time it is seen.
    fn fenced(&mut self) -> bool {
        let Some(fence) = &self.fence else {
            return false;
        };
        let gapless = matches!(
            self.producer.client().fatal_error(),
            Some((RDKafkaErrorCode::GaplessGuarantee, _))
        );
        if gapless {
            fence.store(true, Ordering::SeqCst);
        }
        if !fence.load(Ordering::SeqCst) {
            return false;
        }
        if !self.purged {
            self.purged = true;
            warn!(
                "a record failed for good: purging the records queued behind it and producing nothing more"
            );
            self.producer
                .purge(PurgeConfig::default().queue().inflight().non_blocking());
        }
        true
    }

    /// Reports `record` as not sent because the fence is closed.
    fn refuse(&self, record: Record, tx: TxSeq) {
        let _ = self.deliveries.send(Delivery {
            tx,
            id: record.id,
            position: record.position,
            result: Err(DeliveryError::retriable(
                "not sent: an earlier record failed for good and the stop policy produces nothing after it",
            )),
            returned: None,
        });
    }

    /// Records handed to librdkafka and not yet reported.
    pub fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    /// The fatal error, once the producer has one: nothing more can be sent.
    pub fn fatal_error(&self) -> Option<DeliveryError> {
        let recorded = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let message = recorded.or_else(|| self.producer.client().fatal_error().map(|(_, reason)| reason))?;
        Some(DeliveryError {
            class: ErrorClass::Fatal,
            message: format!("kafka producer fatal error: {message}"),
        })
    }

    fn enqueue(&self, record: &Record, tx: TxSeq) -> Result<bool, (KafkaError, Box<Meta>)> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_ref()),
            });
        }
        let meta = Box::new(Meta {
            tx,
            id: record.id.clone(),
            position: record.position,
        });
        let mut base = BaseRecord::with_opaque_to(&record.topic, meta)
            .key(record.key.as_ref())
            .headers(headers);
        if let Some(value) = &record.value {
            base = base.payload(value.as_ref());
        }
        if let Some(timestamp) = record.timestamp_ms {
            base = base.timestamp(timestamp);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        match self.producer.send(base) {
            Ok(()) => Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
            Err((err, base)) => Err((err, base.delivery_opaque)),
        }
    }
}

impl Sink for KafkaSink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        loop {
            if self.fenced() {
                self.refuse(record, tx);
                return Ok(());
            }
            if let Some(fatal) = self.fatal_error() {
                return Err(fatal);
            }
            match self.enqueue(&record, tx) {
                Ok(true) => return Ok(()),
                // Queue full: wait for a delivery report to free space. The
                // timeout only re-checks for a fatal error meanwhile.
                Ok(false) => {
                    let _ = tokio::time::timeout(Duration::from_millis(100), self.space.notified()).await;
                }
                Err((err, meta)) => {
                    let class = classify(&err);
                    if class == ErrorClass::Fatal {
                        if self.fenced() {
                            self.refuse(record, tx);
                            return Ok(());
                        }
                        return Err(DeliveryError {
                            class,
                            message: err.to_string(),
                        });
                    }
                    // Refused at once (e.g. larger than message.max.bytes):
                    // reported like a failed delivery, with the record.
                    let _ = self.deliveries.send(Delivery {
                        tx: meta.tx,
                        id: meta.id,
                        position: meta.position,
                        result: Err(DeliveryError {
                            class,
                            message: err.to_string(),
                        }),
                        returned: Some(record),
                    });
                    if let (true, Some(fence)) = (class.is_permanent(), &self.fence) {
                        fence.store(true, Ordering::SeqCst);
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        while self.in_flight() > 0 {
            if let Some(fatal) = self.fatal_error() {
                return Err(fatal);
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), self.space.notified()).await;
        }
        Ok(())
    }
}
