//! BullMQ mode end to end: outboxd writes jobs into the machine's Redis (its
//! own BullMQ prefix, deleted afterwards), a stock BullMQ `Worker` (Node,
//! `tests/bullmq`, the npm package pinned there) processes them; outboxd is
//! killed with SIGKILL under load and restarted, so records are re-sent.
//! Every job must be processed exactly once (BullMQ's job id is the event id)
//! and, with one worker of concurrency 1 on the queue, in per-aggregate order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use testkit::conformance::{self, Broker, FailingEvent, Received, Suite};

use crate::support::unique;

/// The folder with BullMQ's package.json; `node_modules` there is git-ignored.
fn bullmq_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bullmq")
}

/// `npm ci` (the pinned versions) unless `.ci/run` already installed it.
fn install_bullmq() {
    let dir = bullmq_dir();
    if dir.join("node_modules/bullmq/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (Debian package npm) to install bullmq");
    assert!(status.success(), "npm ci in {}", dir.display());
}

struct BullMq {
    url: String,
    prefix: String,
    queue: String,
    out: tempfile::NamedTempFile,
    worker: std::sync::Mutex<Option<Child>>,
}

impl BullMq {
    fn start() -> Self {
        install_bullmq();
        let bull = BullMq {
            url: std::env::var("OUTBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("outboxd-test-bull-{}-{}", std::process::id(), unique()),
            queue: "outbox.event.order".into(),
            out: tempfile::NamedTempFile::new().unwrap(),
            worker: std::sync::Mutex::new(None),
        };
        let mut child = Command::new("node")
            .arg(bullmq_dir().join("worker.js"))
            .args([&bull.url, &bull.prefix, &bull.queue])
            .arg(bull.out.path())
            .current_dir(bullmq_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (Debian package nodejs)");
        // Wait for "worker ready".
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(line.contains("worker ready"), "the worker said {line:?}");
        // Keep draining it (errors would otherwise fill the pipe), to our stderr.
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
                eprintln!("bullmq worker: {line}");
            }
        });
        *bull.worker.lock().unwrap() = Some(child);
        bull
    }

    /// Processed jobs, one JSON object per line, in processing order.
    fn processed(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Drop for BullMq {
    fn drop(&mut self) {
        if let Some(mut child) = self.worker.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(mut c) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> = c
                .scan_match(format!("{}:*", self.prefix))
                .map(|k| k.collect())
                .unwrap_or_default();
            for key in keys {
                let _: redis::RedisResult<()> = c.del(&key);
            }
        }
    }
}

impl Broker for BullMq {
    fn describe(&self) -> String {
        format!("redis bullmq ({})", self.url)
    }

    fn config(&self) -> String {
        format!(
            "[sink]\nkind = \"redis\"\n\n[redis]\nurl = \"{}\"\nmode = \"bullmq\"\nbullmq_prefix = \"{}\"\n",
            self.url, self.prefix
        )
    }

    /// What the worker processed: lane = queue, value = the job data, headers
    /// `id`, `type` (the job name) and `opts.outboxd` (as the worker saw
    /// `job.opts.outboxd`, JSON).
    fn read(&self, expected: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (usize::MAX, Instant::now());
        loop {
            let n = self.processed().len();
            if n != last.0 {
                last = (n, Instant::now());
            }
            if (n >= expected && last.1.elapsed() >= Duration::from_secs(1)) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.processed()
            .into_iter()
            .map(|job| Received {
                lane: job["queue"].as_str().unwrap().to_owned(),
                key: Vec::new(),
                value: Some(job["data"].to_string().into_bytes()),
                headers: vec![
                    ("id".into(), job["id"].as_str().unwrap().as_bytes().to_vec()),
                    ("type".into(), job["name"].as_str().unwrap().as_bytes().to_vec()),
                    ("opts.outboxd".into(), job["outboxd"].to_string().into_bytes()),
                ],
            })
            .collect()
    }

    fn read_dead_letters(&self, _expected: usize) -> Vec<Received> {
        unimplemented!("not used by the BullMQ test")
    }

    fn set_reachable(&self, _reachable: bool) {
        unimplemented!("not used by the BullMQ test")
    }

    fn failing_event(&self) -> FailingEvent {
        unimplemented!("not used by the BullMQ test")
    }
}

/// The aggregate of `id` = `event_id(w, n)` when writer `w` spreads its
/// events over `per_writer` aggregates (as `Suite::spawn_writers` does).
fn aggregate(id: &str, per_writer: u64) -> (u64, u64) {
    let tail = id.rsplit('-').next().unwrap();
    let w: u64 = tail[..4].parse().unwrap();
    let n: u64 = tail[4..].parse().unwrap();
    (w, n % per_writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_worker_processes_every_job_once_in_aggregate_order_after_kill_9() {
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), BullMq::start());
    let mut outboxd = suite.spawn_streaming();
    let writers = suite.spawn_writers(4, 500, 40, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    outboxd.kill9();
    let written = conformance::join_all(writers).await;
    let outboxd = suite.spawn();
    let read = suite.read(written.len());
    outboxd.terminate();

    let mut times: HashMap<&str, usize> = HashMap::new();
    let mut last_seq: HashMap<(u64, u64), u64> = HashMap::new();
    let mut order_violations = 0;
    for r in &read {
        let id = r.header("id").unwrap();
        assert_eq!(r.header("type"), Some("OrderChanged"), "job name = event type");
        *times.entry(id).or_default() += 1;
        // The record's headers, as a stock worker sees them.
        let headers: serde_json::Value = serde_json::from_str(r.header("opts.outboxd").unwrap()).unwrap();
        assert_eq!(headers["id"], id, "job.opts.outboxd: {headers}");
        assert_eq!(headers["type"], "OrderChanged", "job.opts.outboxd: {headers}");
        assert!(
            headers["outboxd.lsn"].as_str().is_some_and(|l| l.contains('/')),
            "job.opts.outboxd: {headers}"
        );
        assert_eq!(
            headers["aggregateid"].as_str().map(str::to_owned),
            Some({
                let (w, a) = aggregate(id, 10);
                format!("agg-{w}-{a}")
            }),
            "job.opts.outboxd: {headers}"
        );
        let data: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let seq = data["seq"].as_u64().expect("job data = the payload");
        match last_seq.insert(aggregate(id, 10), seq) {
            Some(prev) if seq != prev + 1 => order_violations += 1,
            None if seq != 0 => order_violations += 1,
            _ => {}
        }
    }
    // BullMQ's own record of the re-sent jobs it ignored.
    let events: redis::streams::StreamRangeReply = redis::Client::open(suite.broker.url.as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| c.xrange_all(format!("{}:{}:events", suite.broker.prefix, suite.broker.queue)))
        .unwrap();
    let ignored = events
        .ids
        .iter()
        .filter(|e| e.get::<String>("event").as_deref() == Some("duplicated"))
        .count();
    let lost = written
        .iter()
        .filter(|id| !times.contains_key(id.as_str()))
        .count();
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    eprintln!(
        "[{}] written {}, processed {}: lost {lost}, order violations {order_violations}, duplicates \
         {duplicates}; {ignored} re-sent jobs ignored by bullmq after the kill",
        suite.broker.describe(),
        written.len(),
        read.len()
    );
    assert_eq!((lost, order_violations, duplicates), (0, 0, 0));
    assert_eq!(times.len(), written.len());
}
