//! From an outbox event to a record: topic, key, value and headers.

use bytes::Bytes;
use pgoutput::Lsn;

use crate::event::{OutboxEvent, Position, ValueKind};

/// Header names outboxd sets on every record.
pub mod header {
    /// The event id.
    pub const ID: &str = "id";
    /// The event type.
    pub const TYPE: &str = "type";
    /// The aggregate type.
    pub const AGGREGATE_TYPE: &str = "aggregatetype";
    /// Commit LSN of the event's transaction (`16/B374D848`).
    pub const LSN: &str = "outboxd.lsn";
    /// Index of the event in its transaction.
    pub const INDEX: &str = "outboxd.index";
    /// End LSN of the event's transaction, when known at send time.
    pub const END_LSN: &str = "outboxd.end_lsn";
    /// Set on records re-published by a replay.
    pub const REPLAY: &str = "outboxd.replay";
}

/// CloudEvents in binary content mode: the event's attributes as `ce_*`
/// headers (the Kafka protocol binding), the payload untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    /// The `source` attribute; `${table}` is replaced by the event's table
    /// (`schema.table`) or message prefix.
    pub source: String,
}

impl CloudEvents {
    /// `specversion` of the attributes written.
    pub const SPEC_VERSION: &'static str = "1.0";

    fn headers(&self, event: &OutboxEvent, content_type: &'static str) -> Vec<(String, Bytes)> {
        let source = self
            .source
            .replace("${table}", event.source.as_deref().unwrap_or("unknown"));
        let mut headers = vec![
            (
                "ce_specversion".to_owned(),
                Bytes::from_static(Self::SPEC_VERSION.as_bytes()),
            ),
            ("ce_id".to_owned(), Bytes::from(event.id.clone())),
            ("ce_source".to_owned(), Bytes::from(source)),
            ("ce_type".to_owned(), Bytes::from(event.event_type.clone())),
        ];
        if let Some(ms) = event.commit_time_ms {
            headers.push((
                "ce_time".to_owned(),
                Bytes::from(crate::time::format_rfc3339_millis(ms)),
            ));
        }
        headers.push(("ce_subject".to_owned(), event.aggregate_id.clone()));
        headers.push((
            "content-type".to_owned(),
            Bytes::from_static(content_type.as_bytes()),
        ));
        headers
    }
}

/// How the topic of a record is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRule {
    /// A template with `${aggregatetype}` and `${type}` placeholders;
    /// the default is `outbox.event.${aggregatetype}`.
    Template(String),
    /// Every record to one topic.
    Fixed(String),
    /// The topic is the value of the mapping's topic column.
    Column,
}

impl Default for TopicRule {
    fn default() -> Self {
        TopicRule::Template("outbox.event.${aggregatetype}".into())
    }
}

/// A record to publish, independent of the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Destination topic (or queue, subject, stream).
    pub topic: String,
    /// Partitioning key: the aggregate id.
    pub key: Bytes,
    /// The payload; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The event id (for errors and dead letters).
    pub id: String,
    /// Position of the event.
    pub position: Position,
    /// The record's timestamp in milliseconds since 1970 (a sink that has
    /// one sets it; otherwise the broker's own time applies).
    pub timestamp_ms: Option<i64>,
    /// An explicit partition (a sink with partitions uses it instead of
    /// partitioning by key; others ignore it).
    pub partition: Option<i32>,
}

/// What makes a destination name legal; each sink says which rule its names
/// follow, so a name it would refuse is caught when the record is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NameRule {
    /// 1-249 characters of `a-z A-Z 0-9 . _ -`, not `.` or `..` (a Kafka topic).
    #[default]
    KafkaTopic,
    /// Any UTF-8 of at most this many bytes (an AMQP routing key: 255).
    Bytes {
        /// The limit.
        max: usize,
        /// Whether the empty name is legal.
        allow_empty: bool,
    },
}

impl NameRule {
    /// Checks `name`; the error says what is legal.
    pub fn check(self, name: &str) -> Result<(), String> {
        match self {
            NameRule::KafkaTopic => {
                let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
                if name.is_empty()
                    || name.len() > 249
                    || !name.chars().all(legal)
                    || name == "."
                    || name == ".."
                {
                    return Err("1-249 characters of a-z, A-Z, 0-9, '.', '_', '-', not '.' or '..'".into());
                }
            }
            NameRule::Bytes { max, allow_empty } => {
                if name.len() > max || (name.is_empty() && !allow_empty) {
                    return Err(format!("{} to {max} bytes", if allow_empty { 0 } else { 1 }));
                }
            }
        }
        Ok(())
    }
}

/// A record that cannot be routed. Permanent for that event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// The computed destination is not a legal name for the sink.
    #[error("{topic:?} is not a valid destination name ({rule})")]
    InvalidTopic {
        /// The name.
        topic: String,
        /// What is legal.
        rule: String,
    },
    /// Routing by column, but the event has no topic value.
    #[error("routing by topic column, but the event has no topic value")]
    NoTopicColumn,
    /// The value cannot be encoded as configured.
    #[error("{0}")]
    Encoding(String),
}

/// How the payload bytes become the record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadEncoding {
    /// The bytes as stored.
    #[default]
    Raw,
    /// Text and JSON payloads as a JSON string holding their text (what
    /// Debezium's JSON converter emits without `table.expand.json.payload`);
    /// `bytea` payloads as stored.
    JsonString,
}

/// A configuration that can never route anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic template {template:?}: unknown placeholder ${{{placeholder}}} (known: ${{aggregatetype}}, ${{type}})")]
pub struct TemplateError {
    template: String,
    placeholder: String,
}

/// Routing rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    topic: TopicRule,
    tombstone_on_null: bool,
    tombstone_on_empty: bool,
    encoding: PayloadEncoding,
    static_headers: Vec<(String, Bytes)>,
    cloudevents: Option<CloudEvents>,
    names: NameRule,
}

/// Checks that `template` uses only the known placeholders
/// (`${aggregatetype}`, `${type}`).
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap_or(after.len());
        let placeholder = &after[..end];
        if !matches!(placeholder, "aggregatetype" | "type") {
            return Err(TemplateError {
                template: template.to_owned(),
                placeholder: placeholder.to_owned(),
            });
        }
        rest = &after[end..];
    }
    Ok(())
}

/// Fills a template's `${aggregatetype}` and `${type}` placeholders. Sinks
/// with more than one name per record (an exchange beside a routing key)
/// render their other templates with it, from the record's `aggregatetype`
/// and `type` headers.
pub fn render_template(template: &str, aggregate_type: &str, event_type: &str) -> String {
    template
        .replace("${aggregatetype}", aggregate_type)
        .replace("${type}", event_type)
}

impl Routing {
    /// Validates the rules. With `tombstone_on_null`, a NULL payload becomes a
    /// tombstone (null value); otherwise an empty value.
    pub fn new(topic: TopicRule, tombstone_on_null: bool) -> Result<Self, TemplateError> {
        if let TopicRule::Template(template) = &topic {
            check_template(template)?;
        }
        Ok(Routing {
            topic,
            tombstone_on_null,
            tombstone_on_empty: false,
            encoding: PayloadEncoding::Raw,
            static_headers: Vec::new(),
            cloudevents: None,
            names: NameRule::default(),
        })
    }

    /// An empty payload (empty text or `bytea`) becomes a tombstone too.
    pub fn with_tombstone_on_empty(mut self, tombstone: bool) -> Self {
        self.tombstone_on_empty = tombstone;
        self
    }

    /// How the payload is encoded.
    pub fn with_encoding(mut self, encoding: PayloadEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// CloudEvents attributes as headers (binary content mode).
    pub fn with_cloudevents(mut self, cloudevents: Option<CloudEvents>) -> Self {
        self.cloudevents = cloudevents;
        self
    }

    /// Headers added to every record, after the event's own.
    pub fn with_static_headers(mut self, headers: Vec<(String, Bytes)>) -> Self {
        self.static_headers = headers;
        self
    }

    /// The same rules, checking names by `names` (the default is Kafka's).
    pub fn with_names(mut self, names: NameRule) -> Self {
        self.names = names;
        self
    }

    /// The record for `event`; `end_lsn` when the transaction's end is known.
    pub fn route(&self, event: &OutboxEvent, end_lsn: Option<Lsn>) -> Result<Record, RoutingError> {
        let topic = match &self.topic {
            TopicRule::Template(template) => {
                render_template(template, &event.aggregate_type, &event.event_type)
            }
            TopicRule::Fixed(topic) => topic.clone(),
            TopicRule::Column => event.topic.clone().ok_or(RoutingError::NoTopicColumn)?,
        };
        if let Err(rule) = self.names.check(&topic) {
            return Err(RoutingError::InvalidTopic { topic, rule });
        }
        let value = match &event.payload {
            Some(payload) if payload.is_empty() && self.tombstone_on_empty => None,
            None if self.tombstone_on_null => None,
            _ if !event.envelope.is_empty() => Some(self.envelope(event)?),
            Some(payload) => Some(self.encode(payload, event.payload_kind)),
            None => Some(Bytes::new()),
        };
        let mut headers = vec![
            (header::ID.to_owned(), Bytes::from(event.id.clone())),
            (header::TYPE.to_owned(), Bytes::from(event.event_type.clone())),
            (
                header::AGGREGATE_TYPE.to_owned(),
                Bytes::from(event.aggregate_type.clone()),
            ),
            (
                header::LSN.to_owned(),
                Bytes::from(event.position.commit_lsn.to_string()),
            ),
            (
                header::INDEX.to_owned(),
                Bytes::from(event.position.index.to_string()),
            ),
        ];
        if let Some(end_lsn) = end_lsn {
            headers.push((header::END_LSN.to_owned(), Bytes::from(end_lsn.to_string())));
        }
        for (name, value) in &event.extra {
            if let Some(value) = value {
                headers.push((name.clone(), value.clone()));
            }
        }
        if let Some(cloudevents) = &self.cloudevents {
            headers.extend(cloudevents.headers(event, self.content_type(event)));
        }
        headers.extend(self.static_headers.iter().cloned());
        Ok(Record {
            topic,
            key: event.key.clone().unwrap_or_else(|| event.aggregate_id.clone()),
            value,
            headers,
            id: event.id.clone(),
            position: event.position,
            timestamp_ms: event.timestamp_ms.or(event.commit_time_ms),
            partition: event.partition,
        })
    }

    /// The media type of the record value.
    fn content_type(&self, event: &OutboxEvent) -> &'static str {
        match (event.payload_kind, self.encoding) {
            _ if !event.envelope.is_empty() => "application/json",
            (ValueKind::Binary, _) => "application/octet-stream",
            (_, PayloadEncoding::JsonString) | (ValueKind::Json, _) => "application/json",
            (ValueKind::Text, PayloadEncoding::Raw) => "text/plain; charset=utf-8",
        }
    }

    fn encode(&self, payload: &Bytes, kind: ValueKind) -> Bytes {
        match (self.encoding, kind) {
            (PayloadEncoding::JsonString, ValueKind::Text | ValueKind::Json) => {
                Bytes::from(serde_json::Value::from(String::from_utf8_lossy(payload)).to_string())
            }
            _ => payload.clone(),
        }
    }

    /// `{"payload": …, field: …}`: a JSON payload embedded as JSON (as a JSON
    /// string with the `json-string` encoding), text as a JSON string.
    fn envelope(&self, event: &OutboxEvent) -> Result<Bytes, RoutingError> {
        let json = |name: &str, value: Option<&Bytes>, kind: ValueKind| -> Result<String, RoutingError> {
            match (value, kind) {
                (None, _) => Ok("null".into()),
                (Some(bytes), ValueKind::Json)
                    if self.encoding == PayloadEncoding::Raw || name != "payload" =>
                {
                    Ok(String::from_utf8_lossy(bytes).into_owned())
                }
                (Some(bytes), ValueKind::Text | ValueKind::Json) => {
                    Ok(serde_json::Value::from(String::from_utf8_lossy(bytes)).to_string())
                }
                (Some(_), ValueKind::Binary) => Err(RoutingError::Encoding(format!(
                    "the envelope field {name:?} is a bytea column: place it as a header, or make it text"
                ))),
            }
        };
        let mut out = String::from("{\"payload\":");
        out.push_str(&json("payload", event.payload.as_ref(), event.payload_kind)?);
        for (name, value) in &event.envelope {
            out.push(',');
            out.push_str(&serde_json::Value::from(name.as_str()).to_string());
            out.push(':');
            let (bytes, kind) = match value {
                Some((bytes, kind)) => (Some(bytes), *kind),
                None => (None, ValueKind::Text),
            };
            out.push_str(&json(name, bytes, kind)?);
        }
        out.push('}');
        Ok(Bytes::from(out))
    }
}
