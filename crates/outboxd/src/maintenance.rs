//! Background work beside the pipeline: heartbeat messages and the cleanup
//! of delivered outbox rows, with the two small tables cleanup relies on:
//! `outboxd_slot` (when each slot was created, written by `outboxd setup`)
//! and `outboxd_kept` (rows dead-lettered without their value, written by the
//! pipeline before their transaction is acknowledged).

use std::collections::VecDeque;
use std::time::Duration;

use pg_replication::OutboxTable;
use pgoutput::Lsn;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::config::{CleanupConfig, Config};
use crate::setup::{ident, qualified};

async fn connect(config: &Config) -> Option<Client> {
    match config.replication() {
        Ok(c) => match c.connect_catalog().await {
            Ok(client) => Some(client),
            Err(err) => {
                warn!(error = %err, "maintenance connection failed; retrying later");
                None
            }
        },
        Err(_) => None,
    }
}

/// Emits a transactional logical message with the heartbeat prefix every
/// interval. The stream sees a transaction without outbox events, which
/// counts as delivered at once, so the slot moves even when the outbox is
/// idle. Never forwarded (the prefix is not the outbox prefix).
pub async fn heartbeat(config: Config) {
    let interval = Duration::from_millis(config.heartbeat.interval_ms.max(100));
    let mut tick = tokio::time::interval(interval);
    let mut client = None;
    loop {
        tick.tick().await;
        if client.is_none() {
            client = connect(&config).await;
        }
        if let Some(c) = &client {
            match c
                .execute(
                    "select pg_logical_emit_message(true, $1, '')",
                    &[&config.heartbeat.prefix],
                )
                .await
            {
                Ok(_) => debug!("heartbeat"),
                Err(err) => {
                    warn!(error = %err, "heartbeat failed");
                    client = None;
                }
            }
        }
    }
}

/// The bookkeeping tables, created by `outboxd setup` (and `sql/04_cleanup.sql`).
pub fn bookkeeping_sql(schema: &str) -> String {
    format!(
        "create table if not exists {s}.outboxd_slot (
            slot_name   text primary key,
            created_xid xid8 not null,
            created_at  timestamptz not null,
            created_lsn pg_lsn
        );
        create table if not exists {s}.outboxd_kept (
            slot_name text not null,
            event_id  text not null,
            reason    text not null,
            kept_at   timestamptz not null default now(),
            primary key (slot_name, event_id)
        )",
        s = ident(schema)
    )
}

/// The schema of the bookkeeping tables: the first outbox table's.
pub fn bookkeeping_schema(config: &Config) -> String {
    config
        .tables()
        .ok()
        .and_then(|t| t.first().map(|t| t.schema.clone()))
        .unwrap_or_else(|| "public".to_owned())
}

/// Records where `slot` starts: every transaction with an id from now on
/// (the snapshot's `xmax`) and every transaction starting after now commits
/// after the slot became consistent, so the slot decodes it. `replace`: the
/// slot was just created (a recreated slot moves its start); otherwise an
/// existing record is kept and a missing one is written conservatively as
/// of now (the slot's real start is unknown; older rows are only kept).
pub async fn record_slot_start(
    client: &Client,
    schema: &str,
    slot: &str,
    lsn: Option<Lsn>,
    replace: bool,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&bookkeeping_sql(schema)).await?;
    let conflict = if replace {
        "do update set created_xid = excluded.created_xid, created_at = excluded.created_at, \
         created_lsn = excluded.created_lsn"
    } else {
        "do nothing"
    };
    client
        .execute(
            &format!(
                "insert into {}.outboxd_slot (slot_name, created_xid, created_at, created_lsn) \
                 values ($1, pg_snapshot_xmax(pg_current_snapshot()), now(), $2::text::pg_lsn) \
                 on conflict (slot_name) {conflict}",
                ident(schema)
            ),
            &[&slot, &lsn.map(|l| l.to_string())],
        )
        .await?;
    Ok(())
}

/// Records outbox rows whose dead-letter record left their value out (too
/// large, or malformed), so cleanup never deletes the only copy. The pipeline
/// records a row before the dead-letter record is sent, so before its
/// transaction can be acknowledged.
#[derive(Debug)]
pub struct KeptRows {
    config: Config,
    schema: String,
    client: Option<Client>,
}

impl KeptRows {
    /// Rows kept for the configured slot.
    pub fn new(config: &Config) -> Self {
        KeptRows {
            config: config.clone(),
            schema: bookkeeping_schema(config),
            client: None,
        }
    }

    /// Records event `id` as kept, for `reason`.
    pub async fn keep(&mut self, id: &str, reason: &str) -> anyhow::Result<()> {
        let mut last = None;
        // One reconnect: the connection may have dropped since the last one.
        for _ in 0..2 {
            if self.client.is_none() {
                self.client = Some(self.config.replication()?.connect_catalog().await?);
            }
            let Some(client) = &self.client else { continue };
            let sql = format!(
                "insert into {}.outboxd_kept (slot_name, event_id, reason) values ($1, $2, $3) \
                 on conflict do nothing",
                ident(&self.schema)
            );
            match client
                .execute(&sql, &[&self.config.postgres.slot, &id, &reason])
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) => {
                    self.client = None;
                    last = Some(err);
                }
            }
        }
        Err(anyhow::anyhow!(
            "cannot record it in {}.outboxd_kept (run `outboxd setup` to create the table): {}",
            self.schema,
            last.map_or_else(|| "no connection".to_owned(), |e| e.to_string())
        ))
    }
}

/// Where the slot started, as `setup` recorded it.
#[derive(Debug, Clone, Copy)]
struct SlotStart {
    /// Transactions with an id from this one on are decoded by the slot.
    xid: u64,
}

/// A point in time for cleanup: every transaction with an id below `xmin`
/// had finished, and its commit record ends at or before `lsn`.
#[derive(Debug, Clone, Copy)]
struct Barrier {
    xmin: u64,
    lsn: Lsn,
}

/// Deletes delivered outbox rows older than the configured age, in batches.
///
/// Which rows are delivered? A row's transaction is delivered once the slot's
/// confirmed position (everything before it delivered) passes that
/// transaction's commit — *if the slot decoded it at all*. We do not know
/// each row's commit position, so each round records a *barrier*: the
/// snapshot's `xmin` (every older transaction has finished) and the current
/// WAL insert position (their commit records end before it). Once the slot's
/// confirmed position passes a barrier's position, every row inserted by a
/// transaction older than its `xmin` has been *streamed past*.
///
/// Streamed past is not delivered for rows committed before the slot existed
/// (an outbox adopted with a backlog, a slot recreated after invalidation or
/// a failover): the slot never decoded them. `outboxd setup` records where
/// the slot started (`outboxd_slot`): the next transaction id and the time,
/// taken after the slot was consistent. A row is deleted only if its
/// transaction id is at or after that id *and* its `created_at` (the
/// inserting transaction's start) is after that time: either alone proves
/// its transaction committed after the slot's start, and requiring both keeps
/// rows safe when one of them misleads (an application-set `created_at`, or
/// transaction ids far enough apart to wrap). With no record for the slot
/// nothing is deleted. Rows recorded in `outboxd_kept` (dead-lettered
/// without their value) are never deleted. Rows of transactions still
/// running, or committed after the confirmed position, are never touched.
pub async fn cleanup(config: Config) {
    let settings = config.cleanup.clone();
    let tables = match config.tables() {
        Ok(t) => t,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(settings.interval_ms.max(100)));
    let mut barriers: VecDeque<Barrier> = VecDeque::new();
    let mut client = None;
    let schema = bookkeeping_schema(&config);
    let id_column = config.mapping().id;
    let mut warned = false;
    loop {
        tick.tick().await;
        if client.is_none() {
            client = connect(&config).await;
        }
        let Some(c) = &client else { continue };
        let start = match slot_start(c, &schema, &config.postgres.slot).await {
            Ok(Some(start)) => start,
            Ok(None) | Err(_) => {
                if !warned {
                    warned = true;
                    warn!(slot = %config.postgres.slot, "cleanup deletes nothing: no record of where the slot \
                          started (run `outboxd setup` to record it)");
                }
                continue;
            }
        };
        let round = Round {
            slot: &config.postgres.slot,
            schema: &schema,
            id_column: &id_column,
            start,
        };
        match cleanup_round(c, &round, &tables, &settings, &mut barriers).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "cleanup deleted delivered outbox rows"),
            Err(err) => {
                warn!(error = %err, "cleanup failed; retrying next interval");
                client = None;
            }
        }
    }
}

/// The slot's recorded start, if any.
async fn slot_start(
    client: &Client,
    schema: &str,
    slot: &str,
) -> Result<Option<SlotStart>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "select created_xid::text from {}.outboxd_slot where slot_name = $1",
                ident(schema)
            ),
            &[&slot],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, String>(0).parse().ok())
        .map(|xid| SlotStart { xid }))
}

/// What one cleanup round needs besides the tables.
struct Round<'a> {
    slot: &'a str,
    schema: &'a str,
    id_column: &'a str,
    start: SlotStart,
}

async fn cleanup_round(
    client: &Client,
    round: &Round<'_>,
    tables: &[OutboxTable],
    settings: &CleanupConfig,
    barriers: &mut VecDeque<Barrier>,
) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select pg_snapshot_xmin(pg_current_snapshot())::text, pg_current_wal_insert_lsn()::text,
                    (select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1)",
            &[&round.slot],
        )
        .await?;
    let xmin: u64 = row.get::<_, String>(0).parse().unwrap_or(0);
    let lsn: Lsn = row.get::<_, String>(1).parse().unwrap_or(Lsn::ZERO);
    let confirmed: Option<Lsn> = row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok());
    barriers.push_back(Barrier { xmin, lsn });
    let Some(confirmed) = confirmed else { return Ok(0) };
    // The newest barrier the slot has passed.
    let mut safe = None;
    while let Some(b) = barriers.front().copied() {
        if b.lsn > confirmed {
            break;
        }
        safe = Some(b);
        barriers.pop_front();
    }
    // Keep the list short: a slot that does not move makes no progress anyway.
    while barriers.len() > 1024 {
        barriers.pop_back();
    }
    let Some(safe) = safe else { return Ok(0) };
    // xmin is a 32-bit xid; `age()` compares it with the barrier without wraparound trouble.
    // A row is at or after the slot's start when it is younger than it.
    let barrier_xid = (safe.xmin & 0xffff_ffff).to_string();
    let start_xid = (round.start.xid & 0xffff_ffff).to_string();
    let older_than = format!("{} milliseconds", settings.older_than_ms);
    let mut total = 0;
    for table in tables {
        let sql = format!(
            "delete from {t} where ctid in (select ctid from {t} o where {c} < now() - $1::text::interval \
             and age(xmin) > age($2::text::xid) \
             and age(xmin) <= age($4::text::xid) \
             and {c} > (select created_at from {s}.outboxd_slot where slot_name = $5) \
             and not exists (select 1 from {s}.outboxd_kept k where k.slot_name = $5 and k.event_id = o.{id}::text) \
             limit $3)",
            t = qualified(table),
            c = ident(&settings.created_at_column),
            s = ident(round.schema),
            id = ident(round.id_column),
        );
        loop {
            let deleted = client
                .execute(
                    &sql,
                    &[
                        &older_than,
                        &barrier_xid,
                        &i64::from(settings.batch_size),
                        &start_xid,
                        &round.slot,
                    ],
                )
                .await?;
            total += deleted;
            if deleted < u64::from(settings.batch_size) {
                break;
            }
            // Small batches, with room for the application in between.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(total)
}
