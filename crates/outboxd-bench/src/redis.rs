//! Redis in the benchmark: where outboxd's Redis sink writes (a unique key
//! prefix on the given server, every key under it removed afterwards, the
//! records counted first) and the ceiling its figures are compared with — a
//! bare `XADD` pipeline on one connection, batches of the sink's window one
//! at a time (as the sink sends them), each entry with the fields and sizes
//! outboxd's Streams mode writes for an event of the backlog. The same
//! pipeline of the sink's idempotent append script (`EVALSHA`, same keys
//! and arguments as the sink's) shows what the idempotency costs the server,
//! without outboxd.

use std::time::Instant;

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;

use crate::consumer::Report;
use crate::usage;

/// How the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Streams,
    BullMq,
}

impl Mode {
    /// `[redis] mode`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Streams => "streams",
            Mode::BullMq => "bullmq",
        }
    }
}

/// Where the benchmark writes: every key starts with `prefix` (or is the
/// Streams mode's dedupe set of such a stream).
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub(crate) url: String,
    pub(crate) prefix: String,
}

impl Destination {
    pub(crate) fn new(url: &str, label: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        Ok(Destination {
            url: url.to_owned(),
            prefix: format!("outboxd-bench-{label}-{}-{nanos:x}", std::process::id()),
        })
    }

    /// The stream (Streams mode) or queue (BullMQ mode) of the backlog's
    /// events: the consumer child routes to `{prefix}.outbox.event.${aggregatetype}`.
    fn stream(&self) -> String {
        format!("{}.outbox.event.order", self.prefix)
    }

    async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        let shown = sink_redis::RedisConfig::new(&self.url)
            .map(|c| c.redacted_url())
            .context("bad --redis url")?;
        redis::Client::open(self.url.as_str())
            .context("bad --redis url")?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to {shown}"))
    }

    /// Records the sink wrote: the stream's length, or the BullMQ queue's
    /// waiting jobs (nothing processes them).
    pub(crate) async fn written(&self, mode: Mode) -> anyhow::Result<u64> {
        let mut connection = self.connect().await?;
        let n: u64 = match mode {
            Mode::Streams => {
                redis::cmd("XLEN")
                    .arg(self.stream())
                    .query_async(&mut connection)
                    .await?
            }
            Mode::BullMq => {
                redis::cmd("LLEN")
                    .arg(format!("{}:{}:wait", self.prefix, self.stream()))
                    .query_async(&mut connection)
                    .await?
            }
        };
        Ok(n)
    }

    /// Removes every key of the destination.
    pub(crate) async fn remove(&self) -> anyhow::Result<()> {
        let mut connection = self.connect().await?;
        for pattern in [
            format!("{}*", self.prefix),
            format!(
                "{}*",
                sink_redis::append::dedupe_key(&self.prefix).trim_end_matches('}')
            ),
        ] {
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut connection)
                    .await?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<u64>(&mut connection)
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}

/// Appends `events` entries like outboxd's (same fields, `body` as the
/// payload) to the destination's stream with bare `XADD … *` (or, with
/// `script`, the sink's append script), pipelined in batches of `window`,
/// one batch at a time, and waits for the last reply. Runs in this process:
/// its CPU is the difference of this process's CPU time.
pub(crate) async fn ceiling(
    destination: &Destination,
    events: u64,
    body: &[u8],
    window: usize,
    script: bool,
) -> anyhow::Result<Report> {
    let mut connection = destination.connect().await?;
    let stream = destination.stream();
    let dedupe = sink_redis::append::dedupe_key(&stream);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(sink_redis::append::SCRIPT)
        .query_async(&mut connection)
        .await?;
    let cpu_before = usage::own_cpu_seconds();
    let started = Instant::now();
    let mut appended = 0u64;
    while appended < events {
        let batch = (events - appended).min(window as u64);
        let mut pipe = redis::pipe();
        for i in appended..appended + batch {
            let id = format!("00000000-0000-4000-8000-{i:012}");
            let command = if script {
                pipe.cmd("EVALSHA")
                    .arg(&sha)
                    .arg(2)
                    .arg(&stream)
                    .arg(&dedupe)
                    .arg(&id)
                    .arg(sink_redis::defaults::DEDUPE_TTL.as_secs())
                    .arg(0)
            } else {
                pipe.cmd("XADD").arg(&stream).arg("*")
            };
            command
                .arg("id")
                .arg(id)
                .arg("type")
                .arg("OrderCreated")
                .arg("aggregatetype")
                .arg("order")
                .arg("outboxd.lsn")
                .arg(format!("0/{:X}", 0x1_0000_0000 + i * 512))
                .arg("outboxd.index")
                .arg("0")
                .arg("aggregateid")
                .arg(format!("agg-{}", i % 1000))
                .arg("payload")
                .arg(body);
        }
        let ids: Vec<Option<String>> = pipe.query_async(&mut connection).await?;
        if ids.iter().flatten().count() as u64 != batch {
            bail!(
                "{} entries appended by {batch} commands",
                ids.iter().flatten().count()
            );
        }
        appended += batch;
    }
    Ok(Report {
        events: appended,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: usage::own_cpu_seconds() - cpu_before,
        ..Report::default()
    })
}
