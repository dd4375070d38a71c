//! Postgres timestamps as the replication protocol sends them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as Postgres sends it on the wire: microseconds since
/// 2000-01-01 00:00:00 UTC (the Postgres epoch), as a signed 64-bit integer.
///
/// Kept raw so that decoding never fails on an odd clock value and encoding
/// reproduces the exact bytes; converted on demand. The crate never reads a
/// clock: callers pass the time in (`from_system_time`).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PgTimestamp(i64);

impl PgTimestamp {
    /// Unix time of the Postgres epoch, in microseconds.
    pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    /// Wraps microseconds since the Postgres epoch.
    pub const fn from_micros(micros: i64) -> Self {
        PgTimestamp(micros)
    }

    /// Microseconds since the Postgres epoch, as on the wire.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Microseconds since the Unix epoch; `None` if that overflows (e.g. `infinity`).
    pub const fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(Self::POSTGRES_EPOCH_UNIX_MICROS)
    }

    /// The same instant as a `SystemTime`; `None` when it does not fit.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix = self.unix_micros()?;
        let magnitude = Duration::from_micros(unix.unsigned_abs());
        if unix >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// Converts a `SystemTime` (truncated to microseconds); `None` when it does
    /// not fit Postgres' range.
    pub fn from_system_time(time: SystemTime) -> Option<Self> {
        let unix = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).ok()?,
            Err(before) => i64::try_from(before.duration().as_micros()).ok()?.checked_neg()?,
        };
        unix.checked_sub(Self::POSTGRES_EPOCH_UNIX_MICROS)
            .map(PgTimestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_epoch_is_2000_01_01() {
        let epoch = PgTimestamp::from_micros(0).to_system_time().unwrap();
        assert_eq!(epoch.duration_since(UNIX_EPOCH).unwrap().as_secs(), 946_684_800);
    }

    #[test]
    fn converts_both_ways() {
        // 2026-11-25 02:00:00.123456 UTC
        let unix_micros: i64 = 1_795_572_000_123_456;
        let time = UNIX_EPOCH + Duration::from_micros(unix_micros as u64);
        let ts = PgTimestamp::from_system_time(time).unwrap();
        assert_eq!(
            ts.as_micros(),
            unix_micros - PgTimestamp::POSTGRES_EPOCH_UNIX_MICROS
        );
        assert_eq!(ts.to_system_time(), Some(time));
        assert_eq!(ts.unix_micros(), Some(unix_micros));
    }

    #[test]
    fn before_unix_epoch_and_extremes_do_not_panic() {
        let before = PgTimestamp::from_micros(-PgTimestamp::POSTGRES_EPOCH_UNIX_MICROS - 1_000_000);
        assert_eq!(
            before.to_system_time(),
            UNIX_EPOCH.checked_sub(Duration::from_secs(1))
        );
        assert_eq!(PgTimestamp::from_micros(i64::MAX).unix_micros(), None);
        assert_eq!(PgTimestamp::from_micros(i64::MAX).to_system_time(), None);
        let _ = PgTimestamp::from_micros(i64::MIN).to_system_time();
    }
}
