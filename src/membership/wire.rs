//! The wire format of peer connections.
//!
//! A connection carries frames, each a 4-byte big-endian length followed by that many
//! bytes of a [`Frame`] in postcard encoding (a documented, stable format). A frame
//! longer than the configured `max_frame` ends the connection.
//!
//! # Handshake
//!
//! Both sides send [`Hello`] as soon as the TCP connection is up: magic `RLPT`, protocol
//! version, node name, incarnation, advertised address and a fresh 32-byte random nonce.
//! On the peer's `Hello` each side sends [`Frame::Proof`]: an HMAC-SHA256, keyed by the
//! cookie, over both sides' names, incarnations and nonces, its own first (see
//! [`proof_mac`]). A side that verifies the peer's proof considers the peer up. The cookie
//! never crosses the wire, the nonces make each proof fresh, and the order of fields
//! (own identity first) keeps a proof from being reflected back as the other side's.
//! A side that refuses sends [`Frame::Reject`] with the reason, then closes.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cookie::Cookie;

/// The first bytes of every `Hello`.
pub const MAGIC: [u8; 4] = *b"RLPT";
/// The protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;

/// The first frame on a connection, from each side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's node name (`basename@host`).
    pub name: String,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's advertised cluster address.
    pub addr: SocketAddr,
    /// A fresh random challenge.
    pub nonce: [u8; 32],
}

/// A member as listed in [`Frame::Members`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// Node name.
    pub name: String,
    /// Advertised cluster address.
    pub addr: SocketAddr,
    /// Incarnation.
    pub incarnation: u64,
}

/// Why a side refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The proof did not verify: the cookies differ.
    BadCookie,
    /// The peer uses this node's own name, or another live instance with its name is up
    /// here already.
    NameClash,
    /// The protocol versions differ (or the magic is wrong).
    BadVersion,
    /// The peer was pruned by an authoritative topology.
    Pruned,
    /// A connection between the two nodes exists already (or wins the tie-break).
    Duplicate,
    /// A frame that does not belong in this state.
    Protocol,
}

impl RejectReason {
    /// The reason as counted in metrics (`bad_cookie`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadCookie => "bad_cookie",
            RejectReason::NameClash => "name_clash",
            RejectReason::BadVersion => "bad_version",
            RejectReason::Pruned => "pruned",
            RejectReason::Duplicate => "duplicate",
            RejectReason::Protocol => "protocol",
        }
    }
}

/// A frame on a peer connection. New variants are only ever added at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Handshake, first frame from each side.
    Hello(Hello),
    /// Handshake: proof of the cookie; `exchange` asks the peer for its member list.
    Proof {
        /// HMAC-SHA256 over both identities and nonces (see [`proof_mac`]).
        mac: [u8; 32],
        /// Whether the sender wants member lists exchanged on this connection.
        exchange: bool,
    },
    /// The sender refuses the connection and closes it.
    Reject(RejectReason),
    /// Liveness, sent every heartbeat interval.
    Heartbeat,
    /// The members the sender has up (itself excluded).
    Members(Vec<MemberEntry>),
    /// Anti-entropy: the digest of the sender's member set. On a mismatch the receiver
    /// sends its [`Frame::Members`] and, unless `reply` is set, a `Sync` of its own with
    /// `reply` set.
    Sync {
        /// XOR of a hash per member (self included); see [`member_hash`].
        digest: u64,
        /// Whether this answers a `Sync`.
        reply: bool,
    },
    /// The sender is shutting down gracefully.
    Leave,
    /// A cluster pub/sub message.
    Message {
        /// The topic.
        topic: String,
        /// Opaque payload.
        payload: Vec<u8>,
    },
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a frame of this protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A `Hello` of another protocol version (or without the magic).
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    BadVersion(u16),
}

/// Encodes a frame body (without the length prefix).
pub fn encode(frame: &Frame) -> Vec<u8> {
    // Serialising these types into a Vec cannot fail.
    postcard::to_stdvec(frame).unwrap_or_default()
}

/// Decodes a frame body. A `Hello` must carry the magic and this protocol version; a
/// `Hello` that does not decode but starts with the magic and another version (a future
/// version's different `Hello`) is reported as [`DecodeError::BadVersion`].
///
/// The checks look at the decoded frame, not at the bytes: postcard also reads an
/// enum's variant written in a longer (non-canonical) varint, so a check of the first
/// byte alone could be walked around (found by the `frame_decoder` fuzz target).
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    #[derive(Deserialize)]
    struct Prefix {
        magic: [u8; 4],
        version: u16,
    }
    let frame = match postcard::take_from_bytes::<Frame>(bytes) {
        Ok((frame, [])) => frame,
        Ok((_, rest)) => {
            return Err(DecodeError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Err(e) => {
            if let Ok(((0u32, prefix), _)) = postcard::take_from_bytes::<(u32, Prefix)>(bytes)
                && prefix.magic == MAGIC
                && prefix.version != PROTOCOL_VERSION
            {
                return Err(DecodeError::BadVersion(prefix.version));
            }
            return Err(DecodeError::Malformed(e.to_string()));
        }
    };
    if let Frame::Hello(h) = &frame {
        if h.magic != MAGIC {
            return Err(DecodeError::Malformed("bad magic".into()));
        }
        if h.version != PROTOCOL_VERSION {
            return Err(DecodeError::BadVersion(h.version));
        }
    }
    Ok(frame)
}

/// One side's identity in a proof.
pub struct ProofSide<'a> {
    /// Node name.
    pub name: &'a str,
    /// Incarnation.
    pub incarnation: u64,
    /// The nonce that side sent.
    pub nonce: &'a [u8; 32],
}

/// HMAC-SHA256(cookie, label ‖ sender ‖ receiver), each side as length-prefixed name,
/// incarnation, nonce.
fn proof_hmac(
    cookie: &Cookie,
    sender: &ProofSide<'_>,
    receiver: &ProofSide<'_>,
) -> Option<Hmac<Sha256>> {
    // HMAC accepts keys of any length; the error case cannot happen.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie.as_bytes()).ok()?;
    mac.update(b"rallypoint/1 proof");
    for side in [sender, receiver] {
        mac.update(&(side.name.len() as u32).to_be_bytes());
        mac.update(side.name.as_bytes());
        mac.update(&side.incarnation.to_be_bytes());
        mac.update(side.nonce);
    }
    Some(mac)
}

/// The MAC a side sends to prove it knows the cookie (see the module docs).
pub fn proof_mac(cookie: &Cookie, sender: &ProofSide<'_>, receiver: &ProofSide<'_>) -> [u8; 32] {
    proof_hmac(cookie, sender, receiver)
        .map(|m| m.finalize().into_bytes().into())
        .unwrap_or([0; 32])
}

/// Checks a received proof, in constant time.
pub fn verify_proof(
    cookie: &Cookie,
    sender: &ProofSide<'_>,
    receiver: &ProofSide<'_>,
    mac: &[u8; 32],
) -> bool {
    proof_hmac(cookie, sender, receiver).is_some_and(|m| m.verify_slice(mac).is_ok())
}

/// The hash of one member in a [`Frame::Sync`] digest.
pub fn member_hash(name: &str, incarnation: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(incarnation.to_be_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u16) -> Frame {
        Frame::Hello(Hello {
            magic: MAGIC,
            version,
            name: "a@h".into(),
            incarnation: 7,
            addr: "127.0.0.1:1".parse().unwrap(),
            nonce: [3; 32],
        })
    }

    #[test]
    fn frames_round_trip() {
        for f in [
            hello(PROTOCOL_VERSION),
            Frame::Proof {
                mac: [1; 32],
                exchange: true,
            },
            Frame::Reject(RejectReason::BadCookie),
            Frame::Heartbeat,
            Frame::Members(vec![MemberEntry {
                name: "b@h".into(),
                addr: "[::1]:2".parse().unwrap(),
                incarnation: 9,
            }]),
            Frame::Sync {
                digest: 5,
                reply: false,
            },
            Frame::Leave,
            Frame::Message {
                topic: "t".into(),
                payload: vec![1, 2],
            },
        ] {
            assert_eq!(decode(&encode(&f)).unwrap(), f);
        }
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        assert_eq!(decode(&encode(&hello(2))), Err(DecodeError::BadVersion(2)));
        assert!(matches!(
            decode(&[0xff, 1, 2]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(decode(&[]), Err(DecodeError::Malformed(_))));
        let mut trailing = encode(&Frame::Heartbeat);
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(DecodeError::Malformed(_))));
    }

    /// Found by the `frame_decoder` fuzz target: a `Hello` whose variant index is
    /// written as a two-byte varint (`80 00`) got past the magic and version check.
    #[test]
    fn a_hello_with_a_long_variant_index_is_still_checked() {
        let mut bad = vec![0x80, 0x00];
        let h = Hello {
            magic: [0, 255, 0, 0],
            ..match hello(PROTOCOL_VERSION) {
                Frame::Hello(h) => h,
                _ => unreachable!(),
            }
        };
        bad.extend(postcard::to_stdvec(&h).unwrap());
        assert_eq!(
            decode(&bad),
            Err(DecodeError::Malformed("bad magic".into()))
        );
        let mut future = vec![0x80, 0x00];
        let h = match hello(7) {
            Frame::Hello(h) => h,
            _ => unreachable!(),
        };
        future.extend(postcard::to_stdvec(&h).unwrap());
        assert_eq!(decode(&future), Err(DecodeError::BadVersion(7)));
        // A future Hello that does not even decode as this version's.
        let mut other = postcard::to_stdvec(&(0u32, MAGIC, 9u16)).unwrap();
        other.push(0xff);
        assert_eq!(decode(&other), Err(DecodeError::BadVersion(9)));
    }

    #[test]
    fn proofs_bind_cookie_and_direction() {
        let c = Cookie::new("secret");
        let a = ProofSide {
            name: "a@h",
            incarnation: 1,
            nonce: &[1; 32],
        };
        let b = ProofSide {
            name: "b@h",
            incarnation: 2,
            nonce: &[2; 32],
        };
        let mac = proof_mac(&c, &a, &b);
        assert!(verify_proof(&c, &a, &b, &mac));
        assert!(
            !verify_proof(&c, &b, &a, &mac),
            "a proof cannot be reflected"
        );
        assert!(!verify_proof(&Cookie::new("other"), &a, &b, &mac));
    }
}
