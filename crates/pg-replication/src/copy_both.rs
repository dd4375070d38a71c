//! The replication stream once `START_REPLICATION` has switched the
//! connection to CopyBoth mode: CopyData frames both ways. Frames from the
//! server carry `XLogData` and `PrimaryKeepalive`, frames to it
//! `StandbyStatusUpdate`; their contents are `pgoutput`'s business.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::error::Error;
use crate::wire::{self, Backend, Wire};

/// Tag of a frontend CopyData message.
const COPY_DATA: u8 = b'd';
/// How long [`CopyBoth::send_copy_done`] waits for the server to end the stream.
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The replication stream: CopyData frames both ways.
pub struct CopyBoth {
    wire: Wire,
    frame: BytesMut,
    done: bool,
}

impl std::fmt::Debug for CopyBoth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyBoth")
            .field("wire", &self.wire)
            .field("done", &self.done)
            .finish()
    }
}

impl CopyBoth {
    pub(crate) fn new(wire: Wire) -> Self {
        CopyBoth {
            wire,
            frame: BytesMut::new(),
            done: false,
        }
    }

    /// The payload of the next CopyData frame (without the CopyData header);
    /// `None` once the server has ended the stream (CopyDone or
    /// CommandComplete), and on every call after that.
    ///
    /// Cancel-safe: use it in `tokio::select!` freely. A frame read in part
    /// when the future is dropped stays buffered and is returned whole by the
    /// next call. Server notices are logged and skipped; an ErrorResponse is
    /// an [`Error::Server`] (classify it with [`Error::is_transient`]).
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Error> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.wire.read().await? {
                Backend::Other(Message::CopyData(body)) => return Ok(Some(body.into_bytes())),
                Backend::Other(Message::CopyDone | Message::CommandComplete(_)) => {
                    self.done = true;
                    return Ok(None);
                }
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(Error::server(wire::server_error(body.fields())?))
                }
                Backend::Other(Message::NoticeResponse(body)) => wire::log_notice(body.fields()),
                Backend::Other(Message::ParameterStatus(_)) => {}
                Backend::Other(_) | Backend::CopyBoth => {
                    return Err(Error::Protocol(
                        "unexpected message in the replication stream".into(),
                    ))
                }
            }
        }
    }

    /// Sends one CopyData frame with `payload` (e.g. an encoded
    /// `StandbyStatusUpdate`).
    ///
    /// Dropping the future never leaves half a frame on the wire: the frame
    /// is queued whole first, and if the write was cancelled, what remains of
    /// it goes out at the start of the next `send`.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        let len = payload
            .len()
            .checked_add(4)
            .and_then(|len| i32::try_from(len).ok())
            .ok_or_else(|| Error::Protocol(format!("CopyData of {} bytes is too large", payload.len())))?;
        self.frame.clear();
        self.frame.reserve(payload.len() + 5);
        self.frame.put_u8(COPY_DATA);
        self.frame.put_i32(len);
        self.frame.put_slice(payload);
        let frame = std::mem::take(&mut self.frame);
        let result = self.wire.write(&frame).await;
        self.frame = frame;
        result
    }

    /// Ends the stream from our side and closes the connection: CopyDone,
    /// then waits (at most [`CLOSE_TIMEOUT`]) for the server to end its side,
    /// then Terminate and close (with TLS close_notify).
    ///
    /// Send the final status update first: the server handles messages in
    /// order, so once this returns `Ok`, it has processed that update and
    /// the slot's `confirmed_flush_lsn` shows it. Frames the server sends
    /// meanwhile are discarded (they were not acknowledged, so they come
    /// again on the next start). An error means the server's confirmation was
    /// not seen; the connection is closed either way.
    pub async fn send_copy_done(&mut self) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        let result = match self.wire.write(&buf).await {
            Ok(()) => match tokio::time::timeout(CLOSE_TIMEOUT, self.await_server_end()).await {
                Ok(result) => result,
                Err(_) => Err(Error::Io {
                    target: self.wire.target().to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the server did not end the replication stream after CopyDone",
                    ),
                }),
            },
            Err(err) => Err(err),
        };
        self.done = true;
        buf.clear();
        frontend::terminate(&mut buf);
        let _ = self.wire.write(&buf).await;
        self.wire.shutdown().await;
        result
    }

    /// Closes the connection at once, without the CopyDone handshake: for a
    /// connection being abandoned (the walsender reads end-of-file and exits).
    pub(crate) async fn close(&mut self) {
        self.done = true;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.wire.shutdown()).await;
    }

    /// Reads until the server has finished the START_REPLICATION command.
    async fn await_server_end(&mut self) -> Result<(), Error> {
        loop {
            match self.wire.read().await? {
                Backend::Other(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(Error::server(wire::server_error(body.fields())?))
                }
                Backend::Other(Message::NoticeResponse(body)) => wire::log_notice(body.fields()),
                // In-flight frames, the server's CopyDone and CommandComplete.
                Backend::Other(_) => {}
                Backend::CopyBoth => {
                    return Err(Error::Protocol(
                        "unexpected CopyBothResponse in the replication stream".into(),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    fn copy_data(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b'd'];
        out.extend_from_slice(&(u32::try_from(payload.len()).unwrap() + 4).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Frames trickle in a byte at a time while `recv` is cancelled over and
    /// over: every frame still arrives whole and in order.
    #[tokio::test]
    async fn recv_survives_cancellation_mid_frame() {
        let (ours, mut server) = tokio::io::duplex(64);
        let mut copy = CopyBoth::new(Wire::new(Box::new(ours), "test".into()));
        let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; usize::from(i) * 37 + 1]).collect();
        let mut bytes: Vec<u8> = frames.iter().flat_map(|f| copy_data(f)).collect();
        bytes.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        let writer = tokio::spawn(async move {
            for byte in bytes {
                server.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let mut received = Vec::new();
        let mut cancelled = 0;
        loop {
            tokio::select! {
                frame = copy.recv() => match frame.unwrap() {
                    Some(frame) => received.push(frame.to_vec()),
                    None => break,
                },
                () = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert_eq!(received, frames);
        assert!(cancelled > 100, "recv was cancelled only {cancelled} times");
        assert_eq!(copy.recv().await.unwrap(), None);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn send_writes_one_copy_data_frame() {
        let (ours, mut server) = tokio::io::duplex(1024);
        let mut copy = CopyBoth::new(Wire::new(Box::new(ours), "test".into()));
        copy.send(b"r-status").await.unwrap();
        let mut got = vec![0u8; 13];
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, copy_data(b"r-status"));
    }

    #[tokio::test]
    async fn send_copy_done_waits_for_the_server_to_end_the_command() {
        let (ours, mut server) = tokio::io::duplex(1024);
        let mut copy = CopyBoth::new(Wire::new(Box::new(ours), "test".into()));
        let fake_server = tokio::spawn(async move {
            let mut copy_done = [0u8; 5];
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut copy_done)
                .await
                .unwrap();
            assert_eq!(copy_done, [b'c', 0, 0, 0, 4]);
            // A frame still in flight, then the end of the command.
            let mut reply = copy_data(b"late");
            reply.extend_from_slice(&[b'c', 0, 0, 0, 4]);
            let tag = b"START_STREAMING\0";
            reply.push(b'C');
            reply.extend_from_slice(&(u32::try_from(tag.len()).unwrap() + 4).to_be_bytes());
            reply.extend_from_slice(tag);
            reply.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
            server.write_all(&reply).await.unwrap();
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut rest)
                .await
                .unwrap();
            rest
        });
        copy.send_copy_done().await.unwrap();
        assert_eq!(
            fake_server.await.unwrap(),
            [b'X', 0, 0, 0, 4],
            "Terminate after the server's end"
        );
        assert_eq!(copy.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn server_errors_keep_their_sqlstate() {
        let (ours, mut server) = tokio::io::duplex(1024);
        let mut copy = CopyBoth::new(Wire::new(Box::new(ours), "test".into()));
        let body = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        let mut message = vec![b'E'];
        message.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        message.extend_from_slice(body);
        server.write_all(&message).await.unwrap();
        let err = copy.recv().await.unwrap_err();
        assert_eq!(err.code(), Some("57P01"));
        assert!(err.is_transient(), "{err}");
    }
}
