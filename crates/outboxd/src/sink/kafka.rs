//! The Kafka sink, built from `[kafka]`.

use anyhow::Context;
use outbox_core::Delivery;
use sink_kafka::KafkaSink;
use tokio::sync::mpsc;

use crate::config::Config;

/// The Kafka producer the configuration describes.
pub fn build(config: &Config, deliveries: mpsc::UnboundedSender<Delivery>) -> anyhow::Result<KafkaSink> {
    KafkaSink::new(&config.kafka()?, deliveries).context("cannot create the Kafka producer")
}
