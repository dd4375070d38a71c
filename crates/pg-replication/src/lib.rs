//! # pg-replication: committed outbox events from a logical replication slot
//!
//! Place in outboxd: the Postgres walsender streams WAL through a `pgoutput`
//! slot; this crate owns that replication connection (TCP or Unix socket,
//! TLS per `sslmode`, trust/cleartext/md5/SCRAM authentication), checks the
//! slot and publication before streaming ([`catalog`]), decodes frames with
//! the sans-IO `pgoutput` crate, and yields committed outbox inserts and
//! outbox messages in commit order, one event at a time
//! ([`ReplicationStream`]). It reports back to Postgres exactly the position
//! the caller acknowledges (see the progress-tracking notes in `progress.rs`),
//! on its own timer, and reconnects after transient failures.
//!
//! Upstream `tokio-postgres` has no replication mode, so the replication
//! protocol is spoken here on `postgres-protocol`'s message types; catalog
//! checks use a normal `tokio-postgres` connection with the same settings.

mod assembler;
mod auth;
mod bytea;
pub mod catalog;
mod config;
mod connection;
mod copy_both;
mod error;
mod event;
mod plaintext;
mod progress;
mod stream;
mod tls;
mod wire;

pub use assembler::{StreamError, UpdatePolicy};
pub use bytea::{decode_bytea_text, BYTEA_OID};
pub use config::{ReplicationConfig, SslMode};
pub use connection::{publication_names, CopyBoth, ReplicationConnection, SimpleRow, SystemIdentity};
pub use error::{Error, InvalidBytea, ServerError};
pub use event::{
    OutboxInsert, OutboxMessage, OutboxTable, ReplicationEvent, StoredValue, TransactionBegin,
    TransactionCommit,
};
pub use progress::AckHandle;
pub use stream::{
    ReplicationError, ReplicationStream, StreamConfig, StreamStats, DEFAULT_BUFFER_BYTES, PROTOCOL_VERSION,
};
