//! The task that owns the AMQP connection: publishes in order on one
//! confirm-mode channel, turns confirms into deliveries, reconnects and
//! re-publishes after a loss.
//!
//! Everything published and not yet confirmed is in `pending`, in publish
//! order, each with its record and its confirm future (lapin resolves each
//! from the broker's `basic.ack`/`basic.nack` by delivery tag, `multiple`
//! acks included, and attaches a `basic.return` that came before it).
//! Confirms are taken from the front only, so the records that stay pending
//! are always a suffix of what was sent: after a loss the whole suffix is
//! published again, in the same order, on a new channel. A record is thus
//! published at most once more per loss (same `message_id`), never skipped,
//! and never overtaken by a later record of the pipeline.

use std::collections::{HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind, PublisherConfirm,
};
use outbox_core::{AfterPermanentFailure, Delivery, DeliveryError, Record, TxSeq};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::classify::{channel_refusal, classify, Loss, Refusal};
use crate::config::RabbitConfig;
use crate::message::{build, Message};

/// What the sink asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    Publish(Box<Record>, TxSeq),
    Flush(oneshot::Sender<()>),
}

/// State the sink reads without asking the task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) fatal: Mutex<Option<DeliveryError>>,
    pub(crate) reconnects: AtomicUsize,
}

impl Shared {
    pub(crate) fn fatal(&self) -> Option<DeliveryError> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An open connection with its publishing channel (confirm mode) and a
/// channel for passive declares (a failed one closes its channel).
pub(crate) struct Link {
    connection: Connection,
    channel: Channel,
    probe: Option<Channel>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}

/// Opens a connection and a confirm-mode channel.
pub(crate) async fn open(config: &RabbitConfig) -> Result<Link, lapin::Error> {
    let connection = connect(config).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(Link {
        connection,
        channel,
        probe: None,
    })
}

/// Opens a connection (TLS for `amqps://`).
pub(crate) async fn connect(config: &RabbitConfig) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from("outboxd"));
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_uri_with_config(config.uri(), properties, config.tls_config(), runtime).await
}

// Boxed: a confirmation can carry a whole returned message.
enum Next {
    Confirm(Box<Result<Confirmation, lapin::Error>>),
    Command(Option<Command>),
}

/// Why re-publishing stopped.
enum Failure {
    /// Lost the channel again: recover again.
    Lost(lapin::Error),
    /// Stop the sink.
    Fatal(DeliveryError),
}

impl From<lapin::Error> for Failure {
    fn from(err: lapin::Error) -> Self {
        Failure::Lost(err)
    }
}

struct Pending {
    record: Record,
    tx: TxSeq,
    message: Message,
    confirm: PublisherConfirm,
}

/// The publishing task. See the module notes.
pub(crate) struct Publisher {
    config: RabbitConfig,
    commands: mpsc::Receiver<Command>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    shared: Arc<Shared>,
    link: Option<Link>,
    known_exchanges: HashSet<ShortString>,
    pending: VecDeque<Pending>,
    /// Body bytes of `pending`: kept on the hot path (publish, confirm),
    /// counted again after a recovery reshuffled `pending`.
    pending_bytes: usize,
    flushes: Vec<oneshot::Sender<()>>,
    /// What to do with later records once one failed for good.
    after: AfterPermanentFailure,
    /// Set under [`AfterPermanentFailure::Stop`] once a record failed for
    /// good: nothing more is published.
    fenced: AtomicBool,
}

impl Publisher {
    pub(crate) fn new(
        config: RabbitConfig,
        link: Link,
        commands: mpsc::Receiver<Command>,
        deliveries: mpsc::UnboundedSender<Delivery>,
        shared: Arc<Shared>,
        after: AfterPermanentFailure,
    ) -> Self {
        Publisher {
            after,
            fenced: AtomicBool::new(false),
            config,
            commands,
            deliveries,
            shared,
            link: Some(link),
            known_exchanges: HashSet::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            flushes: Vec::new(),
        }
    }

    /// Runs until the sink is dropped or a fatal error.
    pub(crate) async fn run(mut self) {
        if let Err(err) = self.serve().await {
            error!(error = %err.message, "rabbitmq sink stopped");
            *self.shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        }
        if let Some(link) = self.link.take() {
            let _ = link.connection.close(200, "outboxd stopping".into()).await;
        }
    }

    async fn serve(&mut self) -> Result<(), DeliveryError> {
        let window = self.config.window();
        loop {
            self.shared.in_flight.store(self.pending.len(), Ordering::Relaxed);
            if self.pending.is_empty() {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
            }
            let has_pending = !self.pending.is_empty();
            let has_room = self.pending.len() < window
                && (self.pending.is_empty() || self.pending_bytes < self.config.window_bytes());
            let pending = &mut self.pending;
            let commands = &mut self.commands;
            let next = tokio::select! {
                biased;
                confirm = poll_fn(|cx| Pin::new(&mut pending.front_mut().expect("guarded").confirm).poll(cx)),
                    if has_pending => Next::Confirm(Box::new(confirm)),
                command = commands.recv(), if has_room => Next::Command(command),
            };
            match next {
                Next::Confirm(confirm) => match *confirm {
                    Ok(confirmation) => {
                        let front = self.pending.pop_front().expect("guarded");
                        self.pending_bytes -= front.message.body.len();
                        self.confirmed(front, confirmation)?;
                    }
                    Err(err) => self.recover(err).await?,
                },
                Next::Command(None) => return Ok(()),
                Next::Command(Some(Command::Publish(record, tx))) => self.publish(*record, tx).await?,
                Next::Command(Some(Command::Flush(done))) => self.flushes.push(done),
            }
        }
    }

    /// Reports a confirmed record.
    fn confirmed(&self, pending: Pending, confirmation: Confirmation) -> Result<(), DeliveryError> {
        let refusal = match confirmation {
            Confirmation::Ack(None) => None,
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Some(Refusal::Unroutable {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Some(Refusal::Rejected(
                "the broker nacked it (a queue refused it, e.g. full with overflow = reject-publish)".into(),
            )),
            Confirmation::NotRequested => {
                return Err(DeliveryError::fatal("rabbitmq channel is not in confirm mode"));
            }
        };
        self.report(pending.record, pending.tx, refusal);
        Ok(())
    }

    fn report(&self, record: Record, tx: TxSeq, refusal: Option<Refusal>) {
        let delivery = match refusal {
            None => Delivery::delivered(tx, &record),
            Some(refusal) => {
                let error = refusal.into_error();
                if error.class.is_permanent()
                    && self.after == AfterPermanentFailure::Stop
                    && !self.fenced.swap(true, Ordering::Relaxed)
                {
                    warn!(id = %record.id, "a record failed for good: publishing nothing after it (policy stop)");
                }
                Delivery::failed(tx, record, error)
            }
        };
        // The receiver is gone only when the pipeline has stopped.
        let _ = self.deliveries.send(delivery);
    }

    /// Publishes one record from the pipeline (after the pending ones).
    async fn publish(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        if self.fenced.load(Ordering::Relaxed) {
            let _ = self.deliveries.send(Delivery::failed(
                tx,
                record,
                DeliveryError::retriable(
                    "not published: an earlier record failed for good and the stop policy publishes nothing \
                     after it",
                ),
            ));
            return Ok(());
        }
        let message = match build(
            &record,
            self.config.exchange_template(),
            self.config.message_limit(),
        ) {
            Ok(message) => message,
            Err(refusal) => {
                self.report(record, tx, Some(refusal));
                return Ok(());
            }
        };
        loop {
            let outcome = match self.exchange_exists(&message.exchange).await {
                Ok(true) => self.basic_publish(&message).await,
                Ok(false) => {
                    self.report(
                        record,
                        tx,
                        Some(missing_exchange(&message.exchange, &self.config)),
                    );
                    return Ok(());
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(confirm) => {
                    self.pending_bytes += message.body.len();
                    self.pending.push_back(Pending {
                        record,
                        tx,
                        message,
                        confirm,
                    });
                    return Ok(());
                }
                // Recover what is pending, then publish this one after it.
                Err(err) => self.recover(err).await?,
            }
        }
    }

    async fn basic_publish(&self, message: &Message) -> Result<PublisherConfirm, lapin::Error> {
        let link = self.link.as_ref().expect("connected");
        link.channel
            .basic_publish(
                message.exchange.clone(),
                message.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties.clone(),
            )
            .await
    }

    /// Whether `exchange` exists (a passive declare, once per connection).
    async fn exchange_exists(&mut self, exchange: &ShortString) -> Result<bool, lapin::Error> {
        if exchange.as_str().is_empty() || self.known_exchanges.contains(exchange) {
            return Ok(true);
        }
        let link = self.link.as_mut().expect("connected");
        if link.probe.is_none() {
            link.probe = Some(link.connection.create_channel().await?);
        }
        let probe = link.probe.as_ref().expect("just set");
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        match probe
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => {
                self.known_exchanges.insert(exchange.clone());
                Ok(true)
            }
            Err(err) if is_not_found(&err) => {
                link.probe = None;
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// After an error on the publishing channel: reconnect and publish every
    /// pending record again, in order. Returns only when that is done (or
    /// with a fatal error); the pipeline waits meanwhile.
    async fn recover(&mut self, err: lapin::Error) -> Result<(), DeliveryError> {
        let result = self.recover_from(err).await;
        self.pending_bytes = self.pending.iter().map(|p| p.message.body.len()).sum();
        result
    }

    async fn recover_from(&mut self, mut err: lapin::Error) -> Result<(), DeliveryError> {
        loop {
            let loss = classify(&err);
            if loss == Loss::Fatal {
                return Err(DeliveryError::fatal(format!(
                    "rabbitmq refused the connection: {err}"
                )));
            }
            warn!(error = %err, pending = self.pending.len(), "rabbitmq channel lost, reconnecting");
            self.reconnect().await?;
            let step = match loss {
                Loss::ChannelClosedByBroker => self.republish_one_by_one().await,
                _ => self.republish_all().await,
            };
            match step {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(fatal)) => return Err(fatal),
                Err(Failure::Lost(next)) => err = next,
            }
        }
    }

    /// Opens a new link, retrying with backoff until it works or the sink is
    /// dropped.
    async fn reconnect(&mut self) -> Result<(), DeliveryError> {
        if let Some(old) = self.link.take() {
            // The old connection may still be up when only the channel died.
            let _ = old.connection.close(200, "reconnecting".into()).await;
        }
        self.known_exchanges.clear();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            if self.commands.is_closed() {
                return Err(DeliveryError::fatal("rabbitmq sink closed while reconnecting"));
            }
            attempt += 1;
            match open(&self.config).await {
                Ok(link) => {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    info!(attempt, url = %self.config.redacted_url(), "rabbitmq reconnected");
                    self.link = Some(link);
                    return Ok(());
                }
                Err(err) => {
                    warn!(attempt, error = %err, url = %self.config.redacted_url(), "rabbitmq connect failed, retrying");
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// After a connection loss: publish every pending record again, in
    /// order, pipelined.
    async fn republish_all(&mut self) -> Result<(), Failure> {
        debug!(records = self.pending.len(), "re-publishing unconfirmed records");
        let mut index = 0;
        while index < self.pending.len() {
            let exchange = self.pending[index].message.exchange.clone();
            if !self.exchange_exists(&exchange).await? {
                let gone = self.pending.remove(index).expect("in range");
                self.report(
                    gone.record,
                    gone.tx,
                    Some(missing_exchange(&exchange, &self.config)),
                );
                continue;
            }
            let confirm = self.basic_publish(&self.pending[index].message).await?;
            self.pending[index].confirm = confirm;
            index += 1;
        }
        Ok(())
    }

    /// After the broker closed the channel because of a message: publish the
    /// pending records one at a time, waiting for each confirm, so that the
    /// one the broker refuses is failed alone (with the broker's reason).
    async fn republish_one_by_one(&mut self) -> Result<(), Failure> {
        debug!(
            records = self.pending.len(),
            "re-publishing unconfirmed records one by one"
        );
        let mut retry = VecDeque::new();
        std::mem::swap(&mut retry, &mut self.pending);
        while let Some(mut next) = retry.pop_front() {
            let outcome = match self.exchange_exists(&next.message.exchange).await {
                Ok(false) => {
                    let refusal = missing_exchange(&next.message.exchange, &self.config);
                    self.report(next.record, next.tx, Some(refusal));
                    continue;
                }
                Ok(true) => match self.basic_publish(&next.message).await {
                    Ok(confirm) => {
                        next.confirm = confirm;
                        poll_fn(|cx| Pin::new(&mut next.confirm).poll(cx)).await
                    }
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            };
            match outcome {
                Ok(confirmation) => {
                    self.confirmed(next, confirmation).map_err(Failure::Fatal)?;
                }
                Err(err) if classify(&err) == Loss::ChannelClosedByBroker => {
                    warn!(id = %next.record.id, error = %err, "rabbitmq closed the channel for this record");
                    self.report(next.record, next.tx, Some(channel_refusal(&err)));
                    self.reconnect_for_retry(&mut retry).await?;
                }
                Err(err) => {
                    // Lost again: put everything back in order for the caller.
                    self.pending.push_back(next);
                    self.pending.extend(retry);
                    return Err(Failure::Lost(err));
                }
            }
        }
        Ok(())
    }

    async fn reconnect_for_retry(&mut self, retry: &mut VecDeque<Pending>) -> Result<(), Failure> {
        if let Err(fatal) = self.reconnect().await {
            self.pending.extend(retry.drain(..));
            return Err(Failure::Fatal(fatal));
        }
        Ok(())
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

fn missing_exchange(exchange: &ShortString, config: &RabbitConfig) -> Refusal {
    Refusal::InvalidDestination(format!(
        "exchange {:?} does not exist in vhost {:?} (`outboxd setup` declares it)",
        exchange.as_str(),
        config.vhost()
    ))
}

/// `delay` ± 25 %, so that many instances do not reconnect in step.
fn jitter(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    delay.mul_f64(factor)
}
