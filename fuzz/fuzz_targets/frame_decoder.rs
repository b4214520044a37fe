//! The decoder of the plaintext frame stream: what runs on the bytes of the opened
//! records of an authenticated session (the sealed transport, `seal::Opener`). Each
//! frame is a 4-byte big-endian length (above the default 1 MiB `max_frame`: refused
//! before anything is buffered) and that many bytes of a postcard `Frame`
//! (`wire::decode`). Whatever the bytes, nothing panics, and every frame that decodes
//! encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallypoint::membership::wire;
use rallypoint_fuzz::{MAX_FRAME, PlainFrames};

fuzz_target!(|data: &[u8]| {
    for frame in PlainFrames::new(data, MAX_FRAME) {
        let Ok(bytes) = frame else { break };
        match wire::decode(bytes) {
            Ok(f) => {
                let again = wire::encode(&f);
                assert_eq!(wire::decode(&again).ok(), Some(f), "a frame round-trips");
            }
            Err(e) => {
                let _ = (e.to_string(), e.reason());
            }
        }
    }
});
