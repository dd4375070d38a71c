//! CPU time and peak memory of processes, read from `/proc` (Linux): no
//! `unsafe`, no libc. Every figure is a process's own, so the benchmark runs
//! each outboxd consumer in a child process of its own.

use std::time::Duration;

/// Clock ticks per second in `/proc/*/stat` (`USER_HZ`, fixed at 100 in
/// Linux's user-space ABI whatever the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// `utime`, `stime`, `cutime`, `cstime` of `/proc/<pid>/stat`, in seconds.
fn times(pid: &str) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may contain spaces;
    // what follows starts at field 3, so field n is at index n - 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok().map(|t| t / USER_HZ);
    Some([field(14)?, field(15)?, field(16)?, field(17)?])
}

/// User + system CPU seconds of this process, all threads.
pub(crate) fn own_cpu_seconds() -> f64 {
    times("self").map_or(0.0, |t| t[0] + t[1])
}

/// User + system CPU seconds of this process's children that have been
/// waited for (`cutime + cstime`): the difference around one `wait` is that
/// child's CPU, exactly.
pub(crate) fn reaped_children_cpu_seconds() -> f64 {
    times("self").map_or(0.0, |t| t[2] + t[3])
}

/// User + system CPU seconds of another process, if it still exists.
pub(crate) fn cpu_seconds_of(pid: u32) -> Option<f64> {
    times(&pid.to_string()).map(|t| t[0] + t[1])
}

/// Peak resident set size (`VmHWM`) in MiB of `pid` (`"self"` for this process).
pub(crate) fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Samples a process's CPU and peak RSS until it exits; the last sample
/// before it exits is the figure (at most one interval short of the truth;
/// `VmHWM` is monotonic and the CPU of the final interval is small next to
/// seconds of work).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sampled {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
}

pub(crate) async fn sample_until_exit(pid: u32) -> Sampled {
    let mut last = Sampled::default();
    let path = pid.to_string();
    loop {
        match cpu_seconds_of(pid) {
            Some(cpu) => {
                last.cpu_seconds = Some(cpu);
                if let Some(rss) = peak_rss_mib(&path) {
                    last.peak_rss_mib = Some(rss);
                }
            }
            None => return last,
        }
        // A zombie (exited, not yet reaped) keeps its stat but no longer runs.
        if std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true)
        {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
