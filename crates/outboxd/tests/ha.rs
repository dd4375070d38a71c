//! Several instances on one slot: one leads (holds the lease and streams),
//! the others wait as standbys and take over when it goes away.

use std::time::{Duration, Instant};

use testkit::conformance::{self, format_lsn, Outboxd, Suite};

use crate::conformance::Kafka;
use crate::ops::{admin_address, get, metric};

fn suite() -> Suite<Kafka> {
    Suite::start(env!("CARGO_BIN_EXE_outboxd"), Kafka::start())
}

/// Starts an instance and waits until it says it is a standby.
fn standby(suite: &Suite<Kafka>) -> Outboxd {
    let mut outboxd = suite.spawn();
    tokio::task::block_in_place(|| {
        outboxd.wait_for_log(
            "standby: another instance holds the lease",
            Duration::from_secs(30),
        )
    });
    outboxd
}

/// Waits until the slot is confirmed past `lsn`; how long that took.
async fn confirmed_past(suite: &Suite<Kafka>, lsn: u64, timeout: Duration) -> Duration {
    let start = Instant::now();
    while suite.confirmed().await <= lsn {
        assert!(
            start.elapsed() < timeout,
            "the slot stayed at {} for {timeout:?}",
            format_lsn(lsn)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_the_standby_takes_over_within_seconds_and_loses_nothing() {
    let suite = suite();
    let leader = suite.spawn_streaming();
    let mut standby = standby(&suite);
    let address = tokio::task::block_in_place(|| admin_address(&mut standby));
    let (status, body) = get(&address, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(&address, "/healthz").0, 200);
    assert_eq!(metric(&get(&address, "/metrics").1, "outboxd_leader "), 0.0);
    let status = suite.command(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let lease = text.lines().find(|l| l.starts_with("lease")).unwrap_or_default();
    assert!(
        lease.contains("held by outboxd from 127.0.0.1 (server pid"),
        "{text}"
    );

    let writers = suite.spawn_writers(4, 750, 40, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut leader = leader;
    leader.kill9();
    let killed = Instant::now();
    let confirmed_at_kill = suite.confirmed().await;
    // The first delivery of the new leader moves the slot.
    confirmed_past(&suite, confirmed_at_kill, Duration::from_secs(30)).await;
    let takeover = killed.elapsed();
    let written = conformance::join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    // Nothing the slot had confirmed is sent again: every duplicate comes
    // from the window after the slot's position at the kill.
    let mut seen = std::collections::HashSet::new();
    let resent: Vec<u64> = read
        .iter()
        .filter(|r| !seen.insert(r.header("id").unwrap().to_owned()))
        .map(|r| r.commit_lsn())
        .collect();
    let window = read
        .iter()
        .filter(|r| r.commit_lsn() >= confirmed_at_kill)
        .count()
        - resent.len();
    eprintln!(
        "takeover: {:.2}s from kill -9 to the new leader's first acknowledged delivery; \
         {} duplicates, all committed at or after the slot's {} at the kill ({window} events were)",
        takeover.as_secs_f64(),
        f.duplicates,
        format_lsn(confirmed_at_kill)
    );
    assert_eq!((f.lost, f.order_violations), (0, 0));
    assert!(
        resent.iter().all(|lsn| *lsn >= confirmed_at_kill),
        "an acknowledged event was re-sent"
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}; the standby's log:\n{}",
        standby.log()
    );
    let metrics = get(&address, "/metrics").1;
    assert_eq!(metric(&metrics, "outboxd_leader "), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "outboxd_takeovers_total "), 1.0, "{metrics}");
    assert!(standby.log().contains("the lease is free: taking over"));
    standby.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_over_with_no_duplicates() {
    let suite = suite();
    let mut leader = suite.spawn_streaming();
    let standby = standby(&suite);
    let writers = suite.spawn_writers(4, 500, 40, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    leader.signal("TERM");
    let status = tokio::task::block_in_place(|| leader.wait(Duration::from_secs(30)));
    assert!(status.success(), "exit {status}; log:\n{}", leader.log());
    let written = conformance::join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    standby.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_two_instances_loses_nothing() {
    let suite = suite();
    let mut first = suite.spawn_streaming();
    let mut second = standby(&suite);
    let writers = suite.spawn_writers(4, 1000, 40, Duration::from_millis(5));
    // Restart each in turn while the writers write: first (the leader), then second.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        first.signal("TERM");
        let status = tokio::task::block_in_place(|| first.wait(Duration::from_secs(30)));
        assert!(status.success(), "exit {status}; log:\n{}", first.log());
        tokio::task::block_in_place(|| second.wait_for_log("streaming", Duration::from_secs(30)));
        // The restarted instance comes back as the standby.
        first = standby(&suite);
        std::mem::swap(&mut first, &mut second);
    }
    let written = conformance::join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    eprintln!("rolling restart: {f:?}");
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    first.terminate();
    second.terminate();
}

/// With `[checkpoint] store = "postgres"` the checkpoint is a row on the
/// primary, so an instance on another host (here: another checkpoint path
/// that stays empty) that takes over skips by what the old leader recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_checkpoint_in_postgres_the_new_leader_starts_from_the_old_leaders_checkpoint() {
    let suite = suite();
    // `setup` creates the table (from sql/06_checkpoint.sql) when the store is postgres.
    let setup = suite
        .command(&["setup"])
        .env("OUTBOXD_CHECKPOINT_STORE", "postgres")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&setup.stdout);
    assert!(
        setup.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    assert!(
        text.contains("checkpoint table outboxd_checkpoint: ready"),
        "{text}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let in_postgres = [("OUTBOXD_CHECKPOINT_STORE", "postgres")];
    let mut leader = suite.spawn_with_env(&in_postgres);
    tokio::task::block_in_place(|| leader.wait_for_log("streaming", Duration::from_secs(30)));
    let other_path = elsewhere.path().join("never-written").display().to_string();
    let mut standby = suite.spawn_with_env(&[
        ("OUTBOXD_CHECKPOINT_STORE", "postgres"),
        ("OUTBOXD_CHECKPOINT_PATH", other_path.as_str()),
    ]);
    tokio::task::block_in_place(|| {
        standby.wait_for_log(
            "standby: another instance holds the lease",
            Duration::from_secs(30),
        )
    });
    let writers = suite.spawn_writers(4, 500, 40, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    leader.kill9();
    let client = suite.pg.connect().await.unwrap();
    let row = client
        .query_one(
            "select delivered_end_lsn::text, system_identifier, database, slot from outboxd_checkpoint",
            &[],
        )
        .await
        .unwrap();
    let recorded: String = row.get(0);
    assert!(row.get::<_, Option<String>>(1).is_some_and(|id| !id.is_empty()));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("postgres"));
    assert_eq!(row.get::<_, String>(3), "outboxd");
    tokio::task::block_in_place(|| standby.wait_for_log("streaming", Duration::from_secs(30)));
    let log = standby.log();
    let line = log
        .lines()
        .find(|l| l.contains("outboxd::run: streaming"))
        .unwrap();
    assert!(
        line.contains(&format!("checkpoint={recorded}")),
        "the new leader must start from the recorded {recorded}: {line}"
    );
    let written = conformance::join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    eprintln!("checkpoint in postgres: the new leader started from {recorded}; {f:?}");
    assert_eq!((f.lost, f.order_violations), (0, 0));
    assert!(!elsewhere.path().join("never-written").exists());
    let status = suite
        .command(&["status"])
        .env("OUTBOXD_CHECKPOINT_STORE", "postgres")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("checkpoint row of slot \"outboxd\" in table outboxd_checkpoint"),
        "{text}"
    );
    standby.terminate();
}

/// The network between the leader and PostgreSQL is cut (the fault proxy
/// closes its connections and refuses new ones): the leader stops confirming,
/// the standby takes over, nothing is lost; when the network returns the old
/// leader comes back as a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_leaders_network_hands_over_to_the_standby_and_loses_nothing() {
    let suite = suite();
    let proxy = testkit::FaultProxy::start(("127.0.0.1", suite.pg.port())).unwrap();
    let through_proxy = format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port());
    let mut leader = suite.spawn_with_env(&[("OUTBOXD_POSTGRES_URL", through_proxy.as_str())]);
    tokio::task::block_in_place(|| leader.wait_for_log("streaming", Duration::from_secs(30)));
    let mut standby = standby(&suite);
    let writers = suite.spawn_writers(4, 600, 40, Duration::from_millis(3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    let cut = Instant::now();
    let confirmed_at_cut = suite.confirmed().await;
    tokio::task::block_in_place(|| {
        standby.wait_for_log("the lease is free: taking over", Duration::from_secs(60))
    });
    confirmed_past(&suite, confirmed_at_cut, Duration::from_secs(60)).await;
    let takeover = cut.elapsed();
    tokio::task::block_in_place(|| leader.wait_for_log("the lease may be lost", Duration::from_secs(30)));
    let written = conformance::join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    eprintln!(
        "network cut: the standby confirmed past the slot's {} {:.2}s after the cut; {f:?}",
        format_lsn(confirmed_at_cut),
        takeover.as_secs_f64()
    );
    assert_eq!((f.lost, f.order_violations), (0, 0));
    // The network returns: the old leader waits as a standby.
    proxy.pass();
    tokio::task::block_in_place(|| {
        leader.wait_for_log(
            "standby: another instance holds the lease",
            Duration::from_secs(60),
        )
    });
    leader.terminate();
    standby.terminate();
}
