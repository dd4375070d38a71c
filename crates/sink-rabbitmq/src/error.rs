//! Errors of the RabbitMQ sink, by what the caller must do.

/// A configuration that can never work: fix it and start again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse as an AMQP URI.
    #[error(
        "invalid rabbitmq url {url}: {reason} (expected amqp://user:password@host:5672/vhost or amqps://…)"
    )]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The parser's message.
        reason: String,
    },
    /// The password file cannot be read.
    #[error("cannot read the rabbitmq password file {path}: {reason}")]
    PasswordFile {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The CA certificate file cannot be read.
    #[error("cannot read the rabbitmq CA certificate file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A template names a placeholder that does not exist.
    #[error("rabbitmq {what}: {source}")]
    Template {
        /// `exchange` or `routing key`.
        what: &'static str,
        /// outbox-core's check.
        source: outbox_core::TemplateError,
    },
    /// A fixed exchange name RabbitMQ would refuse.
    #[error(
        "rabbitmq exchange {name:?} is not a valid exchange name: use at most 255 bytes of a-z, A-Z, 0-9, \
         '-', '_', '.', ':'"
    )]
    ExchangeName {
        /// The name.
        name: String,
    },
    /// `max_in_flight` is 0.
    #[error("rabbitmq max_in_flight must be at least 1")]
    NoWindow,
}

/// Why the sink (or a topology command) could not do its work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The settings are wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker could not be reached or refused the connection (address,
    /// credentials, vhost, TLS).
    #[error("cannot connect to rabbitmq at {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// An AMQP operation failed.
    #[error("rabbitmq {operation} failed: {source}")]
    Amqp {
        /// What was being done.
        operation: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The exchange exists with other settings than the ones asked for.
    #[error("exchange {exchange:?} exists with other settings: {detail}; delete it or use its settings")]
    ExchangeMismatch {
        /// The exchange.
        exchange: String,
        /// The broker's message.
        detail: String,
    },
}
