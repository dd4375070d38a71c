//! An encoder for every pgoutput message, for tests and fuzzing only
//! (feature `encode`). It writes exactly the layout the decoder reads, so
//! `decode(encode(m)) == m` and, for anything the decoder accepts,
//! `encode(decode(b)) == b`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::decoder::tag;
use crate::message::*;

impl LogicalReplicationMessage {
    /// The message as Postgres would send it. Change messages with `xid: Some`
    /// are laid out as inside a streamed block; a Stream Abort with `abort: Some`
    /// as under protocol 4 parallel streaming.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        use LogicalReplicationMessage as M;
        match self {
            M::Begin(m) => {
                b.put_u8(tag::BEGIN);
                b.put_u64(m.final_lsn.as_u64());
                b.put_i64(m.commit_time.as_micros());
                b.put_u32(m.xid);
            }
            M::Commit(m) => {
                b.put_u8(tag::COMMIT);
                b.put_u8(m.flags);
                b.put_u64(m.commit_lsn.as_u64());
                b.put_u64(m.end_lsn.as_u64());
                b.put_i64(m.commit_time.as_micros());
            }
            M::Origin(m) => {
                b.put_u8(tag::ORIGIN);
                b.put_u64(m.commit_lsn.as_u64());
                put_string(&mut b, &m.name);
            }
            M::Relation(m) => {
                b.put_u8(tag::RELATION);
                put_xid(&mut b, m.xid);
                b.put_u32(m.id);
                put_string(&mut b, &m.namespace);
                put_string(&mut b, &m.name);
                b.put_u8(m.replica_identity.as_byte());
                b.put_i16(count_i16(m.columns.len()));
                for c in &m.columns {
                    b.put_u8(c.flags);
                    put_string(&mut b, &c.name);
                    b.put_u32(c.type_id);
                    b.put_i32(c.type_modifier);
                }
            }
            M::Type(m) => {
                b.put_u8(tag::TYPE);
                put_xid(&mut b, m.xid);
                b.put_u32(m.id);
                put_string(&mut b, &m.namespace);
                put_string(&mut b, &m.name);
            }
            M::Insert(m) => {
                b.put_u8(tag::INSERT);
                put_xid(&mut b, m.xid);
                b.put_u32(m.relation_id);
                b.put_u8(b'N');
                put_tuple(&mut b, &m.new);
            }
            M::Update(m) => {
                b.put_u8(tag::UPDATE);
                put_xid(&mut b, m.xid);
                b.put_u32(m.relation_id);
                if let Some(old) = &m.old {
                    put_old(&mut b, old);
                }
                b.put_u8(b'N');
                put_tuple(&mut b, &m.new);
            }
            M::Delete(m) => {
                b.put_u8(tag::DELETE);
                put_xid(&mut b, m.xid);
                b.put_u32(m.relation_id);
                put_old(&mut b, &m.old);
            }
            M::Truncate(m) => {
                b.put_u8(tag::TRUNCATE);
                put_xid(&mut b, m.xid);
                b.put_i32(i32::try_from(m.relation_ids.len()).unwrap_or(i32::MAX));
                b.put_u8(m.options.bits());
                for id in &m.relation_ids {
                    b.put_u32(*id);
                }
            }
            M::Message(m) => {
                b.put_u8(tag::MESSAGE);
                put_xid(&mut b, m.xid);
                b.put_u8(u8::from(m.transactional));
                b.put_u64(m.lsn.as_u64());
                put_string(&mut b, &m.prefix);
                put_bytes(&mut b, &m.content);
            }
            M::StreamStart(m) => {
                b.put_u8(tag::STREAM_START);
                b.put_u32(m.xid);
                b.put_u8(u8::from(m.first_segment));
            }
            M::StreamStop => b.put_u8(tag::STREAM_STOP),
            M::StreamCommit(m) => {
                b.put_u8(tag::STREAM_COMMIT);
                b.put_u32(m.xid);
                b.put_u8(m.flags);
                b.put_u64(m.commit_lsn.as_u64());
                b.put_u64(m.end_lsn.as_u64());
                b.put_i64(m.commit_time.as_micros());
            }
            M::StreamAbort(m) => {
                b.put_u8(tag::STREAM_ABORT);
                b.put_u32(m.xid);
                b.put_u32(m.subxid);
                if let Some(abort) = &m.abort {
                    b.put_u64(abort.lsn.as_u64());
                    b.put_i64(abort.time.as_micros());
                }
            }
            M::BeginPrepare(m) => {
                b.put_u8(tag::BEGIN_PREPARE);
                b.put_u64(m.prepare_lsn.as_u64());
                b.put_u64(m.end_lsn.as_u64());
                b.put_i64(m.prepare_time.as_micros());
                b.put_u32(m.xid);
                put_string(&mut b, &m.gid);
            }
            M::Prepare(m) => put_prepare(&mut b, tag::PREPARE, m),
            M::StreamPrepare(m) => put_prepare(&mut b, tag::STREAM_PREPARE, m),
            M::CommitPrepared(m) => {
                b.put_u8(tag::COMMIT_PREPARED);
                b.put_u8(m.flags);
                b.put_u64(m.commit_lsn.as_u64());
                b.put_u64(m.end_lsn.as_u64());
                b.put_i64(m.commit_time.as_micros());
                b.put_u32(m.xid);
                put_string(&mut b, &m.gid);
            }
            M::RollbackPrepared(m) => {
                b.put_u8(tag::ROLLBACK_PREPARED);
                b.put_u8(m.flags);
                b.put_u64(m.prepare_end_lsn.as_u64());
                b.put_u64(m.rollback_end_lsn.as_u64());
                b.put_i64(m.prepare_time.as_micros());
                b.put_i64(m.rollback_time.as_micros());
                b.put_u32(m.xid);
                put_string(&mut b, &m.gid);
            }
        }
        b.freeze()
    }
}

fn count_i16(len: usize) -> i16 {
    i16::try_from(len).unwrap_or(i16::MAX)
}

fn put_xid(b: &mut BytesMut, xid: Option<Xid>) {
    if let Some(xid) = xid {
        b.put_u32(xid);
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
    b.put_slice(bytes);
}

fn put_old(b: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            b.put_u8(b'K');
            put_tuple(b, t);
        }
        OldTuple::Full(t) => {
            b.put_u8(b'O');
            put_tuple(b, t);
        }
    }
}

fn put_tuple(b: &mut BytesMut, t: &TupleData) {
    b.put_i16(count_i16(t.columns.len()));
    for c in &t.columns {
        match c {
            ColumnValue::Null => b.put_u8(b'n'),
            ColumnValue::UnchangedToast => b.put_u8(b'u'),
            ColumnValue::Text(v) => {
                b.put_u8(b't');
                put_bytes(b, v);
            }
            ColumnValue::Binary(v) => {
                b.put_u8(b'b');
                put_bytes(b, v);
            }
        }
    }
}

fn put_prepare(b: &mut BytesMut, tag: u8, m: &Prepare) {
    b.put_u8(tag);
    b.put_u8(m.flags);
    b.put_u64(m.prepare_lsn.as_u64());
    b.put_u64(m.end_lsn.as_u64());
    b.put_i64(m.prepare_time.as_micros());
    b.put_u32(m.xid);
    put_string(b, &m.gid);
}
