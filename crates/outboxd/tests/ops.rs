//! The operator surface of a running outboxd: metrics and health.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use testkit::StopMode;

use crate::support::*;

/// A GET over plain HTTP/1.1; returns (status, body).
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric line starting with `prefix` (0 if absent).
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn admin_address(outboxd: &mut Outboxd) -> String {
    outboxd.wait_for_log("admin http listening", Duration::from_secs(30));
    let log = outboxd.log();
    let line = log.lines().find(|l| l.contains("admin http listening")).unwrap();
    line.split("address=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Polls `/readyz` until its status is `want`; returns how long it took.
fn wait_ready(address: &str, want: u16, timeout: Duration) -> (Duration, String) {
    let start = Instant::now();
    loop {
        let (status, body) = get(address, "/readyz");
        if status == want {
            return (start.elapsed(), body);
        }
        assert!(
            start.elapsed() < timeout,
            "/readyz stayed {status} ({body}) for {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_rise_with_traffic_and_readyz_reports_stalls() {
    let env = Env::start("");
    let mut outboxd = env.spawn();
    let address = admin_address(&mut outboxd);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_owned()));
    tokio::task::block_in_place(|| wait_ready(&address, 200, Duration::from_secs(10)));

    let (_, before) = get(&address, "/metrics");
    let events_before = metric(&before, "outboxd_events_total{topic=\"outbox.event.order\"}");
    let written = writer(
        env.pg.config("postgres", "postgres"),
        0,
        100,
        1,
        10,
        Duration::ZERO,
    )
    .await;
    env.read(&env.topic, written.len()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, after) = get(&address, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&after, "outboxd_events_total{topic=\"outbox.event.order\"}") - events_before,
        100.0
    );
    assert!(metric(&after, "outboxd_event_bytes_total{topic=\"outbox.event.order\"}") > 100.0 * 200.0);
    assert!(
        metric(&after, "outboxd_commit_to_ack_seconds_count") >= 100.0,
        "{after}"
    );
    assert!(metric(&after, "outboxd_acked_lsn") > 0.0);
    assert!(metric(&after, "outboxd_received_lsn") >= metric(&after, "outboxd_acked_lsn"));
    assert_eq!(metric(&after, "outboxd_in_flight_records"), 0.0);
    eprintln!(
        "{}",
        after
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Broker down with records in flight: not ready within two thresholds (1 s each, checked every second).
    env.mock().broker_down(1).unwrap();
    let _ = writer(env.pg.config("postgres", "postgres"), 1, 20, 1, 5, Duration::ZERO).await;
    let (took, body) = tokio::task::block_in_place(|| wait_ready(&address, 503, Duration::from_secs(10)));
    eprintln!("broker down: not ready after {took:?}: {body}");
    assert!(body.contains("delivery stalled"), "{body}");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    env.mock().broker_up(1).unwrap();
    tokio::task::block_in_place(|| wait_ready(&address, 200, Duration::from_secs(30)));

    // Postgres gone: the walsender is killed and reconnects fail.
    let stopped = Instant::now();
    tokio::task::block_in_place(|| env.pg.stop(StopMode::Fast)).unwrap();
    let (took, body) = tokio::task::block_in_place(|| wait_ready(&address, 503, Duration::from_secs(10)));
    eprintln!(
        "postgres down: not ready after {took:?} ({:?} after the stop began): {body}",
        stopped.elapsed()
    );
    assert!(body.contains("replication stalled"), "{body}");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    tokio::task::block_in_place(|| env.pg.start_again()).unwrap();
    tokio::task::block_in_place(|| wait_ready(&address, 200, Duration::from_secs(30)));
    let (_, last) = get(&address, "/metrics");
    assert!(metric(&last, "outboxd_reconnects_total") >= 1.0, "{last}");

    outboxd.terminate();
}

fn output_of(mut command: std::process::Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn checkpoint(env: &Env) -> pgoutput::Lsn {
    let text = std::fs::read_to_string(env.checkpoint_path()).unwrap_or_default();
    text.lines().nth(1).map_or(pgoutput::Lsn::ZERO, |l| {
        l.trim_start_matches("delivered_end_lsn = ").parse().unwrap()
    })
}

async fn wait_checkpoint_past(env: &Env, lsn: pgoutput::Lsn) -> pgoutput::Lsn {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = checkpoint(env).await;
        if c > lsn {
            return c;
        }
        assert!(Instant::now() < deadline, "checkpoint stuck at {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_saved_lsn_republishes_exactly_the_later_events() {
    // An hour of retention: the slot stays where it was, the checkpoint moves on.
    let env = Env::start("[retention]\nduration_ms = 3600000\n");
    env.create_topic("replayed", 1);
    env.create_topic("dry", 1);
    let slot_start = env.confirmed().await;
    let outboxd = env.spawn_streaming();
    let pg = || env.pg.config("postgres", "postgres");
    let first = writer(pg(), 0, 10, 1, 3, Duration::ZERO).await;
    env.read(&env.topic, 10).await;
    // The checkpoint is written at most once a second: let it cover all ten.
    wait_checkpoint_past(&env, slot_start).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let saved = checkpoint(&env).await;
    let later = writer(pg(), 1, 15, 1, 3, Duration::ZERO).await;
    let all = env.read(&env.topic, 25).await;
    assert_eq!(env.confirmed().await, slot_start, "retention holds the slot");

    // Dry run: lists the 15 later events, publishes nothing.
    let (ok, text) = output_of(env.command(&[
        "replay",
        "--from",
        &saved.to_string(),
        "--topic-override",
        "dry",
        "--dry-run",
    ]));
    assert!(ok, "{text}");
    let listed: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("would re-publish ") && l.split_whitespace().nth(2).is_some_and(|t| t.contains('/'))
        })
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(
        listed,
        later.iter().map(String::as_str).collect::<Vec<_>>(),
        "{text}"
    );
    assert_eq!(env.read("dry", 0).await.len(), 0);

    // The replay itself, while the service keeps running.
    let (ok, text) = output_of(env.command(&[
        "replay",
        "--from",
        &saved.to_string(),
        "--topic-override",
        "replayed",
    ]));
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "re-published 15 events committed after {saved}; the broker acknowledged all 15"
        )),
        "{text}"
    );
    let replayed = env.read("replayed", 15).await;
    let ids: Vec<&str> = replayed.iter().map(|r| r.header("id").unwrap()).collect();
    assert_eq!(ids, later.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(replayed.iter().all(|r| r
        .header("outboxd.replay")
        .is_some_and(|v| v.starts_with(&format!("from={saved}")))));
    // Normal streaming got no duplicates from it.
    let main = env.read(&env.topic, 25).await;
    assert_eq!(main.len(), all.len());
    let _ = first;

    // Older than the slot: refused, naming the oldest replayable position.
    let (ok, text) = output_of(env.command(&["replay", "--from", "0/1"]));
    assert!(!ok);
    assert!(
        text.contains(&format!("the oldest replayable position is {slot_start}")),
        "{text}"
    );

    outboxd.terminate();
    // After the stop the slot still keeps the window; the checkpoint says what was delivered.
    assert_eq!(env.confirmed().await, slot_start);
    let delivered = checkpoint(&env).await;
    assert!(delivered > saved);

    // `status` shows the slot, the checkpoint with the last delivered event, and the window.
    let (ok, text) = output_of(env.command(&["status"]));
    assert!(ok, "{text}");
    eprintln!("{text}");
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with(' ')))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
            .to_owned()
    };
    assert_eq!(line("slot confirmed"), slot_start.to_string());
    assert!(line("checkpoint").starts_with(&format!("{delivered} (last delivered end LSN, written ")));
    let last_id = later.last().unwrap();
    let last = all
        .iter()
        .find(|r| r.header("id") == Some(last_id.as_str()))
        .unwrap();
    assert_eq!(
        line("last delivered event"),
        format!(
            "id {last_id} (outboxd.lsn {}, outboxd.index {})",
            last.header("outboxd.lsn").unwrap(),
            last.header("outboxd.index").unwrap()
        )
    );
    assert!(line("replay window").starts_with(&format!("{slot_start} .. {delivered} (")));

    // Found in review: a restart confirmed the checkpoint at once, and the
    // window was gone. Now the slot stays put; nothing is re-sent either.
    let outboxd = env.spawn_streaming();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.confirmed().await,
        slot_start,
        "a restart must keep the replay window"
    );
    assert_eq!(env.read(&env.topic, 25).await.len(), 25, "nothing re-sent");
    outboxd.terminate();
    assert_eq!(env.confirmed().await, slot_start);
}

/// Found in review: the checkpoint was trusted on any server, so one from
/// another cluster, from before a restore, or from the old timeline of a
/// failed-over primary skipped transactions that were never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_cluster_timeline_or_future_never_skips_events() {
    let env = Env::start("");
    let pg = env.pg.connect().await.unwrap();
    let system_id: String = pg
        .query_one("select system_identifier::text from pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);
    // Three events outboxd has not seen, and a checkpoint past them.
    let mut written = writer(env.pg.config("postgres", "postgres"), 0, 3, 1, 1, Duration::ZERO).await;
    let current: pgoutput::Lsn = pg
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let write_checkpoint = |lsn: pgoutput::Lsn, system: &str, timeline: u32| {
        std::fs::write(
            env.checkpoint_path(),
            format!(
                "outboxd-checkpoint v1\ndelivered_end_lsn = {lsn}\nwritten_at_unix = 0\n\
                 system_identifier = {system}\ntimeline = {timeline}\n"
            ),
        )
        .unwrap()
    };

    write_checkpoint(current, "1234567", 1);
    let (ok, text) = output_of(env.command(&["run"]));
    assert!(!ok, "{text}");
    assert!(
        text.contains("belongs to another PostgreSQL cluster (system identifier 1234567; this server is")
            && text.contains(&system_id),
        "{text}"
    );

    write_checkpoint(pgoutput::Lsn::new(current.as_u64() + (1 << 32)), &system_id, 1);
    let (ok, text) = output_of(env.command(&["run"]));
    assert!(!ok, "{text}");
    assert!(text.contains("ahead of this server's WAL"), "{text}");

    // Another timeline: streaming starts at the slot and the events are sent.
    write_checkpoint(current, &system_id, 7);
    let outboxd = env.spawn_streaming();
    let mut read: Vec<String> = env
        .read(&env.topic, 3)
        .await
        .iter()
        .map(|r| r.header("id").unwrap().to_owned())
        .collect();
    read.sort();
    written.sort();
    assert_eq!(read, written);
    assert!(
        outboxd.log().contains("written on another timeline"),
        "{}",
        outboxd.log()
    );
    outboxd.terminate();
    let text = std::fs::read_to_string(env.checkpoint_path()).unwrap();
    assert!(
        text.contains(&format!("system_identifier = {system_id}\ntimeline = 1\n")),
        "the new checkpoint names this server: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_wal_level_and_missing_replication_with_fixes() {
    let env = Env::start("");
    let (ok, text) = output_of(env.command(&["check"]));
    assert!(ok, "a good setup passes: {text}");
    assert!(text.contains("ok    wal_level: logical"), "{text}");

    // A role without REPLICATION.
    env.pg
        .psql("create role plain login; grant select on outbox to plain;")
        .unwrap();
    let url = env.pg.url("plain", "postgres");
    let (ok, text) = output_of(env.command(&["--postgres-url", &url, "check"]));
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL  role: plain lacks the REPLICATION attribute"),
        "{text}"
    );
    assert!(text.contains("fix: ALTER ROLE \"plain\" REPLICATION"), "{text}");

    // A server with wal_level=replica.
    let replica = testkit::PgCluster::builder()
        .wal_level("replica")
        .start()
        .unwrap();
    let url = replica.url("postgres", "postgres");
    let (ok, text) = output_of(env.command(&["--postgres-url", &url, "check"]));
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL  wal_level: replica"), "{text}");
    assert!(text.contains("fix: set wal_level = logical"), "{text}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_an_idle_outbox_from_pinning_wal_in_a_busy_database() {
    let env = Env::start("[heartbeat]\ninterval_ms = 200\n");
    env.pg
        .psql("create table busy (id serial primary key, note text)")
        .unwrap();
    let outboxd = env.spawn_streaming();
    let client = env.pg.connect().await.unwrap();
    let lsn = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
                .parse::<pgoutput::Lsn>()
                .unwrap()
        }
    };
    let start = lsn("select pg_current_wal_lsn()::text").await;
    let mut worst_lag = 0u64;
    for _ in 0..20 {
        client
            .batch_execute("insert into busy (note) select repeat('x', 200) from generate_series(1, 5000)")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let current = lsn("select pg_current_wal_lsn()::text").await;
        let confirmed = env.confirmed().await;
        worst_lag = worst_lag.max(current.as_u64() - confirmed.as_u64());
    }
    let written = lsn("select pg_current_wal_lsn()::text").await.as_u64() - start.as_u64();
    eprintln!(
        "busy table wrote {} MiB of WAL; the slot was never more than {} KiB behind",
        written >> 20,
        worst_lag >> 10
    );
    assert!(written > 20 << 20, "the busy table must write real WAL");
    assert!(
        worst_lag < 4 << 20,
        "slot lagged {worst_lag} bytes behind an idle outbox"
    );
    assert_eq!(
        env.read(&env.topic, 0).await.len(),
        0,
        "heartbeats are never forwarded"
    );
    outboxd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_only_delivered_rows() {
    let env = Env::start("[cleanup]\ninterval_ms = 300\nolder_than_ms = 0\nbatch_size = 7\n");
    let outboxd = env.spawn_streaming();
    let client = env.pg.connect().await.unwrap();
    let count = || async {
        client
            .query_one("select count(*) from outbox", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let delivered = writer(env.pg.config("postgres", "postgres"), 0, 20, 1, 4, Duration::ZERO).await;
    env.read(&env.topic, delivered.len()).await;
    // With the broker down, new rows are committed but not delivered.
    env.mock().broker_down(1).unwrap();
    let _pending = writer(env.pg.config("postgres", "postgres"), 1, 10, 1, 4, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count().await > 10 {
        assert!(
            Instant::now() < deadline,
            "delivered rows were not cleaned up ({} left)",
            count().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several more rounds: the undelivered rows stay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left: Vec<String> = client
        .query("select id::text from outbox order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, (0..10).map(|n| event_id(1, n)).collect::<Vec<_>>());
    // Once delivered, they go too.
    env.mock().broker_up(1).unwrap();
    env.read(&env.topic, 30).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count().await > 0 {
        assert!(
            Instant::now() < deadline,
            "rows left after delivery: {}",
            count().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outboxd.terminate();
}

fn sql_file(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../sql")
            .join(name),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_files_apply_twice_give_a_least_privilege_role_and_a_working_tableless_outbox() {
    let pg = testkit::PgCluster::start().unwrap();
    let role = format!("\\set outboxd_password 'secret'\n{}", sql_file("03_role.sql"));
    for _ in 0..2 {
        for file in ["01_outbox_table.sql", "02_publication.sql", "04_cleanup.sql"] {
            pg.psql(&sql_file(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        pg.psql(&role).unwrap();
    }
    let client = pg.connect().await.unwrap();
    let row = client
        .query_one(
            "select rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole,
                    has_table_privilege('outboxd', 'public.outbox', 'select'),
                    has_table_privilege('outboxd', 'public.outbox', 'insert'),
                    has_table_privilege('outboxd', 'public.outbox', 'delete')
               from pg_roles where rolname = 'outboxd'",
            &[],
        )
        .await
        .unwrap();
    let flags: Vec<bool> = (0..8).map(|i| row.get(i)).collect();
    assert_eq!(flags, [true, true, false, false, false, true, false, false]);
    let publishes: (bool, bool) = client
        .query_one("select pubinsert, pubupdate or pubdelete or pubtruncate from pg_publication where pubname = 'outboxd'", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(publishes, (true, false));

    // Cleanup: only rows older than the retention go; too short a retention is refused.
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload, created_at)
             select gen_random_uuid(), 'order', 'a', 'T', '{}', now() - make_interval(hours => h)
               from generate_series(1, 5) h",
        )
        .await
        .unwrap();
    let deleted: i64 = client
        .query_one("select outboxd_cleanup(interval '3 hours 30 minutes', 1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 2, "rows 4 and 5 hours old");
    assert!(client
        .query_one("select outboxd_cleanup(interval '1 minute')", &[])
        .await
        .is_err());

    // The table-less example, streamed by outboxd with message_prefix = "outboxd".
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic("outbox.event.order", 1, 1).unwrap();
    let client_slot = pg.connect().await.unwrap();
    pg_replication::catalog::create_slot(&client_slot, "outboxd")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outboxd.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres]\nurl = \"{}\"\nmessage_prefix = \"outboxd\"\n[kafka]\nbrokers = \"{}\"\n\
             [checkpoint]\npath = \"{}\"\n[admin]\nlisten = \"\"\n",
            pg.url("outboxd", "postgres"),
            kafka.bootstrap_servers(),
            dir.path().join("cp").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    pg.psql(&sql_file("05_tableless_outbox.sql")).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let read = tokio::task::spawn_blocking(move || {
        testkit::kafka::read_topic(
            &bootstrap,
            "outbox.event.order",
            1,
            Duration::from_millis(500),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].key_str(), "42");
    assert_eq!(read[0].header("type"), Some("OrderCreated"));
    let payload: serde_json::Value = serde_json::from_slice(read[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(payload["amount_cents"], 1999);
}

/// Found in review: an instance that found the slot active (another
/// instance streaming) retried with backoff and ignored SIGTERM until it was
/// killed, so every rolling deploy waited out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_slot_is_active_elsewhere_exits_zero_within_a_second() {
    let env = Env::start("");
    let active = env.spawn_streaming();
    let mut second = env.spawn();
    tokio::task::block_in_place(|| {
        second.wait_for_log("cannot start replication yet, retrying", Duration::from_secs(30))
    });
    let asked = std::time::Instant::now();
    second.signal("TERM");
    let status = tokio::task::block_in_place(|| second.wait(Duration::from_secs(10)));
    let took = asked.elapsed();
    eprintln!("the waiting instance exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "exit {status}; log:\n{}", second.log());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(second
        .log()
        .contains("shutdown requested while connecting to the slot"));
    active.terminate();
}
