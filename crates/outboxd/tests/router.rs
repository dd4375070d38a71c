//! Record mapping options (Debezium Outbox Event Router parity) end to end:
//! rows written to a real PostgreSQL, streamed by `outboxd run`, read back
//! from Kafka (the mock cluster) and compared header by header.

use testkit::kafka::ReadRecord;

use crate::support::Env;

/// Headers as `(name, UTF-8 text)`, in order.
fn headers(record: &ReadRecord) -> Vec<(&str, String)> {
    record
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value).into_owned()))
        .collect()
}

/// Reads `expected` records and orders them by commit LSN, then index.
async fn read(env: &Env, expected: usize) -> Vec<ReadRecord> {
    let mut records = env.read(&env.topic, expected).await;
    assert_eq!(records.len(), expected, "records on {}", env.topic);
    let position = |r: &ReadRecord| {
        let lsn: pgoutput::Lsn = r.header("outboxd.lsn").unwrap().parse().unwrap();
        (lsn, r.header("outboxd.index").unwrap().parse::<u64>().unwrap())
    };
    records.sort_by_key(position);
    records
}

/// The acceptance case of Debezium parity: a config in the shape public
/// Debezium outbox configs have (`table.fields.additional.placement =
/// type:header:eventType`, `table.field.event.timestamp = created_at` on a
/// `timestamptz` column — the option Debezium fails on) gives records a
/// Debezium-era consumer reads unchanged: key = aggregate id, value = the
/// payload as stored, an `eventType` header, the row's time as the record
/// timestamp. The walsender's time zone is not UTC, so the offset is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_style_event_type_header_and_timestamptz_timestamp_reach_kafka_unchanged() {
    let env = Env::start("[outbox]\nadditional = [\"type:header:eventType\"]\ntimestamp = \"created_at\"\n");
    let client = env.pg.connect().await.unwrap();
    client
        .batch_execute("alter database postgres set timezone = 'Asia/Kolkata'")
        .await
        .unwrap();
    let outboxd = env.spawn_streaming();
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload, created_at) values \
             ('6f1c2a52-0000-4000-8000-000000000001', 'order', 'order-42', 'OrderCreated', \
              '{\"total\": 10}', '2024-05-01 14:30:00.123456+02'), \
             ('6f1c2a52-0000-4000-8000-000000000002', 'order', 'order-43', 'OrderPaid', \
              '{\"total\": 11}', '1999-12-31 23:59:59.999+00')",
        )
        .await
        .unwrap();
    let records = read(&env, 2).await;
    let lsn = records[0].header("outboxd.lsn").unwrap().to_owned();
    for (record, (id, key, event_type, value, timestamp)) in records.iter().zip([
        (
            "6f1c2a52-0000-4000-8000-000000000001",
            "order-42",
            "OrderCreated",
            r#"{"total": 10}"#,
            1_714_566_600_123,
        ),
        (
            "6f1c2a52-0000-4000-8000-000000000002",
            "order-43",
            "OrderPaid",
            r#"{"total": 11}"#,
            946_684_799_999,
        ),
    ]) {
        assert_eq!(record.key_str(), key);
        assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
        assert_eq!(record.timestamp, Some(timestamp), "{id}");
        assert_eq!(
            headers(record),
            [
                ("id", id.to_owned()),
                ("type", event_type.to_owned()),
                ("aggregatetype", "order".to_owned()),
                ("outboxd.lsn", lsn.clone()),
                (
                    "outboxd.index",
                    record.header("outboxd.index").unwrap().to_owned()
                ),
                ("eventType", event_type.to_owned()),
            ]
        );
        assert_eq!(record.partition, sink_kafka::java_partition(&record.key, 6));
    }
    let r = &records[0];
    println!(
        "acceptance record: topic={} partition={} key={:?} timestamp={:?} headers={:?} value={}",
        env.topic,
        r.partition,
        r.key_str(),
        r.timestamp,
        headers(r),
        String::from_utf8_lossy(r.value.as_deref().unwrap())
    );
    outboxd.terminate();
}

/// A key column apart from the aggregate id, the partition from a column,
/// header placements with aliases, a `headers` jsonb column expanded into
/// headers, the trace context columns, static headers, an envelope field, and
/// the commit time as the record timestamp when no timestamp column is mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_partition_headers_trace_context_envelope_and_commit_time() {
    let env = Env::start(
        "[outbox]\nkey = \"customer\"\nheaders_column = \"meta\"\ntraceparent = \"tp\"\ntracestate = \"ts\"\n\
         additional = [\"shard:partition\", \"tenant:header:x-tenant\", \"version:envelope\"]\n\
         [routing.headers]\nsource = \"billing\"\n",
    );
    let client = env.pg.connect().await.unwrap();
    client
        .batch_execute(
            "alter table outbox add column customer text, add column meta jsonb, add column tp text, \
             add column ts text, add column shard int, add column tenant text, add column version int",
        )
        .await
        .unwrap();
    let outboxd = env.spawn_streaming();
    let before = std::time::SystemTime::now();
    client
        .batch_execute(
            "begin; \
             insert into outbox (id, aggregatetype, aggregateid, type, payload, customer, meta, tp, ts, shard, \
             tenant, version) values \
             ('6f1c2a52-0000-4000-8000-000000000011', 'order', 'order-1', 'OrderCreated', '{\"a\": 1}', \
              'cust-7', '{\"x-b\": \"2\", \"x-a\": 1, \"skip\": null}', \
              '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'vendor=opaque', 4, 'acme', 3); \
             select pg_sleep(1.2); \
             insert into outbox (id, aggregatetype, aggregateid, type, payload, customer, shard, version) values \
             ('6f1c2a52-0000-4000-8000-000000000012', 'order', 'order-2', 'OrderPaid', '{\"b\": 2}', \
              'cust-8', null, null); \
             commit;",
        )
        .await
        .unwrap();
    let after = std::time::SystemTime::now();
    let records = read(&env, 2).await;
    let (first, second) = (&records[0], &records[1]);
    let lsn = first.header("outboxd.lsn").unwrap().to_owned();

    assert_eq!(first.key_str(), "cust-7");
    assert_eq!(first.partition, 4, "the partition column wins over the key");
    assert_eq!(
        first.value.as_deref(),
        Some(&br#"{"payload":{"a": 1},"version":3}"#[..])
    );
    assert_eq!(
        headers(first),
        [
            ("id", "6f1c2a52-0000-4000-8000-000000000011".to_owned()),
            ("type", "OrderCreated".to_owned()),
            ("aggregatetype", "order".to_owned()),
            ("outboxd.lsn", lsn.clone()),
            ("outboxd.index", "0".to_owned()),
            ("x-tenant", "acme".to_owned()),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
            ),
            ("tracestate", "vendor=opaque".to_owned()),
            ("x-a", "1".to_owned()),
            ("x-b", "2".to_owned()),
            ("source", "billing".to_owned()),
        ]
    );
    // NULL partition: partitioned by the key column as Java clients would.
    assert_eq!(second.key_str(), "cust-8");
    assert_eq!(second.partition, sink_kafka::java_partition(b"cust-8", 6));
    assert_eq!(
        second.value.as_deref(),
        Some(&br#"{"payload":{"b": 2},"version":null}"#[..])
    );
    assert_eq!(
        headers(second),
        [
            ("id", "6f1c2a52-0000-4000-8000-000000000012".to_owned()),
            ("type", "OrderPaid".to_owned()),
            ("aggregatetype", "order".to_owned()),
            ("outboxd.lsn", lsn),
            ("outboxd.index", "1".to_owned()),
            ("source", "billing".to_owned()),
        ]
    );
    // One transaction, one commit time: both records carry it, although the
    // second row was written 1.2 s after the first.
    let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let commit = first.timestamp.expect("a record timestamp");
    assert_eq!(second.timestamp, Some(commit));
    assert!(
        commit >= ms(before) + 1_000 && commit <= ms(after) + 1,
        "commit time {commit} outside [{} + 1.2 s, {}]",
        ms(before),
        ms(after)
    );
    outboxd.terminate();
}

/// Consumers of Debezium's default JSON converter read the payload as a JSON
/// string; `payload_encoding = "json-string"` sends exactly that. An empty
/// payload is a tombstone with `tombstone_on_empty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_string_encoding_and_empty_payload_tombstones() {
    let env = Env::start("[routing]\npayload_encoding = \"json-string\"\ntombstone_on_empty = true\n");
    let client = env.pg.connect().await.unwrap();
    client
        .batch_execute("alter table outbox alter column payload type text")
        .await
        .unwrap();
    let outboxd = env.spawn_streaming();
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-000000000021', 'order', 'o-1', 'T', '{\"a\": \"é\\\"}'); \
             insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-000000000022', 'order', 'o-1', 'T', '')",
        )
        .await
        .unwrap();
    let records = read(&env, 2).await;
    assert_eq!(
        records[0].value.as_deref(),
        Some(r#""{\"a\": \"é\\\"}""#.as_bytes())
    );
    assert_eq!(records[1].value, None, "an empty payload is a tombstone");
    assert_eq!(records[1].key_str(), "o-1");
    outboxd.terminate();
}

/// CloudEvents binary content mode (`[routing] cloudevents = true`): the
/// attributes as `ce_*` headers with the default source
/// `/outboxd/<database>/<table>` and the commit time as `ce_time`; the
/// payload untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_binary_mode_headers_with_the_default_source() {
    let env = Env::start("[routing]\ncloudevents = true\n");
    let client = env.pg.connect().await.unwrap();
    let outboxd = env.spawn_streaming();
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-000000000031', 'order', 'order-5', 'OrderShipped', '{\"n\": 5}')",
        )
        .await
        .unwrap();
    let records = read(&env, 1).await;
    let record = &records[0];
    assert_eq!(record.value.as_deref(), Some(&br#"{"n": 5}"#[..]));
    let commit = record.timestamp.expect("the commit time as the record timestamp");
    assert_eq!(
        headers(record)[5..],
        [
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", "6f1c2a52-0000-4000-8000-000000000031".to_owned()),
            ("ce_source", "/outboxd/postgres/public.outbox".to_owned()),
            ("ce_type", "OrderShipped".to_owned()),
            ("ce_time", outbox_core::format_rfc3339_millis(commit)),
            ("ce_subject", "order-5".to_owned()),
            ("content-type", "application/json".to_owned()),
        ]
    );
    println!("cloudevents record headers={:?}", headers(record));
    outboxd.terminate();
}

/// `on_update = "warn"`: setup publishes updates, an UPDATE of an outbox
/// row is logged and passed over, later rows still flow; a row inserted and
/// deleted in one transaction is still published (DELETEs are ignored, as
/// in Debezium).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_update_warn_logs_and_goes_on_and_insert_then_delete_is_published() {
    let env = Env::start("[outbox]\non_update = \"warn\"\n");
    let client = env.pg.connect().await.unwrap();
    let publish: (bool, bool, bool) = {
        let row = client
            .query_one(
                "select pubinsert, pubupdate, pubdelete from pg_publication where pubname = 'outboxd'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(publish, (true, true, false), "setup publishes insert, update");
    let mut outboxd = env.spawn_streaming();
    let insert = |n: u32| {
        format!(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-0000000000{n:02}', 'order', 'o-{n}', 'T', '{{\"n\": {n}}}');"
        )
    };
    client
        .batch_execute(&format!(
            "{} update outbox set type = 'Changed' where aggregateid = 'o-41'; {} \
             begin; {} delete from outbox where aggregateid = 'o-43'; commit;",
            insert(41),
            insert(42),
            insert(43)
        ))
        .await
        .unwrap();
    let records = read(&env, 3).await;
    let got: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.key_str(), r.header("type").unwrap()))
        .collect();
    assert_eq!(got, [("o-41", "T"), ("o-42", "T"), ("o-43", "T")]);
    outboxd.wait_for_log(
        "a row of an outbox table was updated",
        std::time::Duration::from_secs(10),
    );
    outboxd.terminate();
}

/// `on_update = "stop"`: the run ends naming the table and the transaction,
/// and the slot is not confirmed up to that transaction's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_update_stop_ends_the_run_before_acknowledging_the_transaction() {
    let env = Env::start("[outbox]\non_update = \"stop\"\n");
    let client = env.pg.connect().await.unwrap();
    let mut outboxd = env.spawn_streaming();
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-000000000051', 'order', 'o-51', 'T', '{}')",
        )
        .await
        .unwrap();
    assert_eq!(read(&env, 1).await[0].key_str(), "o-51");
    client
        .batch_execute("update outbox set type = 'Changed' where aggregateid = 'o-51'")
        .await
        .unwrap();
    let status = tokio::task::block_in_place(|| outboxd.wait(std::time::Duration::from_secs(60)));
    let log = outboxd.log();
    assert!(!status.success(), "must exit non-zero; log:\n{log}");
    assert!(
        log.contains("a row of outbox table public.outbox was updated") && log.contains("outbox.on_update"),
        "log:\n{log}"
    );
    let commit: pgoutput::Lsn = log
        .split("transaction with commit LSN ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the commit LSN in the error")
        .parse()
        .unwrap();
    let confirmed = env.confirmed().await;
    assert!(
        confirmed < commit,
        "slot confirmed at {confirmed}, the update's commit is {commit}"
    );
}

/// The same mapping on RabbitMQ: the CloudEvents attributes and aliased
/// headers are AMQP headers, the id and type the `message_id` and `type`
/// properties, and the AMQP `timestamp` property is the commit time (the
/// second of `ce_time`), not the publish time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_carries_the_cloudevents_headers_and_the_commit_time_as_amqp_timestamp() {
    use crate::conformance_rabbitmq::{Failing, Rabbit};

    let rabbit = Rabbit::shared("#", Failing::TooLarge);
    let queue = rabbit.queues[0].clone();
    let suite = testkit::conformance::Suite::with_config(
        env!("CARGO_BIN_EXE_outboxd"),
        rabbit,
        "[routing]\ncloudevents = true\n\n[outbox]\nadditional = [\"type:header:eventType\"]\n",
    );
    let outboxd = suite.spawn_streaming();
    let client = suite.pg.connect().await.unwrap();
    client
        .batch_execute(
            "insert into outbox (id, aggregatetype, aggregateid, type, payload) values \
             ('6f1c2a52-0000-4000-8000-000000000061', 'order', 'order-6', 'OrderCreated', '{\"n\": 6}')",
        )
        .await
        .unwrap();
    let messages = testkit::rabbitmq::read_queue(
        &testkit::rabbitmq::shared_url(),
        &queue,
        1,
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.body, br#"{"n": 6}"#);
    assert_eq!(
        m.message_id.as_deref(),
        Some("6f1c2a52-0000-4000-8000-000000000061")
    );
    assert_eq!(m.kind.as_deref(), Some("OrderCreated"));
    let ce_time = m.header("ce_time").expect("ce_time").to_owned();
    let commit_ms = outbox_core::parse_timestamp_millis(&ce_time).unwrap();
    assert_eq!(
        m.timestamp,
        Some((commit_ms / 1000) as u64),
        "AMQP timestamp = commit time"
    );
    for (name, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", "6f1c2a52-0000-4000-8000-000000000061"),
        ("ce_source", "/outboxd/postgres/public.outbox"),
        ("ce_type", "OrderCreated"),
        ("ce_subject", "order-6"),
        ("eventType", "OrderCreated"),
    ] {
        assert_eq!(m.header(name), Some(value), "{name}; headers {:?}", m.headers);
    }
    println!(
        "rabbitmq message: timestamp={:?} headers={:?}",
        m.timestamp, m.headers
    );
    outboxd.terminate();
}
