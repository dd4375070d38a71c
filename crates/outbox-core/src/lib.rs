//! # outbox-core: the domain between the replication stream and the sinks
//!
//! Place in outboxd: `pg-replication` yields committed outbox rows; this crate
//! turns each into an [`OutboxEvent`] by a [`ColumnMapping`], routes it to a
//! [`Record`] (topic, key, value, headers) by [`Routing`], and tracks which
//! positions are safe to acknowledge ([`AckTracker`]). It knows nothing of
//! any broker or of Postgres I/O: sinks implement [`Sink`], whose contract
//! (order in, one outcome per record, failures classified by the sink) is in
//! the [`sink`] module notes.

mod ack;
mod event;
mod retention;
mod routing;
pub mod sink;

pub use ack::{AckError, AckTracker, TxSeq};
pub use event::{ColumnLookup, ColumnMapping, MappingError, OutboxEvent, Position};
pub use pgoutput::Lsn;
pub use retention::RetentionWindow;
pub use routing::{
    check_template, header, render_template, NameRule, Record, Routing, RoutingError, TemplateError,
    TopicRule,
};
pub use sink::{Delivery, DeliveryError, ErrorClass, PermanentReason, Sink};
