//! Producer settings: what outboxd's guarantees require, what it refuses, and
//! what passes through to librdkafka untouched.

use std::collections::BTreeMap;
use std::fmt;

use outbox_core::redact::redact_property;
use rdkafka::ClientConfig;

/// Settings outboxd always applies. Each one carries a guarantee:
///
/// * `enable.idempotence=true`: the broker drops duplicates of librdkafka's
///   own retries and keeps per-partition order across them;
/// * `acks=all`: a record counts as delivered only when every in-sync
///   replica has it;
/// * `max.in.flight.requests.per.connection=5`: the most the idempotent
///   producer allows without risking reordering;
/// * `message.timeout.ms=0`: a record is never given up on (a timed-out
///   record would leave a gap the next records fill, breaking order; any
///   other value is refused, `enable.gapless.guarantee` included, which does
///   not cover timed-out records);
/// * `partitioner=murmur2_random`: the Java client's placement, so keys land
///   on the partitions Java producers and Kafka Streams expect.
pub const REQUIRED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
    ("message.timeout.ms", "0"),
    ("partitioner", "murmur2_random"),
];

/// Defaults outboxd sets unless configured: they bound memory (librdkafka's
/// own defaults allow 1 GiB and 100,000 records in its queue) while leaving
/// room for throughput. A full queue pauses reading from Postgres.
///
/// `kbytes` counts only values and keys; each queued record also costs
/// librdkafka about 1 KB of bookkeeping and headers, so for small rows the
/// record count is the real bound. Measured with 300-byte records (see the
/// README's benchmark): with the broker down, 150,000 rows made outboxd
/// 126 MiB at 100,000 queued records, 59 MiB at 30,000, 48 MiB at 20,000 and
/// 32 MiB at 10,000; draining into a real broker (tansu on the same machine),
/// 20,000 kept outboxd at 42 MiB and 88–118 % of `pg_recvlogical`'s rate,
/// where 10,000 (30–38 MiB) fell to about 50 % for transactions of 100: the
/// queue must cover the broker's round trip at full rate. Raise it for a
/// distant broker, at about 1 KB of memory per record.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("queue.buffering.max.kbytes", "32768"),
    ("queue.buffering.max.messages", "20000"),
    ("linger.ms", "5"),
];

/// The producer configuration: librdkafka properties, checked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.properties {
            map.entry(key, &redact_property(key, value));
        }
        map.finish()
    }
}

/// A setting that would break a delivery guarantee, or a missing one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An override of a guarantee-carrying setting.
    #[error("kafka property {key}={value} is refused: {why}")]
    Unsafe {
        /// Property name.
        key: String,
        /// The refused value.
        value: String,
        /// What it would break, and what to do instead.
        why: String,
    },
    /// `bootstrap.servers` is not set.
    #[error("kafka property bootstrap.servers is not set: give the brokers (host:port, comma-separated) in [kafka.properties] or OUTBOXD_KAFKA_BROKERS")]
    NoBootstrapServers,
}

impl KafkaConfig {
    /// Checks `properties` (librdkafka names, as in its CONFIGURATION.md)
    /// and adds the required settings. Aliases are normalised first
    /// (`request.required.acks` is `acks`, `delivery.timeout.ms` is
    /// `message.timeout.ms`, `max.in.flight` is
    /// `max.in.flight.requests.per.connection`, `message.send.max.retries` is
    /// `retries`).
    pub fn new<K, V>(properties: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut checked = BTreeMap::new();
        for (key, value) in properties {
            let key = canonical(&key.into()).to_owned();
            let value = value.into();
            check(&key, &value)?;
            checked.insert(key, value);
        }
        if !checked.contains_key("bootstrap.servers") {
            return Err(ConfigError::NoBootstrapServers);
        }
        for (key, value) in REQUIRED {
            checked
                .entry((*key).to_owned())
                .or_insert_with(|| (*value).to_owned());
        }
        for (key, value) in DEFAULTS {
            checked
                .entry((*key).to_owned())
                .or_insert_with(|| (*value).to_owned());
        }
        Ok(KafkaConfig { properties: checked })
    }

    /// One property's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(canonical(key)).map(String::as_str)
    }

    /// The largest record the producer accepts (`message.max.bytes`,
    /// librdkafka's default 1,000,000).
    pub fn message_max_bytes(&self) -> usize {
        self.get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    }

    /// The librdkafka configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// The properties as they may be shown (see [`outbox_core::redact`]),
    /// for logs and `outboxd config`.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| (k.clone(), redact_property(k, v)))
            .collect()
    }
}

fn canonical(key: &str) -> &str {
    match key {
        "request.required.acks" => "acks",
        "delivery.timeout.ms" => "message.timeout.ms",
        "max.in.flight" => "max.in.flight.requests.per.connection",
        "metadata.broker.list" => "bootstrap.servers",
        "message.send.max.retries" => "retries",
        other => other,
    }
}

fn unsafe_setting(key: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::Unsafe {
        key: key.to_owned(),
        value: value.to_owned(),
        why: why.to_owned(),
    }
}

fn check(key: &str, value: &str) -> Result<(), ConfigError> {
    let v = value.trim().to_ascii_lowercase();
    match key {
        "enable.idempotence" if v != "true" => Err(unsafe_setting(
            key,
            value,
            "without the idempotent producer a retry can duplicate or reorder records within a partition; remove the setting",
        )),
        "acks" if v != "all" && v != "-1" => Err(unsafe_setting(
            key,
            value,
            "a record is delivered only when all in-sync replicas have it (acks=all); fewer acks can lose acknowledged records when a broker fails",
        )),
        "max.in.flight.requests.per.connection" => match v.parse::<u32>() {
            Ok(1..=5) => Ok(()),
            _ => Err(unsafe_setting(
                key,
                value,
                "the idempotent producer keeps order only with 1 to 5 requests in flight per connection",
            )),
        },
        "partitioner" if v != "murmur2_random" && v != "murmur2" => Err(unsafe_setting(
            key,
            value,
            "keys must land where Java clients put them (murmur2); another partitioner splits an aggregate's events across partitions",
        )),
        // librdkafka's default with idempotence is INT32_MAX, i.e. forever.
        "retries" if v.parse::<u64>().map_or(true, |n| n < i32::MAX as u64) => {
            Err(unsafe_setting(
                key,
                value,
                "a record is retried until delivered; with a retry limit it fails after a broker outage while \
                 later records of the same key still go out, breaking order; remove the setting",
            ))
        }
        "message.timeout.ms" if v != "0" => Err(unsafe_setting(
            key,
            value,
            "a record that times out is dropped while the next ones still go out, a gap in the stream that \
             breaks the key's order (enable.gapless.guarantee does not cover timed-out records); leave it at 0: \
             retry until delivered",
        )),
        "delivery.report.only.error" if v == "true" => Err(unsafe_setting(
            key,
            value,
            "outboxd acknowledges a record to Postgres only on its successful delivery report; without those \
             reports the slot would never move; remove the setting",
        )),
        "transactional.id" => Err(unsafe_setting(
            key,
            value,
            "transactional delivery is not supported yet; outboxd delivers at least once with identifiable duplicates",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[(&str, &str)]) -> Result<KafkaConfig, ConfigError> {
        let mut props = vec![("bootstrap.servers", "localhost:9092")];
        props.extend_from_slice(extra);
        KafkaConfig::new(props)
    }

    #[test]
    fn required_settings_are_added() {
        let c = config(&[("linger.ms", "5"), ("compression.type", "zstd")]).unwrap();
        for (key, value) in REQUIRED {
            assert_eq!(c.get(key), Some(*value), "{key}");
        }
        assert_eq!(c.get("linger.ms"), Some("5"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(
            c.get("queue.buffering.max.kbytes"),
            Some("32768"),
            "memory bounded by default"
        );
        let c = config(&[("queue.buffering.max.kbytes", "1024")]).unwrap();
        assert_eq!(
            c.get("queue.buffering.max.kbytes"),
            Some("1024"),
            "defaults can be overridden"
        );
    }

    #[test]
    fn unsafe_overrides_are_refused_with_the_reason() {
        for (key, value, why) in [
            ("enable.idempotence", "false", "idempotent"),
            ("acks", "1", "in-sync replicas"),
            ("request.required.acks", "0", "in-sync replicas"),
            ("max.in.flight.requests.per.connection", "10", "1 to 5"),
            ("max.in.flight", "0", "1 to 5"),
            ("partitioner", "consistent_random", "murmur2"),
            ("message.timeout.ms", "30000", "gap"),
            ("delivery.timeout.ms", "30000", "gap"),
            ("transactional.id", "x", "not supported yet"),
            ("retries", "3", "breaking order"),
            ("message.send.max.retries", "10", "breaking order"),
        ] {
            let err = config(&[(key, value)]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(value) && text.contains(why),
                "{key}={value}: {text}"
            );
        }
    }

    #[test]
    fn safe_spellings_of_required_settings_are_accepted() {
        let c = config(&[
            ("acks", "-1"),
            ("max.in.flight", "1"),
            ("partitioner", "murmur2"),
            ("retries", "2147483647"),
        ])
        .unwrap();
        assert_eq!(c.get("acks"), Some("-1"));
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("1"));
    }

    /// Found in review: a finite timeout was accepted with
    /// `enable.gapless.guarantee`, which does not cover timed-out records, and
    /// `delivery.report.only.error=true` was accepted although the slot moves
    /// only on successful reports.
    #[test]
    fn a_finite_timeout_is_refused_even_with_gapless_and_so_are_error_only_reports() {
        let err = config(&[
            ("message.timeout.ms", "60000"),
            ("enable.gapless.guarantee", "true"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("does not cover timed-out"), "{err}");
        let err = config(&[("delivery.report.only.error", "true")]).unwrap_err();
        assert!(err.to_string().contains("never move"), "{err}");
        let c = config(&[
            ("message.timeout.ms", "0"),
            ("delivery.report.only.error", "false"),
        ])
        .unwrap();
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
    }

    #[test]
    fn bootstrap_servers_are_required() {
        let err = KafkaConfig::new([("linger.ms", "5")]).unwrap_err();
        assert_eq!(err, ConfigError::NoBootstrapServers);
        assert!(err.to_string().contains("OUTBOXD_KAFKA_BROKERS"));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = config(&[("sasl.password", "hunter2"), ("ssl.key.password", "pw")]).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("\"pw\""), "{debug}");
        assert_eq!(c.redacted()["sasl.password"], "<redacted>");
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
    }
}
