//! The sink conformance suite (`testkit::conformance`) for the Redis sink,
//! in both modes: Streams, and BullMQ (`[redis] mode = "bullmq"`), read back
//! from BullMQ's own structures — the queue's `wait` list in order, each
//! job's hash (`name`, `data`, and `opts.outboxd` with the headers, LSN and
//! aggregate id). Against the machine's Redis (`OUTBOXD_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`), each test under its own key prefix,
//! deleted afterwards; for the outage, a private `redis-server` on a free
//! port (with an fsynced append-only file, so a restart keeps what it
//! acknowledged), stopped and started again.
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

/// How the sink writes, and so how the test reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Streams,
    BullMq,
}

/// Redis as the suite sees it.
pub(crate) struct Redis {
    url: String,
    /// Every key of the test starts with it (and it is BullMQ's prefix).
    prefix: String,
    mode: Mode,
    /// More lines of `[redis]`.
    settings: String,
    private: Option<std::sync::Mutex<PrivateServer>>,
}

impl Redis {
    /// The machine's Redis, under a fresh prefix.
    pub(crate) fn shared(mode: Mode) -> Self {
        Redis {
            url: std::env::var("OUTBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("outboxd-test-{}-{}", std::process::id(), unique()),
            mode,
            settings: String::new(),
            private: None,
        }
    }

    /// A private `redis-server` that the test may stop and start.
    pub(crate) fn private(mode: Mode) -> Self {
        let server = PrivateServer::start();
        Redis {
            url: server.url(),
            prefix: format!("outboxd-test-{}", unique()),
            mode,
            settings: String::new(),
            private: Some(std::sync::Mutex::new(server)),
        }
    }

    /// The same with one more `[redis]` line.
    pub(crate) fn setting(mut self, line: &str) -> Self {
        self.settings.push_str(line);
        self.settings.push('\n');
        self
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

    /// Waits as [`Broker::read`] says, `len` telling how many have arrived.
    fn wait_for(&self, expected: usize, len: impl Fn(&mut redis::Connection) -> usize) {
        let quiet = Duration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (usize::MAX, Instant::now());
        let mut connection = self.connection();
        loop {
            let len = len(&mut connection);
            if len != last.0 {
                last = (len, Instant::now());
            }
            if (len >= expected && last.1.elapsed() >= quiet) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every record written to `name` (a stream, or a BullMQ queue), in order.
    fn read_from(&self, name: &str, expected: usize) -> Vec<Received> {
        match self.mode {
            Mode::Streams => self.read_stream(name, expected),
            Mode::BullMq => self.read_queue(name, expected),
        }
    }

    /// Every entry of `stream`.
    fn read_stream(&self, stream: &str, expected: usize) -> Vec<Received> {
        self.wait_for(expected, |c| c.xlen(stream).unwrap_or(0));
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

    /// The BullMQ key `{prefix}:{queue}:{suffix}`.
    pub(crate) fn bull_key(&self, queue: &str, suffix: &str) -> String {
        format!("{}:{queue}:{suffix}", self.prefix)
    }

    /// Every job of BullMQ queue `queue`, in the order workers take them
    /// (the `wait` list from its tail; nothing processes them here): lane =
    /// the queue, key = `opts.outboxd.aggregateid`, value = the job's `data`
    /// (`None` for `null`), headers = the rest of `opts.outboxd`. Checks what
    /// BullMQ needs of each job: its hash exists, a timestamp, job name =
    /// the `type` header, job id = the `id` header (plus the replay marker
    /// for a replayed record).
    fn read_queue(&self, queue: &str, expected: usize) -> Vec<Received> {
        let wait = self.bull_key(queue, "wait");
        self.wait_for(expected, |c| c.llen(&wait).unwrap_or(0));
        let mut connection = self.connection();
        let mut ids: Vec<String> = connection.lrange(&wait, 0, -1).expect("LRANGE wait");
        ids.reverse();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.bull_key(queue, id));
        }
        let jobs: Vec<std::collections::HashMap<String, Vec<u8>>> =
            pipe.query(&mut connection).expect("HGETALL of the jobs");
        ids.iter()
            .zip(jobs)
            .map(|(id, job)| {
                let field = |name: &str| {
                    job.get(name)
                        .unwrap_or_else(|| panic!("job {id} has no {name}: {job:?}"))
                };
                let opts: serde_json::Value = serde_json::from_slice(field("opts")).expect("opts is JSON");
                assert_eq!(opts["jobId"].as_str(), Some(id.as_str()), "opts.jobId");
                assert!(
                    std::str::from_utf8(field("timestamp"))
                        .unwrap()
                        .parse::<u64>()
                        .is_ok(),
                    "job {id}: timestamp"
                );
                let outboxd = opts["outboxd"].as_object().expect("opts.outboxd");
                let mut key = Vec::new();
                let mut headers = Vec::new();
                for (name, value) in outboxd {
                    let value = value
                        .as_str()
                        .expect("opts.outboxd values are strings")
                        .as_bytes()
                        .to_vec();
                    match name.as_str() {
                        "aggregateid" => key = value,
                        _ => headers.push((name.clone(), value)),
                    }
                }
                let received = Received {
                    lane: queue.to_owned(),
                    key,
                    value: Some(field("data").clone()).filter(|d| d != b"null"),
                    headers,
                };
                let event = received.header("id").expect("an id header");
                let expected_id = match received.header("outboxd.replay") {
                    Some(replay) => format!("{event} {replay}"),
                    None => event.to_owned(),
                };
                assert_eq!(id, &expected_id, "job id = event id");
                assert_eq!(
                    field("name").as_slice(),
                    received.header("type").expect("a type header").as_bytes(),
                    "job name = event type"
                );
                received
            })
            .collect()
    }

    /// Re-sent jobs BullMQ recognised and ignored (`duplicated` in the
    /// queue's events stream; BullMQ trims it to about 10,000 events).
    fn ignored_resends(&self, queue: &str) -> usize {
        let events: redis::streams::StreamRangeReply = self
            .connection()
            .xrange_all(self.bull_key(queue, "events"))
            .expect("XRANGE events");
        events
            .ids
            .iter()
            .filter(|e| e.get::<String>("event").as_deref() == Some("duplicated"))
            .count()
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
        let mode = match self.mode {
            Mode::Streams => "streams",
            Mode::BullMq => "bullmq",
        };
        match &self.private {
            Some(_) => format!("redis {mode} (private server, {})", self.url),
            None => format!("redis {mode} ({})", self.url),
        }
    }

    fn config(&self) -> String {
        let mode = match self.mode {
            Mode::Streams => String::new(),
            Mode::BullMq => format!("mode = \"bullmq\"\nbullmq_prefix = \"{}\"\n", self.prefix),
        };
        format!(
            "[routing]\ntopic = \"{}.outbox.event.${{aggregatetype}}\"\n\n\
             [sink]\nkind = \"redis\"\ndead_letter = \"{}\"\ndrain_timeout_ms = 20000\n\n\
             [redis]\nurl = \"{}\"\nmax_record_bytes = {RECORD_LIMIT}\n{mode}{}",
            self.prefix,
            self.dead_letters(),
            self.url,
            self.settings
        )
    }

    fn read(&self, expected: usize) -> Vec<Received> {
        self.read_from(&self.stream(), expected)
    }

    fn read_dead_letters(&self, expected: usize) -> Vec<Received> {
        self.read_from(&self.dead_letters(), expected)
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

fn suite(mode: Mode) -> Suite<Redis> {
    Suite::start(env!("CARGO_BIN_EXE_outboxd"), Redis::shared(mode))
}

async fn ten_thousand_events(mode: Mode) {
    conformance::ten_thousand_events(&suite(mode)).await;
}

/// `kill -9` under load: 0 duplicates, whatever the window (the Lua dedupe
/// set in Streams mode, the job id in BullMQ mode).
async fn kill_9_under_load(mode: Mode) {
    let suite = suite(mode);
    let (figures, window) = conformance::kill_9_under_load(&suite).await;
    let ignored = match mode {
        Mode::Streams => String::new(),
        Mode::BullMq => format!(
            "; bullmq ignored {} re-sent jobs",
            suite.broker.ignored_resends(&suite.broker.stream())
        ),
    };
    eprintln!(
        "[{}] kill -9: {figures:?}, {window} records were past the slot at the kill{ignored}",
        suite.broker.describe()
    );
    assert_eq!(
        figures.duplicates, 0,
        "re-sent records are recognised, not written twice"
    );
}

async fn outage(mode: Mode) {
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), Redis::private(mode));
    let (figures, unacked) = conformance::outage(&suite).await;
    eprintln!(
        "[{}] outage: {figures:?}, {unacked} events unacknowledged when it began",
        suite.broker.describe()
    );
    assert_eq!(
        figures.duplicates, 0,
        "re-sent records are recognised, not written twice"
    );
}

async fn dead_letters(mode: Mode) {
    let suite = suite(mode);
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

async fn replay(mode: Mode) {
    let suite = Suite::with_config(
        env!("CARGO_BIN_EXE_outboxd"),
        Redis::shared(mode),
        "[retention]\nduration_ms = 3600000\n",
    );
    assert_eq!(conformance::replay(&suite).await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ten_thousand_events_from_eight_connections_arrive_once_in_order() {
    ten_thousand_events(Mode::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill_9_under_load_then_restart_appends_no_duplicate() {
    kill_9_under_load(Mode::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_down_for_ten_seconds_holds_the_slot_and_loses_nothing() {
    outage(Mode::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    conformance::permanent_failure_stops(&suite(Mode::Streams)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_too_large_record_with_dead_letter_goes_to_the_dlq_stream_and_later_events_flow() {
    dead_letters(Mode::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_resends_nothing() {
    conformance::sigterm_under_load(&suite(Mode::Streams)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_republishes_exactly_the_later_events_marked() {
    replay(Mode::Streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_ten_thousand_events_from_eight_connections_become_jobs_once_in_order() {
    ten_thousand_events(Mode::BullMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_kill_9_under_load_then_restart_adds_no_job_twice() {
    kill_9_under_load(Mode::BullMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_server_down_for_ten_seconds_holds_the_slot_and_loses_nothing() {
    outage(Mode::BullMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    conformance::permanent_failure_stops(&suite(Mode::BullMq)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_too_large_record_with_dead_letter_goes_to_the_dlq_queue_and_later_events_flow() {
    dead_letters(Mode::BullMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_adds_nothing() {
    conformance::sigterm_under_load(&suite(Mode::BullMq)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_replay_adds_exactly_the_later_events_as_new_jobs_marked() {
    replay(Mode::BullMq).await;
}

/// `outboxd check` against `redis`: its output.
fn check(redis: Redis) -> String {
    let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), redis);
    let output = suite.command(&["check"]).output().expect("run check");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether the machine's Redis has `XADD … IDMP` (Redis ≥ 8.6), by its version.
fn server_has_idmp() -> bool {
    let redis = Redis::shared(Mode::Streams);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.connection())
        .expect("INFO server");
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("redis_version");
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (8, 6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_lua_dedupe_script_and_warns_of_untrimmed_streams() {
    let text = tokio::task::block_in_place(|| check(Redis::shared(Mode::Streams)));
    eprintln!("{text}");
    assert!(
        text.contains("ok    redis idempotency: atomic Lua script with a per-stream dedupe set"),
        "{text}"
    );
    let idmp = if server_has_idmp() {
        "the server also has XADD IDMP"
    } else {
        "the server has no XADD IDMP, Redis < 8.6"
    };
    assert!(text.contains(idmp), "{text}");
    assert!(
        text.contains("warn  redis trimming: streams are never trimmed")
            && text.contains("fix: set redis.maxlen (XADD MAXLEN ~)"),
        "{text}"
    );

    let text = tokio::task::block_in_place(|| check(Redis::shared(Mode::Streams).setting("maxlen = 1000")));
    assert!(
        text.contains("ok    redis trimming: MAXLEN ~ 1000 per stream"),
        "{text}"
    );
    assert!(!text.contains("warn  redis trimming"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_bullmq_mode_names_the_job_id_and_warns_that_maxlen_does_nothing() {
    let text = tokio::task::block_in_place(|| check(Redis::shared(Mode::BullMq)));
    eprintln!("{text}");
    assert!(
        text.contains("ok    redis idempotency: bullmq mode: job id = event id"),
        "{text}"
    );
    assert!(!text.contains("Lua script"), "{text}");
    assert!(!text.contains("warn  redis trimming"), "{text}");

    let text = tokio::task::block_in_place(|| check(Redis::shared(Mode::BullMq).setting("maxlen = 1000")));
    assert!(
        text.contains("warn  redis trimming: redis.maxlen = 1000 has no effect in bullmq mode"),
        "{text}"
    );
}
