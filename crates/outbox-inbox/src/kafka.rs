//! The rdkafka adapter: a consumer loop that commits a message's offset only
//! after its database transaction committed.
//!
//! # Progress tracking
//!
//! One task reads the subscribed topics in order and hands each message to a
//! worker chosen by its key (by partition for keyless messages), so one key's
//! messages are handled by one worker in offset order while different keys
//! run concurrently, one Postgres connection per worker. A worker runs
//! [`Inbox::process`]; when it returns (the transaction committed, or the
//! message was a duplicate or stale), the offset is marked finished. Offsets
//! finish out of order across keys, so the offset committed for a partition
//! is the lowest one still in flight (everything read before it is done) or
//! one past the highest finished: never past a message whose transaction has
//! not committed. Commits are asynchronous, every `commit_interval`, and
//! synchronous when the loop stops.
//!
//! A crash loses at most the offsets not yet committed: those messages are
//! re-delivered and their committed claims make them duplicates. A rebalance
//! may hand a partition to another member while this one still works on it;
//! both may then see the same message, and the claim lets only one apply it.
//! The old member's last commit for that partition may also land after the
//! new member's and move the group's offset back: that costs re-deliveries
//! (duplicates), never a skipped message.
//!
//! A handler or database error stops the loop: reading stops, workers finish
//! what they hold, the offsets of the finished prefix are committed and the
//! error is returned. The failed message is re-delivered to whoever consumes
//! next (retry by restarting the service); it is never skipped.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::envelope::Envelope;
use crate::error::HeaderError;
use crate::inbox::{HandlerFuture, Inbox, Outcome};
use crate::offsets::OffsetTracker;
pub use crate::summary::Summary;

/// Called after each message's transaction committed (or it was found a
/// duplicate or stale) and before its offset may be committed.
pub type Observer = Arc<dyn Fn(&OwnedMessage, &Outcome<()>) + Send + Sync>;

/// Why the consumer loop stopped, or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaInboxError {
    /// A consumer setting that would break the guarantee, or no worker.
    #[error("kafka inbox consumer: {0}")]
    Config(String),
    /// The consumer could not be created or subscribed.
    #[error("kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A message's headers do not identify it; it was not processed.
    #[error("{topic}[{partition}]@{offset}: {source}")]
    Header {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// Processing a message failed; nothing of it was committed.
    #[error("{topic}[{partition}]@{offset} (id {id}): {error}")]
    Process {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// The message id.
        id: String,
        /// The handler's or the database's error.
        error: String,
    },
}

/// An rdkafka consumer whose offsets follow the inbox's commits.
pub struct InboxConsumer {
    consumer: StreamConsumer,
    inbox: Inbox,
    name: Arc<str>,
    commit_interval: Duration,
    queue_depth: usize,
    observer: Option<Observer>,
}

impl fmt::Debug for InboxConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxConsumer")
            .field("name", &self.name)
            .field("inbox", &self.inbox)
            .field("commit_interval", &self.commit_interval)
            .field("queue_depth", &self.queue_depth)
            .finish_non_exhaustive()
    }
}

impl InboxConsumer {
    /// Creates a consumer from `config` (bootstrap servers, `group.id`, TLS,
    /// ...) subscribed to `topics`. The inbox's consumer name is `name`
    /// (usually the group id: all members of a group share one dedupe scope).
    ///
    /// Offsets are committed by this loop only: `enable.auto.commit` and
    /// `enable.auto.offset.store` are set to false, and a configuration that
    /// asks for auto-commit is refused (it would commit offsets of messages
    /// whose transaction has not committed).
    pub fn new(
        config: &ClientConfig,
        topics: &[&str],
        name: &str,
        inbox: Inbox,
    ) -> Result<Self, KafkaInboxError> {
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            if config.get(key).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                return Err(KafkaInboxError::Config(format!(
                    "{key}=true would commit offsets before the database transaction commits; leave it unset"
                )));
            }
        }
        if config.get("group.id").is_none() {
            return Err(KafkaInboxError::Config("group.id is required".into()));
        }
        let mut config = config.clone();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(topics)?;
        Ok(Self {
            consumer,
            inbox,
            name: Arc::from(name),
            commit_interval: Duration::from_millis(200),
            queue_depth: 64,
            observer: None,
        })
    }

    /// How often finished offsets are committed (default 200 ms). Longer
    /// means fewer commits and more duplicates after a crash.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Messages queued per worker before reading pauses (default 64).
    pub fn queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }

    /// Calls `observer` for every message after its transaction and before
    /// its offset is committed (metrics, logs, tests).
    pub fn on_outcome(
        mut self,
        observer: impl Fn(&OwnedMessage, &Outcome<()>) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The underlying consumer (assignment, metadata, committed offsets).
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// Runs until `shutdown` completes or a message fails; one worker per
    /// client in `clients`. Then stops reading, lets the workers finish what
    /// they hold, commits the finished offsets synchronously and returns.
    pub async fn run<H, E, S>(
        &self,
        clients: Vec<Client>,
        handler: H,
        shutdown: S,
    ) -> Result<Summary, KafkaInboxError>
    where
        H: for<'a> Fn(&'a Transaction<'a>, &'a OwnedMessage) -> HandlerFuture<'a, (), E>
            + Send
            + Sync
            + 'static,
        E: fmt::Display + Send + 'static,
        S: Future<Output = ()>,
    {
        if clients.is_empty() {
            return Err(KafkaInboxError::Config(
                "at least one database connection is needed".into(),
            ));
        }
        let handler = Arc::new(handler);
        let abandon = Arc::new(AtomicBool::new(false));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut senders = Vec::with_capacity(clients.len());
        for client in clients {
            let (jobs_tx, jobs_rx) = mpsc::channel(self.queue_depth);
            senders.push(jobs_tx);
            tokio::spawn(worker(Worker {
                client,
                jobs: jobs_rx,
                done: done_tx.clone(),
                inbox: self.inbox.clone(),
                name: Arc::clone(&self.name),
                handler: Arc::clone(&handler),
                observer: self.observer.clone(),
                abandon: Arc::clone(&abandon),
            }));
        }
        drop(done_tx);
        let workers = senders.len();

        let mut tracker = OffsetTracker::<(String, i32)>::default();
        let mut summary = Summary::default();
        let mut failure = None;
        let mut pending: Option<(usize, Job)> = None;
        let mut reading = true;
        let mut ticker = tokio::time::interval(self.commit_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        tracing::info!(consumer = %self.name, workers, "inbox consumer started");

        loop {
            let target = pending.as_ref().map(|(w, _)| *w);
            tokio::select! {
                biased;
                () = &mut shutdown, if reading => {
                    tracing::info!(consumer = %self.name, "inbox consumer stopping");
                    reading = false;
                }
                done = done_rx.recv() => match done {
                    Some(Done::Finished { topic, partition, offset, outcome }) => {
                        tracker.finished(&(topic, partition), offset);
                        summary.count(&outcome);
                    }
                    Some(Done::Failed(err)) => {
                        tracing::error!(consumer = %self.name, error = %err, "message failed; the inbox consumer stops");
                        failure.get_or_insert(err);
                        abandon.store(true, Ordering::Relaxed);
                        reading = false;
                    }
                    None => break,
                },
                permit = reserve(&senders, target), if target.is_some() && !senders.is_empty() => {
                    if let Some((_, job)) = pending.take() {
                        // A closed channel is a worker that stopped on an error,
                        // reported through `done`: the job is dropped unfinished.
                        if let Ok(permit) = permit {
                            permit.send(job);
                        }
                    }
                }
                message = self.consumer.recv(), if reading && pending.is_none() => match message {
                    Ok(message) => {
                        let message = message.detach();
                        let (topic, partition, offset) =
                            (message.topic().to_owned(), message.partition(), message.offset());
                        match envelope(&message) {
                            Ok(envelope) => {
                                tracker.started(&(topic, partition), offset);
                                pending = Some((route(&message, workers), Job {
                                    message: Arc::new(message),
                                    envelope,
                                }));
                            }
                            Err(source) => {
                                let err = KafkaInboxError::Header { topic, partition, offset, source };
                                tracing::error!(consumer = %self.name, error = %err, "message cannot be deduplicated; the inbox consumer stops");
                                failure.get_or_insert(err);
                                reading = false;
                            }
                        }
                    }
                    // librdkafka retries broker errors itself; they are reported here for information.
                    Err(err) => tracing::warn!(consumer = %self.name, error = %err, "kafka consumer error"),
                },
                _ = ticker.tick() => commit(&self.consumer, &mut tracker, CommitMode::Async),
            }
            if !reading && !senders.is_empty() {
                // Closing the queues lets each worker finish what it holds and exit;
                // the loop ends when the last one has reported.
                pending = None;
                senders.clear();
            }
        }
        commit(&self.consumer, &mut tracker, CommitMode::Sync);
        tracing::info!(
            consumer = %self.name,
            processed = summary.processed,
            duplicates = summary.duplicates,
            stale = summary.stale,
            unfinished = tracker.in_flight(),
            "inbox consumer stopped"
        );
        match failure {
            Some(err) => Err(err),
            None => Ok(summary),
        }
    }
}

/// Reads the message id, aggregate (the key) and position from a record.
pub fn envelope(message: &OwnedMessage) -> Result<Envelope, HeaderError> {
    let headers = message.headers();
    let pairs = headers
        .into_iter()
        .flat_map(|hs| hs.iter())
        .map(|h| (h.key, h.value));
    Envelope::from_headers(pairs, message.key())
}

struct Job {
    message: Arc<OwnedMessage>,
    envelope: Envelope,
}

enum Done {
    Finished {
        topic: String,
        partition: i32,
        offset: i64,
        outcome: Outcome<()>,
    },
    Failed(KafkaInboxError),
}

/// One key's messages always go to the same worker, so they stay in order.
fn route(message: &OwnedMessage, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match message.key() {
        Some(key) if !key.is_empty() => key.hash(&mut hasher),
        _ => (message.topic(), message.partition()).hash(&mut hasher),
    }
    (hasher.finish() % workers as u64) as usize
}

async fn reserve(
    senders: &[mpsc::Sender<Job>],
    target: Option<usize>,
) -> Result<mpsc::Permit<'_, Job>, mpsc::error::SendError<()>> {
    match target.and_then(|w| senders.get(w)) {
        Some(sender) => sender.reserve().await,
        None => std::future::pending().await,
    }
}

fn commit(consumer: &StreamConsumer, tracker: &mut OffsetTracker<(String, i32)>, mode: CommitMode) {
    let commits = tracker.take_commits();
    if commits.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), next) in &commits {
        if let Err(err) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(topic = %topic, partition, error = %err, "cannot list an offset to commit");
        }
    }
    if let Err(err) = consumer.commit(&list, mode) {
        // Safe: the broker keeps an older offset, and the messages after it
        // are re-delivered and found to be duplicates.
        tracing::warn!(error = %err, "offset commit failed");
    }
}

struct Worker<H> {
    client: Client,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    inbox: Inbox,
    name: Arc<str>,
    handler: Arc<H>,
    observer: Option<Observer>,
    abandon: Arc<AtomicBool>,
}

async fn worker<H, E>(mut w: Worker<H>)
where
    H: for<'a> Fn(&'a Transaction<'a>, &'a OwnedMessage) -> HandlerFuture<'a, (), E> + Send + Sync + 'static,
    E: fmt::Display + Send + 'static,
{
    while let Some(job) = w.jobs.recv().await {
        if w.abandon.load(Ordering::Relaxed) {
            break;
        }
        let message = Arc::clone(&job.message);
        let handler = Arc::clone(&w.handler);
        let result = w
            .inbox
            .process(&mut w.client, &w.name, &job.envelope, move |tx| {
                Box::pin(async move { handler(tx, &message).await })
            })
            .await;
        let message = &job.message;
        let done = match result {
            Ok(outcome) => {
                if let Some(observer) = &w.observer {
                    observer(message, &outcome);
                }
                Done::Finished {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    outcome,
                }
            }
            Err(err) => Done::Failed(KafkaInboxError::Process {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                id: job.envelope.id.clone(),
                error: err.to_string(),
            }),
        };
        let failed = matches!(done, Done::Failed(_));
        if w.done.send(done).is_err() || failed {
            break;
        }
    }
}
