//! The bus decoders on arbitrary frame bodies: they never panic, and a frame
//! that decodes encodes back (with a length prefix that matches) to a frame
//! that decodes equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sio::wire::{ToAgent, ToMaster};

/// The body of a whole frame, checking its length prefix.
fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "length prefix");
    &frame[4..]
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ToMaster::decode(data) {
        let frame = m.to_frame();
        assert_eq!(ToMaster::decode(body(&frame)).as_ref(), Ok(&m));
        // `encode` appends: what is already in the buffer stays as it is.
        let mut out = b"queued".to_vec();
        m.encode(&mut out);
        assert_eq!((&out[..6], &out[6..]), (&b"queued"[..], &frame[..]));
    }
    if let Ok(m) = ToAgent::decode(data) {
        let frame = m.to_frame();
        assert_eq!(ToAgent::decode(body(&frame)).as_ref(), Ok(&m));
        let mut out = b"queued".to_vec();
        m.encode(&mut out);
        assert_eq!((&out[..6], &out[6..]), (&b"queued"[..], &frame[..]));
    }
});
