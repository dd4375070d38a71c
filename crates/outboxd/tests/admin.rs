//! The admin HTTP server under abuse: it must keep answering health checks
//! and keep its file descriptors bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// GET `/readyz` over a fresh connection; (status, how long it took).
fn readyz(address: &str) -> (u16, Duration) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, start.elapsed())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_connections_leave_readyz_answering_and_fds_bounded() {
    let env = Env::start("");
    let mut outboxd = env.spawn_streaming();
    outboxd.wait_for_log("admin http listening", Duration::from_secs(30));
    let log = outboxd.log();
    let address = log
        .lines()
        .find(|l| l.contains("admin http listening"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pid = outboxd.pid();
    let start = Instant::now();
    while readyz(&address).0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = open_fds(pid);

    // 2,000 clients that connect and never finish a request: half send
    // nothing, half the start of a header.
    let done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (address, done) = (address.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for i in 0..2000 {
                let addr = address.parse().unwrap();
                if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    if i % 2 == 1 {
                        let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n");
                    }
                    held.push(stream);
                }
            }
            done.store(true, Ordering::SeqCst);
            held
        })
    };
    let mut latencies = Vec::new();
    let mut most_fds = 0;
    let mut statuses = Vec::new();
    // Probe while the flood goes on, and 3 s after it is complete.
    let mut flood_done_at: Option<Instant> = None;
    loop {
        let (status, took) = readyz(&address);
        statuses.push(status);
        latencies.push(took);
        most_fds = most_fds.max(open_fds(pid));
        if done.load(Ordering::SeqCst) && flood_done_at.is_none() {
            flood_done_at = Some(Instant::now());
        }
        if flood_done_at.is_some_and(|at| at.elapsed() > Duration::from_secs(3)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = flood.join().unwrap();
    let after = open_fds(pid);
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    eprintln!(
        "admin flood: {} of 2000 connections opened; fds before {before}, most during {most_fds}, after {after}; \
         /readyz {} probes, p50 {:.1} ms, max {:.1} ms",
        held.len(),
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every probe answered ready: {statuses:?}"
    );
    assert!(max < Duration::from_secs(1), "slowest /readyz took {max:?}");
    let cap = outboxd::admin::MAX_CONNECTIONS;
    assert!(
        most_fds <= before + cap + 8,
        "fds grew from {before} to {most_fds} (cap {cap} connections)"
    );
    // The header-read and idle timeouts close what the clients still hold.
    let waited = Instant::now();
    let limit = outboxd::admin::IDLE_TIMEOUT + Duration::from_secs(10);
    while open_fds(pid) > before + 2 {
        assert!(
            waited.elapsed() < limit,
            "{} fds still open after {limit:?} (before the flood: {before})",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "admin flood: back to {} fds {:.1} s after the flood, with the clients' sockets still open",
        open_fds(pid),
        waited.elapsed().as_secs_f64()
    );
    assert_eq!(readyz(&address).0, 200);
    drop(held);
    outboxd.terminate();
}
