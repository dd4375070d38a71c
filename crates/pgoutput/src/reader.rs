//! A bounds-checked cursor over one message.
//!
//! Every read checks what remains first, so no length field from the wire is
//! trusted: a length is only used after the bytes it claims were seen to exist.

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::{Lsn, PgTimestamp};

pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes, message: &'static str) -> Self {
        Reader { buf, pos: 0, message }
    }

    /// Offset of the next byte to read, from the start of the message.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn error_at(&self, offset: usize, field: &'static str, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(self.message, field, offset, kind)
    }

    pub(crate) fn error(&self, field: &'static str, kind: DecodeErrorKind) -> DecodeError {
        self.error_at(self.pos, field, kind)
    }

    /// Fails unless `n` more bytes exist.
    pub(crate) fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(self.error(field, DecodeErrorKind::Truncated { needed: n, remaining }));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn::new(u64::from_be_bytes(self.array(field)?)))
    }

    pub(crate) fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp::from_micros(self.i64(field)?))
    }

    /// A byte that must be 0 or 1.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error_at(offset, field, DecodeErrorKind::InvalidValue(other))),
        }
    }

    /// `n` bytes as a zero-copy slice of the message.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    /// An `Int32` length followed by that many bytes. A negative length is an
    /// error here; callers that give -1 a meaning read the length themselves.
    pub(crate) fn length_prefixed(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let offset = self.pos;
        let len = self.i32(field)?;
        let len = usize::try_from(len)
            .map_err(|_| self.error_at(offset, field, DecodeErrorKind::InvalidLength(len.into())))?;
        self.bytes(len, field)
    }

    /// A count that must be non-negative and, at `min_item_size` bytes per item,
    /// fit in what remains: the bound that makes `Vec::with_capacity(count)` safe.
    pub(crate) fn count(
        &mut self,
        raw: i64,
        offset: usize,
        min_item_size: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let invalid = || self.error_at(offset, field, DecodeErrorKind::InvalidLength(raw));
        let count = usize::try_from(raw).map_err(|_| invalid())?;
        match count.checked_mul(min_item_size) {
            Some(bytes) if bytes <= self.remaining() => Ok(count),
            _ => Err(invalid()),
        }
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.buf[start..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error(field, DecodeErrorKind::UnterminatedString))?;
        let text =
            std::str::from_utf8(&rest[..nul]).map_err(|_| self.error(field, DecodeErrorKind::InvalidUtf8))?;
        let text = text.to_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        out
    }

    /// Fails if bytes are left: a message longer than its kind means we read it wrong.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error("end of message", DecodeErrorKind::TrailingBytes(n))),
        }
    }
}
