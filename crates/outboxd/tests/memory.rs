//! Memory while the broker is down: the rows outboxd reads ahead wait in
//! bounded buffers, whatever their size.

use std::time::{Duration, Instant};

use crate::support::Env;

/// Bytes of the payload of each row.
const ROW_BYTES: usize = 900_000;
const ROWS: usize = 2_000;

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// Found in review: the channel between the replication stream and the
/// pipeline held up to 1,024 events whatever their size, about 0.9 GB of
/// 900 KB rows while the broker was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_with_900_kb_rows_keeps_peak_rss_within_the_configured_buffers() {
    const BUFFER_BYTES: u64 = 8 * 1024 * 1024;
    const QUEUE_KBYTES: u64 = 16 * 1024;
    let mut env = Env::start(&format!(
        "[kafka.properties]\n\"queue.buffering.max.kbytes\" = \"{QUEUE_KBYTES}\"\n\"message.max.bytes\" = \"2000000\"\n"
    ));
    env.postgres_settings = format!("buffer_bytes = {BUFFER_BYTES}");
    let mut outboxd = env.spawn_streaming();
    env.mock().broker_down(1).unwrap();
    let idle = peak_rss(outboxd.pid());

    // Compressible payloads: 900 KB each on the wire, little on disk.
    env.pg
        .psql(&format!(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload)
             select gen_random_uuid(), 'order', 'agg-' || (n % 10), 'Big',
                    ('{{\"n\": ' || n || ', \"pad\": \"' || repeat('x', {ROW_BYTES}) || '\"}}')::jsonb
               from generate_series(1, {ROWS}) n"
        ))
        .unwrap();

    // Read ahead until the buffers are full: the peak stops growing.
    let start = Instant::now();
    let mut peak = peak_rss(outboxd.pid());
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(8) && start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = peak_rss(outboxd.pid());
        if now > peak {
            peak = now;
            since = Instant::now();
        }
    }
    outboxd.kill9();

    // The buffers, a few rows in flight between them (the frame being
    // decoded, the event being mapped, the record being sent, each possibly
    // copied once), and the process at rest.
    let bound = BUFFER_BYTES + QUEUE_KBYTES * 1024 + 8 * ROW_BYTES as u64 + idle + 16 * 1024 * 1024;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "peak RSS {:.1} MiB with the broker down ({ROWS} rows of {ROW_BYTES} bytes; postgres.buffer_bytes \
         {:.0} MiB, queue.buffering.max.kbytes {:.0} MiB, at rest {:.1} MiB, bound {:.1} MiB)",
        mib(peak),
        mib(BUFFER_BYTES),
        mib(QUEUE_KBYTES * 1024),
        mib(idle),
        mib(bound)
    );
    assert!(
        peak <= bound,
        "peak RSS {:.1} MiB over the bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );
}
