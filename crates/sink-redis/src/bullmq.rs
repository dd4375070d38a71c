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
//!   long as the replay window. A record re-published by `outboxd replay`
//!   gets the job id `{event id} {outboxd.replay}` (as the Streams mode's
//!   dedupe id), so a replay adds the job once more, and only once.
//! * The record's headers (`id`, `type`, `aggregatetype`, `outboxd.lsn`,
//!   `outboxd.index`, extras, `outboxd.replay`, the dead-letter headers) and
//!   `aggregateid` go in the job's options under `outboxd`, as
//!   `Queue.add(name, data, { jobId, outboxd: { … } })` puts them: BullMQ
//!   keeps options it does not know, and a worker reads them as
//!   `job.opts.outboxd['outboxd.lsn']`.
//! * BullMQ refuses custom job ids that are integers or contain `:`, and
//!   queue names with `:` (`Queue.add` throws); such a record is refused
//!   for good ([`job_id`]).

use outbox_core::{DeliveryError, PermanentReason, Record};

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

/// The options key under which the record's headers travel.
pub const OPTS_KEY: &str = "outboxd";

/// The job id of `record`: its event id (with the replay marker for a
/// replayed record); or, for what `Queue.add` would throw on, the error
/// that refuses the record for good.
pub fn job_id(record: &Record) -> Result<String, DeliveryError> {
    if record.topic.contains(':') {
        return Err(DeliveryError::permanent(
            PermanentReason::InvalidDestination,
            format!(
                "queue name {:?} contains ':', which BullMQ refuses: route to names without ':' \
                 ([routing] topic)",
                record.topic
            ),
        ));
    }
    let id = crate::append::dedupe_id(record);
    let refuse = |why: &str| {
        Err(DeliveryError::permanent(
            PermanentReason::Malformed,
            why.replace("{id}", &id),
        ))
    };
    if id.parse::<i64>().is_ok_and(|n| n.to_string() == id) {
        return refuse(
            "event id \"{id}\" is an integer, which BullMQ refuses as a job id (it would collide with its \
             own numbered jobs): use non-numeric event ids (e.g. UUIDs) in BullMQ mode",
        );
    }
    if id.contains(':') {
        return refuse(
            "event id \"{id}\" contains ':', which BullMQ refuses in a job id: use event ids without ':' \
             in BullMQ mode",
        );
    }
    Ok(id)
}

/// `ARGV[1]`: the msgpacked argument array of `Scripts.addJob` — the queue's
/// key prefix, the job id, the name, the timestamp (ms, packed as a double
/// like JavaScript's numbers), and five nils (no parent, no parent
/// dependencies, no parent data, no repeat key, no deduplication key).
pub fn args(prefix: &str, queue: &str, job_id: &str, record: &Record, timestamp_ms: u64) -> Vec<u8> {
    let mut out = vec![0x99];
    str(&mut out, format!("{prefix}:{queue}:").as_bytes());
    str(&mut out, job_id.as_bytes());
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

/// `ARGV[3]`: the msgpacked options `Queue.add(name, data, { jobId,
/// outboxd })` packs: `{ attempts: 0, jobId, outboxd: { header: value, …,
/// aggregateid } }` (maps as msgpackr writes them: map16 always).
pub fn opts(job_id: &str, record: &Record) -> Vec<u8> {
    let mut out = vec![0xde, 0x00, 0x03];
    str(&mut out, b"attempts");
    out.push(0x00);
    str(&mut out, b"jobId");
    str(&mut out, job_id.as_bytes());
    str(&mut out, OPTS_KEY.as_bytes());
    let fields: Vec<_> = record
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_ref()))
        .chain([(crate::append::field::AGGREGATE_ID, record.key.as_ref())])
        .collect();
    out.push(0xde);
    // Header counts are small; a record with more than 65,535 headers keeps
    // the first ones (the map16 bound).
    let count = fields.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for (name, value) in fields.into_iter().take(count) {
        str(&mut out, name.as_bytes());
        str(&mut out, value);
    }
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
    /// 'id-1', outboxd: {type: 'OrderChanged', aggregateid: 'agg-1'}})`
    /// passed to `addStandardJob` on queue `outboxd-probe-q` with prefix
    /// `outboxd-probe` (captured from Node).
    #[test]
    fn arguments_are_byte_for_byte_those_of_queue_add() {
        let id = job_id(&record()).unwrap();
        assert_eq!(
            hex(&args("outboxd-probe", "outboxd-probe-q", &id, &record(), 1_796_294_231_375)),
            "99be6f7574626f78642d70726f62653a6f7574626f78642d70726f62652d713aa469642d31ac4f726465724368616e676564\
             cb427a23b7ac54f000c0c0c0c0c0"
        );
        assert_eq!(
            hex(&opts(&id, &record())),
            "de0003a8617474656d70747300a56a6f624964a469642d31a76f7574626f7864de0002a474797065ac4f72646572\
             4368616e676564ab6167677265676174656964a56167672d31"
        );
        assert_eq!(data(&record()), b"{\"seq\":1}");
        assert_eq!(keys("bull", "q")[8], "bull:q:marker");
    }

    #[test]
    fn job_ids_bullmq_refuses_are_refused_and_replays_get_their_own() {
        let mut r = record();
        r.id = "42".into();
        let refused = |r: &Record| job_id(r).unwrap_err().to_string();
        assert!(refused(&r).contains("is an integer"), "{}", refused(&r));
        r.id = "a:b".into();
        assert!(refused(&r).contains("contains ':'"), "{}", refused(&r));
        r.id = "id-1".into();
        r.topic = "bull:q".into();
        assert!(refused(&r).contains("queue name"), "{}", refused(&r));
        r.topic = "q".into();
        r.id = "042".into();
        assert_eq!(
            job_id(&r).unwrap(),
            "042",
            "BullMQ takes what does not read back as the integer"
        );
        r.id = "id-1".into();
        r.headers.push((
            outbox_core::header::REPLAY.into(),
            Bytes::from_static(b"from=0/10 to=0/20"),
        ));
        assert_eq!(job_id(&r).unwrap(), "id-1 from=0/10 to=0/20");
    }
}
