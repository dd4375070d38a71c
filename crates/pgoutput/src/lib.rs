//! # pgoutput: the replication stream, decoded without I/O
//!
//! Place in outboxd: `crates/pg-replication` receives CopyData frames from the
//! Postgres walsender and hands their bytes here. This crate turns them into
//! typed values — the replication layer ([`ReplicationMessage`]: `XLogData`,
//! `PrimaryKeepalive`; [`StandbyStatusUpdate`] to send back) and every message
//! of the `pgoutput` logical replication protocol, versions 1 to 4
//! ([`LogicalReplicationMessage`]) — and nothing else: no sockets, no async,
//! no clock. Bytes in, values or a [`DecodeError`] out.
//!
//! Guarantees, because a service reading this for months must not fall over
//! on one odd frame:
//! - no input panics, loops, or allocates more than the input's size (every
//!   count and length is checked against the bytes that remain);
//! - a message must match its kind's layout exactly, trailing bytes included;
//! - column values and message contents are zero-copy slices of the frame.
//!
//! ```
//! use bytes::Bytes;
//! use pgoutput::{Decoder, LogicalReplicationMessage, ReplicationMessage};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A keepalive frame as the walsender sends it: end of WAL 0/16B3748, reply requested.
//! let frame = Bytes::from_static(&[b'k', 0, 0, 0, 0, 1, 0x6B, 0x37, 0x48, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
//! match ReplicationMessage::parse(&frame)? {
//!     ReplicationMessage::PrimaryKeepalive(k) => {
//!         assert_eq!(k.wal_end.to_string(), "0/16B3748");
//!         assert!(k.reply_requested);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! let mut decoder = Decoder::new(1)?;
//! let stop = Bytes::from_static(b"E");
//! // Stream Stop needs protocol 2 and an open streamed block.
//! assert!(decoder.decode(&stop).is_err());
//! # Ok(())
//! # }
//! ```

mod copydata;
mod decoder;
#[cfg(feature = "encode")]
mod encoder;
mod error;
mod lsn;
mod message;
mod reader;
mod timestamp;

pub use copydata::{
    PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData, PRIMARY_KEEPALIVE,
    STANDBY_STATUS_UPDATE, XLOG_DATA,
};
pub use decoder::{
    decode_message, message_name, tag, DecodeContext, Decoder, UnsupportedProtocolVersion,
    SUPPORTED_PROTOCOL_VERSIONS,
};
pub use error::{DecodeError, DecodeErrorKind};
pub use lsn::{Lsn, ParseLsnError};
pub use message::{
    AbortInfo, Begin, BeginPrepare, Column, ColumnValue, Commit, CommitPrepared, Delete, Insert,
    LogicalReplicationMessage, Message, Oid, OldTuple, Origin, Prepare, Relation, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, TruncateOptions, TupleData, Type,
    Update, Xid,
};
pub use timestamp::PgTimestamp;
