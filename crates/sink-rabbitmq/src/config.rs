//! Connection and publishing settings, checked once; secrets never printed.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::error::ConfigError;
use crate::template::{valid_exchange_name, Template};

/// The default exchange: a durable topic exchange that `outboxd setup` declares.
pub const DEFAULT_EXCHANGE: &str = "outbox";
/// The default routing-key template (rendered by the pipeline's routing).
pub const DEFAULT_ROUTING_KEY: &str = "${aggregatetype}.${type}";
/// The default bound on published, unconfirmed records.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// The default bound on the bodies of published, unconfirmed records
/// (32 MiB, like the Kafka sink's queue).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 32 * 1024 * 1024;
/// RabbitMQ's own default `max_message_size` (128 MiB): larger bodies make
/// the broker close the channel, so they are refused before publishing.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;
/// The `app_id` property of every message.
pub const APP_ID: &str = "outboxd";

/// The RabbitMQ sink's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    uri: AMQPUri,
    exchange: Template,
    max_in_flight: usize,
    max_in_flight_bytes: usize,
    max_message_bytes: usize,
    ca_pem: Option<String>,
    management: Option<String>,
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange.as_str())
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("ca_file", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("management", &self.management_address())
            .finish()
    }
}

impl RabbitConfig {
    /// Parses `url` (`amqp://user:password@host:5672/vhost`, `amqps://…` for
    /// TLS; the vhost URL-encoded, `%2f` for `/`). Defaults: exchange
    /// [`DEFAULT_EXCHANGE`], window [`DEFAULT_MAX_IN_FLIGHT`].
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let uri = AMQPUri::from_str(url).map_err(|reason| ConfigError::Url {
            url: redact_url(url),
            reason,
        })?;
        Ok(RabbitConfig {
            uri,
            exchange: Template::new("exchange", DEFAULT_EXCHANGE)?,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ca_pem: None,
            management: None,
        })
    }

    /// Takes the password from a file (its first line), so it stays out of
    /// the URL, the environment and the configuration file.
    pub fn password_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::PasswordFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.uri.authority.userinfo.password = text.lines().next().unwrap_or_default().to_owned();
        Ok(self)
    }

    /// The exchange template (`${aggregatetype}`, `${type}`; no placeholder
    /// = one exchange).
    pub fn exchange(mut self, template: &str) -> Result<Self, ConfigError> {
        let exchange = Template::new("exchange", template)?;
        if exchange.fixed().is_some_and(|name| !valid_exchange_name(name)) {
            return Err(ConfigError::ExchangeName {
                name: template.to_owned(),
            });
        }
        self.exchange = exchange;
        Ok(self)
    }

    /// The most records published and not yet confirmed; `send` waits when
    /// the window is full.
    pub fn max_in_flight(mut self, records: usize) -> Result<Self, ConfigError> {
        if records == 0 {
            return Err(ConfigError::NoWindow);
        }
        self.max_in_flight = records;
        Ok(self)
    }

    /// The most body bytes published and not yet confirmed (one record
    /// larger than this still goes, alone); with `max_in_flight` it bounds
    /// the sink's memory whatever the payload sizes.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// The largest body published; a larger record fails as too large
    /// without reaching the broker. Set it to the broker's `max_message_size`.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Trusts the CA certificates of this PEM file for `amqps://` (besides
    /// the system's).
    pub fn ca_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let pem = std::fs::read_to_string(path).map_err(|e| ConfigError::CaFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// Where the management HTTP API listens (`host:port`; default the
    /// broker's host, port 15672). Only `check` uses it, to count bindings.
    pub fn management(mut self, address: &str) -> Self {
        self.management = Some(address.to_owned());
        self
    }

    /// The management API's `host:port`.
    pub fn management_address(&self) -> String {
        self.management
            .clone()
            .unwrap_or_else(|| format!("{}:15672", self.uri.authority.host))
    }

    /// The exchange template.
    pub fn exchange_template(&self) -> &Template {
        &self.exchange
    }

    /// The in-flight window.
    pub fn window(&self) -> usize {
        self.max_in_flight
    }

    /// The in-flight window in body bytes.
    pub fn window_bytes(&self) -> usize {
        self.max_in_flight_bytes
    }

    /// The largest body published.
    pub fn message_limit(&self) -> usize {
        self.max_message_bytes
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The broker's host name.
    pub fn host(&self) -> &str {
        &self.uri.authority.host
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The user name and password (for the management API).
    pub(crate) fn credentials(&self) -> (&str, &str) {
        (
            &self.uri.authority.userinfo.username,
            &self.uri.authority.userinfo.password,
        )
    }

    /// The URI to connect with.
    pub(crate) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// TLS settings: the system's roots plus the configured CA file.
    pub(crate) fn tls_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        }
    }

    /// The URL with the password replaced, for logs and `check`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.uri.to_string())
    }
}

/// A URL as it may be shown (its password, and any query value not on the
/// allow-list, replaced): the project's one redaction function, under the
/// name this crate's callers use; also used before the URL is known to parse.
pub use outbox_core::redact::redact as redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = RabbitConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(c.exchange_template().as_str(), "outbox");
        assert_eq!(c.window(), DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(c.vhost(), "/");
        assert!(!c.tls());
        let c = RabbitConfig::new("amqps://u:p@broker.example/prod").unwrap();
        assert!(c.tls());
        assert_eq!(c.vhost(), "prod");
        assert_eq!(c.uri.authority.port, 5671);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = RabbitConfig::new("amqp://app:hunter2@127.0.0.1:5672/%2f").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("amqp://app:<redacted>@127.0.0.1:5672/%2F"),
            "{debug}"
        );
        assert_eq!(
            redact_url("amqp://app:hunter2@h:5672/v"),
            "amqp://app:<redacted>@h:5672/v"
        );
        let err = RabbitConfig::new("amqp://app:hunter2@h:notaport/v").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn password_from_a_file() {
        let dir = std::env::temp_dir().join(format!("sink-rabbitmq-pw-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let c = RabbitConfig::new("amqp://app@127.0.0.1/%2f")
            .unwrap()
            .password_file(&dir)
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(c.credentials(), ("app", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_fixed_exchange_name_rabbitmq_refuses_is_refused_at_once() {
        let c = RabbitConfig::new("amqp://127.0.0.1/%2f").unwrap();
        let err = c.clone().exchange("with space").unwrap_err();
        assert!(err.to_string().contains("\"with space\""), "{err}");
        assert!(c.clone().exchange(&"x".repeat(256)).is_err());
        assert!(c.exchange("outbox.${aggregatetype}").is_ok());
    }

    #[test]
    fn a_window_of_zero_is_refused() {
        let c = RabbitConfig::new("amqp://127.0.0.1").unwrap();
        assert_eq!(c.max_in_flight(0).unwrap_err(), ConfigError::NoWindow);
    }
}
