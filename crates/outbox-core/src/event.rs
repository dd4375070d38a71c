//! Outbox events: what one outbox row (or outbox message) means.

use bytes::Bytes;
use pgoutput::Lsn;

/// Where an event sits in the stream: its transaction's commit and its place
/// in it. `(commit_lsn, index)` identifies an event across re-deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// 0-based index among the transaction's outbox events.
    pub index: u64,
}

/// One outbox event, independent of where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Event id set by the application; consumers deduplicate on it.
    pub id: String,
    /// Aggregate type: picks the topic by default.
    pub aggregate_type: String,
    /// Aggregate id: the record key, so one aggregate's events stay ordered.
    pub aggregate_id: Bytes,
    /// Event type.
    pub event_type: String,
    /// The payload bytes as stored; `None` for SQL NULL.
    pub payload: Option<Bytes>,
    /// What the payload column holds (text, JSON or bytes).
    pub payload_kind: ValueKind,
    /// Configured extra columns, placed as headers (`None` for NULL), by
    /// header name.
    pub extra: Vec<(String, Option<Bytes>)>,
    /// Columns placed in the envelope around the payload, by field name.
    pub envelope: Vec<(String, Option<(Bytes, ValueKind)>)>,
    /// The key column's value, when a key column apart from the aggregate id
    /// is configured.
    pub key: Option<Bytes>,
    /// The timestamp column's value, in milliseconds since 1970.
    pub timestamp_ms: Option<i64>,
    /// Commit time of the event's transaction, in milliseconds since 1970,
    /// when the stream said (the record timestamp without a timestamp column).
    pub commit_time_ms: Option<i64>,
    /// The partition column's value, when one is configured and not NULL.
    pub partition: Option<i32>,
    /// Where the event comes from: its table (`schema.table`) or message
    /// prefix, when the stream said.
    pub source: Option<String>,
    /// The value of the topic column, when routing by column.
    pub topic: Option<String>,
    /// Position in the stream.
    pub position: Position,
}

/// What a column's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueKind {
    /// Text (the text output of its type).
    #[default]
    Text,
    /// JSON text (a `json`/`jsonb`, number or boolean column; a non-string
    /// field of an outbox message).
    Json,
    /// Bytes (`bytea`).
    Binary,
}

/// Where an extra column goes (Debezium's `table.fields.additional.placement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A header of this name.
    Header(String),
    /// A field of this name in the envelope `{"payload": …, name: …}`.
    Envelope(String),
    /// The record's partition (an integer column).
    Partition,
}

/// One `column:placement[:alias]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdditionalField {
    /// The column.
    pub column: String,
    /// Where its value goes.
    pub placement: Placement,
}

impl std::str::FromStr for AdditionalField {
    type Err = String;

    /// `col:header`, `col:header:alias`, `col:envelope`, `col:envelope:alias`,
    /// `col:partition` (Debezium's syntax).
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let alias = |column: &str| match parts.get(2) {
            Some(alias) if !alias.is_empty() => Ok(alias.to_string()),
            Some(_) => Err(format!("{text:?}: the alias after the second ':' is empty")),
            None => Ok(column.to_owned()),
        };
        let placement = match parts.as_slice() {
            [column, "header"] | [column, "header", _] if !column.is_empty() => {
                Placement::Header(alias(column)?)
            }
            [column, "envelope"] | [column, "envelope", _] if !column.is_empty() => {
                Placement::Envelope(alias(column)?)
            }
            // Debezium accepts an alias here and ignores it; so does this.
            [column, "partition"] | [column, "partition", _] if !column.is_empty() => Placement::Partition,
            _ => {
                return Err(format!(
                    "{text:?} is not `column:header[:alias]`, `column:envelope[:alias]` or `column:partition`"
                ))
            }
        };
        Ok(AdditionalField {
            column: parts[0].to_owned(),
            placement,
        })
    }
}

/// Column names of an outbox table. Defaults are Debezium's outbox event
/// router's, so a table can switch between the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    /// Event id column (`id`).
    pub id: String,
    /// Aggregate type column (`aggregatetype`).
    pub aggregate_type: String,
    /// Aggregate id column (`aggregateid`).
    pub aggregate_id: String,
    /// Event type column (`type`).
    pub event_type: String,
    /// Payload column (`payload`).
    pub payload: String,
    /// Extra columns sent as headers, by column name.
    pub extra_headers: Vec<String>,
    /// Extra columns placed as headers, in the envelope or as the partition.
    pub additional: Vec<AdditionalField>,
    /// A JSON object column whose every key becomes a header.
    pub headers_column: Option<String>,
    /// The key column, when not the aggregate id.
    pub key: Option<String>,
    /// The record timestamp column (`timestamptz`, `timestamp` as UTC, or
    /// milliseconds); without it, the commit time.
    pub timestamp: Option<String>,
    /// Column holding the topic, when routing by column.
    pub topic: Option<String>,
}

impl Default for ColumnMapping {
    fn default() -> Self {
        ColumnMapping {
            id: "id".into(),
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            payload: "payload".into(),
            extra_headers: Vec::new(),
            additional: Vec::new(),
            headers_column: None,
            key: None,
            timestamp: None,
            topic: None,
        }
    }
}

/// A column's value as the replication stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnLookup {
    /// The table has no such column.
    Missing,
    /// SQL NULL.
    Null,
    /// The value in text format.
    Value(Bytes),
    /// The value as JSON text (see [`ValueKind::Json`]).
    Json(Bytes),
    /// The value's bytes (a `bytea`).
    Binary(Bytes),
    /// A value that cannot be read as its type says (say, a `bytea` whose
    /// text form is not valid hex): the row is malformed.
    Malformed(String),
}

/// A row that does not make an outbox event. Permanent for that row: the same
/// row fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// A mapped column is not in the table.
    #[error("outbox table has no column {0:?} (check the column mapping)")]
    MissingColumn(String),
    /// A column that may not be NULL is.
    #[error("outbox column {0:?} is NULL")]
    Null(String),
    /// A column that must be text is not UTF-8.
    #[error("outbox column {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// A column's value cannot be read as its type says.
    #[error("outbox column {column:?} is malformed: {reason}")]
    Malformed {
        /// The column.
        column: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ColumnMapping {
    /// Builds the event of one row; `lookup` returns a column's value by name.
    pub fn event_from_row(
        &self,
        position: Position,
        lookup: impl Fn(&str) -> ColumnLookup,
    ) -> Result<OutboxEvent, MappingError> {
        let typed = |column: &str| match lookup(column) {
            ColumnLookup::Missing => Err(MappingError::MissingColumn(column.to_owned())),
            ColumnLookup::Null => Ok(None),
            ColumnLookup::Value(bytes) => Ok(Some((bytes, ValueKind::Text))),
            ColumnLookup::Json(bytes) => Ok(Some((bytes, ValueKind::Json))),
            ColumnLookup::Binary(bytes) => Ok(Some((bytes, ValueKind::Binary))),
            ColumnLookup::Malformed(reason) => Err(MappingError::Malformed {
                column: column.to_owned(),
                reason,
            }),
        };
        let value = |column: &str| Ok(typed(column)?.map(|(bytes, _)| bytes));
        let required = |column: &str| value(column)?.ok_or_else(|| MappingError::Null(column.to_owned()));
        let utf8 = |column: &str, bytes: Bytes| {
            String::from_utf8(bytes.to_vec()).map_err(|_| MappingError::NotUtf8(column.to_owned()))
        };
        let text = |column: &str| utf8(column, required(column)?);
        let malformed = |column: &str, reason: String| MappingError::Malformed {
            column: column.to_owned(),
            reason,
        };
        let mut extra = self
            .extra_headers
            .iter()
            .map(|column| Ok((column.clone(), value(column)?)))
            .collect::<Result<Vec<_>, MappingError>>()?;
        let mut envelope = Vec::new();
        let mut partition = None;
        for field in &self.additional {
            match &field.placement {
                Placement::Header(name) => extra.push((name.clone(), value(&field.column)?)),
                Placement::Envelope(name) => envelope.push((name.clone(), typed(&field.column)?)),
                Placement::Partition => {
                    if let Some(bytes) = value(&field.column)? {
                        let text = utf8(&field.column, bytes)?;
                        let number = text.trim().parse::<i32>().ok().filter(|p| *p >= 0);
                        partition = Some(number.ok_or_else(|| {
                            malformed(&field.column, format!("partition {text:?} is not an integer ≥ 0"))
                        })?);
                    }
                }
            }
        }
        if let Some(column) = &self.headers_column {
            if let Some(bytes) = value(column)? {
                extra.extend(headers_from_json(&bytes).map_err(|reason| malformed(column, reason))?);
            }
        }
        let timestamp_ms = match &self.timestamp {
            Some(column) => match value(column)? {
                Some(bytes) => {
                    let text = utf8(column, bytes)?;
                    Some(
                        crate::time::parse_timestamp_millis(&text)
                            .map_err(|reason| malformed(column, reason))?,
                    )
                }
                None => None,
            },
            None => None,
        };
        let (payload, payload_kind) = match typed(&self.payload)? {
            Some((bytes, kind)) => (Some(bytes), kind),
            None => (None, ValueKind::Text),
        };
        Ok(OutboxEvent {
            id: text(&self.id)?,
            aggregate_type: text(&self.aggregate_type)?,
            aggregate_id: required(&self.aggregate_id)?,
            event_type: text(&self.event_type)?,
            payload,
            payload_kind,
            extra,
            envelope,
            key: self.key.as_deref().map(required).transpose()?,
            timestamp_ms,
            commit_time_ms: None,
            partition,
            source: None,
            topic: self.topic.as_deref().map(text).transpose()?,
            position,
        })
    }
}

/// One header per key of a JSON object: strings as their text, other values
/// as their JSON, `null` left out.
fn headers_from_json(bytes: &[u8]) -> Result<Vec<(String, Option<Bytes>)>, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("headers are not a JSON object: {e}"))?;
    Ok(object
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(name, v)| {
            let value = match v {
                serde_json::Value::String(s) => Bytes::from(s),
                other => Bytes::from(other.to_string()),
            };
            (name, Some(value))
        })
        .collect())
}
