//! # The ordered ack tracker
//!
//! Postgres may release WAL only up to the end of the longest prefix of
//! transactions whose every record the sink has confirmed (DESIGN invariant 1).
//! Records are confirmed in any order — by partition, by retry, by callback
//! thread — so the confirmed position is not "the last report" but the end of
//! the delivered prefix. This type computes it, and nothing else: no I/O, no
//! clock, no locks (the owner serializes access).
//!
//! Transactions are opened in stream order with [`AckTracker::begin`], their
//! records counted with [`AckTracker::record`], and closed with
//! [`AckTracker::commit`] once their `end_lsn` is known — so a transaction's
//! records can be in flight before its commit has been read (large
//! transactions are never held whole). [`AckTracker::push`] does all three for
//! a transaction whose record count is known up front.
//!
//! A failed record stops progress at its transaction for good: nothing after it
//! is confirmed until the process restarts and the slot re-sends it.
//!
//! Each transaction carries its owner's data `T` (the pipeline keeps its last
//! event and commit time there): when a transaction is confirmed its data
//! comes back from [`AckTracker::take_confirmed`], so nothing keeps a mirror
//! queue keyed by LSN beside the tracker (Vector's `FinalizerSet<T>` idea).

use std::collections::VecDeque;

use pgoutput::Lsn;

/// A transaction in the tracker, by its place in the stream. The default
/// (the first) serves senders that track no transactions, like a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxSeq(u64);

impl TxSeq {
    /// The sequence number (0 for the first transaction tracked).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A caller error: reporting on something that was never tracked, twice, or
/// after it could have been counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The transaction was never begun, or is already confirmed and gone.
    #[error("transaction #{0} is not tracked (never begun, or already confirmed)")]
    Unknown(u64),
    /// More deliveries reported than records counted.
    #[error("transaction #{0}: more records delivered than were sent")]
    TooManyDeliveries(u64),
    /// A record counted or a commit after the transaction was committed.
    #[error("transaction #{0} is already committed")]
    AlreadyCommitted(u64),
    /// Commit positions must grow with the stream.
    #[error("transaction #{seq} commits at {end_lsn}, not after the previous transaction's {previous}")]
    OutOfOrder {
        /// The transaction.
        seq: u64,
        /// Its end.
        end_lsn: Lsn,
        /// The previous end.
        previous: Lsn,
    },
}

#[derive(Debug, Clone)]
struct Entry<T> {
    /// Known once committed.
    end_lsn: Option<Lsn>,
    /// Records sent and not yet reported delivered.
    outstanding: u64,
    failed: bool,
    data: T,
}

/// See the module notes.
#[derive(Debug, Clone)]
pub struct AckTracker<T = ()> {
    entries: VecDeque<Entry<T>>,
    /// Confirmed transactions whose data the owner has not taken yet.
    released: VecDeque<(Lsn, T)>,
    /// Sequence number of `entries[0]`.
    base: u64,
    confirmed: Lsn,
    /// The highest `end_lsn` committed so far.
    last_end: Lsn,
    in_flight_records: u64,
}

impl<T> AckTracker<T> {
    /// A tracker whose confirmed position starts at `start` (e.g. the slot's position).
    pub fn new(start: Lsn) -> Self {
        AckTracker {
            entries: VecDeque::new(),
            released: VecDeque::new(),
            base: 0,
            confirmed: start,
            last_end: start,
            in_flight_records: 0,
        }
    }

    /// End of the longest fully delivered prefix of committed transactions.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Whether a record failed (progress is stopped).
    pub fn has_failed(&self) -> bool {
        self.entries.iter().any(|e| e.failed)
    }

    /// Transactions not yet confirmed.
    pub fn pending_transactions(&self) -> usize {
        self.entries.len()
    }

    /// Records sent and not yet reported.
    pub fn in_flight_records(&self) -> u64 {
        self.in_flight_records
    }

    /// Opens the next transaction of the stream, carrying `data`.
    pub fn begin(&mut self, data: T) -> TxSeq {
        self.entries.push_back(Entry {
            end_lsn: None,
            outstanding: 0,
            failed: false,
            data,
        });
        TxSeq(self.base + self.entries.len() as u64 - 1)
    }

    /// Counts one record of `tx` as sent.
    pub fn record(&mut self, tx: TxSeq) -> Result<(), AckError> {
        let entry = self.entry(tx)?;
        if entry.end_lsn.is_some() {
            return Err(AckError::AlreadyCommitted(tx.0));
        }
        entry.outstanding += 1;
        self.in_flight_records += 1;
        Ok(())
    }

    /// Closes `tx` at `end_lsn`; a transaction with nothing outstanding is then delivered.
    pub fn commit(&mut self, tx: TxSeq, end_lsn: Lsn) -> Result<(), AckError> {
        if end_lsn <= self.last_end {
            return Err(AckError::OutOfOrder {
                seq: tx.0,
                end_lsn,
                previous: self.last_end,
            });
        }
        let entry = self.entry(tx)?;
        if entry.end_lsn.is_some() {
            return Err(AckError::AlreadyCommitted(tx.0));
        }
        entry.end_lsn = Some(end_lsn);
        self.last_end = end_lsn;
        self.advance();
        Ok(())
    }

    /// Opens, counts and closes a transaction with `records` records.
    pub fn push(&mut self, end_lsn: Lsn, records: u64, data: T) -> Result<TxSeq, AckError> {
        if end_lsn <= self.last_end {
            return Err(AckError::OutOfOrder {
                seq: self.base + self.entries.len() as u64,
                end_lsn,
                previous: self.last_end,
            });
        }
        let tx = self.begin(data);
        if let Some(entry) = self.entries.back_mut() {
            entry.outstanding = records;
        }
        self.in_flight_records += records;
        self.commit(tx, end_lsn)?;
        Ok(tx)
    }

    /// One record of `tx` was delivered.
    pub fn delivered(&mut self, tx: TxSeq) -> Result<(), AckError> {
        let entry = self.entry(tx)?;
        if entry.outstanding == 0 {
            return Err(AckError::TooManyDeliveries(tx.0));
        }
        entry.outstanding -= 1;
        self.in_flight_records -= 1;
        self.advance();
        Ok(())
    }

    /// One record of `tx` failed for good: progress stops before `tx`.
    pub fn failed(&mut self, tx: TxSeq) -> Result<(), AckError> {
        let entry = self.entry(tx)?;
        if entry.outstanding == 0 {
            return Err(AckError::TooManyDeliveries(tx.0));
        }
        entry.outstanding -= 1;
        entry.failed = true;
        self.in_flight_records -= 1;
        Ok(())
    }

    /// The data of a transaction not yet confirmed.
    pub fn data_mut(&mut self, tx: TxSeq) -> Result<&mut T, AckError> {
        Ok(&mut self.entry(tx)?.data)
    }

    /// The end LSN and data of every transaction confirmed since the last
    /// call, in stream order.
    pub fn take_confirmed(&mut self) -> std::collections::vec_deque::Drain<'_, (Lsn, T)> {
        self.released.drain(..)
    }

    fn entry(&mut self, tx: TxSeq) -> Result<&mut Entry<T>, AckError> {
        let index = tx.0.checked_sub(self.base).ok_or(AckError::Unknown(tx.0))?;
        let index = usize::try_from(index).map_err(|_| AckError::Unknown(tx.0))?;
        self.entries.get_mut(index).ok_or(AckError::Unknown(tx.0))
    }

    /// Pops the delivered prefix.
    fn advance(&mut self) {
        while let Some(front) = self.entries.front() {
            match front.end_lsn {
                Some(end_lsn) if front.outstanding == 0 && !front.failed => {
                    self.confirmed = end_lsn;
                    if let Some(entry) = self.entries.pop_front() {
                        self.released.push_back((end_lsn, entry.data));
                    }
                    self.base += 1;
                }
                _ => break,
            }
        }
    }
}
