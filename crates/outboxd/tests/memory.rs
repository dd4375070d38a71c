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

/// Waits until the peak RSS of `pid` has not grown for `quiet` (at most
/// `limit`); returns it.
async fn settled_peak(pid: u32, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut peak = peak_rss(pid);
    let mut since = Instant::now();
    while since.elapsed() < quiet && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = peak_rss(pid);
        if now > peak {
            peak = now;
            since = Instant::now();
        }
    }
    peak
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
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
    let peak = settled_peak(outboxd.pid(), Duration::from_secs(8), Duration::from_secs(90)).await;
    outboxd.kill9();

    // The buffers, a few rows in flight between them (the frame being
    // decoded, the event being mapped, the record being sent, each possibly
    // copied once), and the process at rest.
    let bound = BUFFER_BYTES + QUEUE_KBYTES * 1024 + 8 * ROW_BYTES as u64 + idle + 16 * 1024 * 1024;
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

/// Found in review: through a real broker slower than PostgreSQL, outboxd
/// reached 62–137 MiB where the mock run stayed under 20 MiB. The producer's
/// queue fills up there; `queue.buffering.max.kbytes` counts only values and
/// keys, and librdkafka's bookkeeping and headers per record (about 1 KB in
/// all for a 300-byte row) made 100,000 queued records the real bound. A
/// broker that is down fills the queue the same way, measured here with the
/// default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_with_small_rows_keeps_peak_rss_under_64_mib_by_default() {
    let env = Env::start("");
    let mut outboxd = env.spawn_streaming();
    env.mock().broker_down(1).unwrap();
    env.pg
        .psql(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload)
             select gen_random_uuid(), 'order', 'agg-' || (n % 100), 'Small',
                    jsonb_build_object('n', n, 'pad', repeat('x', 250))
               from generate_series(1, 150000) n",
        )
        .unwrap();
    let peak = settled_peak(outboxd.pid(), Duration::from_secs(8), Duration::from_secs(90)).await;
    outboxd.kill9();
    println!(
        "peak RSS {:.1} MiB with the broker down (150,000 rows of ~300 bytes, default settings)",
        mib(peak)
    );
    assert!(peak < 64 * 1024 * 1024, "peak RSS {:.1} MiB", mib(peak));
}
