//! Finding and running the PostgreSQL programs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::HarnessError;

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`:
/// `pg_config --bindir` if it has `initdb` (Debian's pg_config is the client
/// package's and may not), else the newest `/usr/lib/postgresql/<version>/bin`.
pub(crate) fn bindir() -> Result<PathBuf, HarnessError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            has_server(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        HarnessError::new(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found via `pg_config --bindir` \
             or under /usr/lib/postgresql/<version>/bin: install them (Debian/Ubuntu: \
             `apt-get install postgresql`, or a version such as `postgresql-15`), then run the tests again",
        )
    })
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "psql"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// A command for one of the PostgreSQL programs, isolated from the caller's
/// `PG*` environment (`PGDATA`, `PGPORT`, `PGSSLMODE`, `PGOPTIONS`, … would
/// otherwise leak into the throwaway cluster) and with messages in English.
pub(crate) fn command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    command.env("LC_ALL", "C");
    command
}

/// Runs `command` to completion; `what` names it in errors.
pub(crate) fn output(command: &mut Command, what: &str) -> Result<Output, HarnessError> {
    command
        .output()
        .map_err(|e| HarnessError::new(format!("could not run {what} ({command:?}): {e}")))
}

/// Fails unless the program exited with success, quoting what it printed.
pub(crate) fn check(out: &Output, what: &str) -> Result<(), HarnessError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::new(format!(
            "{what} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
