//! No input may panic: every fixture cut at every offset, every byte flipped.

use bytes::{BufMut, Bytes, BytesMut};
use pgoutput::{decode_message, DecodeContext, DecodeErrorKind, ReplicationMessage};

use crate::fixture;

#[test]
fn every_fixture_cut_at_every_offset_is_an_error() {
    let fixtures = fixture::all();
    assert!(
        fixtures.len() >= 30,
        "expected the golden fixtures, found {}",
        fixtures.len()
    );
    let mut cuts = 0;
    for f in &fixtures {
        f.decode()
            .unwrap_or_else(|e| panic!("{} does not decode whole: {e}", f.name));
        for cut in 0..f.bytes.len() {
            let prefix = f.bytes.slice(..cut);
            // Every layout is self-delimiting in its context, so a strict prefix
            // is never a valid message — except an XLogData frame, whose payload
            // is "the rest": any cut past its 25-byte header is a shorter payload.
            let result = f.decode_bytes(&prefix);
            if f.name.starts_with("xlogdata-") && cut >= 25 {
                assert!(result.is_ok(), "{} cut at {cut}", f.name);
            } else {
                assert!(result.is_err(), "{} cut at {cut} decoded: {result:?}", f.name);
            }
            cuts += 1;
        }
    }
    eprintln!("{} fixtures, {cuts} cuts, all errors", fixtures.len());
}

/// The 1 MiB fixture is left out of the every-offset tests (a trillion bytes
/// of copying): its cuts near both ends and at every 4 KiB are errors, and
/// so is each of its length fields claiming one byte more.
#[test]
fn one_megabyte_fixture_cut_anywhere_is_an_error() {
    let f = fixture::load_gz("insert-v1-one_megabyte");
    let len = f.bytes.len();
    let cuts: Vec<usize> = (0..64)
        .chain((64..len).step_by(4096))
        .chain(len - 64..len)
        .collect();
    for &cut in &cuts {
        let result = f.decode_bytes(&f.bytes.slice(..cut));
        assert!(result.is_err(), "cut at {cut} decoded");
    }
    // The value's length field (after tag, OID, 'N', column count and the
    // two small columns) says 1 MiB + 1: truncated, not a read past the end.
    let mut longer = f.bytes.to_vec();
    let at = 1 + 4 + 1 + 2 + (1 + 4 + 1) * 2 + 1;
    let claimed = u32::from_be_bytes(longer[at..at + 4].try_into().unwrap());
    assert_eq!(claimed, 1 << 20);
    longer[at..at + 4].copy_from_slice(&(claimed + 1).to_be_bytes());
    let err = f
        .decode_bytes(&Bytes::from(longer))
        .expect_err("length past the end");
    assert!(matches!(err.kind(), DecodeErrorKind::Truncated { .. }), "{err}");
    eprintln!("1 MiB fixture: {} cuts, all errors", cuts.len());
}

#[test]
fn every_fixture_with_a_trailing_byte_is_an_error() {
    for f in fixture::all().iter().filter(|f| !f.name.starts_with("xlogdata-")) {
        let mut longer = BytesMut::from(&f.bytes[..]);
        longer.put_u8(0);
        let err = f.decode_bytes(&longer.freeze()).expect_err(&f.name);
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::TrailingBytes(1),
            "{}: {err}",
            f.name
        );
    }
}

/// Flipping bytes may well give another valid message (an LSN is any 8 bytes),
/// so the property is: never a panic, and whatever decodes re-encodes to
/// exactly the bytes it came from — the decoder read every byte as what it is.
#[test]
fn every_byte_of_every_fixture_flipped_never_panics_and_round_trips_if_accepted() {
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    for f in fixture::all() {
        for i in 0..f.bytes.len() {
            for mutate in [
                |b: u8| b ^ 0x01,
                |b: u8| b ^ 0x80,
                |b: u8| !b,
                |_| 0x00,
                |_| 0xFF,
                |_| 0x7F,
            ] {
                let mut bytes = f.bytes.to_vec();
                bytes[i] = mutate(bytes[i]);
                let bytes = Bytes::from(bytes);
                match f.decode_bytes(&bytes) {
                    Ok(decoded) => {
                        assert_eq!(
                            decoded.encode(),
                            bytes,
                            "{} byte {i}: accepted but not round-tripped",
                            f.name
                        );
                        accepted += 1;
                    }
                    Err(_) => rejected += 1,
                }
            }
        }
    }
    eprintln!("byte flips: {accepted} accepted and round-tripped, {rejected} rejected");
    assert!(rejected > 0 && accepted > 0);
}

#[test]
fn negative_column_count_is_invalid_length() {
    // Insert into relation 16384, new tuple with column count -1.
    let bytes = Bytes::from_static(&[b'I', 0, 0, 0x40, 0, b'N', 0xFF, 0xFF]);
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidLength(-1));
    assert_eq!(
        (err.message(), err.field(), err.offset()),
        ("Insert", "column count", 6)
    );
}

#[test]
fn huge_column_count_does_not_allocate_before_checking() {
    // Claims 32767 columns with two bytes left: rejected before any Vec::with_capacity.
    let bytes = Bytes::from_static(&[b'I', 0, 0, 0x40, 0, b'N', 0x7F, 0xFF, b'n', b'n']);
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidLength(32767));
}

#[test]
fn negative_value_length_is_invalid_length() {
    let bytes = Bytes::from_static(&[b'I', 0, 0, 0x40, 0, b'N', 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFE]);
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidLength(-2));
    assert_eq!((err.field(), err.offset()), ("column value", 9));
}

#[test]
fn value_length_past_the_end_is_truncated_not_a_huge_allocation() {
    let bytes = Bytes::from_static(&[
        b'I', 0, 0, 0x40, 0, b'N', 0, 1, b't', 0x7F, 0xFF, 0xFF, 0xFF, b'x',
    ]);
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(
        err.kind(),
        &DecodeErrorKind::Truncated {
            needed: 0x7FFF_FFFF,
            remaining: 1
        }
    );
}

#[test]
fn truncate_relation_count_larger_than_message_is_rejected() {
    let bytes = Bytes::from_static(&[b'T', 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0x40, 0]);
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidLength(i32::MAX.into()));
    assert_eq!((err.field(), err.offset()), ("relation count", 1));
}

#[test]
fn relation_name_without_nul_is_unterminated() {
    let bytes = Bytes::from_static(b"R\0\0\x40\0public\0outbox");
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::UnterminatedString);
    assert_eq!((err.field(), err.offset()), ("name", 12));
}

#[test]
fn relation_name_with_invalid_utf8_is_rejected() {
    let bytes = Bytes::from_static(b"R\0\0\x40\0public\0out\xFFbox\0d\0\0");
    let err = decode_message(&bytes, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::InvalidUtf8);
    assert_eq!(
        err.to_string(),
        "cannot decode Relation message: string is not valid UTF-8 at byte 12 (field `name`)"
    );
}

#[test]
fn unknown_tags_are_named_in_the_error() {
    for tag in (0..=255u8).filter(|t| pgoutput::message_name(*t).is_none()) {
        let err = decode_message(&Bytes::from(vec![tag, 0, 0]), &DecodeContext::new(4)).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::UnknownTag(tag));
    }
    let err = ReplicationMessage::parse(&Bytes::from_static(b"h")).unwrap_err();
    assert_eq!(err.kind(), &DecodeErrorKind::UnknownTag(b'h'));
    assert_eq!(
        err.to_string(),
        "cannot decode replication message: unknown message tag 0x68 ('h') at byte 0 (field `tag`)"
    );
}

#[test]
fn empty_input_is_an_error_everywhere() {
    let empty = Bytes::new();
    for version in 1..=4 {
        assert_eq!(
            decode_message(&empty, &DecodeContext::new(version))
                .unwrap_err()
                .kind(),
            &DecodeErrorKind::Empty
        );
    }
    assert_eq!(
        ReplicationMessage::parse(&empty).unwrap_err().kind(),
        &DecodeErrorKind::Empty
    );
}

#[test]
fn messages_newer_than_the_negotiated_version_are_rejected() {
    let stream_stop = Bytes::from_static(b"E");
    let err = decode_message(&stream_stop, &DecodeContext::new(1)).unwrap_err();
    assert_eq!(
        err.kind(),
        &DecodeErrorKind::UnsupportedByVersion {
            required: 2,
            negotiated: 1
        }
    );
    let prepare = Bytes::from_static(b"P");
    let err = decode_message(&prepare, &DecodeContext::new(2)).unwrap_err();
    assert_eq!(
        err.kind(),
        &DecodeErrorKind::UnsupportedByVersion {
            required: 3,
            negotiated: 2
        }
    );
}

/// Writes `fuzz/corpus/*/seed-<fixture>`: each fixture prefixed with the
/// selector byte the fuzz targets read (see `fuzz/fuzz_targets/`).
#[test]
#[ignore = "writes the fuzz seed corpus; run after re-capturing fixtures"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for f in fixture::all() {
        let selector = if f.is_frame() {
            0x10
        } else {
            let c = f.context();
            (c.protocol_version - 1)
                | (u8::from(c.in_streamed_block) << 2)
                | (u8::from(c.stream_abort_info) << 3)
        };
        let mut seed = vec![selector];
        seed.extend_from_slice(&f.bytes);
        std::fs::write(root.join("decode_message").join(format!("seed-{}", f.name)), seed).unwrap();
        if !f.is_frame() && !f.context().in_streamed_block {
            // decode_stream: protocol version byte, then one length-prefixed message.
            if let Ok(len) = u8::try_from(f.bytes.len()) {
                let mut seed = vec![f.context().protocol_version - 1, len];
                seed.extend_from_slice(&f.bytes);
                std::fs::write(root.join("decode_stream").join(format!("seed-{}", f.name)), seed).unwrap();
            }
        }
    }
}
