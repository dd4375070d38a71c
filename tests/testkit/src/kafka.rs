//! Reading back what reached Kafka, with a real consumer.
//!
//! Tests produce through outboxd into librdkafka's `MockCluster` (or a real
//! broker) and read every partition of a topic from the beginning with a
//! plain consumer (no group: `assign` to all partitions), so what they
//! assert is what a downstream consumer would see.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// Partition it landed on.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Key bytes (empty for none).
    pub key: Vec<u8>,
    /// Value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record timestamp in milliseconds since 1970, if it has one.
    pub timestamp: Option<i64>,
}

impl ReadRecord {
    /// The first header named `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The key as UTF-8.
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or("<binary>")
    }
}

/// The number of partitions of `topic` (waits up to 10 s for it to exist).
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<i32, String> {
    let consumer = consumer(bootstrap)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("topic {topic} does not exist on {bootstrap}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `topic` from the beginning until `expected` records have arrived
/// and then `quiet` has passed without another (so extra records are seen),
/// or until `timeout`. Records come back ordered by partition, then offset.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, String> {
    let partitions = partition_count(bootstrap, topic)?;
    let consumer = consumer(bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign {topic}: {e}"))?;
    let mut by_partition: BTreeMap<i32, Vec<ReadRecord>> = BTreeMap::new();
    let mut count = 0usize;
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                by_partition
                    .entry(message.partition())
                    .or_default()
                    .push(ReadRecord {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().unwrap_or_default().to_vec(),
                        value: message.payload().map(<[u8]>::to_vec),
                        headers,
                        timestamp: message.timestamp().to_millis(),
                    });
                count += 1;
                last = Instant::now();
            }
            Some(Err(e)) => return Err(format!("consuming {topic}: {e}")),
            None => {}
        }
        if count >= expected && last.elapsed() >= quiet {
            break;
        }
        if start.elapsed() > timeout {
            if count >= expected {
                break;
            }
            return Err(format!(
                "read {count} of {expected} records from {topic} within {timeout:?}"
            ));
        }
    }
    Ok(by_partition.into_values().flatten().collect())
}

fn consumer(bootstrap: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outboxd-testkit-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| format!("consumer for {bootstrap}: {e}"))
}
