//! Where the checkpoint lives: a local file (one instance) or a table on the
//! primary (several instances on one slot, on any hosts).
//!
//! With high availability the instance that takes the lease over may run on
//! another host: a file there would not know what the previous leader
//! delivered. `[checkpoint] store = "postgres"` keeps it in a small table on
//! the same database (`sql/06_checkpoint.sql`, or `outboxd setup`), one row
//! per slot, written in one statement (atomic) with the same origin as the
//! file (system identifier, timeline, slot, database) and read back under
//! the same trust rules.
//!
//! A failed write of the table is reported like a failed write of the file:
//! the run stops (the slot still holds everything not acknowledged).

use std::sync::Arc;

use anyhow::Context;
use pg_replication::ReplicationConfig;
use pgoutput::Lsn;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::checkpoint::{Checkpoint, CheckpointStore, LastEvent, Origin};
use crate::config::Config;
use crate::setup::ident;

/// `[checkpoint] store`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local file (`checkpoint.path`), the default.
    #[default]
    File,
    /// A table on the primary (`checkpoint.table`), for several instances.
    Postgres,
}

/// The configured checkpoint store.
#[derive(Debug, Clone)]
pub enum Checkpoints {
    /// A local file.
    File(CheckpointStore),
    /// A row of a table on the primary.
    Postgres(Arc<CheckpointTable>),
}

impl Checkpoints {
    /// The store the configuration names.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(match config.checkpoint.store {
            StoreKind::File => Checkpoints::File(CheckpointStore::new(&config.checkpoint.path)),
            StoreKind::Postgres => Checkpoints::Postgres(Arc::new(CheckpointTable {
                connection: config.replication()?,
                table: config.checkpoint.table.clone(),
                slot: config.postgres.slot.clone(),
                client: Mutex::new(None),
                origin: None,
            })),
        })
    }

    /// What it is, for messages (`the checkpoint file …`, `the checkpoint row …`).
    pub fn describe(&self) -> String {
        match self {
            Checkpoints::File(file) => format!("the checkpoint file {}", file.path().display()),
            Checkpoints::Postgres(table) => {
                format!(
                    "the checkpoint row of slot {:?} in table {}",
                    table.slot, table.table
                )
            }
        }
    }

    /// Stamps every checkpoint stored from now on with `origin`.
    pub fn with_origin(self, origin: Origin) -> Self {
        match self {
            Checkpoints::File(file) => Checkpoints::File(file.with_origin(origin)),
            Checkpoints::Postgres(table) => Checkpoints::Postgres(Arc::new(CheckpointTable {
                connection: table.connection.clone(),
                table: table.table.clone(),
                slot: table.slot.clone(),
                client: Mutex::new(None),
                origin: Some(origin),
            })),
        }
    }

    /// The stored checkpoint; `None` if there is none yet.
    pub async fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        match self {
            Checkpoints::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.load()).await?
            }
            Checkpoints::Postgres(table) => table.load().await,
        }
    }

    /// Stores `checkpoint` durably.
    pub async fn store(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        match self {
            Checkpoints::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.store(&checkpoint)).await?
            }
            Checkpoints::Postgres(table) => table.store(&checkpoint).await,
        }
    }
}

/// The checkpoint table: one row per slot.
#[derive(Debug)]
pub struct CheckpointTable {
    connection: ReplicationConfig,
    table: String,
    slot: String,
    client: Mutex<Option<Client>>,
    origin: Option<Origin>,
}

/// The table's definition: `sql/06_checkpoint.sql` (what `outboxd setup`
/// runs), with the configured table name.
pub fn table_sql(table: &str) -> String {
    include_str!("../../../sql/06_checkpoint.sql").replace("outboxd_checkpoint", &qualified_table(table))
}

/// `schema.table` or `table`, each part quoted.
fn qualified_table(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", ident(schema), ident(name)),
        None => ident(table),
    }
}

impl CheckpointTable {
    async fn client(&self) -> anyhow::Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let client = self
                .connection
                .connect_catalog()
                .await
                .context("cannot connect to PostgreSQL for the checkpoint")?;
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let guard = self.client().await?;
        let client = guard.as_ref().context("no checkpoint connection")?;
        let row = client
            .query_opt(
                &format!(
                    "select delivered_end_lsn::text, last_event_id, last_event_commit_lsn::text, \
                            last_event_index, system_identifier, timeline, database, \
                            extract(epoch from written_at)::bigint \
                     from {} where slot = $1",
                    qualified_table(&self.table)
                ),
                &[&self.slot],
            )
            .await
            .with_context(|| {
                format!(
                    "cannot read the checkpoint table {} (create it with `outboxd setup` or sql/06_checkpoint.sql)",
                    self.table
                )
            })?;
        let Some(row) = row else { return Ok(None) };
        let lsn = |text: Option<String>| text.and_then(|t| t.parse::<Lsn>().ok());
        let delivered_end_lsn =
            lsn(row.get(0)).context("the checkpoint row has no valid delivered_end_lsn")?;
        let last_event = match (
            row.get::<_, Option<String>>(1),
            lsn(row.get(2)),
            row.get::<_, Option<i64>>(3),
        ) {
            (Some(id), Some(commit_lsn), Some(index)) => Some(LastEvent {
                id,
                commit_lsn,
                index: u64::try_from(index).unwrap_or(0),
            }),
            _ => None,
        };
        let origin = match (row.get::<_, Option<String>>(4), row.get::<_, Option<i32>>(5)) {
            (Some(system_id), Some(timeline)) => Some(Origin {
                system_id,
                timeline: u32::try_from(timeline).unwrap_or(0),
                slot: Some(self.slot.clone()),
                database: row.get(6),
            }),
            _ => None,
        };
        Ok(Some(Checkpoint {
            delivered_end_lsn,
            last_event,
            written_at_unix: u64::try_from(row.get::<_, i64>(7)).unwrap_or(0),
            origin,
        }))
    }

    async fn store(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let origin = checkpoint.origin.as_ref().or(self.origin.as_ref());
        let last = checkpoint.last_event.as_ref();
        let index = last.map(|l| i64::try_from(l.index).unwrap_or(i64::MAX));
        let timeline = origin.map(|o| i32::try_from(o.timeline).unwrap_or(i32::MAX));
        let sql = format!(
            "insert into {} as c (slot, delivered_end_lsn, last_event_id, last_event_commit_lsn, last_event_index, \
                                  system_identifier, timeline, database, written_at) \
             values ($1, $2::text::pg_lsn, $3, $4::text::pg_lsn, $5, $6, $7, $8, now()) \
             on conflict (slot) do update set delivered_end_lsn = excluded.delivered_end_lsn, \
               last_event_id = excluded.last_event_id, last_event_commit_lsn = excluded.last_event_commit_lsn, \
               last_event_index = excluded.last_event_index, system_identifier = excluded.system_identifier, \
               timeline = excluded.timeline, database = excluded.database, written_at = excluded.written_at",
            qualified_table(&self.table)
        );
        let mut guard = self.client().await?;
        let client = guard.as_ref().context("no checkpoint connection")?;
        let result = client
            .execute(
                &sql,
                &[
                    &self.slot,
                    &checkpoint.delivered_end_lsn.to_string(),
                    &last.map(|l| l.id.clone()),
                    &last.map(|l| l.commit_lsn.to_string()),
                    &index,
                    &origin.map(|o| o.system_id.clone()),
                    &timeline,
                    &origin.and_then(|o| o.database.clone()),
                ],
            )
            .await;
        if let Err(err) = result {
            // Reconnect next time (the server may have restarted).
            *guard = None;
            return Err(err).with_context(|| format!("cannot write the checkpoint table {}", self.table));
        }
        Ok(())
    }
}
