//! The sink conformance suite (`testkit::conformance`) for the Kafka sink:
//! librdkafka's mock cluster, or the real broker in `OUTBOXD_TEST_BROKER`
//! (tansu in CI) for the scenarios that inject no fault.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use testkit::conformance::{self, Broker, FailingEvent, Received, Suite};
use testkit::kafka::read_topic;

use crate::support::{create_topics, received, unique, BROKER_VAR, PARTITIONS};

/// The producer's (and so the mock broker's) record limit: the failing
/// event's 300 kB payload is above it, every other event far below.
const RECORD_LIMIT: &str = "100000";

enum Cluster {
    Mock(MockCluster<'static, DefaultProducerContext>),
    External(String),
}

/// Kafka as the suite sees it.
pub(crate) struct Kafka {
    cluster: Cluster,
    pub(crate) topic: String,
    dead_letters: String,
    /// More `[kafka.properties]`.
    properties: Vec<(String, String)>,
}

impl Kafka {
    /// The mock cluster, or the broker in `OUTBOXD_TEST_BROKER`, with the
    /// topic (6 partitions) and the dead-letter topic.
    pub(crate) fn start() -> Self {
        match std::env::var(BROKER_VAR) {
            Ok(bootstrap) if !bootstrap.is_empty() => {
                let n = unique();
                let topic = format!("conformance-{}-{n}", std::process::id());
                let dead_letters = format!("conformance-dlq-{}-{n}", std::process::id());
                create_topics(&bootstrap, &[(&topic, PARTITIONS), (&dead_letters, 1)]);
                Kafka {
                    cluster: Cluster::External(bootstrap),
                    topic,
                    dead_letters,
                    properties: Vec::new(),
                }
            }
            _ => {
                let mock = MockCluster::new(1).expect("mock kafka");
                mock.create_topic("outbox.event.order", PARTITIONS, 1).unwrap();
                mock.create_topic("outboxd.dlq", 1, 1).unwrap();
                Kafka {
                    cluster: Cluster::Mock(mock),
                    topic: "outbox.event.order".into(),
                    dead_letters: "outboxd.dlq".into(),
                    properties: Vec::new(),
                }
            }
        }
    }

    /// The same with one more producer property.
    pub(crate) fn property(mut self, name: &str, value: &str) -> Self {
        self.properties.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The mock cluster, for tests that inject faults.
    pub(crate) fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        match &self.cluster {
            Cluster::Mock(mock) => mock,
            Cluster::External(_) => {
                panic!("this test injects faults and needs the mock cluster; unset {BROKER_VAR}")
            }
        }
    }

    fn bootstrap(&self) -> String {
        match &self.cluster {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::External(bootstrap) => bootstrap.clone(),
        }
    }

    fn read_topic(&self, topic: &str, expected: usize) -> Vec<Received> {
        let quiet = std::time::Duration::from_secs(1);
        let timeout = std::time::Duration::from_secs(120);
        read_topic(&self.bootstrap(), topic, expected, quiet, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(received)
            .collect()
    }
}

impl Broker for Kafka {
    fn describe(&self) -> String {
        match &self.cluster {
            Cluster::Mock(_) => "kafka (librdkafka mock)".into(),
            Cluster::External(bootstrap) => format!("kafka ({bootstrap})"),
        }
    }

    fn config(&self) -> String {
        let routing = match &self.cluster {
            Cluster::Mock(_) => String::new(),
            Cluster::External(_) => format!("[routing]\ntopic = \"{}\"\n\n", self.topic),
        };
        let mut properties = format!("\"message.max.bytes\" = \"{RECORD_LIMIT}\"\n");
        for (name, value) in &self.properties {
            properties.push_str(&format!("\"{name}\" = \"{value}\"\n"));
        }
        format!(
            "{routing}[sink]\nkind = \"kafka\"\ndead_letter = \"{}\"\ndrain_timeout_ms = 20000\n\n\
             [kafka]\nbrokers = \"{}\"\n\n[kafka.properties]\n{properties}",
            self.dead_letters,
            self.bootstrap()
        )
    }

    fn read(&self, expected: usize) -> Vec<Received> {
        self.read_topic(&self.topic, expected)
    }

    fn read_dead_letters(&self, expected: usize) -> Vec<Received> {
        self.read_topic(&self.dead_letters, expected)
    }

    fn set_reachable(&self, reachable: bool) {
        let mock = self.mock();
        if reachable {
            mock.broker_up(1).unwrap();
        } else {
            mock.broker_down(1).unwrap();
        }
    }

    fn failing_event(&self) -> FailingEvent {
        FailingEvent {
            aggregate_type: "order".into(),
            pad: 300_000,
        }
    }

    fn check_record(&self, record: &Received) {
        let partition: i32 = record.lane.parse().unwrap();
        assert_eq!(
            partition,
            sink_kafka::java_partition(&record.key, PARTITIONS),
            "key {:?} on the wrong partition",
            String::from_utf8_lossy(&record.key)
        );
    }
}

pub(crate) fn suite() -> Suite<Kafka> {
    Suite::start(env!("CARGO_BIN_EXE_outboxd"), Kafka::start())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ten_thousand_events_from_eight_connections_arrive_once_in_order_on_javas_partitions() {
    conformance::ten_thousand_events(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_kill_9_under_load_then_restart_loses_nothing() {
    conformance::kill_9_under_load(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_down_for_ten_seconds_holds_the_slot_and_loses_nothing() {
    conformance::outage(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    conformance::permanent_failure_stops(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_too_large_record_with_dead_letter_goes_to_the_dlq_and_later_events_flow() {
    let suite = suite();
    conformance::permanent_failure_dead_letters(&suite).await;
    let dead = suite.broker.read_dead_letters(1);
    assert_eq!(dead[0].header("outboxd.error_reason"), Some("too_large"));
    assert!(
        dead[0].header("outboxd.error").unwrap().contains("too large"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        dead[0].header("outboxd.original_topic"),
        Some(suite.broker.topic.as_str())
    );
    assert_eq!(dead[0].key, b"agg-7-0");
    assert_eq!(dead[0].value, None, "the too-large value is left out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_resends_nothing() {
    conformance::sigterm_under_load(&suite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_republishes_exactly_the_later_events_marked() {
    let suite = Suite::with_config(
        env!("CARGO_BIN_EXE_outboxd"),
        Kafka::start(),
        "[retention]\nduration_ms = 3600000\n",
    );
    assert_eq!(conformance::replay(&suite).await, 15);
}
