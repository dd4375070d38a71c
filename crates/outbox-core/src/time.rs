//! Record timestamps: reading a timestamp column's text and writing RFC 3339.
//!
//! Record timestamps are milliseconds since the Unix epoch (what Kafka's
//! record timestamp and AMQP's `timestamp` property carry, the latter in
//! seconds). A timestamp column may be `timestamptz`, `timestamp` (read as
//! UTC) or a number of milliseconds (`bigint`); Postgres sends the first two
//! in its ISO output style (`2024-05-01 12:30:00.123456+02`), logical messages
//! may carry RFC 3339 (`2024-05-01T10:30:00.123Z`).

/// Milliseconds since the Unix epoch of `text`: an integer (milliseconds), or
/// an ISO 8601 / Postgres ISO-style date and time with an optional UTC offset
/// (none: UTC). The error says what was expected.
pub fn parse_timestamp_millis(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is out of range for milliseconds since 1970"));
    }
    parse_iso(text).ok_or_else(|| {
        format!(
            "{text:?} is not a timestamp in ISO format (2024-05-01 12:30:00.123+02) nor milliseconds since \
             1970; for a timestamp column keep the server's DateStyle at ISO"
        )
    })
}

fn parse_iso(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') || b[13] != b':' {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute) = (num(&b[11..13])?, num(&b[14..16])?);
    if b[16] != b':' {
        return None;
    }
    let second = num(&b[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds, truncated (as Debezium and Kafka clients do).
        for (i, d) in fraction[..digits].iter().take(3).enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1][i];
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            // +HH, +HH:MM, +HH:MM:SS, +HHMM
            let parts: Vec<&[u8]> = if tail.contains(&b':') {
                tail.split(|c| *c == b':').collect()
            } else if tail.len() == 4 {
                vec![&tail[..2], &tail[2..]]
            } else {
                vec![tail]
            };
            if parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            let mut seconds = 0;
            for (part, unit) in parts.iter().zip([3600, 60, 1]) {
                seconds += num(part)? * unit;
            }
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1000)?.checked_add(millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `millis` since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2024-05-01T10:30:00.123Z`).
pub fn format_rfc3339_millis(millis: i64) -> String {
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let seconds = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_iso_output_of_timestamptz_timestamp_and_bigint() {
        // timestamptz as the walsender prints it (session TimeZone = UTC, Europe/Berlin, India).
        let utc = 1_714_566_600_123;
        assert_eq!(parse_timestamp_millis("2024-05-01 12:30:00.123456+00"), Ok(utc));
        assert_eq!(parse_timestamp_millis("2024-05-01 14:30:00.123456+02"), Ok(utc));
        assert_eq!(parse_timestamp_millis("2024-05-01 18:00:00.123+05:30"), Ok(utc));
        assert_eq!(parse_timestamp_millis("2024-05-01 12:30:00.123456"), Ok(utc));
        assert_eq!(parse_timestamp_millis("2024-05-01T12:30:00.123Z"), Ok(utc));
        assert_eq!(parse_timestamp_millis("2024-05-01 12:30:00+00"), Ok(utc - 123));
        assert_eq!(parse_timestamp_millis("1714566600123"), Ok(utc));
        assert_eq!(parse_timestamp_millis("1969-12-31 23:59:59.999+00"), Ok(-1));
        assert_eq!(
            parse_timestamp_millis("1901-12-13 20:45:52+00:09:21"),
            Ok(-2_147_483_648_000 - 561_000)
        );
    }

    #[test]
    fn other_date_styles_and_garbage_are_refused_with_the_fix() {
        for bad in [
            "Wed May 01 12:30:00.123 2024 UTC",
            "01.05.2024 12:30:00",
            "2024-13-01 00:00:00",
            "2024-05-01 12:30:00+0",
            "",
            "infinity",
        ] {
            let err = parse_timestamp_millis(bad).unwrap_err();
            assert!(err.contains("DateStyle at ISO"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rfc3339_round_trips_through_the_parser() {
        for millis in [
            0,
            -1,
            1_714_566_600_123,
            951_782_400_000,
            253_402_300_799_999,
            -62_135_596_800_000,
        ] {
            let text = format_rfc3339_millis(millis);
            assert_eq!(parse_timestamp_millis(&text), Ok(millis), "{text}");
        }
        assert_eq!(
            format_rfc3339_millis(1_714_566_600_123),
            "2024-05-01T12:30:00.123Z"
        );
    }
}
