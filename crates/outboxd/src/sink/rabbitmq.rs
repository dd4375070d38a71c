//! The RabbitMQ sink, built from `[rabbitmq]`: what `setup` declares, what
//! `check` says about it, and the demo's broker.
//!
//! Records go to the exchange `rabbitmq.exchange` (default `outbox`, a
//! durable topic exchange) with the routing key rendered from
//! `rabbitmq.routing_key` (default `${aggregatetype}.${type}`); the sink
//! publishes with `mandatory` and waits for publisher confirms (see
//! `sink_rabbitmq`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox_core::{AfterPermanentFailure, Delivery, NameRule};
use sink_rabbitmq::{declare_exchange, inspect_exchange, Bindings, RabbitSink};
use tokio::sync::mpsc;

use crate::check::{fail, ok, warn, Finding};
use crate::config::Config;

/// Routing keys: AMQP short strings (at most 255 bytes; the empty key is
/// legal).
pub const NAMES: NameRule = NameRule::Bytes {
    max: 255,
    allow_empty: true,
};

/// Connects the sink the configuration describes (failing at once when the
/// broker is unreachable or refuses the credentials).
pub async fn build(
    config: &Config,
    deliveries: mpsc::UnboundedSender<Delivery>,
    after: AfterPermanentFailure,
) -> anyhow::Result<RabbitSink> {
    let rabbit = config.rabbitmq()?;
    RabbitSink::connect_with_after_permanent(&rabbit, deliveries, after)
        .await
        .with_context(|| {
            format!(
                "cannot start the RabbitMQ sink (check rabbitmq.url {}: host, port, credentials, vhost)",
                rabbit.redacted_url()
            )
        })
}

/// `outboxd setup`: declares the exchange (durable, of `rabbitmq.exchange_type`;
/// idempotent). An exchange template with placeholders names many
/// exchanges, which setup cannot know: it says so.
pub async fn setup(config: &Config) -> anyhow::Result<Vec<String>> {
    let rabbit = config.rabbitmq()?;
    let kind = config.rabbitmq.exchange_type.kind();
    let Some(exchange) = rabbit.exchange_template().fixed() else {
        return Ok(vec![format!(
            "exchange {:?}: a template, not declared (declare each exchange it names, durable, type {})",
            rabbit.exchange_template().as_str(),
            kind.name()
        )]);
    };
    declare_exchange(&rabbit, exchange, kind)
        .await
        .with_context(|| format!("declaring exchange {exchange:?} on {}", rabbit.redacted_url()))?;
    Ok(vec![format!(
        "exchange {exchange:?}: declared (durable, {}) on {}",
        kind.name(),
        rabbit.redacted_url()
    )])
}

/// `outboxd check` for RabbitMQ: reachable, the exchange exists with the
/// expected type, something is bound to it.
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let rabbit = match config.rabbitmq() {
        Ok(rabbit) => rabbit,
        Err(err) => {
            findings.push(fail(
                "rabbitmq configuration",
                format!("{err:#}"),
                "fix [rabbitmq]",
            ));
            return findings;
        }
    };
    let kind = config.rabbitmq.exchange_type.kind();
    let Some(exchange) = rabbit.exchange_template().fixed() else {
        findings.push(warn(
            "rabbitmq exchange",
            format!(
                "{:?} is a template: the exchanges it names are not checked",
                rabbit.exchange_template().as_str()
            ),
            format!("declare each exchange it names (durable, type {})", kind.name()),
        ));
        return findings;
    };
    let report = match inspect_exchange(&rabbit, exchange, kind).await {
        Ok(report) => report,
        Err(err) => {
            findings.push(fail(
                "rabbitmq",
                err.to_string(),
                "check rabbitmq.url (host, port, user, password, vhost; amqps:// for TLS) and network access",
            ));
            return findings;
        }
    };
    findings.push(ok("rabbitmq", format!("reachable at {}", rabbit.redacted_url())));
    if !report.exists {
        findings.push(fail(
            "rabbitmq exchange",
            format!("{exchange:?} does not exist in vhost {:?}", rabbit.vhost()),
            "run `outboxd setup` (it declares the exchange)",
        ));
        return findings;
    }
    let kind_text = report.kind.clone().unwrap_or_else(|| "unknown type".into());
    match report.as_expected {
        Some(false) => findings.push(fail(
            "rabbitmq exchange",
            format!(
                "{exchange:?} exists as {kind_text}: {}",
                report.difference.as_deref().unwrap_or("other settings")
            ),
            format!(
                "set rabbitmq.exchange_type to its type, or delete the exchange and run `outboxd setup` \
                 (durable, type {})",
                kind.name()
            ),
        )),
        _ => findings.push(ok(
            "rabbitmq exchange",
            format!("{exchange:?} exists ({kind_text})"),
        )),
    }
    match report.bindings {
        Bindings::Count(0) => findings.push(fail(
            "rabbitmq bindings",
            format!("nothing is bound to {exchange:?}: every record would come back unroutable"),
            "bind the consumers' queues to the exchange (e.g. with routing key `#` for everything)",
        )),
        Bindings::Count(n) => findings.push(ok(
            "rabbitmq bindings",
            format!("{n} binding(s) from {exchange:?}"),
        )),
        Bindings::Unknown { why, how_to_check } => findings.push(warn(
            "rabbitmq bindings",
            format!("not known ({why}); a record no queue takes stops outboxd (or is dead-lettered)"),
            how_to_check,
        )),
    }
    findings
}

/// `outboxd demo`'s RabbitMQ: a uniquely named exchange on the configured
/// broker (default the machine's, as guest) and a queue bound to it with
/// `#`, both deleted at the end.
#[derive(Debug)]
pub struct Demo {
    url: String,
    redacted: String,
    exchange: String,
    queue: String,
}

impl Demo {
    /// Declares the exchange (as `setup` does) and the bound queue; an
    /// unreachable broker is a one-line error with the fix.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let rabbit = config.rabbitmq()?;
        let url = config.rabbitmq.url.clone();
        let redacted = rabbit.redacted_url();
        let name = super::demo_name("outboxd-demo");
        let demo = Demo {
            url,
            redacted,
            exchange: name.clone(),
            queue: name,
        };
        let connection = demo.connect().await?;
        let result = demo.declare(&connection).await;
        let _ = connection.close(200, "done".into()).await;
        result?;
        Ok(demo)
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => anyhow::bail!(
                "cannot reach RabbitMQ at {} ({err}): start one (apt-get install rabbitmq-server, or \
                 docker run -p 5672:5672 rabbitmq:3) or point OUTBOXD_RABBITMQ_URL at yours",
                self.redacted
            ),
            Err(_) => anyhow::bail!(
                "RabbitMQ at {} did not answer within 10 s: start one (apt-get install rabbitmq-server) or \
                 point OUTBOXD_RABBITMQ_URL at yours",
                self.redacted
            ),
        }
    }

    async fn declare(&self, connection: &Connection) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring the demo exchange {}", self.exchange))?;
        // Expires an hour after its last use should the demo be killed.
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(3_600_000));
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .with_context(|| format!("declaring the demo queue {}", self.queue))?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding the demo queue to {}", self.exchange))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// One line for the demo's header.
    pub fn describe(&self) -> String {
        format!(
            "rabbitmq   {}, exchange {} (topic), queue {} bound with #",
            self.redacted, self.exchange, self.queue
        )
    }

    /// Points the configuration at it.
    pub fn configure(&self, config: &mut Config) {
        config.sink.kind = super::SinkKind::RabbitMq;
        config.rabbitmq.url = self.url.clone();
        config.rabbitmq.exchange = self.exchange.clone();
    }

    /// Takes each message from the queue and hands it to `print`, until `stop`.
    pub fn spawn_reader(
        &self,
        print: Box<dyn Fn(&super::DemoRecord) + Send>,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let url = self.url.clone();
        let redacted = self.redacted.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let connection = Connection::connect(&url, ConnectionProperties::default())
                .await
                .with_context(|| format!("the demo's reader cannot connect to {redacted}"))?;
            let channel = connection.create_channel().await?;
            while !stop.load(Ordering::Relaxed) {
                let Some(message) = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions::default())
                    .await?
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let delivery = message.delivery;
                let properties = &delivery.properties;
                let header = |name: &str| {
                    properties
                        .headers()
                        .as_ref()
                        .and_then(|t| t.inner().get(name))
                        .map(|v| match v {
                            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default()
                };
                let text = |v: &Option<lapin::types::ShortString>| {
                    v.as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default()
                };
                print(&super::DemoRecord {
                    key: header(sink_rabbitmq::AGGREGATE_ID),
                    lane: delivery.routing_key.as_str().to_owned(),
                    event_type: text(properties.kind()),
                    lsn: header("outboxd.lsn"),
                    index: header("outboxd.index"),
                    id: text(properties.message_id()),
                });
                delivery.ack(BasicAckOptions::default()).await?;
            }
            let _ = channel.close(200, "done".into()).await;
            let _ = connection.close(200, "done".into()).await;
            Ok(())
        })
    }

    /// Deletes the queue and the exchange.
    pub async fn stop(self) {
        let Ok(connection) = self.connect().await else {
            eprintln!(
                "could not reach RabbitMQ to delete the demo's queue {} and exchange {}",
                self.queue, self.exchange
            );
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel
                .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}
