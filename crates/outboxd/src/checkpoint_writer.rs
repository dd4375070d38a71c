//! Writes checkpoints off the ordered loop.
//!
//! A checkpoint write is an fsync (two, with the directory): milliseconds on a
//! good disk, far more on a busy one. The pipeline's loop must not wait for it
//! (it would stop reading deliveries and the slot meanwhile), so it hands the
//! newest checkpoint to this writer and goes on. Only the newest matters: a
//! checkpoint superseded before it was written is skipped. A failed write is
//! reported on the next hand-over, and by [`CheckpointWriter::finish`].

use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

use crate::checkpoint::{Checkpoint, CheckpointStore};

/// See the module notes.
#[derive(Debug)]
pub struct CheckpointWriter {
    newest: watch::Sender<Option<Checkpoint>>,
    failed: Arc<Mutex<Option<String>>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl CheckpointWriter {
    /// Starts the writer task (inside a tokio runtime).
    pub fn spawn(store: CheckpointStore) -> Self {
        let (newest, mut rx) = watch::channel(None::<Checkpoint>);
        let failed = Arc::new(Mutex::new(None));
        let failure = Arc::clone(&failed);
        let task = tokio::spawn(async move {
            let mut written = None;
            loop {
                // Closed: write what is newest, then stop.
                let closed = rx.changed().await.is_err();
                let checkpoint = rx.borrow_and_update().clone();
                if let Some(checkpoint) = checkpoint.filter(|c| Some(c.delivered_end_lsn) != written) {
                    let lsn = checkpoint.delivered_end_lsn;
                    let store = store.clone();
                    let result = tokio::task::spawn_blocking(move || store.store(&checkpoint))
                        .await
                        .map_err(|e| anyhow!("the checkpoint writer panicked: {e}"))
                        .and_then(|r| r);
                    if let Err(err) = result {
                        error!(error = %format!("{err:#}"), "cannot write the checkpoint");
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{err:#}"));
                        return Err(err);
                    }
                    written = Some(lsn);
                }
                if closed {
                    return Ok(());
                }
            }
        });
        CheckpointWriter { newest, failed, task }
    }

    /// Hands over the newest checkpoint; fails if an earlier write failed.
    pub fn write(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        if let Some(err) = self.failed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(anyhow!("{err}"));
        }
        self.newest.send_replace(Some(checkpoint));
        Ok(())
    }

    /// Writes the newest checkpoint handed over, and stops.
    pub async fn finish(self) -> anyhow::Result<()> {
        drop(self.newest);
        self.task
            .await
            .map_err(|e| anyhow!("the checkpoint writer failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::Lsn;

    #[tokio::test]
    async fn the_newest_checkpoint_is_on_disk_after_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("cp"));
        let writer = CheckpointWriter::spawn(store.clone());
        for lsn in 1..=100u64 {
            writer.write(Checkpoint::now(Lsn::new(lsn), None)).unwrap();
        }
        writer.finish().await.unwrap();
        assert_eq!(store.load().unwrap().unwrap().delivered_end_lsn, Lsn::new(100));
    }

    #[tokio::test]
    async fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the rename fails.
        std::fs::create_dir(dir.path().join("cp")).unwrap();
        let writer = CheckpointWriter::spawn(CheckpointStore::new(dir.path().join("cp")));
        writer.write(Checkpoint::now(Lsn::new(5), None)).unwrap();
        let err = writer.finish().await.unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot write the checkpoint"),
            "{err:#}"
        );
    }
}
