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
//! format.
//!
//! Without a `secret`, a node that holds several cookies (the primary and those it also
//! accepts, [`Builder::accept_cookie`](crate::Builder::accept_cookie)) seals with the
//! primary's key and opens packets sealed with any of them, so gossip goes on through a
//! cookie rotation: nodes that accept both the old and the new cookie hear nodes still
//! on the old one and nodes already on the new one. An explicit `secret` is the only key.
//!
//! A packet is dropped, counted and logged when it:
//!
//! | counter | the packet |
//! |---|---|
//! | `gossip_rejected_auth` | does not authenticate: another secret, or altered |
//! | `gossip_rejected_malformed` | is too short or too long, or authenticates but its body is not a heartbeat |
//! | `gossip_rejected_version` | has a format version this node does not read |
//! | `gossip_rejected_cluster` | authenticates but comes from another `cluster_name` |
//! | `gossip_rejected_replay` | has a timestamp outside `replay_window` of the local clock, or not newer than the sender's last one |
//!
//! The log is rate-limited per reason (counter), whatever the source address, which
//! anyone on the link can forge: at most [`WARN_BURST`] warnings per reason in any
//! [`WARN_WINDOW`], the rest at debug level; the next warning after a quiet spell says how
//! many were held back (see [`crate::warn_limit`]). Nothing is remembered per source.
//! The counters count every packet.
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

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backoff::Backoff;
use super::{Context, PeerSet, Strategy};
use crate::cookie::Cookies;
use crate::warn_limit::{self, WarnLimit};

mod config;
mod heard;
pub mod packet;
mod socket;
#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError};
pub use socket::{SendError, SetupError};

use heard::{Accepted, Heard};
use packet::{Key, OpenError};

/// How many addresses heard with this node's own name are warned about (once each).
const OWN_NAME_WARNINGS: usize = 16;

/// At most this many warnings about dropped packets per reason (counter) in any
/// [`WARN_WINDOW`]; the others are logged at debug level.
pub const WARN_BURST: u32 = 5;
/// The window of [`WARN_BURST`].
pub const WARN_WINDOW: Duration = Duration::from_secs(60);

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
        let keys = Keys::new(self.config.secret.as_deref(), ctx.cookies());
        let mut node = Runner::new(self.config, keys);
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

/// The packet keys: heartbeats are sealed with `seal`, and opened with any of `open`.
struct Keys {
    seal: Key,
    /// `seal` first.
    open: Vec<Key>,
}

impl Keys {
    /// The explicit `secret`'s key alone; without one, a key per cookie held, the
    /// primary's to seal with.
    fn new(secret: Option<&str>, cookies: &Cookies) -> Keys {
        match secret {
            Some(s) => {
                let key = Key::derive(s.as_bytes());
                Keys {
                    seal: key.clone(),
                    open: vec![key],
                }
            }
            None => Keys {
                seal: Key::derive(cookies.primary().as_bytes()),
                open: (cookies.all().iter())
                    .map(|c| Key::derive(c.as_bytes()))
                    .collect(),
            },
        }
    }
}

/// The running strategy's state, across socket set-ups.
struct Runner {
    config: Config,
    keys: Keys,
    heard: Heard,
    reported: Option<PeerSet>,
    /// When the set was last computed: expiries after it are still to be looked at.
    checked: Instant,
    send_failing: bool,
    counters: BTreeMap<&'static str, u64>,
    /// Which drops are logged as warnings: per reason, never per source.
    warnings: WarnLimit,
    /// Addresses heard gossiping with this node's name, warned about once each.
    own_name_warned: HashSet<SocketAddr>,
    rng: StdRng,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Runner {
    fn new(config: Config, keys: Keys) -> Self {
        Runner {
            heard: Heard::new(config.live_for(), config.effective_replay_window()),
            config,
            keys,
            reported: None,
            checked: Instant::now(),
            send_failing: false,
            counters: BTreeMap::new(),
            warnings: WarnLimit::new(WARN_BURST, WARN_WINDOW),
            own_name_warned: HashSet::new(),
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
            if self.send_failing {
                ctx.report_degraded(peers.clone());
            } else {
                ctx.report(peers.clone());
            }
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
                    Ok((n, src)) => {
                        let now = Instant::now();
                        self.on_packet(ctx, &buf[..n], src, now, unix_ms(SystemTime::now()));
                    }
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
        let packet = match packet::seal(&self.keys.seal, &hb, self.rng.r#gen()) {
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

    /// Takes one datagram from `src`, received at `now` (`now_ms` on the wall clock, ms
    /// since the Unix epoch): a heartbeat joins the set, anything else is counted and
    /// logged as [`reject`](Self::reject) says.
    fn on_packet(
        &mut self,
        ctx: &Context,
        bytes: &[u8],
        src: SocketAddr,
        now: Instant,
        now_ms: u64,
    ) {
        let mut hb = match packet::open_any(&self.keys.open, bytes) {
            Ok(hb) => hb,
            Err(e) => {
                let counter = match e {
                    OpenError::Auth => "gossip_rejected_auth",
                    OpenError::Version(_) => "gossip_rejected_version",
                    OpenError::TooShort(_) | OpenError::TooLarge | OpenError::Malformed(_) => {
                        "gossip_rejected_malformed"
                    }
                };
                self.reject(ctx, counter, src, &e, now);
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
            self.reject(ctx, "gossip_rejected_cluster", src, &why, now);
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
        match self.heard.accept(&hb, now_ms, now) {
            Ok(outcome) => {
                self.count("gossip_accepted", 1);
                if hb.name == me.name && hb.incarnation != me.incarnation && hb.addr != me.addr {
                    self.warn_own_name(ctx, hb.addr);
                }
                if outcome == Accepted::Changed {
                    self.report(ctx, false);
                }
            }
            Err(stale) => {
                let why = format!("heartbeat of {}: {stale}", hb.name);
                self.reject(ctx, "gossip_rejected_replay", src, &why, now);
            }
        }
    }

    /// Another live node at `addr` gossips with this node's name: the two would never
    /// connect (the membership skips a candidate with its own name), silently. Says so
    /// once per address (for at most [`OWN_NAME_WARNINGS`] addresses), with the fix.
    fn warn_own_name(&mut self, ctx: &Context, addr: SocketAddr) {
        if self.own_name_warned.len() >= OWN_NAME_WARNINGS || !self.own_name_warned.insert(addr) {
            return;
        }
        let name = &ctx.local().name;
        tracing::warn!(
            topology = %ctx.topology(),
            %addr,
            "another node at {addr} uses this node's name {name}: the two will never \
             connect; give every node its own name (--name, `name` in the file, or \
             RALLYPOINT_NAME)"
        );
    }

    /// Counts a dropped packet under `counter`, and logs it: as a warning while the
    /// reason's budget lasts ([`WARN_BURST`] per [`WARN_WINDOW`]), else at debug level.
    /// The budget is per reason only, so forged source addresses cannot widen it.
    fn reject(
        &mut self,
        ctx: &Context,
        counter: &'static str,
        src: SocketAddr,
        why: &dyn fmt::Display,
        now: Instant,
    ) {
        self.count(counter, 1);
        let topology = ctx.topology();
        warn_limit::log(&mut self.warnings, now, counter, || {
            format!(
                "dropped a gossip packet from {src} (topology {topology}): {why} \
                 (at most {WARN_BURST} warnings per {WARN_WINDOW:?} for this reason, \
                 the rest at debug level; every packet is counted)"
            )
        });
    }
}
