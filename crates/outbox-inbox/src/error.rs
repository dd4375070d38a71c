//! Errors of the inbox, by what the caller must do.

use std::fmt;

/// A database operation of the inbox failed (setup, purge).
#[derive(Debug, thiserror::Error)]
#[error("inbox: {context}: {source}")]
pub struct InboxError {
    pub(crate) context: &'static str,
    #[source]
    pub(crate) source: tokio_postgres::Error,
}

impl InboxError {
    pub(crate) fn new(context: &'static str, source: tokio_postgres::Error) -> Self {
        Self { context, source }
    }
}

/// Why [`Inbox::process`](crate::Inbox::process) did not complete. In every
/// case nothing was committed: neither the claim nor the handler's effect.
/// The message must not be acknowledged; processing it again later is safe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError<E: fmt::Display> {
    /// The handler returned an error; its effect and the claim were rolled back.
    #[error("the handler failed: {0}")]
    Handler(E),
    /// The database failed (connection, commit, claim); the transaction did
    /// not commit, or, if the connection broke during COMMIT, may have: a
    /// re-delivery is then recognised as a duplicate.
    #[error("inbox: {context}: {source}")]
    Database {
        /// The step that failed.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The position or index does not fit the table (an index beyond `i64`).
    #[error("message {id}: event index {index} is out of range")]
    IndexOutOfRange {
        /// The message id.
        id: String,
        /// The index.
        index: u64,
    },
}

impl<E: fmt::Display> ProcessError<E> {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| ProcessError::Database { context, source }
    }
}

/// The headers of a message do not identify it. Permanent for that message:
/// without an id it cannot be deduplicated, so it must not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// No `id` header.
    #[error("the message has no `id` header")]
    MissingId,
    /// A header is not UTF-8.
    #[error("header {name} is not UTF-8")]
    NotUtf8 {
        /// The header.
        name: &'static str,
    },
    /// An empty `id`.
    #[error("the message's `id` header is empty")]
    EmptyId,
    /// `outboxd.lsn` is not an LSN (`16/B374D848`).
    #[error("header outboxd.lsn {value:?} is not an LSN")]
    InvalidLsn {
        /// The value.
        value: String,
    },
    /// `outboxd.index` is not a non-negative integer.
    #[error("header outboxd.index {value:?} is not a non-negative integer")]
    InvalidIndex {
        /// The value.
        value: String,
    },
    /// One of `outboxd.lsn` and `outboxd.index` without the other.
    #[error("headers outboxd.lsn and outboxd.index come together; only one is present")]
    HalfPosition,
}
