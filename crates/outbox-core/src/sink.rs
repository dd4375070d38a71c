//! # The sink contract
//!
//! A sink is where records go: Kafka, RabbitMQ, Redis, … Nothing in this
//! module is specific to a broker; each `sink-*` crate implements [`Sink`] and
//! the pipeline in `outboxd` drives any of them the same way.
//!
//! * **Order in.** [`Sink::send`] is called by one task, in commit order, and
//!   may wait (backpressure: the caller stops reading the slot meanwhile). A
//!   sink never drops or reorders records it accepted.
//! * **One outcome per record.** Every record accepted by `send` gets exactly
//!   one [`Delivery`], in any order, through the channel the sink was built
//!   with. Only a positive acknowledgement from the destination counts as
//!   delivered (a delivery report, a publisher confirm, a reply to the
//!   append) — never the return of `send` or `flush`.
//! * **The sink classifies its own failures** ([`ErrorClass`]): the pipeline
//!   never matches a broker's error strings.
//!   - [`ErrorClass::Retriable`]: the sink retries by itself and the pipeline
//!     waits; a retriable failure that is *reported* means the sink gave up,
//!     and the pipeline stops (dead-lettering it could let a later record of
//!     the same key overtake it).
//!   - [`ErrorClass::Permanent`]: this one record can never be delivered as it
//!     is, for a [`PermanentReason`]; the pipeline applies the
//!     permanent-error policy (`stop`, or `dead-letter`). The record comes
//!     back in [`Delivery::returned`] so that it can be dead-lettered without
//!     the pipeline keeping a copy of everything in flight.
//!   - [`ErrorClass::Fatal`]: the sink is broken (fenced producer, refused
//!     credentials); stop, nothing after it can be trusted.
//! * **Guarantees are stated.** Each sink says, in its crate notes, what it
//!   guarantees about per-key order and about duplicates after a crash; the
//!   conformance suite in `tests/testkit` checks those claims.

use std::future::Future;

use crate::routing::Record;
use crate::TxSeq;

/// Why a record can never be delivered as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PermanentReason {
    /// Larger than the destination accepts. A dead-letter record leaves the
    /// value out (it would be refused again); the row keeps it.
    TooLarge,
    /// No destination takes it (no such topic, no queue bound for the routing key).
    Unroutable,
    /// The destination refused this record (a policy, a negative acknowledgement).
    Rejected,
    /// Not authorized to write to the destination.
    Unauthorized,
    /// The destination name is not valid for the broker.
    InvalidDestination,
    /// The event itself is malformed (a NULL or non-UTF-8 mapped column, an
    /// outbox message that is not a JSON object).
    Malformed,
}

impl PermanentReason {
    /// A short, stable name (for metrics labels and headers).
    pub fn as_str(self) -> &'static str {
        match self {
            PermanentReason::TooLarge => "too_large",
            PermanentReason::Unroutable => "unroutable",
            PermanentReason::Rejected => "rejected",
            PermanentReason::Unauthorized => "unauthorized",
            PermanentReason::InvalidDestination => "invalid_destination",
            PermanentReason::Malformed => "malformed",
        }
    }
}

/// What a failed delivery means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The sink retries by itself; reported only if it gives up.
    Retriable,
    /// This record can never be delivered as it is: the permanent-error
    /// policy decides (stop, or dead-letter).
    Permanent {
        /// Why.
        reason: PermanentReason,
    },
    /// The sink itself is broken: stop, nothing after this can be trusted.
    Fatal,
}

impl ErrorClass {
    /// `retriable`, `permanent` or `fatal` (a low-cardinality metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Permanent { .. } => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }

    /// Whether this is a permanent failure of one record.
    pub fn is_permanent(self) -> bool {
        matches!(self, ErrorClass::Permanent { .. })
    }
}

/// A failed delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} delivery error: {message}", class.as_str())]
pub struct DeliveryError {
    /// What to do about it.
    pub class: ErrorClass,
    /// The sink's description.
    pub message: String,
}

impl DeliveryError {
    /// A retriable failure.
    pub fn retriable(message: impl Into<String>) -> Self {
        DeliveryError {
            class: ErrorClass::Retriable,
            message: message.into(),
        }
    }

    /// A permanent failure of one record.
    pub fn permanent(reason: PermanentReason, message: impl Into<String>) -> Self {
        DeliveryError {
            class: ErrorClass::Permanent { reason },
            message: message.into(),
        }
    }

    /// A fatal failure of the sink.
    pub fn fatal(message: impl Into<String>) -> Self {
        DeliveryError {
            class: ErrorClass::Fatal,
            message: message.into(),
        }
    }
}

/// The outcome of one record, reported by the sink in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The transaction the record belongs to.
    pub tx: TxSeq,
    /// The record's event id.
    pub id: String,
    /// The record's position (commit LSN and index), for error messages.
    pub position: crate::Position,
    /// Success only when the destination acknowledged the record durably.
    pub result: Result<(), DeliveryError>,
    /// On a permanent failure, the record as it was sent, so the pipeline can
    /// dead-letter it without keeping a copy of every record in flight.
    pub returned: Option<Record>,
}

impl Delivery {
    /// The successful outcome of `record`'s delivery.
    pub fn delivered(tx: TxSeq, record: &Record) -> Self {
        Delivery {
            tx,
            id: record.id.clone(),
            position: record.position,
            result: Ok(()),
            returned: None,
        }
    }

    /// The failed outcome of `record`; a permanently failed record comes back
    /// with it.
    pub fn failed(tx: TxSeq, record: Record, error: DeliveryError) -> Self {
        Delivery {
            tx,
            id: record.id.clone(),
            position: record.position,
            returned: error.class.is_permanent().then_some(record),
            result: Err(error),
        }
    }
}

/// A destination for records. See the module notes for the contract.
///
/// `send` fails only when the sink is broken ([`ErrorClass::Fatal`]) and
/// nothing more can be sent; a record refused at once (say, too large) is
/// reported like any other outcome, as a failed [`Delivery`].
pub trait Sink: Send {
    /// Enqueues one record of transaction `tx`. Cancel-safe: a record is
    /// accepted whole or not at all (the pipeline cancels a send that waits
    /// for room when shutdown is requested).
    fn send(&mut self, record: Record, tx: TxSeq) -> impl Future<Output = Result<(), DeliveryError>> + Send;

    /// Waits until every accepted record has an outcome.
    fn flush(&mut self) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}
