//! Postgres refuses to run as root: when the tests run as root, the server
//! binaries run as the OS user `postgres`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::binaries;
use crate::HarnessError;

/// The OS user the server runs as: `None` means the current user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUser {
    ids: Option<(u32, u32)>,
}

impl ServerUser {
    pub(crate) fn detect() -> Result<Self, HarnessError> {
        // /proc/self belongs to the effective uid of this process.
        let euid = std::fs::metadata("/proc/self")?.uid();
        if euid != 0 {
            return Ok(ServerUser { ids: None });
        }
        let passwd = std::fs::read_to_string("/etc/passwd")?;
        let ids = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"postgres") && fields.len() > 3)
            .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .ok_or_else(|| {
                HarnessError::new(
                    "running as root, but there is no OS user `postgres` to run the server as: \
                     install the postgresql package (it creates one) or `useradd --system postgres`",
                )
            })?;
        Ok(ServerUser { ids: Some(ids) })
    }

    /// A command that runs as the server user.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut command = binaries::command(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Gives `path` to the server user.
    pub(crate) fn own(&self, path: &Path) -> Result<(), HarnessError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}
