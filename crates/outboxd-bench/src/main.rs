//! `outboxd-bench`: how fast outboxd drains a backlog compared with
//! PostgreSQL's own `pg_recvlogical` on the same data in the same run, its
//! commit→ack latency under steady load, and its memory on huge transactions.
//!
//! One throwaway cluster. For each backlog, the slots are created before it
//! is loaded, one per consumer, so every consumer decodes exactly the same
//! WAL:
//!
//! 1. **reference**: `pg_recvlogical --start` with pgoutput (proto 1, the
//!    same publication) into /dev/null until the backlog's end LSN;
//! 2. **decode only**: outboxd's replication stream and decoder, every
//!    commit acknowledged, events dropped;
//! 3. **full pipeline**: `outboxd::run` into librdkafka's mock cluster (and a
//!    real broker with `--kafka-brokers`), done when the slot's
//!    `confirmed_flush_lsn` reached the backlog's end, which outboxd only
//!    reports once every record's delivery report arrived;
//! 4. **steady load**: an application inserting at a fixed rate while the
//!    full pipeline runs: commit→ack latency (see `steady.rs` for clocks);
//! 5. **huge transaction**: one transaction of N/10 and of N rows through the
//!    full pipeline, with outboxd's peak RSS;
//! 6. with `--rabbitmq URL`, **RabbitMQ**: the full pipeline into a
//!    uniquely named exchange with a queue bound with `#` on that broker,
//!    and in the same round **the RabbitMQ ceiling**: a bare lapin publisher
//!    in confirm mode publishing as many messages of the backlog's size, with
//!    the sink's window, on the same broker (see `rabbitmq.rs`); the
//!    pipeline's row notes its ratio to the ceiling and to the slower of
//!    the ceiling and `pg_recvlogical`. The steady load runs into RabbitMQ
//!    too.
//! 7. with `--redis URL`, **the full pipeline into Redis**, Streams mode and
//!    BullMQ mode, and **the Redis ceiling**: a bare `XADD` pipeline of the
//!    backlog's entries with the sink's window on the same server (see
//!    `redis.rs`).
//!
//! Every outboxd consumer runs in a child process (`outboxd-bench consume`,
//! hidden) so its CPU seconds and peak RSS are its own; the mock Kafka
//! cluster stays in the parent. The table also shows the CPU of the
//! walsender that served each consumer: when it is as long as the run, the
//! server's decoding is the limit, for the reference and outboxd alike.
//!
//! Figures are printed as a table (and written as JSON with `--json`);
//! nothing here is a test with a threshold.

mod backlog;
mod consumer;
mod rabbitmq;
mod redis;
mod reference;
mod report;
mod steady;
mod usage;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::mocking::MockCluster;
use serde_json::json;
use testkit::PgCluster;

use crate::backlog::{Backlog, TOPIC};
use crate::consumer::{ConsumeArgs, Mode, Runtime};
use crate::report::Row;

#[derive(Debug, Parser)]
#[command(
    name = "outboxd-bench",
    about = "outboxd against pg_recvlogical on the same backlog; commit→ack latency; memory of huge transactions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Backlog rows of each throughput scenario.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per transaction of the backlog; one throughput scenario each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u64, 100])]
    tx_size: Vec<u64>,
    /// Runs of each throughput consumer on the same backlog (each on its own slot);
    /// with more than one, a row with each consumer's median run is added.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Steady load: events per second the application inserts.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Steady load: seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Steady load: application connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Rows of the huge transaction; it also runs with a tenth of them, to
    /// show whether memory grows with the transaction's size.
    #[arg(long, default_value_t = 1_000_000)]
    huge_rows: u64,
    /// Runtimes to run outboxd's consumers on (multi-thread is what
    /// `outboxd run` uses; current-thread shows what cross-thread wake-ups cost).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Runtime::MultiThread])]
    runtime: Vec<Runtime>,
    /// Scenarios to leave out.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Scenario>,
    /// Also run the full pipeline against this Kafka (bootstrap servers);
    /// the topic outbox.event.order must exist or be auto-created.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// An extra librdkafka property for every outboxd consumer (`key=value`,
    /// repeatable), e.g. `queue.buffering.max.messages=100000` to measure
    /// what the producer queue's default costs against a real broker.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    kafka_property: Vec<String>,
    /// Also run the RabbitMQ scenarios against this broker
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`): each backlog is also
    /// published by a bare lapin publisher in confirm mode (the ceiling).
    #[arg(long)]
    rabbitmq: Option<String>,
    /// Also run the Redis scenarios against this server (`redis://127.0.0.1:6379`):
    /// the full pipeline in Streams and in BullMQ mode, and a bare XADD
    /// pipeline (the ceiling), each under its own key prefix, removed after.
    #[arg(long)]
    redis: Option<String>,
    /// Also write the results as JSON to this file (`-` for stdout, after the table).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Runs one outboxd consumer and prints its figures as JSON (used by the benchmark itself).
    #[command(hide = true)]
    Consume(Box<ConsumeArgs>),
    /// Runs librdkafka's mock cluster with the outbox topic until killed,
    /// printing its bootstrap servers (to profile a consumer by hand).
    #[command(hide = true)]
    MockKafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Reference,
    Decode,
    Pipeline,
    Steady,
    Huge,
    /// The bare lapin publisher (with `--rabbitmq`), the bare XADD pipeline (with `--redis`).
    Ceiling,
    /// The full pipeline into RabbitMQ (with `--rabbitmq`).
    RabbitPipeline,
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    if !cli.kafka_property.is_empty() {
        // Before any thread exists; the consumer children inherit it.
        std::env::set_var(consumer::KAFKA_PROPERTIES_VAR, cli.kafka_property.join("\n"));
    }
    // outboxd's own `main` runs on the multi-threaded runtime; a consumer
    // child can be told otherwise to see what the runtime costs.
    let mut runtime = match &cli.command {
        Some(Internal::Consume(args)) => args.runtime.builder(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let result = runtime
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Some(Internal::Consume(ref args)) => consumer::consume((**args).clone(), started).await,
                    Some(Internal::MockKafka) => {
                        let kafka = mock_kafka()?;
                        println!("{}", kafka.bootstrap_servers());
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                    None => bench(&cli).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outboxd-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: &Cli) -> anyhow::Result<()> {
    let runs = |s: Scenario| !cli.skip.contains(&s);
    let machine = machine();
    eprintln!(
        "machine: {} ({} cores), {}; load average {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["postgres"].as_str().unwrap_or("?"),
        machine["load_average_at_start"].as_str().unwrap_or("?"),
    );
    let cluster = tokio::task::spawn_blocking(backlog::start_cluster).await??;
    let bench = Bench {
        catalog: Arc::new(cluster.connect().await?),
        loader: cluster.connect().await?,
        cluster,
    };
    let mut rows = Vec::new();

    for &tx_size in &cli.tx_size {
        let mut plan = Vec::new();
        for round in 0..cli.repeat {
            // Every other round runs the reference last, so that neither side
            // always drains first (the medians then carry no order effect).
            let mut round_plan = Vec::new();
            if runs(Scenario::Reference) {
                round_plan.push(Consumer::Reference);
            }
            if runs(Scenario::Decode) {
                round_plan.extend(cli.runtime.iter().map(|&rt| Consumer::Decode(rt)));
            }
            if runs(Scenario::Pipeline) {
                round_plan.extend(cli.runtime.iter().map(|&rt| Consumer::Pipeline(rt, None)));
                if let Some(brokers) = &cli.kafka_brokers {
                    round_plan.extend(
                        cli.runtime
                            .iter()
                            .map(|&rt| Consumer::Pipeline(rt, Some(brokers.clone()))),
                    );
                }
            }
            if let (Some(url), true) = (&cli.rabbitmq, runs(Scenario::Ceiling)) {
                round_plan.push(Consumer::RabbitCeiling(url.clone()));
            }
            if let (Some(url), true) = (&cli.rabbitmq, runs(Scenario::RabbitPipeline)) {
                round_plan.extend(
                    cli.runtime
                        .iter()
                        .map(|&rt| Consumer::RabbitPipeline(rt, url.clone())),
                );
            }
            if let Some(url) = &cli.redis {
                if runs(Scenario::Pipeline) {
                    for mode in [redis::Mode::Streams, redis::Mode::BullMq] {
                        round_plan.push(Consumer::RedisPipeline(url.clone(), mode));
                    }
                }
                if runs(Scenario::Ceiling) {
                    round_plan.push(Consumer::RedisCeiling(url.clone(), false));
                    round_plan.push(Consumer::RedisCeiling(url.clone(), true));
                }
            }
            if round % 2 == 1 {
                round_plan.reverse();
            }
            plan.extend(round_plan);
        }
        let label = format!("tx of {tx_size}");
        rows.extend(bench.drain_backlog(cli.rows, tx_size, &label, &plan).await?);
    }

    if runs(Scenario::Steady) {
        eprintln!("steady load: {} events/s for {} s", cli.rate, cli.duration);
        backlog::reset(&bench.loader).await?;
        let slot = "steady".to_owned();
        backlog::create_slots(&bench.loader, std::slice::from_ref(&slot)).await?;
        let kafka = mock_kafka()?;
        let (report, achieved) = steady::steady(
            &bench.cluster,
            Arc::clone(&bench.catalog),
            &slot,
            steady::Target::Kafka(kafka.bootstrap_servers()),
            cli.rate,
            Duration::from_secs(cli.duration),
            cli.connections,
        )
        .await?;
        drop(kafka);
        let mut row = Row::new(
            format!("steady load {}/s, tx of 1: outboxd, mock kafka", cli.rate),
            report,
        );
        row.note = format!("offered {}/s, achieved {achieved:.0}/s", cli.rate);
        rows.push(row);
        backlog::drop_slots(&bench.loader, std::slice::from_ref(&slot)).await?;

        if let Some(url) = &cli.rabbitmq {
            eprintln!(
                "steady load into rabbitmq: {} events/s for {} s",
                cli.rate, cli.duration
            );
            backlog::reset(&bench.loader).await?;
            let slot = "steady_rabbitmq".to_owned();
            backlog::create_slots(&bench.loader, std::slice::from_ref(&slot)).await?;
            let destination = rabbitmq::Destination::create(url, "steady", 100_000).await?;
            let result = steady::steady(
                &bench.cluster,
                Arc::clone(&bench.catalog),
                &slot,
                steady::Target::RabbitMq {
                    url: url.clone(),
                    exchange: destination.exchange.clone(),
                },
                cli.rate,
                Duration::from_secs(cli.duration),
                cli.connections,
            )
            .await;
            destination.remove().await?;
            let (report, achieved) = result?;
            let mut row = Row::new(
                format!("steady load {}/s, tx of 1: outboxd, rabbitmq", cli.rate),
                report,
            );
            row.note = format!("offered {}/s, achieved {achieved:.0}/s", cli.rate);
            rows.push(row);
            backlog::drop_slots(&bench.loader, std::slice::from_ref(&slot)).await?;
        }
    }

    if runs(Scenario::Huge) {
        let mut sizes = vec![cli.huge_rows / 10, cli.huge_rows];
        sizes.retain(|&n| n > 0);
        sizes.dedup();
        for n in sizes {
            let mut plan = Vec::new();
            if runs(Scenario::Reference) {
                plan.push(Consumer::Reference);
            }
            plan.extend(cli.runtime.iter().map(|&rt| Consumer::Pipeline(rt, None)));
            rows.extend(
                bench
                    .drain_backlog(n, n, &format!("one tx of {n}"), &plan)
                    .await?,
            );
        }
    }
    let load_at_end = load_average();
    drop(bench);

    println!("{}", report::table(&rows));
    if let Some(path) = &cli.json {
        let mut machine = machine;
        machine["load_average_at_end"] = json!(load_at_end);
        let value = json!({
            "machine": machine,
            "command": std::env::args().collect::<Vec<_>>(),
            "clocks": "latency: commit timestamp of the pgoutput Commit message (PostgreSQL's clock) to outboxd's \
                       system clock when the AckTracker confirmed the transaction; same machine",
            "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&value)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// One consumer of a backlog.
#[derive(Debug, Clone)]
enum Consumer {
    Reference,
    Decode(Runtime),
    /// Into the mock cluster (`None`) or these bootstrap servers.
    Pipeline(Runtime, Option<String>),
    /// A bare lapin publisher into this RabbitMQ (no Postgres involved).
    RabbitCeiling(String),
    /// The full pipeline into this RabbitMQ.
    RabbitPipeline(Runtime, String),
    /// `outboxd::run` into this Redis (multi-thread runtime).
    RedisPipeline(String, redis::Mode),
    /// A bare XADD pipeline into this Redis (no Postgres involved), or
    /// (`true`) the same through the sink's idempotent append script.
    RedisCeiling(String, bool),
}

impl Consumer {
    fn slot_prefix(&self) -> &'static str {
        match self {
            Consumer::Reference => "reference",
            Consumer::Decode(_) => "decode",
            Consumer::Pipeline(_, None) => "pipeline",
            Consumer::Pipeline(_, Some(_)) => "broker",
            Consumer::RabbitCeiling(_) | Consumer::RedisCeiling(..) => "ceiling",
            Consumer::RabbitPipeline(..) => "rabbitmq",
            Consumer::RedisPipeline(..) => "redis",
        }
    }

    fn label(&self, runtimes: bool) -> String {
        let runtime = |rt: &Runtime| {
            if runtimes {
                format!(", {} runtime", rt.name())
            } else {
                String::new()
            }
        };
        match self {
            Consumer::Reference => "pg_recvlogical (reference)".to_owned(),
            Consumer::Decode(rt) => format!("outboxd decode only{}", runtime(rt)),
            Consumer::Pipeline(rt, None) => format!("outboxd full pipeline, mock kafka{}", runtime(rt)),
            Consumer::Pipeline(rt, Some(brokers)) => {
                format!("outboxd full pipeline, kafka {brokers}{}", runtime(rt))
            }
            Consumer::RabbitCeiling(_) => "bare lapin publisher, confirms (rabbitmq ceiling)".to_owned(),
            Consumer::RabbitPipeline(rt, _) => format!("outboxd full pipeline, rabbitmq{}", runtime(rt)),
            Consumer::RedisPipeline(_, mode) => format!("outboxd full pipeline, redis {}", mode.name()),
            Consumer::RedisCeiling(_, false) => "bare XADD pipeline (redis ceiling)".to_owned(),
            Consumer::RedisCeiling(_, true) => "bare pipeline of the append script (no outboxd)".to_owned(),
        }
    }
}

/// The cluster and the connections every scenario uses.
struct Bench {
    // Dropped last: the connections first.
    catalog: Arc<tokio_postgres::Client>,
    loader: tokio_postgres::Client,
    cluster: PgCluster,
}

impl Bench {
    /// Empties the outbox, creates one slot per consumer, loads the backlog,
    /// then lets each consumer drain it in turn. Ratios are to the reference
    /// run before them (in a reversed round, the previous round's).
    async fn drain_backlog(
        &self,
        rows: u64,
        tx_size: u64,
        label: &str,
        plan: &[Consumer],
    ) -> anyhow::Result<Vec<Row>> {
        eprintln!("backlog: {rows} rows in transactions of {tx_size}");
        let slots: Vec<String> = plan
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}_{tx_size}_{rows}_{i}", c.slot_prefix()))
            .collect();
        let runtimes = plan.iter().any(|c| {
            matches!(
                c,
                Consumer::Decode(Runtime::CurrentThread)
                    | Consumer::Pipeline(Runtime::CurrentThread, _)
                    | Consumer::RabbitPipeline(Runtime::CurrentThread, _)
            )
        });
        backlog::reset(&self.loader).await?;
        backlog::create_slots(&self.loader, &slots).await?;
        let backlog = backlog::load(&self.loader, rows, tx_size).await?;
        let mut out = Vec::new();
        let mut reference_eps = None;
        for (consumer, slot) in plan.iter().zip(&slots) {
            let scenario = format!("{}, {label}", consumer.label(runtimes));
            eprintln!("  {scenario}");
            let mut note = String::new();
            let report = match consumer {
                Consumer::Reference => {
                    note = format!("{:.0} MiB WAL", backlog.wal_bytes as f64 / 1_048_576.0);
                    reference::drain(&self.cluster, Arc::clone(&self.catalog), slot, backlog).await?
                }
                Consumer::Decode(runtime) => {
                    let args = self.drain_args(Mode::Decode, *runtime, slot, None, backlog);
                    consumer::run(&args, Arc::clone(&self.catalog)).await?
                }
                Consumer::Pipeline(runtime, brokers) => {
                    let kafka = match brokers {
                        None => Some(mock_kafka()?),
                        Some(_) => None,
                    };
                    let servers = brokers
                        .clone()
                        .or_else(|| kafka.as_ref().map(MockCluster::bootstrap_servers));
                    let args = self.drain_args(Mode::Pipeline, *runtime, slot, servers, backlog);
                    // The mock cluster's threads are this process's: its CPU is ours (the
                    // rest of this process only polls).
                    let cpu_before = usage::own_cpu_seconds();
                    let report = consumer::run(&args, Arc::clone(&self.catalog)).await?;
                    if kafka.is_some() {
                        note = format!("mock kafka {:.1} CPU s", usage::own_cpu_seconds() - cpu_before);
                    }
                    report
                }
                Consumer::RabbitCeiling(url) => {
                    let body = sample_payload(&self.loader).await?;
                    let window = sink_rabbitmq::DEFAULT_MAX_IN_FLIGHT;
                    let destination = rabbitmq::Destination::create(url, "ceiling", 100_000).await?;
                    let report = rabbitmq::ceiling(&destination, backlog.rows, &body, window).await;
                    destination.remove().await?;
                    note = format!("{}-byte bodies, window {window}", body.len());
                    report?
                }
                Consumer::RabbitPipeline(runtime, url) => {
                    let destination = rabbitmq::Destination::create(url, "pipeline", 100_000).await?;
                    let mut args = self.drain_args(Mode::Pipeline, *runtime, slot, None, backlog);
                    args.rabbitmq = Some(url.clone());
                    args.exchange = Some(destination.exchange.clone());
                    let report = consumer::run(&args, Arc::clone(&self.catalog)).await;
                    destination.remove().await?;
                    report?
                }
                Consumer::RedisPipeline(url, mode) => {
                    let destination = redis::Destination::new(url, mode.name())?;
                    let mut args = self.drain_args(Mode::Pipeline, Runtime::MultiThread, slot, None, backlog);
                    args.redis = consumer::RedisArgs {
                        redis_url: Some(url.clone()),
                        redis_mode: mode.name().to_owned(),
                        redis_prefix: destination.prefix.clone(),
                    };
                    let report = consumer::run(&args, Arc::clone(&self.catalog)).await;
                    let written = destination.written(*mode).await;
                    destination.remove().await?;
                    let (report, written) = (report?, written?);
                    anyhow::ensure!(
                        written == backlog.rows,
                        "redis {}: {written} records in redis after the drain, expected {}",
                        mode.name(),
                        backlog.rows
                    );
                    note = format!("{written} in redis");
                    report
                }
                Consumer::RedisCeiling(url, script) => {
                    let body = sample_payload(&self.loader).await?;
                    let window = sink_redis::defaults::MAX_IN_FLIGHT;
                    let destination = redis::Destination::new(url, "ceiling")?;
                    let report = redis::ceiling(&destination, backlog.rows, &body, window, *script).await;
                    destination.remove().await?;
                    note = format!("{}-byte payloads, window {window}", body.len());
                    report?
                }
            };
            let mut row = Row::new(scenario, report);
            row.note = note;
            match consumer {
                Consumer::Reference => reference_eps = Some(row.eps()),
                _ => row.reference_eps = reference_eps,
            }
            out.push(row);
        }
        backlog::drop_slots(&self.loader, &slots).await?;
        compare_with_ceiling(&mut out);
        compare_with_redis_ceiling(&mut out);
        let mut medians = medians(&out);
        compare_with_ceiling(&mut medians);
        out.extend(medians);
        Ok(out)
    }

    /// The child arguments to drain `backlog` from `slot`.
    fn drain_args(
        &self,
        mode: Mode,
        runtime: Runtime,
        slot: &str,
        brokers: Option<String>,
        backlog: Backlog,
    ) -> ConsumeArgs {
        ConsumeArgs {
            mode,
            postgres_url: self.cluster.url("postgres", "postgres"),
            slot: slot.to_owned(),
            brokers,
            rabbitmq: None,
            exchange: None,
            rows: backlog.rows,
            end_lsn: Some(backlog.end),
            runtime,
            timeout: 3600,
            redis: consumer::RedisArgs::default(),
        }
    }
}

/// Notes on each RabbitMQ pipeline row its ratio to the bare publisher's
/// ceiling row nearest to it (the same round; for a median, the ceiling's
/// median), and to the
/// slower of that ceiling and the reference: the target is 90 % of the
/// slower of the two.
fn compare_with_ceiling(rows: &mut [Row]) {
    let ceilings: Vec<(usize, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.scenario.contains("bare lapin publisher"))
        .map(|(i, r)| (i, r.eps()))
        .collect();
    for (i, row) in rows.iter_mut().enumerate() {
        if !row.scenario.contains("outboxd full pipeline, rabbitmq") {
            continue;
        }
        let Some(&(_, ceiling)) = ceilings.iter().min_by_key(|(at, _)| at.abs_diff(i)) else {
            continue;
        };
        let slower = row
            .reference_eps
            .map_or(ceiling, |reference| reference.min(ceiling));
        let note = format!(
            "{:.0}% of the ceiling, {:.0}% of the slower of ceiling and reference",
            row.eps() / ceiling * 100.0,
            row.eps() / slower * 100.0
        );
        row.note = note;
    }
}

/// Notes on each Redis pipeline run its share of the median bare XADD
/// ceiling of the same backlog.
fn compare_with_redis_ceiling(rows: &mut [Row]) {
    let ceiling = Consumer::RedisCeiling(String::new(), false).label(false);
    let mut ceilings: Vec<f64> = rows
        .iter()
        .filter(|r| r.scenario.starts_with(&ceiling))
        .map(Row::eps)
        .collect();
    if ceilings.is_empty() {
        return;
    }
    ceilings.sort_by(f64::total_cmp);
    let median = ceilings[ceilings.len() / 2];
    for row in rows
        .iter_mut()
        .filter(|r| r.scenario.starts_with("outboxd full pipeline, redis"))
    {
        row.note = format!(
            "{}; {:.0}% of the XADD ceiling",
            row.note,
            row.eps() / median * 100.0
        );
    }
}

/// One event's payload as outboxd publishes it (the jsonb text form).
async fn sample_payload(client: &tokio_postgres::Client) -> anyhow::Result<Vec<u8>> {
    let row = client
        .query_one("select payload::text from outbox order by id limit 1", &[])
        .await?;
    Ok(row.get::<_, String>(0).into_bytes())
}

/// With `--repeat`, one more row per consumer: its median run by events/s,
/// compared with the reference's median run. Single runs on a 2-core machine
/// shared with the server swing by ±10 %; the median of three does not.
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut scenarios: Vec<&str> = Vec::new();
    for row in rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    let median_of = |scenario: &str| {
        let mut runs: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        runs.sort_by(|a, b| a.eps().total_cmp(&b.eps()));
        (runs.len(), runs[runs.len() / 2])
    };
    let reference_eps = scenarios
        .iter()
        .find(|s| s.starts_with("pg_recvlogical"))
        .map(|s| median_of(s).1.eps());
    scenarios
        .iter()
        .filter_map(|scenario| {
            let (runs, median) = median_of(scenario);
            (runs > 1).then(|| {
                let mut row = Row::new(format!("median of {runs}: {scenario}"), median.report.clone());
                row.note = median.note.clone();
                if !scenario.starts_with("pg_recvlogical") {
                    row.reference_eps = reference_eps;
                }
                row
            })
        })
        .collect()
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("port", &self.cluster.port())
            .finish_non_exhaustive()
    }
}

/// librdkafka's in-process broker with the outbox topic (6 partitions).
fn mock_kafka() -> anyhow::Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
    let kafka = MockCluster::new(1).context("cannot start librdkafka's mock cluster")?;
    kafka.create_topic(TOPIC, 6, 1)?;
    Ok(kafka)
}

/// The machine the figures come from.
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
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib / 1024);
    let postgres = reference::pg_program("postgres")
        .ok()
        .and_then(|p| Command::new(p).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_mib": memory_mib,
        "postgres": postgres,
        "load_average_at_start": load_average(),
    })
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures: the machine is shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
