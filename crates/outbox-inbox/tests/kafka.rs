//! The rdkafka adapter against librdkafka's mock cluster: offsets committed
//! only after the database, re-deliveries and crashes deduplicated.
//!
//! The kill -9 test runs the consumer in a child process: this test binary
//! itself, re-run with the ignored test `kafka::child_consumer` and its
//! settings in `INBOX_CHILD_*` variables. The child prints one line per
//! outcome; with `INBOX_CHILD_HANG_AFTER=n` it stops inside the outcome hook
//! of its n-th processed message, after the database commit and before the
//! offset commit, and the parent kills it there with SIGKILL.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_inbox::kafka::{InboxConsumer, KafkaInboxError};
use outbox_inbox::{HandlerFuture, Inbox, Outcome};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_postgres::{Client, NoTls, Transaction};

use crate::support::{self, count};

const TOPIC: &str = "outbox.event.order";
const PARTITIONS: i32 = 4;

/// One outbox event as outboxd publishes it.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    aggregate: String,
    lsn: u64,
    index: u64,
    amount: i64,
}

/// `events` events over 97 aggregates (three per transaction), in commit
/// order, with `duplicates` re-sends of earlier events mixed in (as after a
/// relay crash or replay: same id, key and headers).
fn deliveries(events: usize, duplicates: usize) -> (Vec<Event>, Vec<Event>) {
    let unique: Vec<Event> = (0..events)
        .map(|i| Event {
            id: format!("evt-{i:05}"),
            aggregate: format!("order-{}", i % 97),
            lsn: 0x1_0000_0000 + (i as u64 / 3) * 0x100,
            index: i as u64 % 3,
            amount: (i as i64 * 37) % 1000 + 1,
        })
        .collect();
    let every = events.checked_div(duplicates).unwrap_or(usize::MAX);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut sent = Vec::with_capacity(events + duplicates);
    for (i, event) in unique.iter().enumerate() {
        sent.push(event.clone());
        if i % every == every - 1 && sent.len() < events + duplicates {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            sent.push(unique[(seed >> 33) as usize % (i + 1)].clone());
        }
    }
    assert_eq!(sent.len(), events + duplicates);
    (unique, sent)
}

fn produce(bootstrap: &str, topic: &str, events: &[Event]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for event in events {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some(event.id.as_str()),
            })
            .insert(Header {
                key: "type",
                value: Some("OrderPaid"),
            })
            .insert(Header {
                key: "aggregatetype",
                value: Some("order"),
            })
            .insert(Header {
                key: "outboxd.lsn",
                value: Some(&outbox_inbox::Lsn::new(event.lsn).to_string()),
            })
            .insert(Header {
                key: "outboxd.index",
                value: Some(&event.index.to_string()),
            });
        let payload = event.amount.to_string();
        let mut record = BaseRecord::to(topic)
            .key(&event.aggregate)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The handler of the tests: the amount (the payload) added to the
/// aggregate's total, and one `applied` row.
fn handle<'a>(
    tx: &'a Transaction<'a>,
    message: &'a OwnedMessage,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move {
        let envelope = outbox_inbox::kafka::envelope(message).expect("headers");
        let amount: i64 = std::str::from_utf8(message.payload().unwrap_or_default())
            .unwrap()
            .parse()
            .unwrap();
        support::apply(
            tx,
            &envelope.id,
            envelope.aggregate_id.as_deref().unwrap(),
            amount,
        )
        .await
    })
}

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        // A killed member is replaced after this long, not the default 45 s.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    config
}

async fn connections(url: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        clients.push(client);
    }
    clients
}

/// The group's committed offset of each partition of `topic` (`None`: nothing committed).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Option<Vec<Option<i64>>> {
    let consumer: BaseConsumer = consumer_config(bootstrap, group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
    Some(
        (0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect(),
    )
}

/// Whether the group's committed offsets reached the end of every partition.
fn fully_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> bool {
    let Some(offsets) = committed(bootstrap, group, topic, partitions) else {
        return false;
    };
    let consumer: BaseConsumer = consumer_config(bootstrap, group).create().unwrap();
    offsets.iter().enumerate().all(|(p, offset)| {
        let (_, high) = consumer
            .fetch_watermarks(topic, p as i32, Duration::from_secs(5))
            .unwrap();
        *offset == Some(high)
    })
}

/// The projection holds every event exactly once, with the right totals.
async fn assert_applied_once(client: &Client, unique: &[Event]) {
    assert_eq!(
        count(client, "select count(*) from applied").await,
        unique.len() as i64
    );
    assert_eq!(
        count(client, "select count(distinct event_id) from applied").await,
        unique.len() as i64,
        "an event was applied twice"
    );
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in unique {
        let entry = expected.entry(e.aggregate.clone()).or_default();
        entry.0 += e.amount;
        entry.1 += 1;
    }
    let actual: BTreeMap<String, (i64, i64)> = client
        .query("select aggregate_id, total, events from projection", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(actual, expected);
    assert_eq!(
        count(client, "select count(*) from inbox").await,
        unique.len() as i64
    );
}

#[derive(Debug, Default)]
struct Lines {
    processed: Vec<String>,
    duplicates: Vec<String>,
    stale: Vec<String>,
    hang: Option<String>,
    summary: Option<String>,
}

impl Lines {
    fn take(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("inbox ") else {
            return;
        };
        let (what, value) = rest.split_once(' ').unwrap_or((rest, ""));
        let value = value.to_owned();
        match what {
            "processed" => self.processed.push(value),
            "duplicate" => self.duplicates.push(value),
            "stale" => self.stale.push(value),
            "hang" => self.hang = Some(value),
            "summary" => self.summary = Some(value),
            _ => {}
        }
    }
}

fn spawn_child(bootstrap: &str, url: &str, group: &str, hang_after: Option<u64>) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "kafka::child_consumer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("INBOX_CHILD_BOOTSTRAP", bootstrap)
        .env("INBOX_CHILD_PG", url)
        .env("INBOX_CHILD_GROUP", group)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(n) = hang_after {
        command.env("INBOX_CHILD_HANG_AFTER", n.to_string());
    }
    command.spawn().expect("spawn the child consumer")
}

#[test]
fn five_thousand_events_with_duplicates_and_three_kill_9s_are_applied_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (cluster, client) = runtime.block_on(support::cluster());
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let (unique, sent) = deliveries(5_000, 1_000);
    produce(&bootstrap, TOPIC, &sent);
    let url = cluster.url("postgres", "postgres");
    let group = "order-projection";
    let mut lines = Lines::default();
    let mut hangs = Vec::new();

    // Three children killed with SIGKILL between a database commit and its offset commit.
    for (round, hang_after) in [700, 1_100, 900].into_iter().enumerate() {
        let mut child = spawn_child(&bootstrap, &url, group, Some(hang_after));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in stdout.by_ref() {
            lines.take(&line.unwrap());
            if let Some(id) = lines.hang.take() {
                hangs.push(id);
                break;
            }
        }
        assert_eq!(
            hangs.len(),
            round + 1,
            "child {round} ended without reaching its hang point"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // What the other workers printed before the kill.
        for line in stdout {
            lines.take(&line.unwrap());
        }
        let claimed = runtime.block_on(count(
            &client,
            &format!("select count(*) from inbox where message_id = '{}'", hangs[round]),
        ));
        assert_eq!(
            claimed, 1,
            "the killed child had committed the claim it hung after"
        );
    }
    assert_eq!(hangs.len(), 3);

    // A last child consumes the rest; closing its stdin stops it cleanly.
    let mut child = spawn_child(&bootstrap, &url, group, None);
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut lines = Lines::default();
        for line in stdout.lines() {
            lines.take(&line.unwrap());
        }
        lines
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = runtime.block_on(count(&client, "select count(*) from inbox")) == unique.len() as i64
            && fully_committed(&bootstrap, group, TOPIC, PARTITIONS);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last child did not catch up within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the last child exits cleanly: {status}");
    let last = reader.join().unwrap();
    assert!(last.summary.is_some(), "the last child printed its summary");
    lines.processed.extend(last.processed);
    lines.duplicates.extend(last.duplicates);
    lines.stale.extend(last.stale);

    runtime.block_on(assert_applied_once(&client, &unique));
    // A kill may land after a commit and before its line is printed, so the
    // lines can miss a few processed events (the database holds them all);
    // none may be printed as processed twice.
    let processed: HashSet<&String> = lines.processed.iter().collect();
    assert_eq!(
        processed.len(),
        lines.processed.len(),
        "an event was processed twice"
    );
    assert!(lines.processed.len() <= 5_000);
    assert!(
        lines.stale.is_empty(),
        "in-order delivery is never stale: {:?}",
        lines.stale
    );
    // Every duplicate sent, plus at least the three messages whose offsets the kills lost.
    assert!(
        lines.duplicates.len() >= 1_003,
        "{} duplicates",
        lines.duplicates.len()
    );
    for id in &hangs {
        assert!(
            lines.duplicates.contains(id),
            "{id}, committed in the database when its consumer was killed, came back as a duplicate"
        );
    }
    println!(
        "kill -9 x3: {} deliveries seen, {} processed, {} duplicates (1000 sent + {} re-deliveries after the kills)",
        lines.processed.len() + lines.duplicates.len(),
        lines.processed.len(),
        lines.duplicates.len(),
        lines.duplicates.len() - 1_000
    );
    drop(kafka);
}

/// The consumer process of the kill -9 test (does nothing when run alone).
#[test]
#[ignore = "run as a child process by five_thousand_events_with_duplicates_and_three_kill_9s_are_applied_once"]
fn child_consumer() {
    let Ok(bootstrap) = std::env::var("INBOX_CHILD_BOOTSTRAP") else {
        return;
    };
    let url = std::env::var("INBOX_CHILD_PG").unwrap();
    let group = std::env::var("INBOX_CHILD_GROUP").unwrap();
    let hang_after: Option<u64> = std::env::var("INBOX_CHILD_HANG_AFTER")
        .ok()
        .map(|n| n.parse().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let processed = AtomicU64::new(0);
        let consumer = InboxConsumer::new(
            &consumer_config(&bootstrap, &group),
            &[TOPIC],
            &group,
            Inbox::new().with_aggregate_guard(),
        )
        .unwrap()
        .commit_interval(Duration::from_millis(50))
        .on_outcome(move |message, outcome| {
            let id = outbox_inbox::kafka::envelope(message).unwrap().id;
            let mut out = std::io::stdout().lock();
            match outcome {
                Outcome::Processed(()) => {
                    writeln!(out, "inbox processed {id}").unwrap();
                    if Some(processed.fetch_add(1, Ordering::SeqCst) + 1) == hang_after {
                        // Committed in the database, offset not committed: wait for SIGKILL.
                        writeln!(out, "inbox hang {id}").unwrap();
                        out.flush().unwrap();
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                }
                Outcome::Duplicate => writeln!(out, "inbox duplicate {id}").unwrap(),
                Outcome::Stale { .. } => writeln!(out, "inbox stale {id}").unwrap(),
            }
            out.flush().unwrap();
        });
        let clients = connections(&url, 4).await;
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        });
        let summary = consumer
            .run(clients, handle, async {
                let _ = stdin_closed.await;
            })
            .await
            .expect("the consumer loop");
        println!(
            "inbox summary processed={} duplicates={} stale={}",
            summary.processed, summary.duplicates, summary.stale
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_never_apply_an_event_twice() {
    let (cluster, client) = support::cluster().await;
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let (unique, sent) = deliveries(2_000, 400);
    {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || produce(&bootstrap, TOPIC, &sent))
            .await
            .unwrap();
    }
    let url = cluster.url("postgres", "postgres");
    let group = "two-members";

    let start = |seen: Arc<AtomicU64>| {
        let consumer = InboxConsumer::new(&consumer_config(&bootstrap, group), &[TOPIC], group, Inbox::new())
            .unwrap()
            .commit_interval(Duration::from_millis(50))
            .on_outcome(move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let url = url.clone();
        let task = tokio::spawn(async move {
            let clients = connections(&url, 2).await;
            consumer
                .run(clients, slow_handle, async {
                    let _ = stopped.await;
                })
                .await
        });
        (stop, task)
    };
    let (seen_a, seen_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop_a, a) = start(Arc::clone(&seen_a));
    while seen_a.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second member joins while the first is busy: the partitions are split.
    let (stop_b, b) = start(Arc::clone(&seen_b));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let caught_up = count(&client, "select count(*) from inbox").await == unique.len() as i64 && {
            let (bootstrap, group) = (bootstrap.clone(), group.to_owned());
            tokio::task::spawn_blocking(move || fully_committed(&bootstrap, &group, TOPIC, PARTITIONS))
                .await
                .unwrap()
        };
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not catch up within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    let a = a.await.unwrap().expect("first member");
    let b = b.await.unwrap().expect("second member");
    println!("two members: first {a:?}, second {b:?}");
    assert_eq!(
        a.processed + b.processed,
        2_000,
        "each event processed by exactly one member"
    );
    assert!(
        b.processed + b.duplicates > 0,
        "the second member received partitions"
    );
    assert!(a.duplicates + b.duplicates >= 400);
    assert_applied_once(&client, &unique).await;
    drop(kafka);
}

/// The test handler with a few milliseconds of work, so the second member
/// joins while the first still has most of the backlog.
fn slow_handle<'a>(
    tx: &'a Transaction<'a>,
    message: &'a OwnedMessage,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move {
        tx.execute("select pg_sleep(0.002)", &[]).await?;
        handle(tx, message).await
    })
}

/// The test handler failing on one event after writing its effect.
fn failing_on<'a>(tx: &'a Transaction<'a>, message: &'a OwnedMessage) -> HandlerFuture<'a, (), String> {
    Box::pin(async move {
        handle(tx, message).await.map_err(|e| e.to_string())?;
        let id = outbox_inbox::kafka::envelope(message).unwrap().id;
        if id == "evt-00020" {
            return Err(format!("cannot apply {id}"));
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_stops_the_loop_without_committing_its_offset() {
    let (cluster, client) = support::cluster().await;
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic(TOPIC, 1, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let (unique, sent) = deliveries(40, 0);
    {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || produce(&bootstrap, TOPIC, &sent))
            .await
            .unwrap();
    }
    let url = cluster.url("postgres", "postgres");
    let group = "failing";
    let config = consumer_config(&bootstrap, group);

    let consumer = InboxConsumer::new(&config, &[TOPIC], group, Inbox::new()).unwrap();
    let result = consumer
        .run(connections(&url, 2).await, failing_on, std::future::pending())
        .await;
    match result {
        Err(KafkaInboxError::Process {
            id, offset, error, ..
        }) => {
            assert_eq!((id.as_str(), offset), ("evt-00020", 20));
            assert!(error.contains("cannot apply evt-00020"), "{error}");
        }
        other => panic!("expected the handler's failure, got {other:?}"),
    }
    drop(consumer);
    assert_eq!(
        count(
            &client,
            "select count(*) from applied where event_id = 'evt-00020'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from inbox where message_id = 'evt-00020'"
        )
        .await,
        0
    );
    let offsets = {
        let (bootstrap, group) = (bootstrap.clone(), group.to_owned());
        tokio::task::spawn_blocking(move || committed(&bootstrap, &group, TOPIC, 1))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(
        offsets[0].is_some_and(|o| o <= 20),
        "the committed offset stays at or before the failed message: {offsets:?}"
    );

    // The next run processes the failed message and the rest, each once.
    let consumer = InboxConsumer::new(&config, &[TOPIC], group, Inbox::new()).unwrap();
    let summary = consumer
        .run(connections(&url, 2).await, handle, async {
            while count(&client, "select count(*) from inbox").await < 40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
    assert_applied_once(&client, &unique).await;
    assert!(summary.processed >= 1, "{summary:?}");
    drop(kafka);
}
