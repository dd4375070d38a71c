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

/// What a checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The end of the longest prefix of transactions whose every record was
    /// delivered: transactions ending at or before it are not sent again.
    pub delivered_end_lsn: Lsn,
    /// The last event of that prefix, for `outboxd status` (`None` before the
    /// first delivered event, and in files of older versions).
    pub last_event: Option<LastEvent>,
    /// When the file was written, in seconds since the Unix epoch (0 if unknown).
    pub written_at_unix: u64,
    /// The server whose WAL the position belongs to (`None` in files of older versions).
    pub origin: Option<Origin>,
}

/// Which WAL history and which stream a checkpoint's position belongs to: a
/// position means nothing on another cluster, after a failover or a
/// point-in-time restore (a new timeline) the same LSN may hold other
/// transactions, and LSNs are shared by every database and slot of a cluster,
/// so another slot's position would skip this slot's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `IDENTIFY_SYSTEM`'s system identifier.
    pub system_id: String,
    /// `IDENTIFY_SYSTEM`'s timeline when the file was written.
    pub timeline: u32,
    /// The slot streamed from (`None` in files of older versions).
    pub slot: Option<String>,
    /// The database streamed from (`None` in files of older versions).
    pub database: Option<String>,
}

/// The last delivered event: enough to find it in Kafka and in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEvent {
    /// Its event id.
    pub id: String,
    /// Commit LSN of its transaction (the `outboxd.lsn` header).
    pub commit_lsn: Lsn,
    /// Index in the transaction (the `outboxd.index` header).
    pub index: u64,
}

impl Checkpoint {
    /// A checkpoint of `delivered_end_lsn` written now (the store adds its origin).
    pub fn now(delivered_end_lsn: Lsn, last_event: Option<LastEvent>) -> Self {
        Checkpoint {
            delivered_end_lsn,
            last_event,
            written_at_unix: unix_now(),
            origin: None,
        }
    }

    /// How long ago the file was written (`None` if the file does not say).
    pub fn age(&self) -> Option<std::time::Duration> {
        (self.written_at_unix > 0)
            .then(|| std::time::Duration::from_secs(unix_now().saturating_sub(self.written_at_unix)))
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A checkpoint file.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    path: PathBuf,
    origin: Option<Origin>,
}

/// Line 1 of the file. Line 2 is always `delivered_end_lsn = …`; the lines
/// after it are informational, and a reader ignores lines it does not know,
/// so files stay readable in both directions across versions.
const HEADER: &str = "outboxd-checkpoint v1";

impl CheckpointStore {
    /// A store at `path` (the file need not exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointStore {
            path: path.into(),
            origin: None,
        }
    }

    /// Stamps every checkpoint stored from now on with `origin`.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored checkpoint; `None` if there is none yet.
    pub fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
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
        let field = |name: &str| {
            text.lines()
                .skip(1)
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(" = "))
                .map(str::trim)
        };
        let lsn = field("delivered_end_lsn")
            .with_context(|| format!("{} has no delivered_end_lsn line", self.path.display()))?;
        let delivered_end_lsn: Lsn = lsn.parse().map_err(|e| {
            anyhow::anyhow!("{}: invalid delivered_end_lsn {lsn:?}: {e}", self.path.display())
        })?;
        // Informational: a damaged one is dropped, never a reason to refuse the position.
        let last_event = (|| {
            Some(LastEvent {
                id: serde_json::from_str(field("last_event_id")?).ok()?,
                commit_lsn: field("last_event_commit_lsn")?.parse().ok()?,
                index: field("last_event_index")?.parse().ok()?,
            })
        })();
        let written_at_unix = field("written_at_unix").and_then(|v| v.parse().ok()).unwrap_or(0);
        // Names are quoted like the event id; older files have no such lines.
        let name = |key: &str| field(key).and_then(|v| serde_json::from_str::<String>(v).ok());
        let origin = (|| {
            Some(Origin {
                system_id: field("system_identifier")?.to_owned(),
                timeline: field("timeline")?.parse().ok()?,
                slot: name("slot"),
                database: name("database"),
            })
        })();
        Ok(Some(Checkpoint {
            delivered_end_lsn,
            last_event,
            written_at_unix,
            origin,
        }))
    }

    /// Stores `checkpoint` durably.
    pub fn store(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .context("checkpoint.path has no file name")?;
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        let mut text = format!("{HEADER}\ndelivered_end_lsn = {}\n", checkpoint.delivered_end_lsn);
        if let Some(last) = &checkpoint.last_event {
            // The id is the application's text: quoted, so no newline in it can break the file.
            let id = serde_json::to_string(&last.id).unwrap_or_else(|_| "\"?\"".to_owned());
            text.push_str(&format!(
                "last_event_id = {id}\nlast_event_commit_lsn = {}\nlast_event_index = {}\n",
                last.commit_lsn, last.index
            ));
        }
        text.push_str(&format!("written_at_unix = {}\n", checkpoint.written_at_unix));
        if let Some(origin) = checkpoint.origin.as_ref().or(self.origin.as_ref()) {
            text.push_str(&format!(
                "system_identifier = {}\ntimeline = {}\n",
                origin.system_id, origin.timeline
            ));
            let quoted = |name: &str| serde_json::to_string(name).unwrap_or_else(|_| "\"?\"".to_owned());
            if let Some(slot) = &origin.slot {
                text.push_str(&format!("slot = {}\n", quoted(slot)));
            }
            if let Some(database) = &origin.database {
                text.push_str(&format!("database = {}\n", quoted(database)));
            }
        }
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
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

    fn checkpoint(lsn: u64, last: Option<(&str, u64, u64)>, at: u64) -> Checkpoint {
        Checkpoint {
            delivered_end_lsn: Lsn::new(lsn),
            last_event: last.map(|(id, commit, index)| LastEvent {
                id: id.to_owned(),
                commit_lsn: Lsn::new(commit),
                index,
            }),
            written_at_unix: at,
            origin: None,
        }
    }

    #[test]
    fn stores_and_loads_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("cp"));
        assert_eq!(store.load().unwrap(), None);
        let first = checkpoint(0x16_B374_D848, None, 5);
        store.store(&first).unwrap();
        assert_eq!(store.load().unwrap(), Some(first));
        let second = checkpoint(
            0x17_0000_0000,
            Some(("e-1\nwith a newline", 0x16_FFFF_0000, 3)),
            1_764_650_000,
        );
        let origin = Origin {
            system_id: "7441170001234567890".into(),
            timeline: 2,
            slot: Some("outboxd".into()),
            database: Some("app \"db\"".into()),
        };
        let store = store.with_origin(origin.clone());
        store.store(&second).unwrap();
        assert_eq!(
            store.load().unwrap(),
            Some(Checkpoint {
                origin: Some(origin),
                ..second
            })
        );
        let text = fs::read_to_string(store.path()).unwrap();
        assert_eq!(
            text,
            "outboxd-checkpoint v1\ndelivered_end_lsn = 17/0\nlast_event_id = \"e-1\\nwith a newline\"\n\
             last_event_commit_lsn = 16/FFFF0000\nlast_event_index = 3\nwritten_at_unix = 1764650000\n\
             system_identifier = 7441170001234567890\ntimeline = 2\nslot = \"outboxd\"\n\
             database = \"app \\\"db\\\"\"\n"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_file_with_the_position_only_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        fs::write(
            &path,
            "outboxd-checkpoint v1\ndelivered_end_lsn = 0/16B3748\nsomething_newer = 1\n",
        )
        .unwrap();
        assert_eq!(
            CheckpointStore::new(&path).load().unwrap(),
            Some(checkpoint(0x16B_3748, None, 0))
        );
        // A damaged informational line loses the information, not the position.
        fs::write(
            &path,
            "outboxd-checkpoint v1\ndelivered_end_lsn = 0/10\nlast_event_id = unquoted\n",
        )
        .unwrap();
        assert_eq!(
            CheckpointStore::new(&path).load().unwrap(),
            Some(checkpoint(0x10, None, 0))
        );
    }

    #[test]
    fn a_file_with_an_origin_but_no_slot_or_database_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        fs::write(
            &path,
            "outboxd-checkpoint v1\ndelivered_end_lsn = 0/10\nsystem_identifier = 74\ntimeline = 1\n",
        )
        .unwrap();
        let origin = CheckpointStore::new(&path).load().unwrap().unwrap().origin;
        assert_eq!(
            origin,
            Some(Origin {
                system_id: "74".into(),
                timeline: 1,
                slot: None,
                database: None,
            })
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
