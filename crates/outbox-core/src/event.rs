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
    /// Configured extra columns, placed as headers (`None` for NULL).
    pub extra: Vec<(String, Option<Bytes>)>,
    /// The value of the topic column, when routing by column.
    pub topic: Option<String>,
    /// Position in the stream.
    pub position: Position,
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
        let value = |column: &str| match lookup(column) {
            ColumnLookup::Missing => Err(MappingError::MissingColumn(column.to_owned())),
            ColumnLookup::Null => Ok(None),
            ColumnLookup::Value(bytes) => Ok(Some(bytes)),
            ColumnLookup::Malformed(reason) => Err(MappingError::Malformed {
                column: column.to_owned(),
                reason,
            }),
        };
        let required = |column: &str| value(column)?.ok_or_else(|| MappingError::Null(column.to_owned()));
        let text = |column: &str| {
            let bytes = required(column)?;
            String::from_utf8(bytes.to_vec()).map_err(|_| MappingError::NotUtf8(column.to_owned()))
        };
        let extra = self
            .extra_headers
            .iter()
            .map(|column| Ok((column.clone(), value(column)?)))
            .collect::<Result<Vec<_>, MappingError>>()?;
        Ok(OutboxEvent {
            id: text(&self.id)?,
            aggregate_type: text(&self.aggregate_type)?,
            aggregate_id: required(&self.aggregate_id)?,
            event_type: text(&self.event_type)?,
            payload: value(&self.payload)?,
            extra,
            topic: self.topic.as_deref().map(text).transpose()?,
            position,
        })
    }
}
