//! The sink conformance suite (`testkit::conformance`) for the RabbitMQ
//! sink: the machine's RabbitMQ (`OUTBOXD_TEST_RABBITMQ`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), each test with its own uniquely
//! named exchange and queues, deleted afterwards (the queues also expire on
//! their own should a test die). The outage cuts outboxd's connections with
//! a `FaultProxy` in front of the broker; the consistent-hash test runs on a
//! private node (`testkit::rabbitmq::RabbitNode`) with the plugin, since the
//! shared broker is not reconfigured.
//!
//! Records are read back with `basic.get` (and acked), so the adapter keeps
//! what it has read to answer the suite's cumulative reads. A record's key
//! is its `aggregateid` header; `id` and `type` are the `message_id` and
//! `type` properties; the exchange, routing key and delivery mode are
//! checked on every record.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use testkit::conformance::{self, Broker, FailingEvent, Received, Suite};
use testkit::rabbitmq::{read_queue, shared_url, unique_name, AmqpMessage, RabbitNode};
use testkit::FaultProxy;

/// `rabbitmq.max_message_bytes` in these tests: the too-large failing
/// event's 300 kB payload is above it, every other event far below.
const MESSAGE_LIMIT: usize = 100_000;

/// Runs async work from the suite's blocking calls (they run inside
/// `block_in_place`, or in `Drop`), on a runtime of its own.
fn blocking<T: Send, F: Future<Output = T>>(make: impl FnOnce() -> F + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(make())
            })
            .join()
            .expect("the AMQP thread")
    })
}

/// What makes one record fail for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failing {
    /// Its routing key (`unroutable.OrderChanged`) matches no binding: the
    /// broker returns it (`mandatory`).
    Unroutable,
    /// Its body is over `rabbitmq.max_message_bytes`.
    TooLarge,
}

/// How outboxd learns where the broker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settings {
    /// `[sink]` and `[rabbitmq]` in the configuration file.
    File,
    /// `OUTBOXD_SINK`, `OUTBOXD_RABBITMQ_URL`, `OUTBOXD_RABBITMQ_EXCHANGE`,
    /// `OUTBOXD_RABBITMQ_ROUTING_KEY` (the file names no sink).
    Environment,
}

/// RabbitMQ as the suite sees it.
pub(crate) struct Rabbit {
    /// Where the test declares and reads.
    url: String,
    /// Where outboxd connects (through the proxy, when there is one).
    outboxd_url: String,
    proxy: Option<FaultProxy>,
    pub(crate) exchange: String,
    /// The queues bound to the exchange with `binding` (one, or several
    /// on a consistent-hash exchange).
    pub(crate) queues: Vec<String>,
    /// The routing key of dead-lettered records, and the queue bound to it.
    dead_letters: String,
    kind: ExchangeKind,
    failing: Failing,
    settings: Settings,
    routing_key: String,
    /// `rabbitmq.management`, when set.
    management: Option<String>,
    received: Mutex<Vec<Received>>,
    dead: Mutex<Vec<Received>>,
    _node: Option<RabbitNode>,
}

impl Rabbit {
    /// The shared broker: a topic exchange, its queue bound with `binding`,
    /// and the dead-letter queue.
    pub(crate) fn shared(binding: &str, failing: Failing) -> Self {
        Self::declare(shared_url(), None, ExchangeKind::Topic, &[binding], failing)
    }

    /// The same, outboxd connecting through a fault proxy.
    pub(crate) fn behind_proxy() -> Self {
        let mut rabbit = Self::shared("#", Failing::TooLarge);
        let upstream = shared_url();
        let port = amqp_port(&upstream);
        let proxy = FaultProxy::start(("127.0.0.1", port)).expect("fault proxy");
        rabbit.outboxd_url = upstream.replacen(&format!(":{port}/"), &format!(":{}/", proxy.port()), 1);
        assert_ne!(rabbit.outboxd_url, upstream, "the URL names port {port}");
        rabbit.proxy = Some(proxy);
        rabbit
    }

    fn declare(
        url: String,
        node: Option<RabbitNode>,
        kind: ExchangeKind,
        bindings: &[&str],
        failing: Failing,
    ) -> Self {
        let exchange = unique_name("outboxd-conf-x");
        let queues: Vec<String> = (0..bindings.len())
            .map(|_| unique_name("outboxd-conf-q"))
            .collect();
        let dead_letters = unique_name("outboxd-conf-dlq");
        let mut all: Vec<(&str, &str)> = queues
            .iter()
            .map(String::as_str)
            .zip(bindings.iter().copied())
            .collect();
        if kind == ExchangeKind::Topic {
            all.push((&dead_letters, &dead_letters));
        }
        let declared_kind = kind.clone();
        blocking(|| async {
            let connection = Connection::connect(&url, ConnectionProperties::default())
                .await
                .expect("connect to rabbitmq");
            let channel = connection.create_channel().await.unwrap();
            let mut arguments = FieldTable::default();
            if declared_kind == ExchangeKind::Custom("x-consistent-hash".into()) {
                arguments.insert(
                    "hash-header".into(),
                    AMQPValue::LongString(sink_rabbitmq::AGGREGATE_ID.into()),
                );
            }
            // As `outboxd setup` declares it (durable), so its declare is a no-op.
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    declared_kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    arguments,
                )
                .await
                .expect("declare the exchange");
            for (queue, binding) in &all {
                let mut arguments = FieldTable::default();
                arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
                channel
                    .queue_declare(
                        (*queue).into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        arguments,
                    )
                    .await
                    .expect("declare a queue");
                channel
                    .queue_bind(
                        (*queue).into(),
                        exchange.as_str().into(),
                        (*binding).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("bind a queue");
            }
            let _ = channel.close(200, "done".into()).await;
            let _ = connection.close(200, "done".into()).await;
        });
        Rabbit {
            outboxd_url: url.clone(),
            url,
            proxy: None,
            exchange,
            queues,
            dead_letters,
            kind,
            failing,
            settings: Settings::File,
            routing_key: sink_rabbitmq::DEFAULT_ROUTING_KEY.into(),
            management: None,
            received: Mutex::new(Vec::new()),
            dead: Mutex::new(Vec::new()),
            _node: node,
        }
    }

    /// Configured through the environment only.
    pub(crate) fn configured_by_environment(mut self, routing_key: &str) -> Self {
        self.settings = Settings::Environment;
        self.routing_key = routing_key.to_owned();
        self
    }

    /// The variables that configure outboxd for it ([`Settings::Environment`]).
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OUTBOXD_SINK", "rabbitmq".to_owned()),
            ("OUTBOXD_RABBITMQ_URL", self.outboxd_url.clone()),
            ("OUTBOXD_RABBITMQ_EXCHANGE", self.exchange.clone()),
            ("OUTBOXD_RABBITMQ_ROUTING_KEY", self.routing_key.clone()),
        ]
    }

    /// Reads `queue` until at least `expected` records have been read from it
    /// in all and nothing more came for a second (up to two minutes).
    fn read_into(&self, queue: &str, seen: &Mutex<Vec<Received>>, expected: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let batch = blocking(|| read_queue(&self.url, queue, usize::MAX, Duration::from_secs(1)))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut seen = seen.lock().unwrap();
            seen.extend(batch.iter().map(|m| received(queue, m)));
            if seen.len() >= expected || Instant::now() > deadline {
                return seen.clone();
            }
        }
    }
}

/// The port of an `amqp://…:port/…` URL.
fn amqp_port(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A message as the suite compares records; the AMQP envelope and the
/// properties that are not record headers come as `amqp.*` entries.
fn received(queue: &str, m: &AmqpMessage) -> Received {
    let mut headers: Vec<(String, Vec<u8>)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            headers.push((name.to_owned(), value.into_bytes()));
        }
    };
    add("id", m.message_id.clone());
    add("type", m.kind.clone());
    add("amqp.exchange", Some(m.exchange.clone()));
    add("amqp.routing_key", Some(m.routing_key.clone()));
    add("amqp.app_id", m.app_id.clone());
    add("amqp.content_type", m.content_type.clone());
    add("amqp.delivery_mode", m.delivery_mode.map(|d| d.to_string()));
    Received {
        lane: queue.to_owned(),
        key: m
            .header(sink_rabbitmq::AGGREGATE_ID)
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
        value: Some(m.body.clone()),
        headers,
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let url = self.url.clone();
        let mut queues = self.queues.clone();
        queues.push(self.dead_letters.clone());
        let exchange = self.exchange.clone();
        blocking(|| async move {
            let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                for queue in &queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "done".into()).await;
            }
            let _ = connection.close(200, "done".into()).await;
        });
    }
}

impl Broker for Rabbit {
    fn describe(&self) -> String {
        let how = match (&self.proxy, self._node.is_some()) {
            (Some(_), _) => "through a fault proxy",
            (None, true) => "private node",
            (None, false) => "shared broker",
        };
        format!("rabbitmq ({how}, exchange {})", self.exchange)
    }

    fn config(&self) -> String {
        let exchange_type = match &self.kind {
            ExchangeKind::Custom(name) => name.to_string(),
            _ => "topic".to_owned(),
        };
        let management = self
            .management
            .as_ref()
            .map(|address| format!("management = \"{address}\"\n"))
            .unwrap_or_default();
        match self.settings {
            Settings::Environment => String::new(),
            Settings::File => format!(
                "[sink]\nkind = \"rabbitmq\"\ndead_letter = \"{}\"\ndrain_timeout_ms = 20000\n\n\
                 [rabbitmq]\nurl = \"{}\"\nexchange = \"{}\"\nexchange_type = \"{exchange_type}\"\n\
                 routing_key = \"{}\"\nmax_message_bytes = {MESSAGE_LIMIT}\n{management}",
                self.dead_letters, self.outboxd_url, self.exchange, self.routing_key
            ),
        }
    }

    fn read(&self, expected: usize) -> Vec<Received> {
        if self.queues.len() == 1 {
            return self.read_into(&self.queues[0], &self.received, expected);
        }
        // Several queues (consistent hash): each read until all of them
        // together hold `expected`.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for queue in &self.queues {
                self.read_into(queue, &self.received, 0);
            }
            let all = self.received.lock().unwrap().clone();
            if all.len() >= expected || Instant::now() > deadline {
                return all;
            }
        }
    }

    fn read_dead_letters(&self, expected: usize) -> Vec<Received> {
        self.read_into(&self.dead_letters, &self.dead, expected)
    }

    fn set_reachable(&self, reachable: bool) {
        let proxy = self
            .proxy
            .as_ref()
            .expect("this test takes the broker away and needs Rabbit::behind_proxy()");
        if reachable {
            proxy.pass();
        } else {
            proxy.cut();
        }
    }

    fn failing_event(&self) -> FailingEvent {
        match self.failing {
            Failing::Unroutable => FailingEvent {
                aggregate_type: "unroutable".into(),
                pad: 10,
            },
            Failing::TooLarge => FailingEvent {
                aggregate_type: "order".into(),
                pad: 300_000,
            },
        }
    }

    fn check_record(&self, record: &Received) {
        assert!(self.queues.contains(&record.lane), "{}", record.lane);
        assert_eq!(record.header("amqp.exchange"), Some(self.exchange.as_str()));
        let expected_key = self
            .routing_key
            .replace("${aggregatetype}", "order")
            .replace("${type}", "OrderChanged");
        assert_eq!(record.header("amqp.routing_key"), Some(expected_key.as_str()));
        assert_eq!(record.header("amqp.delivery_mode"), Some("2"), "persistent");
        assert_eq!(record.header("amqp.app_id"), Some("outboxd"));
        assert_eq!(record.header("amqp.content_type"), Some("application/json"));
    }
}

fn suite(rabbit: Rabbit) -> Suite<Rabbit> {
    Suite::start(env!("CARGO_BIN_EXE_outboxd"), rabbit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_ten_thousand_events_from_eight_connections_reach_a_queue_bound_with_a_wildcard_once_in_order(
) {
    let started = Instant::now();
    let f = conformance::ten_thousand_events(&suite(Rabbit::shared("#", Failing::Unroutable))).await;
    eprintln!("[rabbitmq] ten thousand: {f:?} in {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_run_configured_by_environment_delivers_a_prepared_outbox_once_in_order() {
    let rabbit =
        Rabbit::shared("#", Failing::Unroutable).configured_by_environment("outbox.${aggregatetype}");
    let suite = suite(rabbit);
    // The outbox is written before outboxd starts.
    let written = conformance::join_all(suite.spawn_writers(4, 500, 40, Duration::ZERO)).await;
    let env = suite.broker.env();
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let mut outboxd = suite.spawn_with_env(&vars);
    outboxd.wait_for_log("streaming", Duration::from_secs(30));
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    eprintln!(
        "[rabbitmq] environment-configured run: {} rows, {f:?}, in {:.1?}",
        written.len(),
        started.elapsed()
    );
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    assert!(read
        .iter()
        .all(|r| r.header("amqp.routing_key") == Some("outbox.order")));
    outboxd.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_kill_9_under_load_then_restart_loses_nothing() {
    let (figures, window) =
        conformance::kill_9_under_load(&suite(Rabbit::shared("#", Failing::Unroutable))).await;
    eprintln!("[rabbitmq] kill -9: {figures:?}, {window} records were past the slot at the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connections_cut_for_ten_seconds_hold_the_slot_and_lose_nothing() {
    let (figures, unacked) = conformance::outage(&suite(Rabbit::behind_proxy())).await;
    eprintln!("[rabbitmq] outage: {figures:?}, {unacked} unacknowledged when it began");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_too_large_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    conformance::permanent_failure_stops(&suite(Rabbit::shared("order.#", Failing::TooLarge))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_record_with_dead_letter_goes_to_the_dlq_and_later_events_flow() {
    let suite = suite(Rabbit::shared("order.#", Failing::Unroutable));
    conformance::permanent_failure_dead_letters(&suite).await;
    let dead = suite.broker.read_dead_letters(1);
    assert_eq!(dead[0].header("outboxd.error_reason"), Some("unroutable"));
    assert!(
        dead[0]
            .header("outboxd.error")
            .unwrap()
            .contains("no queue is bound"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        dead[0].header("outboxd.original_topic"),
        Some("unroutable.OrderChanged")
    );
    assert_eq!(dead[0].key, b"agg-7-0");
    assert_eq!(
        dead[0].header("amqp.routing_key"),
        Some(suite.broker.dead_letters.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_record_with_stop_exits_non_zero_naming_it_and_holds_the_slot() {
    let suite = suite(Rabbit::shared("order.#", Failing::Unroutable));
    let mut outboxd = suite.spawn_streaming();
    let client = suite.pg.connect().await.unwrap();
    let before = suite.confirmed().await;
    let ids: Vec<String> = (0..2).map(|n| conformance::event_id(7, n)).collect();
    conformance::insert_event(&client, &ids[0], "order", 0, 10).await;
    conformance::insert_event(&client, &ids[1], "unroutable", 1, 10).await;
    let status = tokio::task::block_in_place(|| outboxd.wait(Duration::from_secs(60)));
    let log = outboxd.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("id={}", ids[1])), "{log}");
    assert!(log.contains("no queue is bound"), "{log}");
    let confirmed = suite.confirmed().await;
    let failed = conformance::failed_commit_lsn(&log);
    assert!(
        confirmed > before && confirmed <= failed,
        "slot past the unroutable record"
    );
    let read = suite.read(1);
    assert_eq!(read.len(), 1);
    eprintln!(
        "[rabbitmq] unroutable under stop: exit {status}, slot {} ≤ failed commit {}",
        conformance::format_lsn(confirmed),
        conformance::format_lsn(failed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sigterm_under_load_acks_exactly_what_was_delivered_and_a_restart_resends_nothing() {
    conformance::sigterm_under_load(&suite(Rabbit::shared("#", Failing::Unroutable))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_replay_republishes_exactly_the_later_events_marked() {
    let suite = Suite::with_config(
        env!("CARGO_BIN_EXE_outboxd"),
        Rabbit::shared("#", Failing::Unroutable),
        "[retention]\nduration_ms = 3600000\n",
    );
    assert_eq!(conformance::replay(&suite).await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_consistent_hash_exchange_gives_each_aggregate_one_queue_in_order() {
    // The shared broker has no consistent-hash plugin (and is not
    // reconfigured): a private node with it and the management API.
    let node = match tokio::task::block_in_place(RabbitNode::start_with_management) {
        Ok(node) => node,
        Err(err) => {
            eprintln!("[rabbitmq] SKIPPED the consistent-hash test: no private RabbitMQ node ({err})");
            return;
        }
    };
    let url = node.url();
    let management = node.management_address().expect("management port");
    let kind = ExchangeKind::Custom("x-consistent-hash".into());
    // The binding key of a consistent-hash exchange is the queue's weight.
    let mut rabbit = Rabbit::declare(url, Some(node), kind, &["1", "1", "1", "1"], Failing::TooLarge);
    rabbit.management = Some(management);
    let suite = suite(rabbit);
    let outboxd = suite.spawn_streaming();
    let written = conformance::join_all(suite.spawn_writers(4, 500, 40, Duration::ZERO)).await;
    let read = suite.read(written.len());
    let f = suite.figures(&written, &read);
    assert_eq!((f.lost, f.order_violations, f.duplicates), (0, 0, 0));
    let mut lanes: std::collections::HashMap<&[u8], std::collections::HashSet<&str>> =
        std::collections::HashMap::new();
    for r in &read {
        lanes.entry(&r.key).or_default().insert(r.lane.as_str());
    }
    assert_eq!(lanes.len(), 40, "40 aggregates");
    assert!(
        lanes.values().all(|queues| queues.len() == 1),
        "an aggregate in several queues"
    );
    let mut per_queue: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in &read {
        *per_queue.entry(r.lane.as_str()).or_default() += 1;
    }
    eprintln!(
        "[rabbitmq] consistent hash: {f:?}, records per queue {:?}",
        per_queue.values()
    );
    assert!(
        per_queue.len() >= 3,
        "aggregates spread over the queues: {per_queue:?}"
    );
    outboxd.terminate();
    // `check` reads the type and the bindings from the management API.
    let output = suite.command(&["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!(
            "rabbitmq exchange: {:?} exists (x-consistent-hash)",
            suite.broker.exchange
        )),
        "{text}"
    );
    assert!(text.contains("rabbitmq bindings: 4 binding(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_check_reports_the_exchange_its_type_and_a_missing_one() {
    let suite = suite(Rabbit::shared("#", Failing::Unroutable));
    let output = suite.command(&["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!(
            "ok    rabbitmq exchange: {:?} exists (topic)",
            suite.broker.exchange
        )),
        "{text}"
    );
    // The shared broker has no management API: the bindings are unknown,
    // and check says how to look.
    assert!(
        text.contains("warn  rabbitmq bindings: not known")
            || text.contains("rabbitmq bindings: 2 binding(s)"),
        "{text}"
    );
    let missing = unique_name("outboxd-conf-missing");
    let output = suite
        .command(&["check"])
        .env("OUTBOXD_RABBITMQ_EXCHANGE", &missing)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.contains(&format!("FAIL  rabbitmq exchange: {missing:?} does not exist")),
        "{text}"
    );
    assert!(text.contains("run `outboxd setup`"), "{text}");
    let output = suite
        .command(&["check"])
        .env("OUTBOXD_RABBITMQ_URL", "amqp://guest:secret@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("FAIL  rabbitmq: cannot connect to rabbitmq at"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}
