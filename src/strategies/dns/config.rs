//! The DNS strategy's configuration: [`Config`], its [`Query`] entries (a name, or a
//! table with a basename) and [`Record`], and [`ConfigError`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::node::NodeName;

/// Configuration of the DNS strategy (`strategy = "dns"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The names to query: one name, or a list whose entries are names or tables
    /// `{ name = "…", node_basename = "…" }`. Required. A name without a final dot is
    /// completed with the system's search domains (as in a pod: `myapp` finds
    /// `myapp.<namespace>.svc.cluster.local`).
    #[serde(deserialize_with = "one_or_many")]
    pub query: Vec<Query>,
    /// Which records: `"a"` (A and AAAA, peers on this node's cluster port) or `"srv"`
    /// (SRV targets and ports, the targets resolved to addresses). Default `"a"`.
    #[serde(default)]
    pub record: Record,
    /// How often each name is asked again, at most; an answer whose TTL ends sooner is
    /// asked again when it ends (a TTL under 1 s counts as 1 s). Default 5 s.
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// The name servers to ask, as `ip:port` (`"10.96.0.10:53"`, `"[fd00::a]:53"`; a bare
    /// IP means port 53). Default: none given, the system's (`/etc/resolv.conf`, with its
    /// search domains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// How long one query waits for an answer (the resolver tries twice). Default:
    /// `/etc/resolv.conf`'s `timeout`, else 5 s.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            query: Vec::new(),
            record: Record::default(),
            interval: default_interval(),
            nameservers: Vec::new(),
            timeout: None,
        }
    }
}

/// Which DNS records a topology asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// A and AAAA records: each address is a peer, on this node's cluster port.
    #[default]
    A,
    /// SRV records: each target is a peer, on the record's port.
    Srv,
}

/// One name to query, with the basename of the nodes it finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The DNS name.
    pub name: String,
    /// The basename of the nodes found under this name (`app` in `app@10.0.0.5`).
    /// Default: this node's own basename.
    pub node_basename: Option<String>,
}

impl Query {
    /// A query for `name`, the nodes named with this node's basename.
    pub fn new(name: impl Into<String>) -> Self {
        Query {
            name: name.into(),
            node_basename: None,
        }
    }

    /// Names the nodes found under this name `basename@…`.
    pub fn node_basename(mut self, basename: impl Into<String>) -> Self {
        self.node_basename = Some(basename.into());
        self
    }
}

impl From<&str> for Query {
    fn from(name: &str) -> Self {
        Query::new(name)
    }
}

impl From<String> for Query {
    fn from(name: String) -> Self {
        Query::new(name)
    }
}

impl Serialize for Query {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.node_basename {
            None => s.serialize_str(&self.name),
            Some(b) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("name", &self.name)?;
                m.serialize_entry("node_basename", b)?;
                m.end()
            }
        }
    }
}

/// A query written as a table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryTable {
    name: String,
    #[serde(default)]
    node_basename: Option<String>,
}

impl From<QueryTable> for Query {
    fn from(t: QueryTable) -> Self {
        Query {
            name: t.name,
            node_basename: t.node_basename,
        }
    }
}

/// Accepts a name, a table, or a list of either.
struct QueryVisitor {
    list: bool,
}

impl<'de> Visitor<'de> for QueryVisitor {
    type Value = Vec<Query>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.list {
            f.write_str("a DNS name, a table { name, node_basename }, or a list of these")
        } else {
            f.write_str("a DNS name or a table { name, node_basename }")
        }
    }

    /// Where a list is accepted, a string is comma-separated names (as a list comes
    /// from the environment); no DNS name holds a comma.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.list {
            return Ok(v.split(',').map(|n| Query::new(n.trim())).collect());
        }
        Ok(vec![Query::new(v)])
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = QueryTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(vec![t.into()])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if !self.list {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut out = Vec::new();
        while let Some(OneQuery(q)) = seq.next_element()? {
            out.push(q);
        }
        Ok(out)
    }
}

/// One list entry: a name or a table.
struct OneQuery(Query);

impl<'de> Deserialize<'de> for OneQuery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = d.deserialize_any(QueryVisitor { list: false })?;
        Ok(OneQuery(v.remove(0)))
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(OneQuery::deserialize(d)?.0)
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Query>, D::Error> {
    d.deserialize_any(QueryVisitor { list: true })
}

/// A DNS configuration value that cannot be used: the key, the value, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dns: {key} = {value}: expected {expected}")]
pub struct ConfigError {
    /// The key at fault (`query[1].name`, `nameservers[0]`, `interval`).
    pub key: String,
    /// The value given, as written.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl Config {
    /// Checks every value; the first bad one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map(|_| ())
    }

    /// Checks every value and returns the name servers as addresses.
    pub(super) fn check(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let bad = |key: String, value: String, expected| {
            Err(ConfigError {
                key,
                value,
                expected,
            })
        };
        if self.query.is_empty() {
            return bad("query".into(), "[]".into(), "at least one DNS name");
        }
        for (i, q) in self.query.iter().enumerate() {
            if !valid_dns_name(&q.name) {
                return bad(
                    format!("query[{i}].name"),
                    format!("{:?}", q.name),
                    "a DNS name (e.g. myapp.default.svc.cluster.local)",
                );
            }
            if let Some(b) = &q.node_basename
                && NodeName::new(b, "host").is_err()
            {
                return bad(
                    format!("query[{i}].node_basename"),
                    format!("{b:?}"),
                    "a node basename: letters, digits, '_', '-', '.'",
                );
            }
        }
        if self.interval.is_zero() {
            return bad(
                "interval".into(),
                "0s".into(),
                "a duration above zero (e.g. 5s)",
            );
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return bad(
                "timeout".into(),
                "0s".into(),
                "a duration above zero (e.g. 2s)",
            );
        }
        let mut servers = Vec::new();
        for (i, s) in self.nameservers.iter().enumerate() {
            match parse_nameserver(s) {
                Some(a) => servers.push(a),
                None => {
                    return bad(
                        format!("nameservers[{i}]"),
                        format!("{s:?}"),
                        "ip:port (e.g. 10.96.0.10:53 or [fd00::a]:53)",
                    );
                }
            }
        }
        Ok(servers)
    }
}

/// Whether `name` is a usable DNS name: dot-separated labels of 1–63 bytes, at most 253
/// bytes, no spaces or control characters.
fn valid_dns_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != ',')
        })
        && hickory_resolver::proto::rr::Name::from_utf8(name).is_ok()
}

/// `ip:port`, `[v6]:port`, or a bare IP (port 53).
pub(super) fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(s.parse::<IpAddr>().ok()?, 53),
    };
    (addr.port() != 0).then_some(addr)
}
