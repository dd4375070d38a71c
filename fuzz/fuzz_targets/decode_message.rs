//! One pgoutput message or replication frame in any context.
//!
//! Input: byte 0 picks the context (bits 0-1: protocol version - 1, bit 2:
//! inside a streamed block, bit 3: protocol-4 abort info, bit 4: parse as a
//! replication frame instead); the rest is the message. Besides "never
//! panics", anything accepted must re-encode to exactly its input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{decode_message, DecodeContext, ReplicationMessage};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, message)) = input.split_first() else { return };
    let bytes = Bytes::copy_from_slice(message);
    if selector & 0x10 != 0 {
        if let Ok(frame) = ReplicationMessage::parse(&bytes) {
            assert_eq!(frame.encode(), bytes);
        }
        return;
    }
    let context = DecodeContext {
        protocol_version: (selector & 0x03) + 1,
        in_streamed_block: selector & 0x04 != 0,
        stream_abort_info: selector & 0x08 != 0,
    };
    if let Ok(decoded) = decode_message(&bytes, &context) {
        assert_eq!(decoded.encode(), bytes);
    }
});
