//! The lapin adapter: a RabbitMQ consumer that acknowledges a message only
//! after its database transaction committed.
//!
//! # Acknowledgements
//!
//! The consumer reads one queue with manual acknowledgements and a prefetch
//! window; each delivery goes to a worker chosen by its aggregate (the
//! `aggregateid` header outboxd's RabbitMQ sink sets), so one aggregate's
//! messages are handled in queue order while aggregates run concurrently,
//! one Postgres connection per worker. A worker runs [`Inbox::process`] and
//! then acknowledges that delivery alone (`basic.ack`, not `multiple`):
//! RabbitMQ takes acknowledgements in any order, so nothing waits for slower
//! aggregates.
//!
//! If the process dies, or the channel closes, between the commit and the
//! ack, RabbitMQ re-delivers the message and its committed claim makes it a
//! duplicate. A handler or database error stops the loop: the failed
//! delivery and every delivery not yet processed are rejected with
//! `requeue`, the others finish, and the error is returned. Nothing is ever
//! acknowledged without its transaction.
//!
//! The id is the `message_id` property (outboxd's event id), or an `id`
//! header; the position comes from the `outboxd.lsn` and `outboxd.index`
//! headers.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};

use crate::envelope::Envelope;
use crate::error::HeaderError;
use crate::inbox::{HandlerFuture, Inbox, Outcome};
pub use crate::summary::Summary;

/// The header outboxd's RabbitMQ sink puts the aggregate id in.
pub const AGGREGATE_ID_HEADER: &str = "aggregateid";

/// Called after each message's transaction committed (or it was found a
/// duplicate or stale) and before it is acknowledged.
pub type Observer = Arc<dyn Fn(&Delivery, &Outcome<()>) + Send + Sync>;

/// Why the consumer loop stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitInboxError {
    /// No worker.
    #[error("rabbitmq inbox consumer: {0}")]
    Config(String),
    /// The broker cancelled the consumer or the channel closed without the
    /// caller asking it to stop.
    #[error(
        "rabbitmq: the consumer was cancelled or its channel closed; unacknowledged messages are redelivered"
    )]
    Cancelled,
    /// The channel failed (qos, consume, ack).
    #[error("rabbitmq: {context}: {source}")]
    Amqp {
        /// The step.
        context: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// A message's properties do not identify it; it was requeued.
    #[error("delivery {delivery_tag}: {source}")]
    Header {
        /// Its delivery tag.
        delivery_tag: u64,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// Processing a message failed; nothing of it was committed, it was requeued.
    #[error("delivery {delivery_tag} (id {id}): {error}")]
    Process {
        /// Its delivery tag.
        delivery_tag: u64,
        /// The message id.
        id: String,
        /// The handler's or the database's error.
        error: String,
    },
}

/// A lapin consumer whose acknowledgements follow the inbox's commits.
pub struct InboxQueueConsumer {
    channel: Channel,
    queue: String,
    inbox: Inbox,
    name: Arc<str>,
    prefetch: u16,
    observer: Option<Observer>,
}

impl fmt::Debug for InboxQueueConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxQueueConsumer")
            .field("queue", &self.queue)
            .field("name", &self.name)
            .field("inbox", &self.inbox)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

impl InboxQueueConsumer {
    /// A consumer of `queue` on `channel` (the caller owns the connection);
    /// the inbox's consumer name is `name` (usually the queue's).
    pub fn new(channel: Channel, queue: &str, name: &str, inbox: Inbox) -> Self {
        Self {
            channel,
            queue: queue.to_owned(),
            inbox,
            name: Arc::from(name),
            prefetch: 64,
            observer: None,
        }
    }

    /// Unacknowledged messages the broker may push ahead (default 64).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Calls `observer` for every message after its transaction and before
    /// its acknowledgement (metrics, logs, tests).
    pub fn on_outcome(mut self, observer: impl Fn(&Delivery, &Outcome<()>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Consumes until `shutdown` completes or a message fails; one worker per
    /// client in `clients`. Then cancels the consumer, lets the workers
    /// finish what they hold (acknowledging it), requeues what was not
    /// started and returns.
    pub async fn run<H, E, S>(
        &self,
        clients: Vec<Client>,
        handler: H,
        shutdown: S,
    ) -> Result<Summary, RabbitInboxError>
    where
        H: for<'a> Fn(&'a Transaction<'a>, &'a Delivery) -> HandlerFuture<'a, (), E> + Send + Sync + 'static,
        E: fmt::Display + Send + 'static,
        S: Future<Output = ()>,
    {
        if clients.is_empty() {
            return Err(RabbitInboxError::Config(
                "at least one database connection is needed".into(),
            ));
        }
        let amqp = |context| move |source| RabbitInboxError::Amqp { context, source };
        self.channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("basic.qos"))?;
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("basic.consume"))?;
        // The prefetch window bounds what waits in these channels.
        let (deliveries_tx, mut deliveries) = mpsc::unbounded_channel::<DeliveryResult>();
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let _ = deliveries_tx.send(delivery);
            std::future::ready(())
        });

        let handler = Arc::new(handler);
        let abandon = Arc::new(AtomicBool::new(false));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut senders = Vec::with_capacity(clients.len());
        for client in clients {
            let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
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
        let mut summary = Summary::default();
        let mut failure = None;
        let mut reading = true;
        tokio::pin!(shutdown);
        tracing::info!(consumer = %self.name, queue = %self.queue, workers, "inbox queue consumer started");

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown, if reading => {
                    tracing::info!(consumer = %self.name, "inbox queue consumer stopping");
                    reading = false;
                }
                done = done_rx.recv() => match done {
                    Some(Ok(outcome)) => summary.count(&outcome),
                    Some(Err(err)) => {
                        tracing::error!(consumer = %self.name, error = %err, "message failed; the inbox queue consumer stops");
                        failure.get_or_insert(err);
                        abandon.store(true, Ordering::Relaxed);
                        reading = false;
                    }
                    None => break,
                },
                delivery = deliveries.recv(), if reading => match delivery {
                    Some(Ok(Some(delivery))) => match envelope(&delivery) {
                        Ok(envelope) => {
                            let worker = route(&envelope, &self.queue, workers);
                            if let Err(mpsc::error::SendError(job)) = senders[worker].send(Job { delivery, envelope }) {
                                requeue(&job.delivery).await;
                            }
                        }
                        Err(source) => {
                            requeue(&delivery).await;
                            failure.get_or_insert(RabbitInboxError::Header {
                                delivery_tag: delivery.delivery_tag,
                                source,
                            });
                            reading = false;
                        }
                    },
                    // The consumer was cancelled or the channel closed, while
                    // still reading (not asked to stop): the loop cannot go on.
                    Some(Ok(None)) | None => {
                        failure.get_or_insert(RabbitInboxError::Cancelled);
                        reading = false;
                    }
                    Some(Err(source)) => {
                        failure.get_or_insert(RabbitInboxError::Amqp { context: "consuming", source });
                        reading = false;
                    }
                },
            }
            if !reading && !senders.is_empty() {
                senders.clear();
                if let Err(err) = self
                    .channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(consumer = %self.name, error = %err, "basic.cancel failed");
                }
            }
        }
        // Deliveries that arrived before the cancel took effect.
        deliveries.close();
        while let Ok(delivery) = deliveries.try_recv() {
            if let Ok(Some(delivery)) = delivery {
                requeue(&delivery).await;
            }
        }
        tracing::info!(
            consumer = %self.name,
            processed = summary.processed,
            duplicates = summary.duplicates,
            stale = summary.stale,
            "inbox queue consumer stopped"
        );
        match failure {
            Some(err) => Err(err),
            None => Ok(summary),
        }
    }
}

/// Reads the message id (the `message_id` property, else an `id` header),
/// aggregate (the `aggregateid` header) and position from a delivery.
pub fn envelope(delivery: &Delivery) -> Result<Envelope, HeaderError> {
    let properties = &delivery.properties;
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(id) = properties.message_id() {
        pairs.push((
            outbox_core::header::ID.to_owned(),
            id.as_str().as_bytes().to_vec(),
        ));
    }
    let mut key = None;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let Some(bytes) = value_bytes(value) else { continue };
            if name.as_str() == AGGREGATE_ID_HEADER {
                key = Some(bytes.clone());
            }
            pairs.push((name.as_str().to_owned(), bytes));
        }
    }
    Envelope::from_headers(
        pairs.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        key.as_deref(),
    )
}

/// Header values as bytes: strings as they are, integers in decimal.
fn value_bytes(value: &AMQPValue) -> Option<Vec<u8>> {
    Some(match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::ShortShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
        _ => return None,
    })
}

/// One aggregate's messages always go to the same worker, so they stay in
/// queue order; messages without an aggregate keep the queue's order.
fn route(envelope: &Envelope, queue: &str, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match &envelope.aggregate_id {
        Some(aggregate) => aggregate.hash(&mut hasher),
        None => queue.hash(&mut hasher),
    }
    (hasher.finish() % workers as u64) as usize
}

/// Gives a delivery back to the queue; a closed channel requeues it anyway.
async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(err) = delivery.nack(options).await {
        tracing::debug!(delivery_tag = delivery.delivery_tag, error = %err, "requeue failed; the channel requeues on close");
    }
}

struct Job {
    delivery: Delivery,
    envelope: Envelope,
}

struct Worker<H> {
    client: Client,
    jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Result<Outcome<()>, RabbitInboxError>>,
    inbox: Inbox,
    name: Arc<str>,
    handler: Arc<H>,
    observer: Option<Observer>,
    abandon: Arc<AtomicBool>,
}

async fn worker<H, E>(mut w: Worker<H>)
where
    H: for<'a> Fn(&'a Transaction<'a>, &'a Delivery) -> HandlerFuture<'a, (), E> + Send + Sync + 'static,
    E: fmt::Display + Send + 'static,
{
    while let Some(job) = w.jobs.recv().await {
        if w.abandon.load(Ordering::Relaxed) {
            requeue(&job.delivery).await;
            continue;
        }
        let delivery = Arc::new(job.delivery);
        let for_handler = Arc::clone(&delivery);
        let handler = Arc::clone(&w.handler);
        let result = w
            .inbox
            .process(&mut w.client, &w.name, &job.envelope, move |tx| {
                Box::pin(async move { handler(tx, &for_handler).await })
            })
            .await;
        let report = match result {
            Ok(outcome) => {
                if let Some(observer) = &w.observer {
                    observer(&delivery, &outcome);
                }
                match delivery.ack(BasicAckOptions::default()).await {
                    Ok(_) => Ok(outcome),
                    // Committed but not acknowledged: the broker re-delivers
                    // it and the claim makes it a duplicate.
                    Err(source) => Err(RabbitInboxError::Amqp {
                        context: "basic.ack after commit",
                        source,
                    }),
                }
            }
            Err(err) => {
                requeue(&delivery).await;
                Err(RabbitInboxError::Process {
                    delivery_tag: delivery.delivery_tag,
                    id: job.envelope.id.clone(),
                    error: err.to_string(),
                })
            }
        };
        let failed = report.is_err();
        if w.done.send(report).is_err() || failed {
            break;
        }
    }
    // After a failure: give back whatever is still queued here.
    w.jobs.close();
    while let Ok(job) = w.jobs.try_recv() {
        requeue(&job.delivery).await;
    }
}
