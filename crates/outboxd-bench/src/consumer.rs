//! outboxd's consumers, each in a child process of the benchmark binary
//! (`outboxd-bench consume …`, hidden), so that its CPU time and peak RSS
//! are its own: not the mock Kafka cluster's (which stays in the parent and
//! keeps every record it receives in memory), not the loader's.
//!
//! The child prints one JSON line ([`Report`]) when it is done; the parent
//! meanwhile samples the CPU of the walsender serving the child's slot.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use outboxd::config::Config;
use outboxd::metrics::Metrics;
use pg_replication::{ReplicationEvent, ReplicationStream};
use pgoutput::Lsn;
use serde_json::json;

use crate::backlog::walsender_pid;
use crate::report::Latency;
use crate::usage::{self, Sampled};

/// What the child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// `pg-replication`'s stream and the pgoutput decoder, every commit
    /// acknowledged, events dropped.
    Decode,
    /// `outboxd::run` into Kafka (or Redis), done when the slot is acknowledged past the
    /// backlog's end (which implies every record's delivery report arrived).
    Pipeline,
    /// `outboxd::run` into Kafka while the parent inserts at a fixed rate;
    /// done when `rows` transactions were acknowledged. Reports commit→ack
    /// latency.
    Steady,
}

/// The tokio runtime a consumer child runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Runtime {
    /// What outboxd's `main` builds: one worker thread per core.
    MultiThread,
    /// Everything on one thread (librdkafka keeps its own threads).
    CurrentThread,
}

impl Runtime {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::MultiThread => "multi-thread",
            Runtime::CurrentThread => "current-thread",
        }
    }

    pub(crate) fn builder(self) -> tokio::runtime::Builder {
        match self {
            Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
            Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        }
    }
}

/// The child's arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConsumeArgs {
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    #[arg(long)]
    pub(crate) postgres_url: String,
    #[arg(long)]
    pub(crate) slot: String,
    #[arg(long)]
    pub(crate) brokers: Option<String>,
    /// Deliver to RabbitMQ at this URL instead of Kafka (with `--exchange`).
    #[arg(long)]
    pub(crate) rabbitmq: Option<String>,
    /// The RabbitMQ exchange (with `--rabbitmq`).
    #[arg(long)]
    pub(crate) exchange: Option<String>,
    #[command(flatten)]
    pub(crate) redis: RedisArgs,
    /// Rows to decode (decode), to deliver (pipeline), or transactions to
    /// acknowledge (steady).
    #[arg(long)]
    pub(crate) rows: u64,
    /// The backlog's end (pipeline).
    #[arg(long)]
    pub(crate) end_lsn: Option<Lsn>,
    /// The tokio runtime to run on.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread)]
    pub(crate) runtime: Runtime,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) timeout: u64,
}

/// Into Redis instead of Kafka.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RedisArgs {
    /// The server (`--redis-mode`, `--redis-prefix` say how and where).
    #[arg(long)]
    pub(crate) redis_url: Option<String>,
    /// `streams` or `bullmq`.
    #[arg(long, default_value = "streams")]
    pub(crate) redis_mode: String,
    /// The prefix of every stream or queue (and BullMQ's key prefix).
    #[arg(long, default_value = "outboxd-bench")]
    pub(crate) redis_prefix: String,
}

/// What a child reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) events: u64,
    /// From the child's `main` to done (connecting and setup included).
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_mib: f64,
    pub(crate) latency: Option<Latency>,
    /// CPU seconds of the walsender that served the child (sampled by the parent).
    pub(crate) walsender_cpu_seconds: Option<f64>,
}

/// The settings the benchmark runs outboxd with: the defaults (the Kafka
/// producer's queue bounded at 32 MiB / 20k records, `linger.ms=5`; the
/// RabbitMQ sink's window of 1024 records), no admin server,
/// and status updates every 10 ms instead of every second so that "the slot
/// is acknowledged" is observed within 10 ms of outboxd deciding it (with the
/// default the drain figures would include up to a second of waiting).
fn service_config(args: &ConsumeArgs, state: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.postgres.url = args.postgres_url.clone();
    config.postgres.slot = args.slot.clone();
    config.postgres.status_interval_ms = 10;
    config.kafka.brokers = args.brokers.clone();
    for (key, value) in extra_kafka_properties() {
        config.kafka.properties.insert(key, value);
    }
    if let Some(url) = &args.rabbitmq {
        config.sink.kind = outboxd::sink::SinkKind::RabbitMq;
        config.rabbitmq.url = url.clone();
        if let Some(exchange) = &args.exchange {
            config.rabbitmq.exchange = exchange.clone();
        }
    }
    if let Some(url) = &args.redis.redis_url {
        config.sink.kind = outboxd::sink::SinkKind::Redis;
        config.redis.url = url.clone();
        if args.redis.redis_mode == "bullmq" {
            config.redis.mode = outboxd::config::RedisMode::Bullmq;
        }
        config.redis.bullmq_prefix = args.redis.redis_prefix.clone();
        config.routing.topic = format!("{}.outbox.event.${{aggregatetype}}", args.redis.redis_prefix);
    }
    config.checkpoint.path = state.join("checkpoint");
    config.admin.listen = String::new();
    config
}

/// The child: runs one consumer and prints its [`Report`] as JSON.
pub(crate) async fn consume(args: ConsumeArgs, started: Instant) -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let config = service_config(&args, state.path());
    let timeout = Duration::from_secs(args.timeout);
    let report = match args.mode {
        Mode::Decode => tokio::time::timeout(timeout, decode(&config, args.rows, started))
            .await
            .context("decode only: timed out")??,
        Mode::Pipeline | Mode::Steady => pipeline(&config, &args, started, timeout).await?,
    };
    let latency = report.latency.map(|l| l.json());
    println!(
        "{}",
        json!({
            "events": report.events,
            "seconds": report.seconds,
            "cpu_seconds": report.cpu_seconds,
            "peak_rss_mib": report.peak_rss_mib,
            "latency_ms": latency,
        })
    );
    Ok(())
}

async fn decode(config: &Config, rows: u64, started: Instant) -> anyhow::Result<Report> {
    let mut stream = ReplicationStream::start(config.stream()?).await?;
    let ack = stream.ack_handle();
    let mut events = 0u64;
    let mut done = false;
    while !done {
        match stream.next().await {
            Some(Ok(ReplicationEvent::Insert(_) | ReplicationEvent::Message(_))) => events += 1,
            Some(Ok(ReplicationEvent::Commit(commit))) => {
                ack.ack(commit.end_lsn);
                done = events >= rows;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the stream ended after {events} events"),
        }
    }
    let report = Report {
        events,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: usage::own_cpu_seconds(),
        peak_rss_mib: usage::peak_rss_mib("self").unwrap_or_default(),
        ..Report::default()
    };
    stream.shutdown().await?;
    Ok(report)
}

async fn pipeline(
    config: &Config,
    args: &ConsumeArgs,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let metrics = if args.mode == Mode::Steady {
        Metrics::with_latency_samples()
    } else {
        Metrics::new()
    };
    let (client, connection) = tokio_postgres::connect(&args.postgres_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn({
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        async move {
            outboxd::run::run_with_metrics(&config, metrics, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        let done = match args.mode {
            Mode::Steady => metrics.latency_samples().len() as u64 >= args.rows,
            _ => {
                let end = args.end_lsn.context("--end-lsn is required")?;
                slot_confirmed(&client, &args.slot).await? >= end
            }
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::select! {
            result = &mut task => {
                let summary = result??;
                bail!("outboxd stopped early: {summary:?}");
            }
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let mut report = Report {
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: usage::own_cpu_seconds(),
        peak_rss_mib: usage::peak_rss_mib("self").unwrap_or_default(),
        ..Report::default()
    };
    let _ = stop.send(());
    let summary = task.await??;
    report.events = summary.delivered;
    if args.mode == Mode::Steady {
        report.latency = Latency::of(&metrics.latency_samples());
    } else if summary.delivered != args.rows {
        bail!("{} records delivered, expected {}", summary.delivered, args.rows);
    }
    Ok(report)
}

async fn slot_confirmed(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<Lsn> {
    let lsn: Option<String> = client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?
        .get(0);
    Ok(lsn.map(|l| l.parse()).transpose()?.unwrap_or(Lsn::ZERO))
}

/// A running child consumer, seen from the parent.
#[derive(Debug)]
pub(crate) struct Running {
    child: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
    walsender: tokio::task::JoinHandle<Option<Sampled>>,
}

impl Running {
    /// Starts `outboxd-bench consume …` and, once its walsender is up,
    /// samples that walsender's CPU.
    pub(crate) async fn start(
        args: &ConsumeArgs,
        catalog: Arc<tokio_postgres::Client>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("consume")
            .args([
                "--mode",
                args.mode.to_possible_value().context("mode")?.get_name(),
            ])
            .args(["--postgres-url", &args.postgres_url, "--slot", &args.slot])
            .args([
                "--rows",
                &args.rows.to_string(),
                "--timeout",
                &args.timeout.to_string(),
            ]);
        if let Some(brokers) = &args.brokers {
            command.args(["--brokers", brokers]);
        }
        if let Some(url) = &args.rabbitmq {
            command.args(["--rabbitmq", url]);
        }
        if let Some(exchange) = &args.exchange {
            command.args(["--exchange", exchange]);
        }
        if let Some(url) = &args.redis.redis_url {
            command.args(["--redis-url", url, "--redis-mode", &args.redis.redis_mode]);
            command.args(["--redis-prefix", &args.redis.redis_prefix]);
        }
        command.args(["--runtime", args.runtime.name()]);
        if let Some(end) = args.end_lsn {
            command.args(["--end-lsn", &end.to_string()]);
        }
        let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let child = tokio::task::spawn_blocking(move || child.wait_with_output());
        let slot = args.slot.clone();
        let walsender = tokio::spawn(async move {
            let pid = walsender_pid(&catalog, &slot, Duration::from_secs(60)).await?;
            Some(usage::sample_until_exit(pid).await)
        });
        Ok(Running { child, walsender })
    }

    /// Waits for the child's report.
    pub(crate) async fn finish(self) -> anyhow::Result<Report> {
        let output = self.child.await??;
        if !output.status.success() {
            self.walsender.abort();
            bail!(
                "the consumer child failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("the consumer child printed {stdout:?}"))?;
        // The walsender exits when the child disconnects.
        let walsender = tokio::time::timeout(Duration::from_secs(10), self.walsender)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        Ok(Report {
            events: value["events"].as_u64().unwrap_or_default(),
            seconds: value["seconds"].as_f64().unwrap_or_default(),
            cpu_seconds: value["cpu_seconds"].as_f64().unwrap_or_default(),
            peak_rss_mib: value["peak_rss_mib"].as_f64().unwrap_or_default(),
            latency: Latency::from_json(&value["latency_ms"]),
            walsender_cpu_seconds: walsender.and_then(|w| w.cpu_seconds),
        })
    }
}

/// Runs a child consumer to the end.
pub(crate) async fn run(args: &ConsumeArgs, catalog: Arc<tokio_postgres::Client>) -> anyhow::Result<Report> {
    Running::start(args, catalog).await?.finish().await
}

/// The variable through which `--kafka-property` reaches the consumer
/// children (they inherit the parent's environment): `key=value` pairs,
/// one per line.
pub(crate) const KAFKA_PROPERTIES_VAR: &str = "OUTBOXD_BENCH_KAFKA_PROPERTIES";

fn extra_kafka_properties() -> Vec<(String, String)> {
    std::env::var(KAFKA_PROPERTIES_VAR)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}
