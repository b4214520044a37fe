//! DNS: the peers are the addresses a name resolves to (A and AAAA records, as a
//! Kubernetes headless service gives), or the targets and ports of its SRV records (as a
//! StatefulSet's `_cluster._tcp.app.ns.svc.cluster.local` gives).
//!
//! Each configured name is polled every `interval`, and sooner when its answer's TTL
//! runs out first: an answer is never used past its TTL. Each name (and each record type
//! of it) keeps its own state:
//!
//! - an answer replaces what that name gave before; NXDOMAIN or no records of the type is
//!   an answer too (nothing is there: its peers leave the set, and the membership prunes
//!   them after the topology's `prune_after`);
//! - a failure (timeout, SERVFAIL, REFUSED, a garbled or truncated answer) keeps that
//!   name's last good answer, is counted, and is reported through
//!   [`Context::failing`](super::Context::failing), which logs the transition once;
//!   another name's peers are not touched. It is retried with backoff, no later than
//!   `interval`.
//!
//! Node names are `basename@<ip>` (IPv6 written canonically, `app@fd00::5`) for A/AAAA
//! peers, and `basename@<target>` for SRV peers (the target lowercased, without its final
//! dot: `app@app-0.app.ns.svc.cluster.local`). The basename is the query's
//! `node_basename`, else this node's own. A/AAAA peers are dialled on this node's cluster
//! port, SRV peers on the record's port. An SRV target with several addresses is one
//! node: the first of its addresses (IPv4 before IPv6, then in order) is dialled.
//!
//! The strategy is authoritative: a node that has left every authoritative set is pruned
//! after the grace period. The resolver is injected ([`Dns::with_resolver`]); the default
//! is [`HickoryResolver`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::{Context, Peer, PeerSet, Strategy};
use crate::node::NodeName;

mod config;
mod resolver;
#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError, Query, Record};
pub use resolver::{Answer, Family, HickoryResolver, LookupError, Resolve, Srv};

/// The DNS strategy. Build it with [`Dns::new`] or [`Dns::from_config`]; see the module
/// docs for what it reports.
///
/// ```
/// use rallypoint::strategies::dns::{Dns, Query};
/// // The pods behind a headless service, and another app's nodes by SRV:
/// let pods = Dns::new(["myapp-headless.default.svc.cluster.local"]);
/// let other = Dns::new([Query::new("_cluster._tcp.store.default.svc.cluster.local")
///     .node_basename("store")])
///     .srv();
/// ```
pub struct Dns<R = HickoryResolver> {
    config: Config,
    resolver: R,
}

impl<R> fmt::Debug for Dns<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns").field("config", &self.config).finish()
    }
}

impl Dns {
    /// A strategy querying these names for A and AAAA records, every 5 s, with the
    /// system's resolver. The names are checked when the strategy starts; use
    /// [`Dns::from_config`] to check them up front.
    pub fn new<I, Q>(queries: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<Query>,
    {
        let config = Config {
            query: queries.into_iter().map(Into::into).collect(),
            ..Config::default()
        };
        Dns {
            resolver: HickoryResolver::system(),
            config,
        }
    }

    /// A strategy from its configuration, refusing a bad value.
    pub fn from_config(config: Config) -> Result<Self, ConfigError> {
        let servers = config.check()?;
        let resolver = resolver_for(&servers, config.timeout);
        Ok(Dns { config, resolver })
    }

    /// Asks these name servers instead of the system's (no search domains then).
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        let servers: Vec<SocketAddr> = servers.into_iter().collect();
        self.config.nameservers = servers.iter().map(|a| a.to_string()).collect();
        self.resolver = resolver_for(&servers, self.config.timeout);
        self
    }

    /// Sets how long one query waits for an answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self.resolver = self.resolver.timeout(timeout);
        self
    }
}

fn resolver_for(servers: &[SocketAddr], timeout: Option<Duration>) -> HickoryResolver {
    let r = if servers.is_empty() {
        HickoryResolver::system()
    } else {
        HickoryResolver::with_nameservers(servers.iter().copied())
    };
    match timeout {
        Some(t) => r.timeout(t),
        None => r,
    }
}

impl<R: Resolve> Dns<R> {
    /// Asks for SRV records instead of A and AAAA.
    pub fn srv(self) -> Self {
        self.record(Record::Srv)
    }

    /// Sets which records to ask for.
    pub fn record(mut self, record: Record) -> Self {
        self.config.record = record;
        self
    }

    /// Sets how often each name is asked again, at most.
    pub fn interval(mut self, every: Duration) -> Self {
        self.config.interval = every;
        self
    }

    /// Uses this resolver (for tests, or a resolver of your own).
    pub fn with_resolver<S: Resolve>(self, resolver: S) -> Dns<S> {
        Dns {
            config: self.config,
            resolver,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<R: Resolve> Strategy for Dns<R> {
    fn kind(&self) -> &'static str {
        "dns"
    }

    fn authoritative(&self) -> bool {
        true
    }

    async fn run(self, ctx: Context) {
        if let Err(e) = self.config.validate() {
            ctx.failing(&e);
            ctx.shutdown().await;
            return;
        }
        let mut state = State::new(&self.config, &ctx);
        tokio::select! {
            _ = ctx.shutdown() => {}
            _ = state.run(&self.resolver, &ctx) => {}
        }
    }
}

/// The shortest time an answer is used before it is asked again (a TTL of 0 would
/// otherwise have the strategy ask without pause).
const MIN_REQUERY: Duration = Duration::from_secs(1);

/// What one record type of one name gave.
struct Slot<T> {
    /// When to ask again.
    due: Instant,
    /// The last answer (empty after NXDOMAIN); `None` until the first answer.
    last: Option<Vec<T>>,
    /// The current failure, while failing.
    error: Option<LookupError>,
    /// Whether it was asked at least once.
    asked: bool,
    backoff: Backoff,
}

impl<T: PartialEq> Slot<T> {
    fn new(now: Instant, interval: Duration) -> Self {
        Slot {
            due: now,
            last: None,
            error: None,
            asked: false,
            backoff: Backoff::new(MIN_REQUERY.min(interval), interval),
        }
    }

    fn settle(
        &mut self,
        now: Instant,
        interval: Duration,
        result: Result<Answer<T>, LookupError>,
        rng: &mut StdRng,
    ) {
        self.asked = true;
        match result {
            Ok(answer) => {
                let keep = answer.ttl.map_or(interval, |ttl| {
                    ttl.clamp(MIN_REQUERY.min(interval), interval)
                });
                self.due = now + keep;
                self.last = Some(answer.records);
                self.error = None;
                self.backoff.reset();
            }
            Err(e) => {
                self.due = now + self.backoff.next_delay(rng).min(interval);
                self.error = Some(e);
            }
        }
    }

    fn records(&self) -> &[T] {
        self.last.as_deref().unwrap_or(&[])
    }
}

/// A and AAAA of one name.
struct Addrs {
    v4: Slot<IpAddr>,
    v6: Slot<IpAddr>,
}

impl Addrs {
    fn new(now: Instant, interval: Duration) -> Self {
        Addrs {
            v4: Slot::new(now, interval),
            v6: Slot::new(now, interval),
        }
    }

    fn slot(&mut self, f: Family) -> &mut Slot<IpAddr> {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Every address, IPv4 first, sorted, without repeats.
    fn all(&self) -> BTreeSet<IpAddr> {
        self.v4
            .records()
            .iter()
            .chain(self.v6.records())
            .copied()
            .collect()
    }
}

/// One configured name.
struct Entry {
    name: String,
    basename: String,
    /// Its A/AAAA answers (`record = "a"`).
    addrs: Option<Addrs>,
    /// Its SRV answers (`record = "srv"`).
    srv: Option<Slot<Srv>>,
}

/// What to ask next.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ask {
    Addrs(usize, Family),
    Srv(usize),
    Target(String, Family),
}

/// The strategy's state: every name's answers, and the SRV targets' addresses.
struct State {
    entries: Vec<Entry>,
    /// SRV targets (FQDN, lowercased, with the final dot) and their addresses.
    targets: BTreeMap<String, Addrs>,
    interval: Duration,
    port: u16,
    rng: StdRng,
    /// The set last reported (before the context drops this node from it).
    reported: Option<PeerSet>,
}

impl State {
    fn new(config: &Config, ctx: &Context) -> Self {
        let now = Instant::now();
        let own = ctx.local().name.basename().to_owned();
        let entries = config
            .query
            .iter()
            .map(|q| Entry {
                name: q.name.clone(),
                basename: q.node_basename.clone().unwrap_or_else(|| own.clone()),
                addrs: (config.record == Record::A).then(|| Addrs::new(now, config.interval)),
                srv: (config.record == Record::Srv).then(|| Slot::new(now, config.interval)),
            })
            .collect();
        State {
            entries,
            targets: BTreeMap::new(),
            interval: config.interval,
            port: ctx.local().addr.port(),
            rng: StdRng::from_entropy(),
            reported: None,
        }
    }

    async fn run<R: Resolve>(&mut self, resolver: &R, ctx: &Context) {
        loop {
            let now = Instant::now();
            let due = self.due(now);
            if due.is_empty() {
                tokio::time::sleep_until(self.next_due()).await;
                continue;
            }
            let results =
                futures::future::join_all(due.iter().map(|ask| self.ask(resolver, ask))).await;
            let now = Instant::now();
            for (ask, result) in due.into_iter().zip(results) {
                self.settle(ctx, now, ask, result);
            }
            self.sync_targets(now);
            if self.targets.values().any(|t| !t.v4.asked || !t.v6.asked) {
                // New SRV targets: resolve them before reporting.
                continue;
            }
            self.publish(ctx);
        }
    }

    /// Everything due at `now`.
    fn due(&self, now: Instant) -> Vec<Ask> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(a) = &e.addrs {
                if a.v4.due <= now {
                    out.push(Ask::Addrs(i, Family::V4));
                }
                if a.v6.due <= now {
                    out.push(Ask::Addrs(i, Family::V6));
                }
            }
            if let Some(s) = &e.srv
                && s.due <= now
            {
                out.push(Ask::Srv(i));
            }
        }
        for (name, a) in &self.targets {
            if a.v4.due <= now {
                out.push(Ask::Target(name.clone(), Family::V4));
            }
            if a.v6.due <= now {
                out.push(Ask::Target(name.clone(), Family::V6));
            }
        }
        out
    }

    /// When the next slot is due.
    fn next_due(&self) -> Instant {
        let addrs = self
            .entries
            .iter()
            .filter_map(|e| e.addrs.as_ref())
            .chain(self.targets.values())
            .flat_map(|a| [a.v4.due, a.v6.due]);
        let srv = self
            .entries
            .iter()
            .filter_map(|e| e.srv.as_ref().map(|s| s.due));
        addrs
            .chain(srv)
            .min()
            .unwrap_or_else(|| Instant::now() + self.interval)
    }

    async fn ask<R: Resolve>(&self, resolver: &R, ask: &Ask) -> Outcome {
        match ask {
            Ask::Addrs(i, f) => {
                Outcome::Addrs(resolver.lookup_ip(&self.entries[*i].name, *f).await)
            }
            Ask::Target(name, f) => Outcome::Addrs(resolver.lookup_ip(name, *f).await),
            Ask::Srv(i) => Outcome::Srv(resolver.lookup_srv(&self.entries[*i].name).await),
        }
    }

    fn settle(&mut self, ctx: &Context, now: Instant, ask: Ask, outcome: Outcome) {
        ctx.count("queries", 1);
        match &outcome {
            Outcome::Addrs(Err(e)) | Outcome::Srv(Err(e)) => ctx.count(e.counter(), 1),
            Outcome::Addrs(Ok(a)) if a.records.is_empty() => ctx.count("empty_answers", 1),
            Outcome::Srv(Ok(a)) if a.records.is_empty() => ctx.count("empty_answers", 1),
            _ => {}
        }
        let interval = self.interval;
        match (ask, outcome) {
            (Ask::Addrs(i, f), Outcome::Addrs(r)) => {
                if let Some(a) = self.entries[i].addrs.as_mut() {
                    a.slot(f).settle(now, interval, r, &mut self.rng);
                }
            }
            (Ask::Target(name, f), Outcome::Addrs(r)) => {
                if let Some(a) = self.targets.get_mut(&name) {
                    a.slot(f).settle(now, interval, r, &mut self.rng);
                }
            }
            (Ask::Srv(i), Outcome::Srv(r)) => {
                let basename = self.entries[i].basename.clone();
                let r = r.map(|mut answer| {
                    let before = answer.records.len();
                    answer.records = answer
                        .records
                        .into_iter()
                        .filter_map(|s| usable_target(&basename, s))
                        .collect();
                    answer.records.sort();
                    answer.records.dedup();
                    let dropped = before - answer.records.len();
                    if dropped > 0 {
                        ctx.count("invalid_records", dropped as u64);
                    }
                    answer
                });
                if let Some(s) = self.entries[i].srv.as_mut() {
                    s.settle(now, interval, r, &mut self.rng);
                }
            }
            _ => {}
        }
    }

    /// Keeps address state for exactly the targets of the current SRV answers.
    fn sync_targets(&mut self, now: Instant) {
        let wanted: BTreeSet<&str> = self
            .entries
            .iter()
            .filter_map(|e| e.srv.as_ref())
            .flat_map(|s| s.records())
            .map(|s| s.target.as_str())
            .collect();
        self.targets.retain(|t, _| wanted.contains(t.as_str()));
        for t in wanted {
            if !self.targets.contains_key(t) {
                self.targets
                    .insert(t.to_owned(), Addrs::new(now, self.interval));
            }
        }
    }

    /// The peers every name's last good answer gives.
    fn peers(&self) -> PeerSet {
        let mut set = PeerSet::new();
        for e in &self.entries {
            if let Some(a) = &e.addrs {
                for ip in a.all() {
                    if let Ok(name) = NodeName::new(&e.basename, &ip.to_string()) {
                        set.insert(Peer::named(name, SocketAddr::new(ip, self.port)));
                    }
                }
            }
            if let Some(s) = &e.srv {
                for srv in s.records() {
                    let Some(ip) = self
                        .targets
                        .get(&srv.target)
                        .and_then(|a| a.all().first().copied())
                    else {
                        continue;
                    };
                    let host = srv.target.trim_end_matches('.');
                    if let Ok(name) = NodeName::new(&e.basename, host) {
                        set.insert(Peer::named(name, SocketAddr::new(ip, srv.port)));
                    }
                }
            }
        }
        set
    }

    /// Whether any name (or SRV target) has answered at least once.
    fn any_answer(&self) -> bool {
        self.entries.iter().any(|e| {
            e.addrs
                .as_ref()
                .is_some_and(|a| a.v4.last.is_some() || a.v6.last.is_some())
                || e.srv.as_ref().is_some_and(|s| s.last.is_some())
        })
    }

    /// What is failing now, one line per name and record type.
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.entries {
            if let Some(a) = &e.addrs {
                for (f, s) in [(Family::V4, &a.v4), (Family::V6, &a.v6)] {
                    if let Some(err) = &s.error {
                        out.push(format!("{} {}: {err}", e.name, f.record_type()));
                    }
                }
            }
            if let Some(s) = &e.srv
                && let Some(err) = &s.error
            {
                out.push(format!("{} SRV: {err}", e.name));
            }
        }
        for (t, a) in &self.targets {
            for (f, s) in [(Family::V4, &a.v4), (Family::V6, &a.v6)] {
                if let Some(err) = &s.error {
                    out.push(format!("{t} {}: {err}", f.record_type()));
                }
            }
        }
        out
    }

    /// Reports the set, and the failures. While anything fails, the set is reported
    /// (when it changed) as degraded, so the context logs the failure once, not a
    /// recovery and a failure at each change.
    ///
    /// Nothing is reported before some name has answered: a strategy that has only
    /// failed has no set, rather than an empty one.
    fn publish(&mut self, ctx: &Context) {
        let peers = self.peers();
        let failures = self.failures();
        let changed = self.reported.as_ref() != Some(&peers);
        if self.any_answer() {
            if failures.is_empty() {
                ctx.report(peers.clone());
                self.reported = Some(peers);
            } else if changed {
                ctx.report_degraded(peers.clone());
                self.reported = Some(peers);
            }
        }
        if !failures.is_empty() {
            ctx.failing(&failures.join("; "));
        }
    }
}

/// A lookup's result.
enum Outcome {
    Addrs(Result<Answer<IpAddr>, LookupError>),
    Srv(Result<Answer<Srv>, LookupError>),
}

/// An SRV record normalised (target lowercased, with its final dot), or `None` when it
/// names no node: the root target (`.`, "no service here") or a target that makes no
/// valid node name.
fn usable_target(basename: &str, srv: Srv) -> Option<Srv> {
    let host = srv.target.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || srv.port == 0 || NodeName::new(basename, &host).is_err() {
        return None;
    }
    Some(Srv {
        target: format!("{host}."),
        port: srv.port,
    })
}
