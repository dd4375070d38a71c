//! Records go out in order, keyed and placed as Java would, with headers;
//! backpressure never drops; permanent errors come back with the record;
//! a broker outage delays but loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use outbox_core::{AckTracker, Delivery, ErrorClass, Lsn, PermanentReason, Position, Record, Sink, TxSeq};
use rdkafka::mocking::MockCluster;
use sink_kafka::{java_partition, KafkaConfig, KafkaSink};
use testkit::kafka::read_topic;
use tokio::sync::mpsc;

const TOPIC: &str = "outbox.event.order";

fn record(i: u64, aggregate: u64, value_len: usize) -> Record {
    Record {
        topic: TOPIC.to_owned(),
        key: Bytes::from(format!("agg-{aggregate}")),
        value: Some(Bytes::from(vec![b'x'; value_len])),
        headers: vec![
            ("id".to_owned(), Bytes::from(format!("id-{i}"))),
            ("type".to_owned(), Bytes::from_static(b"created")),
        ],
        id: format!("id-{i}"),
        position: Position {
            commit_lsn: Lsn::new(1000 + i),
            index: 0,
        },
        timestamp_ms: None,
        partition: None,
    }
}

fn sink(bootstrap: &str, extra: &[(&str, &str)]) -> (KafkaSink, mpsc::UnboundedReceiver<Delivery>) {
    let mut props = vec![("bootstrap.servers".to_owned(), bootstrap.to_owned())];
    props.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = KafkaConfig::new(props).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    (KafkaSink::new(&config, tx).unwrap(), rx)
}

/// Sends `records` one per transaction, tracks them, and waits for every report.
async fn send_all(
    sink: &mut KafkaSink,
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    records: Vec<Record>,
) -> (AckTracker, Vec<Delivery>) {
    let mut tracker: AckTracker = AckTracker::new(Lsn::new(1));
    let mut seqs: Vec<TxSeq> = Vec::new();
    let n = records.len();
    for (i, record) in records.into_iter().enumerate() {
        let seq = tracker.push(Lsn::new(2000 + i as u64), 1, ()).unwrap();
        seqs.push(seq);
        sink.send(record, seq).await.unwrap();
    }
    sink.flush().await.unwrap();
    let mut reports = Vec::new();
    while reports.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        match &d.result {
            Ok(()) => tracker.delivered(d.tx).unwrap(),
            Err(_) => tracker.failed(d.tx).unwrap(),
        }
        reports.push(d);
    }
    (tracker, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_order_on_javas_partitions_with_headers() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 6, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // A tiny queue: backpressure happens hundreds of times on the way.
    let (mut sink, mut deliveries) = sink(&bootstrap, &[("queue.buffering.max.messages", "10")]);
    let records: Vec<Record> = (0..2000).map(|i| record(i, i % 50, 100)).collect();
    let (tracker, reports) = send_all(&mut sink, &mut deliveries, records).await;
    assert!(reports.iter().all(|d| d.result.is_ok()));
    assert_eq!(tracker.confirmed(), Lsn::new(2000 + 1999));

    let read = tokio::task::spawn_blocking(move || {
        read_topic(
            &bootstrap,
            TOPIC,
            2000,
            Duration::from_millis(500),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read.len(), 2000, "exactly the records sent");
    let mut last_by_key: HashMap<String, u64> = HashMap::new();
    let mut violations = 0;
    for r in &read {
        assert_eq!(
            r.partition,
            java_partition(&r.key, 6),
            "key {} misplaced",
            r.key_str()
        );
        let id = r.header("id").unwrap();
        let i: u64 = id.strip_prefix("id-").unwrap().parse().unwrap();
        assert_eq!(r.key_str(), format!("agg-{}", i % 50));
        assert_eq!(r.header("type"), Some("created"));
        assert_eq!(r.value.as_deref().map(<[u8]>::len), Some(100));
        if let Some(prev) = last_by_key.insert(r.key_str().to_owned(), i) {
            if prev > i {
                violations += 1;
            }
        }
    }
    assert_eq!(violations, 0, "per-key order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_record_is_a_permanent_failure_with_the_record_returned() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let (mut sink, mut deliveries) = sink(&cluster.bootstrap_servers(), &[("message.max.bytes", "10000")]);
    let records = vec![record(0, 1, 10), record(1, 1, 50_000), record(2, 1, 10)];
    let (tracker, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let failed: Vec<&Delivery> = reports.iter().filter(|d| d.result.is_err()).collect();
    assert_eq!(failed.len(), 1);
    let failure = failed[0];
    assert_eq!(failure.id, "id-1");
    assert_eq!(
        failure.result.as_ref().unwrap_err().class,
        ErrorClass::Permanent {
            reason: PermanentReason::TooLarge
        }
    );
    let returned = failure
        .returned
        .as_ref()
        .expect("record returned for the dead-letter queue");
    assert_eq!(returned.id, "id-1");
    assert_eq!(returned.value.as_ref().map(Bytes::len), Some(50_000));
    assert_eq!(returned.position.commit_lsn, Lsn::new(1001));
    // Progress stops at the failed transaction: only the first is confirmed.
    assert!(tracker.has_failed());
    assert_eq!(tracker.confirmed(), Lsn::new(2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delays_delivery_but_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let (mut sink, mut deliveries) = sink(&bootstrap, &[]);
    // Warm up (metadata, producer id), then take the broker down.
    let (_, first) = send_all(&mut sink, &mut deliveries, vec![record(0, 0, 10)]).await;
    assert!(first[0].result.is_ok());
    cluster.broker_down(1).unwrap();
    let mut tracker: AckTracker = AckTracker::new(Lsn::new(1));
    for i in 1..=200u64 {
        let seq = tracker.push(Lsn::new(5000 + i), 1, ()).unwrap();
        sink.send(record(i, i % 7, 10), seq).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Ok(d) = deliveries.try_recv() {
        panic!("a report while the broker is down: {d:?}");
    }
    assert_eq!(
        tracker.confirmed(),
        Lsn::new(1),
        "nothing confirmed while the broker is down"
    );
    cluster.broker_up(1).unwrap();
    let mut ok = 0;
    while ok < 200 {
        let d = tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(d.result.is_ok(), "{d:?}");
        tracker.delivered(d.tx).unwrap();
        ok += 1;
    }
    assert_eq!(tracker.confirmed(), Lsn::new(5200));
    let read = tokio::task::spawn_blocking(move || {
        read_topic(
            &bootstrap,
            TOPIC,
            201,
            Duration::from_millis(500),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read.len(), 201, "no loss, no duplicate");
}
