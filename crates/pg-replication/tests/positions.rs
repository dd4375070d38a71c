//! Acknowledgements reach the slot exactly, never go backwards, and survive
//! reconnects and restarts without loss.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use pg_replication::{catalog, ReplicationEvent, ReplicationStream};
use testkit::StopMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_reaches_the_slot_exactly_and_never_goes_backwards() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let observer = cluster.connect().await.unwrap();
    let start = confirmed_flush(&observer).await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let ack = stream.ack_handle();

    insert_tx(&mut app, &["a".to_owned()]).await;
    insert_tx(&mut app, &["b".to_owned()]).await;
    let first = next_tx(&mut stream).await;
    let second = next_tx(&mut stream).await;

    // Nothing acked: the slot stays where it was, however long we wait.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(confirmed_flush(&observer).await, start);

    // Ack the first: with the second in flight the slot must land exactly on it.
    ack.ack(first.commit.end_lsn);
    wait_for_confirmed(&observer, first.commit.end_lsn).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(confirmed_flush(&observer).await, first.commit.end_lsn);

    // A smaller ack changes nothing.
    ack.ack(start);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(confirmed_flush(&observer).await, first.commit.end_lsn);
    stream.shutdown().await.unwrap();

    // A new stream resumes after the acked transaction: the second comes again, the first never.
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let again = next_tx(&mut stream).await;
    assert_eq!(again.aggregate_ids(), ["b"]);
    assert_eq!(again.commit.end_lsn, second.commit.end_lsn);
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_final_acked_position() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let observer = cluster.connect().await.unwrap();
    let mut config = stream_config(&cluster);
    config.status_interval = Duration::from_secs(3600);
    let mut stream = ReplicationStream::start(config).await.unwrap();
    insert_tx(&mut app, &["a".to_owned()]).await;
    insert_tx(&mut app, &["b".to_owned()]).await;
    let first = next_tx(&mut stream).await;
    let _second = next_tx(&mut stream).await;
    stream.ack_handle().ack(first.commit.end_lsn);
    stream.shutdown().await.unwrap();
    assert_eq!(confirmed_flush(&observer).await, first.commit.end_lsn);
}

/// Streams `batches` of transactions while `disrupt` runs between them;
/// acks each commit; returns (ids received in order, reconnects).
async fn stream_through<F>(disrupt: F) -> (Vec<String>, Vec<String>, u64)
where
    F: Fn(&testkit::PgCluster),
{
    let cluster = cluster_with_outbox().await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let ack = stream.ack_handle();
    let mut written = Vec::new();
    let mut received = Vec::new();
    for batch in 0..3 {
        let mut app = cluster.connect().await.unwrap();
        for t in 0..20 {
            let ids: Vec<String> = (0..5).map(|i| format!("{batch}-{t}-{i}")).collect();
            insert_tx(&mut app, &ids).await;
            written.extend(ids);
        }
        drop(app);
        // Read half of what was written, then disrupt mid-stream.
        while received.len() < written.len() - 50 {
            let tx = next_tx(&mut stream).await;
            received.extend(tx.aggregate_ids());
            ack.ack(tx.commit.end_lsn);
        }
        // The harness blocks; keep the stream's runtime thread free meanwhile.
        tokio::task::block_in_place(|| disrupt(&cluster));
    }
    while received.len() < written.len() {
        let tx = next_tx(&mut stream).await;
        received.extend(tx.aggregate_ids());
        ack.ack(tx.commit.end_lsn);
    }
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    let reconnects = stream.stats().reconnects();
    stream.shutdown().await.unwrap();
    (written, received, reconnects)
}

fn assert_no_loss_no_duplicates(written: &[String], received: &[String]) {
    let unique: HashSet<&String> = received.iter().collect();
    let lost = written.iter().filter(|id| !unique.contains(id)).count();
    let duplicates = received.len() - unique.len();
    eprintln!(
        "written {}, received {}, lost {lost}, duplicates {duplicates}",
        written.len(),
        received.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0);
    assert_eq!(received, written, "commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_mid_stream_reconnects_without_loss() {
    let (written, received, reconnects) = stream_through(|cluster| {
        cluster
            .psql("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'outboxd'")
            .unwrap();
    })
    .await;
    assert!(reconnects >= 3, "reconnects {reconnects}");
    assert_no_loss_no_duplicates(&written, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_restart_mid_stream_reconnects_without_loss() {
    let (written, received, reconnects) =
        stream_through(|cluster| cluster.restart(StopMode::Fast).unwrap()).await;
    assert!(reconnects >= 3, "reconnects {reconnects}");
    assert_no_loss_no_duplicates(&written, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immediate_restart_mid_stream_reconnects_without_loss() {
    let (written, received, reconnects) =
        stream_through(|cluster| cluster.restart(StopMode::Immediate).unwrap()).await;
    assert!(reconnects >= 3, "reconnects {reconnects}");
    assert_no_loss_no_duplicates(&written, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_wal_sender_timeout_without_acks_does_not_drop_the_connection() {
    let cluster = cluster_with_outbox().await;
    cluster.set_parameter("wal_sender_timeout", "2s").unwrap();
    let mut app = cluster.connect().await.unwrap();
    let mut config = stream_config(&cluster);
    config.status_interval = Duration::from_secs(60); // capped to 1 s by the 2 s timeout
    let mut stream = ReplicationStream::start(config).await.unwrap();
    insert_tx(&mut app, &["a".to_owned()]).await;
    let first = next_tx(&mut stream).await;
    // 10 s without reading or acking anything.
    insert_tx(&mut app, &["b".to_owned()]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = next_tx(&mut stream).await;
    assert_eq!(second.aggregate_ids(), ["b"]);
    assert!(second.commit_lsn > first.commit_lsn);
    let stats = stream.stats();
    assert_eq!(stats.reconnects(), 0, "the walsender timed us out");
    assert!(
        stats.status_updates() >= 9,
        "status updates {}",
        stats.status_updates()
    );
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbox_in_a_busy_database_does_not_pin_wal() {
    let cluster = cluster_with_outbox().await;
    let observer = cluster.connect().await.unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let start = confirmed_flush(&observer).await;
    for _ in 0..20 {
        cluster
            .psql("insert into orders (note) select 'busy' from generate_series(1, 100)")
            .unwrap();
    }
    let after_writes = current_wal_lsn(&observer).await;
    let confirmed = wait_for_confirmed(&observer, after_writes).await;
    assert!(confirmed > start);
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_advance_waits_for_unacked_transactions() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let observer = cluster.connect().await.unwrap();
    let start = confirmed_flush(&observer).await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    insert_tx(&mut app, &["unacked".to_owned()]).await;
    let tx = next_tx(&mut stream).await;
    for _ in 0..5 {
        cluster.psql("insert into orders (note) values ('busy')").unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        confirmed_flush(&observer).await,
        start,
        "moved past an unacked transaction"
    );
    stream.ack_handle().ack(tx.commit.end_lsn);
    let after = current_wal_lsn(&observer).await;
    wait_for_confirmed(&observer, after).await;
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acked_before_a_restart_is_yielded_again() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let observer = cluster.connect().await.unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    for i in 0..10 {
        insert_tx(&mut app, &[format!("t{i}")]).await;
    }
    let mut acked = None;
    for i in 0..10 {
        let tx = next_tx(&mut stream).await;
        if i == 5 {
            stream.ack_handle().ack(tx.commit.end_lsn);
            acked = Some(tx.commit.end_lsn);
        }
    }
    let acked = acked.unwrap();
    wait_for_confirmed(&observer, acked).await;
    drop(stream); // a crash: no shutdown
    cluster.psql("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'outboxd' and active_pid is not null").unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let mut again = Vec::new();
    for _ in 0..4 {
        let tx = next_tx(&mut stream).await;
        assert!(
            tx.commit.end_lsn > acked,
            "{} was acked and yielded again",
            tx.commit.end_lsn
        );
        again.extend(tx.aggregate_ids());
    }
    assert_eq!(again, ["t6", "t7", "t8", "t9"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_slot_is_a_definite_error_naming_setup() {
    let cluster = cluster_with_outbox().await;
    let mut config = stream_config(&cluster);
    config.slot = "does_not_exist".into();
    let err = ReplicationStream::start(config).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("\"does_not_exist\" does not exist"), "{message}");
    assert!(message.contains("outboxd setup"), "{message}");
    let client = cluster.connect().await.unwrap();
    assert!(
        catalog::read_slot(&client, "does_not_exist")
            .await
            .unwrap()
            .is_none(),
        "a slot was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_a_definite_error_naming_the_fix() {
    let cluster = testkit::PgCluster::builder()
        .wal_level("replica")
        .start()
        .unwrap();
    cluster.psql(SCHEMA).unwrap();
    let err = ReplicationStream::start(stream_config(&cluster))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("wal_level is \"replica\""), "{message}");
    assert!(message.contains("wal_level = logical"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_not_read_ahead_of_the_consumer() {
    let cluster = cluster_with_outbox().await;
    let mut config = stream_config(&cluster);
    config.channel_capacity = 16;
    let mut stream = ReplicationStream::start(config).await.unwrap();
    cluster
        .psql(
            "insert into outbox (aggregatetype, aggregateid, type, payload)
               select 'o', 'agg-' || i, 't', '{}' from generate_series(1, 5000) i",
        )
        .unwrap();
    assert!(matches!(
        next_event(&mut stream).await,
        ReplicationEvent::Begin(_)
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frames = stream.stats().frames();
    // Relation + Begin + at most capacity + two pending inserts (+ keepalives).
    assert!(frames < 40, "read {frames} frames ahead of a stalled consumer");
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_slot_is_refused_because_it_sends_uncommitted_work() {
    let cluster = cluster_with_outbox().await;
    cluster
        .psql("select pg_create_logical_replication_slot('prepared', 'pgoutput', false, true)")
        .unwrap();
    let mut config = stream_config(&cluster);
    config.slot = "prepared".into();
    let err = ReplicationStream::start(config).await.unwrap_err();
    assert!(err.to_string().contains("has two_phase enabled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumer_does_not_block_a_fast_shutdown_of_postgres() {
    // A walsender shutting down waits until the client confirms everything it
    // sent. With wal_sender_timeout off, nothing but the client can end that
    // wait: pg_ctl gives up after 60 s unless the stream lets go.
    let cluster = cluster_with_outbox().await;
    cluster.set_parameter("wal_sender_timeout", "0").unwrap();
    let mut app = cluster.connect().await.unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    insert_tx(&mut app, &["a".to_owned()]).await;
    let unacked = next_tx(&mut stream).await;
    drop(app);
    let stats = stream.stats();
    tokio::task::block_in_place(|| cluster.restart(StopMode::Fast)).expect("fast shutdown completes");
    assert!(stats.reconnects() >= 1);
    // The stream resumes seamlessly: what it already handed out is not
    // yielded again (the consumer holds it), new work follows, acks still land.
    let mut app = cluster.connect().await.unwrap();
    insert_tx(&mut app, &["b".to_owned()]).await;
    let next = next_tx(&mut stream).await;
    assert_eq!(next.aggregate_ids(), ["b"]);
    assert!(next.commit_lsn > unacked.commit.end_lsn);
    let observer = cluster.connect().await.unwrap();
    stream.ack_handle().ack(next.commit.end_lsn);
    wait_for_confirmed(&observer, next.commit.end_lsn).await;
    stream.shutdown().await.unwrap();
}

/// Network loss, without stopping the server: every connection through a
/// fault proxy is cut mid-stream, three times, and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_mid_stream_reconnects_without_loss() {
    let cluster = cluster_with_outbox().await;
    let proxy = testkit::FaultProxy::start(("127.0.0.1", cluster.port())).unwrap();
    let mut config = stream_config(&cluster);
    config.connection = format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port())
        .parse()
        .unwrap();
    let mut stream = ReplicationStream::start(config).await.unwrap();
    let ack = stream.ack_handle();
    let mut app = cluster.connect().await.unwrap();
    let mut written = Vec::new();
    let mut received = Vec::new();
    for batch in 0..3 {
        for t in 0..20 {
            let ids: Vec<String> = (0..5).map(|i| format!("{batch}-{t}-{i}")).collect();
            insert_tx(&mut app, &ids).await;
            written.extend(ids);
        }
        while received.len() < written.len() - 50 {
            let tx = next_tx(&mut stream).await;
            received.extend(tx.aggregate_ids());
            ack.ack(tx.commit.end_lsn);
        }
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.pass();
    }
    while received.len() < written.len() {
        let tx = next_tx(&mut stream).await;
        received.extend(tx.aggregate_ids());
        ack.ack(tx.commit.end_lsn);
    }
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    assert!(
        stream.stats().reconnects() >= 3,
        "reconnects {}",
        stream.stats().reconnects()
    );
    stream.shutdown().await.unwrap();
    assert_no_loss_no_duplicates(&written, &received);
}

/// Found in review: a server or network path that hangs without closing the
/// connection (here a proxy that accepts and relays nothing) left the
/// stream waiting forever, still "connected" and still sending status
/// updates into the void. Now silence past `wal_sender_timeout`, even after
/// asking for a reply, counts as a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_dropped_and_streaming_resumes_without_loss() {
    let cluster = testkit::PgCluster::builder()
        .setting("wal_sender_timeout", "2s")
        .start()
        .unwrap();
    cluster.psql(crate::support::SCHEMA).unwrap();
    let client = cluster.connect().await.unwrap();
    pg_replication::catalog::create_slot(&client, "outboxd")
        .await
        .unwrap();
    let proxy = testkit::FaultProxy::start(("127.0.0.1", cluster.port())).unwrap();
    let mut config = stream_config(&cluster);
    config.connection = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
        proxy.port()
    )
    .parse()
    .unwrap();
    let mut stream = ReplicationStream::start(config).await.unwrap();
    let mut app = cluster.connect().await.unwrap();
    insert_tx(&mut app, &["before".to_owned()]).await;
    let tx = next_tx(&mut stream).await;
    stream.ack_handle().ack(tx.commit.end_lsn);

    proxy.blackhole();
    insert_tx(&mut app, &["during".to_owned()]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream.stats().connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected 10 s into a black hole (wal_sender_timeout 2 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.pass();
    insert_tx(&mut app, &["after".to_owned()]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let tx = next_tx(&mut stream).await;
        ids.extend(tx.aggregate_ids());
        stream.ack_handle().ack(tx.commit.end_lsn);
    }
    assert_eq!(ids, ["during", "after"]);
    assert!(stream.stats().reconnects() >= 1);
    stream.shutdown().await.unwrap();
}
