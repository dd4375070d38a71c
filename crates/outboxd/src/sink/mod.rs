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
