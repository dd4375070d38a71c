//! `outboxd check` and `outboxd status`: what an operator needs to know
//! before (and while) outboxd runs.

use std::fmt;

use anyhow::Context;
use pg_replication::catalog;
use pgoutput::Lsn;
use tokio_postgres::Client;

use crate::checkpoint_store::Checkpoints;
use crate::config::Config;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but an operator should look.
    Warn,
    /// outboxd cannot run (or will fail) until this is fixed.
    Fail,
}

/// One finding, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// The fix (for warnings and failures).
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag}  {}: {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

pub(crate) fn ok(what: &str, detail: impl Into<String>) -> Finding {
    Finding {
        level: Level::Ok,
        what: what.into(),
        detail: detail.into(),
        fix: None,
    }
}

pub(crate) fn warn(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Warn,
        what: what.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub(crate) fn fail(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Fail,
        what: what.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Retained WAL above this is worth a warning.
const RETAINED_WARN_BYTES: i64 = 1 << 30;

/// Runs every check; never stops at the first failure.
pub async fn check(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Err(err) = config.validate() {
        findings.push(fail(
            "configuration",
            format!("{err:#}"),
            "fix the configuration file or OUTBOXD_* variables",
        ));
        return findings;
    }
    match config.replication() {
        Ok(replication) => match replication.connect_catalog().await {
            Ok(client) => postgres_checks(config, &client, &mut findings).await,
            Err(err) => findings.push(fail(
                "postgres connection",
                err.to_string(),
                "check postgres.url (host, port, user, password, sslmode) and pg_hba.conf",
            )),
        },
        Err(err) => findings.push(fail(
            "postgres connection",
            format!("{err:#}"),
            "fix postgres.url",
        )),
    }
    crate::sink::check(config, &mut findings).await;
    findings
}

async fn postgres_checks(config: &Config, client: &Client, findings: &mut Vec<Finding>) {
    let row = match client
        .query_one(
            "select current_setting('server_version_num')::int4, current_setting('server_version'),
                    current_setting('wal_level'), current_setting('max_slot_wal_keep_size'),
                    r.rolreplication, r.rolsuper, current_user::text
               from pg_roles r where r.rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => {
            findings.push(fail(
                "postgres",
                err.to_string(),
                "check the connection's privileges",
            ));
            return;
        }
    };
    findings.push(tls_finding(config, client).await);
    let (version_num, version): (i32, String) = (row.get(0), row.get(1));
    if version_num >= 140000 {
        findings.push(ok("server version", version));
    } else {
        findings.push(fail(
            "server version",
            version,
            "outboxd needs PostgreSQL 14 or newer",
        ));
    }
    let wal_level: String = row.get(2);
    if wal_level == "logical" {
        findings.push(ok("wal_level", wal_level));
    } else {
        findings.push(fail(
            "wal_level",
            format!("{wal_level} (logical replication needs logical)"),
            "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
        ));
    }
    let keep: String = row.get(3);
    if keep == "-1" {
        findings.push(warn(
            "max_slot_wal_keep_size",
            "-1 (unlimited): a stopped or stuck outboxd makes the slot keep WAL until the disk is full",
            "set max_slot_wal_keep_size to what the disk can spare (e.g. 50GB); outboxd reports an invalidated slot clearly",
        ));
    } else {
        findings.push(ok("max_slot_wal_keep_size", keep));
    }
    let (replication, superuser, user): (bool, bool, String) = (row.get(4), row.get(5), row.get(6));
    if superuser {
        findings.push(warn(
            "role",
            format!("{user} is a superuser"),
            "run outboxd as a least-privilege role: LOGIN REPLICATION and SELECT on the outbox (sql/03_role.sql)",
        ));
    } else if replication {
        findings.push(ok("role", format!("{user} has REPLICATION")));
    } else {
        findings.push(fail(
            "role",
            format!("{user} lacks the REPLICATION attribute, so it cannot stream from a slot"),
            format!(
                "ALTER ROLE {} REPLICATION (as a superuser; see sql/03_role.sql)",
                crate::setup::ident(&user)
            ),
        ));
    }

    // Publication and its tables.
    let publication = &config.postgres.publication;
    let tables = config.tables().unwrap_or_default();
    match client
        .query_opt(
            "select pubinsert, pubupdate, pubdelete or pubtruncate from pg_publication where pubname = $1",
            &[publication],
        )
        .await
    {
        Ok(None) => findings.push(fail(
            "publication",
            format!("{publication} does not exist"),
            "run `outboxd setup` (or sql/02_publication.sql)",
        )),
        Ok(Some(p)) => {
            let (insert, update, more): (bool, bool, bool) = (p.get(0), p.get(1), p.get(2));
            let on_update = config.outbox.on_update;
            let publish = on_update.publish();
            let fix = format!(
                "ALTER PUBLICATION {} SET (publish = '{publish}')",
                crate::setup::ident(publication)
            );
            let wants_updates = on_update != crate::config::OnUpdate::Ignore;
            if !insert {
                findings.push(fail(
                    "publication",
                    format!("{publication} does not publish inserts"),
                    fix,
                ));
            } else if wants_updates && !update {
                findings.push(fail(
                    "publication",
                    format!("{publication} does not publish updates, so outbox.on_update = {on_update:?} never sees one"),
                    fix,
                ));
            } else if more || (update && !wants_updates) {
                findings.push(warn(
                    "publication",
                    format!(
                        "{publication} also publishes updates, deletes or truncates, which outboxd discards"
                    ),
                    fix,
                ));
            } else {
                findings.push(ok("publication", format!("{publication} publishes {publish}")));
            }
            for table in &tables {
                let member = client
                    .query_opt(
                        "select c.relreplident::text from pg_publication_tables p
                           join pg_class c on c.relname = p.tablename
                           join pg_namespace n on n.oid = c.relnamespace and n.nspname = p.schemaname
                          where p.pubname = $1 and p.schemaname = $2 and p.tablename = $3",
                        &[publication, &table.schema, &table.name],
                    )
                    .await;
                match member {
                    Ok(Some(r)) => findings.push(ok(
                        "outbox table",
                        format!(
                            "{table} is in {publication} (replica identity {}, not needed for inserts)",
                            r.get::<_, String>(0)
                        ),
                    )),
                    Ok(None) => findings.push(fail(
                        "outbox table",
                        format!("{table} is not in publication {publication} (or does not exist)"),
                        format!(
                            "ALTER PUBLICATION {} ADD TABLE {}",
                            crate::setup::ident(publication),
                            crate::setup::qualified(table)
                        ),
                    )),
                    Err(err) => findings.push(fail(
                        "outbox table",
                        err.to_string(),
                        "check privileges on pg_catalog",
                    )),
                }
            }
        }
        Err(err) => findings.push(fail(
            "publication",
            err.to_string(),
            "check privileges on pg_catalog",
        )),
    }

    // Slot.
    let slot_name = &config.postgres.slot;
    match catalog::read_slot(client, slot_name).await {
        Ok(None) => findings.push(fail(
            "slot",
            format!("{slot_name} does not exist"),
            "run `outboxd setup`",
        )),
        Ok(Some(slot)) => {
            if slot.plugin.as_deref() != Some("pgoutput") {
                findings.push(fail(
                    "slot",
                    format!("{slot_name} uses plugin {:?}, not pgoutput", slot.plugin),
                    "drop it and run `outboxd setup`, or point postgres.slot at a pgoutput slot",
                ));
            } else if slot.is_invalidated() {
                findings.push(fail(
                    "slot",
                    format!("{slot_name} is invalidated (wal_status {:?}): the WAL it needed is gone", slot.wal_status),
                    "events between its position and now cannot be streamed; drop and recreate the slot with \
                     `outboxd setup`, then reconcile the gap from the outbox table",
                ));
            } else {
                let retained = slot.retained_bytes.unwrap_or(0);
                let detail = format!(
                    "{slot_name}: pgoutput, confirmed {}, restart {}, retains {} of WAL{}",
                    slot.confirmed_flush_lsn
                        .map(|l| l.to_string())
                        .unwrap_or_default(),
                    slot.restart_lsn.map(|l| l.to_string()).unwrap_or_default(),
                    human_bytes(retained),
                    slot.active_pid
                        .map(|p| format!(", in use by pid {p}"))
                        .unwrap_or_default()
                );
                if retained > RETAINED_WARN_BYTES {
                    findings.push(warn(
                        "slot",
                        detail,
                        "outboxd is behind or stopped: check `outboxd status`, its logs and the broker",
                    ));
                } else {
                    findings.push(ok("slot", detail));
                }
            }
        }
        Err(err) => findings.push(fail(
            "slot",
            err.to_string(),
            "check privileges on pg_replication_slots",
        )),
    }
    if let Some(prefix) = &config.postgres.message_prefix {
        findings.push(emit_message_check(client, prefix).await);
    }
    findings.extend(bookkeeping_privileges(config, client, &user).await);
}

/// The table privileges outboxd's own writes need beyond streaming: cleanup
/// deletes delivered rows and reads `outboxd_slot` and `outboxd_kept`; the
/// dead-letter policy records rows it dead-lettered without their value in
/// `outboxd_kept`. Missing, they fail at run time (cleanup logs errors and
/// deletes nothing; a dead-letter stops the pipeline), so they are reported
/// here with the grant that fixes them.
async fn bookkeeping_privileges(config: &Config, client: &Client, user: &str) -> Vec<Finding> {
    let schema = crate::maintenance::bookkeeping_schema(config);
    // (shown as, quoted for SQL, privilege, why)
    let bookkeeping = |table: &str| {
        (
            format!("{schema}.{table}"),
            format!("{}.{}", crate::setup::ident(&schema), crate::setup::ident(table)),
        )
    };
    let mut needed: Vec<((String, String), &str, &str)> = Vec::new();
    if config.cleanup.interval_ms > 0 {
        for table in config.tables().unwrap_or_default() {
            needed.push((
                (table.to_string(), crate::setup::qualified(&table)),
                "DELETE",
                "[cleanup] deletes delivered rows",
            ));
        }
        needed.push((
            bookkeeping("outboxd_slot"),
            "SELECT",
            "[cleanup] reads where the slot started",
        ));
        needed.push((
            bookkeeping("outboxd_kept"),
            "SELECT",
            "[cleanup] skips rows kept after a dead-letter",
        ));
    }
    if config.policy().ok() == Some(crate::config::PermanentErrorPolicy::DeadLetter) {
        needed.push((
            bookkeeping("outboxd_kept"),
            "INSERT",
            "the dead-letter policy records rows dead-lettered without their value",
        ));
    }
    let mut findings = Vec::new();
    let mut fine = Vec::new();
    for ((shown, table), privilege, why) in needed {
        let granted = client
            .query_one(
                "select to_regclass($1) is not null,
                        to_regclass($1) is not null and has_table_privilege(to_regclass($1), $2)",
                &[&table, &privilege],
            )
            .await
            .map(|row| (row.get::<_, bool>(0), row.get::<_, bool>(1)));
        match granted {
            Ok((_, true)) => fine.push(format!("{privilege} on {shown}")),
            Ok((false, _)) => findings.push(fail(
                "privileges",
                format!("{shown} does not exist ({why})"),
                "run `outboxd setup` (or sql/04_cleanup.sql)",
            )),
            Ok((true, false)) => findings.push(fail(
                "privileges",
                format!("the role lacks {privilege} on {shown} ({why})"),
                format!(
                    "GRANT {privilege} ON {table} TO {} (see sql/03_role.sql)",
                    crate::setup::ident(user)
                ),
            )),
            Err(err) => findings.push(fail(
                "privileges",
                err.to_string(),
                "check privileges on pg_catalog",
            )),
        }
    }
    if findings.is_empty() && !fine.is_empty() {
        findings.push(ok("privileges", fine.join(", ")));
    }
    findings
}

/// Whether this connection is encrypted, as the server sees it, and what
/// `sslmode` verifies: (is it fine, what to show).
async fn tls_state(config: &Config, client: &Client) -> anyhow::Result<(bool, String)> {
    let row = client
        .query_one(
            "select s.ssl, s.version, inet_client_addr() is null
               from pg_stat_ssl s where s.pid = pg_backend_pid()",
            &[],
        )
        .await?;
    let (ssl, version, socket): (bool, Option<String>, bool) = (row.get(0), row.get(1), row.get(2));
    let mode = config.replication()?.ssl_mode();
    Ok(match (ssl, socket) {
        (true, _) if mode == pg_replication::SslMode::VerifyFull => (
            true,
            format!("TLS ({}), server certificate and name verified (sslmode=verify-full)", version.unwrap_or_default()),
        ),
        (true, _) => (
            false,
            format!(
                "TLS ({}), but sslmode={} does not verify the server's name: a man in the middle can pose as the server",
                version.unwrap_or_default(),
                mode.as_str()
            ),
        ),
        (false, true) => (true, "Unix socket (local, no TLS needed)".to_owned()),
        (false, false) => (
            false,
            format!(
                "not encrypted (sslmode={}{}): the password and every event cross the network in clear",
                mode.as_str(),
                if mode == pg_replication::SslMode::Prefer {
                    ", the server declined TLS"
                } else {
                    ""
                }
            ),
        ),
    })
}

async fn tls_finding(config: &Config, client: &Client) -> Finding {
    match tls_state(config, client).await {
        Ok((true, detail)) => ok("tls", detail),
        Ok((false, detail)) => warn(
            "tls",
            detail,
            "enable ssl on the server and use sslmode=verify-full with sslrootcert=<the server's CA>",
        ),
        Err(err) => warn("tls", format!("{err:#}"), "check privileges on pg_stat_ssl"),
    }
}

/// With `message_prefix` set, whoever can call `pg_logical_emit_message`
/// publishes records under outboxd's identity; PostgreSQL grants it to
/// PUBLIC by default.
async fn emit_message_check(client: &Client, prefix: &str) -> Finding {
    let what = "table-less outbox";
    let rows = match client
        .query(
            "select p.oid::regprocedure::text, has_function_privilege('public', p.oid, 'execute')
               from pg_proc p
              where p.proname = 'pg_logical_emit_message' and p.pronamespace = 'pg_catalog'::regnamespace
              order by 1",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return fail(what, err.to_string(), "check privileges on pg_catalog"),
    };
    let open: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| format!("pg_catalog.{}", r.get::<_, String>(0)))
        .collect();
    if open.is_empty() {
        return ok(
            what,
            format!("only roles granted EXECUTE on pg_logical_emit_message can emit {prefix:?} messages"),
        );
    }
    fail(
        what,
        format!(
            "every role (PUBLIC) may execute pg_logical_emit_message, so anyone who can connect can publish \
             records with message_prefix {prefix:?} under outboxd's identity"
        ),
        format!(
            "REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC; then GRANT EXECUTE on it to the roles that write \
             events (sql/05_tableless_outbox.sql)",
            open.join(", ")
        ),
    )
}

fn human_bytes(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.1} MiB", b / (1 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// `outboxd status`: the slot, the checkpoint and the replay window.
pub async fn status(config: &Config) -> anyhow::Result<Vec<(String, String)>> {
    let client = config
        .replication()?
        .connect_catalog()
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut lines = Vec::new();
    let current: Lsn = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, String>(0)
        .parse()?;
    lines.push(("current WAL".to_owned(), current.to_string()));
    if let Ok((_, tls)) = tls_state(config, &client).await {
        lines.push(("connection".to_owned(), tls));
    }
    let slot = catalog::read_slot(&client, &config.postgres.slot)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let confirmed = match &slot {
        None => {
            lines.push((
                "slot".into(),
                format!("{} does not exist (run `outboxd setup`)", config.postgres.slot),
            ));
            None
        }
        Some(slot) => {
            let confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            lines.push((
                "slot".into(),
                format!(
                    "{} ({}{})",
                    slot.name,
                    slot.wal_status.clone().unwrap_or_else(|| "?".into()),
                    slot.active_pid
                        .map(|p| format!(", active pid {p}"))
                        .unwrap_or_else(|| ", not in use".into())
                ),
            ));
            lines.push((
                "lease".into(),
                match crate::lease::holder(&client, &slot.name).await {
                    Some(holder) => format!("held by {holder}"),
                    None => "free (no outboxd instance streams this slot)".into(),
                },
            ));
            lines.push(("slot confirmed".into(), confirmed.to_string()));
            lines.push((
                "slot restart".into(),
                slot.restart_lsn.map(|l| l.to_string()).unwrap_or_default(),
            ));
            lines.push((
                "lag".into(),
                human_bytes(current.as_u64().saturating_sub(confirmed.as_u64()) as i64),
            ));
            lines.push((
                "retained WAL".into(),
                human_bytes(slot.retained_bytes.unwrap_or(0)),
            ));
            Some(confirmed)
        }
    };
    let store = Checkpoints::from_config(config)?;
    let checkpoint = store.load().await?;
    let place = match &store {
        Checkpoints::File(file) => file.path().display().to_string(),
        Checkpoints::Postgres(_) => store.describe(),
    };
    match checkpoint {
        Some(checkpoint) => {
            let delivered = checkpoint.delivered_end_lsn;
            let age = checkpoint
                .age()
                .map(|age| format!(", written {} s ago", age.as_secs()))
                .unwrap_or_default();
            lines.push((
                "checkpoint".into(),
                format!("{delivered} (last delivered end LSN{age}, {place})"),
            ));
            if let Some(last) = &checkpoint.last_event {
                lines.push((
                    "last delivered event".into(),
                    format!(
                        "id {} (outboxd.lsn {}, outboxd.index {})",
                        last.id, last.commit_lsn, last.index
                    ),
                ));
            }
            if let Some(confirmed) = confirmed {
                lines.push((
                    "replay window".into(),
                    if delivered > confirmed {
                        format!("{confirmed} .. {delivered} ({} of WAL)", human_bytes((delivered.as_u64() - confirmed.as_u64()) as i64))
                    } else {
                        format!("none: replay can start at {confirmed} (set [retention] to keep delivered events replayable)")
                    },
                ));
            }
        }
        None => lines.push(("checkpoint".into(), format!("none yet ({place})"))),
    }
    if let Some(row) = newest_row(config, &client).await {
        lines.push(("newest outbox row".into(), row));
    }
    Ok(lines)
}

/// The newest outbox row by creation time (`cleanup.created_at_column`;
/// delivered or not). Any column may be NULL in a custom table.
async fn newest_row(config: &Config, client: &Client) -> Option<String> {
    let table = config.tables().ok()?.into_iter().next()?;
    let created = crate::setup::ident(&config.cleanup.created_at_column);
    let sql = format!(
        "select {id}::text, {agg}::text, {created}::text from {t} order by {created} desc nulls last limit 1",
        id = crate::setup::ident(&config.outbox.id),
        agg = crate::setup::ident(&config.outbox.aggregate_id),
        t = crate::setup::qualified(&table)
    );
    let row = client.query_opt(&sql, &[]).await.ok()??;
    let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_else(|| "NULL".into());
    Some(format!(
        "id {} (aggregate {}, created {})",
        text(0),
        text(1),
        text(2)
    ))
}
