//! The sink's settings, checked once (`[redis]` in outboxd's configuration).

use std::time::Duration;

use crate::error::ConfigError;

/// How records are written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// One Redis stream per routed name, one entry per record.
    #[default]
    Streams,
    /// One BullMQ queue per routed name, one job per record (see
    /// [`crate::bullmq`]).
    BullMq {
        /// BullMQ's key prefix (its `prefix` option; BullMQ's default is `bull`).
        prefix: String,
    },
}

/// The Redis sink's settings. Build with [`RedisConfig::new`], then adjust
/// the public fields; [`RedisConfig::check`] says whether they are usable.
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    info: redis::ConnectionInfo,
    /// Streams (the default).
    pub mode: Mode,
    /// How long an event id is remembered per stream, so that a record
    /// re-sent after a crash or a reconnect is not appended twice. Keep it
    /// at least as long as the replay window and any outage you want to
    /// survive without duplicates (default 7 days).
    pub dedupe_ttl: Duration,
    /// `XADD … MAXLEN ~ n`: trim each stream to about this many entries
    /// (`None`, the default: never trim).
    pub maxlen: Option<u64>,
    /// `WAIT n timeout` after each batch: a record counts as delivered only
    /// once this many replicas have it (0, the default: no `WAIT`).
    pub wait_replicas: u32,
    /// The `WAIT` timeout.
    pub wait_timeout: Duration,
    /// Records whose fields add up to more bytes are refused for good
    /// (`Permanent { reason: TooLarge }`) instead of being sent.
    pub max_record_bytes: usize,
    /// Records in flight at most (one pipelined batch); `send` waits for room.
    pub max_in_flight: usize,
    /// A reply that takes longer fails the batch; it is retried.
    pub response_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("mode", &self.mode)
            .field("dedupe_ttl", &self.dedupe_ttl)
            .field("maxlen", &self.maxlen)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// Defaults, in one place.
pub mod defaults {
    use std::time::Duration;

    /// `dedupe_ttl`: 7 days.
    pub const DEDUPE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `wait_timeout`: 1 s.
    pub const WAIT_TIMEOUT: Duration = Duration::from_secs(1);
    /// `max_record_bytes`: 1 MiB (Redis itself takes up to 512 MB).
    pub const MAX_RECORD_BYTES: usize = 1 << 20;
    /// `max_in_flight`: records per pipelined batch.
    pub const MAX_IN_FLIGHT: usize = 512;
    /// `response_timeout`: 5 s.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
}

impl RedisConfig {
    /// Parses `url` (`redis://`, `rediss://` for TLS, `redis+unix://`) with
    /// every other setting at its default.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| ConfigError::Url(redact(url, &e.to_string())))?;
        Ok(RedisConfig {
            url: url.to_owned(),
            info,
            mode: Mode::Streams,
            dedupe_ttl: defaults::DEDUPE_TTL,
            maxlen: None,
            wait_replicas: 0,
            wait_timeout: defaults::WAIT_TIMEOUT,
            max_record_bytes: defaults::MAX_RECORD_BYTES,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            response_timeout: defaults::RESPONSE_TIMEOUT,
        })
    }

    /// Whether the settings are usable.
    pub fn check(&self) -> Result<(), ConfigError> {
        let range = |key, value: String, expected| ConfigError::Range { key, value, expected };
        if self.dedupe_ttl < Duration::from_secs(1) {
            return Err(range(
                "dedupe_ttl",
                format!("{:?}", self.dedupe_ttl),
                "at least 1 s (it is what keeps a re-sent record from being appended twice)",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 100_000 {
            return Err(range(
                "max_in_flight",
                self.max_in_flight.to_string(),
                "1 to 100000",
            ));
        }
        if self.max_record_bytes == 0 {
            return Err(range("max_record_bytes", "0".into(), "more than 0"));
        }
        if self.maxlen == Some(0) {
            return Err(range(
                "maxlen",
                "0".into(),
                "more than 0 (leave it out to never trim)",
            ));
        }
        if self.response_timeout.is_zero() {
            return Err(range("response_timeout", "0".into(), "more than 0"));
        }
        Ok(())
    }

    /// The URL with any password replaced, for logs and `outboxd check`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url, &self.url)
    }

    pub(crate) fn connection_info(&self) -> &redis::ConnectionInfo {
        &self.info
    }
}

/// `text` with the password of `url` (if any) replaced by `<redacted>`.
fn redact(url: &str, text: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return text.to_owned();
    };
    let Some((userinfo, _)) = rest.rsplit_once('@') else {
        return text.to_owned();
    };
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => text.replace(password, "<redacted>"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_debug_output_or_errors() {
        let config = RedisConfig::new("rediss://app:hunter2@cache:6380/2").unwrap();
        assert_eq!(config.redacted_url(), "rediss://app:<redacted>@cache:6380/2");
        assert!(!format!("{config:?}").contains("hunter2"));
        let config = RedisConfig::new("redis://:hunter2@cache").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = RedisConfig::new("redis://:hunter2@cache:notaport").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut config = RedisConfig::new("redis://localhost").unwrap();
        config.check().unwrap();
        config.max_in_flight = 0;
        assert!(config.check().is_err());
        config.max_in_flight = 10;
        config.maxlen = Some(0);
        assert!(config.check().unwrap_err().to_string().contains("never trim"));
    }
}
