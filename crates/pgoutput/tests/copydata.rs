//! The replication CopyData layer against bytes laid out by hand from
//! <https://www.postgresql.org/docs/15/protocol-replication.html>.

use bytes::Bytes;
use pgoutput::*;

#[test]
fn standby_status_update_layout() {
    let update = StandbyStatusUpdate {
        write: "16/B374D848".parse().unwrap(),
        flush: "16/B374D800".parse().unwrap(),
        apply: Lsn::ZERO,
        client_time: PgTimestamp::from_micros(0x0102_0304_0506_0708),
        reply_requested: true,
    };
    let mut expected = vec![b'r'];
    expected.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
    expected.extend_from_slice(&0x16_B374_D800u64.to_be_bytes());
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    expected.push(1);
    assert_eq!(update.to_bytes(), Bytes::from(expected));
    assert_eq!(update.to_bytes().len(), StandbyStatusUpdate::ENCODED_LEN);
}

#[test]
fn xlogdata_payload_is_a_slice_of_the_frame() {
    let mut frame = vec![b'w'];
    frame.extend_from_slice(&0x1_0000_0028u64.to_be_bytes());
    frame.extend_from_slice(&0x1_0000_0100u64.to_be_bytes());
    frame.extend_from_slice(&(-1i64).to_be_bytes());
    frame.extend_from_slice(b"E");
    let frame = Bytes::from(frame);
    let parsed = ReplicationMessage::parse(&frame).unwrap();
    let ReplicationMessage::XLogData(x) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(x.wal_start.to_string(), "1/28");
    assert_eq!(x.wal_end.to_string(), "1/100");
    assert_eq!(x.server_time, PgTimestamp::from_micros(-1));
    assert_eq!(&x.data[..], b"E");
    // Zero-copy: the payload points into the frame's buffer.
    assert_eq!(x.data.as_ptr(), frame[25..].as_ptr());
}

#[test]
fn keepalive_reply_flag_must_be_0_or_1() {
    let mut frame = vec![b'k'];
    frame.extend_from_slice(&[0; 16]);
    frame.push(2);
    let err = ReplicationMessage::parse(&Bytes::from(frame)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidValue(2));
    assert_eq!(
        (err.message(), err.field(), err.offset()),
        ("PrimaryKeepalive", "reply_requested", 17)
    );
}

#[test]
fn xlogdata_shorter_than_its_header_is_truncated() {
    let err = ReplicationMessage::parse(&Bytes::from_static(b"w\0\0\0\0\0\0\0\0\0\0")).unwrap_err();
    assert_eq!(
        err.kind(),
        &DecodeErrorKind::Truncated {
            needed: 8,
            remaining: 2
        }
    );
    assert_eq!(err.field(), "wal_end");
}
