//! Steady load: an application inserts outbox rows at a fixed rate, one
//! event per transaction (`synchronous_commit=on`, as applications run),
//! while outboxd streams them into Kafka or RabbitMQ. Latency is commit→ack: from the
//! commit timestamp in the transaction's pgoutput Commit message (the
//! server's clock) to the moment outboxd's `AckTracker` confirmed the
//! transaction after the delivery report (or publisher confirm) of its last record (outboxd's
//! system clock). Server and outboxd run on this machine: one clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::PgCluster;

use crate::backlog::{walsender_pid, INSERT_ONE};
use crate::consumer::{self, ConsumeArgs, Mode, Report, Runtime};

/// The application's part: `rate` events per second for `duration` over
/// `connections` connections, each paced by its own timer (a connection
/// that falls behind catches up in a burst, so the offered rate holds).
/// Returns the events inserted and the seconds it took.
async fn application(
    cluster: &PgCluster,
    rate: u64,
    duration: Duration,
    connections: u64,
) -> anyhow::Result<(u64, f64)> {
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let connections = connections.clamp(1, total.max(1));
    let per_connection = rate as f64 / connections as f64;
    let mut apps = Vec::new();
    let started = Instant::now();
    for c in 0..connections {
        let config = cluster.config("postgres", "postgres");
        apps.push(tokio::spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let insert = client.prepare(INSERT_ONE).await?;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_connection));
            let mut n = c;
            while n < total {
                tick.tick().await;
                client.execute(&insert, &[&(n as i64)]).await?;
                n += connections;
            }
            anyhow::Ok(())
        }));
    }
    for app in apps {
        app.await??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// Where the steady load is delivered.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Kafka at these bootstrap servers.
    Kafka(String),
    /// RabbitMQ at this URL, to this exchange.
    RabbitMq { url: String, exchange: String },
}

/// Runs the steady-load scenario on `slot` (created, idle) with outboxd in a
/// child process delivering to `target`.
pub(crate) async fn steady(
    cluster: &PgCluster,
    catalog: Arc<tokio_postgres::Client>,
    slot: &str,
    target: Target,
    rate: u64,
    duration: Duration,
    connections: u64,
) -> anyhow::Result<(Report, f64)> {
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let (brokers, rabbitmq, exchange) = match target {
        Target::Kafka(brokers) => (Some(brokers), None, None),
        Target::RabbitMq { url, exchange } => (None, Some(url), Some(exchange)),
    };
    let args = ConsumeArgs {
        mode: Mode::Steady,
        postgres_url: cluster.url("postgres", "postgres"),
        slot: slot.to_owned(),
        brokers,
        rabbitmq,
        exchange,
        rows: total,
        end_lsn: None,
        timeout: duration.as_secs() + 120,
        runtime: Runtime::MultiThread,
        redis: consumer::RedisArgs::default(),
    };
    let running = consumer::Running::start(&args, Arc::clone(&catalog)).await?;
    // Start inserting once outboxd streams (its walsender is up), then give
    // the producer a moment to connect to the broker.
    walsender_pid(&catalog, slot, Duration::from_secs(60))
        .await
        .context("outboxd did not start streaming")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (inserted, seconds) = application(cluster, rate, duration, connections).await?;
    let mut report = running.finish().await?;
    anyhow::ensure!(
        report.latency.is_some_and(|l| l.samples >= inserted),
        "outboxd acknowledged fewer transactions than were inserted"
    );
    // The row shows the application's events and time; CPU and RSS are outboxd's.
    report.events = inserted;
    let achieved = inserted as f64 / seconds;
    report.seconds = seconds;
    Ok((report, achieved))
}
