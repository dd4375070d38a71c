//! The `Sink` trait: where records go. Nothing here is specific to a broker.

use std::future::Future;

use crate::routing::Record;
use crate::TxSeq;

/// What a failed delivery means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The sink retries by itself; reported only if it gives up.
    Retriable,
    /// This record can never be delivered (too large, not authorized, no such
    /// topic): the permanent-error policy decides (stop, or dead-letter).
    Permanent,
    /// The sink itself is broken (e.g. a fatal idempotent-producer error):
    /// stop, nothing after this can be trusted.
    Fatal,
}

/// A failed delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class:?} delivery error: {message}")]
pub struct DeliveryError {
    /// What to do about it.
    pub class: ErrorClass,
    /// The sink's description.
    pub message: String,
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

/// A destination for records.
///
/// `send` is called by one task, in stream order, and may wait (backpressure:
/// the caller stops reading the slot meanwhile); it must never drop or reorder
/// records. Outcomes are reported as [`Delivery`] values through whatever
/// channel the sink was built with — only a positive acknowledgement from the
/// destination counts as delivered, never the return of `send` or `flush`.
/// A record refused at once (say, too large) is reported the same way, as a
/// failed [`Delivery`]; `send` itself fails only when the sink is broken
/// ([`ErrorClass::Fatal`]) and nothing more can be sent.
pub trait Sink: Send {
    /// Enqueues one record of transaction `tx`.
    fn send(&mut self, record: Record, tx: TxSeq) -> impl Future<Output = Result<(), DeliveryError>> + Send;

    /// Waits until every enqueued record has a delivery outcome.
    fn flush(&mut self) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}
