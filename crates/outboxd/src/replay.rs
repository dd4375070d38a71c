//! `outboxd replay`: re-publish the outbox events committed after a saved LSN.
//!
//! Postgres cannot rewind a slot, so a replay can reach back only to the
//! slot's `confirmed_flush_lsn`; `[retention]` keeps that position behind
//! what was delivered so recent events stay replayable. The replay reads from
//! a *temporary copy* of the service's slot, made on its own replication
//! connection and dropped with it: the running service (if any) and its slot
//! are untouched, so a replay never causes duplicates of normal streaming and
//! never acknowledges anything. It runs as a separate command and exits when
//! it reaches `--to` (default: the end of WAL when it started).

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use outbox_core::{header, Delivery};
use pg_replication::{catalog, ReplicationError, ReplicationEvent, ReplicationStream};
use pgoutput::Lsn;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::pipeline::{to_record, Unmappable};
use crate::run::pipeline_options;
use crate::sink::AnySink;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Re-publish events of transactions ending after this position.
    pub from: Lsn,
    /// Stop before transactions committed at or after this position (default:
    /// the end of WAL when the replay starts).
    pub to: Option<Lsn>,
    /// Publish everything to this topic instead of the routed one.
    pub topic_override: Option<String>,
    /// List the events, publish nothing.
    pub dry_run: bool,
}

/// One replayed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Event id.
    pub id: String,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: String,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// Index in the transaction.
    pub index: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Events re-published (or listed, in a dry run).
    pub events: u64,
    /// Of those, acknowledged by the broker (all of them when the replay succeeds).
    pub delivered: u64,
}

/// Runs a replay; `each` sees every event as it is handed to the producer
/// (or listed). Memory stays bounded whatever the replay's length: events are
/// not collected, and delivery reports are taken as they come; the first
/// failed one ends the replay with an error.
pub async fn replay(
    config: &Config,
    options: &ReplayOptions,
    mut each: impl FnMut(&Replayed),
) -> anyhow::Result<ReplaySummary> {
    config.validate()?;
    let pipeline = pipeline_options(config)?;
    let client = config
        .replication()?
        .connect_catalog()
        .await
        .context("cannot connect to PostgreSQL")?;
    let slot = catalog::read_slot(&client, &config.postgres.slot)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_context(|| {
            format!(
                "replication slot {:?} does not exist: run `outboxd setup`",
                config.postgres.slot
            )
        })?;
    let oldest = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    if options.from < oldest {
        bail!(
            "cannot replay from {}: the oldest replayable position is {oldest} (slot {:?}'s confirmed_flush_lsn; \
             Postgres cannot decode earlier changes again). Events committed after {oldest} can be replayed; \
             set [retention] to keep a longer replay window",
            options.from,
            config.postgres.slot
        );
    }
    let end: Lsn = match options.to {
        Some(to) => to,
        None => client
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?
            .get::<_, String>(0)
            .parse()?,
    };
    if end <= options.from {
        bail!("--to {end} is not after --from {}", options.from);
    }

    let mut stream_config = config.stream()?;
    stream_config.copy_from = Some(config.postgres.slot.clone());
    stream_config.slot = format!("{}_replay_{}", config.postgres.slot, std::process::id());
    stream_config.skip_through = options.from;
    stream_config.reconnect = false;

    let (deliveries_tx, mut deliveries) = mpsc::unbounded_channel::<Delivery>();
    let mut sink = if options.dry_run {
        None
    } else {
        Some(AnySink::build(config, deliveries_tx).await?)
    };
    // The service may acknowledge (move the slot) between the check above
    // and the copy: the copy then starts after `--from`, and is refused.
    let mut stream = match ReplicationStream::start(stream_config).await {
        Ok(stream) => stream,
        Err(ReplicationError::CopyAhead { start, .. }) => bail!(
            "cannot replay from {}: the oldest replayable position is now {start} (slot {:?} was acknowledged \
             past {} while the replay started, so Postgres cannot decode the events in between again). \
             Events committed after {start} can be replayed; set [retention] to keep a longer replay window",
            options.from,
            config.postgres.slot,
            options.from
        ),
        Err(err) => return Err(err.into()),
    };
    let stats = stream.stats();
    let replay_header = Bytes::from(format!("from={} to={end}", options.from));
    let mut open = false;
    let mut commit_time = None;
    let mut summary = ReplaySummary::default();
    loop {
        while let Ok(delivery) = deliveries.try_recv() {
            delivered(&mut summary, delivery)?;
        }
        let event = match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => bail!("the replication stream ended before the replay reached {end}"),
            // Nothing buffered: done once everything up to `end` was received.
            Err(_) if !open && stats.received() >= end => break,
            Err(_) => continue,
        };
        match &event {
            ReplicationEvent::Begin(begin) => {
                if begin.commit_lsn >= end {
                    break;
                }
                open = true;
                commit_time = Some(begin.commit_time);
            }
            ReplicationEvent::Commit(_) => open = false,
            _ => {
                if !open {
                    continue;
                }
                let Some((position, record)) =
                    to_record(&pipeline.mapping, &pipeline.routing, &event, commit_time)
                else {
                    continue;
                };
                let mut record = match record {
                    Ok(record) => record,
                    Err(Unmappable { id, error, .. }) => {
                        bail!(
                            "event id={id} at {} index {} cannot be replayed: {error}",
                            position.commit_lsn,
                            position.index
                        )
                    }
                };
                if let Some(topic) = &options.topic_override {
                    record.topic = topic.clone();
                }
                record
                    .headers
                    .push((header::REPLAY.to_owned(), replay_header.clone()));
                let item = Replayed {
                    id: record.id.clone(),
                    topic: record.topic.clone(),
                    key: String::from_utf8_lossy(&record.key).into_owned(),
                    commit_lsn: position.commit_lsn,
                    index: position.index,
                };
                each(&item);
                summary.events += 1;
                if let Some(sink) = sink.as_mut() {
                    // Transactions are not tracked: a replay acknowledges nothing.
                    outbox_core::Sink::send(sink, record, outbox_core::TxSeq::default()).await?;
                }
            }
        }
    }
    stream.shutdown().await.ok();
    if let Some(mut sink) = sink {
        outbox_core::Sink::flush(&mut sink).await?;
        drop(sink);
        while let Some(delivery) = deliveries.recv().await {
            delivered(&mut summary, delivery)?;
        }
    } else {
        summary.delivered = summary.events;
    }
    Ok(summary)
}

/// Counts a delivery report; a failed one ends the replay.
fn delivered(summary: &mut ReplaySummary, delivery: Delivery) -> anyhow::Result<()> {
    match delivery.result {
        Ok(()) => {
            summary.delivered += 1;
            Ok(())
        }
        Err(err) => bail!(
            "replayed event id={} (commit LSN {}, index {}) was not delivered: {}; {} of {} replayed \
             events were delivered before it (re-running the replay re-sends them: consumers deduplicate on id)",
            delivery.id,
            delivery.position.commit_lsn,
            delivery.position.index,
            err.message,
            summary.delivered,
            summary.events
        ),
    }
}
