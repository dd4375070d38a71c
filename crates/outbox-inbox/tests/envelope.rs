//! The id and position read from outboxd's headers.

use outbox_inbox::{Envelope, HeaderError, Lsn, Position};

fn headers<'h>(pairs: &'h [(&'h str, &'h str)]) -> impl Iterator<Item = (&'h str, Option<&'h [u8]>)> {
    pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes())))
}

#[test]
fn reads_id_position_and_key_as_outboxd_writes_them() {
    let pairs = [
        ("id", "8b0e6a7e-4f49-4c1e-9b51-3c3b0f0d2a11"),
        ("type", "OrderPaid"),
        ("aggregatetype", "order"),
        ("outboxd.lsn", "16/B374D848"),
        ("outboxd.index", "3"),
    ];
    let envelope = Envelope::from_headers(headers(&pairs), Some(b"order-7")).unwrap();
    assert_eq!(
        envelope,
        Envelope {
            id: "8b0e6a7e-4f49-4c1e-9b51-3c3b0f0d2a11".into(),
            aggregate_id: Some("order-7".into()),
            position: Some(Position {
                commit_lsn: Lsn::new(0x16_B374_D848),
                index: 3
            }),
        }
    );
}

#[test]
fn a_message_from_another_producer_has_no_position_and_no_aggregate() {
    let envelope = Envelope::from_headers(headers(&[("id", "m-1")]), Some(b"")).unwrap();
    assert_eq!(envelope, Envelope::new("m-1"));
}

#[test]
fn the_first_header_of_a_name_wins() {
    let pairs = [("id", "first"), ("id", "second")];
    assert_eq!(Envelope::from_headers(headers(&pairs), None).unwrap().id, "first");
}

#[test]
fn unidentifiable_messages_are_errors() {
    let err = |pairs: &[(&str, &str)]| Envelope::from_headers(headers(pairs), None).unwrap_err();
    assert_eq!(err(&[("type", "x")]), HeaderError::MissingId);
    assert_eq!(err(&[("id", "")]), HeaderError::EmptyId);
    assert_eq!(
        err(&[("id", "a"), ("outboxd.lsn", "0/10")]),
        HeaderError::HalfPosition
    );
    assert_eq!(
        err(&[("id", "a"), ("outboxd.lsn", "zz"), ("outboxd.index", "0")]),
        HeaderError::InvalidLsn { value: "zz".into() }
    );
    assert_eq!(
        err(&[("id", "a"), ("outboxd.lsn", "0/10"), ("outboxd.index", "-1")]),
        HeaderError::InvalidIndex { value: "-1".into() }
    );
    let not_utf8 = [("id", Some(&[0xff_u8][..]))];
    assert_eq!(
        Envelope::from_headers(not_utf8, None).unwrap_err(),
        HeaderError::NotUtf8 { name: "id" }
    );
}
