//! The Kafka sink, built from `[kafka]`.

use std::time::Duration;

use anyhow::Context;
use outbox_core::Delivery;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sink_kafka::KafkaSink;
use tokio::sync::mpsc;

use crate::check::{fail, ok, warn, Finding};
use crate::config::{Config, PermanentErrorPolicy};

/// The Kafka producer the configuration describes.
pub fn build(config: &Config, deliveries: mpsc::UnboundedSender<Delivery>) -> anyhow::Result<KafkaSink> {
    KafkaSink::new(&config.kafka()?, deliveries).context("cannot create the Kafka producer")
}

/// `outboxd check`'s broker findings: reachability, topics and partitions,
/// the dead-letter topic.
pub async fn check(config: &Config, findings: &mut Vec<Finding>) {
    let kafka = match config.kafka() {
        Ok(k) => k,
        Err(err) => {
            findings.push(fail("kafka configuration", format!("{err:#}"), "fix [kafka]"));
            return;
        }
    };
    let mut client_config: ClientConfig = kafka.client_config();
    // Producer-only settings would only produce warnings on a consumer.
    for key in [
        "enable.idempotence",
        "acks",
        "max.in.flight.requests.per.connection",
        "message.timeout.ms",
        "partitioner",
    ] {
        client_config.remove(key);
    }
    let result = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create()?;
        consumer.fetch_metadata(None, Duration::from_secs(10))
    })
    .await;
    let metadata = match result {
        Ok(Ok(metadata)) => metadata,
        Ok(Err(err)) => {
            findings.push(fail(
                "broker",
                format!(
                    "cannot fetch metadata from {}: {err}",
                    kafka.get("bootstrap.servers").unwrap_or("?")
                ),
                "check kafka.brokers, network access and TLS/SASL settings",
            ));
            return;
        }
        Err(err) => {
            findings.push(fail("broker", err.to_string(), "retry"));
            return;
        }
    };
    findings.push(ok(
        "broker",
        format!("reachable, {} broker(s)", metadata.brokers().len()),
    ));
    let topic = &config.routing.topic;
    let prefix = topic.split("${").next().unwrap_or(topic);
    let mut matched = 0;
    for t in metadata.topics() {
        let name = t.name();
        if (topic.contains("${") && name.starts_with(prefix) && !prefix.is_empty()) || name == topic {
            matched += 1;
            findings.push(ok(
                "topic",
                format!("{name}: {} partitions", t.partitions().len()),
            ));
        }
    }
    if matched == 0 {
        findings.push(warn(
            "topic",
            format!("no topic matches {topic:?}"),
            "create the topics with the partition count you want (auto-created topics get the broker's default)",
        ));
    }
    if config.policy().ok() == Some(PermanentErrorPolicy::DeadLetter) {
        let dlq = &config.dead_letter();
        if metadata.topics().iter().any(|t| t.name() == dlq) {
            findings.push(ok("dead-letter topic", dlq.clone()));
        } else {
            findings.push(fail(
                "dead-letter topic",
                format!("{dlq} does not exist"),
                format!("create topic {dlq}"),
            ));
        }
    }
}

/// `outboxd demo`'s Kafka: librdkafka's in-process mock cluster.
pub struct Demo {
    mock: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    partitions: i32,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// The demo's topic.
const DEMO_TOPIC: &str = "outbox.event.order";

impl Demo {
    /// Starts the mock cluster with the demo topic.
    pub fn start(partitions: i32) -> anyhow::Result<Self> {
        let mock = rdkafka::mocking::MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
        mock.create_topic(DEMO_TOPIC, partitions, 1)
            .context("creating the demo topic")?;
        Ok(Demo { mock, partitions })
    }

    /// One line for the demo's header.
    pub fn describe(&self) -> String {
        format!(
            "kafka      in-process mock cluster at {}, topic {DEMO_TOPIC} with {} partitions",
            self.mock.bootstrap_servers(),
            self.partitions
        )
    }

    /// Points the configuration at it.
    pub fn configure(&self, config: &mut Config) {
        config.sink.kind = super::SinkKind::Kafka;
        config.kafka.brokers = Some(self.mock.bootstrap_servers());
        config.kafka.properties.insert("linger.ms".into(), "5".into());
    }

    /// A plain consumer handing each record that arrives to `print`, until `stop`.
    fn read_and_print(
        bootstrap: &str,
        partitions: i32,
        print: &dyn Fn(&super::DemoRecord),
        stop: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<()> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "outboxd-demo-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(DEMO_TOPIC, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(message) = consumer.poll(std::time::Duration::from_millis(100)) else {
                continue;
            };
            let message = message?;
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == name).and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            print(&super::DemoRecord {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                lane: message.partition().to_string(),
                event_type: header("type"),
                lsn: header("outboxd.lsn"),
                index: header("outboxd.index"),
                id: header("id"),
            });
        }
        Ok(())
    }

    /// Starts the printing consumer on a blocking thread.
    pub fn spawn_reader(
        &self,
        print: Box<dyn Fn(&super::DemoRecord) + Send>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let bootstrap = self.mock.bootstrap_servers();
        let partitions = self.partitions;
        tokio::task::spawn_blocking(move || Self::read_and_print(&bootstrap, partitions, &*print, &stop))
    }
}
