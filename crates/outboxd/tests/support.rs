//! The end-to-end harness: a throwaway PostgreSQL with the outbox, librdkafka's
//! mock cluster in this process (a real Kafka-protocol broker on a local TCP
//! port), and `outboxd` as a child process, so it can be SIGKILLed and
//! SIGTERMed like in production. Records are read back with a real consumer.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgoutput::Lsn;
use rdkafka::mocking::MockCluster;
use testkit::conformance::Received;
pub(crate) use testkit::conformance::{event_id, writer, Outboxd};
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
            "[postgres]\nurl = \"{}\"\nstatus_interval_ms = 200\n\n[kafka]\nbrokers = \"{}\"\ndrain_timeout_ms = 20000\n\n\
             [checkpoint]\npath = \"{}\"\n\n[log]\nlevel = \"info\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nstall_threshold_ms = 1000\n{}\n",
            self.pg.url("postgres", "postgres"),
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
        Outboxd::from_child(child, log)
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

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Creates topics on a real broker with the admin API (existing ones are fine).
pub(crate) fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
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

/// A Kafka record as the conformance suite sees it (lane = partition).
pub(crate) fn received(record: &ReadRecord) -> Received {
    Received {
        lane: record.partition.to_string(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record.headers.clone(),
    }
}
