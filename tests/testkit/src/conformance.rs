//! # The sink conformance suite
//!
//! Every sink promises the same things (DESIGN, "Sinks"): every committed
//! outbox row arrives, per-key order holds, duplicates after a crash stay
//! within the unacknowledged window and carry the same id and position, a
//! record that can never be delivered stops the run (or is dead-lettered) and
//! never lets the slot pass it. This module checks those promises for any
//! sink, through `outboxd` itself as a child process (so it can be SIGKILLed
//! and SIGTERMed like in production) against a throwaway PostgreSQL.
//!
//! A sink takes part by implementing [`Broker`]: how outboxd is configured
//! for it, how to read back what arrived (with headers), how to take it
//! away and bring it back, and what makes one record fail for good. Then
//! each scenario is one call:
//!
//! ```ignore
//! let suite = Suite::start(env!("CARGO_BIN_EXE_outboxd"), MyBroker::start());
//! conformance::ten_thousand_events(&suite).await;
//! ```
//!
//! | scenario | asserts |
//! |---|---|
//! | [`ten_thousand_events`] | 10,000 events from 8 connections over 100 aggregates: 0 lost, 0 order violations, 0 duplicates |
//! | [`kill_9_under_load`] | `kill -9` mid-load, restart: 0 lost, 0 order violations, duplicates ≤ the unacknowledged window |
//! | [`outage`] | the broker unreachable for 10 s: the slot holds still, then 0 lost, 0 order violations, duplicates ≤ the window |
//! | [`permanent_failure_stops`] | `stop`: exit non-zero naming id, table, commit LSN; the slot not past it |
//! | [`permanent_failure_dead_letters`] | `dead-letter`: the record reaches the dead-letter destination, later events flow, the slot moves past |
//! | [`sigterm_under_load`] | exit 0, the slot = the checkpoint, a restart re-sends nothing |
//! | [`replay`] | `outboxd replay --from` re-publishes exactly the later events, in order, marked `outboxd.replay` |
//!
//! Every scenario prints its figures (`lost`, `order violations`,
//! `duplicates`, and the window it compares with) to stderr.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::PgCluster;

/// One record as a consumer of the sink's broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Records of one lane (a Kafka partition, a queue) are in delivery
    /// order; per-key order is checked within lanes.
    pub lane: String,
    /// The key (aggregate id) as the broker carries it.
    pub key: Vec<u8>,
    /// The value; `None` for none.
    pub value: Option<Vec<u8>>,
    /// Headers (or properties) by name.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Received {
    /// The first header named `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The commit LSN header, parsed as a number for comparisons.
    pub fn commit_lsn(&self) -> u64 {
        parse_lsn(self.header("outboxd.lsn").expect("outboxd.lsn header"))
    }
}

/// What makes one outbox row fail for good on this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingEvent {
    /// Its `aggregatetype` (e.g. one that routes nowhere).
    pub aggregate_type: String,
    /// Bytes of padding in its payload (e.g. more than the broker accepts).
    pub pad: usize,
}

/// A sink's broker, as the suite needs it. Methods block (the suite calls
/// them from `block_in_place`, so the scenarios need a multi-threaded runtime).
pub trait Broker {
    /// What the figures are about, e.g. `kafka (mock)`.
    fn describe(&self) -> String;

    /// The sink's part of outboxd's configuration: `[sink] kind = …` and the
    /// broker's own section, as TOML. Records of aggregate type `order` must
    /// reach what [`Broker::read`] reads; the dead-letter destination what
    /// [`Broker::read_dead_letters`] reads.
    fn config(&self) -> String;

    /// Everything delivered to the main destination since the broker was
    /// started (cumulative: reading twice returns the first read's records
    /// again), waiting until at least `expected` are there and nothing more
    /// has come for a second (up to two minutes).
    fn read(&self, expected: usize) -> Vec<Received>;

    /// The same for the dead-letter destination.
    fn read_dead_letters(&self, expected: usize) -> Vec<Received>;

    /// Makes the broker unreachable for outboxd (`false`), or reachable again.
    fn set_reachable(&self, reachable: bool);

    /// An event that this broker refuses for good under [`Broker::config`].
    fn failing_event(&self) -> FailingEvent;

    /// Broker-specific checks of one received record (e.g. Kafka's partition
    /// for its key).
    fn check_record(&self, _record: &Received) {}
}

/// A throwaway PostgreSQL with the outbox, publication and slot (made by
/// `outboxd setup --create-table`), a broker, and outboxd's configuration.
#[derive(Debug)]
pub struct Suite<B> {
    /// The database.
    pub pg: PgCluster,
    /// The broker.
    pub broker: B,
    dir: tempfile::TempDir,
    binary: PathBuf,
    extra_config: String,
}

impl<B: Broker> Suite<B> {
    /// Starts PostgreSQL and runs `outboxd setup --create-table` with the
    /// broker's configuration (the sink's own setup included).
    pub fn start(binary: impl Into<PathBuf>, broker: B) -> Self {
        Self::with_config(binary, broker, "")
    }

    /// [`Suite::start`] with more configuration (TOML sections the broker's
    /// configuration does not have).
    pub fn with_config(binary: impl Into<PathBuf>, broker: B, extra_config: &str) -> Self {
        let pg = PgCluster::start().expect("start postgres");
        let suite = Suite {
            pg,
            broker,
            dir: tempfile::tempdir().expect("temp dir"),
            binary: binary.into(),
            extra_config: extra_config.to_owned(),
        };
        let output = suite
            .command(&["setup", "--create-table"])
            .output()
            .expect("run setup");
        assert!(
            output.status.success(),
            "setup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        suite
    }

    /// The checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.path().join("checkpoint")
    }

    fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("outboxd.toml");
        let text = format!(
            "[postgres]\nurl = \"{}\"\nstatus_interval_ms = 200\n\n[checkpoint]\npath = \"{}\"\n\n\
             [log]\nlevel = \"info\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\nstall_threshold_ms = 1000\n\n{}\n{}\n",
            self.pg.url("postgres", "postgres"),
            self.checkpoint_path().display(),
            self.broker.config(),
            self.extra_config,
        );
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// `outboxd --config … <args>`, with the environment's `OUTBOXD_*` removed.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--config").arg(self.config_path()).args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("OUTBOXD_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
    }

    /// Starts `outboxd run` with extra environment variables; its log goes to
    /// `log-N.txt` in the suite's directory.
    pub fn spawn_with_env(&self, vars: &[(&str, &str)]) -> Outboxd {
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let log = self.dir.path().join(format!("log-{n}.txt"));
        let child = self
            .command(&["run"])
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn outboxd");
        Outboxd::from_child(child, log)
    }

    /// Starts `outboxd run`.
    pub fn spawn(&self) -> Outboxd {
        self.spawn_with_env(&[])
    }

    /// Starts `outboxd run` and waits until it streams.
    pub fn spawn_streaming(&self) -> Outboxd {
        let mut outboxd = self.spawn();
        outboxd.wait_for_log("streaming", Duration::from_secs(30));
        outboxd
    }

    /// The slot's `confirmed_flush_lsn`, as a number.
    pub async fn confirmed(&self) -> u64 {
        let client = self.pg.connect().await.expect("connect");
        let text: String = client
            .query_one(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'outboxd'",
                &[],
            )
            .await
            .expect("read the slot")
            .get(0);
        parse_lsn(&text)
    }

    /// [`Broker::read`] from async code.
    pub fn read(&self, expected: usize) -> Vec<Received> {
        tokio::task::block_in_place(|| self.broker.read(expected))
    }

    /// Starts `writers` application connections, each writing `per_writer`
    /// single-event transactions over its own share of `aggregates`.
    pub fn spawn_writers(
        &self,
        writers: u64,
        per_writer: u64,
        aggregates: u64,
        pause: Duration,
    ) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
        (0..writers)
            .map(|w| {
                let pg = self.pg.config("postgres", "postgres");
                let mine = aggregates / writers + u64::from(w < aggregates % writers);
                tokio::spawn(async move { writer(pg, w, per_writer, 1, mine, pause).await })
            })
            .collect()
    }

    /// Compares what arrived with what was written (see [`Figures`]).
    pub fn figures(&self, written: &[String], read: &[Received]) -> Figures {
        for record in read {
            self.broker.check_record(record);
        }
        let figures = figures(written, read);
        eprintln!(
            "[{}] written {}, read {}: {figures:?}",
            self.broker.describe(),
            written.len(),
            read.len()
        );
        figures
    }
}

/// `outboxd run` as a child process.
#[derive(Debug)]
pub struct Outboxd {
    child: Child,
    log: PathBuf,
}

impl Outboxd {
    /// Wraps a started `outboxd` child whose stderr goes to `log`.
    pub fn from_child(child: Child, log: PathBuf) -> Self {
        Outboxd { child, log }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (panics with its log after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("outboxd did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and asserts a clean exit (0) within 30 s.
    pub fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::task::block_in_place(|| self.wait(Duration::from_secs(30)));
        assert!(status.success(), "exit {status}; log:\n{}", self.log());
    }

    /// SIGKILL, and waits for it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "outboxd exited ({status}) before logging {text:?}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Outboxd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The deterministic event id of writer `w`'s `n`-th event.
pub fn event_id(w: u64, n: u64) -> String {
    format!("00000000-0000-4000-8000-{w:04}{n:08}")
}

/// One application writer: `count` transactions of `per_tx` events on the
/// aggregates `agg-{w}-{0..aggregates}` (type `order`), each payload carrying
/// its sequence number within its aggregate. Returns the ids in commit order.
pub async fn writer(
    pg: tokio_postgres::Config,
    w: u64,
    count: u64,
    per_tx: u64,
    aggregates: u64,
    pause: Duration,
) -> Vec<String> {
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let mut ids = Vec::new();
    let mut seq: HashMap<u64, u64> = HashMap::new();
    let mut n = 0;
    for _ in 0..count {
        let mut sql = String::from("begin;");
        for _ in 0..per_tx {
            let a = n % aggregates;
            let s = seq.entry(a).or_default();
            let id = event_id(w, n);
            sql.push_str(&format!(
                "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
                 ('{id}', 'order', 'agg-{w}-{a}', 'OrderChanged', '{{\"seq\": {s}, \"pad\": \"{pad}\"}}');",
                pad = "x".repeat(200)
            ));
            *s += 1;
            ids.push(id);
            n += 1;
        }
        sql.push_str("commit;");
        client.batch_execute(&sql).await.expect("write outbox rows");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    ids
}

/// Inserts one event of aggregate `agg-7-0` in its own transaction.
pub async fn insert_event(
    client: &tokio_postgres::Client,
    id: &str,
    aggregate_type: &str,
    seq: usize,
    pad: usize,
) {
    client
        .batch_execute(&format!(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('{id}', '{aggregate_type}', 'agg-7-0', 'OrderChanged', \
             jsonb_build_object('seq', {seq}, 'pad', repeat('x', {pad})))"
        ))
        .await
        .expect("insert an event");
}

/// The three figures every scenario asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// Written ids that never arrived.
    pub lost: usize,
    /// First arrivals out of their aggregate's order.
    pub order_violations: usize,
    /// Arrivals after the first of the same id.
    pub duplicates: usize,
}

/// Compares what arrived with what was written: loss, duplicates (each with
/// the same id, position and value as its first copy), per-aggregate order of
/// first arrivals (by the payload's per-aggregate sequence, within a lane).
pub fn figures(written: &[String], read: &[Received]) -> Figures {
    let mut first: HashMap<&str, &Received> = HashMap::new();
    let mut duplicates = 0;
    let mut last_seq: HashMap<(&str, &[u8]), u64> = HashMap::new();
    let mut order_violations = 0;
    for r in read {
        let id = r.header("id").expect("id header");
        assert_eq!(r.header("type"), Some("OrderChanged"), "type header of {id}");
        assert_eq!(
            r.header("aggregatetype"),
            Some("order"),
            "aggregatetype header of {id}"
        );
        assert!(r.commit_lsn() > 0, "outboxd.lsn of {id}");
        let _index: u64 = r
            .header("outboxd.index")
            .expect("outboxd.index header")
            .parse()
            .expect("outboxd.index is a number");
        if let Some(previous) = first.get(id) {
            duplicates += 1;
            assert_eq!(
                previous.header("outboxd.lsn"),
                r.header("outboxd.lsn"),
                "duplicate {id} at another position"
            );
            assert_eq!(previous.header("outboxd.index"), r.header("outboxd.index"));
            assert_eq!(previous.value, r.value, "duplicate {id} with another value");
            continue;
        }
        first.insert(id, r);
        let payload: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().expect("a value")).expect("a JSON payload");
        let seq = payload["seq"].as_u64().expect("seq in the payload");
        match last_seq.insert((r.lane.as_str(), &r.key), seq) {
            Some(prev) if seq != prev + 1 => order_violations += 1,
            None if seq != 0 => order_violations += 1,
            _ => {}
        }
    }
    let unique: HashSet<&str> = first.keys().copied().collect();
    let lost = written.iter().filter(|id| !unique.contains(id.as_str())).count();
    assert_eq!(
        unique.len() + lost,
        written.len(),
        "records arrived that were never written"
    );
    Figures {
        lost,
        order_violations,
        duplicates,
    }
}

/// Parses `16/B374D848` into a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("LSN high half") << 32)
        | u64::from_str_radix(lo, 16).expect("LSN low half")
}

/// Formats a number as an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Waits for writer tasks; their ids in order.
pub async fn join_all(handles: Vec<tokio::task::JoinHandle<Vec<String>>>) -> Vec<String> {
    let mut out = Vec::new();
    for handle in handles {
        out.extend(handle.await.expect("writer task"));
    }
    out
}

/// 10,000 events from 8 connections over 100 aggregates arrive once each, in
/// per-key order.
pub async fn ten_thousand_events<B: Broker>(suite: &Suite<B>) -> Figures {
    let outboxd = suite.spawn_streaming();
    let written = join_all(suite.spawn_writers(8, 1250, 100, Duration::ZERO)).await;
    assert_eq!(written.len(), 10_000);
    let read = suite.read(10_000);
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    let keys: HashSet<&[u8]> = read.iter().map(|r| r.key.as_slice()).collect();
    assert_eq!(keys.len(), 100, "100 aggregates");
    outboxd.terminate();
    f
}

/// After a SIGKILL: measures the unacknowledged window, restarts outboxd,
/// and checks the figures (duplicates ≤ the window). Returns the figures and
/// the window.
pub async fn restart_after_kill<B: Broker>(suite: &Suite<B>, written: Vec<String>) -> (Figures, usize) {
    let confirmed_at_kill = suite.confirmed().await;
    let before = suite.read(0);
    let window = before
        .iter()
        .filter(|r| r.commit_lsn() >= confirmed_at_kill)
        .count();
    eprintln!(
        "[{}] killed with {} records delivered, {window} of them past the slot's {}",
        suite.broker.describe(),
        before.len(),
        format_lsn(confirmed_at_kill)
    );
    let outboxd = suite.spawn();
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!(f.lost, 0);
    assert_eq!(f.order_violations, 0);
    assert!(
        f.duplicates <= window,
        "{} duplicates but only {window} records were unacknowledged",
        f.duplicates
    );
    outboxd.terminate();
    (f, window)
}

/// `kill -9` under load, then a restart: nothing lost, order kept,
/// duplicates within the unacknowledged window. Returns the figures and the
/// window.
pub async fn kill_9_under_load<B: Broker>(suite: &Suite<B>) -> (Figures, usize) {
    let mut outboxd = suite.spawn_streaming();
    let writers = suite.spawn_writers(4, 750, 40, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    outboxd.kill9();
    let written = join_all(writers).await;
    restart_after_kill(suite, written).await
}

/// The broker unreachable for 10 s under load: the slot does not move while
/// nothing can be delivered; afterwards nothing is lost, order holds, and
/// duplicates stay within what was unacknowledged at the outage.
pub async fn outage<B: Broker>(suite: &Suite<B>) -> (Figures, usize) {
    let outboxd = suite.spawn_streaming();
    let writers = suite.spawn_writers(4, 500, 40, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| suite.broker.set_reachable(false));
    // What was in flight when the broker went away is not acknowledged; let
    // the acknowledgements of what was delivered before reach the slot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = suite.confirmed().await;
    let mut samples = Vec::new();
    for _ in 0..18 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(suite.confirmed().await);
    }
    tokio::task::block_in_place(|| suite.broker.set_reachable(true));
    assert!(
        samples.iter().all(|s| *s == held),
        "the slot moved while nothing could be delivered: {} then {:?}",
        format_lsn(held),
        samples.iter().map(|s| format_lsn(*s)).collect::<Vec<_>>()
    );
    let written = join_all(writers).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations), (0, 0));
    let unacked: HashSet<&str> = read
        .iter()
        .filter(|r| r.commit_lsn() >= held)
        .filter_map(|r| r.header("id"))
        .collect();
    eprintln!(
        "[{}] outage: {} duplicates; {} events were unacknowledged when it began",
        suite.broker.describe(),
        f.duplicates,
        unacked.len()
    );
    assert!(
        f.duplicates <= unacked.len(),
        "{} duplicates but only {} events were unacknowledged",
        f.duplicates,
        unacked.len()
    );
    // After recovery the slot catches up with everything.
    let last_commit = read.iter().map(Received::commit_lsn).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while suite.confirmed().await <= last_commit {
        assert!(
            Instant::now() < deadline,
            "the slot never caught up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outboxd.terminate();
    (f, unacked.len())
}

/// The commit LSN a stop message names (`… (commit LSN X, index N) …`).
pub fn failed_commit_lsn(log: &str) -> u64 {
    let text = log
        .split("commit LSN ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no commit LSN in the log:\n{log}"));
    parse_lsn(text)
}

/// Three events in three transactions, the middle one the broker's failing event.
async fn insert_with_a_failing_middle<B: Broker>(suite: &Suite<B>) -> Vec<String> {
    let client = suite.pg.connect().await.expect("connect");
    let failing = suite.broker.failing_event();
    let ids: Vec<String> = (0..3).map(|n| event_id(7, n)).collect();
    for (n, id) in ids.iter().enumerate() {
        if n == 1 {
            insert_event(&client, id, &failing.aggregate_type, n, failing.pad).await;
        } else {
            insert_event(&client, id, "order", n, 10).await;
        }
    }
    ids
}

/// Under `stop`: a record the broker refuses for good ends the run with a
/// non-zero exit naming its id, the table and its commit LSN; only what came
/// before it is delivered and acknowledged.
pub async fn permanent_failure_stops<B: Broker>(suite: &Suite<B>) {
    let mut outboxd = suite.spawn_streaming();
    let before = suite.confirmed().await;
    let ids = insert_with_a_failing_middle(suite).await;
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(60)));
    let log = outboxd.log();
    assert!(!status.success(), "must exit non-zero; log:\n{log}");
    assert!(
        log.contains(&format!("id={}", ids[1])) && log.contains("commit LSN"),
        "log:\n{log}"
    );
    assert!(log.contains("public.outbox"), "names the table; log:\n{log}");
    let read = suite.read(1);
    assert_eq!(
        read.iter().filter_map(|r| r.header("id")).collect::<Vec<_>>(),
        [ids[0].as_str()],
        "only the event before the failed one arrives"
    );
    let failed_commit = failed_commit_lsn(&log);
    let confirmed = suite.confirmed().await;
    eprintln!(
        "[{}] stop: exit {status}, slot {} (before {}), failed commit {}",
        suite.broker.describe(),
        format_lsn(confirmed),
        format_lsn(before),
        format_lsn(failed_commit)
    );
    assert!(
        confirmed > before && confirmed <= failed_commit,
        "slot at {}, failed commit {}",
        format_lsn(confirmed),
        format_lsn(failed_commit)
    );
}

/// Under `dead-letter`: the refused record reaches the dead-letter
/// destination with the error, later events flow, and the slot moves past it.
pub async fn permanent_failure_dead_letters<B: Broker>(suite: &Suite<B>) {
    let mut outboxd = suite.spawn_with_env(&[("OUTBOXD_SINK_ON_PERMANENT_ERROR", "dead-letter")]);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    let ids = insert_with_a_failing_middle(suite).await;
    let read = suite.read(2);
    assert_eq!(
        read.iter().filter_map(|r| r.header("id")).collect::<Vec<_>>(),
        [ids[0].as_str(), ids[2].as_str()]
    );
    let dead = tokio::task::block_in_place(|| suite.broker.read_dead_letters(1));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].header("id"), Some(ids[1].as_str()));
    assert!(
        dead[0].header("outboxd.error").is_some_and(|e| !e.is_empty()),
        "{:?}",
        dead[0].headers
    );
    assert!(
        dead[0].header("outboxd.error_reason").is_some(),
        "{:?}",
        dead[0].headers
    );
    let last = read[1].commit_lsn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while suite.confirmed().await <= last {
        assert!(
            Instant::now() < deadline,
            "the slot was not acknowledged past the dead-lettered event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[{}] dead-letter: {} delivered, 1 dead-lettered ({}), slot past {}",
        suite.broker.describe(),
        read.len(),
        dead[0].header("outboxd.error_reason").unwrap_or_default(),
        format_lsn(last)
    );
    outboxd.terminate();
}

/// SIGTERM under load: exit 0, the slot equals the checkpoint (the last
/// delivered transaction's end), and a restart re-sends nothing.
pub async fn sigterm_under_load<B: Broker>(suite: &Suite<B>) -> Figures {
    let mut outboxd = suite.spawn_streaming();
    let writers = suite.spawn_writers(4, 500, 40, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    outboxd.signal("TERM");
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(30)));
    assert!(status.success(), "exit {status}; log:\n{}", outboxd.log());
    let written = join_all(writers).await;

    let checkpoint = std::fs::read_to_string(suite.checkpoint_path()).expect("checkpoint");
    let delivered = parse_lsn(
        checkpoint
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("delivered_end_lsn = "))
            .expect("delivered_end_lsn line"),
    );
    assert_eq!(suite.confirmed().await, delivered, "slot vs checkpoint");
    let delivered_before = suite.read(0);
    assert!(!delivered_before.is_empty());
    let max_commit = delivered_before
        .iter()
        .map(Received::commit_lsn)
        .max()
        .unwrap_or(0);
    assert!(
        max_commit < delivered,
        "a delivered transaction ({}) is not covered by the acknowledgement {}",
        format_lsn(max_commit),
        format_lsn(delivered)
    );
    let outboxd = suite.spawn();
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    outboxd.terminate();
    f
}

/// `outboxd replay --from <checkpoint>` re-publishes exactly the events
/// committed after it, in order, each marked `outboxd.replay`, while the
/// service runs (the suite needs `[retention]` so the slot keeps the window).
pub async fn replay<B: Broker>(suite: &Suite<B>) -> usize {
    let outboxd = suite.spawn_streaming();
    let pg = || suite.pg.config("postgres", "postgres");
    writer(pg(), 0, 10, 1, 3, Duration::ZERO).await;
    suite.read(10);
    // The checkpoint is written at most once a second: let it cover all ten.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let saved = std::fs::read_to_string(suite.checkpoint_path()).expect("checkpoint");
    let saved = saved
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("delivered_end_lsn = "))
        .expect("delivered_end_lsn line")
        .to_owned();
    let later = writer(pg(), 1, 15, 1, 3, Duration::ZERO).await;
    suite.read(25);
    let output = suite
        .command(&["replay", "--from", &saved])
        .output()
        .expect("run replay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let read = suite.read(40);
    let mut replayed: Vec<&Received> = read
        .iter()
        .filter(|r| r.header("outboxd.replay").is_some())
        .collect();
    // Within a lane, in commit order; across lanes, the exact later events.
    let position = |r: &Received| {
        let index: u64 = r
            .header("outboxd.index")
            .and_then(|i| i.parse().ok())
            .expect("outboxd.index");
        (r.commit_lsn(), index)
    };
    let mut last_in_lane: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in &replayed {
        if let Some(previous) = last_in_lane.insert(r.lane.as_str(), position(r)) {
            assert!(
                previous < position(r),
                "replayed out of commit order in lane {}",
                r.lane
            );
        }
    }
    replayed.sort_by_key(|r| position(r));
    let ids: Vec<&str> = replayed.iter().filter_map(|r| r.header("id")).collect();
    assert_eq!(ids, later.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(replayed.iter().all(|r| r
        .header("outboxd.replay")
        .is_some_and(|v| v.starts_with(&format!("from={saved}")))));
    let live = read.len() - replayed.len();
    assert_eq!(live, 25, "the replay caused no duplicate in normal streaming");
    eprintln!(
        "[{}] replay from {saved}: {} events re-published, exactly the later ones",
        suite.broker.describe(),
        replayed.len()
    );
    outboxd.terminate();
    replayed.len()
}
