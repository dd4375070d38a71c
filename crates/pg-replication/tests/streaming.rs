//! Committed outbox inserts arrive whole, in commit order, with the right
//! positions; nothing else does.

use std::time::Duration;

use crate::support::*;
use pg_replication::ReplicationStream;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_hundred_row_transactions_arrive_whole_with_their_positions() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();

    let one = insert_tx(&mut app, &ids("single", 1)).await;
    let hundred = insert_tx(&mut app, &ids("hundred", 100)).await;

    let first = next_tx(&mut stream).await;
    assert_eq!(first.aggregate_ids(), ids("single", 1));
    let second = next_tx(&mut stream).await;
    assert_eq!(second.aggregate_ids(), ids("hundred", 100));

    // The commit record lies after the last insert and ends before the next read of the WAL end.
    for (tx, (before_commit, after_commit)) in [(&first, one), (&second, hundred)] {
        assert!(
            tx.commit_lsn >= before_commit,
            "{} < {before_commit}",
            tx.commit_lsn
        );
        assert!(
            tx.commit.end_lsn <= after_commit,
            "{} > {after_commit}",
            tx.commit.end_lsn
        );
        assert!(tx.inserts.iter().all(|i| i.lsn < tx.commit_lsn));
    }
    assert!(first.commit.end_lsn <= second.commit_lsn);
    assert_ne!(first.xid, second.xid);
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_transactions_arrive_in_commit_order_not_start_order() {
    let cluster = cluster_with_outbox().await;
    let mut a = cluster.connect().await.unwrap();
    let mut b = cluster.connect().await.unwrap();
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();

    let insert = "insert into outbox (aggregatetype, aggregateid, type, payload) values ('order', $1, 'created', '{}')";
    let ta = a.transaction().await.unwrap();
    let tb = b.transaction().await.unwrap();
    ta.execute(insert, &[&"a-0"]).await.unwrap();
    tb.execute(insert, &[&"b-0"]).await.unwrap();
    ta.execute(insert, &[&"a-1"]).await.unwrap();
    tb.execute(insert, &[&"b-1"]).await.unwrap();
    tb.commit().await.unwrap(); // b started second but commits first
    ta.commit().await.unwrap();

    let first = next_tx(&mut stream).await;
    let second = next_tx(&mut stream).await;
    assert_eq!(first.aggregate_ids(), ["b-0", "b-1"]);
    assert_eq!(second.aggregate_ids(), ["a-0", "a-1"]);
    assert!(first.commit.end_lsn <= second.commit_lsn);
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_savepoints_other_tables_updates_and_deletes_are_not_yielded() {
    let cluster = cluster_with_outbox().await;
    let mut stream = ReplicationStream::start(stream_config(&cluster)).await.unwrap();
    // Every kind of change that must not surface, then one that must: it is
    // the first thing the stream yields, or the test fails.
    cluster
        .psql(
            "alter publication outboxd set (publish = 'insert, update, delete, truncate');
             alter publication outboxd add table orders;
             begin; insert into outbox (aggregatetype, aggregateid, type) values ('o', 'rolled-back', 't'); rollback;
             insert into orders (note) values ('not an outbox row');
             insert into outbox (id, aggregatetype, aggregateid, type) values ('00000000-0000-0000-0000-000000000001', 'o', 'to-update', 't');
             begin;
               insert into outbox (aggregatetype, aggregateid, type) values ('o', 'kept-1', 't');
               savepoint s;
               insert into outbox (aggregatetype, aggregateid, type) values ('o', 'rolled-back-savepoint', 't');
               rollback to savepoint s;
               insert into outbox (aggregatetype, aggregateid, type) values ('o', 'kept-2', 't');
             commit;
             update outbox set type = 'changed' where aggregateid = 'to-update';
             delete from outbox where aggregateid = 'to-update';
             truncate orders;
             insert into outbox (aggregatetype, aggregateid, type) values ('o', 'last', 't');",
        )
        .unwrap();
    assert_eq!(next_tx(&mut stream).await.aggregate_ids(), ["to-update"]);
    assert_eq!(next_tx(&mut stream).await.aggregate_ids(), ["kept-1", "kept-2"]);
    assert_eq!(next_tx(&mut stream).await.aggregate_ids(), ["last"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    stream.shutdown().await.unwrap();
}
