//! Where the pipeline's events come from: anything that yields committed
//! transactions in commit order and takes acknowledgements back.
//!
//! In production that is `pg-replication`'s [`ReplicationStream`]; the
//! pipeline's unit tests script one, so the loop that decides acknowledgements
//! is tested without Postgres or a broker.

use std::future::Future;

use pg_replication::{ReplicationError, ReplicationEvent, ReplicationStream};
use pgoutput::Lsn;

/// A source of committed transactions, one event at a time.
pub trait EventSource: Send {
    /// The next event; `None` once the source has stopped. Cancel-safe (it is
    /// polled in a `select!`).
    fn next(&mut self) -> impl Future<Output = Option<Result<ReplicationEvent, ReplicationError>>> + Send;

    /// Everything up to `end_lsn` is delivered (and outside the replay
    /// window): the source may tell the server. Never called with a smaller
    /// position than before.
    fn ack(&mut self, end_lsn: Lsn);

    /// The newest position received from the server (the replay window is
    /// measured against it).
    fn received(&self) -> Lsn;

    /// Stops reading, reports the last acknowledged position, closes.
    fn shutdown(self) -> impl Future<Output = Result<(), ReplicationError>> + Send;
}

impl EventSource for ReplicationStream {
    async fn next(&mut self) -> Option<Result<ReplicationEvent, ReplicationError>> {
        ReplicationStream::next(self).await
    }

    fn ack(&mut self, end_lsn: Lsn) {
        self.ack_handle().ack(end_lsn);
    }

    fn received(&self) -> Lsn {
        self.stats().received()
    }

    async fn shutdown(self) -> Result<(), ReplicationError> {
        ReplicationStream::shutdown(self).await
    }
}
