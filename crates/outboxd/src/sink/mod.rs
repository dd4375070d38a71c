//! The configured sink: the one place in `outboxd` that names brokers.
//!
//! Everything else drives an [`AnySink`] through `outbox-core`'s [`Sink`]
//! contract (order in, one outcome per record, failures classified by the
//! sink). Each broker's module builds its sink from the configuration and
//! says how its names are checked.

pub mod kafka;

use outbox_core::{Delivery, DeliveryError, NameRule, Record, Sink, TxSeq};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Config;

/// `[sink] kind`: which broker records go to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Kafka (`[kafka]`), the default.
    #[default]
    Kafka,
}

impl SinkKind {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
        }
    }

    /// Parses a configuration value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "kafka" => Some(SinkKind::Kafka),
            _ => None,
        }
    }

    /// Every kind, for messages.
    pub const ALL: &'static [&'static str] = &["kafka"];

    /// What the destination names of this sink must look like.
    pub fn names(self) -> NameRule {
        match self {
            SinkKind::Kafka => NameRule::KafkaTopic,
        }
    }
}

/// The sink the configuration chose.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySink {
    /// `[sink] kind = "kafka"`.
    Kafka(sink_kafka::KafkaSink),
}

impl AnySink {
    /// Builds the configured sink; outcomes are reported on `deliveries`.
    pub fn build(config: &Config, deliveries: mpsc::UnboundedSender<Delivery>) -> anyhow::Result<Self> {
        match config.sink.kind {
            SinkKind::Kafka => kafka::build(config, deliveries).map(AnySink::Kafka),
        }
    }
}

/// `outboxd check`'s findings about the configured broker.
pub async fn check(config: &Config, findings: &mut Vec<crate::check::Finding>) {
    match config.sink.kind {
        SinkKind::Kafka => kafka::check(config, findings).await,
    }
}

impl Sink for AnySink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        match self {
            AnySink::Kafka(sink) => sink.send(record, tx).await,
        }
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        match self {
            AnySink::Kafka(sink) => sink.flush().await,
        }
    }
}

/// One record as `outboxd demo` prints it.
#[derive(Debug, Clone, Default)]
pub struct DemoRecord {
    /// The key (aggregate id).
    pub key: String,
    /// Where it landed (a partition, a queue).
    pub lane: String,
    /// The `type` header.
    pub event_type: String,
    /// The `outboxd.lsn` header.
    pub lsn: String,
    /// The `outboxd.index` header.
    pub index: String,
    /// The `id` header.
    pub id: String,
}

/// The broker `outboxd demo` runs against, with a consumer that prints what
/// arrives.
#[derive(Debug)]
#[non_exhaustive]
pub enum DemoBroker {
    /// The in-process mock Kafka cluster (see [`kafka::Demo`]).
    Kafka(kafka::Demo),
}

impl DemoBroker {
    /// What the demo will use, for its first line.
    pub fn summary(kind: SinkKind) -> &'static str {
        match kind {
            SinkKind::Kafka => "an in-process Kafka",
        }
    }

    /// Starts (or reaches) the broker; an error names what is missing.
    pub async fn start(kind: SinkKind, partitions: i32) -> anyhow::Result<Self> {
        match kind {
            SinkKind::Kafka => kafka::Demo::start(partitions).map(DemoBroker::Kafka),
        }
    }

    /// One line for the demo's header.
    pub fn describe(&self) -> String {
        match self {
            DemoBroker::Kafka(demo) => demo.describe(),
        }
    }

    /// Points the configuration at it.
    pub fn configure(&self, config: &mut Config) {
        match self {
            DemoBroker::Kafka(demo) => demo.configure(config),
        }
    }

    /// Starts the consumer: it prints each record, counts it in `seen`, and
    /// returns the ids seen once `stop` is set.
    pub fn spawn_reader(
        &self,
        seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Vec<String>>>> {
        let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let print = {
            let ids = std::sync::Arc::clone(&ids);
            Box::new(move |r: &DemoRecord| {
                println!(
                    "{:<10} {:>4} {:<14} {:>12} {:>6}  {}",
                    r.key, r.lane, r.event_type, r.lsn, r.index, r.id
                );
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(r.id.clone());
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let reader = match self {
            DemoBroker::Kafka(demo) => demo.spawn_reader(print, stop),
        };
        Ok(tokio::spawn(async move {
            reader.await??;
            let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
            Ok(ids)
        }))
    }

    /// Stops it (and removes what it made).
    pub async fn stop(self) {
        match self {
            DemoBroker::Kafka(demo) => drop(demo),
        }
    }
}
