//! Under the `stop` policy nothing of a key may reach the topic after a
//! record of that key failed for good: the sink stops producing.

use std::time::Duration;

use bytes::Bytes;
use outbox_core::AfterPermanentFailure;
use outbox_core::{Delivery, Lsn, Position, Record, Sink, TxSeq};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sink_kafka::{KafkaConfig, KafkaSink};
use testkit::kafka::read_topic;
use tokio::sync::mpsc;

const TOPIC: &str = "fenced";

fn record(i: u64) -> Record {
    Record {
        topic: TOPIC.to_owned(),
        key: Bytes::from_static(b"agg-1"),
        value: Some(Bytes::from(format!("{i}"))),
        headers: vec![("id".to_owned(), Bytes::from(format!("id-{i}")))],
        id: format!("id-{i}"),
        position: Position {
            commit_lsn: Lsn::new(1000 + i),
            index: 0,
        },
        timestamp_ms: None,
        partition: None,
    }
}

/// Found in review: a record the broker refused for good (its topic's
/// `max.message.bytes` below the producer's limit) failed alone, and
/// librdkafka went on producing the records queued behind it, so later
/// events of the same key reached the topic before the failed one ever did.
/// The mock broker refuses one produce request with MSG_SIZE_TOO_LARGE while
/// others are in flight and queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_side_permanent_failure_under_stop_no_later_record_of_the_key_reaches_the_topic() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let config = KafkaConfig::new([
        ("bootstrap.servers", bootstrap.as_str()),
        ("linger.ms", "0"),
        // One request at a time: the records behind the refused one are
        // queued in the producer, not in flight.
        ("max.in.flight.requests.per.connection", "1"),
    ])
    .unwrap();
    let (tx, mut deliveries) = mpsc::unbounded_channel::<Delivery>();
    let mut sink = KafkaSink::with_after_permanent(&config, tx, AfterPermanentFailure::Stop).unwrap();

    // One record delivered before the failure.
    sink.send(record(0), TxSeq::default()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.result.is_ok(), "{:?}", first.result);

    // Requests take a while, so several are in flight behind the refused one.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .unwrap();
    // The refused request, and the broker's answer to the next one from the
    // same producer: its sequence number follows one the broker never wrote.
    // (A real broker checks this itself; the mock checks sequence numbers only
    // for transactional producers, see rdkafka_mock.c.)
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        ],
    );
    let mut sent = 1;
    for i in 1..=20 {
        match sink.send(record(i), TxSeq::default()).await {
            Ok(()) => sent += 1,
            Err(err) => panic!("send {i}: {err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reports = vec![first];
    while reports.len() < sent {
        match tokio::time::timeout(Duration::from_secs(30), deliveries.recv()).await {
            Ok(Some(d)) => reports.push(d),
            _ => panic!("{} of {sent} reports", reports.len()),
        }
    }
    let first_failed = reports
        .iter()
        .filter(|d| d.result.is_err())
        .map(|d| d.position.commit_lsn.as_u64() - 1000)
        .min()
        .expect("the refused request failed its records");
    let failed_reason = reports
        .iter()
        .find(|d| d.position.commit_lsn.as_u64() - 1000 == first_failed)
        .and_then(|d| d.result.as_ref().err())
        .map(|e| e.message.clone());
    let number = |d: &Delivery| d.position.commit_lsn.as_u64() - 1000;
    assert!(
        reports
            .iter()
            .filter(|d| number(d) > first_failed)
            .all(|d| d.result.is_err()),
        "every record behind the failed one is reported failed: {reports:?}"
    );
    drop(sink);

    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let read = tokio::task::spawn_blocking(move || {
        read_topic(
            &bootstrap,
            TOPIC,
            1,
            Duration::from_secs(2),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let on_topic: Vec<u64> = read
        .iter()
        .map(|r| {
            String::from_utf8_lossy(r.value.as_deref().unwrap())
                .parse()
                .unwrap()
        })
        .collect();
    eprintln!("first failed {first_failed} ({failed_reason:?}); on the topic: {on_topic:?}");
    assert!(
        on_topic.iter().all(|i| *i < first_failed),
        "records after the failed {first_failed} reached the topic: {on_topic:?}"
    );
}
