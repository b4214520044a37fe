//! The wire format of peer connections.
//!
//! A connection carries frames, each a 4-byte big-endian length followed by that many
//! bytes of a [`Frame`] in postcard encoding (a documented, stable format). A frame
//! longer than the configured `max_frame` ends the connection.
//!
//! Frames travel inside the sealed transport ([`super::seal`]): the peer has proven the
//! cookie before the first frame, and every frame is encrypted and authenticated.
//!
//! # Handshake
//!
//! Both sides send [`Hello`] as soon as the sealed session is up: magic `RLPT`, protocol
//! version, node name, incarnation, advertised address and a fresh 32-byte random nonce
//! (which orders two connections of one pair: see the core). On the peer's `Hello` each
//! side decides whether it takes the connection (a rival connection, a name clash, a
//! pruned peer: see the core) and sends either [`Frame::Accept`] or [`Frame::Reject`]
//! with the reason, then closes. A side counts the peer up only when it has the peer's
//! `Accept`: so a refused side never reports the peer up, not even for a moment.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::seal::OpenError;

/// The first bytes of every `Hello`.
pub const MAGIC: [u8; 4] = *b"RLPT";
/// The protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 2;

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
    /// The cookies differ. (Decided by the sealed transport before any frame; kept
    /// for the counters' names.)
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

    /// What an operator does about it, for the log line of a refusal; empty where
    /// nothing is to be done (a duplicate connection, a pruned peer).
    pub fn fix(self) -> &'static str {
        match self {
            RejectReason::BadCookie => {
                "; every node needs the same cookie (during a rotation, the new one in \
                 accept_cookies first)"
            }
            RejectReason::NameClash => {
                "; two nodes share a name: give every node its own name (--name, or \
                 RALLYPOINT_NAME)"
            }
            RejectReason::BadVersion => "; run the same rallypoint protocol version on every node",
            RejectReason::Pruned | RejectReason::Duplicate | RejectReason::Protocol => "",
        }
    }
}

/// A frame on a peer connection. New variants are only ever added at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Handshake, first frame from each side.
    Hello(Hello),
    /// Handshake: the sender takes the connection; `exchange` asks the peer for its
    /// member list.
    Accept {
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
    /// Asks the receiver for a sign of life: it answers at once with a
    /// [`Frame::Heartbeat`], and keeps sending heartbeats to the sender for `down_after`
    /// (so a monitor whose view of the ring differs from the peer's still hears it).
    Probe,
    /// The sender, a monitor of the named node, has heard nothing from it for most of
    /// `down_after`. Each receiver confirms on its own connection (a [`Frame::Probe`])
    /// before it reports the node down: one bad link cannot take a node out of every
    /// view.
    Suspect {
        /// The silent node's name.
        name: String,
        /// Its incarnation, as the sender has it up.
        incarnation: u64,
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
    /// The sealed transport refused a record or a frame's length.
    #[error(transparent)]
    Sealed(#[from] OpenError),
}

impl DecodeError {
    /// The reason as counted in metrics (`transport_errors{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::Sealed(e) => e.reason(),
        }
    }
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
            Frame::Accept { exchange: true },
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
            Frame::Probe,
            Frame::Suspect {
                name: "c@h".into(),
                incarnation: 3,
            },
        ] {
            assert_eq!(decode(&encode(&f)).unwrap(), f);
        }
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        assert_eq!(decode(&encode(&hello(1))), Err(DecodeError::BadVersion(1)));
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
}
