//! `outboxd run`: the service.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pg_replication::ReplicationStream;
use pgoutput::Lsn;
use tokio::sync::mpsc;
use tracing::info;

use crate::admin;
use crate::checkpoint::Origin;
use crate::checkpoint_store::{Checkpoints, StoreKind};
use crate::config::Config;
use crate::lease;
use crate::maintenance;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, PipelineOptions, Retention, Summary};
use crate::sink::AnySink;
use tracing::warn;

/// The pipeline options a configuration describes.
pub fn pipeline_options(config: &Config) -> anyhow::Result<PipelineOptions> {
    Ok(PipelineOptions {
        mapping: config.mapping(),
        routing: config.routing()?,
        policy: config.policy()?,
        dead_letter_topic: config.dead_letter(),
        drain_timeout: config.drain_timeout(),
        checkpoint_interval: Duration::from_secs(1),
        tables: config.postgres.tables.join(", "),
        retention: Retention {
            duration: Duration::from_millis(config.retention.duration_ms),
            bytes: config.retention.bytes,
        },
    })
}

/// Runs until `shutdown` resolves or a definite error. Setup problems (slot,
/// publication, wal_level, credentials, unsafe Kafka settings) are reported
/// before anything is streamed.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    run_with_metrics(config, Metrics::new(), shutdown).await
}

/// [`run`], reporting into `metrics` (and serving them if `admin.listen` is set).
pub async fn run_with_metrics(
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, RunError> {
    run_from(config, metrics, None, shutdown).await
}

/// [`run_with_metrics`], starting at `start_lsn` instead of the checkpoint
/// (`run --start-lsn`): transactions ending at or before it are skipped. It
/// may not be older than the slot's confirmed position (Postgres cannot go
/// back); use `replay` for that window.
///
/// When the server moves to another timeline (a failover, a point-in-time
/// restore), the run starts over from the slot's position on the new
/// timeline: the checkpoint, written on the old one, is not used to skip.
pub async fn run_from(
    config: &Config,
    metrics: Arc<Metrics>,
    start_lsn: Option<Lsn>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, RunError> {
    config.validate().map_err(RunError::Setup)?;
    let options = pipeline_options(config).map_err(RunError::Setup)?;
    tokio::pin!(shutdown);
    // The admin server first: a standby answers /readyz (503 "standby") too.
    // Held until `run` returns (aborted on drop).
    let _admin = if config.admin.listen.is_empty() {
        None
    } else {
        let threshold = Duration::from_millis(config.admin.stall_threshold_ms);
        let (_, task) = admin::serve(&config.admin.listen, Arc::clone(&metrics), threshold)
            .await
            .map_err(RunError::Setup)?;
        Some(AbortOnDrop(task))
    };
    let replication = config.replication().map_err(RunError::Setup)?;
    let mut start_lsn = start_lsn;
    loop {
        let mut waited = false;
        let lease = match lease::acquire(&replication, &config.postgres.slot, shutdown.as_mut(), |holder| {
            waited = true;
            metrics.standby(holder.map_or_else(|| "another instance".to_owned(), ToString::to_string));
        })
        .await
        {
            lease::Acquired::Leader(lease) => lease,
            lease::Acquired::Shutdown => {
                info!("shutdown requested while waiting for the lease; nothing was streamed");
                return Ok(Summary::default());
            }
        };
        metrics.leading(waited);
        match lead(
            config,
            &options,
            &metrics,
            start_lsn.take(),
            shutdown.as_mut(),
            &lease,
        )
        .await
        {
            // The lease connection broke (a PostgreSQL restart, a network
            // cut): nothing more was confirmed; take the lease again, or wait
            // as a standby if another instance was quicker.
            Err(RunError::Pipeline(PipelineError::LeaseLost(reason))) => {
                warn!(reason = %reason, "the lease may be lost: streaming stopped; taking the lease again");
                metrics.lease_lost();
            }
            // Another timeline (a failover, a point-in-time restore): start
            // over from the slot's position there; the checkpoint, written on
            // the old timeline, is not used to skip.
            Err(RunError::Pipeline(PipelineError::Replication(err))) if err.restarts_from_slot() => {
                warn!(error = %err, "restarting from the slot's position");
            }
            other => return other,
        }
    }
}

/// Streams while holding `lease`: until shutdown, a definite error, or the
/// lease's loss.
async fn lead(
    config: &Config,
    options: &PipelineOptions,
    metrics: &Arc<Metrics>,
    start_lsn: Option<Lsn>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    lease: &lease::Lease,
) -> Result<Summary, RunError> {
    let options = options.clone();
    let metrics = Arc::clone(metrics);
    // Read after taking the lease: a previous leader may have written it meanwhile.
    let checkpoint = Checkpoints::from_config(config).map_err(RunError::Setup)?;
    let saved_checkpoint = checkpoint.load().await.map_err(RunError::Setup)?;
    let Some(identity) = identify(config, shutdown.as_mut()).await? else {
        info!("shutdown requested before PostgreSQL was reachable; nothing was streamed");
        return Ok(Summary::default());
    };
    let saved = match &saved_checkpoint {
        Some(saved) => trusted_position(config, saved, &identity).map_err(RunError::Setup)?,
        None => None,
    };
    if let Some(lsn) = start_lsn.filter(|lsn| *lsn > identity.xlogpos) {
        return Err(RunError::Setup(anyhow::anyhow!(
            "--start-lsn {lsn} is ahead of this server's WAL ({}): no transaction ends there yet",
            identity.xlogpos
        )));
    }
    let checkpoint = checkpoint.with_origin(Origin {
        system_id: identity.system_id.clone(),
        timeline: identity.timeline,
        slot: Some(config.postgres.slot.clone()),
        database: identity.dbname.clone(),
    });
    let mut stream_config = config.stream().map_err(RunError::Setup)?;
    let start = match start_lsn {
        Some(lsn) => {
            let client = config
                .replication()
                .map_err(RunError::Setup)?
                .connect_catalog()
                .await
                .map_err(|e| RunError::Setup(anyhow::anyhow!("cannot connect to PostgreSQL: {e}")))?;
            let slot = pg_replication::catalog::read_slot(&client, &config.postgres.slot)
                .await
                .map_err(|e| RunError::Setup(anyhow::anyhow!("{e}")))?;
            let oldest = slot.and_then(|s| s.confirmed_flush_lsn).unwrap_or(Lsn::ZERO);
            if lsn < oldest {
                return Err(RunError::Setup(anyhow::anyhow!(
                    "--start-lsn {lsn} is older than the slot's confirmed position {oldest}, the oldest position \
                     Postgres can stream from; start at {oldest} or later"
                )));
            }
            if let Some(saved) = saved.filter(|saved| *saved != lsn) {
                tracing::warn!(checkpoint = %saved, start = %lsn, "starting at --start-lsn instead of the checkpoint");
            }
            lsn
        }
        None => saved.unwrap_or(Lsn::ZERO),
    };
    stream_config.skip_through = start;
    stream_config.identity = Some(identity.clone());

    let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
    let sink = AnySink::build(config, deliveries_tx)
        .await
        .map_err(RunError::Setup)?;
    // Starting retries while the server is unreachable or the slot is active
    // for another process (a second instance, or the walsender of a killed
    // one): a stop request must still end it at once.
    let stream = tokio::select! {
        stream = ReplicationStream::start(stream_config) => stream.map_err(|e| RunError::Pipeline(e.into()))?,
        () = shutdown.as_mut() => {
            info!("shutdown requested while connecting to the slot; nothing was streamed");
            return Ok(Summary::default());
        }
    };
    metrics.attach_stream(stream.stats());
    let mut background = vec![tokio::spawn(housekeeping(config.clone(), Arc::clone(&metrics)))];
    if config.heartbeat.interval_ms > 0 {
        background.push(tokio::spawn(maintenance::heartbeat(config.clone())));
    }
    if config.cleanup.interval_ms > 0 {
        background.push(tokio::spawn(maintenance::cleanup(config.clone())));
    }
    info!(slot = %config.postgres.slot, publication = %config.postgres.publication,
          checkpoint = %start, tables = %config.postgres.tables.join(","), "streaming");
    // With `--start-lsn` the start counts as delivered now; from the
    // checkpoint, as of when it was written (retention keeps counting).
    let age = match (start_lsn, &saved_checkpoint) {
        (None, Some(saved)) => saved.age().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let mut pipeline = Pipeline::new(
        options,
        sink,
        deliveries,
        start,
        Some(checkpoint),
        Arc::clone(&metrics),
    )
    .start_delivered_ago(age);
    if config.cleanup.interval_ms > 0 {
        pipeline = pipeline.keep_rows(maintenance::KeptRows::new(config));
    }
    let result = pipeline
        .run(stream, shutdown, lease.lost())
        .await
        .map_err(RunError::Pipeline);
    for task in background {
        task.abort();
    }
    result
}

/// `IDENTIFY_SYSTEM` on a replication connection, retried with backoff while
/// the server is unreachable or starting (as the stream's own connection
/// is); `None` if shutdown is requested meanwhile.
async fn identify(
    config: &Config,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<pg_replication::SystemIdentity>, RunError> {
    let replication = config.replication().map_err(RunError::Setup)?;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut conn = pg_replication::ReplicationConnection::connect(&replication).await?;
            let identity = conn.identify_system().await;
            conn.close().await;
            identity
        };
        match attempt.await {
            Ok(identity) => return Ok(Some(identity)),
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, "cannot reach PostgreSQL yet, retrying");
            }
            Err(err) => {
                return Err(RunError::Setup(anyhow::anyhow!(
                    "cannot start replication: {err}"
                )))
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The checkpoint's position, if it may be trusted on this server: its
/// transactions are skipped, so a position from another cluster, or from
/// ahead of this server's WAL, would skip transactions never delivered.
///
/// * Another system identifier: refused (the file is another cluster's).
/// * Another slot or database: refused (LSNs are cluster-wide, so another
///   slot's position would skip this one's events). Files without these
///   lines (older versions) are not refused for them.
/// * Ahead of the server's current WAL: refused (a restore from backup, or
///   another server): nothing can have been delivered there.
/// * Another timeline (failover, point-in-time restore): the history may
///   have forked before the position, and the LSNs after the fork hold other
///   transactions. The checkpoint is not used to skip: streaming resumes at
///   the slot and re-sends from there (duplicates, identifiable by id; never
///   a loss). Its position may then be ahead of the new timeline's WAL (the
///   old primary wrote more than the standby received): harmless, as it
///   skips nothing.
/// * Ahead of the server's current WAL on the same timeline: refused (a
///   restore from backup, or another server): nothing can have been
///   delivered there. Files from versions without an origin are trusted as
///   before.
fn trusted_position(
    config: &Config,
    saved: &crate::checkpoint::Checkpoint,
    identity: &pg_replication::SystemIdentity,
) -> anyhow::Result<Option<Lsn>> {
    let path = match config.checkpoint.store {
        StoreKind::File => config.checkpoint.path.display().to_string(),
        StoreKind::Postgres => format!(
            "row of slot {:?} in table {}",
            config.postgres.slot, config.checkpoint.table
        ),
    };
    let lsn = saved.delivered_end_lsn;
    if let Some(origin) = &saved.origin {
        if origin.system_id != identity.system_id {
            anyhow::bail!(
                "the checkpoint {path} belongs to another PostgreSQL cluster (system identifier {}; this \
                 server is {}): its position means nothing here. Point checkpoint.path at this cluster's \
                 file, or move the file away to start from the slot's position",
                origin.system_id,
                identity.system_id
            );
        }
    }
    if let Some(origin) = &saved.origin {
        let database = identity.dbname.as_deref().unwrap_or("?");
        let slot = &config.postgres.slot;
        let other_slot = origin.slot.as_deref().is_some_and(|s| s != slot);
        let other_database = origin.database.as_deref().is_some_and(|d| d != database);
        if other_slot || other_database {
            anyhow::bail!(
                "the checkpoint {path} belongs to slot {:?} in database {:?}, but this instance streams \
                 slot {slot:?} in database {database:?}: LSNs are shared by every slot of a cluster, so its \
                 position would skip this slot's events. Give each instance its own checkpoint.path",
                origin.slot.as_deref().unwrap_or("?"),
                origin.database.as_deref().unwrap_or("?"),
            );
        }
    }
    if let Some(origin) = saved.origin.as_ref().filter(|o| o.timeline != identity.timeline) {
        tracing::warn!(
            checkpoint = %lsn,
            checkpoint_timeline = origin.timeline,
            timeline = identity.timeline,
            "the checkpoint was written on another timeline (failover or restore): not skipping by it; \
             events after the slot's position are re-sent"
        );
        return Ok(None);
    }
    if lsn > identity.xlogpos {
        anyhow::bail!(
            "the checkpoint {path} is at {lsn}, ahead of this server's WAL ({}): the server was restored \
             from a backup or is not the one the checkpoint was written for, and skipping up to {lsn} \
             could skip transactions never delivered. Move the file away to start from the slot's \
             position (what follows it is re-sent; consumers deduplicate on id)",
            identity.xlogpos
        );
    }
    Ok(Some(lsn))
}

/// Once a second: metrics that are sampled rather than counted. Every ten
/// seconds: the WAL the slot retains on the server.
async fn housekeeping(config: Config, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut client = None;
    for n in 0u64.. {
        tick.tick().await;
        metrics.tick();
        if n % 10 != 0 {
            continue;
        }
        if client.is_none() {
            client = match config.replication() {
                Ok(c) => c.connect_catalog().await.ok(),
                Err(_) => None,
            };
        }
        if let Some(c) = &client {
            let retained = c
                .query_opt(
                    "select (pg_current_wal_lsn() - restart_lsn)::bigint from pg_replication_slots where slot_name = $1",
                    &[&config.postgres.slot],
                )
                .await;
            match retained {
                Ok(Some(row)) => metrics.slot_retained(row.get::<_, Option<i64>>(0).unwrap_or(0)),
                Ok(None) => {}
                Err(_) => client = None,
            }
        }
    }
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Configuration or setup is wrong; nothing was streamed.
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// The pipeline stopped.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when
/// this is called (inside the runtime), not when the future is first polled,
/// so a signal during startup still means a clean shutdown.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            },
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "cannot install signal handlers; stop with SIGKILL only");
                std::future::pending::<()>().await
            }
        }
    }
}

/// Aborts a background task when dropped (every return path of `run`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
