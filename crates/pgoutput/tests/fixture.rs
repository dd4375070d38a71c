//! Loading the golden fixtures under `tests/fixtures/`.
//!
//! A file's name says how to decode it: `<message>-v<N>-<case>.bin`, where
//! `N` is the protocol version, a case containing `streamed` was sent inside
//! a streamed block, and `stream_abort-v4-…` carries the parallel-streaming
//! abort fields. `xlogdata-…` and `keepalive-…` are replication frames.

use std::path::PathBuf;

use bytes::Bytes;
use pgoutput::{decode_message, DecodeContext, DecodeError, LogicalReplicationMessage, ReplicationMessage};

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) bytes: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    Logical(LogicalReplicationMessage),
    Frame(ReplicationMessage),
}

impl Fixture {
    pub(crate) fn is_frame(&self) -> bool {
        self.name.starts_with("xlogdata-") || self.name.starts_with("keepalive-")
    }

    pub(crate) fn context(&self) -> DecodeContext {
        let version = self
            .name
            .split('-')
            .nth(1)
            .and_then(|v| v.strip_prefix('v'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("fixture {} has no -vN- protocol version", self.name));
        DecodeContext {
            protocol_version: version,
            in_streamed_block: self.name.contains("streamed"),
            stream_abort_info: self.name.starts_with("stream_abort-v4-"),
        }
    }

    /// Decodes the fixture (or any bytes in its context).
    pub(crate) fn decode_bytes(&self, bytes: &Bytes) -> Result<Decoded, DecodeError> {
        if self.is_frame() {
            ReplicationMessage::parse(bytes).map(Decoded::Frame)
        } else {
            decode_message(bytes, &self.context()).map(Decoded::Logical)
        }
    }

    pub(crate) fn decode(&self) -> Result<Decoded, DecodeError> {
        self.decode_bytes(&self.bytes)
    }
}

impl Decoded {
    pub(crate) fn encode(&self) -> Bytes {
        match self {
            Decoded::Logical(m) => m.encode(),
            Decoded::Frame(f) => f.encode(),
        }
    }
}

/// Every committed fixture, sorted by name.
pub(crate) fn all() -> Vec<Fixture> {
    let mut out: Vec<Fixture> = std::fs::read_dir(dir())
        .expect("read tests/fixtures")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .map(|path| Fixture {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            bytes: Bytes::from(std::fs::read(&path).expect("read fixture")),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One fixture by name (without `.bin`).
pub(crate) fn load(name: &str) -> Fixture {
    let path = dir().join(format!("{name}.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    Fixture {
        name: name.to_owned(),
        bytes: Bytes::from(bytes),
    }
}

/// A fixture too large to commit raw, stored as `<name>.bin.gz`. It is not
/// among [`all`]: the robustness tests cut and flip every byte of every
/// fixture, which for a megabyte would be a trillion bytes of copying.
pub(crate) fn load_gz(name: &str) -> Fixture {
    use std::io::Read as _;

    let path = dir().join(format!("{name}.bin.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    Fixture {
        name: name.to_owned(),
        bytes: Bytes::from(bytes),
    }
}

/// Writes `bytes` as the compressed fixture `<name>.bin.gz`.
pub(crate) fn save_gz(name: &str, bytes: &[u8]) {
    use std::io::Write as _;

    let path = dir().join(format!("{name}.bin.gz"));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap().sync_all().unwrap();
}
