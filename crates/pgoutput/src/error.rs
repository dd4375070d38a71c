//! The one error type of the crate.

use std::fmt;

/// Why a replication frame or pgoutput message could not be decoded, and where.
///
/// Carries the message kind being decoded (`"Insert"`, `"XLogData"`, …), the
/// field, and the byte offset of that field within the message, so a log line
/// points at the exact byte. Decoding errors are never transient: the same
/// bytes fail the same way, so the caller must stop and must not acknowledge
/// the position of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {message} message: {kind} at byte {offset} (field `{field}`)")]
pub struct DecodeError {
    message: &'static str,
    field: &'static str,
    offset: usize,
    kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(
        message: &'static str,
        field: &'static str,
        offset: usize,
        kind: DecodeErrorKind,
    ) -> Self {
        DecodeError {
            message,
            field,
            offset,
            kind,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// The kind of message being decoded, e.g. `"Insert"`.
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// The field being read when decoding failed, e.g. `"column length"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Byte offset of that field from the start of the message.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// The ways bytes can fail to be a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Zero bytes where a message was expected.
    Empty,
    /// The first byte names no message this protocol has.
    UnknownTag(u8),
    /// The message ends before a field does.
    Truncated {
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        remaining: usize,
    },
    /// A count or length that is negative or cannot fit in what remains.
    InvalidLength(i64),
    /// A name (relation, column, type, prefix, GID) that is not UTF-8.
    InvalidUtf8,
    /// A name without its terminating NUL byte.
    UnterminatedString,
    /// A byte outside the values the protocol allows for this field.
    InvalidValue(u8),
    /// Bytes left over after the last field: the message is longer than its kind.
    TrailingBytes(usize),
    /// The message exists only in a newer protocol version than negotiated.
    UnsupportedByVersion {
        /// The first protocol version with this message.
        required: u8,
        /// The negotiated protocol version.
        negotiated: u8,
    },
    /// A message that cannot appear here, e.g. Stream Start inside a streamed block.
    UnexpectedMessage(&'static str),
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::Empty => f.write_str("empty message"),
            DecodeErrorKind::UnknownTag(tag) if tag.is_ascii_graphic() => {
                write!(f, "unknown message tag {tag:#04x} ('{}')", char::from(*tag))
            }
            DecodeErrorKind::UnknownTag(tag) => write!(f, "unknown message tag {tag:#04x}"),
            DecodeErrorKind::Truncated { needed, remaining } => {
                write!(f, "truncated: need {needed} bytes, {remaining} left")
            }
            DecodeErrorKind::InvalidLength(len) => write!(f, "invalid length or count {len}"),
            DecodeErrorKind::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            DecodeErrorKind::UnterminatedString => f.write_str("string has no terminating NUL byte"),
            DecodeErrorKind::InvalidValue(byte) => write!(f, "invalid value {byte:#04x}"),
            DecodeErrorKind::TrailingBytes(n) => write!(f, "{n} unexpected trailing bytes"),
            DecodeErrorKind::UnsupportedByVersion { required, negotiated } => write!(
                f,
                "message needs pgoutput protocol version {required} but version {negotiated} was negotiated"
            ),
            DecodeErrorKind::UnexpectedMessage(why) => write!(f, "unexpected message: {why}"),
        }
    }
}
