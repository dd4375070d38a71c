//! Reconnects to another server through a fault proxy: a promoted copy (a
//! new timeline) or another cluster. Found in review: a reconnect checked
//! neither, and resumed at positions of the old timeline on the new one,
//! skipping every transaction the new primary wrote below them.

use std::time::Duration;

use pg_replication::{ReplicationError, ReplicationStream, StreamConfig};
use testkit::{FaultProxy, PgCluster};

use crate::support::{cluster_with_outbox, insert_tx, next_tx, stream_config};

fn through(proxy: &FaultProxy, cluster: &PgCluster) -> StreamConfig {
    let mut config = stream_config(cluster);
    config.connection = format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port())
        .parse()
        .unwrap();
    config
}

/// The next item of the stream must be this error.
async fn next_error(stream: &mut ReplicationStream) -> ReplicationError {
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Err(err))) => err,
        Ok(other) => panic!("expected an error, got {other:?}"),
        Err(_) => panic!("no error within 30 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_a_promoted_copy_stops_on_the_new_timeline_instead_of_skipping() {
    let primary = cluster_with_outbox().await;
    let standby = primary.standby_copy().unwrap();
    let proxy = FaultProxy::start(("127.0.0.1", primary.port())).unwrap();
    let mut stream = ReplicationStream::start(through(&proxy, &primary)).await.unwrap();

    // The old primary goes on after the copy: timeline 1 only.
    let mut client = primary.connect().await.unwrap();
    for n in 0..5 {
        insert_tx(&mut client, &[format!("old-{n}")]).await;
        let tx = next_tx(&mut stream).await;
        stream.ack_handle().ack(tx.commit.end_lsn);
    }
    // Failover: the copy becomes a primary on timeline 2.
    standby.psql("select pg_promote()").unwrap();
    assert_eq!(
        standby
            .psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
            .unwrap(),
        "00000002",
        "the copy writes timeline 2"
    );
    let mut new_client = standby.connect().await.unwrap();
    insert_tx(&mut new_client, &["new-0".to_owned()]).await;

    proxy.redirect(("127.0.0.1", standby.port())).unwrap();
    let err = next_error(&mut stream).await;
    assert!(
        matches!(
            err,
            ReplicationError::TimelineChanged {
                streamed: 1,
                found: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.restarts_from_slot());
    assert!(err.to_string().contains("restarts from the slot"), "{err}");

    // What the caller does then: a new stream from the slot, nothing skipped.
    let mut stream = ReplicationStream::start(stream_config(&standby)).await.unwrap();
    let tx = next_tx(&mut stream).await;
    assert_eq!(tx.aggregate_ids(), ["new-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_another_cluster_is_a_definite_error_naming_the_fix() {
    let first = cluster_with_outbox().await;
    let other = cluster_with_outbox().await;
    let proxy = FaultProxy::start(("127.0.0.1", first.port())).unwrap();
    let mut stream = ReplicationStream::start(through(&proxy, &first)).await.unwrap();
    let mut client = first.connect().await.unwrap();
    insert_tx(&mut client, &["a".to_owned()]).await;
    next_tx(&mut stream).await;

    let mut other_client = other.connect().await.unwrap();
    insert_tx(&mut other_client, &["b".to_owned()]).await;
    proxy.redirect(("127.0.0.1", other.port())).unwrap();
    let err = next_error(&mut stream).await;
    assert!(matches!(err, ReplicationError::OtherCluster { .. }), "{err:?}");
    assert!(!err.restarts_from_slot());
    let text = err.to_string();
    assert!(
        text.contains("another PostgreSQL cluster") && text.contains("Point postgres.url back"),
        "{text}"
    );
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await,
            Ok(None)
        ),
        "nothing after the error"
    );
}
