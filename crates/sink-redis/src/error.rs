//! Errors of the Redis sink's construction.

/// The `[redis]` settings are not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse (the message never contains the password).
    #[error("redis.url is not a valid Redis URL ({0})")]
    Url(String),
    /// A setting is out of its range.
    #[error("redis.{key} = {value}: {expected}")]
    Range {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}
