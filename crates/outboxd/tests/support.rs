//! The end-to-end harness: a throwaway PostgreSQL with the outbox, librdkafka's
//! mock cluster in this process (a real Kafka-protocol broker on a local TCP
//! port), and `outboxd` as a child process, so it can be SIGKILLed and
//! SIGTERMed like in production. Records are read back with a real consumer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgoutput::Lsn;
use rdkafka::mocking::MockCluster;
use testkit::kafka::{read_topic, ReadRecord};
use testkit::PgCluster;

pub(crate) const PARTITIONS: i32 = 6;

/// Set to `host:port` to run the tests that need no fault injection against
/// a real Kafka-protocol broker instead of the mock cluster.
pub(crate) const BROKER_VAR: &str = "OUTBOXD_TEST_BROKER";

pub(crate) enum Broker {
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    External(String),
}

pub(crate) struct Env {
    pub(crate) pg: PgCluster,
    pub(crate) broker: Broker,
    /// The topic outbox events go to (unique per test on a real broker).
    pub(crate) topic: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) extra_config: String,
    /// `postgres.url` when not the cluster's own (e.g. through a fault proxy).
    pub(crate) postgres_url: Option<String>,
    /// More `[postgres]` keys, one per line.
    pub(crate) postgres_settings: String,
}

impl Env {
    /// Postgres with the outbox, publication and slot (made by `outboxd setup`);
    /// Kafka (the mock cluster, or the broker in `OUTBOXD_TEST_BROKER`) with the
    /// topic and the dead-letter topic.
    pub(crate) fn start(extra_config: &str) -> Env {
        let pg = PgCluster::start().expect("start postgres");
        let (broker, topic) = match std::env::var(BROKER_VAR) {
            Ok(bootstrap) if !bootstrap.is_empty() => {
                let topic = format!("e2e-{}-{}", std::process::id(), unique());
                create_topics(&bootstrap, &[(&topic, PARTITIONS), ("outboxd.dlq", 1)]);
                (Broker::External(bootstrap), topic)
            }
            _ => {
                let kafka = MockCluster::new(1).expect("mock kafka");
                kafka.create_topic("outbox.event.order", PARTITIONS, 1).unwrap();
                kafka.create_topic("outboxd.dlq", 1, 1).unwrap();
                (Broker::Mock(kafka), "outbox.event.order".to_owned())
            }
        };
        let mut extra = extra_config.to_owned();
        if matches!(broker, Broker::External(_)) {
            extra.push_str(&format!("\n[routing]\ntopic = \"{topic}\"\n"));
        }
        let env = Env {
            pg,
            broker,
            topic,
            dir: tempfile::tempdir().unwrap(),
            extra_config: extra,
            postgres_url: None,
            postgres_settings: String::new(),
        };
        let output = env.command(&["setup", "--create-table"]).output().unwrap();
        assert!(
            output.status.success(),
            "setup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        env
    }

    /// The mock cluster, for tests that inject faults.
    pub(crate) fn mock(&self) -> &MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        match &self.broker {
            Broker::Mock(mock) => mock,
            Broker::External(_) => {
                panic!("this test injects faults and needs the mock cluster; unset {BROKER_VAR}")
            }
        }
    }

    pub(crate) fn bootstrap(&self) -> String {
        match &self.broker {
            Broker::Mock(mock) => mock.bootstrap_servers(),
            Broker::External(bootstrap) => bootstrap.clone(),
        }
    }

    /// Creates a topic (on either kind of broker).
    pub(crate) fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.broker {
            Broker::Mock(mock) => mock.create_topic(topic, partitions, 1).unwrap(),
            Broker::External(bootstrap) => create_topics(bootstrap, &[(topic, partitions)]),
        }
    }

    pub(crate) fn checkpoint_path(&self) -> PathBuf {
        self.dir.path().join("checkpoint")
    }

    fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("outboxd.toml");
        let text = format!(
            "[postgres]\nurl = \"{}\"\nstatus_interval_ms = 200\n{}\n\n[kafka]\nbrokers = \"{}\"\ndrain_timeout_ms = 20000\n\n\
             [checkpoint]\npath = \"{}\"\n\n[log]\nlevel = \"info\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nstall_threshold_ms = 1000\n{}\n",
            self.postgres_url
                .clone()
                .unwrap_or_else(|| self.pg.url("postgres", "postgres")),
            self.postgres_settings,
            self.bootstrap(),
            self.checkpoint_path().display(),
            self.extra_config
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        command.arg("--config").arg(self.config_path()).args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("OUTBOXD_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
    }

    /// Starts `outboxd run`; its log goes to `log-N.txt` in the temp dir.
    pub(crate) fn spawn(&self) -> Outboxd {
        self.spawn_with_env(&[])
    }

    /// Starts `outboxd run` and waits until it streams.
    pub(crate) fn spawn_streaming(&self) -> Outboxd {
        let mut outboxd = self.spawn();
        outboxd.wait_for_log("streaming", Duration::from_secs(30));
        outboxd
    }

    /// Starts `outboxd run` with extra environment variables.
    pub(crate) fn spawn_with_env(&self, vars: &[(&str, &str)]) -> Outboxd {
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.dir.path().join(format!("log-{n}.txt"));
        let child = self
            .command(&["run"])
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn outboxd");
        Outboxd { child, log }
    }

    /// The slot's confirmed position.
    pub(crate) async fn confirmed(&self) -> Lsn {
        let client = self.pg.connect().await.unwrap();
        let text: String = client
            .query_one(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'outboxd'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        text.parse().unwrap()
    }

    /// Reads the topic until `expected` records are there and nothing more comes for 1 s.
    pub(crate) async fn read(&self, topic: &str, expected: usize) -> Vec<ReadRecord> {
        let bootstrap = self.bootstrap();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            read_topic(
                &bootstrap,
                &topic,
                expected,
                Duration::from_secs(1),
                Duration::from_secs(120),
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Creates topics on a real broker with the admin API (existing ones are fine).
fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(admin.create_topics(&new, &AdminOptions::new()))
    })
    .expect("create topics");
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("cannot create topic {topic}: {code}"),
        }
    }
}

pub(crate) struct Outboxd {
    child: Child,
    log: PathBuf,
}

impl Outboxd {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (panics with its log after `timeout`).
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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
    pub(crate) fn terminate(mut self) {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(30));
        assert!(status.success(), "exit {status}; log:\n{}", self.log());
    }

    pub(crate) fn kill9(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// Waits until the log contains `text`.
    pub(crate) fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
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
pub(crate) fn event_id(w: u64, n: u64) -> String {
    format!("00000000-0000-4000-8000-{:04}{:08}", w, n)
}

/// One application writer: `count` transactions of `per_tx` events on the
/// aggregates `agg-{w}-{0..aggregates}`, each event's payload carrying its
/// sequence number within its aggregate. Returns the ids in commit order.
pub(crate) async fn writer(
    pg: tokio_postgres::Config,
    w: u64,
    count: u64,
    per_tx: u64,
    aggregates: u64,
    pause: Duration,
) -> Vec<String> {
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
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
        // A writer whose connection drops (Postgres restarting) would lose track; not used here.
        client.batch_execute(&sql).await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    ids
}

/// The three figures every scenario asserts.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) lost: usize,
    pub(crate) order_violations: usize,
    pub(crate) duplicates: usize,
}

/// Compares what reached Kafka with what was written: loss, duplicates (each
/// with the same id and position as its first copy), per-aggregate order of
/// first occurrences (by the payload's per-aggregate sequence), partition
/// placement and headers.
pub(crate) fn figures(written: &[String], read: &[ReadRecord]) -> Figures {
    let mut first: HashMap<&str, &ReadRecord> = HashMap::new();
    let mut duplicates = 0;
    let mut last_seq: HashMap<&[u8], u64> = HashMap::new();
    let mut order_violations = 0;
    for r in read {
        assert_eq!(
            r.partition,
            sink_kafka::java_partition(&r.key, PARTITIONS),
            "key {} on the wrong partition",
            r.key_str()
        );
        let id = r.header("id").expect("id header");
        assert_eq!(r.header("type"), Some("OrderChanged"));
        assert_eq!(r.header("aggregatetype"), Some("order"));
        let lsn: Lsn = r.header("outboxd.lsn").expect("lsn header").parse().unwrap();
        let _index: u64 = r.header("outboxd.index").expect("index header").parse().unwrap();
        assert!(lsn > Lsn::ZERO);
        if let Some(previous) = first.get(id) {
            duplicates += 1;
            assert_eq!(
                previous.header("outboxd.lsn"),
                r.header("outboxd.lsn"),
                "duplicate {id} at another position"
            );
            assert_eq!(previous.header("outboxd.index"), r.header("outboxd.index"));
            assert_eq!(previous.value, r.value);
            continue;
        }
        first.insert(id, r);
        let payload: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let seq = payload["seq"].as_u64().unwrap();
        // Records come back partition by partition, in offset order; a key lives on one partition.
        match last_seq.insert(&r.key, seq) {
            Some(prev) if seq != prev + 1 => order_violations += 1,
            None if seq != 0 => order_violations += 1,
            _ => {}
        }
    }
    let unique: HashSet<&str> = first.keys().copied().collect();
    let lost = written.iter().filter(|id| !unique.contains(id.as_str())).count();
    let unexpected = unique.len() + lost - written.len();
    assert_eq!(unexpected, 0, "records that were never written");
    let figures = Figures {
        lost,
        order_violations,
        duplicates,
    };
    eprintln!("written {}, read {}: {figures:?}", written.len(), read.len());
    figures
}
