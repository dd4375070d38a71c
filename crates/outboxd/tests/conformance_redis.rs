//! The sink conformance suite (`testkit::conformance`) for the Redis sink
//! (Streams): the machine's Redis (`OUTBOXD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each test under its own key prefix, deleted
//! afterwards; for the outage, a private `redis-server` on a free port (with
//! an fsynced append-only file, so a restart keeps what it acknowledged),
//! stopped and started again.
//!
//! The failing record is one over `redis.max_record_bytes` (Redis itself
//! takes values up to 512 MB, so the sink's own limit is what refuses it):
//! `Permanent { reason: TooLarge }`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use testkit::conformance::{self, Broker, FailingEvent, Received, Suite};

use crate::support::unique;

/// The sink's record limit in these tests: the failing event's 300 kB
/// payload is above it, every other event far below.
const RECORD_LIMIT: usize = 100_000;

/// A `redis-server` of the test's own.
struct PrivateServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PrivateServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.up();
        server
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = self.url();
        while redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Redis as the suite sees it.
pub(crate) struct Redis {
    url: String,
    /// Every key of the test starts with it.
    prefix: String,
    private: Option<std::sync::Mutex<PrivateServer>>,
}

impl Redis {
    /// The machine's Redis, under a fresh prefix.
    pub(crate) fn shared() -> Self {
        Redis {
            url: std::env::var("OUTBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("outboxd-test-{}-{}", std::process::id(), unique()),
            private: None,
        }
    }

    /// A private `redis-server` that the test may stop and start.
    pub(crate) fn private() -> Self {
        let server = PrivateServer::start();
        Redis {
            url: server.url(),
            prefix: format!("outboxd-test-{}", unique()),
            private: Some(std::sync::Mutex::new(server)),
        }
    }

    pub(crate) fn stream(&self) -> String {
        format!("{}.outbox.event.order", self.prefix)
    }

    fn dead_letters(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to redis")
    }

    /// Every entry of `stream`, waiting as [`Broker::read`] says.
    fn read_stream(&self, stream: &str, expected: usize) -> Vec<Received> {
        let quiet = Duration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (usize::MAX, Instant::now());
        loop {
            let len: usize = self.connection().xlen(stream).unwrap_or(0);
            if len != last.0 {
                last = (len, Instant::now());
            }
            if (len >= expected && last.1.elapsed() >= quiet) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let reply: redis::streams::StreamRangeReply = self.connection().xrange_all(stream).expect("XRANGE");
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let mut key = Vec::new();
                let mut value = None;
                let mut headers = Vec::new();
                for (name, v) in entry.map {
                    let bytes: Vec<u8> = redis::from_redis_value(&v).expect("bytes");
                    match name.as_str() {
                        "aggregateid" => key = bytes,
                        "payload" => value = Some(bytes),
                        _ => headers.push((name, bytes)),
                    }
                }
                Received {
                    lane: stream.to_owned(),
                    key,
                    value,
                    headers,
                }
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.private.is_some() {
            return;
        }
        let Ok(mut c) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) else {
            return;
        };
        for pattern in [
            format!("{}*", self.prefix),
            format!("outboxd.dedupe:{{{}*", self.prefix),
        ] {
            let keys: Vec<String> = c.scan_match(&pattern).map(|k| k.collect()).unwrap_or_default();
            for key in keys {
                let _: redis::RedisResult<()> = c.del(&key);
            }
        }
    }
}

impl Broker for Redis {
    fn describe(&self) -> String {
        match &self.private {
            Some(_) => format!("redis streams (private server, {})", self.url),
            None => format!("redis streams ({})", self.url),
        }
    }

    fn config(&self) -> String {
        format!(
            "[routing]\ntopic = \"{}.outbox.event.${{aggregatetype}}\"\n\n\
             [sink]\nkind = \"redis\"\ndead_letter = \"{}\"\ndrain_timeout_ms = 20000\n\n\
             [redis]\nurl = \"{}\"\nmax_record_bytes = {RECORD_LIMIT}\n",
            self.prefix,
            self.dead_letters(),
            self.url
        )
    }

    fn read(&self, expected: usize) -> Vec<Received> {
        self.read_stream(&self.stream(), expected)
    }

    fn read_dead_letters(&self, expected: usize) -> Vec<Received> {
        self.read_stream(&self.dead_letters(), expected)
    }

    fn set_reachable(&self, reachable: bool) {
        let mut server = self
            .private
            .as_ref()
            .expect("this test takes the broker away and needs Redis::private()")
            .lock()
            .unwrap();
        if reachable {
            server.up();
        } else {
            server.down();
        }
    }

    fn failing_event(&self) -> FailingEvent {
        FailingEvent {
            aggregate_type: "order".into(),
            pad: 300_000,
        }
    }

    fn check_record(&self, record: &Received) {
        assert_eq!(record.lane, self.stream());
    }
}

fn suite() -> Suite<Redis> {
    Suite::start(env!("CARGO_BIN_EXE_outboxd"), Redis::shared())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ten_thousand_events_from_eight_connections_arrive_once_in_order() {
    conformance::ten_thousand_events(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_9_under_load_then_restart_appends_no_duplicate() {
    let (figures, window) = conformance::kill_9_under_load(&suite()).await;
    eprintln!("[redis] kill -9: {figures:?}, {window} records were past the slot at the kill");
    assert_eq!(
        figures.duplicates, 0,
        "the idempotent append keeps re-sent records out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_down_for_ten_seconds_holds_the_slot_and_loses_nothing() {
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), Redis::private());
    let (figures, _) = conformance::outage(&suite).await;
    assert_eq!(
        figures.duplicates, 0,
        "the idempotent append keeps re-sent records out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    conformance::permanent_failure_stops(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_too_large_record_with_dead_letter_goes_to_the_dlq_stream_and_later_events_flow() {
    let suite = suite();
    conformance::permanent_failure_dead_letters(&suite).await;
    let dead = suite.broker.read_dead_letters(1);
    assert_eq!(dead[0].header("outboxd.error_reason"), Some("too_large"));
    assert_eq!(
        dead[0].header("outboxd.original_topic"),
        Some(suite.broker.stream().as_str())
    );
    assert_eq!(dead[0].key, b"agg-7-0");
    assert_eq!(dead[0].value, None, "the too-large value is left out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_resends_nothing() {
    conformance::sigterm_under_load(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_republishes_exactly_the_later_events_marked() {
    let suite = Suite::with_config(
        env!("CARGO_BIN_EXE_outboxd"),
        Redis::shared(),
        "[retention]\nduration_ms = 3600000\n",
    );
    assert_eq!(conformance::replay(&suite).await, 15);
}
