//! `outboxd demo`: the whole pipeline with nothing to set up.
//!
//! Starts a throwaway PostgreSQL cluster from the installed binaries (the
//! test harness's, `wal_level=logical`, removed at exit) and a broker (by
//! default an in-process Kafka; see [`crate::sink::DemoBroker`]), runs
//! `setup`, then a small simulated shop inserts orders — business row and
//! outbox row in one transaction — while outboxd streams them and a consumer
//! prints each record as it arrives (key, lane, headers, LSN). Ctrl-C (or
//! `--events N`) stops it cleanly: the app stops, outboxd drains, the slot is
//! acknowledged, and the demo checks that every inserted event arrived.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::PgCluster;
use tokio::sync::watch;

use crate::config::Config;
use crate::run::{run, shutdown_signal};
use crate::setup::setup;
use crate::sink::{DemoBroker, SinkKind};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this many events (default: run until Ctrl-C).
    pub events: Option<u64>,
    /// Orders per second the simulated shop places.
    pub rate: f64,
    /// Partitions of the demo topic (Kafka).
    pub partitions: i32,
    /// The broker.
    pub sink: SinkKind,
    /// The loaded configuration: the demo reaches a broker it does not
    /// start (Redis, RabbitMQ) at its configured URL.
    pub settings: Config,
}
const SHOP_SCHEMA: &str = "create table orders (id bigserial primary key, customer text not null, \
                           status text not null, amount_cents bigint not null)";

/// Runs the demo, printing to stdout.
pub async fn demo(options: DemoOptions) -> anyhow::Result<()> {
    println!(
        "outboxd demo: a throwaway PostgreSQL, {}, a simulated shop. Ctrl-C stops it.\n",
        DemoBroker::summary(options.sink)
    );
    // The broker first: a missing one is reported before anything is started.
    let broker = DemoBroker::start(options.sink, options.partitions, &options.settings).await?;
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await?
        .context("cannot start a throwaway PostgreSQL cluster (the demo needs the PostgreSQL server binaries: apt-get install postgresql)")?;
    println!(
        "postgres   started on port {} (wal_level=logical, data in a temporary directory)",
        cluster.port()
    );
    cluster.psql(SHOP_SCHEMA).context("creating the shop's tables")?;

    println!("{}", broker.describe());

    let state_dir = tempfile_dir()?;
    let mut config = Config::default();
    // A throwaway local cluster without TLS: say so, rather than be warned
    // that `prefer` fell back to plaintext.
    config.postgres.url = format!("{}?sslmode=disable", cluster.url("postgres", "postgres"));
    config.postgres.status_interval_ms = 500;
    broker.configure(&mut config);
    config.checkpoint.path = state_dir.join("checkpoint");
    config.admin.listen = String::new();

    for line in setup(&config, true).await? {
        println!("setup      {line}");
    }
    let (lane, width) = broker.lane();
    println!(
        "\n{:<10} {:>width$} {:<14} {:>12} {:>6}  id",
        "key", lane, "type", "lsn", "index"
    );

    // Stop on Ctrl-C, or when --events have been inserted and delivered.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_app = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicU64::new(0));

    let shop = tokio::spawn(shop(
        cluster.connect().await?,
        options.clone(),
        Arc::clone(&stop_app),
        Arc::clone(&inserted),
    ));
    let seen = Arc::new(AtomicU64::new(0));
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = broker.spawn_reader(Arc::clone(&seen), Arc::clone(&reader_stop))?;

    let pipeline = {
        let mut stop = stop_rx.clone();
        let config = config.clone();
        tokio::spawn(async move {
            run(&config, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    };

    // Progress line every 5 s; stop on Ctrl-C or when the target is reached.
    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let ctrl_c = shutdown_signal();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            () = &mut ctrl_c => break,
            _ = progress.tick() => println!(
                "progress   {:>6.1}s  inserted {}  delivered {}",
                started.elapsed().as_secs_f64(), inserted.load(Ordering::Relaxed), seen.load(Ordering::Relaxed)
            ),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(target) = options.events {
                    if seen.load(Ordering::Relaxed) >= target {
                        break;
                    }
                }
                if pipeline.is_finished() {
                    break;
                }
            }
        }
    }

    println!("\nstopping: the shop stops, outboxd drains its deliveries and acknowledges the slot");
    stop_app.store(true, Ordering::Relaxed);
    let shop_result = shop.await?;
    let _ = stop_tx.send(true);
    let summary = pipeline.await?.context("outboxd stopped with an error")?;
    shop_result?;
    let total = inserted.load(Ordering::Relaxed);
    // Let the reader catch up with what was delivered last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader_stop.store(true, Ordering::Relaxed);
    let ids = reader.await??;

    let client = cluster.connect().await?;
    let confirmed: String = client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'outboxd'",
            &[],
        )
        .await?
        .get(0);
    let unique: HashSet<&String> = ids.iter().collect();
    println!(
        "\ninserted {total} events; {} records delivered ({} distinct ids); outboxd sent {}, broker acknowledged {}; \
         slot confirmed at {confirmed} (outboxd acknowledged {})",
        ids.len(),
        unique.len(),
        summary.sent,
        summary.delivered,
        summary.confirmed
    );
    broker.stop().await;
    drop(cluster);
    std::fs::remove_dir_all(&state_dir).ok();
    if unique.len() as u64 != total {
        anyhow::bail!(
            "{} events were inserted but {} distinct ids arrived",
            total,
            unique.len()
        );
    }
    println!("every inserted event arrived. the throwaway cluster is removed.");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("outboxd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The simulated application: each order is a business row and an outbox
/// row in one transaction; sometimes an order is paid or shipped later.
async fn shop(
    client: tokio_postgres::Client,
    options: DemoOptions,
    stop: Arc<AtomicBool>,
    inserted: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let pause = Duration::from_secs_f64(1.0 / options.rate.max(0.1));
    let customers = ["ada", "grace", "linus", "barbara", "ken", "margaret"];
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if options.events.is_some_and(|target| n >= target) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let customer = customers[(n % customers.len() as u64) as usize];
        // Orders 1..=20 are the aggregates; each gets created, paid, shipped in turn.
        let order = n % 20 + 1;
        let event = ["OrderCreated", "OrderPaid", "OrderShipped"][((n / 20) % 3) as usize];
        client
            .batch_execute(&format!(
                "begin;
                 insert into orders (customer, status, amount_cents) values ('{customer}', '{event}', {amount});
                 insert into outbox (id, aggregatetype, aggregateid, type, payload)
                 values (gen_random_uuid(), 'order', 'order-{order}', '{event}',
                         jsonb_build_object('order', {order}, 'customer', '{customer}', 'event', '{event}', 'seq', {n}));
                 commit;",
                amount = 1000 + n * 7 % 9000
            ))
            .await
            .context("the simulated shop could not insert")?;
        n += 1;
        inserted.store(n, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    Ok(())
}
