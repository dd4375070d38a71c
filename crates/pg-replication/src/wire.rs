//! The byte stream under a connection (TCP, Unix socket or TLS) and backend
//! message framing on top of it.
//!
//! Reading is cancel-safe: bytes go into a buffer with `read_buf`, and
//! messages are cut out of the buffer only once they are complete, so a
//! `read` dropped half-way (in `tokio::select!`) loses nothing. Writing is
//! cancel-safe in the weaker sense that matters on a socket: a frame is
//! queued whole before any byte of it is written, and queued bytes go out
//! before anything else, so a dropped write never leaves half a message on
//! the wire (a frame queued by a cancelled write goes out with the next one).
//!
//! `postgres-protocol`'s parser rejects CopyBothResponse ('W'), the reply to
//! `START_REPLICATION`, so that tag is recognised here first.

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{ErrorFields, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, ServerError};

/// CopyBothResponse: the server switched to streaming both ways.
const COPY_BOTH_RESPONSE: u8 = b'W';
/// The largest backend message accepted, header included. PostgreSQL cannot
/// send more than 1 GiB in one message (`MaxAllocSize`); a larger length is
/// corruption or a hostile peer, and is refused instead of allocated.
pub(crate) const MAX_MESSAGE_LEN: usize = (1 << 30) + 64;
/// How much to reserve ahead for an incomplete message: the length header is
/// not trusted with an allocation before the bytes arrive.
const READ_AHEAD: usize = 1 << 20;

/// A byte stream a connection runs on.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A backend message, with CopyBothResponse added.
pub(crate) enum Backend {
    CopyBoth,
    Other(Message),
}

/// The stream with its read and write buffers.
pub(crate) struct Wire {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
    target: String,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("target", &self.target)
            .field("buffered", &self.read.len())
            .field("unsent", &self.write.len())
            .finish()
    }
}

impl Wire {
    pub(crate) fn new(stream: Box<dyn Stream>, target: String) -> Self {
        Wire {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
            target,
        }
    }

    /// Host and port, or socket path, for messages.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Queues `bytes` (whole frontend messages) and writes everything queued.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write.extend_from_slice(bytes);
        self.flush().await
    }

    /// Writes everything queued; cancel-safe (see the module notes).
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        while !self.write.is_empty() {
            let n = self
                .stream
                .write(&self.write)
                .await
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(self.io_error(io::ErrorKind::WriteZero.into()));
            }
            self.write.advance(n);
        }
        self.stream.flush().await.map_err(|e| self.io_error(e))
    }

    /// The next whole message; cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Backend, Error> {
        loop {
            if let Some(message) = parse(&mut self.read)? {
                return Ok(message);
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                let context = if self.read.is_empty() {
                    ""
                } else {
                    " in the middle of a message"
                };
                return Err(Error::Closed(context.to_owned()));
            }
        }
    }

    /// Closes the stream (TLS close_notify included); errors are irrelevant by then.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            target: self.target.clone(),
            source,
        }
    }
}

/// Cuts the next whole message out of `buf`, or leaves `buf` as it is.
pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Backend>, Error> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let total = usize::try_from(len)
        .ok()
        .filter(|len| (4..MAX_MESSAGE_LEN).contains(len))
        .map(|len| len + 1)
        .ok_or_else(|| {
            Error::Protocol(format!(
                "backend message {:?} claims a length of {len} bytes (at most {MAX_MESSAGE_LEN} is possible)",
                char::from(tag)
            ))
        })?;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(READ_AHEAD));
        return Ok(None);
    }
    if tag == COPY_BOTH_RESPONSE {
        // Overall format and per-column formats: nothing to act on in logical replication.
        buf.advance(total);
        return Ok(Some(Backend::CopyBoth));
    }
    match Message::parse(buf) {
        Ok(Some(message)) => Ok(Some(Backend::Other(message))),
        Ok(None) => Err(Error::Protocol(format!(
            "backend message {:?} cut short",
            char::from(tag)
        ))),
        Err(e) => Err(Error::Protocol(format!(
            "malformed backend message {:?}: {e}",
            char::from(tag)
        ))),
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
pub(crate) fn server_error(mut fields: ErrorFields<'_>) -> Result<ServerError, Error> {
    use fallible_iterator::FallibleIterator;

    let mut error = ServerError::default();
    let mut localized_severity = None;
    while let Some(field) = fields
        .next()
        .map_err(|e| Error::Protocol(format!("malformed error response: {e}")))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'S' => localized_severity = Some(value),
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    if error.severity.is_empty() {
        error.severity = localized_severity.unwrap_or_default();
    }
    Ok(error)
}

/// Logs a NoticeResponse (a WARNING or NOTICE the server sent along).
pub(crate) fn log_notice(fields: ErrorFields<'_>) {
    match server_error(fields) {
        Ok(notice) if notice.severity == "WARNING" => tracing::warn!(notice = %notice, "server warning"),
        Ok(notice) => tracing::debug!(notice = %notice, "server notice"),
        Err(err) => tracing::debug!(error = %err, "unreadable server notice"),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn partial_messages_stay_in_the_buffer() {
        let whole = message(b'd', b"hello");
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert!(parse(&mut buf).unwrap().is_none(), "complete after {i} bytes?");
            assert_eq!(buf.len(), i);
            buf.put_u8(*byte);
        }
        match parse(&mut buf).unwrap() {
            Some(Backend::Other(Message::CopyData(body))) => assert_eq!(body.data(), b"hello"),
            _ => panic!("expected CopyData"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn copy_both_response_is_recognised() {
        let mut buf = BytesMut::from(&message(b'W', &[0, 0, 0])[..]);
        buf.extend_from_slice(&message(b'd', b"x"));
        assert!(matches!(parse(&mut buf).unwrap(), Some(Backend::CopyBoth)));
        assert!(matches!(
            parse(&mut buf).unwrap(),
            Some(Backend::Other(Message::CopyData(_)))
        ));
    }

    #[test]
    fn absurd_lengths_are_refused_without_allocating() {
        for len in [0u32, 3, 0x4000_0100, u32::MAX] {
            let mut buf = BytesMut::from(&[b'd'][..]);
            buf.put_u32(len);
            let before = buf.capacity();
            let err = parse(&mut buf)
                .err()
                .unwrap_or_else(|| panic!("length {len} accepted"));
            assert!(matches!(err, Error::Protocol(_)), "{err}");
            assert_eq!(buf.capacity(), before);
        }
        // A legal but large message reserves a bounded amount until its bytes arrive.
        let mut buf = BytesMut::from(&[b'd'][..]);
        buf.put_u32(512 << 20);
        assert!(parse(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= READ_AHEAD + 64, "{}", buf.capacity());
    }

    #[test]
    fn error_fields_prefer_the_untranslated_severity() {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "42704"),
            (b'M', "no slot"),
            (b'H', "h"),
        ] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut buf = BytesMut::from(&message(b'E', &body)[..]);
        let Some(Backend::Other(Message::ErrorResponse(response))) = parse(&mut buf).unwrap() else {
            panic!("expected ErrorResponse")
        };
        let error = server_error(response.fields()).unwrap();
        assert_eq!(
            error,
            ServerError {
                severity: "ERROR".into(),
                code: "42704".into(),
                message: "no slot".into(),
                detail: None,
                hint: Some("h".into())
            }
        );
    }
}
