//! The Kafka sink, built from `[kafka]`.

use anyhow::Context;
use outbox_core::{AfterPermanentFailure, Delivery};
use sink_kafka::KafkaSink;
use tokio::sync::mpsc;

use crate::config::Config;

/// The Kafka producer the configuration describes.
pub fn build(
    config: &Config,
    deliveries: mpsc::UnboundedSender<Delivery>,
    after: AfterPermanentFailure,
) -> anyhow::Result<KafkaSink> {
    KafkaSink::with_after_permanent(&config.kafka()?, deliveries, after)
        .context("cannot create the Kafka producer")
}
