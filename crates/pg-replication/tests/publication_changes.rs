//! Schema and publication changes under a running stream. Found in review:
//! after a rename of the outbox table, `ALTER PUBLICATION … DROP TABLE` or a
//! row filter, the server stopped sending (or outboxd stopped recognising)
//! outbox rows, their transactions looked empty, and the idle advance moved
//! the slot past them: lost without a word. Now the stream stops with the
//! fix, and nothing after the change is confirmed.

use std::time::Duration;

use pg_replication::catalog::SetupError;
use pg_replication::{ReplicationError, ReplicationStream, StreamError};
use pgoutput::Lsn;
use testkit::PgCluster;

use crate::support::{
    cluster_with_outbox, confirmed_flush, insert_tx, next_tx, stream_config, wait_for_confirmed,
};

/// A running stream that has delivered and confirmed one transaction.
async fn streaming() -> (PgCluster, ReplicationStream, tokio_postgres::Client) {
    let cluster = cluster_with_outbox().await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    let mut client = cluster.connect().await.unwrap();
    insert_tx(&mut client, &["before".to_owned()]).await;
    let tx = next_tx(&mut stream).await;
    stream.ack_handle().ack(tx.commit.end_lsn);
    wait_for_confirmed(&client, tx.commit.end_lsn).await;
    (cluster, stream, client)
}

/// Runs `insert` in a transaction; returns the WAL position before its commit.
async fn insert_hidden(client: &mut tokio_postgres::Client, insert: &str) -> Lsn {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(insert).await.unwrap();
    let before: String = tx
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    before.parse().unwrap()
}

/// Keeps the database busy with unrelated transactions for `time` (so the
/// server sends keepalives past the hidden row), then checks that the slot
/// did not move past `hidden` and that the stream stopped with an error.
async fn assert_stopped_before(
    stream: &mut ReplicationStream,
    client: &tokio_postgres::Client,
    hidden: Lsn,
) -> ReplicationError {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        client
            .batch_execute("insert into orders (note) values ('busy')")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed = confirmed_flush(client).await;
    assert!(
        confirmed <= hidden,
        "the slot moved past an outbox row the stream never yielded: confirmed {confirmed}, row's commit after {hidden}"
    );
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Err(err))) => err,
        other => panic!("expected the stream to stop with an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_outbox_table_from_the_publication_stops_before_the_slot_passes_its_rows() {
    let (cluster, mut stream, mut client) = streaming().await;
    cluster
        .psql("alter publication outboxd drop table outbox")
        .unwrap();
    let hidden = insert_hidden(
        &mut client,
        "insert into outbox (aggregatetype, aggregateid, type) values ('order', 'hidden', 'x')",
    )
    .await;
    let err = assert_stopped_before(&mut stream, &client, hidden).await;
    assert!(
        matches!(
            err,
            ReplicationError::Setup(SetupError::PublicationLacksTable { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("ALTER PUBLICATION outboxd ADD TABLE public.outbox"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_filter_on_the_publication_stops_before_the_slot_passes_filtered_rows() {
    let (cluster, mut stream, mut client) = streaming().await;
    cluster
        .psql("alter publication outboxd set table outbox where (aggregateid = 'kept')")
        .unwrap();
    let hidden = insert_hidden(
        &mut client,
        "insert into outbox (aggregatetype, aggregateid, type) values ('order', 'filtered', 'x')",
    )
    .await;
    let err = assert_stopped_before(&mut stream, &client, hidden).await;
    assert!(
        matches!(
            err,
            ReplicationError::Setup(SetupError::PublicationRowFilter { .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("aggregateid") && text.contains("DROP TABLE public.outbox"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_the_outbox_table_stops_before_the_slot_passes_its_rows() {
    let (cluster, mut stream, mut client) = streaming().await;
    cluster
        .psql("alter table outbox rename to outbox_renamed")
        .unwrap();
    let hidden = insert_hidden(
        &mut client,
        "insert into outbox_renamed (aggregatetype, aggregateid, type) values ('order', 'renamed', 'x')",
    )
    .await;
    let err = assert_stopped_before(&mut stream, &client, hidden).await;
    let text = err.to_string();
    match &err {
        ReplicationError::Stream(StreamError::OutboxTableRenamed { .. }) => {
            assert!(text.contains("public.outbox_renamed"), "{text}")
        }
        ReplicationError::Setup(SetupError::OutboxTableMissing { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(text.contains("public.outbox"), "{text}");
}
