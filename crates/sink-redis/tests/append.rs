//! The sink against a real Redis: appends, re-sends, refusals.

use std::time::Duration;

use bytes::Bytes;
use outbox_core::{header, Delivery, ErrorClass, PermanentReason, Position, Record, Sink, TxSeq};
use pgoutput::Lsn;
use redis::Commands;
use sink_redis::{RedisConfig, RedisSink};
use tokio::sync::mpsc;

fn url() -> String {
    std::env::var("OUTBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix of this test's own; its keys are deleted on drop.
struct Prefix(String);

impl Prefix {
    fn new(name: &str) -> Self {
        Prefix(format!("outboxd-test-{}-{name}", std::process::id()))
    }

    fn stream(&self) -> String {
        format!("{}.outbox.event.order", self.0)
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(url()).unwrap().get_connection().unwrap()
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let mut c = self.connection();
        for pattern in [format!("{}*", self.0), format!("outboxd.dedupe:{{{}*", self.0)] {
            let keys: Vec<String> = c.scan_match(&pattern).unwrap().collect();
            for key in keys {
                let _: () = c.del(&key).unwrap();
            }
        }
    }
}

fn record(stream: &str, n: u64, pad: usize) -> Record {
    let id = format!("00000000-0000-4000-8000-{n:012}");
    let position = Position {
        commit_lsn: Lsn::new(0x1000 + n),
        index: 0,
    };
    Record {
        topic: stream.to_owned(),
        key: Bytes::from(format!("agg-{}", n % 3)),
        value: Some(Bytes::from(format!(
            "{{\"n\": {n}, \"pad\": \"{}\"}}",
            "x".repeat(pad)
        ))),
        headers: vec![
            (header::ID.into(), Bytes::from(id.clone())),
            (header::TYPE.into(), Bytes::from_static(b"OrderChanged")),
            (header::AGGREGATE_TYPE.into(), Bytes::from_static(b"order")),
            (header::LSN.into(), Bytes::from(position.commit_lsn.to_string())),
            (header::INDEX.into(), Bytes::from_static(b"0")),
        ],
        id,
        position,
        timestamp_ms: None,
        partition: None,
    }
}

async fn send_all(sink: &mut RedisSink, records: &[Record]) {
    for r in records {
        sink.send(r.clone(), TxSeq::default()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), sink.flush())
        .await
        .expect("flush in time")
        .unwrap();
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(d) = rx.try_recv() {
        out.push(d);
    }
    out
}

/// The ids in the stream, in stream order.
fn stream_ids(prefix: &Prefix) -> Vec<String> {
    let mut c = prefix.connection();
    let reply: redis::streams::StreamRangeReply = c.xrange_all(prefix.stream()).unwrap();
    reply
        .ids
        .iter()
        .map(|e| e.get::<String>("id").expect("id field"))
        .collect()
}

#[tokio::test]
async fn records_are_appended_in_order_with_their_fields() {
    let prefix = Prefix::new("order");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut config = RedisConfig::new(&url()).unwrap();
    config.max_in_flight = 7;
    let mut sink = RedisSink::new(config, tx).unwrap();
    let records: Vec<Record> = (0..100).map(|n| record(&prefix.stream(), n, 10)).collect();
    send_all(&mut sink, &records).await;
    let deliveries = drain(&mut rx);
    assert_eq!(deliveries.len(), 100);
    assert!(deliveries.iter().all(|d| d.result.is_ok()));
    assert_eq!(
        stream_ids(&prefix),
        records.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    let mut c = prefix.connection();
    let reply: redis::streams::StreamRangeReply = c.xrange_count(prefix.stream(), "-", "+", 1).unwrap();
    let entry = &reply.ids[0];
    for (field, expected) in [
        ("type", "OrderChanged"),
        ("aggregatetype", "order"),
        ("aggregateid", "agg-0"),
        ("outboxd.lsn", "0/1000"),
        ("outboxd.index", "0"),
    ] {
        assert_eq!(entry.get::<String>(field).as_deref(), Some(expected), "{field}");
    }
    assert!(entry.get::<String>("payload").unwrap().starts_with("{\"n\": 0,"));
}

#[tokio::test]
async fn a_record_resent_after_a_crash_is_not_appended_twice() {
    let prefix = Prefix::new("resend");
    let records: Vec<Record> = (0..50).map(|n| record(&prefix.stream(), n, 10)).collect();
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut sink = RedisSink::new(RedisConfig::new(&url()).unwrap(), tx).unwrap();
        send_all(&mut sink, &records[..30]).await;
    }
    // A restarted sink re-sends everything after the last acknowledgement:
    // here, all of it.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sink = RedisSink::new(RedisConfig::new(&url()).unwrap(), tx).unwrap();
    send_all(&mut sink, &records).await;
    let deliveries = drain(&mut rx);
    assert_eq!(deliveries.len(), 50);
    assert!(
        deliveries.iter().all(|d| d.result.is_ok()),
        "re-sends count as delivered"
    );
    assert_eq!(
        stream_ids(&prefix),
        records.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_replayed_record_is_appended_once_more_but_not_twice() {
    let prefix = Prefix::new("replay");
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut sink = RedisSink::new(RedisConfig::new(&url()).unwrap(), tx).unwrap();
    let original = record(&prefix.stream(), 1, 10);
    let mut replayed = original.clone();
    replayed
        .headers
        .push((header::REPLAY.into(), Bytes::from_static(b"from=0/1000")));
    send_all(&mut sink, &[original.clone(), replayed.clone(), replayed]).await;
    assert_eq!(stream_ids(&prefix), [original.id.clone(), original.id]);
}

#[tokio::test]
async fn a_record_over_max_record_bytes_is_refused_for_good_and_later_ones_flow() {
    let prefix = Prefix::new("too-large");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut config = RedisConfig::new(&url()).unwrap();
    config.max_record_bytes = 1000;
    let mut sink = RedisSink::new(config, tx).unwrap();
    let records = [
        record(&prefix.stream(), 0, 10),
        record(&prefix.stream(), 1, 2000),
        record(&prefix.stream(), 2, 10),
    ];
    send_all(&mut sink, &records).await;
    let mut deliveries = drain(&mut rx);
    deliveries.sort_by_key(|d| d.position);
    let classes: Vec<_> = deliveries
        .iter()
        .map(|d| d.result.as_ref().err().map(|e| e.class))
        .collect();
    assert_eq!(
        classes,
        [
            None,
            Some(ErrorClass::Permanent {
                reason: PermanentReason::TooLarge
            }),
            None
        ]
    );
    assert_eq!(deliveries[1].returned.as_ref(), Some(&records[1]));
    assert_eq!(
        stream_ids(&prefix),
        [records[0].id.clone(), records[2].id.clone()]
    );
}

#[tokio::test]
async fn a_key_of_another_type_is_an_invalid_destination_for_that_record_only() {
    let prefix = Prefix::new("wrongtype");
    let other = format!("{}.not-a-stream", prefix.0);
    let _: () = prefix.connection().set(&other, "x").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sink = RedisSink::new(RedisConfig::new(&url()).unwrap(), tx).unwrap();
    let records = [
        record(&prefix.stream(), 0, 10),
        record(&other, 1, 10),
        record(&prefix.stream(), 2, 10),
    ];
    send_all(&mut sink, &records).await;
    let mut deliveries = drain(&mut rx);
    deliveries.sort_by_key(|d| d.position);
    assert!(deliveries[0].result.is_ok() && deliveries[2].result.is_ok());
    let err = deliveries[1].result.as_ref().unwrap_err();
    assert_eq!(
        err.class,
        ErrorClass::Permanent {
            reason: PermanentReason::InvalidDestination
        },
        "{err}"
    );
    assert_eq!(
        stream_ids(&prefix),
        [records[0].id.clone(), records[2].id.clone()]
    );
}

#[tokio::test]
async fn bullmq_jobs_carry_the_headers_and_an_id_bullmq_refuses_is_refused_for_that_record_only() {
    let prefix = Prefix::new("bullmq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut config = RedisConfig::new(&url()).unwrap();
    config.mode = sink_redis::Mode::BullMq {
        prefix: prefix.0.clone(),
    };
    let mut sink = RedisSink::new(config, tx).unwrap();
    let queue = prefix.stream();
    let mut integer = record(&queue, 1, 10);
    integer.id = "12345".into();
    let records = [record(&queue, 0, 10), integer, record(&queue, 2, 10)];
    // Twice: the second time is a re-send BullMQ recognises.
    send_all(&mut sink, &records).await;
    send_all(&mut sink, &records).await;
    let deliveries = drain(&mut rx);
    let refused: Vec<_> = deliveries
        .iter()
        .filter_map(|d| d.result.as_ref().err().map(|e| (e.class, d.returned.clone())))
        .collect();
    assert_eq!(refused.len(), 2, "{deliveries:?}");
    for (class, returned) in &refused {
        assert_eq!(
            *class,
            ErrorClass::Permanent {
                reason: PermanentReason::Malformed
            }
        );
        assert_eq!(returned.as_ref(), Some(&records[1]));
    }
    let mut c = prefix.connection();
    let mut wait: Vec<String> = c.lrange(format!("{}:{queue}:wait", prefix.0), 0, -1).unwrap();
    wait.reverse();
    assert_eq!(wait, [records[0].id.clone(), records[2].id.clone()]);
    let opts: String = c
        .hget(format!("{}:{queue}:{}", prefix.0, records[2].id), "opts")
        .unwrap();
    let opts: serde_json::Value = serde_json::from_str(&opts).unwrap();
    assert_eq!(opts["jobId"], records[2].id.as_str());
    assert_eq!(
        opts["outboxd"]["outboxd.lsn"],
        records[2].position.commit_lsn.to_string()
    );
    assert_eq!(opts["outboxd"]["aggregateid"], "agg-2");
    assert_eq!(opts["outboxd"]["type"], "OrderChanged");
}
