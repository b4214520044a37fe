//! Node identity: [`NodeName`] (`basename@host`) and [`Node`] (name, cluster address,
//! incarnation).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest node name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A node's name, `basename@host`, as in Erlang distribution (`app@10.0.0.5`).
///
/// The basename is one or more of `A–Z a–z 0–9 _ - .`; the host is a hostname, an IPv4
/// address or an IPv6 address (one or more of `A–Z a–z 0–9 _ - . :`). At most
/// [`MAX_NAME_LEN`] bytes in all. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(Arc<str>);

/// Why a string is not a valid [`NodeName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// There is no `@` between basename and host.
    #[error("node name {0:?} has no '@' (expected basename@host, e.g. app@10.0.0.5)")]
    MissingAt(String),
    /// The part before `@` is empty or has a character outside `A–Z a–z 0–9 _ - .`.
    #[error("node name {0:?} has an invalid basename (expected letters, digits, '_', '-', '.')")]
    BadBasename(String),
    /// The part after `@` is empty or has a character outside `A–Z a–z 0–9 _ - . :`.
    #[error("node name {0:?} has an invalid host (expected a hostname or an IP address)")]
    BadHost(String),
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("node name is {0} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
}

impl NodeName {
    /// Builds a name from a basename and a host, validating both.
    pub fn new(basename: &str, host: &str) -> Result<Self, NameError> {
        format!("{basename}@{host}").parse()
    }

    /// The part before the `@`.
    pub fn basename(&self) -> &str {
        self.0.split_once('@').map(|(b, _)| b).unwrap_or(&self.0)
    }

    /// The part after the `@`.
    pub fn host(&self) -> &str {
        self.0.split_once('@').map(|(_, h)| h).unwrap_or("")
    }

    /// The whole name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        let Some((base, host)) = s.split_once('@') else {
            return Err(NameError::MissingAt(s.to_owned()));
        };
        let base_ok = !base.is_empty()
            && base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !base_ok {
            return Err(NameError::BadBasename(s.to_owned()));
        }
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !host_ok {
            return Err(NameError::BadHost(s.to_owned()));
        }
        Ok(NodeName(Arc::from(s)))
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One running instance of a node: its name, the address peers dial to reach it, and
/// its incarnation (a random `u64` chosen at start, so a restarted node with the same
/// name is a different instance).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Node {
    /// `basename@host`.
    pub name: NodeName,
    /// The advertised cluster address (TCP) of the node.
    pub addr: SocketAddr,
    /// Random per process start; distinguishes a restarted node from its predecessor.
    pub incarnation: u64,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, incarnation {})",
            self.name, self.addr, self.incarnation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_names() {
        let n: NodeName = "app@10.0.0.5".parse().unwrap();
        assert_eq!(n.basename(), "app");
        assert_eq!(n.host(), "10.0.0.5");
        assert!("my-app.v2@fe80::1".parse::<NodeName>().is_ok());
        assert!("a@b".parse::<NodeName>().is_ok());
    }

    #[test]
    fn rejects_invalid_names() {
        assert!(matches!(
            "app".parse::<NodeName>(),
            Err(NameError::MissingAt(_))
        ));
        assert!(matches!(
            "@h".parse::<NodeName>(),
            Err(NameError::BadBasename(_))
        ));
        assert!(matches!(
            "a b@h".parse::<NodeName>(),
            Err(NameError::BadBasename(_))
        ));
        assert!(matches!(
            "a@".parse::<NodeName>(),
            Err(NameError::BadHost(_))
        ));
        assert!(matches!(
            "a@h/x".parse::<NodeName>(),
            Err(NameError::BadHost(_))
        ));
        let long = format!("a@{}", "h".repeat(300));
        assert!(matches!(
            long.parse::<NodeName>(),
            Err(NameError::TooLong(_))
        ));
        assert!(serde_json::from_str::<NodeName>("\"nope\"").is_err());
    }
}
