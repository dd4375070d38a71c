//! START_REPLICATION on a real slot: the CopyBoth stream yields frames the
//! pgoutput decoder accepts, `recv` survives cancellation, and the errors
//! of a replication session are classified.

use std::time::Duration;

use bytes::Bytes;
use pg_replication::{publication_names, CopyBoth, Error, ReplicationConfig, ReplicationConnection};
use pgoutput::Lsn;
use pgoutput::{
    ColumnValue, Decoder, LogicalReplicationMessage, PgTimestamp, ReplicationMessage, StandbyStatusUpdate,
};
use testkit::PgCluster;

const SETUP: &str = "
    create table items (id int primary key, note text);
    create publication \"Outbox Pub\" for all tables;
    select pg_create_logical_replication_slot('s', 'pgoutput');
";

fn replication_config(cluster: &PgCluster) -> ReplicationConfig {
    cluster.url("postgres", "postgres").parse().unwrap()
}

fn options() -> [(&'static str, String); 3] {
    [
        ("proto_version", "1".to_owned()),
        // A name that needs quoting: mixed case and a space.
        ("publication_names", publication_names(&["Outbox Pub"])),
        ("messages", "true".to_owned()),
    ]
}

async fn start(cluster: &PgCluster, slot: &str) -> Result<CopyBoth, Error> {
    let conn = ReplicationConnection::connect(&replication_config(cluster)).await?;
    conn.start_replication(slot, Lsn::ZERO, &options()).await
}

/// Reads frames until one transaction's Commit; returns its decoded messages.
async fn read_transaction(frames: &[Bytes]) -> Vec<LogicalReplicationMessage> {
    let mut decoder = Decoder::new(1).unwrap();
    let mut out = Vec::new();
    for frame in frames {
        if let ReplicationMessage::XLogData(data) = ReplicationMessage::parse(frame).unwrap() {
            out.push(decoder.decode(&data.data).unwrap());
        }
    }
    out
}

fn is_commit(frame: &Bytes) -> bool {
    matches!(ReplicationMessage::parse(frame), Ok(ReplicationMessage::XLogData(d)) if d.data.first() == Some(&b'C'))
}

#[tokio::test]
async fn start_replication_streams_frames_pgoutput_decodes() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql(SETUP).unwrap();
    cluster.psql("insert into items values (1, 'first')").unwrap();

    let mut copy = start(&cluster, "s").await.unwrap();
    let mut frames = Vec::new();
    let mut keepalives = 0;
    while !frames.iter().any(is_commit) {
        let frame = tokio::time::timeout(Duration::from_secs(30), copy.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ReplicationMessage::parse(&frame).unwrap() {
            ReplicationMessage::PrimaryKeepalive(_) => keepalives += 1,
            _ => frames.push(frame),
        }
    }
    let messages = read_transaction(&frames).await;
    let [LogicalReplicationMessage::Begin(begin), LogicalReplicationMessage::Relation(relation), LogicalReplicationMessage::Insert(insert), LogicalReplicationMessage::Commit(commit)] =
        &messages[..]
    else {
        panic!("expected Begin, Relation, Insert, Commit; got {messages:#?} (and {keepalives} keepalives)");
    };
    assert_eq!(relation.name, "items");
    assert_eq!(insert.relation_id, relation.id);
    assert_eq!(
        insert.new.columns,
        [
            ColumnValue::Text(Bytes::from_static(b"1")),
            ColumnValue::Text(Bytes::from_static(b"first"))
        ]
    );
    assert_eq!(begin.final_lsn, commit.commit_lsn);

    // Confirm it, as the stream will: a StandbyStatusUpdate in a CopyData frame.
    let update = StandbyStatusUpdate {
        write: commit.end_lsn,
        flush: commit.end_lsn,
        apply: commit.end_lsn,
        client_time: PgTimestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
        reply_requested: true,
    };
    copy.send(&update.to_bytes()).await.unwrap();
    // The server answers reply_requested with a keepalive.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), copy.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let ReplicationMessage::PrimaryKeepalive(_) = ReplicationMessage::parse(&frame).unwrap() {
            break;
        }
    }
    copy.send_copy_done().await.unwrap();
    assert_eq!(copy.recv().await.unwrap(), None);
}

#[tokio::test]
async fn send_copy_done_returns_after_the_server_processed_the_final_status() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql(SETUP).unwrap();
    let mut copy = start(&cluster, "s").await.unwrap();
    cluster.psql("insert into items values (1, 'first')").unwrap();
    let end_lsn = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), copy.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let ReplicationMessage::XLogData(data) = ReplicationMessage::parse(&frame).unwrap() {
            if let Ok(LogicalReplicationMessage::Commit(commit)) = Decoder::new(1).unwrap().decode(&data.data)
            {
                break commit.end_lsn;
            }
        }
    };
    // More WAL in flight that is not acknowledged.
    cluster.psql("insert into items values (2, 'second')").unwrap();
    let update = StandbyStatusUpdate {
        write: end_lsn,
        flush: end_lsn,
        apply: end_lsn,
        client_time: PgTimestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
        reply_requested: false,
    };
    copy.send(&update.to_bytes()).await.unwrap();
    copy.send_copy_done().await.unwrap();
    // No polling: the server handled the update before it ended the stream.
    let confirmed = cluster
        .psql("select confirmed_flush_lsn from pg_replication_slots where slot_name = 's'")
        .unwrap();
    assert_eq!(confirmed, end_lsn.to_string());
    assert_eq!(copy.recv().await.unwrap(), None);
}

#[tokio::test]
async fn recv_is_cancel_safe_under_a_fast_timer() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql(SETUP).unwrap();
    // Rows large enough to span several socket reads each, and in all (19 MB)
    // far more than the socket buffers hold: whatever the scheduling, the
    // walsender falls behind us at some point, recv waits, and the timer
    // gets its chance to cancel it (with 2 MB a loaded machine could buffer
    // the whole stream before we read it, and nothing was ever raced).
    let rows = 2000;
    cluster
        .psql(&format!(
            "insert into items select g, repeat(md5(g::text), 300) from generate_series(1, {rows}) g"
        ))
        .unwrap();

    let mut copy = start(&cluster, "s").await.unwrap();
    let mut decoder = Decoder::new(1).unwrap();
    let mut inserted = Vec::new();
    let mut timer = tokio::time::interval(Duration::from_micros(50));
    let mut ticks = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {rows} rows",
            inserted.len()
        );
        tokio::select! {
            frame = copy.recv() => {
                let frame = frame.unwrap().expect("stream ended");
                let ReplicationMessage::XLogData(data) = ReplicationMessage::parse(&frame).unwrap() else { continue };
                match decoder.decode(&data.data).unwrap() {
                    LogicalReplicationMessage::Insert(insert) => {
                        let ColumnValue::Text(id) = &insert.new.columns[0] else { panic!("{insert:?}") };
                        inserted.push(std::str::from_utf8(id).unwrap().parse::<i32>().unwrap());
                    }
                    LogicalReplicationMessage::Commit(_) => break,
                    _ => {}
                }
            }
            _ = timer.tick() => ticks += 1,
        }
    }
    assert_eq!(inserted, (1..=rows).collect::<Vec<_>>());
    eprintln!("timer fired {ticks} times");
    assert!(ticks > 0, "the timer never fired: recv was never raced");
}

#[tokio::test]
async fn terminated_walsender_is_transient() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql(SETUP).unwrap();
    let conn = ReplicationConnection::connect(&replication_config(&cluster))
        .await
        .unwrap();
    let pid = conn.backend_pid().unwrap();
    let mut copy = conn.start_replication("s", Lsn::ZERO, &options()).await.unwrap();

    // While streaming, the slot is in use: a second session is told to retry.
    let err = start(&cluster, "s").await.unwrap_err();
    assert_eq!(err.code(), Some("55006"), "{err}");
    assert!(err.is_transient(), "{err}");

    cluster
        .psql(&format!("select pg_terminate_backend({pid})"))
        .unwrap();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), copy.recv())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended cleanly"),
            Err(err) => break err,
        }
    };
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), Some("57P01"), "{err}");
}

#[tokio::test]
async fn missing_slot_and_publication_are_definite() {
    let cluster = PgCluster::start().unwrap();
    cluster.psql(SETUP).unwrap();
    let err = start(&cluster, "no_such_slot").await.unwrap_err();
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient());

    // pgoutput checks publication names when the first change is decoded.
    let conn = ReplicationConnection::connect(&replication_config(&cluster))
        .await
        .unwrap();
    let options = [
        ("proto_version", "1".to_owned()),
        ("publication_names", publication_names(&["missing"])),
    ];
    let mut copy = conn.start_replication("s", Lsn::ZERO, &options).await.unwrap();
    cluster.psql("insert into items values (1, 'x')").unwrap();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), copy.recv())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended cleanly"),
            Err(err) => break err,
        }
    };
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient(), "{err}");
}
