//! What outboxd tells operators: Prometheus metrics and readiness.
//!
//! The pipeline reports each step here; the admin HTTP server renders
//! `/metrics` from it and answers `/readyz` with [`Metrics::readiness`].
//!
//! Commit→ack latency: from the commit timestamp of the transaction (the
//! Postgres server's clock, carried in the pgoutput Commit message) to the
//! moment the `AckTracker` confirmed the transaction after the last delivery
//! report of its records (this process's system clock). On one machine the
//! clocks are the same; across machines the figure includes their skew.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pg_replication::StreamStats;
use pgoutput::{Lsn, PgTimestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

/// All metrics and health signals of one process.
pub struct Metrics {
    registry: Registry,
    events: Family<TopicLabel, Counter>,
    bytes: Family<TopicLabel, Counter>,
    delivery_errors: Family<ClassLabel, Counter>,
    dead_lettered: Counter,
    received_lsn: Gauge<i64, AtomicI64>,
    acked_lsn: Gauge<i64, AtomicI64>,
    ack_lag_bytes: Gauge<i64, AtomicI64>,
    in_flight: Gauge<i64, AtomicI64>,
    slot_retained_bytes: Gauge<i64, AtomicI64>,
    reconnects: Counter,
    commit_to_ack: Histogram,
    // Health.
    last_delivery_ms: AtomicU64,
    stalled_since_ms: AtomicU64,
    stream: Mutex<Option<Arc<StreamStats>>>,
    samples: Option<Mutex<Vec<Duration>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::build(false))
    }

    /// Also keeps every commit→ack latency sample (for the benchmark).
    pub fn with_latency_samples() -> Arc<Self> {
        Arc::new(Self::build(true))
    }

    fn build(samples: bool) -> Self {
        let mut registry = Registry::with_prefix("outboxd");
        let events = Family::<TopicLabel, Counter>::default();
        let bytes = Family::<TopicLabel, Counter>::default();
        let delivery_errors = Family::<ClassLabel, Counter>::default();
        let dead_lettered = Counter::default();
        let received_lsn = Gauge::<i64, AtomicI64>::default();
        let acked_lsn = Gauge::<i64, AtomicI64>::default();
        let ack_lag_bytes = Gauge::<i64, AtomicI64>::default();
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let slot_retained_bytes = Gauge::<i64, AtomicI64>::default();
        let reconnects = Counter::default();
        // 1 ms .. ~33 s.
        let commit_to_ack = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        registry.register("events", "Records handed to the broker, by topic", events.clone());
        registry.register(
            "event_bytes",
            "Key and value bytes of records handed to the broker, by topic",
            bytes.clone(),
        );
        registry.register(
            "delivery_errors",
            "Failed deliveries, by class (retriable, permanent, fatal)",
            delivery_errors.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records sent to the dead-letter topic",
            dead_lettered.clone(),
        );
        registry.register(
            "received_lsn",
            "Highest WAL position received from the walsender",
            received_lsn.clone(),
        );
        registry.register(
            "acked_lsn",
            "Highest position acknowledged (every record before it delivered)",
            acked_lsn.clone(),
        );
        registry.register(
            "ack_lag_bytes",
            "Received minus acknowledged position, in bytes of WAL",
            ack_lag_bytes.clone(),
        );
        registry.register(
            "in_flight_records",
            "Records handed to the producer without a delivery report yet",
            in_flight.clone(),
        );
        registry.register(
            "slot_retained_bytes",
            "WAL the slot keeps on the server (pg_current_wal_lsn - restart_lsn)",
            slot_retained_bytes.clone(),
        );
        registry.register(
            "reconnects",
            "Replication reconnects after transient failures",
            reconnects.clone(),
        );
        registry.register(
            "commit_to_ack_seconds",
            "From a transaction's commit (server clock) to its acknowledgement after delivery (local clock)",
            commit_to_ack.clone(),
        );
        Metrics {
            registry,
            events,
            bytes,
            delivery_errors,
            dead_lettered,
            received_lsn,
            acked_lsn,
            ack_lag_bytes,
            in_flight,
            slot_retained_bytes,
            reconnects,
            commit_to_ack,
            last_delivery_ms: AtomicU64::new(now_ms()),
            stalled_since_ms: AtomicU64::new(0),
            stream: Mutex::new(None),
            samples: samples.then(|| Mutex::new(Vec::new())),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn attach_stream(&self, stats: Arc<StreamStats>) {
        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    pub(crate) fn sent(&self, topic: &str, bytes: usize) {
        let label = TopicLabel {
            topic: topic.to_owned(),
        };
        self.events.get_or_create(&label).inc();
        self.bytes.get_or_create(&label).inc_by(bytes as u64);
        self.in_flight.inc();
    }

    pub(crate) fn delivered(&self) {
        self.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
        self.in_flight.dec();
    }

    pub(crate) fn delivery_error(&self, class: outbox_core::ErrorClass) {
        self.last_delivery_ms.store(now_ms(), Ordering::Relaxed);
        self.in_flight.dec();
        let class = class.as_str().to_owned();
        self.delivery_errors.get_or_create(&ClassLabel { class }).inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// The delivered prefix now ends at `confirmed`.
    pub(crate) fn acked(&self, confirmed: Lsn) {
        self.acked_lsn.set(confirmed.as_u64() as i64);
    }

    /// A transaction committed at `commit_time` (server clock) is confirmed
    /// now: its last record's outcome completed the delivered prefix.
    pub(crate) fn confirmed(&self, commit_time: PgTimestamp) {
        let latency = commit_time
            .to_system_time()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        self.commit_to_ack.observe(latency.as_secs_f64());
        if let Some(samples) = &self.samples {
            samples.lock().unwrap_or_else(|e| e.into_inner()).push(latency);
        }
    }

    /// Every commit→ack latency observed (only with [`Metrics::with_latency_samples`]).
    pub fn latency_samples(&self) -> Vec<Duration> {
        self.samples
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Called about once a second (by `run`'s housekeeping task).
    pub(crate) fn tick(&self) {
        let now = now_ms();
        if self.in_flight.get() <= 0 {
            self.stalled_since_ms.store(0, Ordering::Relaxed);
        } else if self.stalled_since_ms.load(Ordering::Relaxed) == 0 {
            self.stalled_since_ms.store(now, Ordering::Relaxed);
        }
        if let Some(stats) = self.stream.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let received = stats.received().as_u64() as i64;
            self.received_lsn.set(received);
            self.ack_lag_bytes.set((received - self.acked_lsn.get()).max(0));
            let reconnects = stats.reconnects();
            let counted = self.reconnects.get();
            if reconnects > counted {
                self.reconnects.inc_by(reconnects - counted);
            }
        }
    }

    pub(crate) fn slot_retained(&self, bytes: i64) {
        self.slot_retained_bytes.set(bytes);
    }

    /// Ready unless replication or delivery has been stalled for longer than
    /// `threshold`. Replication is stalled when no status update went out (we
    /// send one every status interval while connected); delivery is stalled
    /// when records are in flight and no delivery report came.
    pub fn readiness(&self, threshold: Duration) -> Result<(), String> {
        let now = SystemTime::now();
        let mut problems = Vec::new();
        match self.stream.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            None => problems.push("replication has not started".to_owned()),
            Some(stats) => {
                let age = stats
                    .last_status_update()
                    .and_then(|t| now.duration_since(t).ok());
                match age {
                    // A reconnect shorter than the threshold is not a stall.
                    Some(age) if age <= threshold => {}
                    Some(age) => problems.push(format!(
                        "replication stalled: {} for {:.1}s",
                        if stats.connected() {
                            "no status update"
                        } else {
                            "disconnected"
                        },
                        age.as_secs_f64()
                    )),
                    None => problems.push("replication stalled: no status update sent yet".to_owned()),
                }
            }
        }
        let since = self.stalled_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            let last = self.last_delivery_ms.load(Ordering::Relaxed).max(since);
            let quiet = Duration::from_millis(now_ms().saturating_sub(last));
            if quiet > threshold {
                problems.push(format!(
                    "delivery stalled: {} records in flight, no delivery report for {:.1}s",
                    self.in_flight.get(),
                    quiet.as_secs_f64()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
