//! What a consumer loop did.

use crate::inbox::Outcome;

/// Counts of a consumer loop's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages whose handler ran and committed.
    pub processed: u64,
    /// Messages already processed (re-deliveries).
    pub duplicates: u64,
    /// Messages the aggregate guard refused.
    pub stale: u64,
}

impl Summary {
    pub(crate) fn count<T>(&mut self, outcome: &Outcome<T>) {
        match outcome {
            Outcome::Processed(_) => self.processed += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Stale { .. } => self.stale += 1,
        }
    }
}
