//! Log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log: a byte offset, shown by Postgres as two
/// hexadecimal halves (`16/B374D848`).
///
/// `Lsn` orders like the WAL does, so "everything up to X is delivered" is a
/// plain comparison. `Lsn::ZERO` (`0/0`) is Postgres' `InvalidXLogRecPtr`; it is
/// what Relation and Type messages carry as their position, and it is never a
/// position to report back to the server.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// `0/0`, Postgres' invalid position.
    pub const ZERO: Lsn = Lsn(0);

    /// Wraps a raw 64-bit WAL position.
    pub const fn new(raw: u64) -> Self {
        Lsn(raw)
    }

    /// The raw 64-bit WAL position.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is `0/0`.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Bytes of WAL from `earlier` to `self`; zero when `earlier` is not earlier.
    pub const fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<u64> for Lsn {
    fn from(raw: u64) -> Self {
        Lsn(raw)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    /// Postgres' own `%X/%X` form: upper-case hex, no padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// A string that is not an LSN in Postgres' `XXXXXXXX/XXXXXXXX` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal halves of at most 8 digits, like 16/B374D848")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError { input: s.to_owned() };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| {
            let valid = (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
            if valid {
                u32::from_str_radix(part, 16).map_err(|_| err())
            } else {
                Err(err())
            }
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn::new(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn::new(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn::new(0x1_0000_000A).to_string(), "1/A");
    }

    #[test]
    fn parses_postgres_form_case_insensitively() {
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(Lsn::new(0x16_B374_D848)));
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn::new(0x16_B374_D848)));
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn::ZERO));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>(), Ok(Lsn::new(u64::MAX)));
    }

    #[test]
    fn rejects_malformed_lsns() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "16B374D848",
            "1/2/3",
            "123456789/0",
            "0/123456789",
            "g/0",
            "+1/0",
            " 1/0",
            "1/0 ",
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert!(err.to_string().contains("16/B374D848"), "{err}");
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        for raw in [0, 1, 0xFFFF_FFFF, 0x1_0000_0000, 0xDEAD_BEEF_CAFE_F00D, u64::MAX] {
            let lsn = Lsn::new(raw);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }

    #[test]
    fn orders_like_the_wal() {
        assert!(Lsn::new(0x1_0000_0000) > Lsn::new(0xFFFF_FFFF));
        assert_eq!(Lsn::new(10).bytes_since(Lsn::new(4)), 6);
        assert_eq!(Lsn::new(4).bytes_since(Lsn::new(10)), 0);
    }
}
