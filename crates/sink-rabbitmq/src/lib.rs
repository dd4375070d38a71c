//! # sink-rabbitmq: outbox records to RabbitMQ, acknowledged by publisher confirms
//!
//! Place in outboxd: the pipeline routes each outbox event to a
//! [`outbox_core::Record`] (its `topic` is the routing key, rendered from the
//! routing-key template, default `${aggregatetype}.${type}`) and hands it to
//! [`RabbitSink::send`], from one task, in commit order. This crate publishes
//! it over AMQP 0-9-1 ([lapin]) to the exchange rendered from the exchange
//! template (default `outbox`, a durable topic exchange that
//! [`declare_exchange`] creates) and reports each record's outcome as an
//! [`outbox_core::Delivery`] on a channel; the pipeline marks its
//! `AckTracker` from those reports only.
//!
//! * **Delivered** means: the broker's publisher confirm acked the message
//!   and no `basic.return` came for it. Messages are published with
//!   `mandatory = true` and `delivery_mode = 2` (persistent), so an ack means
//!   every queue the exchange routed it to has taken it (to disk for durable
//!   queues); a message no queue takes comes back as a `basic.return` and is
//!   a permanent failure, never a silent ack.
//! * **Per-key order**: one channel publishes in commit order; RabbitMQ keeps
//!   a channel's order into each queue, and a queue delivers in order to a
//!   single consumer. For parallel consumers with per-key order, route
//!   through a consistent-hash exchange ([`ExchangeType::ConsistentHash`]:
//!   the aggregate id picks one of several queues, each with one consumer).
//! * **Backpressure**: at most `max_in_flight` records (and
//!   `max_in_flight_bytes` of bodies) are published and unconfirmed; `send`
//!   waits for confirms when the window is full (the pipeline stops reading
//!   the slot meanwhile), so memory is bounded whatever the transaction size.
//! * **Failures** (see [`classify`](crate::classify)): unroutable, nacked,
//!   too large, or to a missing exchange → `Permanent` for that record (the
//!   record is returned with it, for the dead-letter policy); a lost
//!   connection or channel is handled inside the sink, which is what the
//!   contract's `Retriable` asks for: it reconnects with backoff and
//!   re-publishes, in the original order, every record it has no confirm for;
//!   the pipeline waits. Refused access is `Fatal`.
//! * **After a permanent failure**
//!   ([`RabbitSink::connect_with_after_permanent`]): under the `stop` policy
//!   nothing is published after the failed record (later ones are reported
//!   failed, retriable); what was published before the failure was known
//!   (a too-large record is known at once, a `basic.return` after a round
//!   trip) may be in queues already, unacknowledged, and is published again
//!   after the restart. Under `dead-letter` publishing goes on.
//! * **Duplicates**: a re-published record may already have reached the
//!   queue (its confirm was lost with the connection), and after a crash the
//!   pipeline re-sends what was unacknowledged. Either way at most the
//!   unconfirmed window, with the same `message_id` (the event id) and the
//!   same `outboxd.lsn`/`outboxd.index` headers, so consumers deduplicate.
//!
//! Properties and headers: see [`build`](crate::message::build) — in short
//! `message_id` = id, `type` = event type, `app_id` = `outboxd`,
//! `timestamp`, `content_type = application/json` for JSON payloads; headers
//! `aggregatetype`, `aggregateid`, `outboxd.lsn`, `outboxd.index`, extra
//! columns, `outboxd.replay` on replays.

mod classify;
mod config;
mod error;
mod management;
mod message;
mod publisher;
mod template;
mod topology;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use outbox_core::{AfterPermanentFailure, Delivery, DeliveryError, Record, Sink, TxSeq};
use tokio::sync::{mpsc, oneshot};

pub use config::{
    redact_url, RabbitConfig, APP_ID, DEFAULT_EXCHANGE, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_ROUTING_KEY,
};
pub use error::{ConfigError, SinkError};
pub use message::{AGGREGATE_ID, PERSISTENT};
pub use template::Template;
pub use topology::{declare_exchange, inspect_exchange, Bindings, ExchangeReport, ExchangeType};

use crate::publisher::{Command, Publisher, Shared};

/// The RabbitMQ sink. See the crate notes.
#[derive(Debug)]
pub struct RabbitSink {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl RabbitSink {
    /// Connects (failing at once if the broker is unreachable or refuses the
    /// credentials), enables publisher confirms, and starts the publishing
    /// task; outcomes are reported on `deliveries`, at most one per record in
    /// the window at a time.
    pub async fn connect(
        config: &RabbitConfig,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> Result<Self, SinkError> {
        Self::connect_with_after_permanent(config, deliveries, AfterPermanentFailure::Continue).await
    }

    /// [`RabbitSink::connect`], saying what happens to later records once
    /// one failed for good: with [`AfterPermanentFailure::Stop`] nothing more
    /// is published (later records are reported failed, retriable). Records
    /// published before the failure was known (within a round trip, at most
    /// the window) may already be in their queues: the pipeline does not
    /// acknowledge them, so they are published again after the restart.
    pub async fn connect_with_after_permanent(
        config: &RabbitConfig,
        deliveries: mpsc::UnboundedSender<Delivery>,
        after: AfterPermanentFailure,
    ) -> Result<Self, SinkError> {
        let link = publisher::open(config)
            .await
            .map_err(|source| SinkError::Connect {
                url: config.redacted_url(),
                source,
            })?;
        let (commands, receiver) = mpsc::channel(1);
        let shared = Arc::new(Shared::default());
        let publisher = Publisher::new(
            config.clone(),
            link,
            receiver,
            deliveries,
            Arc::clone(&shared),
            after,
        );
        tokio::spawn(publisher.run());
        Ok(RabbitSink { commands, shared })
    }

    /// Records published and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// How often the sink has reconnected since it started.
    pub fn reconnects(&self) -> usize {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// The fatal error, once there is one: nothing more can be sent.
    pub fn fatal_error(&self) -> Option<DeliveryError> {
        self.shared.fatal()
    }

    fn stopped(&self) -> DeliveryError {
        self.fatal_error()
            .unwrap_or_else(|| DeliveryError::fatal("rabbitmq sink stopped"))
    }
}

impl Sink for RabbitSink {
    async fn send(&mut self, record: Record, tx: TxSeq) -> Result<(), DeliveryError> {
        if let Some(fatal) = self.fatal_error() {
            return Err(fatal);
        }
        self.commands
            .send(Command::Publish(Box::new(record), tx))
            .await
            .map_err(|_| self.stopped())
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .await
            .map_err(|_| self.stopped())?;
        wait.await.map_err(|_| self.stopped())
    }
}
