//! What the replication stream yields: committed transactions, one event at a time.

use std::sync::Arc;

use bytes::Bytes;
use pgoutput::{ColumnValue, Lsn, PgTimestamp, Relation, TupleData, Xid};

use crate::bytea::{decode_bytea_text, BYTEA_OID};
use crate::error::InvalidBytea;

/// One step of a committed transaction, in commit order.
///
/// A transaction arrives as `Begin`, then its outbox rows and outbox messages
/// in the order they were written, then `Commit`. Transactions without outbox
/// events are not yielded at all. Events are yielded one at a time and never
/// collected, so a transaction of any size passes in bounded memory.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// A transaction with outbox events starts.
    Begin(TransactionBegin),
    /// A row inserted into an outbox table.
    Insert(OutboxInsert),
    /// A transactional `pg_logical_emit_message` with the outbox prefix.
    Message(OutboxMessage),
    /// The transaction committed: acknowledge `end_lsn` once all its events are delivered.
    Commit(TransactionCommit),
}

/// Start of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionBegin {
    /// Transaction id.
    pub xid: Xid,
    /// LSN of the commit record (`Begin.final_lsn`).
    pub commit_lsn: Lsn,
    /// When it committed (server clock).
    pub commit_time: PgTimestamp,
}

/// An INSERT into an outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxInsert {
    /// The table as last described by Postgres (schema changes replace it).
    pub relation: Arc<Relation>,
    /// The row, one value per column of `relation`.
    pub row: TupleData,
    /// LSN of the change.
    pub lsn: Lsn,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// 0-based position among the transaction's outbox events.
    pub index: u64,
}

impl OutboxInsert {
    /// The value of the named column, if the relation has it.
    pub fn column(&self, name: &str) -> Option<&pgoutput::ColumnValue> {
        let at = self.relation.columns.iter().position(|c| c.name == name)?;
        self.row.columns.get(at)
    }

    /// The value of the named column as the application stored it (`None` if
    /// the relation has no such column): text as sent, a `bytea` decoded from
    /// its text form, a value in binary format as is.
    pub fn stored(&self, name: &str) -> Option<Result<StoredValue, InvalidBytea>> {
        let at = self.relation.columns.iter().position(|c| c.name == name)?;
        let value = self.row.columns.get(at)?;
        let bytea = self.relation.columns[at].type_id == BYTEA_OID;
        Some(match value {
            ColumnValue::Null => Ok(StoredValue::Null),
            ColumnValue::UnchangedToast => Ok(StoredValue::Unchanged),
            ColumnValue::Text(text) if bytea => decode_bytea_text(text).map(StoredValue::Bytes),
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Ok(StoredValue::Bytes(bytes.clone())),
        })
    }
}

/// A column's value as stored, see [`OutboxInsert::stored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredValue {
    /// SQL NULL.
    Null,
    /// The value's bytes.
    Bytes(Bytes),
    /// An unchanged TOASTed value that was not sent (updates only; an insert
    /// carries every value).
    Unchanged,
}

/// A transactional logical message with the outbox prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The prefix it was emitted with.
    pub prefix: String,
    /// Its content, as given.
    pub content: Bytes,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// 0-based position among the transaction's outbox events.
    pub index: u64,
}

/// End of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionCommit {
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to acknowledge.
    pub end_lsn: Lsn,
    /// When it committed (server clock).
    pub commit_time: PgTimestamp,
}

/// A table whose inserts are outbox events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboxTable {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Table name, e.g. `outbox`.
    pub name: String,
}

impl OutboxTable {
    /// `schema.name`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        OutboxTable {
            schema: schema.into(),
            name: name.into(),
        }
    }

    pub(crate) fn matches(&self, relation: &Relation) -> bool {
        // pgoutput sends an empty namespace for pg_catalog.
        let schema = if relation.namespace.is_empty() {
            "pg_catalog"
        } else {
            &relation.namespace
        };
        schema == self.schema && relation.name == self.name
    }
}

impl std::fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}
