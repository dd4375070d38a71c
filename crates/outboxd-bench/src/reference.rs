//! The reference: PostgreSQL's own `pg_recvlogical` draining its slot with
//! the same plugin, protocol version and publication, writing to /dev/null,
//! until the backlog's end (`--endpos`). It is as fast as a client of the
//! walsender can be: it does nothing with what it receives.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use testkit::PgCluster;

use crate::backlog::{walsender_pid, Backlog};
use crate::consumer::Report;
use crate::usage;

/// An installed PostgreSQL program: `pg_config --bindir` first, else the
/// newest `/usr/lib/postgresql/*/bin` (Debian's layout, which the harness
/// uses too).
pub(crate) fn pg_program(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join(name).exists() {
            return Ok(dir.join(name));
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    let path = e.path().join("bin").join(name);
                    path.exists().then_some((version, path))
                })
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, path)| path)
        .with_context(|| format!("{name} not found (install the PostgreSQL client and server binaries)"))
}

/// Drains `slot` with `pg_recvlogical` (over TCP as the `postgres` user; the
/// harness trusts local connections, so it runs fine as root).
pub(crate) async fn drain(
    cluster: &PgCluster,
    catalog: Arc<tokio_postgres::Client>,
    slot: &str,
    backlog: Backlog,
) -> anyhow::Result<Report> {
    let program = pg_program("pg_recvlogical")?;
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port()
    );
    let cpu_before = usage::reaped_children_cpu_seconds();
    let started = Instant::now();
    let child = Command::new(program)
        .args([
            "--dbname",
            &dsn,
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "--file",
            "/dev/null",
        ])
        .args([
            "--option",
            "proto_version=1",
            "--option",
            "publication_names=outboxd",
        ])
        .args(["--endpos", &backlog.end.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pg_recvlogical")?;
    let own = tokio::spawn(usage::sample_until_exit(child.id()));
    let slot_name = slot.to_owned();
    let walsender = tokio::spawn(async move {
        let pid = walsender_pid(&catalog, &slot_name, Duration::from_secs(60)).await?;
        Some(usage::sample_until_exit(pid).await)
    });
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let seconds = started.elapsed().as_secs_f64();
    // Exact: the child has been reaped, nothing else was.
    let cpu_seconds = usage::reaped_children_cpu_seconds() - cpu_before;
    if !output.status.success() {
        walsender.abort();
        bail!(
            "pg_recvlogical failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let own = own.await.unwrap_or_default();
    let walsender = tokio::time::timeout(Duration::from_secs(10), walsender)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    Ok(Report {
        events: backlog.rows,
        seconds,
        cpu_seconds,
        peak_rss_mib: own.peak_rss_mib.unwrap_or_default(),
        latency: None,
        walsender_cpu_seconds: walsender.and_then(|w| w.cpu_seconds),
    })
}
