//! Checks and setup over a normal (non-replication) connection: the server,
//! the slot and the publication, each failure named with its fix.
//!
//! Every start runs [`verify`]: a missing or invalidated slot is a definite
//! error and is never replaced by a new slot, because a new slot starts at the
//! current end of WAL and would silently skip every event written since the old
//! one was lost. Only [`create_slot`], called by an explicit setup, creates one.

use std::str::FromStr;

use pgoutput::Lsn;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::event::OutboxTable;

/// Oldest server this crate supports: pgoutput's `messages` option and the
/// skipping of empty transactions' positions we rely on are there from 14.
pub const MIN_SERVER_VERSION_NUM: u32 = 140_000;

/// A condition that retrying will not fix: stop and tell the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// `wal_level` is not `logical`.
    #[error("wal_level is {actual:?}, logical replication needs 'logical': set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL")]
    WalLevel {
        /// The server's setting.
        actual: String,
    },
    /// The server is older than we support.
    #[error("PostgreSQL {version} is not supported: outboxd needs PostgreSQL 14 or later")]
    ServerTooOld {
        /// `server_version`.
        version: String,
    },
    /// The slot does not exist.
    #[error("replication slot {slot:?} does not exist: create it with `outboxd setup` before the first start. outboxd never creates a slot at start, because a new slot begins at the current end of WAL and would skip every event written since the old one")]
    SlotMissing {
        /// Slot name.
        slot: String,
    },
    /// The slot lost WAL it needed.
    #[error("replication slot {slot:?} is invalidated (wal_status {wal_status:?}): PostgreSQL removed WAL it still needed (see max_slot_wal_keep_size), so events since its confirmed position {confirmed:?} may be gone. Recreate it with `outboxd setup` after dropping it, and reconcile the outbox rows written in between")]
    SlotInvalidated {
        /// Slot name.
        slot: String,
        /// `pg_replication_slots.wal_status` (or `conflicting`).
        wal_status: String,
        /// Its last confirmed position.
        confirmed: Option<String>,
    },
    /// The slot is not a pgoutput logical slot.
    #[error("replication slot {slot:?} uses plugin {plugin:?} ({slot_type}), outboxd needs a logical slot with plugin 'pgoutput': pick another slot name, or drop this slot if nothing else uses it")]
    SlotWrongPlugin {
        /// Slot name.
        slot: String,
        /// Its plugin.
        plugin: String,
        /// `logical` or `physical`.
        slot_type: String,
    },
    /// The slot decodes transactions at PREPARE time.
    #[error("replication slot {slot:?} has two_phase enabled: PostgreSQL would send prepared transactions before they commit, and a prepared transaction may still roll back. outboxd publishes committed events only: create a slot without two-phase (`outboxd setup` does) and drop this one if nothing else uses it")]
    SlotTwoPhase {
        /// Slot name.
        slot: String,
    },
    /// The slot belongs to another database.
    #[error("replication slot {slot:?} belongs to database {slot_database:?}, but outboxd is connected to {database:?}: connect to {slot_database:?} or use a slot of this database")]
    SlotOtherDatabase {
        /// Slot name.
        slot: String,
        /// The slot's database.
        slot_database: String,
        /// Our database.
        database: String,
    },
    /// The publication does not exist.
    #[error("publication {publication:?} does not exist: create it with `outboxd setup` or CREATE PUBLICATION {publication} FOR TABLE <outbox table> WITH (publish = 'insert')")]
    PublicationMissing {
        /// Publication name.
        publication: String,
    },
    /// The publication does not publish inserts of an outbox table.
    #[error("publication {publication:?} does not publish inserts into {table}: ALTER PUBLICATION {publication} ADD TABLE {table} (and make sure its publish option includes 'insert')")]
    PublicationLacksTable {
        /// Publication name.
        publication: String,
        /// The table.
        table: String,
    },
    /// The publication publishes only some rows of an outbox table.
    #[error("publication {publication:?} publishes only the rows of {table} matching WHERE {filter}: outboxd would never see the other rows, and the slot would move past them. Remove the filter: ALTER PUBLICATION {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE {table}; rows inserted since the filter was set were not delivered: re-publish them from the table")]
    PublicationRowFilter {
        /// Publication name.
        publication: String,
        /// The table.
        table: String,
        /// The row filter, as the server prints it.
        filter: String,
    },
    /// An outbox table does not exist (any more): dropped, or renamed.
    #[error("outbox table {table} does not exist: it was dropped or renamed. Rename it back (ALTER TABLE ... RENAME TO), or name the table in postgres.tables and make sure the publication includes it; rows inserted under another name were not delivered: re-publish them from the table")]
    OutboxTableMissing {
        /// The table.
        table: String,
    },
    /// A catalog query failed in a way that retrying will not fix (e.g. permissions).
    #[error("catalog check failed: {0}")]
    Query(String),
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin.
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// PID of the walsender using it, if any.
    pub active_pid: Option<i32>,
    /// Oldest WAL the slot holds.
    pub restart_lsn: Option<Lsn>,
    /// Where the next `START_REPLICATION` resumes.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// PostgreSQL 16+: invalidated by a recovery conflict.
    pub conflicting: bool,
    /// Decodes prepared transactions at PREPARE time.
    pub two_phase: bool,
    /// Bytes of WAL between `restart_lsn` and the current end of WAL.
    pub retained_bytes: Option<i64>,
}

impl SlotInfo {
    /// Whether PostgreSQL has invalidated the slot.
    pub fn is_invalidated(&self) -> bool {
        self.wal_status.as_deref() == Some("lost") || self.conflicting
    }
}

fn query_error(err: tokio_postgres::Error) -> QueryError {
    QueryError(err)
}

/// A catalog query failed: transient when the connection broke, a
/// [`SetupError::Query`] otherwise.
#[derive(Debug, thiserror::Error)]
#[error("catalog query failed: {0}")]
pub struct QueryError(#[source] pub tokio_postgres::Error);

impl QueryError {
    /// The connection broke or the server is shutting down: retry later.
    pub fn is_transient(&self) -> bool {
        if self.0.is_closed() {
            return true;
        }
        match self.0.code() {
            None => true,
            Some(code) => {
                let code = code.code();
                code.starts_with("08") || code.starts_with("57P") || code == SqlState::OBJECT_IN_USE.code()
            }
        }
    }
}

impl From<QueryError> for SetupError {
    fn from(err: QueryError) -> Self {
        let detail = match err.0.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => err.0.to_string(),
        };
        SetupError::Query(detail)
    }
}

/// What a check found wrong: either definite, or a query that may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Stop: the operator must fix something.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The catalog query itself failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

impl CheckError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CheckError::Query(q) if q.is_transient())
    }
}

fn parse_lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| Lsn::from_str(&t).ok())
}

/// The server's version and `wal_level`: fails unless logical replication can work.
pub async fn check_server(client: &Client) -> Result<(), CheckError> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int4, current_setting('server_version'), current_setting('wal_level')",
            &[],
        )
        .await
        .map_err(query_error)?;
    let version_num: i32 = row.get(0);
    if u32::try_from(version_num).unwrap_or(0) < MIN_SERVER_VERSION_NUM {
        return Err(SetupError::ServerTooOld { version: row.get(1) }.into());
    }
    let wal_level: String = row.get(2);
    if wal_level != "logical" {
        return Err(SetupError::WalLevel { actual: wal_level }.into());
    }
    Ok(())
}

/// Reads a slot; `None` if it does not exist.
pub async fn read_slot(client: &Client, slot: &str) -> Result<Option<SlotInfo>, QueryError> {
    // to_jsonb reads columns that only newer servers have (conflicting: 16+).
    let row = client
        .query_opt(
            "select slot_name::text, plugin::text, slot_type, database::text, active_pid,
                    restart_lsn::text, confirmed_flush_lsn::text, wal_status,
                    coalesce((to_jsonb(s) ->> 'conflicting')::bool, false),
                    coalesce((to_jsonb(s) ->> 'two_phase')::bool, false),
                    pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end, restart_lsn)::int8
               from pg_replication_slots s where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_error)?;
    Ok(row.map(|row| SlotInfo {
        name: row.get(0),
        plugin: row.get(1),
        slot_type: row.get(2),
        database: row.get(3),
        active_pid: row.get(4),
        restart_lsn: parse_lsn(row.get(5)),
        confirmed_flush_lsn: parse_lsn(row.get(6)),
        wal_status: row.get(7),
        conflicting: row.get(8),
        two_phase: row.get(9),
        retained_bytes: row.get(10),
    }))
}

/// Requires that the slot exists, is a pgoutput slot of this database, and is not invalidated.
pub async fn verify_slot(client: &Client, slot: &str) -> Result<SlotInfo, CheckError> {
    let info = read_slot(client, slot)
        .await?
        .ok_or_else(|| SetupError::SlotMissing {
            slot: slot.to_owned(),
        })?;
    if info.slot_type != "logical" || info.plugin.as_deref() != Some("pgoutput") {
        return Err(SetupError::SlotWrongPlugin {
            slot: slot.to_owned(),
            plugin: info.plugin.clone().unwrap_or_default(),
            slot_type: info.slot_type.clone(),
        }
        .into());
    }
    if info.two_phase {
        return Err(SetupError::SlotTwoPhase {
            slot: slot.to_owned(),
        }
        .into());
    }
    let database: String = client
        .query_one("select current_database()::text", &[])
        .await
        .map_err(query_error)?
        .get(0);
    if info.database.as_deref() != Some(database.as_str()) {
        return Err(SetupError::SlotOtherDatabase {
            slot: slot.to_owned(),
            slot_database: info.database.clone().unwrap_or_default(),
            database,
        }
        .into());
    }
    if info.is_invalidated() {
        let wal_status = if info.conflicting {
            "conflicting".to_owned()
        } else {
            info.wal_status.clone().unwrap_or_default()
        };
        return Err(SetupError::SlotInvalidated {
            slot: slot.to_owned(),
            wal_status,
            confirmed: info.confirmed_flush_lsn.map(|l| l.to_string()),
        }
        .into());
    }
    Ok(info)
}

/// Requires that the publication exists and publishes inserts of every
/// outbox table, all of their rows (no row filter), and that the tables exist
/// under their configured names.
pub async fn verify_publication(
    client: &Client,
    publication: &str,
    tables: &[OutboxTable],
) -> Result<(), CheckError> {
    let row = client
        .query_opt(
            "select pubinsert from pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_error)?
        .ok_or_else(|| SetupError::PublicationMissing {
            publication: publication.to_owned(),
        })?;
    let publishes_inserts: bool = row.get(0);
    for table in tables {
        // to_jsonb reads the row filter only where the server has it (15+).
        let member = client
            .query_opt(
                "select to_jsonb(t) ->> 'rowfilter' from pg_publication_tables t
                  where pubname = $1 and schemaname = $2 and tablename = $3",
                &[&publication, &table.schema, &table.name],
            )
            .await
            .map_err(query_error)?;
        let Some(member) = member else {
            let exists: bool = client
                .query_one(
                    "select to_regclass(format('%I.%I', $1::text, $2::text)) is not null",
                    &[&table.schema, &table.name],
                )
                .await
                .map_err(query_error)?
                .get(0);
            if !exists {
                return Err(SetupError::OutboxTableMissing {
                    table: table.to_string(),
                }
                .into());
            }
            return Err(SetupError::PublicationLacksTable {
                publication: publication.to_owned(),
                table: table.to_string(),
            }
            .into());
        };
        if !publishes_inserts {
            return Err(SetupError::PublicationLacksTable {
                publication: publication.to_owned(),
                table: table.to_string(),
            }
            .into());
        }
        if let Some(filter) = member.get::<_, Option<String>>(0) {
            return Err(SetupError::PublicationRowFilter {
                publication: publication.to_owned(),
                table: table.to_string(),
                filter,
            }
            .into());
        }
    }
    Ok(())
}

/// Everything a start needs: server, slot, publication.
pub async fn verify(
    client: &Client,
    slot: &str,
    publication: &str,
    tables: &[OutboxTable],
) -> Result<SlotInfo, CheckError> {
    check_server(client).await?;
    let info = verify_slot(client, slot).await?;
    verify_publication(client, publication, tables).await?;
    Ok(info)
}

/// Whether [`create_slot`] made a new slot or found one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCreation {
    /// A new slot, starting at `lsn`.
    Created {
        /// Its `confirmed_flush_lsn`.
        lsn: Lsn,
    },
    /// It already existed (and is a valid pgoutput slot of this database).
    AlreadyExisted,
}

/// Creates the pgoutput slot for setup; an existing valid slot is success.
pub async fn create_slot(client: &Client, slot: &str) -> Result<SlotCreation, CheckError> {
    check_server(client).await?;
    let created = client
        .query_one(
            "select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await;
    match created {
        Ok(row) => {
            let lsn = parse_lsn(row.get(0)).unwrap_or(Lsn::ZERO);
            Ok(SlotCreation::Created { lsn })
        }
        Err(err) if err.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
            verify_slot(client, slot).await?;
            Ok(SlotCreation::AlreadyExisted)
        }
        Err(err) => Err(query_error(err).into()),
    }
}
