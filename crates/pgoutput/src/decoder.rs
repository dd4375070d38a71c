//! Decoding pgoutput messages.
//!
//! # The streamed-block state
//!
//! Inside a Stream Start … Stream Stop block (protocol 2 and later) Postgres
//! puts the transaction id in front of every change message; outside it does
//! not. The bytes alone cannot tell the two layouts apart, so decoding needs
//! to know which side of a block it is on.
//!
//! We keep that one bit of state in [`Decoder`]: it sees Stream Start and
//! Stream Stop go by, so callers feed it messages in order and never have to
//! mirror the protocol's state themselves. Callers that decode messages out of
//! order (tests, tools reading captured messages) use [`decode_message`] and
//! say in the [`DecodeContext`] whether the message came from inside a block.

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::message::*;
use crate::reader::Reader;

/// Message tags, as the first byte of each pgoutput message.
pub mod tag {
    /// 'B'
    pub const BEGIN: u8 = b'B';
    /// 'C'
    pub const COMMIT: u8 = b'C';
    /// 'O'
    pub const ORIGIN: u8 = b'O';
    /// 'R'
    pub const RELATION: u8 = b'R';
    /// 'Y'
    pub const TYPE: u8 = b'Y';
    /// 'I'
    pub const INSERT: u8 = b'I';
    /// 'U'
    pub const UPDATE: u8 = b'U';
    /// 'D'
    pub const DELETE: u8 = b'D';
    /// 'T'
    pub const TRUNCATE: u8 = b'T';
    /// 'M'
    pub const MESSAGE: u8 = b'M';
    /// 'S'
    pub const STREAM_START: u8 = b'S';
    /// 'E'
    pub const STREAM_STOP: u8 = b'E';
    /// 'c'
    pub const STREAM_COMMIT: u8 = b'c';
    /// 'A'
    pub const STREAM_ABORT: u8 = b'A';
    /// 'b'
    pub const BEGIN_PREPARE: u8 = b'b';
    /// 'P'
    pub const PREPARE: u8 = b'P';
    /// 'K'
    pub const COMMIT_PREPARED: u8 = b'K';
    /// 'r'
    pub const ROLLBACK_PREPARED: u8 = b'r';
    /// 'p'
    pub const STREAM_PREPARE: u8 = b'p';
}

/// Tuple markers inside Insert, Update and Delete.
mod tuple_tag {
    pub(super) const NEW: u8 = b'N';
    pub(super) const KEY: u8 = b'K';
    pub(super) const OLD: u8 = b'O';
    pub(super) const NULL: u8 = b'n';
    pub(super) const UNCHANGED_TOAST: u8 = b'u';
    pub(super) const TEXT: u8 = b't';
    pub(super) const BINARY: u8 = b'b';
}

/// The lowest and highest pgoutput protocol versions this crate decodes.
pub const SUPPORTED_PROTOCOL_VERSIONS: std::ops::RangeInclusive<u8> = 1..=4;

/// What decoding one message needs to know besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// The negotiated `proto_version` (1 to 4).
    pub protocol_version: u8,
    /// The message was sent inside a Stream Start … Stream Stop block.
    pub in_streamed_block: bool,
    /// Stream Abort carries its abort LSN and time: protocol 4 with `streaming = parallel`.
    pub stream_abort_info: bool,
}

impl DecodeContext {
    /// Outside a streamed block, without parallel-streaming abort info.
    pub const fn new(protocol_version: u8) -> Self {
        DecodeContext {
            protocol_version,
            in_streamed_block: false,
            stream_abort_info: false,
        }
    }
}

/// The name of a message kind, for errors and logs; `None` for an unknown tag.
pub const fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        tag::BEGIN => "Begin",
        tag::COMMIT => "Commit",
        tag::ORIGIN => "Origin",
        tag::RELATION => "Relation",
        tag::TYPE => "Type",
        tag::INSERT => "Insert",
        tag::UPDATE => "Update",
        tag::DELETE => "Delete",
        tag::TRUNCATE => "Truncate",
        tag::MESSAGE => "Message",
        tag::STREAM_START => "Stream Start",
        tag::STREAM_STOP => "Stream Stop",
        tag::STREAM_COMMIT => "Stream Commit",
        tag::STREAM_ABORT => "Stream Abort",
        tag::BEGIN_PREPARE => "Begin Prepare",
        tag::PREPARE => "Prepare",
        tag::COMMIT_PREPARED => "Commit Prepared",
        tag::ROLLBACK_PREPARED => "Rollback Prepared",
        tag::STREAM_PREPARE => "Stream Prepare",
        _ => return None,
    })
}

/// The first protocol version that has the message.
const fn min_protocol_version(tag: u8) -> u8 {
    match tag {
        tag::STREAM_START | tag::STREAM_STOP | tag::STREAM_COMMIT | tag::STREAM_ABORT => 2,
        tag::BEGIN_PREPARE
        | tag::PREPARE
        | tag::COMMIT_PREPARED
        | tag::ROLLBACK_PREPARED
        | tag::STREAM_PREPARE => 3,
        _ => 1,
    }
}

/// Decodes one pgoutput message (the payload of one `XLogData` frame).
///
/// Every field is bounds-checked and the whole message must be consumed, so
/// a message that does not match its kind's layout exactly is an error, never
/// a guess. No input panics, and no allocation is larger than the input.
pub fn decode_message(
    data: &Bytes,
    context: &DecodeContext,
) -> Result<LogicalReplicationMessage, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::new("pgoutput", "tag", 0, DecodeErrorKind::Empty));
    };
    let Some(name) = message_name(tag) else {
        return Err(DecodeError::new(
            "pgoutput",
            "tag",
            0,
            DecodeErrorKind::UnknownTag(tag),
        ));
    };
    let required = min_protocol_version(tag);
    if context.protocol_version < required {
        let kind = DecodeErrorKind::UnsupportedByVersion {
            required,
            negotiated: context.protocol_version,
        };
        return Err(DecodeError::new(name, "tag", 0, kind));
    }

    let mut r = Reader::new(data, name);
    r.u8("tag")?;
    let xid = |r: &mut Reader<'_>| -> Result<Option<Xid>, DecodeError> {
        if context.in_streamed_block {
            r.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };

    use LogicalReplicationMessage as M;
    let message = match tag {
        tag::BEGIN => M::Begin(Begin {
            final_lsn: r.lsn("final_lsn")?,
            commit_time: r.timestamp("commit_time")?,
            xid: r.u32("xid")?,
        }),
        tag::COMMIT => M::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_time: r.timestamp("commit_time")?,
        }),
        tag::ORIGIN => M::Origin(Origin {
            commit_lsn: r.lsn("commit_lsn")?,
            name: r.string("name")?,
        }),
        tag::RELATION => {
            let xid = xid(&mut r)?;
            M::Relation(relation(&mut r, xid)?)
        }
        tag::TYPE => M::Type(Type {
            xid: xid(&mut r)?,
            id: r.u32("type id")?,
            namespace: r.string("namespace")?,
            name: r.string("name")?,
        }),
        tag::INSERT => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            expect_byte(&mut r, tuple_tag::NEW, "new tuple marker")?;
            M::Insert(Insert {
                xid,
                relation_id,
                new: tuple(&mut r)?,
            })
        }
        tag::UPDATE => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            let offset = r.pos();
            let old = match r.u8("tuple marker")? {
                tuple_tag::KEY => Some(OldTuple::Key(tuple(&mut r)?)),
                tuple_tag::OLD => Some(OldTuple::Full(tuple(&mut r)?)),
                tuple_tag::NEW => None,
                other => {
                    return Err(r.error_at(offset, "tuple marker", DecodeErrorKind::InvalidValue(other)))
                }
            };
            if old.is_some() {
                expect_byte(&mut r, tuple_tag::NEW, "new tuple marker")?;
            }
            M::Update(Update {
                xid,
                relation_id,
                old,
                new: tuple(&mut r)?,
            })
        }
        tag::DELETE => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32("relation id")?;
            let offset = r.pos();
            let old = match r.u8("tuple marker")? {
                tuple_tag::KEY => OldTuple::Key(tuple(&mut r)?),
                tuple_tag::OLD => OldTuple::Full(tuple(&mut r)?),
                other => {
                    return Err(r.error_at(offset, "tuple marker", DecodeErrorKind::InvalidValue(other)))
                }
            };
            M::Delete(Delete {
                xid,
                relation_id,
                old,
            })
        }
        tag::TRUNCATE => {
            let xid = xid(&mut r)?;
            let count_offset = r.pos();
            let raw_count = r.i32("relation count")?;
            let options_offset = r.pos();
            let bits = r.u8("options")?;
            if bits & !(TruncateOptions::CASCADE | TruncateOptions::RESTART_IDENTITY) != 0 {
                return Err(r.error_at(options_offset, "options", DecodeErrorKind::InvalidValue(bits)));
            }
            let options = TruncateOptions {
                cascade: bits & TruncateOptions::CASCADE != 0,
                restart_identity: bits & TruncateOptions::RESTART_IDENTITY != 0,
            };
            let count = r.count(raw_count.into(), count_offset, 4, "relation count")?;
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(r.u32("relation id")?);
            }
            M::Truncate(Truncate {
                xid,
                options,
                relation_ids,
            })
        }
        tag::MESSAGE => M::Message(Message {
            xid: xid(&mut r)?,
            transactional: r.bool("flags")?,
            lsn: r.lsn("lsn")?,
            prefix: r.string("prefix")?,
            content: r.length_prefixed("content")?,
        }),
        tag::STREAM_START => M::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.bool("first segment")?,
        }),
        tag::STREAM_STOP => M::StreamStop,
        tag::STREAM_COMMIT => M::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_time: r.timestamp("commit_time")?,
        }),
        tag::STREAM_ABORT => M::StreamAbort(StreamAbort {
            xid: r.u32("xid")?,
            subxid: r.u32("subxid")?,
            abort: if context.stream_abort_info {
                Some(AbortInfo {
                    lsn: r.lsn("abort_lsn")?,
                    time: r.timestamp("abort_time")?,
                })
            } else {
                None
            },
        }),
        tag::BEGIN_PREPARE => M::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            prepare_time: r.timestamp("prepare_time")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        tag::PREPARE => M::Prepare(prepare(&mut r)?),
        tag::STREAM_PREPARE => M::StreamPrepare(prepare(&mut r)?),
        tag::COMMIT_PREPARED => M::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
            commit_time: r.timestamp("commit_time")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        tag::ROLLBACK_PREPARED => M::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare_end_lsn")?,
            rollback_end_lsn: r.lsn("rollback_end_lsn")?,
            prepare_time: r.timestamp("prepare_time")?,
            rollback_time: r.timestamp("rollback_time")?,
            xid: r.u32("xid")?,
            gid: r.string("gid")?,
        }),
        _ => unreachable_tag(tag, name)?,
    };
    r.finish()?;
    Ok(message)
}

/// `message_name` and the match above list the same tags; this keeps the
/// impossible case an error instead of a panic.
fn unreachable_tag(tag: u8, name: &'static str) -> Result<LogicalReplicationMessage, DecodeError> {
    Err(DecodeError::new(name, "tag", 0, DecodeErrorKind::UnknownTag(tag)))
}

fn expect_byte(r: &mut Reader<'_>, expected: u8, field: &'static str) -> Result<(), DecodeError> {
    let offset = r.pos();
    let byte = r.u8(field)?;
    if byte == expected {
        Ok(())
    } else {
        Err(r.error_at(offset, field, DecodeErrorKind::InvalidValue(byte)))
    }
}

fn relation(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("name")?;
    let identity_offset = r.pos();
    let identity = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| {
        r.error_at(
            identity_offset,
            "replica identity",
            DecodeErrorKind::InvalidValue(identity),
        )
    })?;
    let count_offset = r.pos();
    let raw_count = r.i16("column count")?;
    // flags (1) + name (at least its NUL) + type id (4) + type modifier (4)
    let count = r.count(raw_count.into(), count_offset, 10, "column count")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_id: r.u32("column type id")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count_offset = r.pos();
    let raw_count = r.i16("column count")?;
    let count = r.count(raw_count.into(), count_offset, 1, "column count")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let kind_offset = r.pos();
        let value = match r.u8("column kind")? {
            tuple_tag::NULL => ColumnValue::Null,
            tuple_tag::UNCHANGED_TOAST => ColumnValue::UnchangedToast,
            tuple_tag::TEXT => ColumnValue::Text(r.length_prefixed("column value")?),
            tuple_tag::BINARY => ColumnValue::Binary(r.length_prefixed("column value")?),
            other => {
                return Err(r.error_at(kind_offset, "column kind", DecodeErrorKind::InvalidValue(other)))
            }
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

fn prepare(r: &mut Reader<'_>) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare_lsn")?,
        end_lsn: r.lsn("end_lsn")?,
        prepare_time: r.timestamp("prepare_time")?,
        xid: r.u32("xid")?,
        gid: r.string("gid")?,
    })
}

/// A pgoutput decoder for one replication connection: decodes messages in
/// stream order and tracks the streamed-block state (see the module notes).
///
/// On an error the state is left as it was. A new connection needs a new
/// decoder: a block cut off by a disconnect is not resumed.
#[derive(Debug, Clone)]
pub struct Decoder {
    context: DecodeContext,
    streamed_xid: Option<Xid>,
}

/// A protocol version this crate does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput protocol version {0} is not supported (supported: 1 to 4)")]
pub struct UnsupportedProtocolVersion(pub u32);

impl Decoder {
    /// A decoder for the negotiated `proto_version`.
    pub fn new(protocol_version: u32) -> Result<Self, UnsupportedProtocolVersion> {
        let version = u8::try_from(protocol_version)
            .ok()
            .filter(|v| SUPPORTED_PROTOCOL_VERSIONS.contains(v))
            .ok_or(UnsupportedProtocolVersion(protocol_version))?;
        Ok(Decoder {
            context: DecodeContext::new(version),
            streamed_xid: None,
        })
    }

    /// Declares that the connection asked for `streaming = parallel` (protocol 4),
    /// under which Stream Abort carries the abort LSN and time.
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Self {
        self.context.stream_abort_info = parallel && self.context.protocol_version >= 4;
        self
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> u8 {
        self.context.protocol_version
    }

    /// The top-level transaction of the streamed block we are in, if any.
    pub fn streamed_xid(&self) -> Option<Xid> {
        self.streamed_xid
    }

    /// Decodes the next message of the stream.
    ///
    /// Besides the layout checks of [`decode_message`], checks that the
    /// message may appear where it does: inside a streamed block only change
    /// messages, Origin and Stream Stop; Stream Stop only inside one.
    pub fn decode(&mut self, data: &Bytes) -> Result<LogicalReplicationMessage, DecodeError> {
        let context = DecodeContext {
            in_streamed_block: self.streamed_xid.is_some(),
            ..self.context
        };
        if let Some(&tag) = data.first() {
            if let Some(name) = message_name(tag) {
                let allowed = match tag {
                    tag::RELATION
                    | tag::TYPE
                    | tag::INSERT
                    | tag::UPDATE
                    | tag::DELETE
                    | tag::TRUNCATE
                    | tag::MESSAGE
                    | tag::ORIGIN => true,
                    tag::STREAM_STOP => context.in_streamed_block,
                    _ => !context.in_streamed_block,
                };
                if !allowed {
                    let why = if context.in_streamed_block {
                        "transaction-level message inside a streamed block"
                    } else {
                        "Stream Stop outside a streamed block"
                    };
                    return Err(DecodeError::new(
                        name,
                        "tag",
                        0,
                        DecodeErrorKind::UnexpectedMessage(why),
                    ));
                }
            }
        }
        let message = decode_message(data, &context)?;
        match &message {
            LogicalReplicationMessage::StreamStart(start) => self.streamed_xid = Some(start.xid),
            LogicalReplicationMessage::StreamStop => self.streamed_xid = None,
            _ => {}
        }
        Ok(message)
    }
}
