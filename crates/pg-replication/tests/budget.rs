//! The byte budget between the stream task and the consumer: a consumer
//! that does not read stops the reading of the socket after `buffer_bytes`,
//! whatever the events' count; nothing is lost or reordered by it, and an
//! event larger than the whole budget still passes.

use std::time::Duration;

use pg_replication::ReplicationStream;

use crate::support::{cluster_with_outbox, next_tx, stream_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_holds_buffer_bytes_not_a_thousand_large_rows() {
    const ROW: usize = 200_000;
    const BUDGET: usize = 1024 * 1024;
    let cluster = cluster_with_outbox().await;
    let mut config = stream_config(&cluster);
    config.buffer_bytes = BUDGET;
    let mut stream = ReplicationStream::start(config).await.unwrap();
    // 40 transactions of one 200 KB row, then one row of 2 MiB (over the whole budget).
    cluster
        .psql(&format!(
            "select 1; {}",
            (0..40)
                .map(|n| format!(
                    "insert into outbox (aggregatetype, aggregateid, type, payload) \
                     values ('order', 'row-{n}', 'big', jsonb_build_object('pad', repeat('x', {ROW})));"
                ))
                .collect::<String>()
        ))
        .unwrap();
    cluster
        .psql(&format!(
            "insert into outbox (aggregatetype, aggregateid, type, payload) \
             values ('order', 'huge', 'big', jsonb_build_object('pad', repeat('x', {})))",
            2 * BUDGET
        ))
        .unwrap();

    // Nothing is read: the task fills the budget and stops reading frames.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frames = stream.stats().frames();
    // Each transaction is three frames (Begin, Insert, Commit); the budget
    // holds 5 rows, the task one frame's events more. Keepalives the server
    // sent between the transactions count as frames too: allow a few.
    let rows_held = BUDGET / ROW + 2;
    assert!(
        frames <= (rows_held as u64 + 1) * 3 + 20,
        "{frames} frames read with a budget of {rows_held} rows (of 41 transactions)"
    );

    // Reading resumes: every row, in order, the huge one last.
    let mut ids = Vec::new();
    for _ in 0..41 {
        ids.extend(next_tx(&mut stream).await.aggregate_ids());
    }
    let mut expected: Vec<String> = (0..40).map(|n| format!("row-{n}")).collect();
    expected.push("huge".into());
    assert_eq!(ids, expected);
    assert!(stream.stats().frames() >= 41 * 3);
}
