//! The idempotent append: a Lua script that checks and records the event id
//! in the stream's dedupe set and appends the entry, atomically.
//!
//! Redis runs a script as one unit, so "already appended?" and "append" can
//! not be split by a crash or a reconnect: a record re-sent after either is
//! either appended once or recognised. The dedupe set is a sorted set per
//! stream (`outboxd.dedupe:{stream}`), event id → the server's time of the
//! append; entries older than the TTL are dropped on each append and the key
//! itself expires after the TTL when the stream goes quiet.

use bytes::Bytes;
use outbox_core::Record;

/// The script. `KEYS[1]` the stream, `KEYS[2]` its dedupe set; `ARGV[1]`
/// the dedupe id, `ARGV[2]` the TTL in seconds, `ARGV[3]` the `MAXLEN ~`
/// threshold (0: no trimming), then field, value, … Replies the new entry
/// id, or nil when the id was appended within the TTL.
pub const SCRIPT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return false
end
local args = {'XADD', KEYS[1]}
if ARGV[3] ~= '0' then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[3]
end
args[#args + 1] = '*'
for i = 4, #ARGV do
  args[#args + 1] = ARGV[i]
end
local entry = redis.call(unpack(args))
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl)
return entry
"#;

/// Field names of a stream entry besides the record's headers.
pub mod field {
    /// The aggregate id (the record's key).
    pub const AGGREGATE_ID: &str = "aggregateid";
    /// The payload, bytes as stored; absent for a tombstone.
    pub const PAYLOAD: &str = "payload";
}

/// The dedupe set of `stream`.
pub fn dedupe_key(stream: &str) -> String {
    format!("outboxd.dedupe:{{{stream}}}")
}

/// What identifies a record for deduplication: its event id, and for a
/// replayed record also its replay marker, so that `outboxd replay`
/// re-publishes events once more (and a replay re-run after a crash does not
/// append them twice).
pub fn dedupe_id(record: &Record) -> String {
    match record
        .headers
        .iter()
        .find(|(name, _)| name == outbox_core::header::REPLAY)
    {
        Some((_, replay)) => format!("{} {}", record.id, String::from_utf8_lossy(replay)),
        None => record.id.clone(),
    }
}

/// The entry's fields: the headers in order (`id`, `type`, `aggregatetype`,
/// `outboxd.lsn`, `outboxd.index`, extras, …), then `aggregateid` and
/// `payload`.
pub fn fields(record: &Record) -> Vec<(&str, &Bytes)> {
    let mut fields: Vec<(&str, &Bytes)> = record
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value))
        .collect();
    fields.push((field::AGGREGATE_ID, &record.key));
    if let Some(value) = &record.value {
        fields.push((field::PAYLOAD, value));
    }
    fields
}

/// Bytes of the entry's names and values (what `max_record_bytes` limits).
pub fn size(record: &Record) -> usize {
    fields(record)
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}
