//! The checkpoint: outboxd's own record of the last delivered `end_lsn`.
//!
//! The slot's `confirmed_flush_lsn` is where Postgres resumes; the checkpoint
//! covers the window between a delivery and the next status update reaching
//! the server (a crash there would otherwise re-send what Kafka already has).
//! On start, transactions ending at or before it are skipped.
//!
//! Written atomically: a temporary file beside it is written and fsynced,
//! renamed over the old one, and the directory fsynced, so a crash leaves
//! either the old or the new position, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pgoutput::Lsn;

/// A checkpoint file.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
}

const HEADER: &str = "outboxd-checkpoint v1";

impl CheckpointStore {
    /// A store at `path` (the file need not exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored position; `None` if there is no checkpoint yet.
    pub fn load(&self) -> anyhow::Result<Option<Lsn>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read the checkpoint {}", self.path.display()))
            }
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            bail!(
                "{} is not an outboxd checkpoint (first line is not {HEADER:?}); move it away or fix checkpoint.path",
                self.path.display()
            );
        }
        let lsn = lines
            .find_map(|line| line.strip_prefix("delivered_end_lsn = "))
            .with_context(|| format!("{} has no delivered_end_lsn line", self.path.display()))?;
        let lsn: Lsn = lsn.trim().parse().map_err(|e| {
            anyhow::anyhow!("{}: invalid delivered_end_lsn {lsn:?}: {e}", self.path.display())
        })?;
        Ok(Some(lsn))
    }

    /// Stores `lsn` durably.
    pub fn store(&self, lsn: Lsn) -> anyhow::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .context("checkpoint.path has no file name")?;
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            writeln!(file, "{HEADER}\ndelivered_end_lsn = {lsn}")?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(&dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write the checkpoint {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("cp"));
        assert_eq!(store.load().unwrap(), None);
        store.store(Lsn::new(0x16_B374_D848)).unwrap();
        assert_eq!(store.load().unwrap(), Some(Lsn::new(0x16_B374_D848)));
        store.store(Lsn::new(0x17_0000_0000)).unwrap();
        assert_eq!(store.load().unwrap(), Some(Lsn::new(0x17_0000_0000)));
        let text = fs::read_to_string(store.path()).unwrap();
        assert_eq!(text, "outboxd-checkpoint v1\ndelivered_end_lsn = 17/0\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_foreign_file_is_refused_not_overwritten_silently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        fs::write(&path, "hello").unwrap();
        let err = CheckpointStore::new(&path).load().unwrap_err();
        assert!(err.to_string().contains("is not an outboxd checkpoint"), "{err}");
        fs::write(&path, "outboxd-checkpoint v1\ndelivered_end_lsn = nope\n").unwrap();
        assert!(CheckpointStore::new(&path).load().is_err());
    }
}
