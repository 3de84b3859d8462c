//! The V8 (Node `advanced` serialization) decoder on arbitrary payloads: it
//! never panics, overflows its stack or allocates for what it is merely
//! told (libFuzzer's malloc and RSS limits catch that), and what it decodes
//! re-encodes to a payload that decodes to the same value. Its outline
//! (what the agent classifies by) refuses exactly what it refuses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sio::nodeipc::v8;

fuzz_target!(|data: &[u8]| {
    let decoded = v8::decode(data);
    assert_eq!(v8::decode_outline(data).err(), decoded.clone().err());
    if let Ok(value) = decoded {
        let frame = v8::encode_frame(&value);
        assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        let again = v8::decode(&frame[4..]).unwrap_or_else(|e| panic!("re-encoded {value:?} does not decode: {e}"));
        // Compared as bytes: NaN is not equal to itself as a value.
        assert_eq!(v8::encode_frame(&again), frame, "{value:?} changed when re-encoded");
    }
    // What the agent does with every payload from its worker.
    let _ = sio::nodeipc::classify(data);
});
