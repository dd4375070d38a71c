//! The operator surface of a running outboxd: metrics and health.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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
    env.read(TOPIC, written.len()).await;
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
    env.kafka.broker_down(1).unwrap();
    let _ = writer(env.pg.config("postgres", "postgres"), 1, 20, 1, 5, Duration::ZERO).await;
    let (took, body) = tokio::task::block_in_place(|| wait_ready(&address, 503, Duration::from_secs(10)));
    eprintln!("broker down: not ready after {took:?}: {body}");
    assert!(body.contains("delivery stalled"), "{body}");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    env.kafka.broker_up(1).unwrap();
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

    outboxd.signal("TERM");
    assert!(
        outboxd.wait(Duration::from_secs(30)).success(),
        "log:\n{}",
        outboxd.log()
    );
}
