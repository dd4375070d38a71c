//! BullMQ mode: each record becomes a job, written exactly as BullMQ's own
//! `Queue.add(name, data, { jobId })` writes it, so that a stock BullMQ
//! `Worker` picks it up.
//!
//! The sink runs BullMQ's `addStandardJob` script itself (vendored verbatim
//! from `bullmq@5.81.5`, see `bullmq/README.md`) with the keys and the
//! msgpack-encoded arguments `Scripts.addJob` passes: the job hash
//! (`name`, `data`, `opts`, `timestamp`, `delay`, `priority`), the `wait`
//! list (or `paused`), the `marker` sorted set that wakes workers, the `id`
//! counter, the `meta` hash's `opts.maxLenEvents`, and the `added` and
//! `waiting` entries of the queue's `events` stream.
//!
//! * queue = the record's routed name (`outbox.event.${aggregatetype}` by
//!   default), keys `{prefix}:{queue}:…` (`prefix` is BullMQ's, `bull`);
//! * job name = the event type; job data = the payload (JSON as stored;
//!   `null` for none); job id = the event id, so BullMQ itself ignores a
//!   re-sent record while the job exists (its script replies the id and
//!   emits `duplicated`). A job removed after completion
//!   (`removeOnComplete`) no longer dedupes: keep completed jobs at least as
//!   long as the replay window.
//! * The other record fields (LSN, index, extra headers) have no place in a
//!   job added by `Queue.add`, and are not written.

use outbox_core::Record;

/// BullMQ's script, verbatim.
pub(crate) const SCRIPT: &str = include_str!("bullmq/addStandardJob-9.lua");

/// The BullMQ version whose `Queue.add` this mode reproduces (and the
/// Worker test runs).
pub const BULLMQ_VERSION: &str = "5.81.5";

/// The 9 keys of `addStandardJob`, in its order.
pub fn keys(prefix: &str, queue: &str) -> [String; 9] {
    [
        "wait",
        "paused",
        "meta",
        "id",
        "completed",
        "delayed",
        "active",
        "events",
        "marker",
    ]
    .map(|name| format!("{prefix}:{queue}:{name}"))
}

/// `ARGV[1]`: the msgpacked argument array of `Scripts.addJob` — the queue's
/// key prefix, the job id, the name, the timestamp (ms, packed as a double
/// like JavaScript's numbers), and five nils (no parent, no parent
/// dependencies, no parent data, no repeat key, no deduplication key).
pub fn args(prefix: &str, queue: &str, record: &Record, timestamp_ms: u64) -> Vec<u8> {
    let mut out = vec![0x99];
    str(&mut out, format!("{prefix}:{queue}:").as_bytes());
    str(&mut out, record.id.as_bytes());
    str(&mut out, name(record));
    out.push(0xcb);
    out.extend_from_slice(&(timestamp_ms as f64).to_bits().to_be_bytes());
    out.extend_from_slice(&[0xc0; 5]);
    out
}

/// `ARGV[2]`: the job data.
pub fn data(record: &Record) -> &[u8] {
    record.value.as_deref().unwrap_or(b"null")
}

/// `ARGV[3]`: the msgpacked options `Queue.add(name, data, { jobId })`
/// packs: `{ attempts: 0, jobId }`.
pub fn opts(record: &Record) -> Vec<u8> {
    let mut out = vec![0xde, 0x00, 0x02];
    str(&mut out, b"attempts");
    out.push(0x00);
    str(&mut out, b"jobId");
    str(&mut out, record.id.as_bytes());
    out
}

/// The job name: the event type.
fn name(record: &Record) -> &[u8] {
    record
        .headers
        .iter()
        .find(|(name, _)| name == outbox_core::header::TYPE)
        .map_or(&b""[..], |(_, value)| value.as_ref())
}

/// A msgpack string.
fn str(out: &mut Vec<u8>, s: &[u8]) {
    match s.len() {
        n if n < 32 => out.push(0xa0 | n as u8),
        n if n <= 0xff => out.extend_from_slice(&[0xd9, n as u8]),
        n if n <= 0xffff => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use outbox_core::{Lsn, Position};

    use super::*;

    fn record() -> Record {
        Record {
            topic: "outboxd-probe-q".into(),
            key: Bytes::from_static(b"agg-1"),
            value: Some(Bytes::from_static(b"{\"seq\":1}")),
            headers: vec![("type".into(), Bytes::from_static(b"OrderChanged"))],
            id: "id-1".into(),
            position: Position {
                commit_lsn: Lsn::new(1),
                index: 0,
            },
            timestamp_ms: None,
            partition: None,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes bullmq 5.81.5's `Queue.add('OrderChanged', {seq: 1}, {jobId:
    /// 'id-1'})` passed to `addStandardJob` on queue `outboxd-probe-q` with
    /// prefix `outboxd-probe` (captured from Node).
    #[test]
    fn arguments_are_byte_for_byte_those_of_queue_add() {
        assert_eq!(
            hex(&args("outboxd-probe", "outboxd-probe-q", &record(), 1_796_294_231_375)),
            "99be6f7574626f78642d70726f62653a6f7574626f78642d70726f62652d713aa469642d31ac4f726465724368616e676564\
             cb427a23b7ac54f000c0c0c0c0c0"
        );
        assert_eq!(
            hex(&opts(&record())),
            "de0002a8617474656d70747300a56a6f624964a469642d31"
        );
        assert_eq!(data(&record()), b"{\"seq\":1}");
        assert_eq!(keys("bull", "q")[8], "bull:q:marker");
    }
}
