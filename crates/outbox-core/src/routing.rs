//! From an outbox event to a record: topic, key, value and headers.

use bytes::Bytes;
use pgoutput::Lsn;

use crate::event::{OutboxEvent, Position};

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
}

/// A record that cannot be routed. Permanent for that event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// The computed topic is not a legal topic name.
    #[error("topic {topic:?} is not a valid topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')")]
    InvalidTopic {
        /// The name.
        topic: String,
    },
    /// Routing by column, but the event has no topic value.
    #[error("routing by topic column, but the event has no topic value")]
    NoTopicColumn,
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
}

impl Routing {
    /// Validates the rules. With `tombstone_on_null`, a NULL payload becomes a
    /// tombstone (null value); otherwise an empty value.
    pub fn new(topic: TopicRule, tombstone_on_null: bool) -> Result<Self, TemplateError> {
        if let TopicRule::Template(template) = &topic {
            let mut rest = template.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let end = after.find('}').unwrap_or(after.len());
                let placeholder = &after[..end];
                if !matches!(placeholder, "aggregatetype" | "type") {
                    return Err(TemplateError {
                        template: template.clone(),
                        placeholder: placeholder.to_owned(),
                    });
                }
                rest = &after[end..];
            }
        }
        Ok(Routing {
            topic,
            tombstone_on_null,
        })
    }

    /// The record for `event`; `end_lsn` when the transaction's end is known.
    pub fn route(&self, event: &OutboxEvent, end_lsn: Option<Lsn>) -> Result<Record, RoutingError> {
        let topic = match &self.topic {
            TopicRule::Template(template) => template
                .replace("${aggregatetype}", &event.aggregate_type)
                .replace("${type}", &event.event_type),
            TopicRule::Fixed(topic) => topic.clone(),
            TopicRule::Column => event.topic.clone().ok_or(RoutingError::NoTopicColumn)?,
        };
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) || topic == "." || topic == ".."
        {
            return Err(RoutingError::InvalidTopic { topic });
        }
        let value = match &event.payload {
            Some(payload) => Some(payload.clone()),
            None if self.tombstone_on_null => None,
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
        Ok(Record {
            topic,
            key: event.aggregate_id.clone(),
            value,
            headers,
            id: event.id.clone(),
            position: event.position,
        })
    }
}
