//! Kafka-only end-to-end scenarios beyond the conformance suite (which every
//! sink passes, see `conformance.rs`): a kill inside a huge transaction, a
//! stop with the broker down and the producer queue full, a dead-letter
//! record refused too.

use std::time::Duration;

use testkit::conformance::{self, event_id, failed_commit_lsn, insert_event, writer, Broker, Suite};

use crate::conformance::Kafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_large_transaction_then_restart_loses_nothing() {
    // A small producer queue and a slow broker (100 ms per request) make the
    // large transaction take seconds to deliver, so the kill lands inside it.
    let kafka = Kafka::start().property("queue.buffering.max.messages", "500");
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), kafka);
    let mut outboxd = suite.spawn_streaming();
    let pg = || suite.pg.config("postgres", "postgres");
    let mut written = writer(pg(), 100, 100, 1, 5, Duration::ZERO).await;
    suite
        .broker
        .mock()
        .broker_round_trip_time(1, Duration::from_millis(100))
        .unwrap();
    // One transaction of 40,000 events.
    written.extend(writer(pg(), 101, 1, 40_000, 20, Duration::ZERO).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    outboxd.kill9();
    suite
        .broker
        .mock()
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    let partial = suite.read(0).len();
    assert!(
        partial > 100 && partial < 40_100,
        "the kill must land inside the large transaction ({partial} of 40,100 records were in Kafka)"
    );
    conformance::restart_after_kill(&suite, written).await;
}

/// Found in review: with the broker down and the producer queue full, the
/// pipeline waited for room without listening for SIGTERM, so a stop hung
/// until the broker came back (or SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_and_the_queue_full_exits_and_a_restart_loses_nothing() {
    let kafka = Kafka::start().property("queue.buffering.max.messages", "10");
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), kafka);
    let mut outboxd = suite.spawn_streaming();
    suite.broker.set_reachable(false);
    let pg = suite.pg.config("postgres", "postgres");
    let written = writer(pg, 0, 200, 1, 10, Duration::ZERO).await;
    // Ten records fill the queue; the rest wait behind them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = suite.confirmed().await;
    let stopped = std::time::Instant::now();
    outboxd.signal("TERM");
    // Within the drain timeout (20 s here), not when the broker returns.
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(40)));
    let took = stopped.elapsed();
    let log = outboxd.log();
    eprintln!("stopped after {took:?} with {status}");
    assert!(log.contains("shutdown while the sink had no room"), "log:\n{log}");
    assert!(
        log.contains("still undelivered after the drain timeout"),
        "log:\n{log}"
    );
    assert_eq!(
        suite.confirmed().await,
        held,
        "nothing undelivered was acknowledged"
    );

    suite.broker.set_reachable(true);
    let outboxd = suite.spawn_streaming();
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations), (0, 0));
    assert!(
        f.duplicates <= 10,
        "{} duplicates, at most the 10 queued",
        f.duplicates
    );
    outboxd.terminate();
}

/// Found in review: a dead-letter record that failed too was dead-lettered
/// again, and again — the run never stopped and acking stalled for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_that_fails_too_stops_the_run_instead_of_looping() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), Kafka::start());
    let mut outboxd = suite.spawn_with_env(&[("OUTBOXD_KAFKA_ON_PERMANENT_ERROR", "dead-letter")]);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    let client = suite.pg.connect().await.unwrap();
    let ids: Vec<String> = (0..2).map(|n| event_id(7, n)).collect();
    insert_event(&client, &ids[0], "order", 0, 10).await;
    assert_eq!(suite.read(1).len(), 1);
    let before = suite.confirmed().await;
    // The too-large record fails in the producer, before any request; the next
    // produce request is the dead-letter record's, and the broker refuses it.
    suite.broker.mock().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    insert_event(&client, &ids[1], "order", 1, 300_000).await;
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(60)));
    let log = outboxd.log();
    assert!(!status.success(), "must exit non-zero; log:\n{log}");
    assert!(
        log.contains(&format!("id={}", ids[1])) && log.contains("dead-lettering to outboxd.dlq failed too"),
        "log:\n{log}"
    );
    assert_eq!(log.matches("record dead-lettered").count(), 1, "log:\n{log}");
    assert_eq!(suite.broker.read_dead_letters(0).len(), 0);
    let after = suite.confirmed().await;
    let failed_commit = failed_commit_lsn(&log);
    assert!(
        after >= before && after <= failed_commit,
        "slot at {after}, failed commit {failed_commit}"
    );
}
