//! # outbox-core: the domain between the replication stream and the sinks
//!
//! Place in outboxd: `pg-replication` yields committed outbox rows; this crate
//! turns each into an [`OutboxEvent`] by a [`ColumnMapping`], routes it to a
//! [`Record`] (topic, key, value, headers) by [`Routing`], and tracks which
//! positions are safe to acknowledge ([`AckTracker`]). It knows nothing of
//! any broker or of Postgres I/O: sinks implement [`Sink`], whose contract
//! (order in, one outcome per record, failures classified by the sink) is in
//! the [`sink`] module notes. [`redact`] is the one place that decides which
//! configured values may be shown.

mod ack;
mod event;
pub mod redact;
mod retention;
mod routing;
pub mod sink;
mod time;

pub use ack::{AckError, AckTracker, TxSeq};
pub use event::{
    AdditionalField, ColumnLookup, ColumnMapping, MappingError, OutboxEvent, Placement, Position, ValueKind,
};
pub use pgoutput::Lsn;
pub use retention::RetentionWindow;
pub use routing::{
    check_template, header, render_template, CloudEvents, NameRule, PayloadEncoding, Record, Routing,
    RoutingError, TemplateError, TopicRule,
};
pub use sink::{AfterPermanentFailure, Delivery, DeliveryError, ErrorClass, PermanentReason, Sink};
pub use time::{format_rfc3339_millis, parse_timestamp_millis};
