//! An example consuming service: reads outboxd's order events from Kafka and
//! keeps an `order_status` projection, each event applied exactly once.
//!
//! See README.md beside this file. Two ways to run it:
//!
//! - against a running pipeline (e.g. `outboxd demo`):
//!   `--brokers HOST:PORT --postgres URL`, until Ctrl-C;
//! - alone (no flags): a throwaway PostgreSQL and an in-process mock Kafka,
//!   filled with order events the way outboxd publishes them (headers `id`,
//!   `type`, `outboxd.lsn`, `outboxd.index`, key = order id), including
//!   re-sent duplicates; it stops when everything is consumed.

use std::time::{Duration, Instant};

use outbox_inbox::kafka::InboxConsumer;
use outbox_inbox::{HandlerFuture, Inbox, Lsn};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Transaction};

const TOPIC: &str = "outbox.event.order";
const CONSUMER: &str = "order-projection";

/// The service's own table: the current status of every order.
const PROJECTION: &str = "create table if not exists order_status (
    order_id   text primary key,
    customer   text not null,
    status     text not null,
    events     bigint not null,
    last_lsn   pg_lsn,
    updated_at timestamptz not null default now()
)";

/// The business effect of one event, in the inbox's transaction.
fn apply<'a>(
    tx: &'a Transaction<'a>,
    message: &'a OwnedMessage,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move {
        let order = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        let lsn = outbox_inbox::kafka::envelope(message)
            .ok()
            .and_then(|e| e.position)
            .map(|p| p.commit_lsn.to_string());
        tx.execute_typed(
            "insert into order_status (order_id, customer, status, events, last_lsn)
             select $1, p->>'customer', p->>'event', 1, $3::pg_lsn from (select $2::jsonb as p) event
             on conflict (order_id) do update
             set customer = excluded.customer, status = excluded.status,
                 events = order_status.events + 1, last_lsn = excluded.last_lsn, updated_at = now()",
            &[(&order, Type::TEXT), (&payload, Type::TEXT), (&lsn, Type::TEXT)],
        )
        .await?;
        Ok(())
    })
}

struct Args {
    brokers: Option<String>,
    postgres: Option<String>,
    group: String,
    workers: usize,
    events: u64,
}

fn args() -> Args {
    let mut args = Args {
        brokers: None,
        postgres: None,
        group: CONSUMER.into(),
        workers: 4,
        events: 2_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--brokers" => args.brokers = Some(value()),
            "--postgres" => args.postgres = Some(value()),
            "--group" => args.group = value(),
            "--workers" => args.workers = value().parse().unwrap_or_else(|_| usage("--workers: a number")),
            "--events" => args.events = value().parse().unwrap_or_else(|_| usage("--events: a number")),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: order-projection [--brokers HOST:PORT --postgres URL] [--group G] [--workers N] [--events N]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    match (&args.brokers, &args.postgres) {
        (Some(brokers), Some(postgres)) => {
            println!("consuming {TOPIC} from {brokers} until Ctrl-C");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            consume(brokers, postgres, &args, shutdown).await
        }
        (None, None) => standalone(&args).await,
        _ => usage("--brokers and --postgres go together"),
    }
}

/// Sets up the tables and runs the consumer until `shutdown`, then prints the projection.
async fn consume(
    brokers: &str,
    postgres: &str,
    args: &Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut clients = Vec::new();
    for _ in 0..args.workers.max(1) {
        let (client, connection) = tokio_postgres::connect(postgres, NoTls).await?;
        tokio::spawn(connection);
        clients.push(client);
    }
    let (reader, connection) = tokio_postgres::connect(postgres, NoTls).await?;
    tokio::spawn(connection);
    outbox_inbox::setup(&reader).await?;
    reader.batch_execute(PROJECTION).await?;

    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        // After a crash, the group reassigns the dead member's partitions after this long.
        .set("session.timeout.ms", "10000");
    let consumer = InboxConsumer::new(
        &config,
        &[TOPIC],
        &args.group,
        Inbox::new().with_aggregate_guard(),
    )?;
    let started = Instant::now();
    let summary = consumer.run(clients, apply, shutdown).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\n{} processed, {} duplicates skipped, {} stale refused in {secs:.1} s",
        summary.processed, summary.duplicates, summary.stale
    );
    print_projection(&reader).await?;
    Ok(())
}

async fn print_projection(client: &Client) -> Result<(), tokio_postgres::Error> {
    println!(
        "\n{:<10} {:<10} {:<14} {:>6}  last lsn",
        "order", "customer", "status", "events"
    );
    for row in client
        .query(
            "select order_id, customer, status, events, coalesce(last_lsn::text, '') from order_status
             order by length(order_id), order_id",
            &[],
        )
        .await?
    {
        println!(
            "{:<10} {:<10} {:<14} {:>6}  {}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3),
            row.get::<_, String>(4)
        );
    }
    Ok(())
}

/// A throwaway PostgreSQL and mock Kafka, filled with outboxd-style order
/// events (every tenth re-sent, as after a relay crash), consumed to the end.
async fn standalone(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = tokio::task::spawn_blocking(testkit::PgCluster::start).await??;
    let postgres = cluster.url("postgres", "postgres");
    let kafka = MockCluster::new(1)?;
    kafka.create_topic(TOPIC, 4, 1)?;
    let brokers = kafka.bootstrap_servers();
    println!(
        "postgres on port {}, mock kafka at {brokers}, topic {TOPIC} (4 partitions)",
        cluster.port()
    );

    let sent = publish(&brokers, args.events)?;
    println!(
        "published {} events and {} re-sent duplicates",
        args.events,
        sent - args.events
    );

    // Stop once the inbox holds every event (a real service runs until SIGTERM).
    let (watcher, connection) = tokio_postgres::connect(&postgres, NoTls).await?;
    tokio::spawn(connection);
    let target = args.events as i64;
    let shutdown = async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let claimed = watcher
                .query_one("select count(*) from inbox where consumer = $1", &[&CONSUMER])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            if claimed >= target {
                // Let the last duplicates arrive too.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
        }
        eprintln!("not every event was consumed within 120 s");
    };
    consume(&brokers, &postgres, args, shutdown).await?;
    drop(kafka);
    drop(cluster);
    Ok(())
}

/// Publishes order events the way outboxd does; returns how many records were sent.
fn publish(brokers: &str, events: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let customers = ["ada", "grace", "linus", "barbara", "ken", "margaret"];
    let mut sent = 0;
    for n in 0..events {
        // 20 orders, each created, paid, shipped in turn; one event per transaction.
        let order = n % 20 + 1;
        let event = ["OrderCreated", "OrderPaid", "OrderShipped"][((n / 20) % 3) as usize];
        let customer = customers[(n % customers.len() as u64) as usize];
        let payload =
            format!(r#"{{"order": {order}, "customer": "{customer}", "event": "{event}", "seq": {n}}}"#);
        let id = format!("00000000-0000-4000-8000-{n:012}");
        let key = format!("order-{order}");
        let lsn = Lsn::new(0x0100_0000 + n * 0x200).to_string();
        // Every tenth event is sent twice, as outboxd re-sends after a crash.
        let copies = if n % 10 == 9 { 2 } else { 1 };
        for _ in 0..copies {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "type",
                    value: Some(event),
                })
                .insert(Header {
                    key: "aggregatetype",
                    value: Some("order"),
                })
                .insert(Header {
                    key: "outboxd.lsn",
                    value: Some(lsn.as_str()),
                })
                .insert(Header {
                    key: "outboxd.index",
                    value: Some("0"),
                });
            let mut record = BaseRecord::to(TOPIC).key(&key).payload(&payload).headers(headers);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((err, back)) if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((err, _)) => return Err(err.into()),
                }
            }
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}
