//! The gossip heartbeat packet: what it carries, and how it is sealed and opened.
//!
//! ```text
//! byte 0        version (1)
//! bytes 1..13   nonce: 12 random bytes, fresh for each packet
//! bytes 13..    ChaCha20-Poly1305 ciphertext of the body, then its 16-byte tag;
//!               the version byte is authenticated as associated data
//! ```
//!
//! The body is a [`Heartbeat`] in postcard encoding. The key is derived from the secret
//! with HKDF-SHA256 (salt `rallypoint gossip v1`, info `chacha20poly1305 key`), so the
//! secret itself never crosses the wire and the same cookie gives unrelated keys for
//! gossip and for anything else.

use std::fmt;
use std::net::SocketAddr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::node::NodeName;

/// The packet format's version, byte 0 of every packet.
pub const VERSION: u8 = 1;
/// Length of the nonce that follows the version byte.
pub const NONCE_LEN: usize = 12;
/// Length of the AEAD tag at the end of a packet.
pub const TAG_LEN: usize = 16;
/// Version byte and nonce.
pub const HEADER_LEN: usize = 1 + NONCE_LEN;
/// The largest packet accepted or sent, in bytes. A heartbeat with the longest node name
/// and cluster name is well under it.
pub const MAX_PACKET: usize = 1024;

/// What a node announces in each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The cluster's name (the `cluster_name` option): nodes of another cluster that
    /// happen to share the secret ignore this packet.
    pub cluster: String,
    /// The sender's node name.
    pub name: NodeName,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's advertised cluster address (TCP). An IPv6 address travels without
    /// flow label or scope id; a receiver gives a link-local one the scope of the
    /// interface the packet came in on.
    pub addr: SocketAddr,
    /// When the packet was sealed: milliseconds since the Unix epoch, sender's clock.
    pub timestamp_ms: u64,
}

/// The AEAD key derived from the secret. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct Key(ChaCha20Poly1305);

impl Key {
    /// Derives the packet key from the secret (HKDF-SHA256).
    pub fn derive(secret: &[u8]) -> Key {
        let hk = Hkdf::<Sha256>::new(Some(b"rallypoint gossip v1"), secret);
        let mut okm = [0u8; 32];
        hk.expand(b"chacha20poly1305 key", &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Key(ChaCha20Poly1305::new(&okm.into()))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a heartbeat could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The sealed packet would exceed [`MAX_PACKET`] (the cluster name is too long).
    #[error("a heartbeat would be {0} bytes, over the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    /// The body could not be encoded (does not happen with valid names).
    #[error("cannot encode the heartbeat: {0}")]
    Encode(String),
}

/// Why a packet was refused. Nothing is kept of a refused packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag: cannot be a heartbeat.
    #[error("packet of {0} bytes is too short to be a heartbeat")]
    TooShort(usize),
    /// Longer than [`MAX_PACKET`].
    #[error("packet is larger than {MAX_PACKET} bytes")]
    TooLarge,
    /// The version byte is not one this build reads.
    #[error("packet has format version {0}, this node reads version {VERSION}")]
    Version(u8),
    /// The tag does not verify: another secret, or the packet was altered.
    #[error("packet does not authenticate (another secret, or altered)")]
    Auth,
    /// It authenticates, but its body is not a valid heartbeat.
    #[error("authenticated packet has an invalid body: {0}")]
    Malformed(String),
}

/// Seals a heartbeat into a packet, with the given nonce (use a fresh random one for
/// each packet).
pub fn seal(key: &Key, hb: &Heartbeat, nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, SealError> {
    let body = postcard::to_stdvec(hb).map_err(|e| SealError::Encode(e.to_string()))?;
    let len = HEADER_LEN + body.len() + TAG_LEN;
    if len > MAX_PACKET {
        return Err(SealError::TooLarge(len));
    }
    let aad = [VERSION];
    let ct = key
        .0
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &body,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Encode("encryption failed".into()))?;
    let mut out = Vec::with_capacity(len);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a packet: checks size and version, authenticates and decrypts it, and decodes
/// the heartbeat. Says which check failed.
pub fn open(key: &Key, packet: &[u8]) -> Result<Heartbeat, OpenError> {
    let body = open_body(key, packet)?;
    decode_body(&body)
}

/// Opens a packet sealed with any of `keys` (a node that holds several cookies during a
/// rotation): the checks of [`open`], with the keys tried in turn. A packet that none of
/// them authenticates (or an empty `keys`) is [`OpenError::Auth`].
pub fn open_any(keys: &[Key], packet: &[u8]) -> Result<Heartbeat, OpenError> {
    check_frame(packet)?;
    let body = keys
        .iter()
        .find_map(|key| decrypt(key, packet).ok())
        .ok_or(OpenError::Auth)?;
    decode_body(&body)
}

/// The authenticated plaintext of a packet.
pub fn open_body(key: &Key, packet: &[u8]) -> Result<Vec<u8>, OpenError> {
    check_frame(packet)?;
    decrypt(key, packet)
}

/// The checks that need no key: size and version.
fn check_frame(packet: &[u8]) -> Result<(), OpenError> {
    if packet.len() > MAX_PACKET {
        return Err(OpenError::TooLarge);
    }
    if packet.len() < HEADER_LEN + TAG_LEN {
        // A lone version byte is still worth telling apart from noise.
        if let Some(&v) = packet.first()
            && v != VERSION
        {
            return Err(OpenError::Version(v));
        }
        return Err(OpenError::TooShort(packet.len()));
    }
    let version = packet[0];
    if version != VERSION {
        return Err(OpenError::Version(version));
    }
    Ok(())
}

/// Authenticates and decrypts a packet that passed [`check_frame`].
fn decrypt(key: &Key, packet: &[u8]) -> Result<Vec<u8>, OpenError> {
    let nonce = Nonce::from_slice(&packet[1..HEADER_LEN]);
    key.0
        .decrypt(
            nonce,
            Payload {
                msg: &packet[HEADER_LEN..],
                aad: &packet[..1],
            },
        )
        .map_err(|_| OpenError::Auth)
}

/// Decodes an authenticated body. Trailing bytes are refused.
pub fn decode_body(body: &[u8]) -> Result<Heartbeat, OpenError> {
    match postcard::take_from_bytes::<Heartbeat>(body) {
        Ok((hb, [])) => Ok(hb),
        Ok((_, rest)) => Err(OpenError::Malformed(format!(
            "{} bytes after the heartbeat",
            rest.len()
        ))),
        Err(e) => Err(OpenError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb() -> Heartbeat {
        Heartbeat {
            cluster: "rallypoint".into(),
            name: "app@10.0.0.5".parse().unwrap(),
            incarnation: 0x1234_5678_9abc_def0,
            addr: "10.0.0.5:45893".parse().unwrap(),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips_and_is_small() {
        let key = Key::derive(b"secret");
        let p = seal(&key, &hb(), [7; NONCE_LEN]).unwrap();
        assert_eq!(p[0], VERSION);
        assert_eq!(&p[1..HEADER_LEN], &[7; NONCE_LEN]);
        assert!(p.len() < 100, "{} bytes", p.len());
        assert_eq!(open(&key, &p).unwrap(), hb());
        assert!(!p.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn another_secret_fails_authentication() {
        let p = seal(&Key::derive(b"one"), &hb(), [1; NONCE_LEN]).unwrap();
        assert_eq!(open(&Key::derive(b"two"), &p), Err(OpenError::Auth));
    }

    #[test]
    fn open_any_takes_a_packet_sealed_with_any_of_the_keys() {
        let (old, new) = (Key::derive(b"old"), Key::derive(b"new"));
        let by_old = seal(&old, &hb(), [1; NONCE_LEN]).unwrap();
        let by_new = seal(&new, &hb(), [2; NONCE_LEN]).unwrap();
        let both = [new.clone(), old.clone()];
        assert_eq!(open_any(&both, &by_old).unwrap(), hb());
        assert_eq!(open_any(&both, &by_new).unwrap(), hb());
        assert_eq!(open_any(&[old], &by_new), Err(OpenError::Auth));
        assert_eq!(open_any(&[], &by_new), Err(OpenError::Auth));
        // The checks that need no key come first, whatever the keys.
        assert_eq!(open_any(&both, &[9]), Err(OpenError::Version(9)));
        assert_eq!(open_any(&[], &[VERSION, 1]), Err(OpenError::TooShort(2)));
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let key = Key::derive(b"k");
        let p = seal(&key, &hb(), [3; NONCE_LEN]).unwrap();
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x40;
            let e = open(&key, &q).unwrap_err();
            if i == 0 {
                assert!(matches!(e, OpenError::Version(_)), "{e}");
            } else {
                assert_eq!(e, OpenError::Auth, "byte {i}");
            }
        }
        assert!(matches!(
            open(&key, &p[..p.len() - 1]),
            Err(OpenError::Auth)
        ));
    }

    #[test]
    fn short_long_and_versioned_packets_are_told_apart() {
        let key = Key::derive(b"k");
        assert_eq!(open(&key, &[]), Err(OpenError::TooShort(0)));
        assert_eq!(open(&key, &[VERSION, 1, 2]), Err(OpenError::TooShort(3)));
        assert_eq!(open(&key, &[9]), Err(OpenError::Version(9)));
        let mut p = seal(&key, &hb(), [0; NONCE_LEN]).unwrap();
        p[0] = 2;
        assert_eq!(open(&key, &p), Err(OpenError::Version(2)));
        assert_eq!(
            open(&key, &vec![VERSION; MAX_PACKET + 1]),
            Err(OpenError::TooLarge)
        );
    }

    #[test]
    fn a_body_with_an_invalid_name_or_trailing_bytes_is_malformed() {
        #[derive(Serialize)]
        struct Raw<'a> {
            cluster: &'a str,
            name: &'a str,
            incarnation: u64,
            addr: SocketAddr,
            timestamp_ms: u64,
        }
        let raw = Raw {
            cluster: "c",
            name: "no at sign",
            incarnation: 1,
            addr: "10.0.0.1:1".parse().unwrap(),
            timestamp_ms: 1,
        };
        let body = postcard::to_stdvec(&raw).unwrap();
        assert!(matches!(decode_body(&body), Err(OpenError::Malformed(_))));
        let mut body = postcard::to_stdvec(&hb()).unwrap();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(OpenError::Malformed(_))));
    }

    #[test]
    fn an_overlong_cluster_name_cannot_be_sealed() {
        let mut h = hb();
        h.cluster = "x".repeat(MAX_PACKET);
        assert!(matches!(
            seal(&Key::derive(b"k"), &h, [0; NONCE_LEN]),
            Err(SealError::TooLarge(_))
        ));
    }

    #[test]
    fn key_debug_is_redacted() {
        assert_eq!(format!("{:?}", Key::derive(b"k")), "Key(<redacted>)");
    }

    fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            "[a-z]{0,40}",
            "[a-zA-Z0-9_.-]{1,60}",
            "[a-z0-9.:-]{1,60}",
            any::<u64>(),
            any::<SocketAddr>(),
            any::<u64>(),
        )
            .prop_map(
                |(cluster, base, host, incarnation, mut addr, timestamp_ms)| {
                    // The encoding carries no IPv6 flow label or scope id (see `Heartbeat`).
                    if let SocketAddr::V6(a) = &mut addr {
                        a.set_flowinfo(0);
                        a.set_scope_id(0);
                    }
                    Heartbeat {
                        cluster,
                        name: NodeName::new(&base, &host).unwrap(),
                        incarnation,
                        addr,
                        timestamp_ms,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn random_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let key = Key::derive(b"k");
            let _ = open(&key, &bytes);
            // With a valid version byte too, so the AEAD path is taken.
            let mut b = bytes;
            if !b.is_empty() {
                b[0] = VERSION;
            }
            prop_assert!(open(&key, &b).is_err());
        }

        #[test]
        fn random_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_body(&bytes);
        }

        #[test]
        fn every_heartbeat_round_trips(h in arb_heartbeat(), nonce in any::<[u8; NONCE_LEN]>()) {
            let key = Key::derive(b"k");
            let p = seal(&key, &h, nonce).unwrap();
            prop_assert!(p.len() <= MAX_PACKET);
            prop_assert_eq!(open(&key, &p).unwrap(), h);
        }

        #[test]
        fn truncated_bodies_never_panic(h in arb_heartbeat(), cut in 0usize..200) {
            let body = postcard::to_stdvec(&h).unwrap();
            let cut = cut.min(body.len());
            let _ = decode_body(&body[..cut]);
        }
    }
}
