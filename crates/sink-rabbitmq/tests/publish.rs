//! Publishing to the shared broker: order, properties and headers, confirms
//! (one report per record, multiple acks included), and the records that
//! fail alone (unroutable, missing exchange, too large) without stopping
//! the others.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use outbox_core::{ErrorClass, Lsn, PermanentReason, Sink};
use sink_rabbitmq::RabbitSink;
use testkit::rabbitmq::{read_queue, shared_url};

use crate::fixture::{record, send_all, sink, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_commit_order_with_properties_and_headers() {
    let topology = Topology::new(&shared_url(), "#").await;
    // A small window: send waits for confirms hundreds of times on the way.
    let config = topology.config().max_in_flight(16).unwrap();
    let (mut sink, mut deliveries) = sink(&config).await;
    let records: Vec<_> = (0..2000)
        .map(|i| record(i, i % 50, &format!("{{\"n\": {i}}}")))
        .collect();
    let (tracker, reports) = send_all(&mut sink, &mut deliveries, records).await;
    assert!(reports.iter().all(|d| d.result.is_ok()), "{reports:?}");
    assert_eq!(tracker.confirmed(), Lsn::new(2000 + 1999));
    assert_eq!(sink.in_flight(), 0);

    let read = read_queue(&topology.url, &topology.queue, 2000, Duration::from_secs(5))
        .await
        .unwrap();
    let ids: Vec<_> = read.iter().map(|m| m.message_id.clone().unwrap()).collect();
    let expected: Vec<_> = (0..2000).map(|i| format!("id-{i}")).collect();
    assert_eq!(ids, expected, "one queue, one channel: commit order exactly");
    let m = &read[7];
    assert_eq!(m.exchange, topology.exchange);
    assert_eq!(m.routing_key, "order.created");
    assert_eq!(m.body, b"{\"n\": 7}");
    assert_eq!(m.kind.as_deref(), Some("created"));
    assert_eq!(m.app_id.as_deref(), Some("outboxd"));
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.delivery_mode, Some(2), "persistent");
    assert!(m.timestamp.unwrap() > 1_700_000_000);
    assert_eq!(m.header("aggregatetype"), Some("order"));
    assert_eq!(m.header("aggregateid"), Some("agg-7"));
    assert_eq!(m.header("outboxd.lsn"), Some(Lsn::new(1007).to_string().as_str()));
    assert_eq!(m.header("outboxd.index"), Some("0"));
    assert_eq!(m.header("id"), None);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_window_bounds_what_is_unconfirmed() {
    // 100-byte bodies, a 150-byte window: never more than two unconfirmed
    // (one fits, the next is admitted while under the limit, then send waits).
    let topology = Topology::new(&shared_url(), "#").await;
    let config = topology.config().max_in_flight_bytes(150);
    let (mut sink, mut deliveries) = sink(&config).await;
    let mut tracker: outbox_core::AckTracker = outbox_core::AckTracker::new(Lsn::new(1));
    let mut most = 0;
    for i in 0..300u64 {
        let seq = tracker.push(Lsn::new(2000 + i), 1, ()).unwrap();
        sink.send(record(i, i % 7, &"x".repeat(100)), seq).await.unwrap();
        most = most.max(sink.in_flight());
    }
    sink.flush().await.unwrap();
    assert!(most <= 2, "{most} unconfirmed records");
    let mut reports = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), deliveries.recv()).await {
        assert!(d.result.is_ok());
        reports += 1;
    }
    assert_eq!(reports, 300);
    let read = read_queue(&topology.url, &topology.queue, 300, Duration::from_secs(5))
        .await
        .unwrap();
    let ids: Vec<_> = read.iter().map(|m| m.message_id.clone().unwrap()).collect();
    let expected: Vec<_> = (0..300).map(|i| format!("id-{i}")).collect();
    assert_eq!(ids, expected);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_reported_once_with_a_large_window() {
    // 10,000 records through a 1,024 window: the broker acks with
    // `multiple` set, and each record still gets exactly one report.
    let topology = Topology::new(&shared_url(), "#").await;
    let (mut sink, mut deliveries) = sink(&topology.config()).await;
    let records: Vec<_> = (0..10_000).map(|i| record(i, i % 100, "x")).collect();
    let (tracker, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let mut seen = HashMap::new();
    for d in &reports {
        assert!(d.result.is_ok(), "{d:?}");
        *seen.entry(d.tx).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 10_000);
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(tracker.confirmed(), Lsn::new(2000 + 9999));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
            .await
            .is_err(),
        "no report after the last one"
    );
    let read = read_queue(&topology.url, &topology.queue, 10_000, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(read.len(), 10_000);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_record_is_a_permanent_failure_not_an_ack() {
    // Only `order.created` is bound: `order.shipped` reaches no queue.
    let topology = Topology::new(&shared_url(), "order.created").await;
    let (mut sink, mut deliveries) = sink(&topology.config()).await;
    let mut lost = record(1, 1, "{}");
    lost.topic = "order.shipped".into();
    let records = vec![record(0, 1, "{}"), lost.clone(), record(2, 1, "{}")];
    let (tracker, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let by_id: HashMap<_, _> = reports.iter().map(|d| (d.id.as_str(), d)).collect();
    assert!(by_id["id-0"].result.is_ok());
    assert!(by_id["id-2"].result.is_ok());
    let failed = by_id["id-1"];
    let err = failed.result.as_ref().unwrap_err();
    assert_eq!(
        err.class,
        ErrorClass::Permanent {
            reason: PermanentReason::Unroutable
        },
        "{err}"
    );
    assert!(err.message.contains("NO_ROUTE"), "{err}");
    assert_eq!(
        failed.returned.as_ref(),
        Some(&lost),
        "the record comes back for dead-lettering"
    );
    assert_eq!(
        tracker.confirmed(),
        Lsn::new(2000),
        "nothing acknowledged past the failure"
    );
    let read = read_queue(&topology.url, &topology.queue, 2, Duration::from_secs(2))
        .await
        .unwrap();
    let ids: Vec<_> = read.iter().map(|m| m.message_id.clone().unwrap()).collect();
    assert_eq!(ids, ["id-0", "id-2"]);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_fails_that_record_only() {
    // The exchange comes from the template `${aggregatetype}`: one record
    // names an exchange that does not exist.
    let topology = Topology::new(&shared_url(), "#").await;
    let config = topology.config().exchange("${aggregatetype}").unwrap();
    let (mut sink, mut deliveries) = sink(&config).await;
    let aggregate_type = |mut r: outbox_core::Record, name: &str| {
        for (key, value) in &mut r.headers {
            if key == "aggregatetype" {
                *value = Bytes::from(name.to_owned());
            }
        }
        r
    };
    let missing = testkit::rabbitmq::unique_name("sink-test-missing");
    let records = vec![
        aggregate_type(record(0, 1, "{}"), &topology.exchange),
        aggregate_type(record(1, 1, "{}"), &missing),
        aggregate_type(record(2, 1, "{}"), &topology.exchange),
    ];
    let (_, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let by_id: HashMap<_, _> = reports.iter().map(|d| (d.id.as_str(), d)).collect();
    assert!(by_id["id-0"].result.is_ok());
    assert!(by_id["id-2"].result.is_ok(), "{:?}", by_id["id-2"]);
    let err = by_id["id-1"].result.as_ref().unwrap_err();
    assert_eq!(
        err.class,
        ErrorClass::Permanent {
            reason: PermanentReason::InvalidDestination
        }
    );
    assert!(
        err.message.contains(&missing) && err.message.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        sink.reconnects(),
        0,
        "a missing exchange is found before publishing"
    );
    let read = read_queue(&topology.url, &topology.queue, 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_record_is_refused_before_publishing() {
    let topology = Topology::new(&shared_url(), "#").await;
    let config = topology.config().max_message_bytes(100);
    let (mut sink, mut deliveries) = sink(&config).await;
    let big = record(1, 1, &"x".repeat(101));
    let records = vec![record(0, 1, "{}"), big.clone(), record(2, 1, "{}")];
    let (_, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let by_id: HashMap<_, _> = reports.iter().map(|d| (d.id.as_str(), d)).collect();
    let failed = by_id["id-1"];
    let err = failed.result.as_ref().unwrap_err();
    assert_eq!(
        err.class,
        ErrorClass::Permanent {
            reason: PermanentReason::TooLarge
        }
    );
    assert!(err.message.contains("101 bytes"), "{err}");
    assert_eq!(failed.returned.as_ref(), Some(&big));
    assert!(by_id["id-0"].result.is_ok() && by_id["id-2"].result.is_ok());
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_stop_nothing_is_published_after_a_record_that_failed_for_good() {
    let topology = Topology::new(&shared_url(), "#").await;
    let config = topology.config().max_message_bytes(100);
    let (tx, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
    let mut sink =
        RabbitSink::connect_with_after_permanent(&config, tx, outbox_core::AfterPermanentFailure::Stop)
            .await
            .unwrap();
    let records = vec![
        record(0, 1, "{}"),
        record(1, 1, &"x".repeat(101)),
        record(2, 1, "{}"),
        record(3, 2, "{}"),
    ];
    let (_, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let by_id: HashMap<_, _> = reports.iter().map(|d| (d.id.as_str(), d)).collect();
    assert!(by_id["id-0"].result.is_ok());
    assert!(by_id["id-1"].result.as_ref().unwrap_err().class.is_permanent());
    for later in ["id-2", "id-3"] {
        let err = by_id[later].result.as_ref().unwrap_err();
        assert_eq!(err.class, ErrorClass::Retriable, "{later}: {err}");
        assert!(err.message.contains("stop policy"), "{err}");
    }
    let read = read_queue(&topology.url, &topology.queue, 4, Duration::from_secs(1))
        .await
        .unwrap();
    let ids: Vec<_> = read.iter().filter_map(|m| m.message_id.as_deref()).collect();
    assert_eq!(ids, ["id-0"], "nothing after the failed record reaches the queue");
    topology.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_deleted_under_the_sink_fails_its_records_and_the_sink_goes_on() {
    // The exchange is known to the sink (cached), then deleted: the broker
    // closes the publishing channel. The sink reconnects, re-publishes one
    // by one, fails the records for the missing exchange and delivers the
    // rest.
    let topology = Topology::new(&shared_url(), "#").await;
    let other = Topology::new(&shared_url(), "#").await;
    let config = topology.config().exchange("${aggregatetype}").unwrap();
    let (mut sink, mut deliveries) = sink(&config).await;
    let to = |mut r: outbox_core::Record, name: &str| {
        for (key, value) in &mut r.headers {
            if key == "aggregatetype" {
                *value = Bytes::from(name.to_owned());
            }
        }
        r
    };
    let (_, first) = send_all(
        &mut sink,
        &mut deliveries,
        vec![to(record(0, 1, "{}"), &other.exchange)],
    )
    .await;
    assert!(first[0].result.is_ok());
    let gone = other.exchange.clone();
    other.remove().await;
    let records = vec![
        to(record(1, 1, "{}"), &topology.exchange),
        to(record(2, 1, "{}"), &gone),
        to(record(3, 1, "{}"), &topology.exchange),
    ];
    let (_, reports) = send_all(&mut sink, &mut deliveries, records).await;
    let by_id: HashMap<_, _> = reports.iter().map(|d| (d.id.as_str(), d)).collect();
    assert!(by_id["id-1"].result.is_ok(), "{:?}", by_id["id-1"]);
    assert!(by_id["id-3"].result.is_ok(), "{:?}", by_id["id-3"]);
    let err = by_id["id-2"].result.as_ref().unwrap_err();
    assert_eq!(
        err.class,
        ErrorClass::Permanent {
            reason: PermanentReason::InvalidDestination
        },
        "{err}"
    );
    assert!(err.message.contains(&gone), "{err}");
    assert!(sink.reconnects() >= 1, "the broker closed the channel");
    let read = read_queue(&topology.url, &topology.queue, 3, Duration::from_secs(2))
        .await
        .unwrap();
    let mut ids: Vec<_> = read.iter().map(|m| m.message_id.clone().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids, ["id-1", "id-3"]);
    topology.remove().await;
}
