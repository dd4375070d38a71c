//! The streaming replication layer: what travels inside CopyData frames once
//! `START_REPLICATION` has switched the connection to CopyBoth mode.
//!
//! Server to client: `XLogData` ('w', carrying one pgoutput message) and
//! `PrimaryKeepalive` ('k'). Client to server: `StandbyStatusUpdate` ('r').
//! See <https://www.postgresql.org/docs/current/protocol-replication.html>.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, DecodeErrorKind};
use crate::reader::Reader;
use crate::{Lsn, PgTimestamp};

/// Tag of an `XLogData` frame.
pub const XLOG_DATA: u8 = b'w';
/// Tag of a `PrimaryKeepalive` frame.
pub const PRIMARY_KEEPALIVE: u8 = b'k';
/// Tag of a `StandbyStatusUpdate` frame.
pub const STANDBY_STATUS_UPDATE: u8 = b'r';

/// A frame the server sends during logical replication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    /// WAL data: for logical replication, exactly one output-plugin message.
    XLogData(XLogData),
    /// The server's heartbeat, possibly asking for an immediate status update.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// An `XLogData` ('w') frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the start of this data. For pgoutput this is the LSN of
    /// the decoded change (0/0 for Relation and Type messages).
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when it sent the frame.
    pub server_time: PgTimestamp,
    /// The output plugin's message, as a slice of the frame (no copy).
    pub data: Bytes,
}

/// A `PrimaryKeepalive` ('k') frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when it sent the frame.
    pub server_time: PgTimestamp,
    /// The server wants a status update now, or it will time the connection
    /// out at `wal_sender_timeout`.
    pub reply_requested: bool,
}

impl ReplicationMessage {
    /// Parses the payload of one CopyData frame (without the CopyData header).
    pub fn parse(frame: &Bytes) -> Result<Self, DecodeError> {
        let Some(&tag) = frame.first() else {
            return Err(DecodeError::new("replication", "tag", 0, DecodeErrorKind::Empty));
        };
        match tag {
            XLOG_DATA => {
                let mut r = Reader::new(frame, "XLogData");
                r.u8("tag")?;
                Ok(ReplicationMessage::XLogData(XLogData {
                    wal_start: r.lsn("wal_start")?,
                    wal_end: r.lsn("wal_end")?,
                    server_time: r.timestamp("server_time")?,
                    data: r.rest(),
                }))
            }
            PRIMARY_KEEPALIVE => {
                let mut r = Reader::new(frame, "PrimaryKeepalive");
                r.u8("tag")?;
                let keepalive = PrimaryKeepalive {
                    wal_end: r.lsn("wal_end")?,
                    server_time: r.timestamp("server_time")?,
                    reply_requested: r.bool("reply_requested")?,
                };
                r.finish()?;
                Ok(ReplicationMessage::PrimaryKeepalive(keepalive))
            }
            other => Err(DecodeError::new(
                "replication",
                "tag",
                0,
                DecodeErrorKind::UnknownTag(other),
            )),
        }
    }
}

/// A `StandbyStatusUpdate` ('r') frame: how the client tells the server what
/// it has received and what the server may release.
///
/// Postgres reads `flush` as "everything before this position is durably
/// processed": it becomes the slot's `confirmed_flush_lsn`, and the WAL before
/// it may be recycled. Choosing these values is the caller's business (see the
/// progress-tracking notes of the replication crate); this type only encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 durably processed: what the slot may advance to.
    pub flush: Lsn,
    /// Last WAL byte + 1 applied.
    pub apply: Lsn,
    /// The client's clock at sending.
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Size of the encoded frame in bytes.
    pub const ENCODED_LEN: usize = 34;

    /// Appends the frame (without the CopyData header) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(Self::ENCODED_LEN);
        buf.put_u8(STANDBY_STATUS_UPDATE);
        buf.put_u64(self.write.as_u64());
        buf.put_u64(self.flush.as_u64());
        buf.put_u64(self.apply.as_u64());
        buf.put_i64(self.client_time.as_micros());
        buf.put_u8(u8::from(self.reply_requested));
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(Self::ENCODED_LEN);
        self.encode(&mut buf);
        buf.freeze()
    }
}

#[cfg(feature = "encode")]
impl ReplicationMessage {
    /// Encodes the frame as the server would send it (tests and fuzzing only).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            ReplicationMessage::XLogData(x) => {
                buf.put_u8(XLOG_DATA);
                buf.put_u64(x.wal_start.as_u64());
                buf.put_u64(x.wal_end.as_u64());
                buf.put_i64(x.server_time.as_micros());
                buf.put_slice(&x.data);
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                buf.put_u8(PRIMARY_KEEPALIVE);
                buf.put_u64(k.wal_end.as_u64());
                buf.put_i64(k.server_time.as_micros());
                buf.put_u8(u8::from(k.reply_requested));
            }
        }
        buf.freeze()
    }
}
