//! What the tests share: records as the pipeline routes them, a sink, an
//! exchange with a queue bound to it, sending with an AckTracker.

use std::time::Duration;

use bytes::Bytes;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox_core::{AckTracker, Delivery, Lsn, Position, Record, Sink, TxSeq};
use sink_rabbitmq::{RabbitConfig, RabbitSink};
use tokio::sync::mpsc;

/// A record as the pipeline routes it: routing key `order.created`.
pub(crate) fn record(i: u64, aggregate: u64, body: &str) -> Record {
    Record {
        topic: "order.created".to_owned(),
        key: Bytes::from(format!("agg-{aggregate}")),
        value: Some(Bytes::from(body.to_owned())),
        headers: vec![
            ("id".to_owned(), Bytes::from(format!("id-{i}"))),
            ("type".to_owned(), Bytes::from_static(b"created")),
            ("aggregatetype".to_owned(), Bytes::from_static(b"order")),
            (
                "outboxd.lsn".to_owned(),
                Bytes::from(Lsn::new(1000 + i).to_string()),
            ),
            ("outboxd.index".to_owned(), Bytes::from_static(b"0")),
        ],
        id: format!("id-{i}"),
        position: Position {
            commit_lsn: Lsn::new(1000 + i),
            index: 0,
        },
        timestamp_ms: None,
        partition: None,
    }
}

pub(crate) async fn sink(config: &RabbitConfig) -> (RabbitSink, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (RabbitSink::connect(config, tx).await.unwrap(), rx)
}

/// An exchange (topic, auto-deleted with its last binding) and a queue
/// bound to it with `binding` (expiring 10 minutes after its last use, so
/// a failed test leaves nothing behind for long).
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) url: String,
    pub(crate) exchange: String,
    pub(crate) queue: String,
}

impl Topology {
    pub(crate) async fn new(url: &str, binding: &str) -> Topology {
        let exchange = testkit::rabbitmq::unique_name("sink-test-x");
        let queue = testkit::rabbitmq::unique_name("sink-test-q");
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
        Topology {
            url: url.to_owned(),
            exchange,
            queue,
        }
    }

    pub(crate) fn config(&self) -> RabbitConfig {
        RabbitConfig::new(&self.url)
            .unwrap()
            .exchange(&self.exchange)
            .unwrap()
    }

    pub(crate) async fn remove(self) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let channel = connection.create_channel().await.unwrap();
        let _ = channel
            .exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = connection.close(200, "done".into()).await;
    }
}

/// Sends `records` one per transaction, tracking them; waits for every
/// report (in the order they came).
pub(crate) async fn send_all(
    sink: &mut RabbitSink,
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    records: Vec<Record>,
) -> (AckTracker, Vec<Delivery>) {
    let mut tracker: AckTracker = AckTracker::new(Lsn::new(1));
    let mut seqs: Vec<TxSeq> = Vec::new();
    let n = records.len();
    for (i, record) in records.into_iter().enumerate() {
        let seq = tracker.push(Lsn::new(2000 + i as u64), 1, ()).unwrap();
        seqs.push(seq);
        sink.send(record, seq).await.unwrap();
    }
    sink.flush().await.unwrap();
    let mut reports = Vec::new();
    while reports.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        match &d.result {
            Ok(()) => tracker.delivered(d.tx).unwrap(),
            Err(_) => tracker.failed(d.tx).unwrap(),
        }
        reports.push(d);
    }
    (tracker, reports)
}
