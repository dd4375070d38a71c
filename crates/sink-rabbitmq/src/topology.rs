//! What `outboxd setup` and `outboxd check` do on the broker: declare the
//! exchange, and report whether it exists, its type, and whether anything is
//! bound to it.

use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use crate::config::RabbitConfig;
use crate::error::SinkError;
use crate::management::{Answer, Management};
use crate::message::AGGREGATE_ID;
use crate::publisher::connect;

/// The kind of exchange outboxd publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExchangeType {
    /// `topic` (the default): queues bind with patterns such as `order.*`
    /// or `#`.
    #[default]
    Topic,
    /// `direct`: queues bind with exact routing keys.
    Direct,
    /// `fanout`: every bound queue gets everything.
    Fanout,
    /// `x-consistent-hash` (plugin `rabbitmq_consistent_hash_exchange`),
    /// hashing the `aggregateid` header (`hash-header` argument): each
    /// aggregate's events go to one of the bound queues, so N queues with
    /// one consumer each process in parallel and keep per-key order. Queues
    /// bind with a weight as the binding key (`"1"`).
    ConsistentHash,
}

impl ExchangeType {
    /// The AMQP type name.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::ConsistentHash => "x-consistent-hash",
        }
    }

    fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::ConsistentHash => ExchangeKind::Custom(self.name().into()),
        }
    }

    fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == ExchangeType::ConsistentHash {
            arguments.insert(
                "hash-header".into(),
                AMQPValue::LongString(LongString::from(AGGREGATE_ID)),
            );
        }
        arguments
    }
}

/// Declares `exchange` durable, of type `kind` (idempotent). An existing
/// exchange of another type or durability is an error naming the difference.
pub async fn declare_exchange(
    config: &RabbitConfig,
    exchange: &str,
    kind: ExchangeType,
) -> Result<(), SinkError> {
    let connection = connect_for(config).await?;
    let result = declare(&connection, exchange, kind, false).await;
    let _ = connection.close(200, "done".into()).await;
    match result {
        Ok(()) => Ok(()),
        Err(source) => Err(mismatch_or(exchange, source, "exchange.declare")),
    }
}

/// Whether anything is bound to the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bindings {
    /// This many bindings have the exchange as their source (from the
    /// management API). 0 means every message would be returned.
    Count(usize),
    /// Not known: AMQP 0-9-1 cannot list bindings, and the management API
    /// was not reachable.
    Unknown {
        /// Why.
        why: String,
        /// How an operator can check.
        how_to_check: String,
    },
}

/// What `check` reports about an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeReport {
    /// The exchange.
    pub exchange: String,
    /// Whether it exists.
    pub exists: bool,
    /// Its type, when it exists and could be found out.
    pub kind: Option<String>,
    /// Whether it has the expected type and durability: `None` when not
    /// known.
    pub as_expected: Option<bool>,
    /// The broker's description of a difference.
    pub difference: Option<String>,
    /// Bindings with the exchange as source.
    pub bindings: Bindings,
}

/// Inspects `exchange` without changing anything: through the management
/// API when reachable (type, durability, bindings), else over AMQP
/// (existence by a passive declare; type by comparing with `expected`, which
/// the broker refuses with the actual type when it differs).
pub async fn inspect_exchange(
    config: &RabbitConfig,
    exchange: &str,
    expected: ExchangeType,
) -> Result<ExchangeReport, SinkError> {
    let connection = connect_for(config).await?;
    let vhost = config.vhost().to_owned();
    let exists = passive(&connection, exchange).await;
    let mut report = ExchangeReport {
        exchange: exchange.to_owned(),
        exists: false,
        kind: None,
        as_expected: None,
        difference: None,
        bindings: Bindings::Count(0),
    };
    match exists {
        Ok(false) => {
            let _ = connection.close(200, "done".into()).await;
            return Ok(report);
        }
        Ok(true) => report.exists = true,
        Err(source) => {
            let _ = connection.close(200, "done".into()).await;
            return Err(SinkError::Amqp {
                operation: format!("passive exchange.declare of {exchange:?}"),
                source,
            });
        }
    }
    let (user, password) = config.credentials();
    let management = Management {
        address: config.management_address(),
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let how_to_check = format!(
        "run `rabbitmqctl list_bindings -p {vhost} source_name destination_name routing_key` on the broker, \
         or enable the rabbitmq_management plugin"
    );
    match management.exchange(&vhost, exchange).await {
        Ok(Answer::Found(info)) => {
            let matches = info.kind == expected.name() && info.durable;
            report.as_expected = Some(matches);
            if !matches {
                report.difference = Some(format!(
                    "type {} durable {}, expected type {} durable true",
                    info.kind,
                    info.durable,
                    expected.name()
                ));
            }
            report.kind = Some(info.kind);
            report.bindings = match management.bindings_from(&vhost, exchange).await {
                Ok(Answer::Found(count)) => Bindings::Count(count),
                Ok(Answer::NotFound) => Bindings::Count(0),
                Err(why) => Bindings::Unknown { why, how_to_check },
            };
        }
        // Deleted in between, or the API is unusable: AMQP only.
        Ok(Answer::NotFound) | Err(_) => {
            let why = match management.exchange(&vhost, exchange).await {
                Err(why) => why,
                Ok(_) => "the management API does not list the exchange".to_owned(),
            };
            match declare(&connection, exchange, expected, false).await {
                Ok(()) => {
                    report.kind = Some(expected.name().to_owned());
                    report.as_expected = Some(true);
                }
                Err(err) if is_precondition_failed(&err) => {
                    let text = broker_text(&err);
                    report.kind = current_type(&text);
                    report.as_expected = Some(false);
                    report.difference = Some(text);
                }
                Err(_) => {}
            }
            report.bindings = Bindings::Unknown { why, how_to_check };
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(report)
}

async fn connect_for(config: &RabbitConfig) -> Result<Connection, SinkError> {
    connect(config).await.map_err(|source| SinkError::Connect {
        url: config.redacted_url(),
        source,
    })
}

async fn declare(
    connection: &Connection,
    exchange: &str,
    kind: ExchangeType,
    passive: bool,
) -> Result<(), lapin::Error> {
    // A failed declare closes its channel: one channel per declare.
    let channel: Channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        passive,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(exchange.into(), kind.kind(), options, kind.arguments())
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

async fn passive(connection: &Connection, exchange: &str) -> Result<bool, lapin::Error> {
    match declare(connection, exchange, ExchangeType::Topic, true).await {
        Ok(()) => Ok(true),
        Err(err) if soft(&err) == Some(AMQPSoftError::NOTFOUND) => Ok(false),
        Err(err) => Err(err),
    }
}

fn soft(err: &lapin::Error) -> Option<AMQPSoftError> {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    soft(err) == Some(AMQPSoftError::PRECONDITIONFAILED)
}

fn broker_text(err: &lapin::Error) -> String {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
    }
}

fn mismatch_or(exchange: &str, source: lapin::Error, operation: &str) -> SinkError {
    if is_precondition_failed(&source) {
        SinkError::ExchangeMismatch {
            exchange: exchange.to_owned(),
            detail: broker_text(&source),
        }
    } else {
        SinkError::Amqp {
            operation: format!("{operation} of {exchange:?}"),
            source,
        }
    }
}

/// The actual type from the broker's refusal: `… inequivalent arg 'type'
/// for exchange 'x' in vhost '/': received 'direct' but current is 'topic'`.
fn current_type(text: &str) -> Option<String> {
    if !text.contains("inequivalent arg 'type'") {
        return None;
    }
    let current = text.split("current is '").nth(1)?;
    Some(current.split('\'').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_type_from_the_refusal() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'outbox' in vhost '/': \
                    received 'topic' but current is 'direct'";
        assert_eq!(current_type(text).as_deref(), Some("direct"));
        let text = "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'outbox' in vhost '/': \
                    received 'true' but current is 'false'";
        assert_eq!(current_type(text), None);
    }
}
