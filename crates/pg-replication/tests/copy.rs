//! Streaming from a temporary copy of a slot (what `outboxd replay` does).

use pg_replication::ReplicationStream;

use crate::support::*;

/// Found in review: a stream from a copy started wherever the copy was. When
/// the live service moved the source slot after the caller checked it, the
/// copy started past the requested position and the events in between were
/// silently never streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_made_after_the_source_moved_past_the_start_is_refused_naming_where_it_starts() {
    let cluster = cluster_with_outbox().await;
    let mut app = cluster.connect().await.unwrap();
    let observer = cluster.connect().await.unwrap();
    // The caller checks the source slot: `from` is replayable...
    let from = confirmed_flush(&observer).await;
    insert_tx(&mut app, &["a".to_owned()]).await;
    let (_, after) = insert_tx(&mut app, &["b".to_owned()]).await;
    // ...then the live service moves the source past it, before the copy.
    observer
        .execute(
            "select pg_replication_slot_advance('outboxd', $1::text::pg_lsn)",
            &[&after.to_string()],
        )
        .await
        .unwrap();
    let moved = confirmed_flush(&observer).await;
    assert!(moved > from);
    let copy = |skip_through| {
        let mut config = stream_config(&cluster);
        config.copy_from = Some("outboxd".into());
        config.slot = "outboxd_copy".into();
        config.skip_through = skip_through;
        config.reconnect = false;
        config
    };
    let err = ReplicationStream::start(copy(from))
        .await
        .expect_err("a copy that starts after the requested position must be refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!("starts at {moved}")) && text.contains(&format!("requested {from}")),
        "{text}"
    );

    // From where the copy starts, it streams what follows.
    let mut stream = ReplicationStream::start(copy(moved)).await.unwrap();
    insert_tx(&mut app, &["c".to_owned()]).await;
    let tx = next_tx(&mut stream).await;
    assert_eq!(tx.inserts.len(), 1);
    assert!(tx.commit_lsn > moved);
    stream.shutdown().await.unwrap();
}
