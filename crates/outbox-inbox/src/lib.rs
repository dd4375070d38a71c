//! # outbox-inbox: the consumer half of the outbox pattern
//!
//! Place in the flow: an application commits its change and an outbox row
//! together; outboxd streams the row to a broker **at least once** (after a
//! crash, a reconnect or an `outboxd replay`, the same event arrives again
//! with the same `id` and position headers). This crate is what the
//! *consuming* service runs on the other side, so that each event's effect
//! happens **exactly once**:
//!
//! ```text
//!  broker ──▶ consumer ──▶ Inbox::process ─┬─ BEGIN
//!                                          ├─ INSERT inbox (consumer, id) ON CONFLICT DO NOTHING
//!                                          │    0 rows → duplicate: ROLLBACK, nothing applied
//!                                          ├─ [aggregate guard: older than the last applied → stale]
//!                                          ├─ handler(tx): the business effect, same transaction
//!                                          └─ COMMIT
//!           ◀── ack / offset commit, only after COMMIT
//! ```
//!
//! The claim and the effect commit together or not at all: a handler error
//! rolls both back and the message is processed again when the broker
//! re-delivers it. A crash between the database commit and the broker ack
//! re-delivers a message whose claim is committed, and it is recognised as a
//! duplicate. Acknowledging only after the commit makes the pair
//! exactly-once: at-least-once delivery + idempotent claim = one effect.
//!
//! - [`setup`] creates the tables (`sql/07_inbox.sql`).
//! - [`Inbox::process`] runs one message; [`Outcome`] says whether it was
//!   processed, a duplicate or (with the aggregate guard) stale.
//! - [`Envelope::from_headers`] reads the id and position outboxd writes
//!   (`id`, `outboxd.lsn`, `outboxd.index`) from any transport's headers.
//! - [`purge`] deletes old claims in batches; its documentation states the
//!   rule the retention must follow.
//! - Feature `kafka`: [`kafka::InboxConsumer`], an rdkafka consumer loop that
//!   commits offsets only after the database transaction commits, with
//!   concurrency per key.
//! - Feature `rabbitmq`: [`rabbitmq::InboxQueueConsumer`], a lapin consumer
//!   that acknowledges each message only after its transaction commits, with
//!   concurrency per key.
//!
//! The core depends on `tokio-postgres` only: no broker client.

mod envelope;
mod error;
mod inbox;
mod purge;
mod schema;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
mod offsets;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
mod summary;

pub use envelope::Envelope;
pub use error::{HeaderError, InboxError, ProcessError};
pub use inbox::{HandlerFuture, Inbox, Outcome};
pub use outbox_core::{Lsn, Position};
pub use purge::purge;
pub use schema::{setup, SCHEMA_SQL};
