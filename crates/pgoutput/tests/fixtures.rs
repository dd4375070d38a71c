//! One test per golden fixture, each asserting the whole decoded value, and
//! each re-encoding to the captured bytes. Values come from the SQL in
//! `fixtures/README.md`; positions, xids and times were cross-checked against
//! what the server reported for the same rows (the manifest's columns, also
//! checked by `manifest_positions_match_decoded_values`).

use bytes::Bytes;
use pgoutput::LogicalReplicationMessage as M;
use pgoutput::*;

use crate::fixture::{self, Decoded};

const OUTBOX: Oid = 16389;
const FULL_IDENT: Oid = 16397;
const TOASTY: Oid = 16404;
const PARENT: Oid = 16412;
const CHILD: Oid = 16418;
const COUNTER: Oid = 16427;
const TYPED: Oid = 16433;
const MOOD: Oid = 16385;
/// Type OIDs of pg_catalog.
const INT4: Oid = 23;
const TEXT: Oid = 25;
const UUID: Oid = 2950;
const JSONB: Oid = 3802;
const TIMESTAMPTZ: Oid = 1184;

/// Decodes a fixture, checks it re-encodes to its bytes, returns the message.
fn decode(name: &str) -> M {
    let f = fixture::load(name);
    let decoded = f.decode().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        decoded.encode(),
        f.bytes,
        "{name} does not re-encode to the captured bytes"
    );
    match decoded {
        Decoded::Logical(m) => m,
        Decoded::Frame(f) => panic!("{name} is a frame: {f:?}"),
    }
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

fn ts(micros: i64) -> PgTimestamp {
    PgTimestamp::from_micros(micros)
}

fn t(s: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn tuple(columns: Vec<ColumnValue>) -> TupleData {
    TupleData { columns }
}

fn col(flags: u8, name: &str, type_id: Oid) -> Column {
    Column {
        flags,
        name: name.into(),
        type_id,
        type_modifier: -1,
    }
}

fn outbox_columns() -> Vec<Column> {
    vec![
        col(1, "id", UUID),
        col(0, "aggregatetype", TEXT),
        col(0, "aggregateid", TEXT),
        col(0, "type", TEXT),
        col(0, "payload", JSONB),
        col(0, "created_at", TIMESTAMPTZ),
    ]
}

const CREATED_AT: &str = "2026-11-25 02:00:00+00";

fn outbox_row(id: &str, aggregate: &str, event_type: &str, payload: Option<&str>) -> TupleData {
    tuple(vec![
        t(id),
        t("order"),
        t(aggregate),
        t(event_type),
        payload.map_or(ColumnValue::Null, t),
        t(CREATED_AT),
    ])
}

fn key_only(id: &str) -> TupleData {
    use ColumnValue::Null;
    tuple(vec![t(id), Null, Null, Null, Null, Null])
}

// ---- protocol 1 ---------------------------------------------------------------------------

#[test]
fn begin_v1_basic() {
    let expected = Begin {
        final_lsn: lsn("0/152F6D8"),
        commit_time: ts(848_889_736_055_948),
        xid: 725,
    };
    assert_eq!(decode("begin-v1-basic"), M::Begin(expected));
}

#[test]
fn commit_v1_basic() {
    let expected = Commit {
        flags: 0,
        commit_lsn: lsn("0/152F6D8"),
        end_lsn: lsn("0/152F708"),
        commit_time: ts(848_889_736_055_948),
    };
    assert_eq!(decode("commit-v1-basic"), M::Commit(expected));
}

#[test]
fn relation_v1_outbox() {
    let expected = Relation {
        xid: None,
        id: OUTBOX,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: outbox_columns(),
    };
    assert_eq!(decode("relation-v1-outbox"), M::Relation(expected));
}

#[test]
fn relation_v1_identity_full() {
    let expected = Relation {
        xid: None,
        id: FULL_IDENT,
        namespace: "public".into(),
        name: "full_ident".into(),
        replica_identity: ReplicaIdentity::Full,
        // With REPLICA IDENTITY FULL every column is part of the identity.
        columns: vec![col(1, "id", INT4), col(1, "v", TEXT)],
    };
    assert_eq!(decode("relation-v1-identity_full"), M::Relation(expected));
}

#[test]
fn relation_v1_custom_type() {
    let expected = Relation {
        xid: None,
        id: TYPED,
        namespace: "public".into(),
        name: "typed".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col(1, "id", INT4), col(0, "m", MOOD)],
    };
    assert_eq!(decode("relation-v1-custom_type"), M::Relation(expected));
}

#[test]
fn type_v1_enum() {
    let expected = Type {
        xid: None,
        id: MOOD,
        namespace: "public".into(),
        name: "mood".into(),
    };
    assert_eq!(decode("type-v1-enum"), M::Type(expected));
}

#[test]
fn insert_v1_outbox() {
    let new = outbox_row(
        "6f1c2a52-1b0e-4d7c-9a3e-000000000001",
        "order-1",
        "OrderCreated",
        Some(r#"{"total": 10}"#),
    );
    assert_eq!(
        decode("insert-v1-outbox"),
        M::Insert(Insert {
            xid: None,
            relation_id: OUTBOX,
            new
        })
    );
}

#[test]
fn insert_v1_nulls() {
    let new = outbox_row(
        "6f1c2a52-1b0e-4d7c-9a3e-000000000002",
        "order-2",
        "OrderDeleted",
        None,
    );
    assert_eq!(
        decode("insert-v1-nulls"),
        M::Insert(Insert {
            xid: None,
            relation_id: OUTBOX,
            new
        })
    );
}

/// The 1 MiB TOASTed value (`repeat('outboxd-', 131072)`), captured on a
/// cluster of its own where `toasty` got OID 16384; stored gzip-compressed.
#[test]
fn insert_v1_one_megabyte() {
    let f = fixture::load_gz("insert-v1-one_megabyte");
    assert_eq!(
        f.bytes.len(),
        1_048_601,
        "tag, OID, 'N', 3 columns, 1 MiB of text"
    );
    let decoded = f.decode().unwrap();
    assert_eq!(decoded.encode(), f.bytes);
    assert_eq!(
        decoded,
        Decoded::Logical(M::Insert(Insert {
            xid: None,
            relation_id: 16384,
            new: tuple(vec![t("2"), t("0"), t(&"outboxd-".repeat(131_072))]),
        }))
    );
}

#[test]
fn insert_v1_binary() {
    let b = |bytes: &[u8]| ColumnValue::Binary(Bytes::copy_from_slice(bytes));
    let uuid = [
        0x6f, 0x1c, 0x2a, 0x52, 0x1b, 0x0e, 0x4d, 0x7c, 0x9a, 0x3e, 0, 0, 0, 0, 0, 1,
    ];
    // jsonb's send format: version 1, then the text.
    let jsonb = [&[1u8][..], br#"{"total": 10}"#].concat();
    // timestamptz's send format: microseconds since 2000-01-01 (2026-11-25 02:00:00 UTC).
    let created_at = (1_795_572_000i64 - 946_684_800) * 1_000_000;
    let new = tuple(vec![
        b(&uuid),
        b(b"order"),
        b(b"order-1"),
        b(b"OrderCreated"),
        b(&jsonb),
        b(&created_at.to_be_bytes()),
    ]);
    assert_eq!(
        decode("insert-v1-binary"),
        M::Insert(Insert {
            xid: None,
            relation_id: OUTBOX,
            new
        })
    );
}

#[test]
fn update_v1_identity_default() {
    let new = outbox_row(
        "6f1c2a52-1b0e-4d7c-9a3e-000000000001",
        "order-1",
        "OrderUpdated",
        Some(r#"{"total": 10}"#),
    );
    let expected = Update {
        xid: None,
        relation_id: OUTBOX,
        old: None,
        new,
    };
    assert_eq!(decode("update-v1-identity_default"), M::Update(expected));
}

#[test]
fn update_v1_key_changed() {
    let expected = Update {
        xid: None,
        relation_id: OUTBOX,
        old: Some(OldTuple::Key(key_only("6f1c2a52-1b0e-4d7c-9a3e-000000000001"))),
        new: outbox_row(
            "6f1c2a52-1b0e-4d7c-9a3e-00000000000a",
            "order-1",
            "OrderUpdated",
            Some(r#"{"total": 10}"#),
        ),
    };
    assert_eq!(decode("update-v1-key_changed"), M::Update(expected));
}

#[test]
fn update_v1_identity_full() {
    let expected = Update {
        xid: None,
        relation_id: FULL_IDENT,
        old: Some(OldTuple::Full(tuple(vec![t("1"), t("one")]))),
        new: tuple(vec![t("1"), t("uno")]),
    };
    assert_eq!(decode("update-v1-identity_full"), M::Update(expected));
}

#[test]
fn update_v1_unchanged_toast() {
    let expected = Update {
        xid: None,
        relation_id: TOASTY,
        old: None,
        new: tuple(vec![t("1"), t("2"), ColumnValue::UnchangedToast]),
    };
    assert_eq!(decode("update-v1-unchanged_toast"), M::Update(expected));
}

#[test]
fn delete_v1_identity_default() {
    let expected = Delete {
        xid: None,
        relation_id: OUTBOX,
        old: OldTuple::Key(key_only("6f1c2a52-1b0e-4d7c-9a3e-000000000002")),
    };
    assert_eq!(decode("delete-v1-identity_default"), M::Delete(expected));
}

#[test]
fn delete_v1_identity_full() {
    let expected = Delete {
        xid: None,
        relation_id: FULL_IDENT,
        old: OldTuple::Full(tuple(vec![t("1"), t("uno")])),
    };
    assert_eq!(decode("delete-v1-identity_full"), M::Delete(expected));
}

#[test]
fn truncate_v1_cascade_restart_identity() {
    let expected = Truncate {
        xid: None,
        options: TruncateOptions {
            cascade: true,
            restart_identity: true,
        },
        relation_ids: vec![PARENT, CHILD],
    };
    assert_eq!(
        decode("truncate-v1-cascade_restart_identity"),
        M::Truncate(expected)
    );
}

#[test]
fn truncate_v1_restart_identity() {
    let expected = Truncate {
        xid: None,
        options: TruncateOptions {
            cascade: false,
            restart_identity: true,
        },
        relation_ids: vec![COUNTER],
    };
    assert_eq!(decode("truncate-v1-restart_identity"), M::Truncate(expected));
}

#[test]
fn truncate_v1_plain() {
    let expected = Truncate {
        xid: None,
        options: TruncateOptions::default(),
        relation_ids: vec![CHILD],
    };
    assert_eq!(decode("truncate-v1-plain"), M::Truncate(expected));
}

#[test]
fn message_v1_transactional() {
    let expected = Message {
        xid: None,
        transactional: true,
        lsn: lsn("0/15328B0"),
        prefix: "outboxd".into(),
        content: Bytes::from_static(br#"{"id": 1}"#),
    };
    assert_eq!(decode("message-v1-transactional"), M::Message(expected));
}

#[test]
fn message_v1_non_transactional() {
    let expected = Message {
        xid: None,
        transactional: false,
        lsn: lsn("0/1532928"),
        prefix: "outboxd".into(),
        content: Bytes::from_static(b"heartbeat"),
    };
    assert_eq!(decode("message-v1-non_transactional"), M::Message(expected));
}

#[test]
fn origin_v1_basic() {
    let expected = Origin {
        commit_lsn: lsn("0/ABCDEF"),
        name: "origin_a".into(),
    };
    assert_eq!(decode("origin-v1-basic"), M::Origin(expected));
}

// ---- protocol 2: streaming -------------------------------------------------------------------

#[test]
fn stream_start_v2_first_segment() {
    assert_eq!(
        decode("stream_start-v2-first_segment"),
        M::StreamStart(StreamStart {
            xid: 740,
            first_segment: true
        })
    );
}

#[test]
fn stream_start_v2_later_segment() {
    assert_eq!(
        decode("stream_start-v2-later_segment"),
        M::StreamStart(StreamStart {
            xid: 740,
            first_segment: false
        })
    );
}

#[test]
fn stream_stop_v2_basic() {
    assert_eq!(decode("stream_stop-v2-basic"), M::StreamStop);
}

#[test]
fn relation_v2_streamed() {
    let expected = Relation {
        xid: Some(740),
        id: OUTBOX,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: outbox_columns(),
    };
    assert_eq!(decode("relation-v2-streamed"), M::Relation(expected));
}

#[test]
fn insert_v2_streamed() {
    let payload = format!(r#"{{"pad": "{}"}}"#, "x".repeat(100));
    let new = outbox_row(
        "6f1c2a52-1b0e-4d7c-9a3e-0000000003e8",
        "order-1000",
        "OrderCreated",
        Some(&payload),
    );
    assert_eq!(
        decode("insert-v2-streamed"),
        M::Insert(Insert {
            xid: Some(740),
            relation_id: OUTBOX,
            new
        })
    );
}

#[test]
fn message_v2_transactional_streamed() {
    let expected = Message {
        xid: Some(740),
        transactional: true,
        lsn: lsn("0/16B59D8"),
        prefix: "outboxd".into(),
        content: Bytes::from_static(b"in stream"),
    };
    assert_eq!(decode("message-v2-transactional_streamed"), M::Message(expected));
}

#[test]
fn stream_commit_v2_basic() {
    let expected = StreamCommit {
        xid: 740,
        flags: 0,
        commit_lsn: lsn("0/1726820"),
        end_lsn: lsn("0/1726850"),
        commit_time: ts(848_889_736_138_887),
    };
    assert_eq!(decode("stream_commit-v2-basic"), M::StreamCommit(expected));
}

#[test]
fn stream_abort_v2_transaction() {
    assert_eq!(
        decode("stream_abort-v2-transaction"),
        M::StreamAbort(StreamAbort {
            xid: 741,
            subxid: 741,
            abort: None
        })
    );
}

#[test]
fn stream_abort_v2_subtransaction() {
    let expected = StreamAbort {
        xid: 742,
        subxid: 743,
        abort: None,
    };
    assert_eq!(decode("stream_abort-v2-subtransaction"), M::StreamAbort(expected));
}

// ---- protocol 3: two-phase ---------------------------------------------------------------------

#[test]
fn begin_prepare_v3_basic() {
    let expected = BeginPrepare {
        prepare_lsn: lsn("0/1809A90"),
        end_lsn: lsn("0/1809BB0"),
        prepare_time: ts(848_889_736_173_885),
        xid: 745,
        gid: "gid-commit".into(),
    };
    assert_eq!(decode("begin_prepare-v3-basic"), M::BeginPrepare(expected));
}

#[test]
fn prepare_v3_basic() {
    let expected = Prepare {
        flags: 0,
        prepare_lsn: lsn("0/1809A90"),
        end_lsn: lsn("0/1809BB0"),
        prepare_time: ts(848_889_736_173_885),
        xid: 745,
        gid: "gid-commit".into(),
    };
    assert_eq!(decode("prepare-v3-basic"), M::Prepare(expected));
}

#[test]
fn commit_prepared_v3_basic() {
    let expected = CommitPrepared {
        flags: 0,
        commit_lsn: lsn("0/1809BB0"),
        end_lsn: lsn("0/1809BF0"),
        commit_time: ts(848_889_736_173_950),
        xid: 745,
        gid: "gid-commit".into(),
    };
    assert_eq!(decode("commit_prepared-v3-basic"), M::CommitPrepared(expected));
}

#[test]
fn rollback_prepared_v3_basic() {
    let expected = RollbackPrepared {
        flags: 0,
        prepare_end_lsn: lsn("0/1809D90"),
        rollback_end_lsn: lsn("0/1809DD0"),
        prepare_time: ts(848_889_736_174_070),
        rollback_time: ts(848_889_736_174_111),
        xid: 746,
        gid: "gid-rollback".into(),
    };
    assert_eq!(
        decode("rollback_prepared-v3-basic"),
        M::RollbackPrepared(expected)
    );
}

#[test]
fn stream_prepare_v3_basic() {
    let expected = Prepare {
        flags: 0,
        prepare_lsn: lsn("0/187AC18"),
        end_lsn: lsn("0/187AD18"),
        prepare_time: ts(848_889_736_177_495),
        xid: 747,
        gid: "gid-stream".into(),
    };
    assert_eq!(decode("stream_prepare-v3-basic"), M::StreamPrepare(expected));
}

// ---- protocol 4 (hand-made) --------------------------------------------------------------------

#[test]
fn stream_abort_v4_parallel_handmade() {
    let expected = StreamAbort {
        xid: 745,
        subxid: 745,
        abort: Some(AbortInfo {
            lsn: lsn("1/1A2B3C8"),
            time: ts(817_430_400_123_456),
        }),
    };
    assert_eq!(
        decode("stream_abort-v4-parallel_handmade"),
        M::StreamAbort(expected)
    );
}

#[test]
fn stream_abort_v4_parallel_subxact_handmade() {
    let expected = StreamAbort {
        xid: 745,
        subxid: 747,
        abort: Some(AbortInfo {
            lsn: lsn("1/1A2B100"),
            time: ts(817_430_400_000_001),
        }),
    };
    assert_eq!(
        decode("stream_abort-v4-parallel_subxact_handmade"),
        M::StreamAbort(expected)
    );
}

// ---- coverage and the server's own view -----------------------------------------------------

/// Every message kind of protocols 1-4 has at least one fixture, and every
/// fixture has a test above.
#[test]
fn every_message_kind_has_a_fixture_and_every_fixture_a_test() {
    let source = include_str!("fixtures.rs");
    let names: Vec<String> = fixture::all().into_iter().map(|f| f.name).collect();
    for name in &names {
        assert!(
            source.contains(&format!("fn {}()", name.replace('-', "_"))),
            "fixture {name} has no test"
        );
    }
    for tag in (0..=255u8).filter(|t| message_name(*t).is_some()) {
        let kind = message_name(tag).unwrap().to_lowercase().replace(' ', "_");
        assert!(
            names.iter().any(|n| n.starts_with(&format!("{kind}-"))),
            "no fixture for {kind}"
        );
    }
    for version in 1..=4 {
        assert!(
            names.iter().any(|n| n.contains(&format!("-v{version}-"))),
            "no fixture of protocol {version}"
        );
    }
}

/// The manifest records, per fixture, the xid and commit time PostgreSQL
/// reported for the row (`pg_logical_slot_peek_binary_changes`, and
/// `pg_xact_commit_timestamp`); for the commit-type messages the row's LSN is
/// the end of the transaction. The decoded values must agree.
#[test]
fn manifest_positions_match_decoded_values() {
    let manifest = std::fs::read_to_string(fixture::dir().join("README.md")).unwrap();
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| l.starts_with("| `") && l.contains(".bin`"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 9 {
            continue; // the hand-made table
        }
        let name = cells[1].trim_matches('`').trim_end_matches(".bin");
        let (row_lsn, row_xid, commit_us) = (lsn(cells[5]), cells[6].parse::<u32>().unwrap(), cells[7]);
        let commit_time = commit_us.parse::<i64>().ok().map(ts);
        match decode(name) {
            M::Begin(b) => {
                assert_eq!((b.xid, Some(b.commit_time)), (row_xid, commit_time), "{name}");
            }
            M::Commit(c) => assert_eq!((c.end_lsn, Some(c.commit_time)), (row_lsn, commit_time), "{name}"),
            M::StreamCommit(c) => {
                assert_eq!(
                    (c.xid, c.end_lsn, Some(c.commit_time)),
                    (row_xid, row_lsn, commit_time),
                    "{name}"
                )
            }
            M::CommitPrepared(c) => {
                assert_eq!(
                    (c.xid, c.end_lsn, Some(c.commit_time)),
                    (row_xid, row_lsn, commit_time),
                    "{name}"
                )
            }
            M::Prepare(p) | M::StreamPrepare(p) => {
                assert_eq!((p.xid, p.end_lsn), (row_xid, row_lsn), "{name}")
            }
            M::RollbackPrepared(r) => assert_eq!((r.xid, r.rollback_end_lsn), (row_xid, row_lsn), "{name}"),
            M::BeginPrepare(b) => assert_eq!(b.xid, row_xid, "{name}"),
            M::StreamStart(s) => assert_eq!(s.xid, row_xid, "{name}"),
            M::Insert(Insert { xid: Some(x), .. }) | M::Relation(Relation { xid: Some(x), .. }) => {
                assert_eq!(x, row_xid, "{name}")
            }
            M::Message(m) if m.transactional => assert_eq!(m.lsn, row_lsn, "{name}"),
            _ => continue,
        }
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} fixtures cross-checked");
}
