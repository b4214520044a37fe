//! The gossip strategy's configuration.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::socket;

/// Configuration of the gossip strategy (`strategy = "gossip"`). Every key is optional.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The multicast group heartbeats are sent to and received on: an IPv4 group
    /// (224.0.0.0/4) or an IPv6 one (`ff0x::…`, e.g. `ff02::1:251` for the local link).
    /// Default `230.1.1.251`. Ignored with `broadcast_only`.
    pub multicast_addr: IpAddr,
    /// The UDP port, the same on every node. Default 45892. Several nodes on one host
    /// share it (SO_REUSEPORT).
    pub port: u16,
    /// The address the socket binds. Default: on Linux the IPv4 group itself (so the
    /// socket receives only that group's packets), else the wildcard (`0.0.0.0` or `::`);
    /// with `broadcast_only`, `0.0.0.0`. Only the wildcard, the group, or (with
    /// `broadcast_only`) the broadcast address are accepted: a socket bound to a unicast
    /// address receives no multicast or broadcast.
    pub if_addr: Option<IpAddr>,
    /// The interface heartbeats are sent from and the group is joined on: its name
    /// (`eth0`), one of its addresses, or for IPv6 its index. Default: the one the
    /// routing table picks for the group. Set it on hosts with several interfaces, or
    /// with no default route.
    pub multicast_if: Option<String>,
    /// Multicast TTL (IPv6: hop limit), 1–255. Default 1: heartbeats stay on the local
    /// link. Raise it only to cross multicast routers.
    pub ttl: u32,
    /// How often a heartbeat is sent (each one 80–100 % of this after the last). Default
    /// 1 s, at least 10 ms. A node leaves the peer set 3 × `interval` after it was last
    /// heard.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Sends heartbeats to `broadcast_addr` instead of a multicast group, for networks
    /// that drop multicast. IPv4 only. Default false.
    pub broadcast_only: bool,
    /// Where heartbeats go with `broadcast_only`. Default `255.255.255.255`; the subnet's
    /// broadcast address (e.g. `10.0.0.255`) picks the interface on hosts with several.
    pub broadcast_addr: Ipv4Addr,
    /// The secret the packet key is derived from. Default: the cluster's cookie. Nodes
    /// with another secret are not heard (their packets count as `gossip_rejected_auth`).
    pub secret: Option<String>,
    /// The cluster's name, carried in every heartbeat; heartbeats of another cluster
    /// name are dropped even when they share the secret (as all of one user's nodes
    /// share the default cookie). 1–64 bytes. Default `rallypoint`.
    pub cluster_name: String,
    /// How far a heartbeat's timestamp may be from the local clock, either way, to be
    /// accepted. Default 2 × `interval` + 2 s (4 s at the default interval). It must
    /// cover the clock differences between hosts: raise it where clocks are not
    /// synchronised (rejections then count as `gossip_rejected_replay`, and the log says
    /// by how much the clocks differ).
    #[serde(with = "humantime_serde")]
    pub replay_window: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            multicast_addr: IpAddr::V4(crate::DEFAULT_GOSSIP_GROUP),
            port: crate::DEFAULT_GOSSIP_PORT,
            if_addr: None,
            multicast_if: None,
            ttl: 1,
            interval: Duration::from_secs(1),
            broadcast_only: false,
            broadcast_addr: Ipv4Addr::BROADCAST,
            secret: None,
            cluster_name: "rallypoint".into(),
            replay_window: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("multicast_addr", &self.multicast_addr)
            .field("port", &self.port)
            .field("if_addr", &self.if_addr)
            .field("multicast_if", &self.multicast_if)
            .field("ttl", &self.ttl)
            .field("interval", &self.interval)
            .field("broadcast_only", &self.broadcast_only)
            .field("broadcast_addr", &self.broadcast_addr)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("cluster_name", &self.cluster_name)
            .field("replay_window", &self.replay_window)
            .finish()
    }
}

/// Why a gossip [`Config`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip.{key} = {value}: expected {expected}")]
pub struct ConfigError {
    /// The key at fault.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl Config {
    /// Checks every key; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn err(key: &'static str, value: impl fmt::Display, expected: &'static str) -> ConfigError {
            ConfigError {
                key,
                value: value.to_string(),
                expected,
            }
        }
        let group = self.multicast_addr;
        if !self.broadcast_only && !group.is_multicast() {
            return Err(err(
                "multicast_addr",
                group,
                "a multicast group: 224.0.0.0/4 (e.g. 230.1.1.251) or ff00::/8 (e.g. ff02::1:251)",
            ));
        }
        if self.port == 0 {
            return Err(err(
                "port",
                0,
                "a port from 1 to 65535, the same on every node",
            ));
        }
        if let Some(a) = self.if_addr {
            let v6 = !self.broadcast_only && group.is_ipv6();
            if a.is_ipv6() != v6 {
                return Err(err(
                    "if_addr",
                    a,
                    "an address of the same family as the group (IPv4 with broadcast_only)",
                ));
            }
            let ok = a.is_unspecified()
                || if self.broadcast_only {
                    a == IpAddr::V4(self.broadcast_addr)
                } else {
                    a == group
                };
            if !ok {
                return Err(err(
                    "if_addr",
                    a,
                    "the wildcard (0.0.0.0 or ::) or the group itself: a socket bound to a unicast address receives no multicast (pick the interface with multicast_if)",
                ));
            }
        }
        if let Some(i) = &self.multicast_if {
            if i.trim().is_empty() {
                return Err(err(
                    "multicast_if",
                    "\"\"",
                    "an interface name or address, or no value",
                ));
            }
            if self.broadcast_only {
                return Err(err(
                    "multicast_if",
                    i,
                    "no value with broadcast_only (set broadcast_addr to the subnet's broadcast address to pick the interface)",
                ));
            }
        }
        if !(1..=255).contains(&self.ttl) {
            return Err(err(
                "ttl",
                self.ttl,
                "1 to 255 (1 keeps heartbeats on the local link)",
            ));
        }
        if self.interval < Duration::from_millis(10) {
            return Err(err(
                "interval",
                humantime::format_duration(self.interval),
                "at least 10ms",
            ));
        }
        if self.broadcast_only && self.broadcast_addr.is_unspecified() {
            return Err(err(
                "broadcast_addr",
                self.broadcast_addr,
                "a broadcast address: 255.255.255.255 or the subnet's (e.g. 10.0.0.255)",
            ));
        }
        if self.secret.as_deref() == Some("") {
            return Err(err(
                "secret",
                "\"\"",
                "a non-empty secret, or no value to use the cluster's cookie",
            ));
        }
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return Err(err(
                "cluster_name",
                format!("{:?}", self.cluster_name),
                "1 to 64 bytes",
            ));
        }
        if let Some(w) = self.replay_window
            && w < Duration::from_millis(100)
        {
            return Err(err(
                "replay_window",
                humantime::format_duration(w),
                "at least 100ms (it must cover the clock differences between hosts)",
            ));
        }
        Ok(())
    }

    /// The replay window in force: the configured one, or 2 × `interval` + 2 s.
    pub fn effective_replay_window(&self) -> Duration {
        self.replay_window.unwrap_or_else(|| {
            self.interval
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(2))
        })
    }

    /// The address the socket binds (see `if_addr`).
    pub fn bind_ip(&self) -> IpAddr {
        if let Some(a) = self.if_addr {
            return a;
        }
        if self.broadcast_only {
            return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        }
        match self.multicast_addr {
            IpAddr::V4(g) if cfg!(target_os = "linux") => IpAddr::V4(g),
            g => socket::unspecified(g.is_ipv6()),
        }
    }

    /// How long a node stays in the peer set after it was last heard: 3 × `interval`.
    pub fn live_for(&self) -> Duration {
        self.interval.saturating_mul(3)
    }
}
