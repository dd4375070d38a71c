//! Looking at processes through `/proc`, to prove a server is gone.

use std::path::Path;

/// Whether `pid` is a live process. A zombie counts as gone: a postmaster
/// started by `pg_ctl` is reparented, and in a container nothing may reap it.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether the command line of `pid` contains `path` (a postmaster's `-D`
/// data directory), so that a PID from a stale pid file is not mistaken for
/// our server.
pub(crate) fn process_mentions(pid: u32, path: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = path.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}
