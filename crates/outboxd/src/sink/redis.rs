//! The Redis sink, built from `[redis]`, and what `outboxd check` says about it.

use anyhow::Context;
use outbox_core::{Delivery, NameRule};
use sink_redis::server::Idempotency;
use sink_redis::RedisSink;
use tokio::sync::mpsc;

use crate::check::{fail, ok, warn, Finding};
use crate::config::Config;

/// Stream names: any bytes; a bound keeps a runaway template visible.
pub const NAMES: NameRule = NameRule::Bytes {
    max: 1024,
    allow_empty: false,
};

/// The sink the configuration describes.
pub fn build(config: &Config, deliveries: mpsc::UnboundedSender<Delivery>) -> anyhow::Result<RedisSink> {
    RedisSink::new(config.redis()?, deliveries).context("cannot create the Redis sink")
}

/// `outboxd check` for Redis: reachable, its version, how re-sends are kept
/// from being appended twice, replicas for `wait_replicas`, trimming.
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let redis = match config.redis() {
        Ok(redis) => redis,
        Err(err) => {
            findings.push(fail("redis configuration", format!("{err:#}"), "fix [redis]"));
            return findings;
        }
    };
    let server = match sink_redis::server::probe(&redis).await {
        Ok(server) => server,
        Err(err) => {
            findings.push(fail(
                "redis",
                format!("cannot reach {}: {err}", redis.redacted_url()),
                "check redis.url (host, port, password, rediss:// for TLS) and network access",
            ));
            return findings;
        }
    };
    findings.push(ok(
        "redis",
        format!("{} (Redis {})", redis.redacted_url(), server.version),
    ));
    match &redis.mode {
        sink_redis::Mode::BullMq { .. } => findings.push(ok(
            "redis idempotency",
            format!(
                "bullmq mode: job id = event id, so BullMQ (its own addStandardJob script, bullmq {}) ignores \
                 a re-sent record while its job exists; keep completed jobs (removeOnComplete) at least as \
                 long as a replay window",
                sink_redis::bullmq::BULLMQ_VERSION
            ),
        )),
        _ => {
            let idempotency = match server.idempotency {
                Idempotency::LuaScript if server.has_idmp => {
                    "atomic Lua script with a per-stream dedupe set (the server also has XADD IDMP, which \
                     keeps ids at most 24 h and 10,000 per producer and stream; the script keeps them for \
                     redis.dedupe_ttl_ms)"
                }
                Idempotency::LuaScript => {
                    "atomic Lua script with a per-stream dedupe set (the server has no XADD IDMP, Redis < 8.6)"
                }
            };
            findings.push(ok(
                "redis idempotency",
                format!("{idempotency}; ids kept {:?}", redis.dedupe_ttl),
            ));
            let retention = std::time::Duration::from_millis(config.retention.duration_ms);
            if redis.dedupe_ttl < retention {
                findings.push(warn(
                    "redis dedupe ttl",
                    format!(
                        "ids are kept {:?}, less than the replay window {retention:?}: a re-send older than \
                         that is appended again",
                        redis.dedupe_ttl
                    ),
                    "raise redis.dedupe_ttl_ms to at least retention.duration_ms",
                ));
            }
        }
    }
    if redis.wait_replicas > server.replicas {
        findings.push(fail(
            "redis replicas",
            format!(
                "wait_replicas = {} but {} replicas are connected: nothing would ever count as delivered",
                redis.wait_replicas, server.replicas
            ),
            "lower redis.wait_replicas or attach replicas",
        ));
    }
    match (&redis.mode, redis.maxlen) {
        (sink_redis::Mode::BullMq { .. }, None) => findings.push(ok(
            "redis trimming",
            "bullmq mode: jobs stay until workers remove them (removeOnComplete / removeOnFail); \
             BullMQ trims each queue's events stream itself",
        )),
        (sink_redis::Mode::BullMq { .. }, Some(n)) => findings.push(warn(
            "redis trimming",
            format!("redis.maxlen = {n} has no effect in bullmq mode (it trims streams)"),
            "remove redis.maxlen; BullMQ workers remove jobs (removeOnComplete / removeOnFail)",
        )),
        (_, Some(n)) => findings.push(ok("redis trimming", format!("MAXLEN ~ {n} per stream"))),
        (_, None) => findings.push(warn(
            "redis trimming",
            "streams are never trimmed: each grows by every event until a consumer or an operator trims it",
            "set redis.maxlen (XADD MAXLEN ~), or trim with XTRIM after consumers have read",
        )),
    }
    findings
}

/// `outboxd demo`'s Redis: the configured server (default the machine's,
/// `redis://127.0.0.1:6379`), streams under a key prefix of the demo's own,
/// deleted at the end with their dedupe sets.
#[derive(Debug)]
pub struct Demo {
    url: String,
    redacted: String,
    prefix: String,
}

impl Demo {
    /// Checks that the server answers; an unreachable one is a one-line
    /// error with the fix.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let redis = config.redis()?;
        let demo = Demo {
            url: config.redis.url.clone(),
            redacted: redis.redacted_url(),
            prefix: super::demo_name("outboxd-demo"),
        };
        let server = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sink_redis::server::probe(&redis),
        )
        .await;
        match server {
            Ok(Ok(_)) => Ok(demo),
            Ok(Err(err)) => anyhow::bail!(
                "cannot reach Redis at {} ({err}): start one (apt-get install redis-server, or docker run -p \
                 6379:6379 redis) or point OUTBOXD_REDIS_URL at yours",
                demo.redacted
            ),
            Err(_) => anyhow::bail!(
                "Redis at {} did not answer within 10 s: start one (apt-get install redis-server) or point \
                 OUTBOXD_REDIS_URL at yours",
                demo.redacted
            ),
        }
    }

    fn stream(&self) -> String {
        format!("{}.outbox.event.order", self.prefix)
    }

    /// One line for the demo's header.
    pub fn describe(&self) -> String {
        format!("redis      {}, stream {}", self.redacted, self.stream())
    }

    /// Points the configuration at it.
    pub fn configure(&self, config: &mut Config) {
        config.sink.kind = super::SinkKind::Redis;
        config.redis.url = self.url.clone();
        config.routing.topic = format!("{}.outbox.event.${{aggregatetype}}", self.prefix);
    }

    /// Reads the stream as entries arrive and hands each to `print`, until `stop`.
    pub fn spawn_reader(
        &self,
        print: Box<dyn Fn(&super::DemoRecord) + Send>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let url = self.url.clone();
        let stream = self.stream();
        tokio::task::spawn_blocking(move || {
            use redis::streams::{StreamReadOptions, StreamReadReply};
            use redis::Commands;

            let mut connection = redis::Client::open(url.as_str())?.get_connection()?;
            let mut last = "0".to_owned();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply: StreamReadReply = connection.xread_options(
                    &[stream.as_str()],
                    &[last.as_str()],
                    &StreamReadOptions::default().block(200).count(100),
                )?;
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    let field = |name: &str| {
                        entry
                            .map
                            .get(name)
                            .and_then(|v| redis::from_redis_value::<String>(v).ok())
                            .unwrap_or_default()
                    };
                    print(&super::DemoRecord {
                        key: field(sink_redis::append::field::AGGREGATE_ID),
                        lane: entry.id.clone(),
                        event_type: field("type"),
                        lsn: field("outboxd.lsn"),
                        index: field("outboxd.index"),
                        id: field("id"),
                    });
                    last = entry.id;
                }
            }
            Ok(())
        })
    }

    /// Deletes the demo's streams and their dedupe sets.
    pub async fn stop(self) {
        let prefix = self.prefix.clone();
        let url = self.url.clone();
        let removed = tokio::task::spawn_blocking(move || -> redis::RedisResult<()> {
            use redis::Commands;
            let mut connection = redis::Client::open(url.as_str())?.get_connection()?;
            let mut keys: Vec<String> = connection.scan_match(format!("{prefix}*"))?.collect();
            let dedupe: Vec<String> = connection
                .scan_match(format!(
                    "{}*",
                    sink_redis::append::dedupe_key(&prefix).trim_end_matches('}')
                ))?
                .collect();
            keys.extend(dedupe);
            if !keys.is_empty() {
                connection.del::<_, ()>(keys)?;
            }
            Ok(())
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            eprintln!(
                "could not delete the demo's keys {}* from {}",
                self.prefix, self.redacted
            );
        }
    }
}
