//! A sequence of messages through the stateful `Decoder`, as one connection
//! would see them: byte 0 picks the protocol version, then each message is a
//! length byte followed by that many bytes. Exercises the streamed-block state.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{Decoder, LogicalReplicationMessage};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, mut rest)) = input.split_first() else { return };
    let Ok(decoder) = Decoder::new(u32::from(selector % 4) + 1) else { return };
    let mut decoder = decoder.with_parallel_streaming(selector & 0x80 != 0);
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        let before = decoder.streamed_xid();
        match decoder.decode(&Bytes::copy_from_slice(message)) {
            Ok(LogicalReplicationMessage::StreamStart(s)) => assert_eq!(decoder.streamed_xid(), Some(s.xid)),
            Ok(LogicalReplicationMessage::StreamStop) => assert_eq!(decoder.streamed_xid(), None),
            Ok(_) | Err(_) => assert_eq!(decoder.streamed_xid(), before),
        }
    }
});
