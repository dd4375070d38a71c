//! Configuration: a TOML file, then `OUTBOXD_*` environment variables, then
//! command-line flags, each overriding the one before. Unknown keys and
//! unknown `OUTBOXD_*` variables are errors (a typo must not silently fall
//! back to a default). Every default is in this file, in the `Default`
//! implementations; `outboxd.example.toml` at the repository root shows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use outbox_core::redact::{redact, redact_property};
use outbox_core::{
    AdditionalField, CloudEvents, ColumnMapping, PayloadEncoding, Placement, Routing, TopicRule,
};
use pg_replication::{OutboxTable, ReplicationConfig, StreamConfig};
use serde::Deserialize;
use sink_kafka::KafkaConfig;
use sink_rabbitmq::{ExchangeType, RabbitConfig};
use sink_redis::RedisConfig;

use crate::checkpoint_store::StoreKind;
use crate::sink::SinkKind;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the outbox lives and how to stream it.
    pub postgres: PostgresConfig,
    /// Column names of the outbox table.
    pub outbox: OutboxColumns,
    /// Topic, key and headers of the records.
    pub routing: RoutingConfig,
    /// Which broker, and what to do with records it can never take.
    pub sink: SinkSection,
    /// The Kafka producer (`[sink] kind = "kafka"`).
    pub kafka: KafkaSection,
    /// Redis (`[sink] kind = "redis"`).
    pub redis: RedisSection,
    /// RabbitMQ (`[sink] kind = "rabbitmq"`).
    pub rabbitmq: RabbitSection,
    /// outboxd's own record of the last delivered position.
    pub checkpoint: CheckpointConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin HTTP server (metrics, health).
    pub admin: AdminConfig,
    /// The replay window kept on the server.
    pub retention: RetentionConfig,
    /// Heartbeat messages for idle outboxes.
    pub heartbeat: HeartbeatConfig,
    /// Periodic deletion of delivered outbox rows.
    pub cleanup: CleanupConfig,
}

/// `[retention]`: keep the slot this far behind what was delivered, so that
/// `outboxd replay` can re-publish recent events. Both zero: no window.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep delivered positions for at least this long (milliseconds).
    pub duration_ms: u64,
    /// Keep at least this much WAL behind the received position (bytes).
    pub bytes: u64,
}

/// `[heartbeat]`: emit `pg_logical_emit_message(false, prefix, ...)` on an
/// interval so the slot keeps moving when the outbox is idle and the rest of
/// the database is not (never forwarded to Kafka).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Interval in milliseconds; 0 disables.
    pub interval_ms: u64,
    /// The message prefix.
    pub prefix: String,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 0,
            prefix: "outboxd.heartbeat".into(),
        }
    }
}

/// `[cleanup]`: delete outbox rows that are delivered and older than
/// `older_than_ms`, in batches, every `interval_ms`. Off by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// Interval in milliseconds; 0 disables.
    pub interval_ms: u64,
    /// Only rows whose `created_at` is older than this (milliseconds).
    pub older_than_ms: u64,
    /// Rows per delete statement.
    pub batch_size: u32,
    /// The column holding the row's creation time.
    pub created_at_column: String,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            interval_ms: 0,
            older_than_ms: 7 * 24 * 3600 * 1000,
            batch_size: 1000,
            created_at_column: "created_at".into(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty to disable.
    pub listen: String,
    /// `/readyz` fails when replication or delivery has been stalled this long (milliseconds).
    pub stall_threshold_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9187".into(),
            stall_threshold_ms: 30_000,
        }
    }
}

/// `[postgres]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL or libpq key=value string (`sslmode`, `sslrootcert`
    /// honoured). Prefer `OUTBOXD_POSTGRES_URL` or `password_file` for secrets.
    pub url: String,
    /// A file whose content (trimmed) is the password.
    pub password_file: Option<PathBuf>,
    /// The replication slot (created by `outboxd setup`).
    pub slot: String,
    /// The publication (created by `outboxd setup`).
    pub publication: String,
    /// Outbox tables, `schema.table` (or `table` for `public`).
    pub tables: Vec<String>,
    /// Transactional `pg_logical_emit_message` calls with this prefix carry
    /// outbox events too (a JSON envelope with the outbox columns).
    pub message_prefix: Option<String>,
    /// Status update interval in milliseconds (capped at half the server's
    /// `wal_sender_timeout`).
    pub status_interval_ms: u64,
    /// Send the password when the server asks for it in clear text over a
    /// TCP connection without TLS (refused by default).
    pub allow_cleartext_password: bool,
    /// Bytes of decoded events (their column values) held between the
    /// replication stream and the pipeline; when full, reading from
    /// PostgreSQL pauses. With the Kafka producer's queue
    /// (`queue.buffering.max.kbytes`) it bounds memory while the broker is
    /// slow or down.
    pub buffer_bytes: u64,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("password_file", &self.password_file)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("message_prefix", &self.message_prefix)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("allow_cleartext_password", &self.allow_cleartext_password)
            .field("buffer_bytes", &self.buffer_bytes)
            .finish()
    }
}

/// The connection string (any URL) as it may be shown: the one redaction
/// function, [`outbox_core::redact::redact`], under the name callers used.
pub use outbox_core::redact::redact as redact_url;

/// The smallest `postgres.buffer_bytes`: a few small events.
const MIN_BUFFER_BYTES: u64 = 64 * 1024;
/// The largest `postgres.buffer_bytes` (the budget is counted in `u32`).
const MAX_BUFFER_BYTES: u64 = u32::MAX as u64;

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://outboxd@localhost:5432/postgres".into(),
            password_file: None,
            slot: "outboxd".into(),
            publication: "outboxd".into(),
            tables: vec!["public.outbox".into()],
            message_prefix: None,
            status_interval_ms: 1000,
            allow_cleartext_password: false,
            buffer_bytes: pg_replication::DEFAULT_BUFFER_BYTES as u64,
        }
    }
}

/// `[outbox]`: column names (Debezium's outbox router's defaults).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// Event id column.
    pub id: String,
    /// Aggregate type column.
    pub aggregate_type: String,
    /// Aggregate id column (the record key).
    pub aggregate_id: String,
    /// Event type column.
    pub event_type: String,
    /// Payload column (the record value).
    pub payload: String,
    /// Extra columns sent as headers.
    pub extra_headers: Vec<String>,
    /// Extra columns placed as Debezium's `table.fields.additional.placement`
    /// does: `column:header[:alias]`, `column:envelope[:alias]`, `column:partition`.
    #[serde(deserialize_with = "additional_fields")]
    pub additional: Vec<AdditionalField>,
    /// A JSON object column whose every key becomes a header.
    pub headers_column: Option<String>,
    /// The key column (default: the aggregate id column).
    pub key: Option<String>,
    /// The record timestamp column: `timestamptz`, `timestamp` (as UTC) or
    /// `bigint` (milliseconds). Default: the transaction's commit time.
    pub timestamp: Option<String>,
    /// A column holding a W3C `traceparent`, sent as the `traceparent` header.
    pub traceparent: Option<String>,
    /// A column holding a W3C `tracestate`, sent as the `tracestate` header.
    pub tracestate: Option<String>,
    /// What an UPDATE of an outbox row does: `ignore` (default; the
    /// publication publishes inserts only), `warn` or `stop` (the publication
    /// must publish updates; `outboxd setup` creates it so).
    pub on_update: OnUpdate,
}

/// `[outbox] on_update` (Debezium's `table.op.invalid.behavior`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUpdate {
    /// Updates are not published, so never seen.
    #[default]
    Ignore,
    /// Log a warning and go on.
    Warn,
    /// Stop before the transaction is acknowledged.
    Stop,
}

impl OnUpdate {
    /// The `publish` list of the publication this policy needs.
    pub fn publish(self) -> &'static str {
        match self {
            OnUpdate::Ignore => "insert",
            OnUpdate::Warn | OnUpdate::Stop => "insert, update",
        }
    }
}

fn additional_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AdditionalField>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|entry| entry.parse().map_err(serde::de::Error::custom))
        .collect()
}

impl Default for OutboxColumns {
    fn default() -> Self {
        let d = ColumnMapping::default();
        OutboxColumns {
            id: d.id,
            aggregate_type: d.aggregate_type,
            aggregate_id: d.aggregate_id,
            event_type: d.event_type,
            payload: d.payload,
            extra_headers: d.extra_headers,
            additional: d.additional,
            headers_column: d.headers_column,
            key: d.key,
            timestamp: d.timestamp,
            traceparent: None,
            tracestate: None,
            on_update: OnUpdate::Ignore,
        }
    }
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Topic template (`${aggregatetype}`, `${type}`); without placeholders
    /// every record goes to that one topic.
    pub topic: String,
    /// Take the topic from this column instead.
    pub topic_column: Option<String>,
    /// A NULL payload becomes a tombstone (null value) instead of an empty value.
    pub tombstone_on_null: bool,
    /// An empty payload (empty text or `bytea`) becomes a tombstone too.
    pub tombstone_on_empty: bool,
    /// `raw` (the bytes as stored) or `json-string` (text and JSON payloads
    /// as a JSON string, as Debezium's JSON converter sends them).
    pub payload_encoding: PayloadEncodingConfig,
    /// Headers added to every record (`[routing.headers]`).
    pub headers: BTreeMap<String, String>,
    /// CloudEvents binary content mode: `ce_*` headers, the payload untouched.
    pub cloudevents: bool,
    /// The CloudEvents `source`; `${table}` is the event's table or message
    /// prefix. Default `/outboxd/<database>/${table}`.
    pub ce_source: Option<String>,
}

/// `[routing] payload_encoding`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadEncodingConfig {
    /// The bytes as stored.
    #[default]
    Raw,
    /// A JSON string holding the payload's text; `bytea` as stored.
    JsonString,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            topic: "outbox.event.${aggregatetype}".into(),
            topic_column: None,
            tombstone_on_null: false,
            tombstone_on_empty: false,
            payload_encoding: PayloadEncodingConfig::Raw,
            headers: BTreeMap::new(),
            cloudevents: false,
            ce_source: None,
        }
    }
}

/// What to do with a record that can never be delivered.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PermanentErrorPolicy {
    /// Stop: nothing past it is acknowledged; exit non-zero naming the event.
    #[default]
    Stop,
    /// Publish it to the dead-letter topic with the error, then go on.
    DeadLetter,
}

impl PermanentErrorPolicy {
    fn from_env(name: &str, value: &str) -> anyhow::Result<Self> {
        match value {
            "stop" => Ok(PermanentErrorPolicy::Stop),
            "dead-letter" => Ok(PermanentErrorPolicy::DeadLetter),
            other => bail!("{name}={other:?}: expected stop or dead-letter"),
        }
    }
}

/// `[sink]`: the broker records go to, and the policy for records it can
/// never take. The policy keys may also stand in `[kafka]`, where earlier
/// versions read them; a value here wins, and different values in both
/// places are refused.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSection {
    /// `kafka` (default).
    pub kind: SinkKind,
    /// `stop` (default) or `dead-letter`.
    pub on_permanent_error: Option<PermanentErrorPolicy>,
    /// Where dead-lettered records go (a topic; default `outboxd.dlq`).
    pub dead_letter: Option<String>,
    /// How long a shutdown waits for outstanding deliveries, in milliseconds
    /// (default 30 s).
    pub drain_timeout_ms: Option<u64>,
}

/// `[kafka]`
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap servers (shorthand for `properties."bootstrap.servers"`).
    pub brokers: Option<String>,
    /// `stop` or `dead-letter`.
    pub on_permanent_error: PermanentErrorPolicy,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// How long a shutdown waits for outstanding deliveries, in milliseconds.
    pub drain_timeout_ms: u64,
    /// The Kafka client's properties passed through (TLS, SASL, compression,
    /// linger, batch size, queue limits, …); unsafe overrides are refused.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, String> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), redact_property(k, v)))
            .collect();
        f.debug_struct("KafkaSection")
            .field("brokers", &self.brokers.as_deref().map(redact))
            .field("on_permanent_error", &self.on_permanent_error)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("properties", &properties)
            .finish()
    }
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: None,
            on_permanent_error: PermanentErrorPolicy::Stop,
            dead_letter_topic: "outboxd.dlq".into(),
            drain_timeout_ms: 30_000,
            properties: BTreeMap::new(),
        }
    }
}

/// `[redis]`: the Redis sink (Streams). Unset keys take the sink's defaults
/// (`sink_redis::defaults`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port/db`, `rediss://` for TLS. Prefer
    /// `OUTBOXD_REDIS_URL` for a password.
    pub url: String,
    /// `streams` (default) or `bullmq`.
    pub mode: RedisMode,
    /// BullMQ's key prefix (`mode = "bullmq"`).
    pub bullmq_prefix: String,
    /// How long event ids are remembered per stream against re-sends
    /// (milliseconds; default 7 days; keep it ≥ the replay window).
    pub dedupe_ttl_ms: Option<u64>,
    /// Trim each stream to about this many entries (`MAXLEN ~`); unset: never.
    pub maxlen: Option<u64>,
    /// `WAIT` for this many replicas before a record counts as delivered.
    pub wait_replicas: u32,
    /// The `WAIT` timeout (milliseconds; default 1000).
    pub wait_timeout_ms: Option<u64>,
    /// Larger records are refused for good (default 1 MiB).
    pub max_record_bytes: Option<usize>,
    /// Records in flight (one pipelined batch; default 512).
    pub max_in_flight: Option<usize>,
}

/// `[redis] mode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One stream per routed name.
    #[default]
    Streams,
    /// One BullMQ queue per routed name.
    Bullmq,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: "redis://127.0.0.1:6379".into(),
            mode: RedisMode::Streams,
            bullmq_prefix: "bull".into(),
            dedupe_ttl_ms: None,
            maxlen: None,
            wait_replicas: 0,
            wait_timeout_ms: None,
            max_record_bytes: None,
            max_in_flight: None,
        }
    }
}

impl std::fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSection")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("bullmq_prefix", &self.bullmq_prefix)
            .field("dedupe_ttl_ms", &self.dedupe_ttl_ms)
            .field("maxlen", &self.maxlen)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// `[rabbitmq]`: the RabbitMQ sink (AMQP 0-9-1, publisher confirms,
/// `mandatory`). Unset keys take the sink's defaults (`sink_rabbitmq`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitSection {
    /// `amqp://user:password@host:5672/vhost` (the vhost URL-encoded, `%2f`
    /// for `/`), `amqps://` for TLS. Prefer `OUTBOXD_RABBITMQ_URL` or
    /// `password_file` for the password.
    pub url: String,
    /// A file whose first line is the password (replaces the URL's).
    pub password_file: Option<PathBuf>,
    /// The exchange, or a template with `${aggregatetype}` / `${type}`
    /// (`outboxd setup` declares a fixed one).
    pub exchange: String,
    /// The exchange's type as `setup` declares it and `check` expects it:
    /// `topic` (default), `direct`, `fanout`, or `x-consistent-hash` (per-key
    /// parallelism: plugin `rabbitmq_consistent_hash_exchange`, hashing the
    /// `aggregateid` header).
    pub exchange_type: RabbitExchangeType,
    /// The routing-key template (`${aggregatetype}`, `${type}`); without
    /// placeholders every record has that one key. `routing.topic_column`,
    /// when set, supplies the key instead.
    pub routing_key: String,
    /// Records published and not yet confirmed (default 1024).
    pub max_in_flight: Option<usize>,
    /// Body bytes published and not yet confirmed (default 32 MiB).
    pub max_in_flight_bytes: Option<usize>,
    /// Larger bodies are refused for good without reaching the broker
    /// (default 128 MiB, RabbitMQ's own `max_message_size`).
    pub max_message_bytes: Option<usize>,
    /// A PEM file of CA certificates trusted for `amqps://` (besides the
    /// system's).
    pub ca_file: Option<PathBuf>,
    /// The management HTTP API (`host:port`; default the broker's host,
    /// port 15672): `check` reads the exchange's type and bindings there.
    pub management: Option<String>,
}

/// `[rabbitmq] exchange_type`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RabbitExchangeType {
    /// `topic`.
    #[default]
    Topic,
    /// `direct`.
    Direct,
    /// `fanout`.
    Fanout,
    /// `x-consistent-hash`.
    XConsistentHash,
}

impl RabbitExchangeType {
    /// The sink's exchange type.
    pub fn kind(self) -> ExchangeType {
        match self {
            RabbitExchangeType::Topic => ExchangeType::Topic,
            RabbitExchangeType::Direct => ExchangeType::Direct,
            RabbitExchangeType::Fanout => ExchangeType::Fanout,
            RabbitExchangeType::XConsistentHash => ExchangeType::ConsistentHash,
        }
    }
}

impl Default for RabbitSection {
    fn default() -> Self {
        RabbitSection {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            password_file: None,
            exchange: sink_rabbitmq::DEFAULT_EXCHANGE.into(),
            exchange_type: RabbitExchangeType::Topic,
            routing_key: sink_rabbitmq::DEFAULT_ROUTING_KEY.into(),
            max_in_flight: None,
            max_in_flight_bytes: None,
            max_message_bytes: None,
            ca_file: None,
            management: None,
        }
    }
}

impl std::fmt::Debug for RabbitSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSection")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("routing_key", &self.routing_key)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ca_file", &self.ca_file)
            .field("management", &self.management)
            .finish()
    }
}

/// `[checkpoint]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// `file` (default, one instance) or `postgres` (a table on the primary,
    /// for several instances on one slot).
    pub store: StoreKind,
    /// The checkpoint file (`store = "file"`).
    pub path: PathBuf,
    /// The checkpoint table, `table` or `schema.table` (`store = "postgres"`).
    pub table: String,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: StoreKind::File,
            path: PathBuf::from("outboxd.checkpoint"),
            table: "outboxd_checkpoint".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `outboxd=debug,info`, …); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The environment variables read, each overriding one key.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("OUTBOXD_POSTGRES_URL", "postgres.url"),
    ("OUTBOXD_POSTGRES_PASSWORD_FILE", "postgres.password_file"),
    ("OUTBOXD_POSTGRES_SLOT", "postgres.slot"),
    ("OUTBOXD_POSTGRES_PUBLICATION", "postgres.publication"),
    ("OUTBOXD_POSTGRES_TABLES", "postgres.tables (comma-separated)"),
    ("OUTBOXD_SINK", "sink.kind"),
    ("OUTBOXD_SINK_ON_PERMANENT_ERROR", "sink.on_permanent_error"),
    ("OUTBOXD_SINK_DEAD_LETTER", "sink.dead_letter"),
    ("OUTBOXD_KAFKA_BROKERS", "kafka.brokers"),
    ("OUTBOXD_KAFKA_ON_PERMANENT_ERROR", "kafka.on_permanent_error"),
    ("OUTBOXD_KAFKA_DEAD_LETTER_TOPIC", "kafka.dead_letter_topic"),
    ("OUTBOXD_REDIS_URL", "redis.url"),
    ("OUTBOXD_RABBITMQ_URL", "rabbitmq.url"),
    ("OUTBOXD_RABBITMQ_PASSWORD_FILE", "rabbitmq.password_file"),
    ("OUTBOXD_RABBITMQ_EXCHANGE", "rabbitmq.exchange"),
    ("OUTBOXD_RABBITMQ_ROUTING_KEY", "rabbitmq.routing_key"),
    ("OUTBOXD_CHECKPOINT_PATH", "checkpoint.path"),
    ("OUTBOXD_CHECKPOINT_STORE", "checkpoint.store"),
    ("OUTBOXD_LOG_FORMAT", "log.format"),
    ("OUTBOXD_LOG_LEVEL", "log.level"),
    ("OUTBOXD_ADMIN_LISTEN", "admin.listen"),
];

impl Config {
    /// Reads `path` (if given), then applies `env` (`OUTBOXD_*` pairs).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Parses TOML (unknown keys are errors).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text)
            .map_err(|err| anyhow::anyhow!(crate::config_checks::describe_toml_error(text, &err)))
    }

    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<()> {
        for (name, value) in env {
            if !name.starts_with("OUTBOXD_") {
                continue;
            }
            match name.as_str() {
                "OUTBOXD_POSTGRES_URL" => self.postgres.url = value,
                "OUTBOXD_POSTGRES_PASSWORD_FILE" => self.postgres.password_file = Some(value.into()),
                "OUTBOXD_POSTGRES_SLOT" => self.postgres.slot = value,
                "OUTBOXD_POSTGRES_PUBLICATION" => self.postgres.publication = value,
                "OUTBOXD_POSTGRES_TABLES" => {
                    self.postgres.tables = value
                        .split(',')
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect()
                }
                "OUTBOXD_SINK" => {
                    self.sink.kind = SinkKind::parse(&value).with_context(|| {
                        format!(
                            "OUTBOXD_SINK={value:?}: expected one of {}",
                            SinkKind::ALL.join(", ")
                        )
                    })?
                }
                "OUTBOXD_KAFKA_BROKERS" => self.kafka.brokers = Some(value),
                "OUTBOXD_KAFKA_ON_PERMANENT_ERROR" => {
                    self.kafka.on_permanent_error = PermanentErrorPolicy::from_env(&name, &value)?
                }
                "OUTBOXD_SINK_ON_PERMANENT_ERROR" => {
                    self.sink.on_permanent_error = Some(PermanentErrorPolicy::from_env(&name, &value)?)
                }
                "OUTBOXD_SINK_DEAD_LETTER" => self.sink.dead_letter = Some(value),
                "OUTBOXD_KAFKA_DEAD_LETTER_TOPIC" => self.kafka.dead_letter_topic = value,
                "OUTBOXD_REDIS_URL" => self.redis.url = value,
                "OUTBOXD_RABBITMQ_URL" => self.rabbitmq.url = value,
                "OUTBOXD_RABBITMQ_PASSWORD_FILE" => self.rabbitmq.password_file = Some(value.into()),
                "OUTBOXD_RABBITMQ_EXCHANGE" => self.rabbitmq.exchange = value,
                "OUTBOXD_RABBITMQ_ROUTING_KEY" => self.rabbitmq.routing_key = value,
                "OUTBOXD_CHECKPOINT_PATH" => self.checkpoint.path = value.into(),
                "OUTBOXD_CHECKPOINT_STORE" => {
                    self.checkpoint.store = match value.as_str() {
                        "file" => StoreKind::File,
                        "postgres" => StoreKind::Postgres,
                        other => bail!("OUTBOXD_CHECKPOINT_STORE={other:?}: expected file or postgres"),
                    }
                }
                "OUTBOXD_LOG_FORMAT" => {
                    self.log.format = match value.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => bail!("OUTBOXD_LOG_FORMAT={other:?}: expected text or json"),
                    }
                }
                "OUTBOXD_LOG_LEVEL" => self.log.level = value,
                "OUTBOXD_ADMIN_LISTEN" => self.admin.listen = value,
                other => {
                    let known: Vec<&str> = ENV_VARS.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "unknown environment variable {other}; outboxd reads {}",
                        known.join(", ")
                    )
                }
            }
        }
        Ok(())
    }

    /// The replication connection settings (URL parsed, password file read).
    pub fn replication(&self) -> anyhow::Result<ReplicationConfig> {
        let mut connection: ReplicationConfig = self
            .postgres
            .url
            .parse()
            .context("postgres.url is not a valid connection string")?;
        if let Some(path) = &self.postgres.password_file {
            let password = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read postgres.password_file {}", path.display()))?;
            connection.set_password(password.trim_end_matches(['\n', '\r']));
        }
        connection.allow_cleartext_password(self.postgres.allow_cleartext_password);
        Ok(connection)
    }

    /// The outbox tables as `(schema, name)`.
    pub fn tables(&self) -> anyhow::Result<Vec<OutboxTable>> {
        if self.postgres.tables.is_empty() && self.postgres.message_prefix.is_none() {
            bail!(
                "postgres.tables is empty and no postgres.message_prefix is set: there is nothing to stream"
            );
        }
        self.postgres
            .tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((schema, name)) if !schema.is_empty() && !name.is_empty() && !name.contains('.') => {
                    Ok(OutboxTable::new(schema, name))
                }
                None if !t.is_empty() => Ok(OutboxTable::new("public", t.as_str())),
                _ => bail!("postgres.tables entry {t:?} is not `schema.table` or `table`"),
            })
            .collect()
    }

    /// The stream settings.
    pub fn stream(&self) -> anyhow::Result<StreamConfig> {
        let mut stream = StreamConfig::new(
            self.replication()?,
            &self.postgres.slot,
            &self.postgres.publication,
        );
        stream.tables = self.tables()?;
        stream.message_prefix = self.postgres.message_prefix.clone();
        stream.on_update = match self.outbox.on_update {
            OnUpdate::Ignore => pg_replication::UpdatePolicy::Ignore,
            OnUpdate::Warn => pg_replication::UpdatePolicy::Warn,
            OnUpdate::Stop => pg_replication::UpdatePolicy::Stop,
        };
        stream.status_interval = Duration::from_millis(self.postgres.status_interval_ms.max(10));
        stream.buffer_bytes = usize::try_from(self.postgres.buffer_bytes).unwrap_or(usize::MAX);
        Ok(stream)
    }

    /// The column mapping.
    pub fn mapping(&self) -> ColumnMapping {
        let o = &self.outbox;
        ColumnMapping {
            id: o.id.clone(),
            aggregate_type: o.aggregate_type.clone(),
            aggregate_id: o.aggregate_id.clone(),
            event_type: o.event_type.clone(),
            payload: o.payload.clone(),
            extra_headers: o.extra_headers.clone(),
            additional: self.additional(),
            headers_column: o.headers_column.clone(),
            key: o.key.clone(),
            timestamp: o.timestamp.clone(),
            topic: self.routing.topic_column.clone(),
        }
    }

    /// `outbox.additional`, with the trace context columns as headers.
    fn additional(&self) -> Vec<AdditionalField> {
        let o = &self.outbox;
        let trace = [("traceparent", &o.traceparent), ("tracestate", &o.tracestate)];
        let mut fields = o.additional.clone();
        fields.extend(trace.into_iter().filter_map(|(header, column)| {
            Some(AdditionalField {
                column: column.clone()?,
                placement: Placement::Header(header.to_owned()),
            })
        }));
        fields
    }

    /// The routing rules: each record's destination name (a topic, a stream,
    /// a routing key) from `routing.topic_column`, else the template of the
    /// sink (`rabbitmq.routing_key` for RabbitMQ, `routing.topic` otherwise).
    pub fn routing(&self) -> anyhow::Result<Routing> {
        let template = match self.sink.kind {
            SinkKind::RabbitMq => &self.rabbitmq.routing_key,
            SinkKind::Kafka | SinkKind::Redis => &self.routing.topic,
        };
        let rule = if self.routing.topic_column.is_some() {
            TopicRule::Column
        } else if template.contains("${") {
            TopicRule::Template(template.clone())
        } else {
            TopicRule::Fixed(template.clone())
        };
        let encoding = match self.routing.payload_encoding {
            PayloadEncodingConfig::Raw => PayloadEncoding::Raw,
            PayloadEncodingConfig::JsonString => PayloadEncoding::JsonString,
        };
        let headers = self
            .routing
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), bytes::Bytes::from(value.clone())))
            .collect();
        Ok(Routing::new(rule, self.routing.tombstone_on_null)?
            .with_tombstone_on_empty(self.routing.tombstone_on_empty)
            .with_encoding(encoding)
            .with_static_headers(headers)
            .with_cloudevents(self.cloudevents()?)
            .with_names(self.sink.kind.names()))
    }

    /// `[routing] cloudevents`, with the default source naming the database.
    fn cloudevents(&self) -> anyhow::Result<Option<CloudEvents>> {
        if !self.routing.cloudevents {
            if self.routing.ce_source.is_some() {
                bail!("routing.ce_source is set but routing.cloudevents is not: set cloudevents = true or remove it");
            }
            return Ok(None);
        }
        let source = match &self.routing.ce_source {
            Some(source) if source.is_empty() => {
                bail!("routing.ce_source is empty (CloudEvents requires a source)")
            }
            Some(source) => source.clone(),
            None => format!("/outboxd/{}/${{table}}", self.replication()?.dbname()?),
        };
        Ok(Some(CloudEvents { source }))
    }

    /// The permanent-error policy (`[sink]`, else `[kafka]`).
    pub fn policy(&self) -> anyhow::Result<PermanentErrorPolicy> {
        let legacy = self.kafka.on_permanent_error;
        match self.sink.on_permanent_error {
            Some(policy) if legacy != PermanentErrorPolicy::default() && policy != legacy => bail!(
                "sink.on_permanent_error = {policy:?} and kafka.on_permanent_error = {legacy:?} disagree: \
                 set it once, in [sink]"
            ),
            Some(policy) => Ok(policy),
            None => Ok(legacy),
        }
    }

    /// Where dead-lettered records go (`[sink] dead_letter`, else the sink's own default).
    pub fn dead_letter(&self) -> String {
        match (&self.sink.dead_letter, self.sink.kind) {
            (Some(destination), _) => destination.clone(),
            (None, SinkKind::Kafka) => self.kafka.dead_letter_topic.clone(),
            (None, SinkKind::Redis | SinkKind::RabbitMq) => "outboxd.dlq".into(),
        }
    }

    /// How long a shutdown waits for outstanding deliveries.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.sink.drain_timeout_ms.unwrap_or(self.kafka.drain_timeout_ms))
    }

    /// The checked producer settings.
    pub fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        let mut properties = self.kafka.properties.clone();
        if let Some(brokers) = &self.kafka.brokers {
            properties.insert("bootstrap.servers".into(), brokers.clone());
        }
        Ok(KafkaConfig::new(properties)?)
    }

    /// The checked Redis sink settings.
    pub fn redis(&self) -> anyhow::Result<RedisConfig> {
        let r = &self.redis;
        let mut config = RedisConfig::new(&r.url)?;
        if r.mode == RedisMode::Bullmq {
            if r.bullmq_prefix.is_empty() {
                bail!("redis.bullmq_prefix is empty (BullMQ's own default is \"bull\")");
            }
            config.mode = sink_redis::Mode::BullMq {
                prefix: r.bullmq_prefix.clone(),
            };
        }
        if let Some(ms) = r.dedupe_ttl_ms {
            config.dedupe_ttl = Duration::from_millis(ms);
        }
        config.maxlen = r.maxlen;
        config.wait_replicas = r.wait_replicas;
        if let Some(ms) = r.wait_timeout_ms {
            config.wait_timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = r.max_record_bytes {
            config.max_record_bytes = bytes;
        }
        if let Some(n) = r.max_in_flight {
            config.max_in_flight = n;
        }
        config.check()?;
        Ok(config)
    }

    /// The checked RabbitMQ sink settings (password file and CA file read).
    pub fn rabbitmq(&self) -> anyhow::Result<RabbitConfig> {
        let r = &self.rabbitmq;
        let mut config = RabbitConfig::new(&r.url).context("rabbitmq.url")?;
        if let Some(path) = &r.password_file {
            config = config.password_file(path).context("rabbitmq.password_file")?;
        }
        config = config.exchange(&r.exchange).context("rabbitmq.exchange")?;
        if let Some(records) = r.max_in_flight {
            config = config.max_in_flight(records).context("rabbitmq.max_in_flight")?;
        }
        if let Some(bytes) = r.max_in_flight_bytes {
            config = config.max_in_flight_bytes(bytes);
        }
        if let Some(bytes) = r.max_message_bytes {
            config = config.max_message_bytes(bytes);
        }
        if let Some(path) = &r.ca_file {
            config = config.ca_file(path).context("rabbitmq.ca_file")?;
        }
        if let Some(address) = &r.management {
            config = config.management(address);
        }
        Ok(config)
    }

    /// Checks everything that can be checked without connecting.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.replication()?;
        self.tables()?;
        self.routing()?;
        match self.sink.kind {
            SinkKind::Kafka => {
                self.kafka()?;
            }
            SinkKind::Redis => {
                self.redis()?;
            }
            SinkKind::RabbitMq => {
                self.rabbitmq()?;
                if self.routing.topic != RoutingConfig::default().topic {
                    bail!(
                        "routing.topic is set, but with [sink] kind = \"rabbitmq\" records are routed by \
                         rabbitmq.exchange and rabbitmq.routing_key: move the template to rabbitmq.routing_key"
                    );
                }
                let key = &self.rabbitmq.routing_key;
                if !key.contains("${") {
                    if let Err(rule) = self.sink.kind.names().check(key) {
                        bail!("rabbitmq.routing_key {key:?} is not a valid routing key ({rule})");
                    }
                }
            }
        }
        if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&self.postgres.buffer_bytes) {
            bail!(
                "postgres.buffer_bytes = {} is out of range: it must be between {MIN_BUFFER_BYTES} (64 KiB) \
                 and {MAX_BUFFER_BYTES} (4 GiB - 1)",
                self.postgres.buffer_bytes
            );
        }
        if self.policy()? == PermanentErrorPolicy::DeadLetter {
            let destination = self.dead_letter();
            if destination.is_empty() {
                bail!(
                    "on_permanent_error = \"dead-letter\" needs a dead-letter destination (sink.dead_letter)"
                );
            }
            if let Err(rule) = self.sink.kind.names().check(&destination) {
                bail!(
                    "sink.dead_letter {destination:?} is not a valid {} name ({rule})",
                    self.sink.kind.as_str()
                );
            }
        }
        crate::config_checks::refuse_unworkable(self)
    }

    /// Warnings about settings that work but expose something: secret files
    /// other users can read (`file` is the config file read), topics the
    /// broker may create from row data.
    pub fn warnings(&self, file: Option<&Path>) -> Vec<String> {
        crate::config_checks::warnings(self, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_equals_the_defaults_it_documents() {
        let text = include_str!("../../../outboxd.example.toml");
        let config = Config::from_toml(text).unwrap();
        let mut expected = Config::default();
        expected.postgres.url = "postgres://outboxd@localhost:5432/app".into();
        expected.kafka.brokers = Some("localhost:9092".into());
        expected.kafka.properties.insert("linger.ms".into(), "5".into());
        expected
            .kafka
            .properties
            .insert("compression.type".into(), "lz4".into());
        assert_eq!(config, expected);
        config.validate().unwrap();
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        let mut config = Config::default();
        config.postgres.url = "postgres://u:hunter2@db:5432/app".into();
        assert!(!format!("{config:?}").contains("hunter2"));
        config.postgres.url = "host=db user=u password=hunter2 dbname=app".into();
        assert!(!format!("{config:?}").contains("hunter2"));
        config.redis.url = "rediss://app:hunter2@cache:6380/1".into();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn the_docker_config_is_valid_with_the_compose_environment() {
        let mut config = Config::from_toml(include_str!("../../../docker/outboxd.toml")).unwrap();
        config
            .apply_env([
                (
                    "OUTBOXD_POSTGRES_URL".to_owned(),
                    "postgres://outboxd:pw@postgres:5432/app".to_owned(),
                ),
                ("OUTBOXD_KAFKA_BROKERS".to_owned(), "kafka:9092".to_owned()),
            ])
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.admin.listen, "0.0.0.0:9187");
    }

    #[test]
    fn cleartext_passwords_over_plaintext_are_refused_unless_allowed() {
        let config = Config::default();
        assert!(!config.replication().unwrap().cleartext_password_allowed());
        let config = Config::from_toml("[postgres]\nallow_cleartext_password = true\n").unwrap();
        assert!(config.replication().unwrap().cleartext_password_allowed());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml("[postgres]\nslott = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `slott`"), "{err:#}");
        let err = Config::from_toml("[kafak]\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `kafak`"), "{err:#}");
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_variables_are_errors() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let mut config = Config::from_toml("[postgres]\nslot = \"from_file\"\n").unwrap();
        config
            .apply_env(env(&[
                ("OUTBOXD_POSTGRES_SLOT", "from_env"),
                ("OUTBOXD_KAFKA_BROKERS", "k:9092"),
                ("OUTBOXD_KAFKA_ON_PERMANENT_ERROR", "dead-letter"),
                ("OUTBOXD_POSTGRES_TABLES", "app.outbox, other"),
                ("PATH", "/bin"),
            ]))
            .unwrap();
        assert_eq!(config.postgres.slot, "from_env");
        assert_eq!(config.kafka.on_permanent_error, PermanentErrorPolicy::DeadLetter);
        assert_eq!(config.kafka().unwrap().get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(
            config.tables().unwrap(),
            vec![
                OutboxTable::new("app", "outbox"),
                OutboxTable::new("public", "other")
            ]
        );
        let err = config
            .apply_env(env(&[("OUTBOXD_POSTGRES_SLOTT", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("OUTBOXD_POSTGRES_SLOTT"), "{err}");
    }

    #[test]
    fn unsafe_kafka_overrides_are_refused() {
        let config = Config::from_toml(
            "[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\n\"enable.idempotence\" = \"false\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("enable.idempotence=false is refused"),
            "{err}"
        );
    }

    #[test]
    fn routing_rules_from_the_topic_setting() {
        let fixed = Config::from_toml("[routing]\ntopic = \"events\"\n").unwrap();
        assert_eq!(
            fixed.routing().unwrap(),
            Routing::new(TopicRule::Fixed("events".into()), false).unwrap()
        );
        let bad = Config::from_toml("[routing]\ntopic = \"x.${nope}\"\n").unwrap();
        assert!(bad
            .routing()
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder"));
    }

    #[test]
    fn debezium_style_mapping_keys_and_a_bad_placement_naming_the_syntax() {
        let config = Config::from_toml(
            "[outbox]\nadditional = [\"type:header:eventType\", \"shard:partition\"]\nkey = \"customer\"\n\
             timestamp = \"created_at\"\ntraceparent = \"tp\"\n\
             [routing]\npayload_encoding = \"json-string\"\ntombstone_on_empty = true\n",
        )
        .unwrap();
        let mapping = config.mapping();
        assert_eq!(mapping.key.as_deref(), Some("customer"));
        assert_eq!(mapping.timestamp.as_deref(), Some("created_at"));
        assert_eq!(
            mapping.additional,
            vec![
                AdditionalField {
                    column: "type".into(),
                    placement: Placement::Header("eventType".into())
                },
                AdditionalField {
                    column: "shard".into(),
                    placement: Placement::Partition
                },
                AdditionalField {
                    column: "tp".into(),
                    placement: Placement::Header("traceparent".into())
                },
            ]
        );
        assert_eq!(
            config.routing().unwrap(),
            Routing::new(TopicRule::Template("outbox.event.${aggregatetype}".into()), false)
                .unwrap()
                .with_tombstone_on_empty(true)
                .with_encoding(PayloadEncoding::JsonString)
        );
        let err = Config::from_toml("[outbox]\nadditional = [\"type:body\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("column:header[:alias]"), "{err:#}");
        let stray = Config::from_toml("[routing]\nce_source = \"/x\"\n").unwrap();
        let err = stray.routing().unwrap_err();
        assert!(format!("{err:#}").contains("set cloudevents = true"), "{err:#}");
        let err = Config::from_toml("[routing]\npayload_encoding = \"base64\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("unknown variant"), "{err:#}");
    }

    #[test]
    fn the_sink_policy_is_read_from_sink_or_kafka_and_a_disagreement_is_refused() {
        let legacy = Config::from_toml("[kafka]\non_permanent_error = \"dead-letter\"\n").unwrap();
        assert_eq!(legacy.policy().unwrap(), PermanentErrorPolicy::DeadLetter);
        assert_eq!(legacy.dead_letter(), "outboxd.dlq");
        let neutral =
            Config::from_toml("[sink]\non_permanent_error = \"dead-letter\"\ndead_letter = \"dlq.v2\"\n")
                .unwrap();
        assert_eq!(neutral.policy().unwrap(), PermanentErrorPolicy::DeadLetter);
        assert_eq!(neutral.dead_letter(), "dlq.v2");
        let both = Config::from_toml(
            "[sink]\non_permanent_error = \"stop\"\n[kafka]\non_permanent_error = \"dead-letter\"\n",
        )
        .unwrap();
        let err = both.policy().unwrap_err();
        assert!(format!("{err:#}").contains("disagree"), "{err:#}");
        let bad = Config::from_toml(
            "[sink]\non_permanent_error = \"dead-letter\"\ndead_letter = \"no/slash\"\n\
             [kafka]\nbrokers = \"k:9092\"\n",
        )
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(
            format!("{err:#}").contains("sink.dead_letter \"no/slash\""),
            "{err:#}"
        );
    }

    #[test]
    fn the_sink_kind_comes_from_the_file_or_outboxd_sink() {
        let mut config = Config::from_toml("[sink]\nkind = \"kafka\"\n").unwrap();
        assert_eq!(config.sink.kind, SinkKind::Kafka);
        let err = config
            .apply_env([("OUTBOXD_SINK".to_owned(), "carrier-pigeon".to_owned())])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("OUTBOXD_SINK=\"carrier-pigeon\": expected one of kafka"),
            "{err}"
        );
        let err = Config::from_toml("[sink]\nkind = \"nats\"\n").unwrap_err();
        // Quoted values in TOML errors are not echoed (they may be secrets).
        assert!(
            format!("{err:#}").contains("(key kind): unknown variant"),
            "{err:#}"
        );
    }

    #[test]
    fn rabbitmq_settings_come_from_the_file_and_the_environment() {
        let mut config = Config::from_toml(
            "[sink]\nkind = \"rabbitmq\"\n[rabbitmq]\nurl = \"amqp://app:hunter2@mq:5672/prod\"\n\
             max_in_flight = 64\nexchange_type = \"x-consistent-hash\"\n",
        )
        .unwrap();
        assert_eq!(config.sink.kind, SinkKind::RabbitMq);
        assert_eq!(config.rabbitmq.exchange_type.kind(), ExchangeType::ConsistentHash);
        assert!(!format!("{config:?}").contains("hunter2"));
        let rabbit = config.rabbitmq().unwrap();
        assert_eq!(rabbit.window(), 64);
        assert_eq!(rabbit.vhost(), "prod");
        assert_eq!(rabbit.exchange_template().as_str(), "outbox");
        config
            .apply_env([
                (
                    "OUTBOXD_RABBITMQ_URL".to_owned(),
                    "amqp://u:p@other:5673/%2f".to_owned(),
                ),
                ("OUTBOXD_RABBITMQ_EXCHANGE".to_owned(), "events".to_owned()),
                (
                    "OUTBOXD_RABBITMQ_ROUTING_KEY".to_owned(),
                    "${aggregatetype}".to_owned(),
                ),
            ])
            .unwrap();
        let rabbit = config.rabbitmq().unwrap();
        assert_eq!(rabbit.host(), "other");
        assert_eq!(rabbit.exchange_template().as_str(), "events");
        // The routing key template, not routing.topic, names each record's destination.
        assert_eq!(
            config.routing().unwrap(),
            Routing::new(TopicRule::Template("${aggregatetype}".into()), false)
                .unwrap()
                .with_names(crate::sink::rabbitmq::NAMES)
        );
        assert_eq!(config.dead_letter(), "outboxd.dlq");
        config.validate().unwrap();
    }

    #[test]
    fn rabbitmq_refuses_a_topic_template_and_a_bad_exchange_name() {
        let topic =
            Config::from_toml("[sink]\nkind = \"rabbitmq\"\n[routing]\ntopic = \"events\"\n").unwrap();
        let err = topic.validate().unwrap_err();
        assert!(format!("{err:#}").contains("rabbitmq.routing_key"), "{err:#}");
        let exchange =
            Config::from_toml("[sink]\nkind = \"rabbitmq\"\n[rabbitmq]\nexchange = \"no spaces\"\n").unwrap();
        let err = exchange.validate().unwrap_err();
        assert!(
            format!("{err:#}").contains("not a valid exchange name"),
            "{err:#}"
        );
        let long = Config::from_toml(&format!(
            "[sink]\nkind = \"rabbitmq\"\n[rabbitmq]\nrouting_key = \"{}\"\n",
            "k".repeat(256)
        ))
        .unwrap();
        assert!(long.validate().is_err(), "a 256-byte routing key");
    }
}
