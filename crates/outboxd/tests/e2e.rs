//! Issue-level guarantees, end to end: every committed outbox row reaches
//! Kafka keyed by its aggregate, in order per aggregate, and the slot is
//! acknowledged only for what the broker acknowledged — through a broker
//! outage, `kill -9`, SIGTERM and undeliverable records.

use std::time::Duration;

use futures_like::join_all;
use pgoutput::Lsn;

use crate::support::*;

/// Minimal `join_all` for a handful of spawned writers.
mod futures_like {
    pub(crate) async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}

/// Starts `writers` concurrent application connections, each writing
/// `per_writer` single-event transactions over its own aggregates.
fn spawn_writers(
    env: &Env,
    writers: u64,
    per_writer: u64,
    aggregates: u64,
    pause: Duration,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..writers)
        .map(|w| {
            let pg = env.pg.config("postgres", "postgres");
            // `aggregates` in all, split as evenly as possible; each writer owns its own.
            let mine = aggregates / writers + u64::from(w < aggregates % writers);
            tokio::spawn(async move { writer(pg, w, per_writer, 1, mine, pause).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_from_eight_connections_arrive_once_in_order_on_javas_partitions() {
    let env = Env::start("");
    let outboxd = env.spawn_streaming();
    // 8 connections x 1,250 events over 100 aggregates (12-13 per writer).
    let written: Vec<String> = join_all(spawn_writers(&env, 8, 1250, 100, Duration::ZERO))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(written.len(), 10_000);
    let read = env.read(&env.topic, 10_000).await;
    let f = figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    let keys: std::collections::HashSet<&[u8]> = read.iter().map(|r| r.key.as_slice()).collect();
    assert_eq!(keys.len(), 100);

    outboxd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_ten_seconds_holds_the_slot_and_loses_nothing() {
    let env = Env::start("");
    let outboxd = env.spawn_streaming();
    let writers = spawn_writers(&env, 4, 500, 40, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    env.mock().broker_down(1).unwrap();
    // Records in flight at this moment cannot be delivered any more; let the
    // acknowledgements of what was delivered before reach the slot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = env.confirmed().await;
    let mut samples = Vec::new();
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(env.confirmed().await);
    }
    env.mock().broker_up(1).unwrap();
    assert!(
        samples.iter().all(|s| *s == held),
        "slot moved while nothing could be delivered: {held} then {samples:?}"
    );

    let written: Vec<String> = join_all(writers).await.into_iter().flatten().collect();
    let read = env.read(&env.topic, written.len()).await;
    let f = figures(&written, &read);
    assert_eq!((f.lost, f.order_violations), (0, 0));
    // The idempotent producer's retries are deduplicated by the broker, and
    // nearly always this run has no duplicate. But librdkafka does not promise
    // none: one duplicate (same id and position) appeared once in about a
    // dozen runs on the loaded 2-core machine, after the mock broker dropped
    // its connections with requests in flight. What outboxd promises is
    // duplicates only from the window not yet acknowledged when the broker
    // went down.
    let unacked: std::collections::HashSet<&str> = read
        .iter()
        .filter(|r| r.header("outboxd.lsn").unwrap().parse::<Lsn>().unwrap() >= held)
        .map(|r| r.header("id").unwrap())
        .collect();
    eprintln!(
        "{} duplicates; {} events were unacknowledged at the outage",
        f.duplicates,
        unacked.len()
    );
    assert!(
        f.duplicates <= unacked.len(),
        "{} duplicates but only {} events were unacknowledged",
        f.duplicates,
        unacked.len()
    );
    // After recovery the slot catches up with everything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let last_commit = read
        .iter()
        .map(|r| r.header("outboxd.lsn").unwrap().parse::<Lsn>().unwrap())
        .max()
        .unwrap();
    while env.confirmed().await <= last_commit {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never caught up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outboxd.terminate();
}

/// After a SIGKILL: measures the unacknowledged window, restarts outboxd, and
/// checks the figures.
async fn restart_after_kill(env: &Env, written: Vec<String>) {
    let confirmed_at_kill = env.confirmed().await;
    // The unacknowledged window: records in Kafka whose transaction the slot had not confirmed.
    let before = env.read(&env.topic, 0).await;
    let window = before
        .iter()
        .filter(|r| r.header("outboxd.lsn").unwrap().parse::<Lsn>().unwrap() >= confirmed_at_kill)
        .count();
    eprintln!(
        "killed with {} records in kafka, {window} of them past the slot's {confirmed_at_kill}",
        before.len()
    );

    let outboxd = env.spawn();
    let read = env.read(&env.topic, written.len()).await;
    let f = figures(&written, &read);
    assert_eq!(f.lost, 0);
    assert_eq!(f.order_violations, 0);
    assert!(
        f.duplicates <= window,
        "{} duplicates but only {window} records were unacknowledged",
        f.duplicates
    );
    outboxd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_loses_nothing() {
    let env = Env::start("");
    let mut outboxd = env.spawn_streaming();
    let writers = spawn_writers(&env, 4, 750, 40, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill mid-load; the writers keep going while outboxd is down.
    outboxd.kill9();
    let written: Vec<String> = join_all(writers).await.into_iter().flatten().collect();
    restart_after_kill(&env, written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_large_transaction_then_restart_loses_nothing() {
    // A small producer queue and a slow broker (100 ms per request) make the
    // large transaction take seconds to deliver, so the kill lands inside it.
    let env = Env::start("[kafka.properties]\n\"queue.buffering.max.messages\" = \"500\"\n");
    let mut outboxd = env.spawn_streaming();
    let pg = || env.pg.config("postgres", "postgres");
    let mut written = writer(pg(), 100, 100, 1, 5, Duration::ZERO).await;
    env.mock()
        .broker_round_trip_time(1, Duration::from_millis(100))
        .unwrap();
    // One transaction of 40,000 events.
    written.extend(writer(pg(), 101, 1, 40_000, 20, Duration::ZERO).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    outboxd.kill9();
    env.mock().broker_round_trip_time(1, Duration::ZERO).unwrap();
    let partial = env.read(&env.topic, 0).await.len();
    assert!(
        partial > 100 && partial < 40_100,
        "the kill must land inside the large transaction ({partial} of 40,100 records were in Kafka)"
    );
    restart_after_kill(&env, written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_resends_nothing() {
    let env = Env::start("");
    let mut outboxd = env.spawn_streaming();
    let writers = spawn_writers(&env, 4, 500, 40, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    outboxd.signal("TERM");
    let status = outboxd.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status}; log:\n{}", outboxd.log());
    let written: Vec<String> = join_all(writers).await.into_iter().flatten().collect();

    // The slot and the checkpoint both name the last delivered transaction's end.
    let checkpoint = std::fs::read_to_string(env.checkpoint_path()).unwrap();
    let delivered: Lsn = checkpoint
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("delivered_end_lsn = ")
        .parse()
        .unwrap();
    assert_eq!(env.confirmed().await, delivered, "slot vs checkpoint");
    let in_kafka = env.read(&env.topic, 0).await;
    assert!(!in_kafka.is_empty());
    // Everything in Kafka committed before the acknowledged end; nothing after it was acknowledged.
    let max_commit = in_kafka
        .iter()
        .map(|r| r.header("outboxd.lsn").unwrap().parse::<Lsn>().unwrap())
        .max()
        .unwrap();
    assert!(
        max_commit < delivered,
        "a delivered transaction ({max_commit}) is not covered by the ack {delivered}"
    );

    // Restart: nothing already in Kafka is sent again, the rest follows.
    let outboxd = env.spawn();
    let read = env.read(&env.topic, written.len()).await;
    let f = figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    outboxd.terminate();
}

/// Found in review: with the broker down and the producer queue full, the
/// pipeline waited for room without listening for SIGTERM, so a stop hung
/// until the broker came back (or SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_and_the_queue_full_exits_and_a_restart_loses_nothing() {
    let env = Env::start("[kafka.properties]\n\"queue.buffering.max.messages\" = \"10\"\n");
    let mut outboxd = env.spawn_streaming();
    env.mock().broker_down(1).unwrap();
    let written = writer(
        env.pg.config("postgres", "postgres"),
        0,
        200,
        1,
        10,
        Duration::ZERO,
    )
    .await;
    // Ten records fill the queue; the rest wait behind them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = env.confirmed().await;
    let stopped = std::time::Instant::now();
    outboxd.signal("TERM");
    // Within the drain timeout (20 s here), not when the broker returns.
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(40)));
    let took = stopped.elapsed();
    let log = outboxd.log();
    eprintln!("stopped after {took:?} with {status}");
    assert!(
        log.contains("shutdown while the producer queue is full"),
        "log:\n{log}"
    );
    assert!(
        log.contains("still undelivered after the drain timeout"),
        "log:\n{log}"
    );
    assert_eq!(
        env.confirmed().await,
        held,
        "nothing undelivered was acknowledged"
    );

    env.mock().broker_up(1).unwrap();
    let outboxd = env.spawn_streaming();
    let read = env.read(&env.topic, written.len()).await;
    let f = figures(&written, &read);
    assert_eq!((f.lost, f.order_violations), (0, 0));
    assert!(
        f.duplicates <= 10,
        "{} duplicates, at most the 10 queued",
        f.duplicates
    );
    outboxd.terminate();
}

/// The commit LSN the stop message names ("… (commit LSN X, index N) …").
fn failed_commit_lsn(log: &str) -> Lsn {
    log.split("commit LSN ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no commit LSN in the log:\n{log}"))
        .parse()
        .unwrap()
}

/// Inserts three events, the middle one with a payload above the producer's
/// (and broker's) limit.
async fn insert_with_a_huge_middle(env: &Env) -> Vec<String> {
    let client = env.pg.connect().await.unwrap();
    let ids: Vec<String> = (0..3).map(|n| event_id(7, n)).collect();
    for (n, id) in ids.iter().enumerate() {
        insert_event(&client, id, n, if n == 1 { 300_000 } else { 10 }).await;
    }
    ids
}

/// One event of aggregate `agg-7-0` in its own transaction, `pad` bytes of padding.
async fn insert_event(client: &tokio_postgres::Client, id: &str, seq: usize, pad: usize) {
    client
        .batch_execute(&format!(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('{id}', 'order', 'agg-7-0', 'OrderChanged', jsonb_build_object('seq', {seq}, 'pad', repeat('x', {pad})))"
        ))
        .await
        .unwrap();
}

const SMALL_LIMIT: &str = "[kafka.properties]\n\"message.max.bytes\" = \"100000\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    let env = Env::start(SMALL_LIMIT);
    let mut outboxd = env.spawn_streaming();
    let before = env.confirmed().await;
    let ids = insert_with_a_huge_middle(&env).await;
    let status = outboxd.wait(Duration::from_secs(60));
    let log = outboxd.log();
    assert!(!status.success(), "must exit non-zero; log:\n{log}");
    assert!(
        log.contains(&format!("id={}", ids[1])) && log.contains("commit LSN"),
        "log:\n{log}"
    );
    assert!(log.contains("public.outbox"), "names the table; log:\n{log}");
    // Only the first event's transaction may be acknowledged.
    let read = env.read(&env.topic, 1).await;
    assert_eq!(
        read.iter().map(|r| r.header("id").unwrap()).collect::<Vec<_>>(),
        [ids[0].as_str()]
    );
    let failed_commit = failed_commit_lsn(&log);
    let confirmed = env.confirmed().await;
    assert!(
        confirmed > before && confirmed <= failed_commit,
        "slot at {confirmed}, failed commit {failed_commit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_record_with_dead_letter_goes_to_the_dlq_and_later_events_flow() {
    let env = Env::start(SMALL_LIMIT);
    // The policy by environment variable this time.
    let mut outboxd = env.spawn_with_env(&[("OUTBOXD_KAFKA_ON_PERMANENT_ERROR", "dead-letter")]);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    let ids = insert_with_a_huge_middle(&env).await;
    let read = env.read(&env.topic, 2).await;
    assert_eq!(
        read.iter().map(|r| r.header("id").unwrap()).collect::<Vec<_>>(),
        [ids[0].as_str(), ids[2].as_str()]
    );
    let dlq = env.read("outboxd.dlq", 1).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("id"), Some(ids[1].as_str()));
    assert!(
        dlq[0].header("outboxd.error").unwrap().contains("too large"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(dlq[0].header("outboxd.original_topic"), Some(env.topic.as_str()));
    assert_eq!(dlq[0].key_str(), "agg-7-0");
    // Everything, the dead-lettered transaction included, is acknowledged.
    let last: Lsn = read[1].header("outboxd.lsn").unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.confirmed().await <= last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not acknowledged past the DLQ'd event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outboxd.terminate();
}

/// Found in review: a dead-letter record that failed too was dead-lettered
/// again, and again — the run never stopped and acking stalled for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_that_fails_too_stops_the_run_instead_of_looping() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let env = Env::start(SMALL_LIMIT);
    let mut outboxd = env.spawn_with_env(&[("OUTBOXD_KAFKA_ON_PERMANENT_ERROR", "dead-letter")]);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    let client = env.pg.connect().await.unwrap();
    let ids: Vec<String> = (0..2).map(|n| event_id(7, n)).collect();
    insert_event(&client, &ids[0], 0, 10).await;
    assert_eq!(env.read(&env.topic, 1).await.len(), 1);
    let before = env.confirmed().await;
    // The too-large record fails in the producer, before any request; the next
    // produce request is the dead-letter record's, and the broker refuses it.
    env.mock().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    insert_event(&client, &ids[1], 1, 300_000).await;
    let status = outboxd.wait(Duration::from_secs(60));
    let log = outboxd.log();
    assert!(!status.success(), "must exit non-zero; log:\n{log}");
    assert!(
        log.contains(&format!("id={}", ids[1])) && log.contains("dead-lettering to outboxd.dlq failed too"),
        "log:\n{log}"
    );
    assert_eq!(log.matches("record dead-lettered").count(), 1, "log:\n{log}");
    assert_eq!(env.read("outboxd.dlq", 0).await.len(), 0);
    let after = env.confirmed().await;
    let failed_commit = failed_commit_lsn(&log);
    assert!(
        after >= before && after <= failed_commit,
        "slot at {after}, failed commit {failed_commit}"
    );
}

/// Found in review: a `bytea` payload went out as its hex text (`\x00ff…`)
/// instead of the bytes the application stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_payload_is_sent_as_the_stored_bytes_not_hex_text() {
    let env = Env::start("");
    let client = env.pg.connect().await.unwrap();
    client
        .batch_execute(
            "alter table outbox alter column payload type bytea using convert_to(payload::text, 'UTF8')",
        )
        .await
        .unwrap();
    let outboxd = env.spawn_streaming();
    // Not UTF-8, a NUL, a backslash and every byte value once.
    let stored: Vec<Vec<u8>> = vec![
        vec![0x00, 0xff, 0x80, 0xc3, 0x28, b'\\', b'x', b'0'],
        (0..=255u8).collect(),
    ];
    let ids: Vec<String> = (0..stored.len() as u64).map(|n| event_id(9, n)).collect();
    for (id, bytes) in ids.iter().zip(&stored) {
        client
            .execute(
                "insert into outbox (id, aggregatetype, aggregateid, type, payload) \
                 values ($1::text::uuid, 'order', 'agg-9', 'OrderChanged', $2)",
                &[id, bytes],
            )
            .await
            .unwrap();
    }
    let read = env.read(&env.topic, stored.len()).await;
    let got: Vec<(&str, Option<&[u8]>)> = read
        .iter()
        .map(|r| (r.header("id").unwrap(), r.value.as_deref()))
        .collect();
    let want: Vec<(&str, Option<&[u8]>)> = ids
        .iter()
        .zip(&stored)
        .map(|(id, bytes)| (id.as_str(), Some(bytes.as_slice())))
        .collect();
    assert_eq!(got, want);
    outboxd.terminate();
}
