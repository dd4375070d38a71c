//! RabbitMQ in the benchmark: the destination (a uniquely named durable
//! topic exchange and a durable queue bound with `#`, removed afterwards)
//! and the ceiling every RabbitMQ figure is compared with — a bare lapin
//! publisher in confirm mode, one channel, the same window as outboxd's sink,
//! publishing the backlog's events (same body, properties and headers as
//! outboxd sends) as fast as the broker confirms them.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use crate::consumer::Report;
use crate::usage;

/// Where the benchmark publishes.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub(crate) url: String,
    pub(crate) exchange: String,
    pub(crate) queue: String,
}

impl Destination {
    /// Declares the exchange and its queue. The queue keeps at most
    /// `max_length` messages (older ones dropped), so a million-event run
    /// does not fill the broker's memory; the broker still takes and
    /// persists every message before confirming it.
    pub(crate) async fn create(url: &str, label: &str, max_length: u32) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let exchange = format!("outboxd-bench-{label}-{}-{nanos:x}", std::process::id());
        let queue = format!("{exchange}-q");
        let connection = connect(url).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongInt(max_length.try_into()?));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = connection.close(200, "done".into()).await;
        Ok(Destination {
            url: url.to_owned(),
            exchange,
            queue,
        })
    }

    /// Deletes the queue and the exchange.
    pub(crate) async fn remove(&self) -> anyhow::Result<()> {
        let connection = connect(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    }
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", sink_rabbitmq::redact_url(url)))
}

/// Publishes `events` messages of `body` in confirm mode with `mandatory`,
/// at most `window` unconfirmed, and waits for the last confirm. Runs in
/// this process: its CPU is the difference of this process's CPU time.
pub(crate) async fn ceiling(
    destination: &Destination,
    events: u64,
    body: &[u8],
    window: usize,
) -> anyhow::Result<Report> {
    let connection = connect(&destination.url).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let cpu_before = usage::own_cpu_seconds();
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    let mut confirmed = 0u64;
    for i in 0..events {
        if pending.len() >= window {
            let confirm: lapin::PublisherConfirm = pending.pop_front().expect("window is full");
            check(confirm.await?)?;
            confirmed += 1;
        }
        let confirm = channel
            .basic_publish(
                destination.exchange.as_str().into(),
                "order.OrderCreated".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties(i),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        check(confirm.await?)?;
        confirmed += 1;
    }
    let report = Report {
        events: confirmed,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: usage::own_cpu_seconds() - cpu_before,
        ..Report::default()
    };
    let _ = connection.close(200, "done".into()).await;
    Ok(report)
}

/// What outboxd's sink sets on an event of the backlog.
fn properties(i: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    let text = |s: String| AMQPValue::LongString(LongString::from(s));
    headers.insert("aggregatetype".into(), text("order".into()));
    headers.insert("aggregateid".into(), text(format!("agg-{}", i % 1000)));
    headers.insert(
        "outboxd.lsn".into(),
        text(format!("0/{:X}", 0x1_0000_0000 + i * 512)),
    );
    headers.insert("outboxd.index".into(), text("0".into()));
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    BasicProperties::default()
        .with_message_id(format!("{:032x}", u128::from(i) * 0x9E37_79B9_7F4A_7C15).into())
        .with_type("OrderCreated".into())
        .with_app_id(sink_rabbitmq::APP_ID.into())
        .with_timestamp(timestamp)
        .with_delivery_mode(sink_rabbitmq::PERSISTENT)
        .with_content_type("application/json".into())
        .with_headers(headers)
}

fn check(confirmation: Confirmation) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("the broker did not take a benchmark message: {other:?}"),
    }
}
