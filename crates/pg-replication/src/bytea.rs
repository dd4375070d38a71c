//! `bytea` values: pgoutput sends column values in their text form, which for
//! `bytea` is not the stored bytes but `\x` and two hex digits per byte (or,
//! with `bytea_output = 'escape'`, the escape format). Outbox payloads are
//! bytes as stored, so the text form is undone here.
//!
//! See PostgreSQL's [binary data types] for both formats.
//!
//! [binary data types]: https://www.postgresql.org/docs/current/datatype-binary.html

use bytes::Bytes;
use pgoutput::Oid;

use crate::error::InvalidBytea;

/// The type OID of `bytea` (`pg_type.oid`, fixed in the catalog).
pub const BYTEA_OID: Oid = 17;

/// The bytes a `bytea` text value stands for.
pub fn decode_bytea_text(text: &[u8]) -> Result<Bytes, InvalidBytea> {
    match text.strip_prefix(b"\\x") {
        Some(hex) => decode_hex(hex),
        None => decode_escape(text),
    }
}

fn decode_hex(hex: &[u8]) -> Result<Bytes, InvalidBytea> {
    if !hex.len().is_multiple_of(2) {
        return Err(InvalidBytea::OddHexLength(hex.len()));
    }
    let digit = |at: usize| {
        let c = hex[at];
        char::from(c)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(InvalidBytea::NotHex { at: at + 2, byte: c })
    };
    let mut out = Vec::with_capacity(hex.len() / 2);
    for at in (0..hex.len()).step_by(2) {
        out.push((digit(at)? << 4) | digit(at + 1)?);
    }
    Ok(Bytes::from(out))
}

/// The escape format: `\\` is a backslash, `\ooo` an octal byte, anything
/// else stands for itself.
fn decode_escape(text: &[u8]) -> Result<Bytes, InvalidBytea> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        if text[at] != b'\\' {
            out.push(text[at]);
            at += 1;
            continue;
        }
        if text.get(at + 1) == Some(&b'\\') {
            out.push(b'\\');
            at += 2;
            continue;
        }
        match text.get(at + 1..at + 4) {
            Some(&[a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                at += 4;
            }
            _ => return Err(InvalidBytea::BadEscape { at }),
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_gives_the_bytes() {
        assert_eq!(
            decode_bytea_text(b"\\x00ff80C3").unwrap(),
            &[0x00, 0xff, 0x80, 0xc3][..]
        );
        assert_eq!(decode_bytea_text(b"\\x").unwrap(), &b""[..]);
    }

    #[test]
    fn malformed_hex_is_an_error_not_a_guess() {
        assert_eq!(decode_bytea_text(b"\\x0"), Err(InvalidBytea::OddHexLength(1)));
        assert_eq!(
            decode_bytea_text(b"\\x0g"),
            Err(InvalidBytea::NotHex { at: 3, byte: b'g' })
        );
        assert_eq!(
            decode_bytea_text(b"\\x+1"),
            Err(InvalidBytea::NotHex { at: 2, byte: b'+' })
        );
    }

    #[test]
    fn escape_format_gives_the_bytes() {
        assert_eq!(
            decode_bytea_text(b"a\\\\b\\000\\377").unwrap(),
            &b"a\\b\x00\xff"[..]
        );
        assert_eq!(
            decode_bytea_text(b"a\\").unwrap_err(),
            InvalidBytea::BadEscape { at: 1 }
        );
        assert_eq!(
            decode_bytea_text(b"\\400").unwrap_err(),
            InvalidBytea::BadEscape { at: 0 }
        );
    }
}
