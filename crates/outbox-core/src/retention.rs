//! # The replay window
//!
//! `[retention]` keeps the slot's confirmed position behind what was
//! delivered, so the WAL after it stays on the server and `outboxd replay` can
//! re-read it. A delivered position is released to the slot only once it is
//! at least `duration` old **and** at least `bytes` of WAL behind the received
//! position. Both zero: a delivered position is released at once.
//!
//! Measured against the received position (not the delivered one), so an idle
//! outbox in a busy database still lets the slot move on.
//!
//! The window remembers delivered positions with the time each was delivered.
//! To bound its size it keeps at most one position per
//! [`RetentionWindow::GRANULARITY`]: a newer position delivered within the
//! same slice replaces the slice's entry *with its own time*, so every
//! remembered position carries the true time it was delivered, and nothing is
//! ever released early (a position dropped from the window is released no
//! sooner than the newer one that replaced it).
//!
//! No I/O, no clock: the caller passes `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pgoutput::Lsn;

/// See the module notes.
#[derive(Debug, Clone)]
pub struct RetentionWindow {
    duration: Duration,
    bytes: u64,
    /// Delivered, not yet released positions, oldest first, with when each
    /// was delivered.
    history: VecDeque<(Lsn, Instant)>,
    /// When the slice of the newest entry began (`None`: the next delivery
    /// starts a new entry).
    slice_start: Option<Instant>,
    released: Lsn,
}

impl RetentionWindow {
    /// At most one remembered position per this much time.
    pub const GRANULARITY: Duration = Duration::from_millis(100);

    /// A window of `duration` and `bytes`, starting with `start` delivered at
    /// `delivered_at` (e.g. when the checkpoint that names it was written).
    /// Nothing is released yet: `start` is released like any delivered
    /// position, once it is old and far enough behind.
    pub fn new(duration: Duration, bytes: u64, start: Lsn, delivered_at: Instant) -> Self {
        RetentionWindow {
            duration,
            bytes,
            history: VecDeque::from([(start, delivered_at)]),
            slice_start: None,
            released: Lsn::ZERO,
        }
    }

    /// Whether there is a window at all.
    pub fn is_zero(&self) -> bool {
        self.duration.is_zero() && self.bytes == 0
    }

    /// The newest position released so far.
    pub fn released(&self) -> Lsn {
        self.released
    }

    /// Positions remembered (bounded by `duration / GRANULARITY` + 1).
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether no position is waiting.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// `lsn` was delivered at `now`. Positions not newer than the newest
    /// remembered one are ignored.
    pub fn delivered(&mut self, lsn: Lsn, now: Instant) {
        if self.history.back().is_some_and(|&(newest, _)| lsn <= newest) || lsn <= self.released {
            return;
        }
        match self.slice_start {
            Some(start) if now.saturating_duration_since(start) < Self::GRANULARITY => {
                if let Some(back) = self.history.back_mut() {
                    *back = (lsn, now);
                }
            }
            _ => {
                self.history.push_back((lsn, now));
                self.slice_start = Some(now);
            }
        }
    }

    /// The newest delivered position that may be released now (old and far
    /// enough behind `received`), if it is newer than what was released.
    pub fn release(&mut self, received: Lsn, now: Instant) -> Option<Lsn> {
        let mut target = None;
        while let Some(&(lsn, at)) = self.history.front() {
            let old_enough = now.saturating_duration_since(at) >= self.duration;
            let far_enough = received.as_u64().saturating_sub(lsn.as_u64()) >= self.bytes;
            if !(old_enough && far_enough) {
                break;
            }
            target = Some(lsn);
            self.history.pop_front();
        }
        if self.history.is_empty() {
            self.slice_start = None;
        }
        let target = target.filter(|t| *t > self.released)?;
        self.released = target;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(raw: u64) -> Lsn {
        Lsn::new(raw)
    }

    #[test]
    fn no_window_releases_each_delivered_position_at_once() {
        let t0 = Instant::now();
        let mut w = RetentionWindow::new(Duration::ZERO, 0, lsn(10), t0);
        assert_eq!(w.release(lsn(10), t0), Some(lsn(10)));
        w.delivered(lsn(20), t0);
        assert_eq!(w.release(lsn(20), t0), Some(lsn(20)));
        assert_eq!(w.release(lsn(20), t0), None, "nothing new");
        w.delivered(lsn(30), t0 + Duration::from_millis(1));
        assert_eq!(w.release(lsn(30), t0 + Duration::from_millis(1)), Some(lsn(30)));
    }

    #[test]
    fn duration_holds_a_position_until_it_is_old_enough() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut w = RetentionWindow::new(day, 0, lsn(10), t0);
        w.delivered(lsn(20), t0 + Duration::from_secs(1));
        assert_eq!(w.release(lsn(20), t0 + day - Duration::from_millis(1)), None);
        assert_eq!(w.release(lsn(20), t0 + day), Some(lsn(10)));
        assert_eq!(w.release(lsn(20), t0 + day + Duration::from_millis(999)), None);
        assert_eq!(
            w.release(lsn(20), t0 + day + Duration::from_secs(1)),
            Some(lsn(20))
        );
    }

    #[test]
    fn bytes_hold_a_position_until_enough_wal_follows_it() {
        let t0 = Instant::now();
        let mut w = RetentionWindow::new(Duration::ZERO, 1000, lsn(100), t0);
        assert_eq!(w.release(lsn(1099), t0), None);
        assert_eq!(w.release(lsn(1100), t0), Some(lsn(100)));
        w.delivered(lsn(500), t0);
        assert_eq!(w.release(lsn(1499), t0), None);
        // Idle outbox, busy database: the received position alone moves it on.
        assert_eq!(w.release(lsn(5000), t0), Some(lsn(500)));
    }

    #[test]
    fn a_position_within_a_slice_replaces_the_entry_with_its_own_time_so_none_is_released_early() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut w = RetentionWindow::new(window, 0, lsn(5), t0);
        w.delivered(lsn(10), t0);
        w.delivered(lsn(20), t0 + Duration::from_millis(50));
        assert_eq!(w.len(), 2, "the start and one slice");
        // lsn 20 was delivered at +50 ms: at exactly t0 + 10 s it is too young,
        // and lsn 10 is no longer remembered apart from it.
        assert_eq!(w.release(lsn(20), t0 + window), Some(lsn(5)));
        assert_eq!(w.release(lsn(20), t0 + window + Duration::from_millis(49)), None);
        assert_eq!(
            w.release(lsn(20), t0 + window + Duration::from_millis(50)),
            Some(lsn(20))
        );
    }

    #[test]
    fn the_window_stays_bounded_by_its_granularity() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut w = RetentionWindow::new(window, 0, lsn(0), t0);
        // One delivery per millisecond for two minutes.
        for ms in 1..=120_000u64 {
            let now = t0 + Duration::from_millis(ms);
            w.delivered(lsn(ms), now);
            w.release(lsn(ms), now);
        }
        let bound = (window.as_millis() / RetentionWindow::GRANULARITY.as_millis()) as usize + 2;
        assert!(w.len() <= bound, "{} entries, bound {bound}", w.len());
        // What was released is at least a minute old.
        assert!(w.released() <= lsn(60_000), "{}", w.released());
        assert!(w.released() >= lsn(59_800), "{}", w.released());
    }
}
