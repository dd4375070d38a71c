//! The configured sink: the one place in `outboxd` that names brokers.
//!
//! Everything else drives an [`AnySink`] through `outbox-core`'s [`Sink`]
//! contract (order in, one outcome per record, failures classified by the
//! sink). Each broker's module builds its sink from the configuration and
//! says how its names are checked.

pub mod kafka;
pub mod rabbitmq;
pub mod redis;

use outbox_core::{AfterPermanentFailure, Delivery, DeliveryError, NameRule, Record, Sink, TxSeq};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Config, PermanentErrorPolicy};

/// `[sink] kind`: which broker records go to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Kafka (`[kafka]`), the default.
    #[default]
    Kafka,
    /// Redis Streams (`[redis]`).
    Redis,
    /// RabbitMQ (`[rabbitmq]`).
    #[serde(rename = "rabbitmq")]
    RabbitMq,
}

impl SinkKind {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::Redis => "redis",
            SinkKind::RabbitMq => "rabbitmq",
        }
    }

    /// Parses a configuration value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "kafka" => Some(SinkKind::Kafka),
            "redis" => Some(SinkKind::Redis),
            "rabbitmq" => Some(SinkKind::RabbitMq),
            _ => None,
        }
    }

    /// Every kind, for messages.
    pub const ALL: &'static [&'static str] = &["kafka", "redis", "rabbitmq"];

    /// What the destination names of this sink must look like.
    pub fn names(self) -> NameRule {
        match self {
            SinkKind::Kafka => NameRule::KafkaTopic,
            SinkKind::Redis => redis::NAMES,
            SinkKind::RabbitMq => rabbitmq::NAMES,
        }
    }
}

/// The sink the configuration chose.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySink {
    /// `[sink] kind = "kafka"`.
    Kafka(sink_kafka::KafkaSink),
    /// `[sink] kind = "redis"`.
    Redis(sink_redis::RedisSink),
    /// `[sink] kind = "rabbitmq"`.
    RabbitMq(sink_rabbitmq::RabbitSink),
}

impl AnySink {
    /// Builds the configured sink (connecting, for sinks that must);
    /// outcomes are reported on `deliveries`.
    pub async fn build(config: &Config, deliveries: mpsc::UnboundedSender<Delivery>) -> anyhow::Result<Self> {
        // Under `stop` the sink itself holds back what it accepted behind a
        // record that failed for good: by the time the pipeline hears of the
        // failure, later records of the same key could be on their way.
        let after = match config.policy()? {
            PermanentErrorPolicy::Stop => AfterPermanentFailure::Stop,
            PermanentErrorPolicy::DeadLetter => AfterPermanentFailure::Continue,
        };
        match config.sink.kind {
            SinkKind::Kafka => kafka::build(config, deliveries, after).map(AnySink::Kafka),
            SinkKind::Redis => redis::build(config, deliveries).map(AnySink::Redis),
            SinkKind::RabbitMq => rabbitmq::build(config, deliveries, after)
                .await
                .map(AnySink::RabbitMq),
        }
    }
}

/// `outboxd setup`'s broker part: what it declared, one line each (Kafka
/// topics and Redis streams are not created by outboxd).
pub async fn setup(config: &Config) -> anyhow::Result<Vec<String>> {
    match config.sink.kind {
        SinkKind::Kafka | SinkKind::Redis => Ok(Vec::new()),
        SinkKind::RabbitMq => rabbitmq::setup(config).await,
    }
}

/// `outboxd check`'s findings about the configured broker.
pub async fn check(config: &Config, findings: &mut Vec<crate::check::Finding>) {
    match config.sink.kind {
        SinkKind::Kafka => kafka::check(config, findings).await,
        SinkKind::Redis => findings.extend(redis::check(config).await),
        SinkKind::RabbitMq => findings.extend(rabbitmq::check(config).await),
    }
}

impl Sink for AnySink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        match self {
            AnySink::Kafka(sink) => sink.send(record, tx).await,
            AnySink::Redis(sink) => sink.send(record, tx).await,
            AnySink::RabbitMq(sink) => sink.send(record, tx).await,
        }
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        match self {
            AnySink::Kafka(sink) => sink.flush().await,
            AnySink::Redis(sink) => sink.flush().await,
            AnySink::RabbitMq(sink) => sink.flush().await,
        }
    }
}

/// A name for what the demo creates on a shared broker that no other run
/// uses: `prefix`, the process id and the time.
fn demo_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
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
    /// The configured Redis, under a key prefix of its own (see [`redis::Demo`]).
    Redis(redis::Demo),
    /// The configured RabbitMQ, with an exchange and queue of its own (see
    /// [`rabbitmq::Demo`]).
    RabbitMq(rabbitmq::Demo),
}

impl DemoBroker {
    /// What the demo will use, for its first line.
    pub fn summary(kind: SinkKind) -> &'static str {
        match kind {
            SinkKind::Kafka => "an in-process Kafka",
            SinkKind::Redis => "the machine's Redis",
            SinkKind::RabbitMq => "the machine's RabbitMQ",
        }
    }

    /// Starts (or reaches) the broker; an error names what is missing.
    /// `settings` is the loaded configuration: a broker the demo does not
    /// start is found at its configured URL (`[redis] url`, `[rabbitmq] url`).
    pub async fn start(kind: SinkKind, partitions: i32, settings: &Config) -> anyhow::Result<Self> {
        match kind {
            SinkKind::Kafka => kafka::Demo::start(partitions).map(DemoBroker::Kafka),
            SinkKind::Redis => redis::Demo::start(settings).await.map(DemoBroker::Redis),
            SinkKind::RabbitMq => rabbitmq::Demo::start(settings).await.map(DemoBroker::RabbitMq),
        }
    }

    /// One line for the demo's header.
    pub fn describe(&self) -> String {
        match self {
            DemoBroker::Kafka(demo) => demo.describe(),
            DemoBroker::Redis(demo) => demo.describe(),
            DemoBroker::RabbitMq(demo) => demo.describe(),
        }
    }

    /// What a record's lane is here (the title of its column) and the
    /// column's width.
    pub fn lane(&self) -> (&'static str, usize) {
        match self {
            DemoBroker::Kafka(_) => ("lane", 4),
            DemoBroker::Redis(_) => ("entry id", 16),
            DemoBroker::RabbitMq(_) => ("routing key", 18),
        }
    }

    /// Points the configuration at it.
    pub fn configure(&self, config: &mut Config) {
        match self {
            DemoBroker::Kafka(demo) => demo.configure(config),
            DemoBroker::Redis(demo) => demo.configure(config),
            DemoBroker::RabbitMq(demo) => demo.configure(config),
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
        let width = self.lane().1;
        let print = {
            let ids = std::sync::Arc::clone(&ids);
            Box::new(move |r: &DemoRecord| {
                println!(
                    "{:<10} {:>width$} {:<14} {:>12} {:>6}  {}",
                    r.key, r.lane, r.event_type, r.lsn, r.index, r.id
                );
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(r.id.clone());
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let reader = match self {
            DemoBroker::Kafka(demo) => demo.spawn_reader(print, stop),
            DemoBroker::Redis(demo) => demo.spawn_reader(print, stop),
            DemoBroker::RabbitMq(demo) => demo.spawn_reader(print, stop),
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
            DemoBroker::Redis(demo) => demo.stop().await,
            DemoBroker::RabbitMq(demo) => demo.stop().await,
        }
    }
}
