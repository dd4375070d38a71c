//! # Progress tracking
//!
//! What this crate tells Postgres in each standby status update, and why each
//! value is safe. Protocol reference:
//! <https://www.postgresql.org/docs/current/protocol-replication.html> (the
//! `Standby status update (F)` message) and the `confirmed_flush_lsn` column
//! of `pg_replication_slots`.
//!
//! * **`flush`** becomes the slot's `confirmed_flush_lsn`. Postgres may
//!   recycle WAL before it, and on the next `START_REPLICATION` it skips every
//!   transaction whose commit record starts before it. So `flush` may only name
//!   a position all of whose transactions are delivered. It is the caller's
//!   acknowledgement (the `end_lsn` of the longest fully delivered prefix of
//!   transactions, which the caller computes), capped at the end of the last
//!   transaction we handed out, so a caller's mistake cannot confirm what it
//!   was never given. One more source may move it, see *idle advance*.
//! * **`write`** is the highest position received: the end of the last commit
//!   record, or a keepalive's `wal_end` (everything before it was sent ahead of
//!   the keepalive on the same connection, and we read frames in order). It
//!   never releases WAL; only `flush` does.
//! * **`apply`** equals `flush`.
//! * **Never backwards.** Each value is the maximum of everything reported so
//!   far; Postgres ignores a smaller flush anyway, but a smaller value in our
//!   own state would make a resume replay delivered work.
//!
//! ## Idle advance
//!
//! A keepalive's `wal_end` is the walsender's sent position: every transaction
//! that committed before it was sent to us before the keepalive, on the same
//! connection. If every transaction we handed out has been acknowledged and no
//! transaction is open, nothing before `wal_end` is owed to anybody, so `flush`
//! may move there. The same holds for the end of a transaction that carried
//! no outbox events. Without this an idle outbox in a busy database would pin
//! WAL forever (Postgres sends us nothing but keepalives, and nothing would be
//! acknowledged).
//!
//! The rule is evaluated when a keepalive arrives *and* again whenever a
//! status update is built, against the last keepalive seen: the walsender
//! sends keepalives only while our `write` is behind its sent position, so
//! after we reported `write = wal_end` the next one may not come until new WAL
//! is decoded. An ack arriving after the last keepalive must still be able to
//! release the WAL before it.
//!
//! ## Publication changes
//!
//! Both rules above trust that every outbox row before a position reached
//! us. That holds only while the publication publishes every row of every
//! outbox table under its configured name: after `ALTER PUBLICATION … DROP
//! TABLE`, a row filter, or a rename of the table, the server sends nothing
//! (or we recognise nothing) for the rows that follow, their transactions
//! look empty, and the idle advance would confirm past them. So `flush` is
//! also capped at the last *verified* position: the stream re-checks the
//! publication on a timer (and at every connection), and a check that
//! passes verifies the server's WAL position taken just before it (the
//! catalog the check read is at least that new, so every change before that
//! position was decoded under a publication that still included the tables).
//! A check that fails stops the stream; nothing after the last verified
//! position is confirmed. The cost: confirmations lag by up to one check
//! interval.
//!
//! ## Shutdown of the server
//!
//! A walsender of a server shutting down (fast or smart) sends everything,
//! then waits until the client's `flush` reaches its sent position, pinging
//! with reply-requested keepalives. While undelivered transactions are in
//! flight we cannot confirm that position, so the stream notices the burst of
//! pings and closes the connection instead of holding the server's shutdown
//! hostage (see `stream.rs`); it resumes from the acknowledged position.

//! ## Resuming
//!
//! After a reconnect we ask to start at the highest `flush` we reported and
//! also skip, ourselves, every transaction whose commit starts before it
//! (`Begin.final_lsn < resume`), so nothing acknowledged is yielded twice even
//! if the server's view lags ours.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pgoutput::{Lsn, PgTimestamp, StandbyStatusUpdate};

/// The caller's side of acknowledgements: "every transaction ending at or
/// before this `end_lsn` is delivered". Cheap to clone; acks are monotonic
/// (a smaller one than before is ignored).
#[derive(Debug, Clone, Default)]
pub struct AckHandle(Arc<AtomicU64>);

impl AckHandle {
    /// Reports that everything up to and including the transaction ending at
    /// `end_lsn` is delivered.
    pub fn ack(&self, end_lsn: Lsn) {
        self.0.fetch_max(end_lsn.as_u64(), Ordering::AcqRel);
    }

    /// The highest position acknowledged so far.
    pub fn acked(&self) -> Lsn {
        Lsn::new(self.0.load(Ordering::Acquire))
    }
}

/// The positions of one replication stream, shared across reconnects.
#[derive(Debug)]
pub(crate) struct Progress {
    ack: AckHandle,
    /// `end_lsn` of the last transaction handed to the caller (with events).
    handed_out: Lsn,
    /// A position every transaction before which is delivered or had no events.
    idle: Lsn,
    /// The highest `write` reported.
    write: Lsn,
    /// The highest `flush` reported (or about to be).
    flush: Lsn,
    /// The highest keepalive `wal_end` seen.
    last_keepalive: Lsn,
    /// A transaction has begun and not yet committed.
    open: bool,
    /// Flush never passes this position (see *Publication changes*); `None`:
    /// no cap (until the first verification).
    verified: Option<Lsn>,
}

impl Progress {
    /// `confirmed` is the slot's confirmed position (flush never reports
    /// less); `delivered` a position the caller knows is delivered (its
    /// checkpoint), at or after it. Transactions up to `delivered` are
    /// skipped, and flush moves past `confirmed` only once the caller
    /// acknowledges: a caller keeping a replay window behind its checkpoint
    /// must not lose that window on every restart.
    pub(crate) fn new(ack: AckHandle, confirmed: Lsn, delivered: Lsn) -> Self {
        // Everything before `confirmed` is delivered; without this the idle rule
        // (acked >= handed_out) could never hold before the first ack.
        ack.ack(confirmed);
        Progress {
            ack,
            // As if handed out: the idle rule then waits for the caller's ack.
            handed_out: delivered.max(confirmed),
            idle: confirmed,
            write: confirmed,
            flush: confirmed,
            last_keepalive: confirmed,
            open: false,
            verified: None,
        }
    }

    pub(crate) fn ack_handle(&self) -> &AckHandle {
        &self.ack
    }

    /// The end of the last transaction handed to the caller.
    pub(crate) fn handed_out(&self) -> Lsn {
        self.handed_out
    }

    /// The highest position received (`write`).
    pub(crate) fn received(&self) -> Lsn {
        self.write
    }

    pub(crate) fn begin(&mut self) {
        self.open = true;
    }

    /// A transaction ended; `handed_out` says whether the caller got events of it.
    pub(crate) fn commit(&mut self, end_lsn: Lsn, handed_out: bool) {
        self.open = false;
        self.write = self.write.max(end_lsn);
        if handed_out {
            self.handed_out = self.handed_out.max(end_lsn);
        } else {
            self.advance_if_idle(end_lsn);
        }
    }

    /// A keepalive reported the server's sent position.
    pub(crate) fn keepalive(&mut self, wal_end: Lsn) {
        self.write = self.write.max(wal_end);
        self.last_keepalive = self.last_keepalive.max(wal_end);
        self.advance_if_idle(wal_end);
    }

    /// Forget an open transaction (the connection was lost mid-transaction; it
    /// will be sent again from its start).
    pub(crate) fn reset_open(&mut self) {
        self.open = false;
    }

    fn advance_if_idle(&mut self, position: Lsn) {
        if !self.open && self.ack.acked() >= self.handed_out {
            self.idle = self.idle.max(position);
        }
    }

    /// The publication was verified as of `position`: flush may go that far.
    pub(crate) fn verified_through(&mut self, position: Lsn) {
        self.verified = Some(self.verified.map_or(position, |v| v.max(position)));
    }

    /// The position to confirm now: the caller's ack capped at what was handed
    /// out, or the idle position, whichever is higher, capped at the verified
    /// position; never less than before.
    pub(crate) fn flush(&mut self) -> Lsn {
        self.advance_if_idle(self.last_keepalive);
        let acked = self.ack.acked().min(self.handed_out);
        let mut candidate = acked.max(self.idle);
        if let Some(verified) = self.verified {
            candidate = candidate.min(verified);
        }
        self.flush = self.flush.max(candidate);
        self.flush
    }

    /// Where to resume after a reconnect: nothing before it is owed.
    pub(crate) fn resume_position(&mut self) -> Lsn {
        self.flush()
    }

    pub(crate) fn status_update(&mut self, now: PgTimestamp, reply_requested: bool) -> StandbyStatusUpdate {
        let flush = self.flush();
        StandbyStatusUpdate {
            write: self.write.max(flush),
            flush,
            apply: flush,
            client_time: now,
            reply_requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(raw: u64) -> Lsn {
        Lsn::new(raw)
    }

    fn progress() -> Progress {
        Progress::new(AckHandle::default(), lsn(100), lsn(100))
    }

    #[test]
    fn flush_is_the_ack_never_the_last_received() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.begin();
        p.commit(lsn(300), true);
        assert_eq!(p.flush(), lsn(100), "nothing acked yet");
        p.ack_handle().ack(lsn(200));
        assert_eq!(p.flush(), lsn(200));
        let update = p.status_update(PgTimestamp::from_micros(7), false);
        assert_eq!(
            (update.write, update.flush, update.apply),
            (lsn(300), lsn(200), lsn(200))
        );
    }

    #[test]
    fn ack_beyond_what_was_handed_out_is_capped() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.ack_handle().ack(lsn(10_000));
        assert_eq!(p.flush(), lsn(200));
    }

    #[test]
    fn flush_never_goes_backwards() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.ack_handle().ack(lsn(200));
        assert_eq!(p.flush(), lsn(200));
        p.ack_handle().ack(lsn(150));
        assert_eq!(p.ack_handle().acked(), lsn(200));
        assert_eq!(p.flush(), lsn(200));
    }

    #[test]
    fn keepalive_advances_flush_only_when_idle() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.keepalive(lsn(500));
        assert_eq!(p.flush(), lsn(100), "transaction 200 is in flight");
        p.ack_handle().ack(lsn(200));
        p.keepalive(lsn(500));
        assert_eq!(p.flush(), lsn(500));
        p.begin();
        p.keepalive(lsn(900));
        assert_eq!(p.flush(), lsn(500), "a transaction is open");
    }

    #[test]
    fn transaction_without_events_counts_as_delivered_after_its_predecessors() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.begin();
        p.commit(lsn(300), false);
        assert_eq!(
            p.flush(),
            lsn(100),
            "200 is not delivered, so 300 may not be confirmed"
        );
        p.ack_handle().ack(lsn(200));
        assert_eq!(p.flush(), lsn(200));
        p.begin();
        p.commit(lsn(400), false);
        assert_eq!(p.flush(), lsn(400));
    }

    #[test]
    fn an_ack_after_the_last_keepalive_still_releases_the_wal_before_it() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.keepalive(lsn(700));
        assert_eq!(p.flush(), lsn(100));
        // No further keepalive comes (write already reached 700); the ack alone must do.
        p.ack_handle().ack(lsn(200));
        assert_eq!(p.flush(), lsn(700));
    }

    #[test]
    fn keepalive_moves_write_even_with_transactions_in_flight() {
        let mut p = progress();
        p.begin();
        p.commit(lsn(200), true);
        p.keepalive(lsn(900));
        let update = p.status_update(PgTimestamp::from_micros(0), false);
        assert_eq!((update.write, update.flush), (lsn(900), lsn(100)));
    }

    #[test]
    fn a_checkpoint_ahead_of_the_slot_is_confirmed_only_when_the_caller_acks_it() {
        // Slot at 100, checkpoint at 500 (a replay window the caller keeps).
        let mut p = Progress::new(AckHandle::default(), lsn(100), lsn(500));
        assert_eq!(p.resume_position(), lsn(100));
        // Skipped transactions and keepalives inside the window move nothing.
        p.begin();
        p.commit(lsn(300), false);
        p.keepalive(lsn(600));
        assert_eq!(p.flush(), lsn(100));
        p.ack_handle().ack(lsn(500));
        assert_eq!(
            p.flush(),
            lsn(600),
            "acked the checkpoint: idle again up to the keepalive"
        );
    }

    #[test]
    fn flush_waits_for_the_publication_to_be_verified_past_it() {
        let mut p = progress();
        p.verified_through(lsn(150));
        p.keepalive(lsn(500));
        assert_eq!(p.flush(), lsn(150), "idle, but verified only to 150");
        p.begin();
        p.commit(lsn(600), true);
        p.ack_handle().ack(lsn(600));
        assert_eq!(p.flush(), lsn(150), "delivered, but verified only to 150");
        p.verified_through(lsn(100));
        assert_eq!(p.flush(), lsn(150), "a verification never moves it back");
        p.verified_through(lsn(1000));
        assert_eq!(p.flush(), lsn(600));
    }

    #[test]
    fn write_is_never_behind_flush() {
        let mut p = progress();
        p.keepalive(lsn(800));
        let update = p.status_update(PgTimestamp::from_micros(0), true);
        assert_eq!((update.write, update.flush), (lsn(800), lsn(800)));
        assert!(update.reply_requested);
    }
}
