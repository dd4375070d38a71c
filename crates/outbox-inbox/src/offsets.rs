//! Which offsets are safe to commit when messages finish out of order.
//!
//! Messages of one partition are read in offset order but handled by several
//! workers (one per key group), so they finish in any order. Committing
//! offset `n` tells the broker "everything before `n` is done", so the
//! committable offset of a partition is the smallest offset still in flight
//! or, with nothing in flight, one past the highest finished. A message that
//! never finishes (its worker stopped on an error) holds the partition's
//! commit below it for good: it will be re-delivered, never skipped.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    highest_finished: Option<i64>,
    committed: Option<i64>,
}

impl PartitionState {
    /// Everything read before the lowest offset in flight has finished, so
    /// that offset is where a restart must resume; with nothing in flight,
    /// one past the highest finished.
    fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.highest_finished.map(|h| h + 1),
        }
    }
}

/// Offsets read and finished, per partition key `P`.
#[derive(Debug)]
pub(crate) struct OffsetTracker<P: Ord + Clone> {
    partitions: BTreeMap<P, PartitionState>,
}

impl<P: Ord + Clone> Default for OffsetTracker<P> {
    fn default() -> Self {
        Self {
            partitions: BTreeMap::new(),
        }
    }
}

impl<P: Ord + Clone> OffsetTracker<P> {
    /// A message was read and handed to a worker.
    pub(crate) fn started(&mut self, partition: &P, offset: i64) {
        self.partitions
            .entry(partition.clone())
            .or_default()
            .in_flight
            .insert(offset);
    }

    /// A message started earlier has been processed (or was a duplicate).
    pub(crate) fn finished(&mut self, partition: &P, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            if state.in_flight.remove(&offset) {
                state.highest_finished = Some(state.highest_finished.map_or(offset, |h| h.max(offset)));
            }
        }
    }

    /// Offsets to commit (the next offset to read, per partition) that have
    /// changed since the last call; marks them committed.
    pub(crate) fn take_commits(&mut self) -> Vec<(P, i64)> {
        let mut out = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(next) = state.committable() {
                if state.committed != Some(next) {
                    state.committed = Some(next);
                    out.push((partition.clone(), next));
                }
            }
        }
        out
    }

    /// Messages started and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;

    #[test]
    fn an_unfinished_message_is_where_a_restart_resumes() {
        let mut t = OffsetTracker::<i32>::default();
        assert!(t.take_commits().is_empty());
        t.started(&0, 5);
        assert_eq!(t.take_commits(), vec![(0, 5)], "resume at the unfinished message");
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn in_order_commits_one_past_the_last() {
        let mut t = OffsetTracker::default();
        for o in 0..3 {
            t.started(&0, o);
        }
        t.finished(&0, 0);
        t.finished(&0, 1);
        assert_eq!(t.take_commits(), vec![(0, 2)]);
        assert!(
            t.take_commits().is_empty(),
            "an unchanged offset is not committed again"
        );
        t.finished(&0, 2);
        assert_eq!(t.take_commits(), vec![(0, 3)]);
    }

    #[test]
    fn a_later_finish_does_not_skip_an_earlier_message_in_flight() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(&0, o);
        }
        t.finished(&0, 14);
        t.finished(&0, 12);
        assert_eq!(t.take_commits(), vec![(0, 10)], "offset 10 is still in flight");
        t.finished(&0, 10);
        assert_eq!(t.take_commits(), vec![(0, 11)]);
        t.finished(&0, 11);
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        t.finished(&0, 13);
        assert_eq!(t.take_commits(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.started(&0, 0);
        t.started(&1, 0);
        t.started(&1, 1);
        t.finished(&1, 1);
        t.finished(&0, 0);
        assert_eq!(t.take_commits(), vec![(0, 1), (1, 0)]);
        t.finished(&1, 0);
        assert_eq!(t.take_commits(), vec![(1, 2)]);
    }

    #[test]
    fn a_message_that_never_finishes_holds_its_partition() {
        let mut t = OffsetTracker::default();
        for o in 0..4 {
            t.started(&0, o);
        }
        t.finished(&0, 0);
        t.finished(&0, 2);
        t.finished(&0, 3);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
        assert!(t.take_commits().is_empty());
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn a_redelivered_lower_offset_holds_the_commit_below_it() {
        // After a rebalance the partition may come back from an older
        // committed offset: those messages are in flight again.
        let mut t = OffsetTracker::default();
        t.started(&0, 5);
        t.finished(&0, 5);
        assert_eq!(t.take_commits(), vec![(0, 6)]);
        t.started(&0, 3);
        assert_eq!(t.take_commits(), vec![(0, 3)]);
        t.finished(&0, 3);
        assert_eq!(t.take_commits(), vec![(0, 6)]);
    }
}
