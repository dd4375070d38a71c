//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

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
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via `pg_config --bindir` \
             or under /usr/lib/postgresql/<version>/bin: install them, e.g. `apt-get install postgresql` \
             (Debian), then run the tests again",
        )
    })
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}
