//! Outages under load (a private broker node stopped, the network to the
//! shared broker cut), and the consistent-hash exchange (a plugin the shared
//! broker does not have, so on a private node).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use outbox_core::{AckTracker, Lsn, Sink};
use sink_rabbitmq::{declare_exchange, inspect_exchange, Bindings, ExchangeType, RabbitConfig};
use testkit::rabbitmq::{read_queue, shared_url, unique_name, AmqpMessage, RabbitNode};

use crate::fixture::{record, sink, Topology};
use crate::proxy::CutProxy;

/// Per key: how often a message came after a later one of the same key
/// that was not a re-send of one already seen.
fn order_violations(ids: &[(String, u64)]) -> usize {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut violations = 0;
    for (key, n) in ids {
        let first_time = seen.insert(*n);
        let max = last.entry(key).or_insert(*n);
        if *n < *max && first_time {
            violations += 1;
        }
        *max = (*max).max(*n);
    }
    violations
}

fn number(id: &str) -> u64 {
    id.trim_start_matches("id-").parse().unwrap()
}

/// Each message's (aggregate id, record number), in queue order.
fn keyed(read: &[AmqpMessage]) -> Vec<(String, u64)> {
    read.iter()
        .map(|m| {
            (
                m.header("aggregateid").unwrap().to_owned(),
                number(m.message_id.as_deref().unwrap()),
            )
        })
        .collect()
}

/// Reads the queue a load test filled with `records` records through a
/// window of `window`: (lost, per-key order violations, duplicates).
async fn figures(url: &str, queue: &str, records: u64, window: usize) -> (usize, usize, usize) {
    let read = read_queue(url, queue, records as usize + window, Duration::from_secs(5))
        .await
        .unwrap();
    let ids = keyed(&read);
    let unique: HashSet<u64> = ids.iter().map(|(_, n)| *n).collect();
    (
        records as usize - unique.len(),
        order_violations(&ids),
        ids.len() - unique.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_under_load_loses_nothing_and_keeps_per_key_order() {
    const RECORDS: u64 = 3000;
    const WINDOW: usize = 64;
    let node = RabbitNode::start().unwrap();
    let topology = Topology::new(&node.url(), "#").await;
    let config = topology.config().max_in_flight(WINDOW).unwrap();
    let (mut sink, mut deliveries) = sink(&config).await;

    let mut tracker: AckTracker = AckTracker::new(Lsn::new(1));
    let collector = tokio::spawn(async move {
        let mut reports = Vec::new();
        while reports.len() < RECORDS as usize {
            match tokio::time::timeout(Duration::from_secs(60), deliveries.recv()).await {
                Ok(Some(d)) => reports.push(d),
                _ => break,
            }
        }
        reports
    });
    let node = std::sync::Arc::new(node);
    let mut outage = None;
    for i in 0..RECORDS {
        if i == 1000 {
            // The broker goes away while records keep coming, and is back
            // 3 s later.
            let stopping = std::sync::Arc::clone(&node);
            tokio::task::spawn_blocking(move || stopping.stop_app().unwrap())
                .await
                .unwrap();
            let node = std::sync::Arc::clone(&node);
            outage = Some(tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(3));
                node.start_app().unwrap();
            }));
        }
        let seq = tracker.push(Lsn::new(2000 + i), 1, ()).unwrap();
        sink.send(record(i, i % 40, "{}"), seq).await.unwrap();
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    outage.unwrap().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), sink.flush())
        .await
        .expect("flush after the outage")
        .unwrap();
    let reports = collector.await.unwrap();
    assert_eq!(reports.len(), RECORDS as usize, "one report per record");
    for d in &reports {
        assert!(d.result.is_ok(), "{d:?}");
        tracker.delivered(d.tx).unwrap();
    }
    assert_eq!(tracker.confirmed(), Lsn::new(2000 + RECORDS - 1));
    assert!(sink.reconnects() >= 1, "the outage happened under the sink");

    let (lost, violations, duplicates) = figures(&node.url(), &topology.queue, RECORDS, WINDOW).await;
    println!("outage: lost {lost}, per-key order violations {violations}, duplicates {duplicates} (window {WINDOW}), reconnects {}", sink.reconnects());
    assert_eq!(lost, 0);
    assert_eq!(violations, 0);
    assert!(duplicates <= WINDOW, "{duplicates} duplicates");
    drop(sink);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_under_load_republishes_the_unconfirmed_in_order() {
    // The network between the sink and the shared broker is cut while a
    // full window is in flight: published messages and confirms are lost
    // on the way. Everything unconfirmed must be published again, in order.
    const RECORDS: u64 = 6000;
    const WINDOW: usize = 256;
    let topology = Topology::new(&shared_url(), "#").await;
    let proxy = std::sync::Arc::new(CutProxy::start("127.0.0.1:5672".parse().unwrap()).await);
    let config = RabbitConfig::new(&proxy.url())
        .unwrap()
        .exchange(&topology.exchange)
        .unwrap()
        .max_in_flight(WINDOW)
        .unwrap();
    let (mut sink, mut deliveries) = sink(&config).await;
    let mut tracker: AckTracker = AckTracker::new(Lsn::new(1));
    let collector = tokio::spawn(async move {
        let mut reports = Vec::new();
        while reports.len() < RECORDS as usize {
            match tokio::time::timeout(Duration::from_secs(60), deliveries.recv()).await {
                Ok(Some(d)) => reports.push(d),
                _ => break,
            }
        }
        reports
    });
    let mut restore = None;
    for i in 0..RECORDS {
        if i == 2000 {
            proxy.cut();
            let proxy = std::sync::Arc::clone(&proxy);
            restore = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                proxy.restore();
            }));
        }
        let seq = tracker.push(Lsn::new(2000 + i), 1, ()).unwrap();
        sink.send(record(i, i % 40, "{}"), seq).await.unwrap();
    }
    restore.unwrap().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), sink.flush())
        .await
        .expect("flush after the cut")
        .unwrap();
    let reports = collector.await.unwrap();
    assert_eq!(reports.len(), RECORDS as usize, "one report per record");
    for d in &reports {
        assert!(d.result.is_ok(), "{d:?}");
        tracker.delivered(d.tx).unwrap();
    }
    assert_eq!(tracker.confirmed(), Lsn::new(2000 + RECORDS - 1));
    assert!(sink.reconnects() >= 1);

    let (lost, violations, duplicates) = figures(&topology.url, &topology.queue, RECORDS, WINDOW).await;
    println!(
        "connection cut: lost {lost}, per-key order violations {violations}, duplicates {duplicates} (window {WINDOW}), reconnects {}",
        sink.reconnects()
    );
    assert_eq!(lost, 0);
    assert_eq!(violations, 0);
    assert!(duplicates <= WINDOW, "{duplicates} duplicates");
    drop(sink);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_exchange_spreads_aggregates_and_keeps_their_order() {
    // With the management API, so `check`'s inspection counts the bindings.
    let node = RabbitNode::start_with_management().unwrap();
    let exchange = unique_name("sink-test-hash");
    let config = RabbitConfig::new(&node.url())
        .unwrap()
        .exchange(&exchange)
        .unwrap()
        .management(&node.management_address().unwrap());
    let report = inspect_exchange(&config, &exchange, ExchangeType::ConsistentHash)
        .await
        .unwrap();
    assert!(!report.exists);
    declare_exchange(&config, &exchange, ExchangeType::ConsistentHash)
        .await
        .unwrap();
    let connection = Connection::connect(&node.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queues: Vec<String> = (0..4).map(|i| format!("{exchange}-{i}")).collect();
    for queue in &queues {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        // The binding key of a consistent-hash exchange is the queue's weight.
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let report = inspect_exchange(&config, &exchange, ExchangeType::ConsistentHash)
        .await
        .unwrap();
    assert!(report.exists);
    assert_eq!(report.kind.as_deref(), Some("x-consistent-hash"));
    assert_eq!(report.as_expected, Some(true));
    assert_eq!(report.bindings, Bindings::Count(4), "{report:?}");
    let report = inspect_exchange(&config, &exchange, ExchangeType::Topic)
        .await
        .unwrap();
    assert_eq!(report.as_expected, Some(false), "{report:?}");
    assert_eq!(report.kind.as_deref(), Some("x-consistent-hash"));

    let (mut sink, mut deliveries) = sink(&config).await;
    let records: Vec<_> = (0..2000).map(|i| record(i, i % 40, "{}")).collect();
    let (_, reports) = crate::fixture::send_all(&mut sink, &mut deliveries, records).await;
    assert!(reports.iter().all(|d| d.result.is_ok()));

    let mut queue_of: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    let mut used = 0;
    for (q, queue) in queues.iter().enumerate() {
        let read = read_queue(&node.url(), queue, 2000, Duration::from_secs(2))
            .await
            .unwrap();
        total += read.len();
        used += usize::from(!read.is_empty());
        let ids = keyed(&read);
        assert_eq!(order_violations(&ids), 0, "queue {queue}");
        for (key, _) in ids {
            assert_eq!(
                *queue_of.entry(key.clone()).or_insert(q),
                q,
                "{key} in two queues"
            );
        }
    }
    println!(
        "consistent hash: {total} messages, {} aggregates over {used} of 4 queues",
        queue_of.len()
    );
    assert_eq!(total, 2000);
    assert_eq!(queue_of.len(), 40);
    assert!(used >= 2, "the aggregates are spread");
    let _ = connection.close(200, "done".into()).await;
}
