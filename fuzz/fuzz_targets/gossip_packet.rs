//! The gossip packet parser: a received datagram is opened (version, AEAD) and its body
//! decoded. Random datagrams never panic and never authenticate; the body decoder is
//! also fed the input directly (as if it had authenticated), and a body that decodes
//! seals and opens back to itself. Seeds are captured heartbeats sealed with the secret
//! below, and their bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallypoint::strategies::gossip::packet;

/// The secret the seed heartbeats were sealed with.
const SECRET: &[u8] = b"rallypoint fuzz seed secret";

fuzz_target!(|data: &[u8]| {
    let key = packet::Key::derive(SECRET);
    let _ = packet::open(&key, data);
    if let Ok(hb) = packet::decode_body(data) {
        let nonce = [7u8; 12];
        if let Ok(sealed) = packet::seal(&key, &hb, nonce) {
            assert_eq!(packet::open(&key, &sealed).ok(), Some(hb), "a heartbeat round-trips");
        }
    }
});
