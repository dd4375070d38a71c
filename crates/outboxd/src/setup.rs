//! `outboxd setup`: the outbox table (when asked), the publication, the
//! slot, and what the sink needs declared on its broker (a RabbitMQ
//! exchange). Idempotent: what exists is left alone and reported.

use anyhow::Context;
use pg_replication::catalog::{self, SlotCreation};
use pg_replication::OutboxTable;

use crate::checkpoint_store::{self, StoreKind};
use crate::config::Config;
use crate::maintenance;

/// The default outbox table (DESIGN.md; Debezium's outbox router's columns).
pub fn outbox_table_sql(table: &OutboxTable) -> String {
    format!(
        "create table if not exists {} (
            id            uuid primary key,
            aggregatetype text not null,
            aggregateid   text not null,
            type          text not null,
            payload       jsonb,
            created_at    timestamptz not null default now()
        )",
        qualified(table)
    )
}

/// Creates what is missing; returns one line per step saying what it did.
pub async fn setup(config: &Config, create_table: bool) -> anyhow::Result<Vec<String>> {
    let tables = config.tables()?;
    let client = config
        .replication()?
        .connect_catalog()
        .await
        .context("cannot connect to PostgreSQL for setup")?;
    let mut done = Vec::new();
    catalog::check_server(&client)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    for table in &tables {
        let exists = client
            .query_one("select to_regclass($1) is not null", &[&qualified(table)])
            .await?
            .get::<_, bool>(0);
        if exists {
            done.push(format!("table {table}: exists"));
        } else if create_table {
            client
                .batch_execute(&outbox_table_sql(table))
                .await
                .with_context(|| format!("creating {table}"))?;
            done.push(format!("table {table}: created"));
        } else {
            anyhow::bail!("table {table} does not exist: create it (sql/01_outbox_table.sql) or run `outboxd setup --create-table`");
        }
    }

    let publication = &config.postgres.publication;
    let publish = config.outbox.on_update.publish();
    let exists = client
        .query_opt(
            "select pubinsert, pubupdate from pg_publication where pubname = $1",
            &[publication],
        )
        .await?;
    match exists {
        None => {
            let list: Vec<String> = tables.iter().map(qualified).collect();
            client
                .batch_execute(&format!(
                    "create publication {} for table {} with (publish = '{publish}')",
                    ident(publication),
                    list.join(", ")
                ))
                .await
                .with_context(|| format!("creating publication {publication}"))?;
            done.push(format!(
                "publication {publication}: created for {} (publish = '{publish}')",
                list.join(", ")
            ));
        }
        Some(row) => {
            if !row.get::<_, bool>(0) || (publish != "insert" && !row.get::<_, bool>(1)) {
                anyhow::bail!(
                    "publication {publication} exists but does not publish {publish} (outbox.on_update = {:?}): \
                     alter publication {publication} set (publish = '{publish}')",
                    config.outbox.on_update
                );
            }
            for table in &tables {
                let member = client
                    .query_opt(
                        "select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3",
                        &[publication, &table.schema, &table.name],
                    )
                    .await?
                    .is_some();
                if member {
                    done.push(format!("publication {publication}: exists, includes {table}"));
                } else {
                    client
                        .batch_execute(&format!(
                            "alter publication {} add table {}",
                            ident(publication),
                            qualified(table)
                        ))
                        .await
                        .with_context(|| format!("adding {table} to publication {publication}"))?;
                    done.push(format!("publication {publication}: added {table}"));
                }
            }
        }
    }

    if config.checkpoint.store == StoreKind::Postgres {
        let table = &config.checkpoint.table;
        client
            .batch_execute(&checkpoint_store::table_sql(table))
            .await
            .with_context(|| format!("creating the checkpoint table {table}"))?;
        done.push(format!("checkpoint table {table}: ready"));
    }

    let slot = &config.postgres.slot;
    match catalog::create_slot(&client, slot)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        SlotCreation::Created { lsn } => {
            done.push(format!("slot {slot}: created (pgoutput) at {lsn}"));
            record_start(&client, config, Some(lsn), true, &mut done).await?;
        }
        SlotCreation::AlreadyExisted => {
            let info = catalog::verify_slot(&client, slot)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let at = info
                .confirmed_flush_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into());
            done.push(format!("slot {slot}: exists, confirmed at {at}"));
            record_start(&client, config, info.confirmed_flush_lsn, false, &mut done).await?;
        }
    }
    done.extend(crate::sink::setup(config).await?);
    Ok(done)
}

/// Records where the slot starts, for cleanup (see `maintenance::cleanup`).
async fn record_start(
    client: &tokio_postgres::Client,
    config: &Config,
    lsn: Option<pgoutput::Lsn>,
    replace: bool,
    done: &mut Vec<String>,
) -> anyhow::Result<()> {
    let schema = maintenance::bookkeeping_schema(config);
    let slot = &config.postgres.slot;
    maintenance::record_slot_start(client, &schema, slot, lsn, replace)
        .await
        .with_context(|| format!("recording where slot {slot} starts in {schema}.outboxd_slot"))?;
    let since: String = client
        .query_one(
            &format!(
                "select created_at::text from {}.outboxd_slot where slot_name = $1",
                ident(&schema)
            ),
            &[slot],
        )
        .await?
        .get(0);
    done.push(format!(
        "slot {slot}: cleanup deletes only rows committed after its start ({since}), recorded in {schema}.outboxd_slot"
    ));
    Ok(())
}

/// A quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted `schema.table`.
pub(crate) fn qualified(table: &OutboxTable) -> String {
    format!("{}.{}", ident(&table.schema), ident(&table.name))
}
