//! A throwaway cluster with the inbox tables and a projection to apply
//! events to.

use outbox_inbox::{Envelope, HandlerFuture, Lsn, Position};
use testkit::PgCluster;
use tokio_postgres::{Client, Transaction};

/// `applied` has no unique constraint: applying an event twice shows as two rows.
pub(crate) const PROJECTION: &str =
    "create table applied (event_id text not null, aggregate_id text not null, amount bigint not null);
     create table projection (aggregate_id text primary key, total bigint not null, events bigint not null);";

pub(crate) async fn cluster() -> (PgCluster, Client) {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("throwaway cluster");
    let client = cluster.connect().await.expect("connect");
    outbox_inbox::setup(&client).await.expect("setup");
    client.batch_execute(PROJECTION).await.expect("projection");
    (cluster, client)
}

/// The business effect: one row in `applied`, the aggregate's running total.
pub(crate) async fn apply(
    tx: &Transaction<'_>,
    id: &str,
    aggregate: &str,
    amount: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "insert into applied (event_id, aggregate_id, amount) values ($1, $2, $3)",
        &[&id, &aggregate, &amount],
    )
    .await?;
    tx.execute(
        "insert into projection (aggregate_id, total, events) values ($1, $2, 1)
         on conflict (aggregate_id) do update set total = projection.total + excluded.total, events = projection.events + 1",
        &[&aggregate, &amount],
    )
    .await?;
    Ok(())
}

pub(crate) fn event(id: &str, aggregate: &str, lsn: u64, index: u64) -> Envelope {
    Envelope::new(id)
        .with_aggregate(aggregate)
        .with_position(Position {
            commit_lsn: Lsn::new(lsn),
            index,
        })
}

pub(crate) fn applier<'a>(
    tx: &'a Transaction<'a>,
    id: String,
    aggregate: String,
    amount: i64,
) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    Box::pin(async move { apply(tx, &id, &aggregate, amount).await })
}

pub(crate) async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A handler applying one event (for messages built in the test).
pub(crate) fn applying(
    id: &str,
    aggregate: &str,
    amount: i64,
) -> impl for<'a> FnOnce(&'a Transaction<'a>) -> HandlerFuture<'a, (), tokio_postgres::Error> {
    let (id, aggregate) = (id.to_owned(), aggregate.to_owned());
    move |tx| applier(tx, id, aggregate, amount)
}
