//! The stateful `Decoder`: the streamed-block bit and where messages may appear.

use bytes::Bytes;
use pgoutput::*;

fn insert(xid: Option<Xid>) -> LogicalReplicationMessage {
    LogicalReplicationMessage::Insert(Insert {
        xid,
        relation_id: 16_385,
        new: TupleData {
            columns: vec![ColumnValue::Text(Bytes::from_static(b"42")), ColumnValue::Null],
        },
    })
}

fn start(xid: Xid) -> LogicalReplicationMessage {
    LogicalReplicationMessage::StreamStart(StreamStart {
        xid,
        first_segment: true,
    })
}

#[test]
fn streamed_block_changes_carry_the_subtransaction_xid() {
    let mut d = Decoder::new(2).unwrap();
    assert_eq!(d.decode(&start(740).encode()), Ok(start(740)));
    assert_eq!(d.streamed_xid(), Some(740));
    // Inside a block a change carries the xid of its (sub)transaction, which may differ.
    assert_eq!(d.decode(&insert(Some(741)).encode()), Ok(insert(Some(741))));
    assert_eq!(
        d.decode(&Bytes::from_static(b"E")),
        Ok(LogicalReplicationMessage::StreamStop)
    );
    assert_eq!(d.streamed_xid(), None);
    assert_eq!(d.decode(&insert(None).encode()), Ok(insert(None)));
}

#[test]
fn streamed_layout_outside_a_block_is_rejected() {
    // Four extra xid bytes where the relation id should be: the insert is misread
    // unless the decoder knows it is outside a block, where it fails on length.
    let mut d = Decoder::new(2).unwrap();
    assert!(d.decode(&insert(Some(741)).encode()).is_err());
}

#[test]
fn stream_stop_outside_a_block_is_rejected() {
    let mut d = Decoder::new(2).unwrap();
    let err = d.decode(&Bytes::from_static(b"E")).unwrap_err();
    assert_eq!(
        err.kind(),
        &DecodeErrorKind::UnexpectedMessage("Stream Stop outside a streamed block")
    );
}

#[test]
fn nested_stream_start_and_commit_inside_a_block_are_rejected_and_leave_state() {
    let mut d = Decoder::new(2).unwrap();
    d.decode(&start(740).encode()).unwrap();
    for bad in [
        start(741),
        LogicalReplicationMessage::Begin(Begin {
            final_lsn: Lsn::new(1),
            commit_time: PgTimestamp::from_micros(0),
            xid: 740,
        }),
    ] {
        let err = d.decode(&bad.encode()).unwrap_err();
        assert!(
            matches!(err.kind(), DecodeErrorKind::UnexpectedMessage(_)),
            "{err}"
        );
        assert_eq!(d.streamed_xid(), Some(740));
    }
}

#[test]
fn a_decode_error_does_not_change_the_state() {
    let mut d = Decoder::new(2).unwrap();
    assert!(d.decode(&Bytes::from_static(b"S\0\0")).is_err());
    assert_eq!(d.streamed_xid(), None);
}

#[test]
fn parallel_streaming_abort_info_needs_protocol_4() {
    let abort = StreamAbort {
        xid: 9,
        subxid: 10,
        abort: None,
    };
    let mut v3 = Decoder::new(3).unwrap().with_parallel_streaming(true);
    assert_eq!(
        v3.decode(&LogicalReplicationMessage::StreamAbort(abort.clone()).encode()),
        Ok(LogicalReplicationMessage::StreamAbort(abort))
    );
    let with_info = LogicalReplicationMessage::StreamAbort(StreamAbort {
        xid: 9,
        subxid: 10,
        abort: Some(AbortInfo {
            lsn: Lsn::new(0x1_0000_0010),
            time: PgTimestamp::from_micros(5),
        }),
    });
    let mut v4 = Decoder::new(4).unwrap().with_parallel_streaming(true);
    assert_eq!(v4.decode(&with_info.encode()), Ok(with_info));
}

#[test]
fn unsupported_protocol_versions_are_refused() {
    for v in [0, 5, 256, u32::MAX] {
        let err = Decoder::new(v).unwrap_err();
        assert_eq!(err, UnsupportedProtocolVersion(v));
        assert!(err.to_string().contains("supported: 1 to 4"));
    }
    for v in 1..=4 {
        assert_eq!(Decoder::new(v).unwrap().protocol_version(), v as u8);
    }
}
