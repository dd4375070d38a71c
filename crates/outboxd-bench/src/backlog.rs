//! The throwaway cluster, the outbox schema and the backlog every consumer
//! drains.

use std::time::{Duration, Instant};

use anyhow::Context;
use pg_replication::catalog;
use pgoutput::Lsn;
use testkit::PgCluster;

/// The outbox table and publication of DESIGN.md, the payload every event
/// carries, and a loader that commits inside its loop (a procedure, so one
/// `call` makes many transactions).
///
/// Payloads are JSON objects of about 300 bytes as pgoutput sends them (the
/// jsonb text form); aggregate ids cycle over 1,000 values.
const SCHEMA: &str = "
create table outbox (
    id            uuid primary key,
    aggregatetype text not null,
    aggregateid   text not null,
    type          text not null,
    payload       jsonb,
    created_at    timestamptz not null default now()
);
create publication outboxd for table outbox with (publish = 'insert');
-- An order-created event of about 300 bytes (jsonb text form) for order g.
create function outbox_payload(g bigint) returns jsonb language sql immutable as $$
  select jsonb_build_object(
    'order_id', g,
    'customer', jsonb_build_object('id', 'cust-' || (g % 977), 'tier', 'gold'),
    'amount_cents', g * 7 % 100000,
    'currency', 'EUR',
    'items', jsonb_build_array(
      jsonb_build_object('sku', 'sku-' || (g % 101), 'qty', 1 + g % 3, 'price_cents', 1999),
      jsonb_build_object('sku', 'sku-' || (g % 103), 'qty', 1, 'price_cents', 4550)),
    'shipping', jsonb_build_object('method', 'standard', 'street', 'Hauptstrasse ' || (g % 200), 'city', 'Berlin'))
$$;
create procedure load_outbox(n bigint, per_tx bigint) language plpgsql as $$
declare i bigint := 0;
begin
  while i < n loop
    insert into outbox (id, aggregatetype, aggregateid, type, payload)
    select gen_random_uuid(), 'order', 'agg-' || (g % 1000), 'OrderCreated', outbox_payload(g)
      from generate_series(i, least(i + per_tx, n) - 1) g;
    commit;
    i := i + per_tx;
  end loop;
end $$;
";

/// Starts the cluster. The harness already runs with `fsync=off` and
/// `full_page_writes=off`; a large `max_wal_size` keeps checkpoints out of
/// the measurements, and `logical_decoding_work_mem` stays at its default
/// (64 MB: huge transactions spill to disk on the server, as in production).
/// `synchronous_commit` stays `on` for the application of the steady load:
/// with `off` the walsender only sees a commit once the WAL writer flushes it
/// (`wal_writer_delay`, 200 ms), which would measure that setting, not
/// outboxd. Only the backlog loader turns it off for its session.
/// Autovacuum is off: after a load of a million rows it would vacuum and
/// analyze the outbox while the first consumer drains, on the same two
/// cores; the loader vacuums the table itself before any consumer starts.
pub(crate) fn start_cluster() -> anyhow::Result<PgCluster> {
    let cluster = PgCluster::builder()
        .setting("autovacuum", "off")
        .setting("max_wal_size", "16GB")
        .setting("checkpoint_timeout", "1h")
        .setting("shared_buffers", "512MB")
        .setting("max_connections", "100")
        .start()
        .context("cannot start a throwaway PostgreSQL cluster (needs the PostgreSQL server binaries)")?;
    cluster.psql(SCHEMA).context("creating the outbox schema")?;
    Ok(cluster)
}

/// A loaded backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backlog {
    pub(crate) rows: u64,
    /// The end of the backlog's WAL: every consumer is done when it got here.
    pub(crate) end: Lsn,
    /// WAL bytes the backlog takes.
    pub(crate) wal_bytes: u64,
}

/// The application's insert (steady load): one event, in its own transaction.
pub(crate) const INSERT_ONE: &str = "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
     values (gen_random_uuid(), 'order', 'agg-' || ($1::bigint % 1000), 'OrderCreated', outbox_payload($1::bigint))";

/// The topic the events are routed to (`outbox.event.${aggregatetype}`).
pub(crate) const TOPIC: &str = "outbox.event.order";

/// Empties the outbox (TRUNCATE is not published) so every scenario starts
/// from the same table size.
pub(crate) async fn reset(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client.batch_execute("truncate outbox").await?;
    Ok(())
}

/// Creates logical slots (pgoutput) now, before the backlog is written.
pub(crate) async fn create_slots(client: &tokio_postgres::Client, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        catalog::create_slot(client, name)
            .await
            .map_err(|e| anyhow::anyhow!("creating slot {name}: {e}"))?;
    }
    Ok(())
}

/// Drops slots (releasing their WAL), waiting for their walsenders to go.
pub(crate) async fn drop_slots(client: &tokio_postgres::Client, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = client
                .execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                    &[name],
                )
                .await;
            match result {
                Ok(_) => break,
                // Still active: its walsender has not exited yet.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e).with_context(|| format!("dropping slot {name}")),
            }
        }
    }
    Ok(())
}

/// Loads `rows` outbox rows, `tx_size` per transaction.
pub(crate) async fn load(
    client: &tokio_postgres::Client,
    rows: u64,
    tx_size: u64,
) -> anyhow::Result<Backlog> {
    let started = Instant::now();
    let start = current_wal(client).await?;
    client.batch_execute("set synchronous_commit = off").await?;
    // One statement on its own: a CALL that commits may not run inside a
    // multi-statement (implicit transaction) query.
    client
        .batch_execute(&format!("call load_outbox({rows}, {})", tx_size.max(1)))
        .await
        .context("loading the backlog")?;
    let end = current_wal(client).await?;
    client.batch_execute("set synchronous_commit = on").await?;
    // One statement each: VACUUM may not run in a multi-statement query.
    client.batch_execute("vacuum analyze outbox").await?;
    client.batch_execute("checkpoint").await?;
    // The walsender only sends flushed WAL; CHECKPOINT flushed it. Check.
    let flushed: String = client
        .query_one("select pg_current_wal_flush_lsn()::text", &[])
        .await?
        .get(0);
    anyhow::ensure!(flushed.parse::<Lsn>()? >= end, "the backlog's WAL is not flushed");
    let row = client
        .query_one(
            "select count(*), avg(octet_length(payload::text))::float8 from outbox",
            &[],
        )
        .await?;
    let (count, payload): (i64, f64) = (row.get(0), row.get(1));
    anyhow::ensure!(count as u64 == rows, "loaded {count} rows, wanted {rows}");
    let wal_bytes = end.bytes_since(start);
    eprintln!(
        "  loaded {rows} rows ({payload:.0}-byte payloads) in transactions of {tx_size} in {:.1} s: {:.0} MiB of WAL, ending at {end}",
        started.elapsed().as_secs_f64(),
        wal_bytes as f64 / 1048576.0,
    );
    Ok(Backlog { rows, end, wal_bytes })
}

/// The current WAL insert position.
pub(crate) async fn current_wal(client: &tokio_postgres::Client) -> anyhow::Result<Lsn> {
    let lsn: String = client
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    Ok(lsn.parse()?)
}

/// The pid of the walsender streaming `slot`, once one is.
pub(crate) async fn walsender_pid(
    client: &tokio_postgres::Client,
    slot: &str,
    wait: Duration,
) -> Option<u32> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let pid: Option<i32> = client
            .query_opt(
                "select active_pid from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .ok()
            .flatten()
            .and_then(|row| row.get(0));
        if let Some(pid) = pid {
            return u32::try_from(pid).ok();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}
