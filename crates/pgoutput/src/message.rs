//! The messages of the pgoutput logical replication protocol, versions 1 to 4.
//!
//! Field names follow
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.
//! Values from the wire are kept as sent (raw flags, raw timestamps, column
//! values as `Bytes` slices of the frame), so nothing is lost or copied.

use bytes::Bytes;

use crate::{Lsn, PgTimestamp};

/// A transaction id.
pub type Xid = u32;
/// A Postgres object id (relation, type).
pub type Oid = u32;

/// One pgoutput message.
///
/// The change messages (Relation, Type, Insert, Update, Delete, Truncate,
/// Message) carry `xid: Some(_)` exactly when they were sent inside a Stream
/// Start … Stream Stop block (protocol 2 and later): there Postgres prefixes
/// them with the id of the (sub)transaction they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogicalReplicationMessage {
    /// 'B': a transaction starts (sent when it commits; decoding is in commit order).
    Begin(Begin),
    /// 'C': the transaction committed.
    Commit(Commit),
    /// 'O': the transaction came from another node through a replication origin.
    Origin(Origin),
    /// 'R': the shape of a relation, sent before its first change and after schema changes.
    Relation(Relation),
    /// 'Y': a non-built-in data type used by a relation.
    Type(Type),
    /// 'I': a row was inserted.
    Insert(Insert),
    /// 'U': a row was updated.
    Update(Update),
    /// 'D': a row was deleted.
    Delete(Delete),
    /// 'T': relations were truncated.
    Truncate(Truncate),
    /// 'M': a `pg_logical_emit_message` message (needs the `messages` option).
    Message(Message),
    /// 'S': a block of an in-progress transaction starts (v2).
    StreamStart(StreamStart),
    /// 'E': the block ends (v2).
    StreamStop,
    /// 'c': a streamed transaction committed (v2).
    StreamCommit(StreamCommit),
    /// 'A': a streamed transaction or one of its subtransactions aborted (v2; abort position v4).
    StreamAbort(StreamAbort),
    /// 'b': a two-phase transaction's prepared part starts (v3).
    BeginPrepare(BeginPrepare),
    /// 'P': the transaction was prepared (v3).
    Prepare(Prepare),
    /// 'K': a prepared transaction was committed (v3).
    CommitPrepared(CommitPrepared),
    /// 'r': a prepared transaction was rolled back (v3).
    RollbackPrepared(RollbackPrepared),
    /// 'p': a streamed transaction was prepared (v3).
    StreamPrepare(Prepare),
}

/// 'B'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record of the transaction.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
}

/// 'C'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by Postgres so far; kept as sent.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is processed.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// 'O'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Name of the replication origin.
    pub name: String,
}

/// 'R'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// The relation's OID: the key later change messages refer to.
    pub id: Oid,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// What old-row data updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in the order tuples carry them.
    pub columns: Vec<Column>,
}

/// `REPLICA IDENTITY` of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': the whole old row.
    Full,
    /// 'i': the columns of a chosen index.
    Index,
}

impl ReplicaIdentity {
    /// The byte Postgres sends for this setting.
    pub const fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// The setting for a byte, if it names one.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 0 set: part of the replica identity key. Other bits kept as sent.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_id: Oid,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column is part of the replica identity key.
    pub const fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// 'Y'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// The type's OID.
    pub id: Oid,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// 'I'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Set inside a streamed block: the (sub)transaction of the change.
    pub xid: Option<Xid>,
    /// OID of the relation, as announced by a Relation message.
    pub relation_id: Oid,
    /// The new row.
    pub new: TupleData,
}

/// 'U'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// OID of the relation.
    pub relation_id: Oid,
    /// The old key ('K') or whole old row ('O'), when the replica identity sends one.
    pub old: Option<OldTuple>,
    /// The new row; TOASTed values that did not change are `UnchangedToast`.
    pub new: TupleData,
}

/// 'D'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// OID of the relation.
    pub relation_id: Oid,
    /// The old key or whole old row.
    pub old: OldTuple,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity key columns (other columns are null).
    Key(TupleData),
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

/// 'T'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// `CASCADE` and `RESTART IDENTITY`.
    pub options: TruncateOptions,
    /// The truncated relations.
    pub relation_ids: Vec<Oid>,
}

/// Options of a Truncate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TruncateOptions {
    /// Bit 1: `TRUNCATE … CASCADE`.
    pub cascade: bool,
    /// Bit 2: `TRUNCATE … RESTART IDENTITY`.
    pub restart_identity: bool,
}

impl TruncateOptions {
    /// Bit of `cascade` in the options byte.
    pub const CASCADE: u8 = 1;
    /// Bit of `restart_identity` in the options byte.
    pub const RESTART_IDENTITY: u8 = 2;

    /// The options byte.
    pub const fn bits(self) -> u8 {
        (self.cascade as u8 * Self::CASCADE) | (self.restart_identity as u8 * Self::RESTART_IDENTITY)
    }
}

/// 'M'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Set inside a streamed block.
    pub xid: Option<Xid>,
    /// Emitted with `transactional = true`: delivered in its transaction, and only if it commits.
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content, as given.
    pub content: Bytes,
}

/// 'S'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction being streamed.
    pub xid: Xid,
    /// The first block of this transaction.
    pub first_segment: bool,
}

/// 'c'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: Xid,
    /// Unused by Postgres so far; kept as sent.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// 'A'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level streamed transaction.
    pub xid: Xid,
    /// The aborted subtransaction; equal to `xid` when the whole transaction aborted.
    pub subxid: Xid,
    /// Where and when it aborted: sent only by protocol 4 with `streaming = parallel`.
    pub abort: Option<AbortInfo>,
}

/// The abort position and time of a Stream Abort (protocol 4, parallel streaming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortInfo {
    /// LSN of the abort record.
    pub lsn: Lsn,
    /// When the transaction aborted.
    pub time: PgTimestamp,
}

/// 'b'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End of the prepared transaction.
    pub end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The global transaction id given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// 'P' and 'p' (Stream Prepare has the same layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Unused by Postgres so far; kept as sent.
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End of the prepared transaction.
    pub end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The global transaction id.
    pub gid: String,
}

/// 'K'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Unused by Postgres so far; kept as sent.
    pub flags: u8,
    /// LSN of the commit-prepared record.
    pub commit_lsn: Lsn,
    /// End of the commit-prepared record.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The global transaction id.
    pub gid: String,
}

/// 'r'
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Unused by Postgres so far; kept as sent.
    pub flags: u8,
    /// End of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// End of the rollback-prepared record.
    pub rollback_end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// When it was rolled back.
    pub rollback_time: PgTimestamp,
    /// The transaction id.
    pub xid: Xid,
    /// The global transaction id.
    pub gid: String,
}

/// The columns of a row, in the order of the Relation message's columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// One value per column.
    pub columns: Vec<ColumnValue>,
}

/// One column of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that the update did not change; its value is not sent.
    UnchangedToast,
    /// 't': the value in text format (the type's output function), as sent.
    Text(Bytes),
    /// 'b': the value in binary format (the type's send function), with `binary = true`.
    Binary(Bytes),
}

impl ColumnValue {
    /// The text-format value as UTF-8, if this is a text value that is UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}
