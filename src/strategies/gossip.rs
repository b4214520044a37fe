//! Gossip: nodes announce themselves with authenticated UDP multicast heartbeats on the
//! local network, and each reports every node it heard recently.
//!
//! Every node sends a heartbeat to the group (`230.1.1.251:45892` by default, TTL 1, so
//! it stays on the local link) when it starts, then every `interval` (spread over 80–100 %
//! of it, so nodes started together do not send together). The strategy's peer set is
//! every node heard within 3 × `interval`: a node that goes quiet leaves the candidate
//! set; whether it is down is for the membership to decide.
//!
//! A heartbeat carries the cluster's name, the node's name, incarnation and advertised
//! cluster address, and a timestamp, sealed with ChaCha20-Poly1305 under a key derived
//! (HKDF-SHA256) from `secret`, by default the cluster's cookie. See [`packet`] for the
//! format. A packet is dropped, counted and logged (a warning the first time for each
//! source address and reason, debug after that) when it:
//!
//! | counter | the packet |
//! |---|---|
//! | `gossip_rejected_auth` | does not authenticate: another secret, or altered |
//! | `gossip_rejected_malformed` | is too short or too long, or authenticates but its body is not a heartbeat |
//! | `gossip_rejected_version` | has a format version this node does not read |
//! | `gossip_rejected_cluster` | authenticates but comes from another `cluster_name` |
//! | `gossip_rejected_replay` | has a timestamp outside `replay_window` of the local clock, or not newer than the sender's last one |
//!
//! The other counters: `gossip_accepted` (heartbeats from other nodes that were taken),
//! `gossip_sent` and `gossip_sent_bytes` (this node's heartbeats), `gossip_send_errors`,
//! `gossip_recv_errors`. Counters reach [`TopologyStatus`](super::TopologyStatus) in
//! batches, at each heartbeat this node sends and whenever the set is reported.
//!
//! When the socket cannot be set up (a bind or join fails) or a heartbeat cannot be
//! sent, the strategy reports the failure with an error that names the option to change,
//! keeps its last set, and retries with backoff.
//!
//! ```no_run
//! use rallypoint::strategies::gossip::{Config, Gossip};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let gossip = Gossip::new(Config {
//!     interval: std::time::Duration::from_millis(500),
//!     ..Config::default()
//! })?;
//! let cluster = rallypoint::Cluster::builder()
//!     .name("app@10.0.0.5")
//!     .topology("lan", gossip)
//!     .start()
//!     .await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::{Context, PeerSet, Strategy};

mod heard;
pub mod packet;
mod socket;
#[cfg(test)]
mod tests;

pub use socket::{SendError, SetupError};

use heard::{Accepted, Heard};
use packet::{Key, OpenError};

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

/// The gossip strategy (see the [module docs](self)). Not authoritative: a node that
/// goes quiet leaves the candidate set, and the membership decides when it is down.
#[derive(Clone, Debug, Default)]
pub struct Gossip {
    config: Config,
}

impl Gossip {
    /// A gossip strategy with this configuration, refused with the key at fault if it is
    /// invalid.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Gossip { config })
    }

    /// The same as [`Gossip::new`], named as the other strategies' constructors from
    /// configuration.
    pub fn from_config(config: Config) -> Result<Self, ConfigError> {
        Self::new(config)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Strategy for Gossip {
    fn kind(&self) -> &'static str {
        "gossip"
    }

    async fn run(self, ctx: Context) {
        let key = match &self.config.secret {
            Some(s) => Key::derive(s.as_bytes()),
            None => Key::derive(ctx.cookie().as_bytes()),
        };
        let mut node = Runner::new(self.config, key);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match socket::open(&node.config) {
                Ok(ep) => {
                    backoff.reset();
                    tracing::debug!(topology = %ctx.topology(), dest = %ep.dest, "gossip socket ready");
                    match node.serve(&ctx, ep).await {
                        Ended::Shutdown => return,
                        Ended::Broken(e) => ctx.failing(&format_args!(
                            "gossip: receiving failed, setting the socket up again: {e}"
                        )),
                    }
                }
                Err(e) => ctx.failing(&e),
            }
            node.flush(&ctx);
            let delay = backoff.next_delay(&mut node.rng);
            if !ctx.sleep(delay).await {
                return;
            }
        }
    }
}

enum Ended {
    Shutdown,
    Broken(std::io::Error),
}

/// The running strategy's state, across socket set-ups.
struct Runner {
    config: Config,
    key: Key,
    heard: Heard,
    reported: Option<PeerSet>,
    /// When the set was last computed: expiries after it are still to be looked at.
    checked: std::time::Instant,
    send_failing: bool,
    counters: BTreeMap<&'static str, u64>,
    complaints: Complaints,
    rng: StdRng,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Runner {
    fn new(config: Config, key: Key) -> Self {
        Runner {
            heard: Heard::new(config.live_for(), config.effective_replay_window()),
            config,
            key,
            reported: None,
            checked: std::time::Instant::now(),
            send_failing: false,
            counters: BTreeMap::new(),
            complaints: Complaints::default(),
            rng: StdRng::from_entropy(),
        }
    }

    fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }

    /// Hands the counters gathered since the last flush to the context.
    fn flush(&mut self, ctx: &Context) {
        for (name, n) in std::mem::take(&mut self.counters) {
            ctx.count(name, n);
        }
    }

    /// Reports the set if it changed (or always, with `force`: that also clears a
    /// failure).
    fn report(&mut self, ctx: &Context, force: bool) {
        let now = std::time::Instant::now();
        let peers = self.heard.peers(now);
        self.checked = now;
        if force || self.reported.as_ref() != Some(&peers) {
            self.flush(ctx);
            ctx.report(peers.clone());
            self.reported = Some(peers);
        }
    }

    /// The next send time after one at `now`: 80–100 % of the interval.
    fn next_send(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        now + self.config.interval.mul_f64(self.rng.gen_range(0.8..=1.0))
    }

    async fn serve(&mut self, ctx: &Context, ep: socket::Endpoint) -> Ended {
        let mut buf = vec![0u8; packet::MAX_PACKET + 1];
        let mut next_send = tokio::time::Instant::now();
        self.report(ctx, true);
        loop {
            let expiry = self
                .heard
                .next_expiry(self.checked)
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = ctx.shutdown() => {
                    self.flush(ctx);
                    return Ended::Shutdown;
                }
                r = ep.socket.recv_from(&mut buf) => match r {
                    Ok((n, src)) => self.on_packet(ctx, &buf[..n], src),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.count("gossip_recv_errors", 1);
                        return Ended::Broken(e);
                    }
                },
                _ = tokio::time::sleep_until(next_send) => {
                    self.send(ctx, &ep).await;
                    next_send = self.next_send(tokio::time::Instant::now());
                    self.heard.forget_old(std::time::Instant::now());
                    self.flush(ctx);
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or(next_send)), if expiry.is_some() => {
                    self.report(ctx, false);
                }
            }
        }
    }

    async fn send(&mut self, ctx: &Context, ep: &socket::Endpoint) {
        let me = ctx.local();
        let hb = packet::Heartbeat {
            cluster: self.config.cluster_name.clone(),
            name: me.name.clone(),
            incarnation: me.incarnation,
            addr: me.addr,
            timestamp_ms: unix_ms(SystemTime::now()),
        };
        let packet = match packet::seal(&self.key, &hb, self.rng.r#gen()) {
            Ok(p) => p,
            Err(e) => {
                self.count("gossip_send_errors", 1);
                ctx.failing(&format_args!("gossip: {e}"));
                return;
            }
        };
        match ep.socket.send_to(&packet, ep.dest).await {
            Ok(n) => {
                self.count("gossip_sent", 1);
                self.count("gossip_sent_bytes", n as u64);
                if self.send_failing {
                    self.send_failing = false;
                    self.report(ctx, true);
                }
            }
            Err(e) => {
                self.count("gossip_send_errors", 1);
                self.send_failing = true;
                ctx.failing(&SendError::new(ep.dest, self.config.broadcast_only, e));
            }
        }
    }

    fn on_packet(&mut self, ctx: &Context, bytes: &[u8], src: SocketAddr) {
        let mut hb = match packet::open(&self.key, bytes) {
            Ok(hb) => hb,
            Err(e) => {
                let counter = match e {
                    OpenError::Auth => "gossip_rejected_auth",
                    OpenError::Version(_) => "gossip_rejected_version",
                    OpenError::TooShort(_) | OpenError::TooLarge | OpenError::Malformed(_) => {
                        "gossip_rejected_malformed"
                    }
                };
                self.reject(ctx, counter, src, &e);
                return;
            }
        };
        let me = ctx.local();
        if hb.name == me.name && hb.incarnation == me.incarnation {
            return; // our own heartbeat, looped back
        }
        if hb.cluster != self.config.cluster_name {
            let why = format!(
                "heartbeat of {} is for cluster {:?}, this node's is {:?}",
                hb.name, hb.cluster, self.config.cluster_name
            );
            self.reject(ctx, "gossip_rejected_cluster", src, &why);
            return;
        }
        if hb.addr.ip().is_unspecified() {
            hb.addr.set_ip(src.ip());
        }
        if let (SocketAddr::V6(a), SocketAddr::V6(s)) = (&mut hb.addr, src)
            && a.ip().is_unicast_link_local()
            && a.scope_id() == 0
        {
            a.set_scope_id(s.scope_id());
        }
        match self
            .heard
            .accept(&hb, unix_ms(SystemTime::now()), std::time::Instant::now())
        {
            Ok(outcome) => {
                self.count("gossip_accepted", 1);
                if outcome == Accepted::Changed {
                    self.report(ctx, false);
                }
            }
            Err(stale) => {
                let why = format!("heartbeat of {}: {stale}", hb.name);
                self.reject(ctx, "gossip_rejected_replay", src, &why);
            }
        }
    }

    fn reject(
        &mut self,
        ctx: &Context,
        counter: &'static str,
        src: SocketAddr,
        why: &dyn fmt::Display,
    ) {
        self.count(counter, 1);
        let topology = ctx.topology();
        if self.complaints.first(src.ip(), counter) {
            tracing::warn!(%topology, source = %src, reason = counter, "dropped a gossip packet: {why} (further ones from this source are logged at debug level)");
        } else {
            tracing::debug!(%topology, source = %src, reason = counter, "dropped a gossip packet: {why}");
        }
    }
}

/// Which (source, reason) pairs have been logged as warnings. Bounded: when it is full
/// it starts over, so a flood from many addresses costs a warning per address at most
/// once per 1,024 addresses.
#[derive(Default)]
struct Complaints {
    seen: HashMap<IpAddr, Vec<&'static str>>,
}

impl Complaints {
    const MAX_SOURCES: usize = 1024;

    /// Whether this is the first time `reason` is seen from `ip` (and remembers it).
    fn first(&mut self, ip: IpAddr, reason: &'static str) -> bool {
        if self.seen.len() >= Self::MAX_SOURCES && !self.seen.contains_key(&ip) {
            self.seen.clear();
        }
        let reasons = self.seen.entry(ip).or_default();
        if reasons.contains(&reason) {
            false
        } else {
            reasons.push(reason);
            true
        }
    }
}
