//! Background work beside the pipeline: heartbeat messages and the cleanup
//! of delivered outbox rows.

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
/// transaction's commit. We do not know each row's commit position, so each
/// round records a *barrier*: the snapshot's `xmin` (every older transaction
/// has finished) and the current WAL insert position (their commit records
/// end before it). Once the slot's confirmed position passes a barrier's
/// position, every row inserted by a transaction older than its `xmin` is
/// delivered, and only such rows (also older than `older_than_ms`) are
/// deleted. Rows of transactions still running, or committed after the
/// confirmed position, are never touched.
pub async fn cleanup(config: Config) {
    let settings = config.cleanup.clone();
    let tables = match config.tables() {
        Ok(t) => t,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(settings.interval_ms.max(100)));
    let mut barriers: VecDeque<Barrier> = VecDeque::new();
    let mut client = None;
    loop {
        tick.tick().await;
        if client.is_none() {
            client = connect(&config).await;
        }
        let Some(c) = &client else { continue };
        match cleanup_round(c, &config.postgres.slot, &tables, &settings, &mut barriers).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "cleanup deleted delivered outbox rows"),
            Err(err) => {
                warn!(error = %err, "cleanup failed; retrying next interval");
                client = None;
            }
        }
    }
}

async fn cleanup_round(
    client: &Client,
    slot: &str,
    tables: &[OutboxTable],
    settings: &CleanupConfig,
    barriers: &mut VecDeque<Barrier>,
) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select pg_snapshot_xmin(pg_current_snapshot())::text, pg_current_wal_insert_lsn()::text,
                    (select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1)",
            &[&slot],
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
    let barrier_xid = (safe.xmin & 0xffff_ffff).to_string();
    let older_than = format!("{} milliseconds", settings.older_than_ms);
    let mut total = 0;
    for table in tables {
        let sql = format!(
            "delete from {t} where ctid in (select ctid from {t} where {c} < now() - $1::text::interval \
             and age(xmin) > age($2::text::xid) limit $3)",
            t = qualified(table),
            c = ident(&settings.created_at_column),
        );
        loop {
            let deleted = client
                .execute(
                    &sql,
                    &[&older_than, &barrier_xid, &i64::from(settings.batch_size)],
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
