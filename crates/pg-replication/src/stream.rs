//! The replication stream: one task that owns the replication connection,
//! turns frames into events, reports progress on its own timer, and
//! reconnects after transient failures.
//!
//! ```text
//!  walsender ──CopyData──▶ task ──bounded channel──▶ ReplicationStream::next()
//!      ▲                    │                               │
//!      └── status updates ◀─┴── timer + AckHandle ◀─────────┘ ack(end_lsn)
//! ```
//!
//! Backpressure: the channel is bounded twice, in events
//! (`channel_capacity`) and in bytes (`buffer_bytes`, counting the column
//! values and message contents of the events it holds: a row is held as the
//! bytes of its values). The task holds at most the events of one frame
//! (two) while the channel is full, and stops reading the socket meanwhile;
//! TCP then stops the walsender. So what waits between the server and the
//! consumer is at most `buffer_bytes`, plus one frame, plus one event larger
//! than the whole budget (it is let through alone, never split or refused).
//! Status updates keep going on their timer whatever the consumer does, so a
//! stalled downstream never times the walsender out.
//!
//! Publication changes: while streaming, a second task re-checks on a timer
//! that the publication still publishes every row of every outbox table
//! under its configured name, and nothing is confirmed past the last
//! position it verified (see `progress.rs`); a rename seen in a Relation
//! message stops the stream at once.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use pgoutput::{Decoder, Lsn, PgTimestamp, ReplicationMessage};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::assembler::{Assembler, StreamError, UpdatePolicy};
use crate::catalog::{self, CheckError};
use crate::config::ReplicationConfig;
use crate::connection::{CopyBoth, ReplicationConnection, SystemIdentity};
use crate::error::Error;
use crate::event::{OutboxTable, ReplicationEvent};
use crate::progress::{AckHandle, Progress};

/// The pgoutput protocol version we ask for. Version 1 is enough: we ask for
/// neither streaming of in-progress transactions nor two-phase, so Postgres
/// sends each transaction whole, at commit, in commit order — rolled-back work
/// never reaches us.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default of [`StreamConfig::buffer_bytes`]: 16 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// Bytes counted for an event besides its values (and for Begin and Commit).
const EVENT_OVERHEAD: usize = 64;

/// What an event holds in memory, for the byte budget: its values (slices of
/// the frame it came in) and a little bookkeeping.
fn event_bytes(event: &ReplicationEvent) -> usize {
    let values = match event {
        ReplicationEvent::Insert(insert) => insert
            .row
            .columns
            .iter()
            .map(|value| match value {
                pgoutput::ColumnValue::Text(bytes) | pgoutput::ColumnValue::Binary(bytes) => bytes.len(),
                _ => 0,
            })
            .sum(),
        ReplicationEvent::Message(message) => message.content.len() + message.prefix.len(),
        _ => 0,
    };
    values + EVENT_OVERHEAD
}

/// What the channel carries: an event (or the final error) and its share of
/// the byte budget, returned when the consumer takes it.
type Item = (
    Result<ReplicationEvent, ReplicationError>,
    Option<OwnedSemaphorePermit>,
);

/// What to stream and how.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Where to connect.
    pub connection: ReplicationConfig,
    /// The logical slot (must exist; see `catalog::create_slot`).
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Tables whose inserts are outbox events.
    pub tables: Vec<OutboxTable>,
    /// Transactional logical messages with this prefix are outbox events too.
    pub message_prefix: Option<String>,
    /// What an UPDATE of an outbox row does (the publication must publish
    /// updates for it to see any).
    pub on_update: UpdatePolicy,
    /// Transactions ending at or before this position are skipped (a
    /// checkpoint). Streaming still starts at the slot's confirmed position,
    /// and the slot is confirmed past it only when the caller acknowledges
    /// (so a replay window kept behind the checkpoint survives restarts).
    pub skip_through: Lsn,
    /// How often to send status updates; capped at half of `wal_sender_timeout`.
    pub status_interval: Duration,
    /// Events buffered between the task and the consumer.
    pub channel_capacity: usize,
    /// Bytes of events (column values, message contents) buffered between
    /// the task and the consumer; see the module notes.
    pub buffer_bytes: usize,
    /// First reconnect delay; doubles up to `reconnect_max` (with jitter).
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Reconnect after transient failures (otherwise they end the stream
    /// with an error).
    pub reconnect: bool,
    /// Stream from a temporary copy of this slot, named `slot`, made on the
    /// replication connection (`pg_copy_logical_replication_slot`) and gone
    /// when the connection closes: a replay reads the same changes as the
    /// service without touching the service's slot. A copy that starts after
    /// `skip_through` is refused ([`ReplicationError::CopyAhead`]).
    pub copy_from: Option<String>,
    /// The cluster and timeline the caller's positions (`skip_through`, its
    /// checkpoint) belong to, from its own `IDENTIFY_SYSTEM`; `None`: the
    /// first connection's. Every connection, reconnects included, runs
    /// `IDENTIFY_SYSTEM` and stops the stream when the server is another
    /// cluster ([`ReplicationError::OtherCluster`]) or on another timeline
    /// ([`ReplicationError::TimelineChanged`]).
    pub identity: Option<SystemIdentity>,
}

impl StreamConfig {
    /// Defaults: 1 s status interval, 1024 buffered events of at most
    /// [`DEFAULT_BUFFER_BYTES`] together, reconnects from 100 ms to 30 s.
    pub fn new(
        connection: ReplicationConfig,
        slot: impl Into<String>,
        publication: impl Into<String>,
    ) -> Self {
        StreamConfig {
            connection,
            slot: slot.into(),
            publication: publication.into(),
            tables: vec![OutboxTable::new("public", "outbox")],
            message_prefix: None,
            on_update: UpdatePolicy::Ignore,
            skip_through: Lsn::ZERO,
            status_interval: Duration::from_secs(1),
            channel_capacity: 1024,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            reconnect: true,
            copy_from: None,
            identity: None,
        }
    }
}

/// Counters of a running stream, for tests and metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    frames: AtomicU64,
    reconnects: AtomicU64,
    flushed: AtomicU64,
    received: AtomicU64,
    status_updates: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
    last_status_unix_ms: AtomicU64,
}

impl StreamStats {
    /// CopyData frames received.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    /// Reconnects after transient failures.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// The last `flush` position sent to the server.
    pub fn flushed(&self) -> Lsn {
        Lsn::new(self.flushed.load(Ordering::Relaxed))
    }
    /// The last `write` position sent to the server.
    pub fn received(&self) -> Lsn {
        Lsn::new(self.received.load(Ordering::Relaxed))
    }
    /// Status updates sent.
    pub fn status_updates(&self) -> u64 {
        self.status_updates.load(Ordering::Relaxed)
    }
    /// Whether a replication connection is streaming now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// When the last status update was sent (it is sent at least every status
    /// interval while connected, so an old value means replication is stalled).
    pub fn last_status_update(&self) -> Option<SystemTime> {
        match self.last_status_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// Setup is wrong (slot missing or invalidated, publication, wal_level, …): fix and restart.
    #[error(transparent)]
    Setup(#[from] catalog::SetupError),
    /// The connection failed in a way retrying will not fix (authentication, TLS, privileges).
    #[error(transparent)]
    Connection(Error),
    /// The stream carried something we cannot process; nothing from here on is acked.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The slot's confirmed position is past where we asked to start: something else consumed it.
    #[error("replication slot {slot:?} is at {confirmed} but streaming was requested from {requested}: another consumer advanced it, so events in between were not delivered by outboxd. Stop the other consumer; replay or reconcile the gap")]
    SlotMoved {
        /// Slot name.
        slot: String,
        /// Where we asked to start.
        requested: Lsn,
        /// Where the slot is.
        confirmed: Lsn,
    },
    /// A copy of a slot starts after the requested position: the source slot
    /// moved (was acknowledged) after the caller checked it.
    #[error("the copy of replication slot {slot:?} starts at {start}, after the requested {requested}: the slot was moved meanwhile, and the changes in between can no longer be decoded from it")]
    CopyAhead {
        /// The slot copied.
        slot: String,
        /// Where the caller asked to start.
        requested: Lsn,
        /// Where the copy starts: the oldest position it can stream.
        start: Lsn,
    },
    /// The server is on another timeline than the one streamed from: a
    /// failover to a promoted standby, or a point-in-time restore. Positions
    /// handed out on the old timeline may name other transactions on the new
    /// one (the histories fork), so nothing may be skipped or acknowledged by
    /// them: the caller starts a new stream from the slot's position on the
    /// new timeline, with no checkpoint to skip by (what follows the slot's
    /// position is re-sent: duplicates, never a gap). See
    /// [`ReplicationError::restarts_from_slot`].
    #[error("PostgreSQL is now on timeline {found}, outboxd streamed from timeline {streamed} (a failover or a point-in-time restore): positions of the old timeline mean nothing on the new one, so streaming restarts from the slot's position, re-sending what follows it")]
    TimelineChanged {
        /// The timeline streamed from.
        streamed: u32,
        /// The server's timeline now.
        found: u32,
    },
    /// The server answering is another PostgreSQL cluster than the one
    /// streamed from (an address now pointing elsewhere, a cluster rebuilt
    /// from scratch): its slot says nothing about what was delivered.
    #[error("the server now answering is another PostgreSQL cluster (system identifier {found}; outboxd streamed from {streamed}): its slot positions say nothing about what outboxd delivered. Point postgres.url back at the cluster outboxd streams from; if this cluster is meant to replace it (rebuilt, not a promoted standby of it), create its slot with `outboxd setup`, move the checkpoint file away, start outboxd again and re-publish the outbox rows written in between")]
    OtherCluster {
        /// System identifier streamed from.
        streamed: String,
        /// System identifier of the server now.
        found: String,
    },
    /// The stream task ended unexpectedly.
    #[error("replication task failed: {0}")]
    Task(String),
}

impl ReplicationError {
    /// Whether a new stream, started from the slot's position with nothing
    /// skipped by earlier positions, goes on correctly (a new timeline).
    /// Every other error stops: transient failures are retried inside the
    /// stream, so what reaches the caller needs a human.
    pub fn restarts_from_slot(&self) -> bool {
        matches!(self, ReplicationError::TimelineChanged { .. })
    }
}

/// A running replication stream. See the module notes.
#[derive(Debug)]
pub struct ReplicationStream {
    events: mpsc::Receiver<Item>,
    ack: AckHandle,
    stats: Arc<StreamStats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ReplicationError>>,
}

impl ReplicationStream {
    /// Verifies the setup (definite problems are returned here, before any
    /// streaming), then starts the stream task.
    pub async fn start(config: StreamConfig) -> Result<Self, ReplicationError> {
        let ack = AckHandle::default();
        let stats = Arc::new(StreamStats::default());
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let decoder = Decoder::new(PROTOCOL_VERSION)
            .map_err(|e| ReplicationError::Task(format!("cannot build the pgoutput decoder: {e}")))?;
        let mut runner = Runner::new(config, decoder, ack.clone(), Arc::clone(&stats), tx, shutdown_rx);
        let session = runner.connect_with_retry().await?;
        let task = tokio::spawn(async move { runner.run(session).await });
        Ok(ReplicationStream {
            events: rx,
            ack,
            stats,
            shutdown,
            task,
        })
    }

    /// The next event; `None` once the stream has stopped. A definite error is
    /// yielded once, then `None`.
    pub async fn next(&mut self) -> Option<Result<ReplicationEvent, ReplicationError>> {
        // Dropping the permit returns the event's bytes to the budget.
        self.events.recv().await.map(|(event, _bytes)| event)
    }

    /// The handle to report delivered positions with.
    pub fn ack_handle(&self) -> AckHandle {
        self.ack.clone()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<StreamStats> {
        Arc::clone(&self.stats)
    }

    /// Stops reading, sends a final status update with the acked position,
    /// and closes the connection.
    pub async fn shutdown(self) -> Result<(), ReplicationError> {
        let _ = self.shutdown.send(true);
        drop(self.events);
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(ReplicationError::Task(join.to_string())),
        }
    }
}

/// One connection's worth of state.
struct Session {
    copy: CopyBoth,
    status_interval: Duration,
    /// A server that sends nothing for this long, even when asked for a
    /// reply, is treated as gone (see `stream_session`).
    silence_limit: Duration,
    pings: PingBurst,
    /// Results of the publication re-checks (see [`watch_publication`]).
    checks: mpsc::Receiver<Result<Lsn, catalog::SetupError>>,
    watcher: JoinHandle<()>,
}

impl Session {
    /// Closes the connection and releases the socket.
    async fn close(&mut self) {
        self.watcher.abort();
        self.copy.close().await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// How long a silent server is waited for when `wal_sender_timeout` is off.
const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Shortest time between two publication re-checks.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// One publication check on a new catalog connection, within
/// [`FINAL_CHECK_TIMEOUT`]: the position it verified, if it passed.
async fn verify_once(config: &StreamConfig) -> Option<Lsn> {
    let check = async {
        let client = config.connection.connect_catalog().await.ok()?;
        let position = client
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await
            .ok()?
            .get::<_, String>(0)
            .parse::<Lsn>()
            .ok()?;
        catalog::verify_publication(&client, &config.publication, &config.tables)
            .await
            .ok()?;
        Some(position)
    };
    tokio::time::timeout(FINAL_CHECK_TIMEOUT, check)
        .await
        .ok()
        .flatten()
}

/// How long a shutdown waits for its last publication check.
const FINAL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-checks the publication every `interval` on the catalog connection
/// (reconnecting it when it breaks) and reports each passing check with
/// the server's WAL position taken just before it; a failing check is
/// reported, and ends the task.
async fn watch_publication(
    config: StreamConfig,
    mut client: Option<tokio_postgres::Client>,
    interval: Duration,
    results: mpsc::Sender<Result<Lsn, catalog::SetupError>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = config.connection.connect_catalog().await.ok();
        }
        let Some(c) = &client else { continue };
        let position = c
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await
            .ok()
            .and_then(|row| row.get::<_, String>(0).parse::<Lsn>().ok());
        let Some(position) = position else {
            client = None;
            continue;
        };
        match catalog::verify_publication(c, &config.publication, &config.tables).await {
            Ok(()) => {
                if results.send(Ok(position)).await.is_err() {
                    return;
                }
            }
            Err(CheckError::Setup(err)) => {
                let _ = results.send(Err(err)).await;
                return;
            }
            Err(CheckError::Query(err)) if err.is_transient() => client = None,
            Err(CheckError::Query(err)) => {
                let _ = results.send(Err(err.into())).await;
                return;
            }
        }
    }
}

/// Detects a walsender of a shutting-down server waiting for us.
///
/// Such a walsender sends a reply-requested keepalive, waits for our reply,
/// and sends the next at once, until our `flush` reaches its sent position
/// (`WalSndDone` in Postgres' walsender.c). In normal streaming a walsender
/// asks for a reply only when it has not heard from us for half of
/// `wal_sender_timeout`, which our status timer never lets happen. So many
/// requests in a short window while we cannot confirm `wal_end` mean the
/// server's shutdown is blocked on us: we close the connection (losing
/// nothing: we resume from the acknowledged position) instead of holding it.
#[derive(Debug)]
struct PingBurst {
    window_start: tokio::time::Instant,
    count: u32,
}

impl PingBurst {
    const WINDOW: Duration = Duration::from_secs(1);
    const LIMIT: u32 = 20;

    fn new() -> Self {
        PingBurst {
            window_start: tokio::time::Instant::now(),
            count: 0,
        }
    }

    /// Records a reply-requested keepalive; true when the burst limit is reached.
    fn record(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window_start) > Self::WINDOW {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count >= Self::LIMIT
    }
}

enum SessionEnd {
    Shutdown,
    Lost(Error),
}

struct Runner {
    config: StreamConfig,
    progress: Progress,
    assembler: Assembler,
    /// A fresh decoder for each connection.
    decoder: Decoder,
    stats: Arc<StreamStats>,
    tx: mpsc::Sender<Item>,
    /// The byte budget of the channel, one permit per byte.
    budget: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// Events of the last frame not yet taken by the channel (at most two).
    pending: VecDeque<ReplicationEvent>,
    backoff: Duration,
    connected_once: bool,
    /// The cluster and timeline streamed from (see `StreamConfig::identity`).
    identity: Option<SystemIdentity>,
}

impl Runner {
    fn new(
        config: StreamConfig,
        decoder: Decoder,
        ack: AckHandle,
        stats: Arc<StreamStats>,
        tx: mpsc::Sender<Item>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut assembler = Assembler::new(
            decoder.clone(),
            config.tables.clone(),
            config.message_prefix.clone(),
            Lsn::ZERO,
        );
        assembler.on_update = config.on_update;
        let backoff = config.reconnect_initial;
        Runner {
            progress: Progress::new(ack, Lsn::ZERO, Lsn::ZERO),
            assembler,
            decoder,
            stats,
            tx,
            budget: Arc::new(Semaphore::new(budget_permits(config.buffer_bytes) as usize)),
            shutdown,
            pending: VecDeque::with_capacity(2),
            backoff,
            connected_once: false,
            identity: config.identity.clone(),
            config,
        }
    }

    async fn run(mut self, mut session: Session) -> Result<(), ReplicationError> {
        loop {
            let end = match self.stream(&mut session).await {
                Ok(end) => end,
                Err(err) => {
                    // Definite: the consumer hears of it once; nothing past it is acked.
                    let message = err.to_string();
                    let _ = self.tx.send((Err(err), None)).await;
                    return Err(ReplicationError::Task(message));
                }
            };
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Lost(err) if !self.config.reconnect => {
                    session.close().await;
                    let err = ReplicationError::Connection(err);
                    let message = err.to_string();
                    let _ = self.tx.send((Err(err), None)).await;
                    return Err(ReplicationError::Task(message));
                }
                SessionEnd::Lost(err) => {
                    // Close the old connection now, not when the new one replaces
                    // it: a server shutting down waits for its walsender to go.
                    session.close().await;
                    warn!(slot = %self.config.slot, error = %err, "replication connection lost, reconnecting");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.progress.reset_open();
                    session = match self.reconnect().await {
                        Ok(Some(session)) => session,
                        Ok(None) => return Ok(()),
                        Err(err) => {
                            let message = err.to_string();
                            let _ = self.tx.send((Err(err), None)).await;
                            return Err(ReplicationError::Task(message));
                        }
                    };
                }
            }
        }
    }

    /// Sleeps with backoff and connects again; `None` if shut down meanwhile.
    async fn reconnect(&mut self) -> Result<Option<Session>, ReplicationError> {
        loop {
            if self.sleep_backoff().await {
                return Ok(None);
            }
            match self.connect_once().await {
                Ok(session) => return Ok(Some(session)),
                Err(Attempt::Transient(err)) => {
                    warn!(slot = %self.config.slot, error = %err, "reconnect failed, retrying");
                }
                Err(Attempt::Definite(err)) => return Err(err),
            }
        }
    }

    /// The first connection: definite errors at once, transient ones retried.
    async fn connect_with_retry(&mut self) -> Result<Session, ReplicationError> {
        loop {
            match self.connect_once().await {
                Ok(session) => return Ok(session),
                Err(Attempt::Transient(err)) => {
                    warn!(slot = %self.config.slot, error = %err, "cannot start replication yet, retrying");
                    if self.sleep_backoff().await {
                        return Err(ReplicationError::Task(
                            "shut down before replication started".into(),
                        ));
                    }
                }
                Err(Attempt::Definite(err)) => return Err(err),
            }
        }
    }

    /// Waits out the current backoff (full jitter), doubling it for next time.
    /// Returns true if shutdown was requested meanwhile.
    async fn sleep_backoff(&mut self) -> bool {
        let max = self.backoff.as_millis().max(1) as u64;
        let jittered = Duration::from_millis(max / 2 + random_u64() % (max / 2 + 1));
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
        tokio::select! {
            _ = tokio::time::sleep(jittered) => *self.shutdown.borrow(),
            _ = self.shutdown.changed() => true,
            _ = self.tx.closed() => true,
        }
    }

    async fn connect_once(&mut self) -> Result<Session, Attempt> {
        let config = &self.config;
        // The replication connection first: its errors (TLS, authentication,
        // privileges) are classified precisely.
        let mut conn = ReplicationConnection::connect(&config.connection)
            .await
            .map_err(Attempt::from_connection)?;
        // The same cluster and timeline on every (re)connect: after a
        // failover the positions we hold belong to the old timeline.
        let identity = conn.identify_system().await.map_err(Attempt::from_connection)?;
        check_identity(&mut self.identity, &identity).map_err(Attempt::Definite)?;
        // Catalog checks on every (re)connect: a slot dropped while we were away
        // is a definite error, never a reason to make a new one.
        let client = config
            .connection
            .connect_catalog()
            .await
            .map_err(Attempt::from_connection)?;
        let source = config.copy_from.as_deref().unwrap_or(&config.slot);
        let mut slot = catalog::verify(&client, source, &config.publication, &config.tables)
            .await
            .map_err(Attempt::from_check)?;
        if let Some(source) = &config.copy_from {
            conn.simple_query(&format!(
                "select slot_name from pg_copy_logical_replication_slot({}, {}, true)",
                literal(source),
                literal(&config.slot)
            ))
            .await
            .map_err(Attempt::from_connection)?;
            // The copy starts where the source is now, which may be past where
            // the caller checked it (a live service acknowledging meanwhile):
            // the changes in between cannot be decoded from it.
            slot = catalog::read_slot(&client, &config.slot)
                .await
                .map_err(|e| Attempt::from_check(e.into()))?
                .ok_or_else(|| {
                    Attempt::Definite(ReplicationError::Task(format!(
                        "the copy {:?} of slot {source:?} vanished after it was made",
                        config.slot
                    )))
                })?;
            let start = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            if !self.connected_once && start > config.skip_through {
                return Err(Attempt::Definite(ReplicationError::CopyAhead {
                    slot: source.clone(),
                    requested: config.skip_through,
                    start,
                }));
            }
        }
        let wal_sender_timeout = conn
            .wal_sender_timeout()
            .await
            .map_err(Attempt::from_connection)?
            .filter(|timeout| !timeout.is_zero());
        let status_interval = match wal_sender_timeout {
            Some(timeout) => config.status_interval.min(timeout / 2),
            None => config.status_interval,
        };
        // Three status intervals at least: we ask for a reply on every tick
        // that follows half an interval of quiet, so a live server answers
        // at least once per interval and two missed answers in a row (a
        // loaded machine's late tick, a slow reply) are not taken for a
        // dead one. A limit of two intervals left a margin of one round
        // trip, and a tick 50 ms late cut a healthy connection.
        let silence_limit = wal_sender_timeout
            .unwrap_or(DEFAULT_SILENCE_LIMIT)
            .max(status_interval * 3);

        if !self.connected_once {
            let confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            let start = confirmed.max(config.skip_through);
            // Streaming starts at the slot; transactions up to `start` are
            // skipped here, and confirmed only when the caller acknowledges.
            self.progress = Progress::new(self.progress.ack_handle().clone(), confirmed, start);
            self.assembler.reconnect(self.decoder.clone(), start);
        } else {
            let resume = self.progress.resume_position();
            self.assembler
                .reconnect(self.decoder.clone(), self.progress.handed_out().max(resume));
        }
        // The publication was verified after IDENTIFY_SYSTEM reported this position.
        self.progress.verified_through(identity.xlogpos);
        let requested = self.progress.resume_position();

        let options = [
            ("proto_version", PROTOCOL_VERSION.to_string()),
            ("publication_names", quote_publication(&config.publication)),
            ("messages", "true".to_owned()),
        ];
        let copy = conn
            .start_replication(&config.slot, requested, &options)
            .await
            .map_err(Attempt::from_connection)?;

        // Resume defensively: the slot must not be past what we asked for.
        if let Some(info) = catalog::read_slot(&client, &config.slot)
            .await
            .map_err(|e| Attempt::from_check(e.into()))?
        {
            let confirmed = info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            if !requested.is_zero() && confirmed > requested {
                return Err(Attempt::Definite(ReplicationError::SlotMoved {
                    slot: config.slot.clone(),
                    requested,
                    confirmed,
                }));
            }
        }
        info!(slot = %config.slot, publication = %config.publication, start = %requested,
              status_interval_ms = status_interval.as_millis() as u64, "replication started");
        self.connected_once = true;
        self.backoff = config.reconnect_initial;
        let (checks_tx, checks) = mpsc::channel(1);
        let watcher = tokio::spawn(watch_publication(
            config.clone(),
            Some(client),
            status_interval.max(MIN_CHECK_INTERVAL),
            checks_tx,
        ));
        Ok(Session {
            copy,
            status_interval,
            silence_limit,
            pings: PingBurst::new(),
            checks,
            watcher,
        })
    }

    /// Streams until shutdown, a lost connection, or a definite error.
    async fn stream(&mut self, session: &mut Session) -> Result<SessionEnd, ReplicationError> {
        self.stats.connected.store(true, Ordering::Relaxed);
        let end = self.stream_session(session).await;
        self.stats.connected.store(false, Ordering::Relaxed);
        end
    }

    async fn stream_session(&mut self, session: &mut Session) -> Result<SessionEnd, ReplicationError> {
        // Local handles, so the select! futures do not borrow `self`.
        let mut shutdown = self.shutdown.clone();
        let tx = self.tx.clone();
        let budget = Arc::clone(&self.budget);
        let budget_size = budget_permits(self.config.buffer_bytes) as usize;
        let mut ticker = tokio::time::interval(session.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    // Final status update with everything acked so far (verified
                    // once more, so the cap does not hold back the last acks),
                    // then close.
                    if let Some(position) = verify_once(&self.config).await {
                        self.progress.verified_through(position);
                    }
                    if let Err(err) = self.send_status(session, false).await {
                        debug!(error = %err, "final status update failed");
                    }
                    let _ = session.copy.send_copy_done().await;
                    return Ok(SessionEnd::Shutdown);
                }
                // The stream was dropped without shutdown(): stop like a crash
                // would, without a final status update.
                _ = tx.closed() => return Ok(SessionEnd::Shutdown),
                // A server (or a network path) that hangs without closing the
                // connection: TCP keepalives do not notice a peer whose kernel
                // still acknowledges. An idle walsender sends nothing, so when
                // it has been quiet for half a status interval we ask it for a reply
                // (it answers with a keepalive at once); silent past the limit,
                // it is gone, and we reconnect.
                _ = ticker.tick() => {
                    if !self.pending.is_empty() {
                        // Not reading (the consumer is behind): silence is ours.
                        last_frame = tokio::time::Instant::now();
                    }
                    let quiet = last_frame.elapsed();
                    if quiet > session.silence_limit {
                        return lost(Error::Closed(format!(
                            " (by us: the server sent nothing for {} s, not even when asked to reply)",
                            quiet.as_secs()
                        )));
                    }
                    if let Err(err) = self.send_status(session, quiet >= session.status_interval / 2).await {
                        return lost(err);
                    }
                }
                Some(check) = session.checks.recv() => match check {
                    Ok(position) => self.progress.verified_through(position),
                    Err(err) => return Err(ReplicationError::Setup(err)),
                },
                // Room for the next event: its bytes in the budget, then a
                // slot. Cancel-safe: dropped by another branch, neither is kept.
                room = reserve(&tx, &budget, self.pending.front().map_or(0, event_bytes).min(budget_size)),
                    if !self.pending.is_empty() => {
                    let Some((slot, bytes)) = room else { return Ok(SessionEnd::Shutdown) };
                    if let Some(event) = self.pending.pop_front() {
                        slot.send((Ok(event), Some(bytes)));
                    }
                }
                frame = session.copy.recv(), if self.pending.is_empty() => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) => return lost(Error::stream_ended()),
                        Err(err) if err.is_transient() => return lost(err),
                        Err(err) => return Err(ReplicationError::Connection(err)),
                    };
                    self.stats.frames.fetch_add(1, Ordering::Relaxed);
                    last_frame = tokio::time::Instant::now();
                    let message = ReplicationMessage::parse(&frame)
                        .map_err(|source| StreamError::Decode { lsn: self.progress.received(), source })?;
                    match message {
                        ReplicationMessage::XLogData(data) => {
                            let out = self.assembler.push(&data)?;
                            if out.began {
                                self.progress.begin();
                            }
                            if let Some((end_lsn, handed_out)) = out.committed {
                                self.progress.commit(end_lsn, handed_out);
                            }
                            self.pending.extend(out.events);
                        }
                        ReplicationMessage::PrimaryKeepalive(keepalive) => {
                            self.progress.keepalive(keepalive.wal_end);
                            if keepalive.reply_requested {
                                if session.pings.record() && self.progress.flush() < keepalive.wal_end {
                                    return lost(Error::server_waiting_for_us());
                                }
                                if let Err(err) = self.send_status(session, false).await {
                                    return lost(err);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    async fn send_status(&mut self, session: &mut Session, reply_requested: bool) -> Result<(), Error> {
        let now = PgTimestamp::from_system_time(SystemTime::now()).unwrap_or_default();
        let update = self.progress.status_update(now, reply_requested);
        let mut buf = BytesMut::with_capacity(pgoutput::StandbyStatusUpdate::ENCODED_LEN);
        update.encode(&mut buf);
        session.copy.send(&buf).await?;
        self.stats.flushed.store(update.flush.as_u64(), Ordering::Relaxed);
        self.stats
            .received
            .store(update.write.as_u64(), Ordering::Relaxed);
        self.stats.status_updates.fetch_add(1, Ordering::Relaxed);
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.stats.last_status_unix_ms.store(unix_ms, Ordering::Relaxed);
        Ok(())
    }
}

/// Compares the server's identity with the one streamed from (recording
/// it at the first connection).
fn check_identity(
    origin: &mut Option<SystemIdentity>,
    found: &SystemIdentity,
) -> Result<(), ReplicationError> {
    let Some(streamed) = origin.as_ref() else {
        *origin = Some(found.clone());
        return Ok(());
    };
    if streamed.system_id != found.system_id {
        return Err(ReplicationError::OtherCluster {
            streamed: streamed.system_id.clone(),
            found: found.system_id.clone(),
        });
    }
    if streamed.timeline != found.timeline {
        return Err(ReplicationError::TimelineChanged {
            streamed: streamed.timeline,
            found: found.timeline,
        });
    }
    Ok(())
}

/// The budget in permits, one per byte (one acquisition takes at most
/// `u32::MAX` permits).
fn budget_permits(buffer_bytes: usize) -> u32 {
    u32::try_from(buffer_bytes).unwrap_or(u32::MAX).max(1)
}

/// Waits until `bytes` (at most the whole budget: a larger event waits until
/// the budget is all free, then passes alone) fit in the budget and the
/// channel has a slot; `None` if the consumer is gone.
async fn reserve<'a>(
    tx: &'a mpsc::Sender<Item>,
    budget: &Arc<Semaphore>,
    bytes: usize,
) -> Option<(mpsc::Permit<'a, Item>, OwnedSemaphorePermit)> {
    let wanted = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
    let bytes = Arc::clone(budget).acquire_many_owned(wanted).await.ok()?;
    let slot = tx.reserve().await.ok()?;
    Some((slot, bytes))
}

fn lost(err: Error) -> Result<SessionEnd, ReplicationError> {
    Ok(SessionEnd::Lost(err))
}

/// One connection attempt's failure, by what to do about it.
enum Attempt {
    Transient(String),
    Definite(ReplicationError),
}

impl Attempt {
    fn from_connection(err: Error) -> Self {
        if err.is_transient() {
            Attempt::Transient(err.to_string())
        } else {
            Attempt::Definite(ReplicationError::Connection(err))
        }
    }

    fn from_check(err: CheckError) -> Self {
        match err {
            CheckError::Query(q) if q.is_transient() => Attempt::Transient(q.to_string()),
            CheckError::Query(q) => Attempt::Definite(ReplicationError::Setup(q.into())),
            CheckError::Setup(s) => Attempt::Definite(ReplicationError::Setup(s)),
        }
    }
}

/// A SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `publication_names` is a comma-separated list of identifiers: quote ours.
fn quote_publication(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Randomness for reconnect jitter without a dependency: std's hasher keys
/// are random per `RandomState`.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}
