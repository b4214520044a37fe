//! The sealed transport's records after the handshake (`Sealer::seal_frame`,
//! `Opener::read_record`, `Opener::open_record`, `Opener::next_frame`), read as the
//! driver's reader does. Each run makes a real session in memory (a handshake with a
//! cookie the harness holds: an insider's view, since without the keys no record opens),
//! seals frames chosen by the input into one direction's byte stream, alters it as the
//! input says, and has the other side read it. The input:
//!
//! - byte 0: bits 0-2 pick the reader's `max_frame` (0, 1, 100, 65515, 65519, 65520,
//!   200,000, 1 MiB); bit 3 the direction (dialler to listener, or back);
//! - then operations, by their first byte's low two bits: seal a frame (two more bytes:
//!   its length, times 5 when bit 4 is set, so frames span records); flip bits of a
//!   byte of the stream so far (two bytes of position, one to XOR with); append raw
//!   bytes (a count, then the bytes).
//!
//! Whatever comes: no panic; the frames read are exactly the frames sealed, in order,
//! up to the first one above `max_frame` (refused as `TooLarge`, with its length, as
//! soon as its length is read) or to the first altered or injected byte: nothing of
//! that record is used, and the stream ends in `Unauthentic` or an I/O error, never
//! cleanly; an unaltered stream ends cleanly.
#![no_main]

use std::cell::RefCell;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rallypoint::cookie::{Cookie, Cookies};
use rallypoint::membership::seal::{self, OpenError, Session};
use rallypoint_fuzz::{Pipe, complete};

const MAX_FRAMES: [usize; 8] = [0, 1, 100, 65515, 65519, 65520, 200_000, 1 << 20];
/// At most this many frame bytes are sealed per run.
const BUDGET: usize = 1 << 17;

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime"),
    );
}

/// A fresh session, both sides: (dialler's, listener's).
fn session() -> (Session, Session) {
    let cookie = Cookie::new("the cookie of the records target");
    let cookies = Cookies::new(cookie.clone());
    RUNTIME.with(|rt| {
        rt.borrow().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let (d, l) = tokio::join!(
                seal::dial(&mut a, &cookie),
                seal::accept(&mut b, &cookies, false)
            );
            (d.expect("dial"), l.expect("accept"))
        })
    })
}

struct Sealed {
    len: usize,
    /// The records it went out in (indexes).
    first: usize,
    last: usize,
}

#[derive(Debug)]
enum End {
    Clean,
    Io,
    Open(OpenError),
}

fuzz_target!(|data: &[u8]| {
    let Some((&setting, mut ops)) = data.split_first() else {
        return;
    };
    let max_frame = MAX_FRAMES[usize::from(setting & 7)];
    let (dialler, listener) = session();
    let (mut sealer, mut opener) = if setting & 8 == 0 {
        (dialler.split(1 << 20).0, listener.split(max_frame).1)
    } else {
        (listener.split(1 << 20).0, dialler.split(max_frame).1)
    };

    let mut wire = BytesMut::new();
    // Each genuine record's end in the stream.
    let mut record_ends: Vec<usize> = Vec::new();
    let mut frames: Vec<Sealed> = Vec::new();
    // The stream as sealed (and injected): flips are told from it at the end (two flips
    // of one byte may cancel out).
    let mut pristine: Vec<u8> = Vec::new();
    // Where bytes were first injected.
    let mut injected: Option<usize> = None;
    let mut budget = BUDGET;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        match op & 3 {
            0 | 1 => {
                let Some((l, rest)) = ops.split_first_chunk::<2>() else {
                    break;
                };
                ops = rest;
                let mut len = usize::from(u16::from_be_bytes(*l));
                if op & 0x10 != 0 {
                    len *= 5;
                }
                if len > budget {
                    break;
                }
                budget -= len;
                let k = frames.len();
                let frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ (k as u8)).collect();
                let first = record_ends.len();
                let start = wire.len();
                sealer.seal_frame(&frame, &mut wire);
                pristine.extend_from_slice(&wire[start..]);
                // Walk the records just sealed.
                let mut at = start;
                while at < wire.len() {
                    let n = usize::from(u16::from_be_bytes([wire[at], wire[at + 1]]));
                    at += 2 + n;
                    record_ends.push(at);
                }
                assert_eq!(at, wire.len(), "records are whole");
                assert!(record_ends.len() > first, "a frame is at least one record");
                frames.push(Sealed {
                    len,
                    first,
                    last: record_ends.len() - 1,
                });
            }
            2 => {
                let Some((p, rest)) = ops.split_first_chunk::<3>() else {
                    break;
                };
                ops = rest;
                if wire.is_empty() {
                    continue;
                }
                let at = usize::from(u16::from_be_bytes([p[0], p[1]])) % wire.len();
                wire[at] ^= p[2];
            }
            _ => {
                let Some((&n, rest)) = ops.split_first() else {
                    break;
                };
                let n = usize::from(n).min(rest.len());
                if n > 0 {
                    injected.get_or_insert(wire.len());
                }
                wire.extend_from_slice(&rest[..n]);
                pristine.extend_from_slice(&rest[..n]);
                ops = &rest[n..];
            }
        }
    }

    // Read it as the driver does: every whole frame opened so far, then a record.
    let mut pipe = Pipe::new(&wire);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let end = 'read: loop {
        loop {
            match opener.next_frame() {
                Ok(None) => break,
                Ok(Some(f)) => got.push(f),
                Err(e) => break 'read End::Open(e),
            }
        }
        match complete(opener.read_record(&mut pipe, &mut buf)) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break End::Clean,
            Ok(Err(e)) => break End::Open(e),
            Err(_) => break End::Io,
        }
    };

    // The first byte not as sealed, and its record (or past the last: injected after
    // it).
    let flipped = wire.iter().zip(&pristine).position(|(a, b)| a != b);
    let bad = match (flipped, injected) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let r = bad.map(|b| record_ends.partition_point(|&e| e <= b));
    let before_bad = |rec: usize| r.is_none_or(|r| rec < r);
    for (k, f) in frames.iter().enumerate() {
        if f.len > max_frame && before_bad(f.first) {
            assert_eq!(got.len(), k, "frames read before one above max_frame");
            check(&got, &frames);
            assert!(
                matches!(end, End::Open(OpenError::TooLarge { len, max }) if len == f.len && max == max_frame),
                "frame {k} of {} bytes above max_frame {max_frame}: {end:?}",
                f.len
            );
            return;
        }
        if !before_bad(f.last) {
            assert_eq!(got.len(), k, "frames read past an altered record");
            assert!(
                matches!(end, End::Open(OpenError::Unauthentic) | End::Io),
                "an altered record: {end:?}"
            );
            check(&got, &frames);
            return;
        }
    }
    assert_eq!(got.len(), frames.len(), "every frame read");
    check(&got, &frames);
    if bad.is_some() {
        assert!(
            matches!(end, End::Open(OpenError::Unauthentic) | End::Io),
            "bytes injected after the records: {end:?}"
        );
    } else {
        assert!(matches!(end, End::Clean), "an unaltered stream: {end:?}");
    }
});

/// The frames read are the first ones sealed, byte for byte.
fn check(got: &[bytes::Bytes], frames: &[Sealed]) {
    assert!(got.len() <= frames.len());
    for (k, (g, f)) in got.iter().zip(frames).enumerate() {
        assert_eq!(g.len(), f.len, "frame {k}'s length");
        assert!(
            g.iter()
                .enumerate()
                .all(|(i, &b)| b == (i as u8) ^ (k as u8)),
            "frame {k}'s bytes"
        );
    }
}
