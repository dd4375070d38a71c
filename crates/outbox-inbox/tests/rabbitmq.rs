//! The lapin adapter against the machine's RabbitMQ (127.0.0.1:5672), on a
//! queue of its own, deleted afterwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use outbox_inbox::rabbitmq::InboxQueueConsumer;
use outbox_inbox::{HandlerFuture, Inbox, Lsn, Outcome};
use tokio_postgres::{Client, NoTls, Transaction};

use crate::support::{self, count};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A queue of this test's own, expiring 10 minutes after its last use so a
/// failed run leaves nothing behind for long.
async fn queue(channel: &Channel) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("outbox-inbox-test-{}-{nanos}", std::process::id());
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    name
}

/// `events` events over 31 aggregates, each sent once, every fifth also
/// re-sent later, with the properties and headers outboxd's RabbitMQ sink sets.
async fn publish(channel: &Channel, queue: &str, events: u64) -> BTreeMap<String, (i64, i64)> {
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut sends = Vec::new();
    for i in 0..events {
        sends.push(i);
        if i % 5 == 4 {
            sends.push(i - 3);
        }
    }
    for i in 0..events {
        let e = expected.entry(format!("order-{}", i % 31)).or_default();
        e.0 += i as i64 % 100 + 1;
        e.1 += 1;
    }
    for i in sends {
        let mut headers = FieldTable::default();
        let text = |s: String| AMQPValue::LongString(LongString::from(s.into_bytes()));
        headers.insert("aggregatetype".into(), text("order".into()));
        headers.insert("aggregateid".into(), text(format!("order-{}", i % 31)));
        headers.insert(
            "outboxd.lsn".into(),
            text(Lsn::new(0x3000_0000 + i * 0x80).to_string()),
        );
        headers.insert("outboxd.index".into(), text("0".into()));
        let properties = BasicProperties::default()
            .with_message_id(format!("evt-{i:05}").into())
            .with_type("OrderPaid".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let payload = (i as i64 % 100 + 1).to_string();
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload.as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    expected
}

fn handle<'a>(
    tx: &'a Transaction<'a>,
    delivery: &'a Delivery,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move {
        let envelope = outbox_inbox::rabbitmq::envelope(delivery).expect("headers");
        let amount: i64 = std::str::from_utf8(&delivery.data).unwrap().parse().unwrap();
        support::apply(
            tx,
            &envelope.id,
            envelope.aggregate_id.as_deref().unwrap(),
            amount,
        )
        .await
    })
}

async fn connections(url: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        clients.push(client);
    }
    clients
}

async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

/// 1,000 events and 200 re-sends; the first consumer's connection is closed
/// while one message is committed in the database and not yet acknowledged;
/// a second consumer finishes. Each event is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_and_a_lost_ack_are_applied_once() {
    let (cluster, client) = support::cluster().await;
    let url = cluster.url("postgres", "postgres");
    let admin = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let admin_channel = admin.create_channel().await.unwrap();
    let queue = queue(&admin_channel).await;
    let expected = publish(&admin_channel, &queue, 1_000).await;

    // First consumer: its 300th processed message waits in the hook (committed,
    // not acknowledged) while the test closes its connection.
    let first = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let processed = Arc::new(AtomicU64::new(0));
    let (hung_tx, hung_rx) = std::sync::mpsc::channel::<String>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let consumer = InboxQueueConsumer::new(
        first.create_channel().await.unwrap(),
        &queue,
        "orders",
        Inbox::new().with_aggregate_guard(),
    )
    .prefetch(32)
    .on_outcome({
        let processed = Arc::clone(&processed);
        move |delivery, outcome| {
            if matches!(outcome, Outcome::Processed(()))
                && processed.fetch_add(1, Ordering::SeqCst) + 1 == 300
            {
                let id = outbox_inbox::rabbitmq::envelope(delivery).unwrap().id;
                hung_tx.send(id).unwrap();
                let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
            }
        }
    });
    let run = tokio::spawn({
        let url = url.clone();
        async move {
            consumer
                .run(connections(&url, 4).await, handle, std::future::pending())
                .await
        }
    });
    let hung = tokio::task::spawn_blocking(move || hung_rx.recv_timeout(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    first.close(200, "the consumer crashed".into()).await.unwrap();
    release_tx.send(()).unwrap();
    let stopped = run.await.unwrap();
    assert!(
        stopped.is_err(),
        "the loop stops when its channel is gone: {stopped:?}"
    );
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from inbox where message_id = '{hung}'")
        )
        .await,
        1,
        "the hung message's claim committed before the connection closed"
    );

    // Second consumer: everything that was not acknowledged comes back.
    let second = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let duplicates = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let consumer = InboxQueueConsumer::new(
        second.create_channel().await.unwrap(),
        &queue,
        "orders",
        Inbox::new().with_aggregate_guard(),
    )
    .on_outcome({
        let duplicates = Arc::clone(&duplicates);
        move |delivery, outcome| {
            if matches!(outcome, Outcome::Duplicate) {
                duplicates
                    .lock()
                    .unwrap()
                    .push(outbox_inbox::rabbitmq::envelope(delivery).unwrap().id);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let summary = consumer
        .run(connections(&url, 4).await, handle, async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = count(&client, "select count(*) from inbox").await == 1_000
                    && message_count(&admin_channel, &queue).await == 0;
                if done || Instant::now() > deadline {
                    return;
                }
            }
        })
        .await
        .unwrap();
    println!("rabbitmq: second consumer {summary:?}");
    assert!(
        duplicates.lock().unwrap().contains(&hung),
        "{hung} came back as a duplicate"
    );
    assert_eq!(count(&client, "select count(*) from applied").await, 1_000);
    assert_eq!(
        count(&client, "select count(distinct event_id) from applied").await,
        1_000
    );
    assert_eq!(
        count(&client, "select count(*) from inbox where outcome = 'stale'").await,
        0
    );
    let actual: BTreeMap<String, (i64, i64)> = client
        .query("select aggregate_id, total, events from projection", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(actual, expected);
    assert_eq!(
        message_count(&admin_channel, &queue).await,
        0,
        "every message acknowledged"
    );

    admin_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = second.close(200, "done".into()).await;
    let _ = admin.close(200, "done".into()).await;
}
