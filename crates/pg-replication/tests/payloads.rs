//! Large values, large transactions and schema changes.

use std::time::Duration;

use crate::support::*;
use pg_replication::{ReplicationEvent, ReplicationStream};

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_one_megabyte_payload_arrives_byte_identical() {
    let cluster = cluster_with_outbox().await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    cluster
        .psql(
            "insert into outbox (aggregatetype, aggregateid, type, payload)
             select 'o', 'big', 't', jsonb_build_object('data', string_agg(md5(i::text), ''))
               from generate_series(1, 32768) i",
        )
        .unwrap();
    let tx = next_tx(&mut stream).await;
    let client = cluster.connect().await.unwrap();
    let stored: String = client
        .query_one("select payload::text from outbox where aggregateid = 'big'", &[])
        .await
        .unwrap()
        .get(0);
    let toast: String = client
        .query_one(
            "select reltoastrelid::regclass::text from pg_class where oid = 'outbox'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let chunks: i64 = client
        .query_one(&format!("select count(*) from {toast}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        chunks > 100,
        "the payload was not stored out of line ({chunks} TOAST chunks)"
    );
    let streamed = tx.inserts[0].column("payload").and_then(|v| v.as_text()).unwrap();
    assert!(streamed.len() > 1_000_000, "{} bytes", streamed.len());
    assert_eq!(streamed, stored);
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_column_mid_stream_is_decoded_in_later_rows() {
    let cluster = cluster_with_outbox().await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    cluster
        .psql(
            "insert into outbox (aggregatetype, aggregateid, type) values ('o', 'before', 't');
             alter table outbox add column tenant text;
             insert into outbox (aggregatetype, aggregateid, type, tenant) values ('o', 'after', 't', 'acme');",
        )
        .unwrap();
    let before = next_tx(&mut stream).await;
    let after = next_tx(&mut stream).await;
    assert_eq!(before.inserts[0].relation.columns.len(), 6);
    assert_eq!(before.inserts[0].column("tenant"), None);
    assert_eq!(after.inserts[0].relation.columns.len(), 7);
    assert_eq!(
        after.inserts[0].column("tenant").and_then(|v| v.as_text()),
        Some("acme")
    );
    assert_eq!(after.aggregate_ids(), ["after"]);
    stream.shutdown().await.unwrap();
}

/// 200,000 rows of ~300-byte payloads (~60 MB of row data) in one transaction,
/// read by a consumer that stalls midway: memory stays flat, the walsender's
/// keepalives are answered, every row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_row_transaction_streams_in_bounded_memory() {
    const ROWS: u64 = 200_000;
    let cluster = cluster_with_outbox().await;
    cluster.set_parameter("wal_sender_timeout", "2s").unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    cluster
        .psql(&format!(
            "insert into outbox (aggregatetype, aggregateid, type, payload)
             select 'order', 'agg-' || (i % 1000), 'created',
                    jsonb_build_object('i', i, 'pad', repeat(md5(i::text), 8))
               from generate_series(1, {ROWS}) i"
        ))
        .unwrap();
    let baseline = rss_bytes();
    let mut peak = baseline;
    assert!(matches!(
        next_event(&mut stream).await,
        ReplicationEvent::Begin(_)
    ));
    let mut rows = 0u64;
    let mut payload_bytes = 0u64;
    loop {
        match next_event(&mut stream).await {
            ReplicationEvent::Insert(insert) => {
                assert_eq!(insert.index, rows);
                rows += 1;
                payload_bytes += insert.column("payload").and_then(|v| v.as_text()).unwrap().len() as u64;
                if rows.is_multiple_of(10_000) {
                    peak = peak.max(rss_bytes());
                }
                if rows == ROWS / 2 {
                    // Stall for longer than wal_sender_timeout.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            ReplicationEvent::Commit(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{rows} rows, {} MiB of payload, RSS baseline {} MiB, peak {} MiB, growth {} MiB",
        payload_bytes >> 20,
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert_eq!(rows, ROWS);
    assert!(payload_bytes > 50 << 20);
    assert!(
        growth < 32 << 20,
        "RSS grew by {} MiB while streaming",
        growth >> 20
    );
    assert_eq!(
        stream.stats().reconnects(),
        0,
        "the walsender timed us out during the stall"
    );
    stream.shutdown().await.unwrap();
}
