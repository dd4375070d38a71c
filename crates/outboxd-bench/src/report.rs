//! The results: one row per scenario, printed as a table and written as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::consumer::Report;

/// Commit→ack latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Latency {
    pub(crate) fn of(samples: &[Duration]) -> Option<Self> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let rank = |p: f64| ms[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| Latency {
            samples: n as u64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: ms[n - 1],
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "samples": self.samples, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max })
    }

    pub(crate) fn from_json(value: &Value) -> Option<Self> {
        Some(Latency {
            samples: value["samples"].as_u64()?,
            p50: value["p50"].as_f64()?,
            p95: value["p95"].as_f64()?,
            p99: value["p99"].as_f64()?,
            max: value["max"].as_f64()?,
        })
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) report: Report,
    /// The reference's events/s on the same backlog.
    pub(crate) reference_eps: Option<f64>,
    /// Extra facts (backlog WAL size, achieved insert rate, …).
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(scenario: impl Into<String>, report: Report) -> Self {
        Row {
            scenario: scenario.into(),
            report,
            reference_eps: None,
            note: String::new(),
        }
    }

    pub(crate) fn eps(&self) -> f64 {
        self.report.events as f64 / self.report.seconds.max(1e-9)
    }

    fn ratio(&self) -> Option<f64> {
        self.reference_eps.map(|r| self.eps() / r)
    }

    pub(crate) fn json(&self) -> Value {
        let r = &self.report;
        json!({
            "scenario": self.scenario,
            "events": r.events,
            "seconds": r.seconds,
            "events_per_second": self.eps(),
            "ratio_to_reference": self.ratio(),
            "cpu_seconds": r.cpu_seconds,
            "walsender_cpu_seconds": r.walsender_cpu_seconds,
            "peak_rss_mib": r.peak_rss_mib,
            "latency_ms": r.latency.map(|l| l.json()),
            "note": self.note,
        })
    }
}

/// The table, as printed.
pub(crate) fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.scenario.len()).max().unwrap_or(8).max(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$} {:>9} {:>8} {:>9} {:>6} {:>6} {:>8} {:>8} {:>27}  note",
        "scenario",
        "events",
        "seconds",
        "events/s",
        "vs ref",
        "CPU s",
        "wals. s",
        "peak RSS",
        "latency ms p50/p95/p99/max"
    );
    for row in rows {
        let r = &row.report;
        let ratio = row
            .ratio()
            .map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_default();
        let walsender = r
            .walsender_cpu_seconds
            .map(|c| format!("{c:.1}"))
            .unwrap_or_default();
        let latency = r
            .latency
            .map(|l| format!("{:.1}/{:.1}/{:.1}/{:.1}", l.p50, l.p95, l.p99, l.max))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>8.2} {:>9.0} {:>6} {:>6.1} {:>8} {:>4.0} MiB {:>27}  {}",
            row.scenario,
            r.events,
            r.seconds,
            row.eps(),
            ratio,
            r.cpu_seconds,
            walsender,
            r.peak_rss_mib,
            latency,
            row.note,
        );
    }
    out
}
