//! The sealed transport: every byte between two peers after the first few is encrypted
//! and authenticated, and nothing reaches the membership core before the peer has
//! proven that it holds the cluster's cookie.
//!
//! # The handshake
//!
//! A Noise `NNpsk0` handshake (`Noise_NNpsk0_25519_ChaChaPoly_SHA256`, the Noise Protocol
//! Framework, implemented by the `snow` crate) whose pre-shared key is derived from the
//! cookie (HKDF-SHA256, see [`psk`]). `psk0` mixes the key in before the first message,
//! so even that one is sealed; the ephemeral keys of both sides give every connection
//! its own keys (forward secrecy: a cookie stolen later does not open recorded traffic).
//!
//! ```text
//! dialler                                          listener
//!   PREAMBLE, len, msg1 (psk, e)          ──▶   tries each cookie it holds on msg1
//!                                         ◀──   PREAMBLE, len, msg2 (e, ee)
//!   len, record 0 (empty: key confirmation) ──▶  authenticated: hand it to the core
//! ```
//!
//! - [`PREAMBLE`] is ten plaintext bytes that name the protocol version. They are
//!   chosen so that a node of protocol 1 (plaintext frames) reads them as a `Hello` of
//!   version 2 and refuses with `bad_version`, and this node recognises a protocol-1
//!   `Hello` and answers it with protocol 1's `Reject(BadVersion)`: both sides say why.
//! - Handshake messages are at most [`MAX_HANDSHAKE_MESSAGE`] bytes, read into fixed
//!   buffers: before the cookie is proven a connection holds a few hundred bytes.
//! - The listener holds several cookies (rotation, see [`crate::cookie::Cookies`]): the
//!   one that opens `msg1` is the one of the session. The dialler always uses its
//!   primary cookie.
//! - The listener counts the dialler as authenticated only once the first record
//!   (empty, sealed with the session's keys) opens: a replayed `msg1` gets nowhere.
//! - A listener that holds none of the dialler's cookie answers a zero length and one
//!   byte of [`Refusal`] code in place of `msg2` (unauthenticated: it only tells a
//!   dialler that already failed why), then closes.
//!
//! # Records
//!
//! After the handshake the stream carries records: a 2-byte big-endian length, then that
//! many bytes of ChaCha20-Poly1305 ciphertext with a 16-byte tag, the nonce being an
//! implicit counter per direction. The plaintext of the records, concatenated, is the
//! frame stream: each frame a 4-byte big-endian length and its bytes (see
//! [`super::wire`]). A record that does not open (a flipped, injected, dropped,
//! replayed or reordered byte) ends the connection; so does a frame longer than
//! `max_frame`. Nothing of an unopened record is used.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hkdf::Hkdf;
use sha2::Sha256;
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cookie::{Cookie, Cookies};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// The protocol version of the sealed transport.
pub const VERSION: u8 = 2;
/// The first bytes each side sends: to a protocol-1 node a frame of 6 bytes holding a
/// `Hello` (variant 0) with the magic `RLPT` and version 2, cut short.
pub const PREAMBLE: [u8; 10] = [0, 0, 0, 6, 0, b'R', b'L', b'P', b'T', VERSION];
/// The largest handshake message accepted (ours are 48 bytes).
pub const MAX_HANDSHAKE_MESSAGE: usize = 128;
/// The largest plaintext in one record.
pub const MAX_RECORD_PLAINTEXT: usize = 65535 - TAG;
/// The tag each record adds.
const TAG: usize = 16;
/// Mixed into the handshake hash: a transcript of another protocol never verifies.
const PROLOGUE: &[u8] = b"rallypoint/2 sealed transport";
/// Protocol 1's `Reject(BadVersion)`, framed, for a protocol-1 peer.
const V1_REJECT_BAD_VERSION: [u8; 6] = [0, 0, 0, 2, 2, 2];

/// Why the listener refused before any key was agreed (sent as one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// None of the listener's cookies opens the dialler's first message.
    BadCookie = 1,
    /// The listener has too many unauthenticated connections.
    Overload = 2,
}

/// Why a handshake failed. Nothing of the connection is kept.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {0}, this node speaks {VERSION}")]
    BadVersion(u16),
    /// The bytes are not a rallypoint handshake.
    #[error("not a rallypoint peer (unexpected first bytes)")]
    NotRallypoint,
    /// The cookies differ: the listener holds none of the dialler's.
    #[error("the cookies differ (the listener holds none of the cookie this node dials with)")]
    BadCookie,
    /// The listener has too many unauthenticated connections.
    #[error("the peer is overloaded with unauthenticated connections")]
    Overload,
    /// A handshake message is malformed, too large, or does not verify.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// The connection failed or closed.
    #[error("connection closed during the handshake")]
    Io(#[from] std::io::Error),
}

impl AuthError {
    /// The reason as counted in metrics (`handshake_failures{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::BadVersion(_) => "bad_version",
            AuthError::NotRallypoint => "not_rallypoint",
            AuthError::BadCookie => "bad_cookie",
            AuthError::Overload => "overload",
            AuthError::Malformed(_) => "protocol",
            AuthError::Io(_) => "closed",
        }
    }
}

/// Why a record or the frame stream inside it was refused after the handshake. The
/// connection ends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The record does not open: altered, injected, dropped, replayed or reordered.
    #[error(
        "a record failed authentication (altered, injected, replayed, reordered or dropped bytes)"
    )]
    Unauthentic,
    /// A frame longer than `max_frame`.
    #[error("frame of {len} bytes is larger than max_frame ({max})")]
    TooLarge {
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl OpenError {
    /// The reason as counted in metrics (`transport_errors{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Unauthentic => "unauthentic",
            OpenError::TooLarge { .. } => "frame_too_large",
        }
    }
}

/// The pre-shared key of a cookie: HKDF-SHA256 with a label of this protocol.
pub fn psk(cookie: &Cookie) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"rallypoint/2 noise psk"), cookie.as_bytes());
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit: this cannot fail.
    let _ = hk.expand(b"psk0", &mut out);
    out
}

fn builder(psk: &[u8; 32]) -> Result<snow::Builder<'_>, AuthError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|_| AuthError::Malformed("noise parameters"))?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, psk))
        .map_err(|_| AuthError::Malformed("noise parameters"))
}

/// An authenticated session: the keys of both directions.
pub struct Session {
    keys: Arc<StatelessTransportState>,
    /// Which of the listener's cookies the dialler used (0 for the dialler itself).
    pub cookie_index: usize,
    /// Records already sealed (by the dialler's confirmation).
    sent: u64,
    /// Records already opened (by the listener's check of the confirmation).
    received: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cookie_index", &self.cookie_index)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The two halves: one seals what this side writes, one opens what it reads.
    pub fn split(self, max_frame: usize) -> (Sealer, Opener) {
        (
            Sealer {
                keys: self.keys.clone(),
                nonce: self.sent,
                scratch: Vec::new(),
            },
            Opener {
                keys: self.keys,
                nonce: self.received,
                scratch: Vec::new(),
                plain: BytesMut::new(),
                max_frame,
            },
        )
    }
}

/// Reads a whole handshake message (length-prefixed) into a fixed buffer.
async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8; MAX_HANDSHAKE_MESSAGE],
) -> Result<usize, AuthError> {
    let len = s.read_u16().await? as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(AuthError::Malformed("handshake message too large"));
    }
    s.read_exact(&mut buf[..len]).await?;
    Ok(len)
}

/// Reads the peer's preamble. A protocol-1 `Hello` is told apart (its version) from
/// bytes of something else.
async fn read_preamble<S: AsyncRead + Unpin>(s: &mut S) -> Result<(), AuthError> {
    let mut p = [0u8; PREAMBLE.len()];
    s.read_exact(&mut p).await?;
    if p == PREAMBLE {
        return Ok(());
    }
    // A frame (4-byte length) holding a `Hello` (variant 0) with the magic: the version
    // is the next varint (one byte for any version below 128).
    if p[4] == 0 && &p[5..9] == b"RLPT" && p[9] < 0x80 {
        return Err(AuthError::BadVersion(u16::from(p[9])));
    }
    Err(AuthError::NotRallypoint)
}

/// The dialler's side of the handshake, with its primary cookie. On success the stream
/// is ready for records.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cookie: &Cookie,
) -> Result<Session, AuthError> {
    let key = psk(cookie);
    let mut hs = builder(&key)?
        .build_initiator()
        .map_err(|_| AuthError::Malformed("noise initiator"))?;
    let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .write_message(&[], &mut out)
        .map_err(|_| AuthError::Malformed("noise message 1"))?;
    let mut first = Vec::with_capacity(PREAMBLE.len() + 2 + n);
    first.extend_from_slice(&PREAMBLE);
    first.extend_from_slice(&(n as u16).to_be_bytes());
    first.extend_from_slice(&out[..n]);
    s.write_all(&first).await?;
    read_preamble(s).await?;
    let len = s.read_u16().await? as usize;
    if len == 0 {
        return Err(match s.read_u8().await? {
            c if c == Refusal::BadCookie as u8 => AuthError::BadCookie,
            c if c == Refusal::Overload as u8 => AuthError::Overload,
            _ => AuthError::Malformed("unknown refusal"),
        });
    }
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(AuthError::Malformed("handshake message too large"));
    }
    let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
    s.read_exact(&mut msg[..len]).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    hs.read_message(&msg[..len], &mut payload)
        .map_err(|_| AuthError::Malformed("noise message 2 does not verify"))?;
    let keys = hs
        .into_stateless_transport_mode()
        .map_err(|_| AuthError::Malformed("noise handshake incomplete"))?;
    // Key confirmation: an empty first record.
    let mut rec = [0u8; TAG];
    let n = keys
        .write_message(0, &[], &mut rec)
        .map_err(|_| AuthError::Malformed("noise record"))?;
    let mut confirm = Vec::with_capacity(2 + n);
    confirm.extend_from_slice(&(n as u16).to_be_bytes());
    confirm.extend_from_slice(&rec[..n]);
    s.write_all(&confirm).await?;
    Ok(Session {
        keys: Arc::new(keys),
        cookie_index: 0,
        sent: 1,
        received: 0,
    })
}

/// The listener's side of the handshake: accepts a dialler that holds any of `cookies`.
/// With `overloaded`, refuses (after reading the preamble, so a protocol-1 peer still
/// learns the version).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    cookies: &Cookies,
    overloaded: bool,
) -> Result<Session, AuthError> {
    if let Err(e) = read_preamble(s).await {
        if let AuthError::BadVersion(1) = e {
            // Tell a protocol-1 dialler why, in its own words.
            let _ = s.write_all(&V1_REJECT_BAD_VERSION).await;
            let _ = s.shutdown().await;
        }
        return Err(e);
    }
    if overloaded {
        refuse(s, Refusal::Overload).await;
        return Err(AuthError::Overload);
    }
    let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
    let len = read_message(s, &mut msg).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    let mut opened = None;
    for (i, cookie) in cookies.all().iter().enumerate() {
        let key = psk(cookie);
        let mut hs = builder(&key)?
            .build_responder()
            .map_err(|_| AuthError::Malformed("noise responder"))?;
        if hs.read_message(&msg[..len], &mut payload).is_ok() {
            opened = Some((i, hs));
            break;
        }
    }
    let Some((cookie_index, mut hs)) = opened else {
        refuse(s, Refusal::BadCookie).await;
        return Err(AuthError::BadCookie);
    };
    let mut out = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .write_message(&[], &mut out)
        .map_err(|_| AuthError::Malformed("noise message 2"))?;
    let mut reply = Vec::with_capacity(PREAMBLE.len() + 2 + n);
    reply.extend_from_slice(&PREAMBLE);
    reply.extend_from_slice(&(n as u16).to_be_bytes());
    reply.extend_from_slice(&out[..n]);
    s.write_all(&reply).await?;
    let keys = hs
        .into_stateless_transport_mode()
        .map_err(|_| AuthError::Malformed("noise handshake incomplete"))?;
    let len = read_message(s, &mut msg).await?;
    keys.read_message(0, &msg[..len], &mut payload)
        .map_err(|_| AuthError::Malformed("key confirmation does not verify"))?;
    Ok(Session {
        keys: Arc::new(keys),
        cookie_index,
        sent: 0,
        received: 1,
    })
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, why: Refusal) {
    let mut b = PREAMBLE.to_vec();
    b.extend_from_slice(&[0, 0, why as u8]);
    let _ = s.write_all(&b).await;
    let _ = s.shutdown().await;
}

/// Seals frames into records: this side's half of a [`Session`].
pub struct Sealer {
    keys: Arc<StatelessTransportState>,
    nonce: u64,
    scratch: Vec<u8>,
}

impl Sealer {
    /// Appends `frame` (its 4-byte length, then its bytes) to `out` as records.
    pub fn seal_frame(&mut self, frame: &[u8], out: &mut BytesMut) {
        let len = (frame.len() as u32).to_be_bytes();
        // The length and the start of the frame share the first record.
        let mut rest = frame;
        let mut head: &[u8] = &len;
        while !head.is_empty() || !rest.is_empty() {
            let room = MAX_RECORD_PLAINTEXT - head.len();
            let take = rest.len().min(room);
            let mut plain = Vec::with_capacity(head.len() + take);
            plain.extend_from_slice(head);
            plain.extend_from_slice(&rest[..take]);
            head = &[];
            rest = &rest[take..];
            self.seal_record(&plain, out);
        }
    }

    fn seal_record(&mut self, plain: &[u8], out: &mut BytesMut) {
        // Grown to the largest record so far (an idle connection's stay small).
        if self.scratch.len() < plain.len() + TAG {
            self.scratch.resize(plain.len() + TAG, 0);
        }
        // The plaintext is at most MAX_RECORD_PLAINTEXT and the scratch large enough:
        // sealing cannot fail but for nonce exhaustion after 2^64 records.
        if let Ok(n) = self
            .keys
            .write_message(self.nonce, plain, &mut self.scratch)
        {
            self.nonce += 1;
            out.put_u16(n as u16);
            out.extend_from_slice(&self.scratch[..n]);
        }
    }
}

/// Opens records and cuts the plaintext into frames: the other half of a [`Session`].
pub struct Opener {
    keys: Arc<StatelessTransportState>,
    nonce: u64,
    scratch: Vec<u8>,
    plain: BytesMut,
    max_frame: usize,
}

impl Opener {
    /// Opens one record's ciphertext (without its length) and appends its plaintext.
    pub fn open_record(&mut self, ciphertext: &[u8]) -> Result<(), OpenError> {
        if self.scratch.len() < ciphertext.len() {
            self.scratch.resize(ciphertext.len(), 0);
        }
        let n = self
            .keys
            .read_message(self.nonce, ciphertext, &mut self.scratch)
            .map_err(|_| OpenError::Unauthentic)?;
        self.nonce += 1;
        self.plain.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// The next whole frame opened so far, if any.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, OpenError> {
        if self.plain.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.plain[0], self.plain[1], self.plain[2], self.plain[3]])
            as usize;
        if len > self.max_frame {
            return Err(OpenError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.plain.len() < 4 + len {
            return Ok(None);
        }
        self.plain.advance(4);
        Ok(Some(self.plain.split_to(len).freeze()))
    }

    /// Reads one record from `s` and opens it. `Ok(false)` at a clean end of stream
    /// between records.
    pub async fn read_record<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Result<bool, OpenError>> {
        let mut len = [0u8; 2];
        match s.read_exact(&mut len[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Ok(false)),
            Err(e) => return Err(e),
        }
        s.read_exact(&mut len[1..]).await?;
        let len = u16::from_be_bytes(len) as usize;
        buf.resize(len, 0);
        s.read_exact(buf).await?;
        Ok(self.open_record(buf).map(|()| true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(s: &str) -> Cookie {
        Cookie::new(s)
    }

    async fn pair(
        dialler: Cookie,
        listener: Cookies,
    ) -> (
        Result<Session, AuthError>,
        Result<Session, AuthError>,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
    ) {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let (ra, rb) = tokio::join!(dial(&mut a, &dialler), async {
            let r = accept(&mut b, &listener, false).await;
            if r.is_err() {
                let _ = b.shutdown().await;
            }
            r
        });
        (ra, rb, a, b)
    }

    async fn send(sealer: &mut Sealer, w: &mut tokio::io::DuplexStream, frame: &[u8]) {
        let mut out = BytesMut::new();
        sealer.seal_frame(frame, &mut out);
        w.write_all(&out).await.unwrap();
    }

    async fn recv(
        opener: &mut Opener,
        r: &mut tokio::io::DuplexStream,
    ) -> Result<Bytes, OpenError> {
        let mut buf = Vec::new();
        loop {
            if let Some(f) = opener.next_frame()? {
                return Ok(f);
            }
            match opener.read_record(r, &mut buf).await.unwrap() {
                Ok(true) => {}
                Ok(false) => panic!("end of stream"),
                Err(e) => return Err(e),
            }
        }
    }

    #[tokio::test]
    async fn frames_cross_sealed_both_ways_large_ones_in_several_records() {
        let c = cookie("a cookie of sixteen bytes or more");
        let (ra, rb, mut a, mut b) = pair(c.clone(), Cookies::new(c)).await;
        let (mut sa, mut oa) = ra.unwrap().split(1 << 20);
        let (mut sb, mut ob) = rb.unwrap().split(1 << 20);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sending = async {
            send(&mut sa, &mut a, b"hello").await;
            send(&mut sa, &mut a, &big).await;
        };
        let receiving = async {
            let first = recv(&mut ob, &mut b).await.unwrap();
            let second = recv(&mut ob, &mut b).await.unwrap();
            (first, second)
        };
        let ((), (first, second)) = tokio::join!(sending, receiving);
        assert_eq!(&first[..], b"hello");
        assert_eq!(&second[..], &big[..]);
        send(&mut sb, &mut b, b"back").await;
        assert_eq!(&recv(&mut oa, &mut a).await.unwrap()[..], b"back");
    }

    #[tokio::test]
    async fn any_accepted_cookie_opens_and_others_are_refused() {
        let old = cookie("the old cookie, sixteen+");
        let new = cookie("the new cookie, sixteen+");
        let both = Cookies::new(new.clone()).accept(old.clone());
        let (ra, rb, ..) = pair(old.clone(), both.clone()).await;
        assert!(ra.is_ok());
        assert_eq!(rb.unwrap().cookie_index, 1);
        let (ra, rb, ..) = pair(cookie("a third cookie, sixteen+"), both).await;
        assert!(matches!(ra, Err(AuthError::BadCookie)), "{ra:?}");
        assert!(matches!(rb, Err(AuthError::BadCookie)), "{rb:?}");
    }

    #[tokio::test]
    async fn a_protocol_1_peer_is_told_bad_version_both_ways() {
        // Protocol 1's Hello as a protocol-1 node sends it first.
        let mut v1_hello = vec![0, 0, 0, 40, 0, b'R', b'L', b'P', b'T', 1];
        v1_hello.resize(44, 7);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let cookies = Cookies::new(cookie("a cookie of sixteen bytes or more"));
        a.write_all(&v1_hello).await.unwrap();
        let r = accept(&mut b, &cookies, false).await;
        assert!(matches!(r, Err(AuthError::BadVersion(1))), "{r:?}");
        let mut answer = [0u8; 6];
        a.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, V1_REJECT_BAD_VERSION);
        // A dialler that meets a protocol-1 listener (which sends its Hello at once).
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(&v1_hello).await.unwrap();
        let r = dial(&mut a, &cookie("a cookie of sixteen bytes or more")).await;
        assert!(matches!(r, Err(AuthError::BadVersion(1))), "{r:?}");
        // What a protocol-1 node reads of our first bytes: a Hello of version 2.
        assert_eq!(&PREAMBLE[..4], &[0, 0, 0, 6]);
        assert_eq!(&PREAMBLE[5..9], b"RLPT");
    }

    #[tokio::test]
    async fn garbage_and_oversized_handshakes_are_refused_without_buffering() {
        let cookies = Cookies::new(cookie("a cookie of sixteen bytes or more"));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let r = accept(&mut b, &cookies, false).await;
        assert!(matches!(r, Err(AuthError::NotRallypoint)), "{r:?}");
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut m = PREAMBLE.to_vec();
        m.extend_from_slice(&u16::MAX.to_be_bytes());
        a.write_all(&m).await.unwrap();
        let r = accept(&mut b, &cookies, false).await;
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_replayed_first_message_never_authenticates() {
        let c = cookie("a cookie of sixteen bytes or more");
        let cookies = Cookies::new(c.clone());
        // Record what a real dialler sends first.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let dialler = tokio::spawn(async move {
            let _ = dial(&mut a, &c).await;
            a
        });
        let mut first = vec![0u8; PREAMBLE.len() + 2 + 48];
        b.read_exact(&mut first).await.unwrap();
        drop(b);
        let _ = dialler.await;
        // Replay it to a listener: it answers msg2, then waits for a confirmation that
        // the replayer cannot make; whatever it sends instead fails.
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        x.write_all(&first).await.unwrap();
        x.write_all(&[0, 16]).await.unwrap();
        x.write_all(&[0u8; 16]).await.unwrap();
        let r = accept(&mut y, &cookies, false).await;
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
    }

    #[tokio::test]
    async fn flipped_replayed_reordered_or_dropped_records_do_not_open() {
        let c = cookie("a cookie of sixteen bytes or more");
        let (ra, rb, ..) = pair(c.clone(), Cookies::new(c)).await;
        let (mut sa, _) = ra.unwrap().split(1 << 20);
        let (_, ob) = rb.unwrap().split(1 << 20);
        let mut recs = Vec::new();
        for f in [&b"one"[..], b"two", b"three"] {
            let mut out = BytesMut::new();
            sa.seal_frame(f, &mut out);
            recs.push(out[2..].to_vec());
        }
        let fresh = |ob: &Opener| Opener {
            keys: ob.keys.clone(),
            nonce: ob.nonce,
            scratch: Vec::new(),
            plain: BytesMut::new(),
            max_frame: 1 << 20,
        };
        // Flipped.
        let mut o = fresh(&ob);
        let mut bad = recs[0].clone();
        bad[3] ^= 1;
        assert_eq!(o.open_record(&bad), Err(OpenError::Unauthentic));
        // Reordered (or the first dropped).
        let mut o = fresh(&ob);
        assert_eq!(o.open_record(&recs[1]), Err(OpenError::Unauthentic));
        // Replayed.
        let mut o = fresh(&ob);
        assert_eq!(o.open_record(&recs[0]), Ok(()));
        assert_eq!(o.open_record(&recs[0]), Err(OpenError::Unauthentic));
        // In order, all open.
        let mut o = fresh(&ob);
        for r in &recs {
            assert_eq!(o.open_record(r), Ok(()));
        }
        assert_eq!(&o.next_frame().unwrap().unwrap()[..], b"one");
    }

    #[test]
    fn an_announced_frame_above_max_frame_is_refused_before_it_is_buffered() {
        let c = cookie("a cookie of sixteen bytes or more");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ra, rb, ..) = rt.block_on(pair(c.clone(), Cookies::new(c)));
        let (mut sa, _) = ra.unwrap().split(1024);
        let (_, mut ob) = rb.unwrap().split(1024);
        let mut out = BytesMut::new();
        sa.seal_frame(&[0u8; 2048], &mut out);
        ob.open_record(&out[2..]).unwrap();
        assert_eq!(
            ob.next_frame(),
            Err(OpenError::TooLarge {
                len: 2048,
                max: 1024
            })
        );
    }
}
