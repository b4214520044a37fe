//! The peer connection's decoder, as the driver runs it: the 4-byte length-delimited
//! codec (with the default 1 MiB frame cap), then the postcard frame decoder. Whatever
//! the bytes, nothing panics, and every frame that decodes encodes back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallypoint::membership::wire;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fuzz_target!(|data: &[u8]| {
    let mut codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(1 << 20)
        .new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if let Ok(f) = wire::decode(&frame) {
            let again = wire::encode(&f);
            assert_eq!(wire::decode(&again).ok(), Some(f), "a frame round-trips");
        }
    }
});
