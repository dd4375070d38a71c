//! Property tests: any message survives encode → decode unchanged, and any
//! bytes the decoder accepts re-encode to themselves.

use bytes::Bytes;
use pgoutput::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn::new)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp::from_micros)
}

/// Names: any UTF-8 without NUL (NUL terminates strings on the wire).
fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn tuple() -> impl Strategy<Value = TupleData> {
    let value = prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        bytes(40).prop_map(ColumnValue::Text),
        bytes(40).prop_map(ColumnValue::Binary),
    ];
    vec(value, 0..8).prop_map(|columns| TupleData { columns })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![tuple().prop_map(OldTuple::Key), tuple().prop_map(OldTuple::Full)]
}

fn identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn column() -> impl Strategy<Value = Column> {
    (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(|(flags, name, type_id, type_modifier)| {
        Column {
            flags,
            name,
            type_id,
            type_modifier,
        }
    })
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
        |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        },
    )
}

/// Change messages, laid out for inside (`xid = Some`) or outside a streamed block.
fn change(xid: Option<Xid>) -> BoxedStrategy<LogicalReplicationMessage> {
    use LogicalReplicationMessage as M;
    prop_oneof![
        (any::<u32>(), name(), name(), identity(), vec(column(), 0..6)).prop_map(
            move |(id, namespace, name, replica_identity, columns)| M::Relation(Relation {
                xid,
                id,
                namespace,
                name,
                replica_identity,
                columns
            })
        ),
        (any::<u32>(), name(), name()).prop_map(move |(id, namespace, name)| M::Type(Type {
            xid,
            id,
            namespace,
            name
        })),
        (any::<u32>(), tuple()).prop_map(move |(relation_id, new)| M::Insert(Insert {
            xid,
            relation_id,
            new
        })),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(
            move |(relation_id, old, new)| M::Update(Update {
                xid,
                relation_id,
                old,
                new
            })
        ),
        (any::<u32>(), old_tuple()).prop_map(move |(relation_id, old)| M::Delete(Delete {
            xid,
            relation_id,
            old
        })),
        (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..6)).prop_map(
            move |(cascade, restart_identity, relation_ids)| M::Truncate(Truncate {
                xid,
                options: TruncateOptions {
                    cascade,
                    restart_identity
                },
                relation_ids
            })
        ),
        (any::<bool>(), lsn(), name(), bytes(64)).prop_map(move |(transactional, lsn, prefix, content)| {
            M::Message(Message {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            })
        }),
    ]
    .boxed()
}

/// Messages that only appear outside streamed blocks, under protocol 4 with
/// `abort_info` deciding the Stream Abort layout.
fn transaction_level(abort_info: bool) -> BoxedStrategy<LogicalReplicationMessage> {
    use LogicalReplicationMessage as M;
    let abort = if abort_info {
        (lsn(), ts())
            .prop_map(|(lsn, time)| Some(AbortInfo { lsn, time }))
            .boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        (lsn(), ts(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| M::Begin(Begin {
            final_lsn,
            commit_time,
            xid
        })),
        (any::<u8>(), lsn(), lsn(), ts()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| M::Commit(
            Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            }
        )),
        (lsn(), name()).prop_map(|(commit_lsn, name)| M::Origin(Origin { commit_lsn, name })),
        (any::<u32>(), any::<bool>())
            .prop_map(|(xid, first_segment)| M::StreamStart(StreamStart { xid, first_segment })),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), ts()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| M::StreamCommit(StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (any::<u32>(), any::<u32>(), abort).prop_map(|(xid, subxid, abort)| M::StreamAbort(StreamAbort {
            xid,
            subxid,
            abort
        })),
        (lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                M::BeginPrepare(BeginPrepare {
                    prepare_lsn,
                    end_lsn,
                    prepare_time,
                    xid,
                    gid,
                })
            }
        ),
        prepare().prop_map(M::Prepare),
        prepare().prop_map(M::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| M::CommitPrepared(CommitPrepared {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
                xid,
                gid
            })
        ),
        (any::<u8>(), lsn(), lsn(), ts(), ts(), any::<u32>(), name()).prop_map(
            |(flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid)| {
                M::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                })
            }
        ),
        Just(M::StreamStop),
    ]
    .boxed()
}

/// A message together with the context it must be decoded in.
fn message_in_context() -> impl Strategy<Value = (LogicalReplicationMessage, DecodeContext)> {
    let outside = any::<bool>().prop_flat_map(|abort_info| {
        prop_oneof![transaction_level(abort_info), change(None)].prop_map(move |m| {
            let context = DecodeContext {
                stream_abort_info: abort_info,
                ..DecodeContext::new(4)
            };
            (m, context)
        })
    });
    let inside = any::<u32>().prop_flat_map(|xid| {
        change(Some(xid)).prop_map(|m| {
            (
                m,
                DecodeContext {
                    in_streamed_block: true,
                    ..DecodeContext::new(4)
                },
            )
        })
    });
    prop_oneof![outside, inside]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_gives_the_same_message((message, context) in message_in_context()) {
        let bytes = message.encode();
        prop_assert_eq!(decode_message(&bytes, &context), Ok(message));
    }

    /// Mutated encodings: if the decoder accepts them, it read every byte as what it is.
    #[test]
    fn accepted_bytes_re_encode_to_themselves(
        (message, context) in message_in_context(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = message.encode().to_vec();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = bytes.len() - cut.index(bytes.len().min(3) + 1).min(bytes.len());
        bytes.truncate(keep);
        let bytes = Bytes::from(bytes);
        if let Ok(decoded) = decode_message(&bytes, &context) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..64), version in 1u8..=4, streamed: bool, abort: bool) {
        let bytes = Bytes::from(data);
        let context = DecodeContext { protocol_version: version, in_streamed_block: streamed, stream_abort_info: abort };
        if let Ok(decoded) = decode_message(&bytes, &context) {
            prop_assert_eq!(decoded.encode(), bytes.clone());
        }
        if let Ok(frame) = ReplicationMessage::parse(&bytes) {
            prop_assert_eq!(frame.encode(), bytes);
        }
    }

    #[test]
    fn replication_frames_round_trip(wal_start in lsn(), wal_end in lsn(), server_time in ts(), data in bytes(64), reply: bool) {
        let x = ReplicationMessage::XLogData(XLogData { wal_start, wal_end, server_time, data });
        prop_assert_eq!(ReplicationMessage::parse(&x.encode()), Ok(x));
        let k = ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive { wal_end, server_time, reply_requested: reply });
        prop_assert_eq!(ReplicationMessage::parse(&k.encode()), Ok(k));
    }

    #[test]
    fn lsn_display_parses_back(raw: u64) {
        prop_assert_eq!(Lsn::new(raw).to_string().parse::<Lsn>(), Ok(Lsn::new(raw)));
    }
}
