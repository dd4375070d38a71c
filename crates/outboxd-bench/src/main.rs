//! `outboxd-bench`: how fast outboxd drains a backlog compared with
//! PostgreSQL's own `pg_recvlogical` on the same data in the same run, its
//! commit→ack latency under steady load, and its memory on huge transactions.
//!
//! One throwaway cluster per scenario group. Slots are created before the
//! backlog is loaded, one per consumer, so every consumer decodes exactly the
//! same WAL:
//!
//! 1. **reference** — `pg_recvlogical --start` with pgoutput (proto 1, the
//!    same publication), writing to /dev/null, until the backlog's end LSN;
//! 2. **decode only** — outboxd's replication consumer and decoder, every
//!    commit acknowledged, events dropped;
//! 3. **full pipeline** — `outboxd run` into librdkafka's mock cluster,
//!    finished when every record's delivery report arrived and the slot was
//!    acknowledged past the backlog;
//! 4. **steady load** — an application inserting at a fixed rate while the
//!    full pipeline runs: commit→ack latency (commit timestamp from the
//!    Commit message, i.e. the server's clock; ack time from this process's
//!    clock when the last delivery report of the transaction confirmed it —
//!    same machine, same clock);
//! 5. **huge transaction** — one transaction of N rows through the full
//!    pipeline in a child process (`outboxd-bench huge-child`), whose peak
//!    RSS (VmHWM) is its own; the mock Kafka cluster lives in the parent so
//!    the records it stores do not count against outboxd.
//!
//! Figures are printed as a table (and as JSON with `--json`); nothing here
//! is a test with a threshold.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use outboxd::config::Config;
use outboxd::metrics::Metrics;
use pg_replication::{catalog, ReplicationEvent, ReplicationStream, StreamConfig};
use pgoutput::Lsn;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use testkit::PgCluster;

#[derive(Debug, Parser)]
#[command(
    name = "outboxd-bench",
    about = "outboxd against pg_recvlogical on the same backlog"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Backlog rows per throughput scenario.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per transaction; one throughput scenario each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u64, 100])]
    tx_size: Vec<u64>,
    /// Steady load: events per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Steady load: seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Huge-transaction sizes (each in its own child process).
    #[arg(long, value_delimiter = ',', default_values_t = vec![100_000u64, 1_000_000])]
    huge_rows: Vec<u64>,
    /// Skip scenarios: reference, decode, pipeline, steady, huge.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// (internal) Runs the full pipeline over an existing backlog and prints its own peak RSS.
    HugeChild {
        #[arg(long)]
        postgres_url: String,
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        slot: String,
        #[arg(long)]
        rows: u64,
        #[arg(long)]
        end_lsn: Lsn,
    },
}

/// One result line.
#[derive(Debug, Clone, Default)]
struct Row {
    scenario: String,
    events: u64,
    seconds: f64,
    cpu_seconds: Option<f64>,
    reference_eps: Option<f64>,
    latency_ms: Option<[f64; 4]>,
    peak_rss_mib: Option<f64>,
}

impl Row {
    fn eps(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "events": self.events,
            "seconds": self.seconds,
            "events_per_second": self.eps(),
            "ratio_to_reference": self.reference_eps.map(|r| self.eps() / r),
            "cpu_seconds": self.cpu_seconds,
            "latency_ms": self.latency_ms.map(|l| json!({"p50": l[0], "p95": l[1], "p99": l[2], "max": l[3]})),
            "peak_rss_mib": self.peak_rss_mib,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if let Some(Sub::HugeChild {
            postgres_url,
            brokers,
            slot,
            rows,
            end_lsn,
        }) = cli.command
        {
            return huge_child(&postgres_url, &brokers, &slot, rows, end_lsn).await;
        }
        bench(&cli).await
    })
}

async fn bench(cli: &Cli) -> anyhow::Result<()> {
    let skip = |s: &str| cli.skip.iter().any(|x| x == s);
    print_machine();
    let mut rows = Vec::new();
    for &tx_size in &cli.tx_size {
        rows.extend(throughput(cli.rows, tx_size, &skip).await?);
    }
    if !skip("steady") {
        rows.push(steady(cli.rate, cli.duration).await?);
    }
    if !skip("huge") {
        for &n in &cli.huge_rows {
            rows.push(huge(n).await?);
        }
    }
    print_table(&rows);
    if let Some(path) = &cli.json {
        let value =
            json!({ "machine": machine(), "results": rows.iter().map(Row::json).collect::<Vec<_>>() });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The cluster and the backlog.

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
    -- n rows, per_tx rows per transaction; payloads of about 300 bytes, 1,000 aggregates.
    create procedure load_outbox(n bigint, per_tx bigint) language plpgsql as $$
    declare i bigint := 0;
    begin
      while i < n loop
        insert into outbox (id, aggregatetype, aggregateid, type, payload)
        select gen_random_uuid(), 'order', 'agg-' || (g % 1000), 'OrderCreated',
               jsonb_build_object('order', g, 'customer', 'customer-' || (g % 977), 'amount_cents', g * 7 % 100000,
                                  'currency', 'EUR', 'items', jsonb_build_array('sku-' || (g % 101), 'sku-' || (g % 103)),
                                  'note', repeat('x', 160))
          from generate_series(i, least(i + per_tx, n) - 1) g;
        commit;
        i := i + per_tx;
      end loop;
    end $$;
";

/// A cluster for loading backlogs fast (`synchronous_commit=off`: the
/// consumers only start once the load is done), or, for the steady-load
/// latency, with the default `synchronous_commit=on` (with it off, commits
/// reach the walsender only when the WAL writer flushes, up to
/// `wal_writer_delay` later, which would be measured as outboxd's latency).
fn start_cluster_with(synchronous_commit: &str) -> anyhow::Result<PgCluster> {
    let cluster = PgCluster::builder()
        .setting("synchronous_commit", synchronous_commit)
        .setting("max_wal_size", "8GB")
        .setting("checkpoint_timeout", "30min")
        .setting("shared_buffers", "256MB")
        .start()?;
    cluster.psql(SCHEMA)?;
    Ok(cluster)
}

fn start_cluster() -> anyhow::Result<PgCluster> {
    start_cluster_with("off")
}

async fn create_slots(cluster: &PgCluster, names: &[&str]) -> anyhow::Result<()> {
    let client = cluster.connect().await?;
    for name in names {
        catalog::create_slot(&client, name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Loads `rows` rows, `tx_size` per transaction; returns the WAL position after it.
async fn load(cluster: &PgCluster, rows: u64, tx_size: u64) -> anyhow::Result<Lsn> {
    let started = Instant::now();
    let client = cluster.connect().await?;
    client
        .batch_execute(&format!("call load_outbox({rows}, {tx_size})"))
        .await?;
    let end: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let wal: String = client
        .query_one("select pg_size_pretty(pg_current_wal_lsn() - '0/0'::pg_lsn)", &[])
        .await?
        .get(0);
    eprintln!(
        "loaded {rows} rows in transactions of {tx_size} in {:.1}s (WAL now {wal})",
        started.elapsed().as_secs_f64()
    );
    Ok(end.parse()?)
}

// ---------------------------------------------------------------------------
// Throughput: reference, decode only, full pipeline on one backlog.

async fn throughput(rows: u64, tx_size: u64, skip: &impl Fn(&str) -> bool) -> anyhow::Result<Vec<Row>> {
    let cluster = tokio::task::spawn_blocking(start_cluster).await??;
    create_slots(&cluster, &["reference", "decode", "pipeline"]).await?;
    let end = load(&cluster, rows, tx_size).await?;
    let label = |s: &str| format!("{s} (tx of {tx_size})");
    let mut out = Vec::new();
    let mut reference_eps = None;
    if !skip("reference") {
        let row = reference(&cluster, rows, end, label("pg_recvlogical")).await?;
        reference_eps = Some(row.eps());
        out.push(row);
    }
    if !skip("decode") {
        let mut row = decode_only(&cluster, rows, label("decode only")).await?;
        row.reference_eps = reference_eps;
        out.push(row);
    }
    if !skip("pipeline") {
        let mut row = pipeline(&cluster, rows, end, label("full pipeline")).await?;
        row.reference_eps = reference_eps;
        out.push(row);
    }
    Ok(out)
}

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join(name).exists() {
            return Ok(dir.join(name));
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .with_context(|| format!("{name} not found (install postgresql)"))
}

async fn reference(cluster: &PgCluster, rows: u64, end: Lsn, scenario: String) -> anyhow::Result<Row> {
    let binary = pg_bin("pg_recvlogical")?;
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port()
    );
    let started = Instant::now();
    // /usr/bin/time reports the child's own CPU.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("/usr/bin/time")
            .args(["-f", "%U %S"])
            .arg(binary)
            .args([
                "-d",
                &dsn,
                "--slot",
                "reference",
                "--start",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args(["-o", "proto_version=1", "-o", "publication_names=outboxd"])
            .args(["-E", &end.to_string()])
            .output()
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("pg_recvlogical failed: {stderr}");
    }
    let cpu = stderr.lines().last().map(|l| {
        l.split_whitespace()
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>()
    });
    Ok(Row {
        scenario,
        events: rows,
        seconds,
        cpu_seconds: cpu,
        ..Row::default()
    })
}

async fn decode_only(cluster: &PgCluster, rows: u64, scenario: String) -> anyhow::Result<Row> {
    let connection = cluster.url("postgres", "postgres").parse()?;
    let mut config = StreamConfig::new(connection, "decode", "outboxd");
    config.status_interval = Duration::from_millis(100);
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let mut stream = ReplicationStream::start(config).await?;
    let ack = stream.ack_handle();
    let mut events = 0u64;
    while events < rows {
        match stream.next().await {
            Some(Ok(ReplicationEvent::Insert(_))) => events += 1,
            Some(Ok(ReplicationEvent::Commit(commit))) => ack.ack(commit.end_lsn),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended after {events} events"),
        }
    }
    // The last commit follows the last insert.
    while let Some(event) = stream.next().await {
        if let ReplicationEvent::Commit(commit) = event? {
            ack.ack(commit.end_lsn);
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    stream.shutdown().await?;
    Ok(Row {
        scenario,
        events,
        seconds,
        cpu_seconds: Some(cpu),
        ..Row::default()
    })
}

fn bench_config(cluster_url: String, brokers: String, slot: &str, dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.postgres.url = cluster_url;
    config.postgres.slot = slot.to_owned();
    config.postgres.status_interval_ms = 100;
    config.kafka.brokers = Some(brokers);
    config.checkpoint.path = dir.join(format!("checkpoint-{slot}"));
    config.admin.listen = String::new();
    config
}

async fn slot_confirmed(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<Lsn> {
    let text: String = client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0);
    Ok(text.parse()?)
}

/// Runs `outboxd run` until `rows` records are delivered and the slot is acknowledged past `end`.
async fn run_pipeline_until(
    config: Config,
    metrics: Arc<Metrics>,
    client: &tokio_postgres::Client,
    rows: u64,
    end: Lsn,
) -> anyhow::Result<f64> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let slot = config.postgres.slot.clone();
    let task = tokio::spawn({
        let metrics = Arc::clone(&metrics);
        async move {
            outboxd::run::run_with_metrics(&config, metrics, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        }
    });
    loop {
        let delivered = metrics.render();
        let acked = delivered_count(&delivered);
        if acked >= rows && slot_confirmed(client, &slot).await? >= end {
            break;
        }
        if task.is_finished() {
            task.await??;
            bail!("the pipeline stopped early");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let summary = task.await??;
    if summary.delivered < rows {
        bail!("only {} of {rows} records delivered", summary.delivered);
    }
    Ok(seconds)
}

/// Records sent minus those still in flight, from the metrics text.
fn delivered_count(metrics: &str) -> u64 {
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (value("outboxd_events_total") - value("outboxd_in_flight_records")).max(0.0) as u64
}

async fn pipeline(cluster: &PgCluster, rows: u64, end: Lsn, scenario: String) -> anyhow::Result<Row> {
    let kafka = MockCluster::new(1)?;
    kafka.create_topic("outbox.event.order", 6, 1)?;
    let dir = std::env::temp_dir().join(format!("outboxd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = bench_config(
        cluster.url("postgres", "postgres"),
        kafka.bootstrap_servers(),
        "pipeline",
        &dir,
    );
    let client = cluster.connect().await?;
    let cpu_before = own_cpu_seconds();
    let seconds = run_pipeline_until(config, Metrics::new(), &client, rows, end).await?;
    let cpu = own_cpu_seconds() - cpu_before;
    std::fs::remove_dir_all(&dir).ok();
    Ok(Row {
        scenario: format!("{scenario} (cpu incl. mock kafka)"),
        events: rows,
        seconds,
        cpu_seconds: Some(cpu),
        ..Row::default()
    })
}

// ---------------------------------------------------------------------------
// Steady load: latency.

async fn steady(rate: u64, duration: u64) -> anyhow::Result<Row> {
    let cluster = tokio::task::spawn_blocking(|| start_cluster_with("on")).await??;
    create_slots(&cluster, &["steady"]).await?;
    let kafka = MockCluster::new(1)?;
    kafka.create_topic("outbox.event.order", 6, 1)?;
    let dir = std::env::temp_dir().join(format!("outboxd-bench-steady-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = bench_config(
        cluster.url("postgres", "postgres"),
        kafka.bootstrap_servers(),
        "steady",
        &dir,
    );
    let metrics = Metrics::with_latency_samples();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let metrics = Arc::clone(&metrics);
        let config = config.clone();
        async move {
            outboxd::run::run_with_metrics(&config, metrics, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The application: one transaction per event, paced to `rate`, over 4 connections.
    let total = rate * duration;
    let connections = 4u64;
    let mut apps = Vec::new();
    let started = Instant::now();
    for c in 0..connections {
        let pg = cluster.config("postgres", "postgres");
        apps.push(tokio::spawn(async move {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let statement = client
                .prepare(
                    "insert into outbox (id, aggregatetype, aggregateid, type, payload)
                     values (gen_random_uuid(), 'order', $1, 'OrderCreated',
                             jsonb_build_object('n', $2::bigint, 'note', repeat('x', 250)))",
                )
                .await?;
            let per_connection = rate as f64 / connections as f64;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_connection));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = c;
            while n < total {
                tick.tick().await;
                client
                    .execute(&statement, &[&format!("agg-{}", n % 1000), &(n as i64)])
                    .await?;
                n += connections;
            }
            anyhow::Ok(())
        }));
    }
    for app in apps {
        app.await??;
    }
    let insert_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (metrics.latency_samples().len() as u64) < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} transactions acknowledged",
                metrics.latency_samples().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    task.await??;
    std::fs::remove_dir_all(&dir).ok();
    let mut samples: Vec<f64> = metrics
        .latency_samples()
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    Ok(Row {
        scenario: format!(
            "steady {rate}/s for {duration}s (achieved {:.0}/s)",
            total as f64 / insert_seconds
        ),
        events: total,
        seconds: insert_seconds,
        latency_ms: Some([pct(0.50), pct(0.95), pct(0.99), *samples.last().unwrap_or(&0.0)]),
        ..Row::default()
    })
}

// ---------------------------------------------------------------------------
// Huge transaction: peak RSS of a child process running the full pipeline.

async fn huge(rows: u64) -> anyhow::Result<Row> {
    let cluster = tokio::task::spawn_blocking(start_cluster).await??;
    create_slots(&cluster, &["huge"]).await?;
    let end = load(&cluster, rows, rows).await?;
    let kafka = MockCluster::new(1)?;
    kafka.create_topic("outbox.event.order", 6, 1)?;
    let exe = std::env::current_exe()?;
    let args = [
        "huge-child".to_owned(),
        "--postgres-url".into(),
        cluster.url("postgres", "postgres"),
        "--brokers".into(),
        kafka.bootstrap_servers(),
        "--slot".into(),
        "huge".into(),
        "--rows".into(),
        rows.to_string(),
        "--end-lsn".into(),
        end.to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new(exe).args(args).output()).await??;
    if !output.status.success() {
        bail!("huge-child failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(line.trim()).context("huge-child output")?;
    Ok(Row {
        scenario: format!("one transaction of {rows} rows"),
        events: rows,
        seconds: value["seconds"].as_f64().unwrap_or_default(),
        cpu_seconds: value["cpu_seconds"].as_f64(),
        peak_rss_mib: value["peak_rss_mib"].as_f64(),
        ..Row::default()
    })
}

async fn huge_child(
    postgres_url: &str,
    brokers: &str,
    slot: &str,
    rows: u64,
    end: Lsn,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("outboxd-bench-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = bench_config(postgres_url.to_owned(), brokers.to_owned(), slot, &dir);
    let (client, connection) = tokio_postgres::connect(postgres_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let cpu_before = own_cpu_seconds();
    let seconds = run_pipeline_until(config, Metrics::new(), &client, rows, end).await?;
    let cpu = own_cpu_seconds() - cpu_before;
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "{}",
        json!({ "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak_rss_kib()? as f64 / 1024.0 })
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Measurements from /proc.

fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// User + system CPU of this process (all threads), from /proc/self/stat
/// (clock ticks of 1/100 s, Linux's USER_HZ).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let pg = Command::new(pg_bin("postgres").unwrap_or_default())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({ "cpu": cpu, "cores": cores, "postgres": pg })
}

fn print_machine() {
    let m = machine();
    println!(
        "machine: {} ({} cores), {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["postgres"].as_str().unwrap_or("?")
    );
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<58} {:>9} {:>8} {:>10} {:>7} {:>8} {:>30} {:>9}",
        "scenario",
        "events",
        "seconds",
        "events/s",
        "ratio",
        "cpu s",
        "latency ms p50/p95/p99/max",
        "peak RSS"
    );
    for r in rows {
        let ratio = r
            .reference_eps
            .map(|re| format!("{:.0}%", 100.0 * r.eps() / re))
            .unwrap_or_default();
        let cpu = r.cpu_seconds.map(|c| format!("{c:.1}")).unwrap_or_default();
        let latency = r
            .latency_ms
            .map(|l| format!("{:.1}/{:.1}/{:.1}/{:.1}", l[0], l[1], l[2], l[3]))
            .unwrap_or_default();
        let rss = r.peak_rss_mib.map(|m| format!("{m:.1} MiB")).unwrap_or_default();
        println!(
            "{:<58} {:>9} {:>8.2} {:>10.0} {:>7} {:>8} {:>30} {:>9}",
            r.scenario,
            r.events,
            r.seconds,
            r.eps(),
            ratio,
            cpu,
            latency,
            rss
        );
    }
}
