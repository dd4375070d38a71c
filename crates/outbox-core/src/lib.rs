//! # outbox-core: the domain between the replication stream and the sinks
//!
//! Place in outboxd: `pg-replication` yields committed outbox rows; this crate
//! turns them into events and records (routing, headers), and tracks which
//! positions are safe to acknowledge ([`AckTracker`]). It knows nothing of
//! Kafka: sinks implement the `Sink` trait.

mod ack;

pub use ack::{AckError, AckTracker, TxSeq};
pub use pgoutput::Lsn;
