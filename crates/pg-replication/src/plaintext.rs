//! What a TCP connection without TLS may not carry: the password in clear.
//!
//! With `sslmode=prefer` (the default, as in libpq) a server, or a man in the
//! middle, that declines TLS gets a plaintext connection; if it then asks for
//! the `password` method, libpq sends the password as is. outboxd refuses
//! that unless the operator allows it ([`ReplicationConfig::allow_cleartext_password`],
//! after libpq's `require_auth`): SCRAM and md5 never put the password itself
//! on the wire, and a Unix socket never leaves the machine. Every fallback to
//! plaintext is logged at warn.
//!
//! The replication connection authenticates with our own code ([`crate::auth`]);
//! the catalog connection authenticates inside `tokio-postgres`, so
//! [`CleartextGuard`] watches the server's bytes for the request instead.
//!
//! [`ReplicationConfig::allow_cleartext_password`]: crate::ReplicationConfig::allow_cleartext_password

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// AuthenticationCleartextPassword's code in an `R` message.
const AUTH_CLEARTEXT: u32 = 3;
/// AuthenticationOk's code: authentication is over.
const AUTH_OK: u32 = 0;

/// Logs that a connection fell back to plaintext.
pub(crate) fn warn_fallback(target: &str) {
    tracing::warn!(
        target_server = %target,
        "the server declined TLS: this connection is not encrypted (sslmode=prefer); \
         use sslmode=verify-full to refuse plaintext"
    );
}

/// A plaintext stream that fails reading when the server asks for the
/// password in clear, before the client could send it.
pub(crate) struct CleartextGuard<S> {
    inner: S,
    state: Startup,
    refused: Arc<AtomicBool>,
}

impl<S> CleartextGuard<S> {
    /// Wraps `inner`; `refused` is set when the request was refused.
    pub(crate) fn new(inner: S, refused: Arc<AtomicBool>) -> Self {
        CleartextGuard {
            inner,
            state: Startup::default(),
            refused,
        }
    }
}

/// Where the server's startup messages stand: the header of the message
/// being read (tag, length, and an `R` message's code), or how many bytes of
/// its body are left to skip.
#[derive(Default)]
struct Startup {
    done: bool,
    head: Vec<u8>,
    skip: usize,
}

impl Startup {
    /// Reads `data`; `Err` when the server asked for a cleartext password.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), ()> {
        while !self.done && !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            // Tag and length; an `R` message's code too.
            let need = match self.head.first() {
                None => 1,
                Some(b'R') => 9,
                Some(_) => 5,
            };
            let take = (need - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < 5 || (self.head[0] == b'R' && self.head.len() < 9) {
                continue;
            }
            let tag = self.head[0];
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]) as usize;
            if tag == b'R' {
                match u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]) {
                    AUTH_CLEARTEXT => return Err(()),
                    AUTH_OK => self.done = true,
                    _ => {}
                }
            } else if tag == b'E' {
                self.done = true;
            }
            // The length counts itself (4 bytes) and the body.
            self.skip = len.saturating_sub(4).saturating_sub(self.head.len() - 5);
            self.head.clear();
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CleartextGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.state.done && buf.filled().len() > before {
            let fresh = buf.filled()[before..].to_vec();
            if self.state.feed(&fresh).is_err() {
                self.refused.store(true, Ordering::SeqCst);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the server asks for a cleartext password over a connection without TLS",
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CleartextGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_cleartext_request_is_seen_whatever_the_read_sizes() {
        let mut stream = message(b'N', b"a notice\0");
        stream.extend(message(b'R', &AUTH_CLEARTEXT.to_be_bytes()));
        for chunk in 1..stream.len() {
            let mut state = Startup::default();
            let seen = stream.chunks(chunk).any(|c| state.feed(c).is_err());
            assert!(seen, "chunks of {chunk}");
        }
    }

    #[test]
    fn scram_and_what_follows_authentication_pass() {
        let mut sasl = 10u32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        let mut stream = message(b'R', &sasl);
        stream.extend(message(b'R', &AUTH_OK.to_be_bytes()));
        // After AuthenticationOk nothing is inspected, whatever it looks like.
        stream.extend(message(b'R', &AUTH_CLEARTEXT.to_be_bytes()));
        for chunk in 1..stream.len() {
            let mut state = Startup::default();
            assert!(
                stream.chunks(chunk).all(|c| state.feed(c).is_ok()),
                "chunks of {chunk}"
            );
        }
    }
}
