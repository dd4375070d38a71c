//! Shared setup for the streaming tests: a cluster with the outbox schema,
//! a slot and a publication, and helpers to read the stream.

use std::time::Duration;

use pg_replication::catalog;
use pg_replication::{
    OutboxInsert, ReplicationConfig, ReplicationEvent, ReplicationStream, StreamConfig, TransactionCommit,
};
use pgoutput::Lsn;
use testkit::PgCluster;

pub(crate) const SCHEMA: &str = "
    create table outbox (
        id            uuid primary key default gen_random_uuid(),
        aggregatetype text not null,
        aggregateid   text not null,
        type          text not null,
        payload       jsonb,
        created_at    timestamptz not null default now()
    );
    create table orders (id serial primary key, note text);
    create publication outboxd for table outbox with (publish = 'insert');
";

/// A cluster with the outbox table, publication `outboxd` and slot `outboxd`.
pub(crate) async fn cluster_with_outbox() -> PgCluster {
    let cluster = PgCluster::start().expect("start cluster");
    cluster.psql(SCHEMA).expect("schema");
    let client = cluster.connect().await.expect("connect");
    catalog::create_slot(&client, "outboxd")
        .await
        .expect("create slot");
    cluster
}

pub(crate) fn replication_config(cluster: &PgCluster) -> ReplicationConfig {
    cluster
        .url("postgres", "postgres")
        .parse()
        .expect("replication config")
}

pub(crate) fn stream_config(cluster: &PgCluster) -> StreamConfig {
    let mut config = StreamConfig::new(replication_config(cluster), "outboxd", "outboxd");
    config.status_interval = Duration::from_millis(200);
    config.reconnect_initial = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(500);
    config
}

/// One transaction as the stream yielded it.
#[derive(Debug)]
pub(crate) struct Tx {
    pub(crate) commit_lsn: Lsn,
    pub(crate) xid: u32,
    pub(crate) inserts: Vec<OutboxInsert>,
    pub(crate) commit: TransactionCommit,
}

impl Tx {
    /// The `aggregateid` of each insert, in order.
    pub(crate) fn aggregate_ids(&self) -> Vec<String> {
        self.inserts
            .iter()
            .map(|i| {
                i.column("aggregateid")
                    .and_then(|v| v.as_text())
                    .expect("aggregateid")
                    .to_owned()
            })
            .collect()
    }
}

/// Reads the next whole transaction, checking its framing.
pub(crate) async fn next_tx(stream: &mut ReplicationStream) -> Tx {
    let begin = match next_event(stream).await {
        ReplicationEvent::Begin(b) => b,
        other => panic!("expected Begin, got {other:?}"),
    };
    let mut inserts = Vec::new();
    loop {
        match next_event(stream).await {
            ReplicationEvent::Insert(insert) => {
                assert_eq!(insert.commit_lsn, begin.commit_lsn);
                assert_eq!(insert.index, inserts.len() as u64);
                inserts.push(insert);
            }
            ReplicationEvent::Commit(commit) => {
                assert_eq!(commit.commit_lsn, begin.commit_lsn);
                assert!(commit.end_lsn > commit.commit_lsn);
                return Tx {
                    commit_lsn: begin.commit_lsn,
                    xid: begin.xid,
                    inserts,
                    commit,
                };
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub(crate) async fn next_event(stream: &mut ReplicationStream) -> ReplicationEvent {
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("stream error: {err}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no event within 30 s"),
    }
}

/// Asserts that no event arrives within `wait`.
pub(crate) async fn assert_quiet(stream: &mut ReplicationStream, wait: Duration) {
    if let Ok(event) = tokio::time::timeout(wait, stream.next()).await {
        panic!("expected no event, got {event:?}");
    }
}

/// `confirmed_flush_lsn` of the slot.
pub(crate) async fn confirmed_flush(client: &tokio_postgres::Client) -> Lsn {
    catalog::read_slot(client, "outboxd")
        .await
        .expect("read slot")
        .expect("slot exists")
        .confirmed_flush_lsn
        .expect("logical slot has a confirmed position")
}

/// Polls until the slot's confirmed position reaches `target` (or panics after 10 s).
pub(crate) async fn wait_for_confirmed(client: &tokio_postgres::Client, target: Lsn) -> Lsn {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed = confirmed_flush(client).await;
        if confirmed >= target {
            return confirmed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn {confirmed} never reached {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn current_wal_lsn(client: &tokio_postgres::Client) -> Lsn {
    let text: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

/// Inserts one outbox row per aggregate id in one transaction; returns the WAL
/// position just before the commit and just after it.
pub(crate) async fn insert_tx(client: &mut tokio_postgres::Client, aggregate_ids: &[String]) -> (Lsn, Lsn) {
    let tx = client.transaction().await.unwrap();
    for id in aggregate_ids {
        tx.execute(
            "insert into outbox (aggregatetype, aggregateid, type, payload) values ('order', $1, 'created', '{\"n\": 1}')",
            &[id],
        )
        .await
        .unwrap();
    }
    let before: String = tx
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let after = current_wal_lsn(client).await;
    (before.parse().unwrap(), after)
}
