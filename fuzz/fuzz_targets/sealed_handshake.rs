//! The sealed transport's handshake (`seal::accept`, `seal::dial`): what anyone who can
//! open a TCP connection reaches, cookie or not. The first byte picks the side and the
//! cookies; the rest is what the peer sends, then it closes:
//!
//! - bit 0 clear: this node listens (`seal::accept`), the input is a dialler's bytes;
//!   bits 1-2 pick the cookies it holds: the seed cookie; another, then the seed
//!   cookie accepted (rotation); another only; the seed cookie, then another; bit 3
//!   has it overloaded.
//! - bit 0 set: this node dials with the seed cookie (`seal::dial`), the input is the
//!   listener's answer.
//!
//! The seeds (`cargo run --example fuzz_seeds`) are the first bytes of a real dialler
//! and a real listener of a cluster with the seed cookie, so a replayed first message
//! does open with it. Whatever the input: no panic; the handshake completes at once
//! (the peer closed, nothing can hang); it never authenticates (that takes the cookie
//! and this connection's ephemeral key, which no input holds); it reads and writes a
//! bounded number of bytes, and what it writes matches why it failed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rallypoint::cookie::{Cookie, Cookies};
use rallypoint::membership::seal::{self, AuthError, MAX_HANDSHAKE_MESSAGE, PREAMBLE};
use rallypoint_fuzz::{Pipe, complete};

/// The cookie of the cluster the seeds were recorded in (see examples/fuzz_seeds.rs).
const SEED_COOKIE: &str = "rallypoint fuzz seed cookie";
/// A cookie no input was made with.
const OTHER_COOKIE: &str = "a cookie no input was made with";
/// Protocol 1's `Reject(BadVersion)`, framed: the answer to a protocol-1 `Hello`.
const V1_REJECT_BAD_VERSION: [u8; 6] = [0, 0, 0, 2, 2, 2];
/// A handshake message: its 2-byte length and at most this many bytes.
const MESSAGE: usize = 2 + MAX_HANDSHAKE_MESSAGE;

fuzz_target!(|data: &[u8]| {
    let Some((&side, input)) = data.split_first() else {
        return;
    };
    let seed = Cookie::new(SEED_COOKIE);
    let other = Cookie::new(OTHER_COOKIE);
    let mut pipe = Pipe::new(input);
    if side & 1 == 0 {
        let cookies = match (side >> 1) & 3 {
            0 => Cookies::new(seed),
            1 => Cookies::new(other).accept(seed),
            2 => Cookies::new(other),
            _ => Cookies::new(seed).accept(other),
        };
        let overloaded = side & 8 != 0;
        let e = match complete(seal::accept(&mut pipe, &cookies, overloaded)) {
            Ok(s) => panic!("a listener authenticated a dialler from bytes alone: {s:?}"),
            Err(e) => e,
        };
        let _ = (e.to_string(), e.reason());
        // The preamble, msg1, the confirmation record: nothing more is read.
        assert!(
            pipe.read <= PREAMBLE.len() + 2 * MESSAGE,
            "the listener read {} bytes before authentication",
            pipe.read
        );
        let out = &pipe.written[..];
        match e {
            AuthError::BadVersion(1) => assert_eq!(out, V1_REJECT_BAD_VERSION),
            AuthError::BadVersion(_) | AuthError::NotRallypoint => {
                assert!(
                    out.is_empty(),
                    "answered bytes of another protocol: {out:?}"
                )
            }
            AuthError::BadCookie | AuthError::Overload => {
                let code = if matches!(e, AuthError::BadCookie) {
                    1
                } else {
                    2
                };
                assert_eq!(&out[..PREAMBLE.len()], PREAMBLE);
                assert_eq!(&out[PREAMBLE.len()..], [0, 0, code]);
                assert!(pipe.shut, "a refusal closes the connection");
            }
            AuthError::Malformed(_) | AuthError::Io(_) => {
                // Either nothing (msg1 was cut short or too large) or the preamble and
                // msg2 (msg1 opened; the confirmation did not come or did not verify).
                assert!(
                    out.is_empty()
                        || (out.len() <= PREAMBLE.len() + MESSAGE && out.starts_with(&PREAMBLE)),
                    "the listener wrote {} bytes",
                    out.len()
                );
                assert!(!overloaded || out.is_empty());
            }
        }
    } else {
        let e = match complete(seal::dial(&mut pipe, &seed)) {
            Ok(s) => panic!("a dialler authenticated a listener from bytes alone: {s:?}"),
            Err(e) => e,
        };
        let _ = (e.to_string(), e.reason());
        // The preamble, then msg2 or a refusal: nothing more is read.
        assert!(
            pipe.read <= PREAMBLE.len() + MESSAGE,
            "the dialler read {} bytes before authentication",
            pipe.read
        );
        // Its first message, and no key confirmation: msg2 never verified.
        let out = &pipe.written[..];
        assert!(out.starts_with(&PREAMBLE));
        let msg1 = u16::from_be_bytes([out[PREAMBLE.len()], out[PREAMBLE.len() + 1]]) as usize;
        assert_eq!(
            out.len(),
            PREAMBLE.len() + 2 + msg1,
            "the dialler wrote more than its first message"
        );
        assert!(msg1 <= MAX_HANDSHAKE_MESSAGE);
    }
});
