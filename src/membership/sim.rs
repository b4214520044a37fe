//! A deterministic simulator: many [`Core`]s on a virtual network, in virtual time.
//!
//! Every node gets an address `10.x.y.z:45893`. Connections behave like TCP: frames of
//! one connection arrive in order after `latency`; "loss" delays a frame by one
//! retransmission timeout (TCP does not lose frames, it repeats them); a cut link is a
//! black hole in both directions, and a connection whose far end closed while the link
//! was cut is reset when it next sends over a working link. A crashed node's connections
//! reset; a node that leaves sends its `Leave` frames first.
//!
//! Time only moves when the simulator jumps to the next scheduled event, so a run of
//! minutes of virtual time takes as long as the work in it, and the same seed gives the
//! same run. Every event each node emits is recorded for checking afterwards
//! ([`Sim::check_invariants`], [`Sim::is_full_mesh`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Config;
use super::core::{Action, ConnId, Core, TopologyInfo};
use super::wire::Frame;
use crate::cookie::Cookie;
use crate::events::Event;
use crate::node::{Node, NodeName};
use crate::peer::{Peer, PeerSet};

/// Parameters of the virtual network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One-way delay of every frame.
    pub latency: Duration,
    /// Probability (0.0–1.0) that a frame needs one more retransmission.
    pub loss: f64,
    /// Delay added per retransmission.
    pub rto: Duration,
    /// Up to this much extra delay, at random, per frame and per connection set-up (the
    /// frames of one connection stay in order).
    pub jitter: Duration,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// The membership configuration of every node.
    pub membership: Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(1),
            loss: 0.0,
            rto: Duration::from_millis(200),
            jitter: Duration::ZERO,
            seed: 1,
            membership: Config::default(),
        }
    }
}

/// One end of a simulated connection: node index, node generation, connection id.
type End = (usize, u64, ConnId);

#[derive(Debug)]
enum Ev {
    Timer(usize),
    Accept {
        node: usize,
        epoch: u64,
        dialer: End,
    },
    Connected(End),
    /// The sealed handshake failed (the cookies differ).
    AuthFailed(End),
    Frame(End, Frame),
    Closed(End),
}

struct Scheduled {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    name: NodeName,
    addr: SocketAddr,
    cookie: Cookie,
    epoch: u64,
    core: Option<Core>,
    incarnation: u64,
    candidates: Vec<Arc<PeerSet>>,
    topologies: Vec<TopologyInfo>,
    timer_at: Option<Instant>,
}

/// The simulator. See the [module docs](self).
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    cut: HashSet<(usize, usize)>,
    /// Links that lose what goes one way only: `(from, to)`.
    one_way: HashSet<(usize, usize)>,
    frames_sent: u64,
    pairs: HashMap<End, End>,
    /// Ends whose far end closed across a cut link, with the far node: the next send
    /// gets a reset once the link works again.
    orphans: HashMap<End, usize>,
    last_delivery: HashMap<End, Instant>,
    events: Vec<Vec<(Instant, u64, Event)>>,
    processed: u64,
    delivered: u64,
}

impl Sim {
    /// An empty network.
    pub fn new(cfg: SimConfig) -> Self {
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            now: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            cut: HashSet::new(),
            pairs: HashMap::new(),
            orphans: HashMap::new(),
            last_delivery: HashMap::new(),
            events: Vec::new(),
            processed: 0,
            one_way: HashSet::new(),
            frames_sent: 0,
            delivered: 0,
        }
    }

    /// Adds a node (not started) and returns its index. Its name is `n<index>@<ip>`.
    pub fn add_node(&mut self, cookie: &str, topologies: Vec<TopologyInfo>) -> usize {
        let i = self.nodes.len();
        let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let addr = SocketAddr::new(ip.into(), crate::DEFAULT_CLUSTER_PORT);
        let name: NodeName = format!("n{i}@{ip}")
            .parse()
            .unwrap_or_else(|_| unreachable!("valid by construction"));
        let candidates = (0..topologies.len())
            .map(|_| Arc::new(PeerSet::new()))
            .collect();
        self.nodes.push(SimNode {
            name,
            addr,
            cookie: Cookie::new(cookie),
            epoch: 0,
            core: None,
            incarnation: 0,
            candidates,
            topologies,
            timer_at: None,
        });
        self.by_addr.insert(addr, i);
        self.events.push(Vec::new());
        i
    }

    /// Gives node `i` another name (before it starts), e.g. one another node has too.
    pub fn rename(&mut self, i: usize, name: &str) {
        if let Ok(name) = name.parse() {
            self.nodes[i].name = name;
        }
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// How many scheduled events were processed so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// How many frames nodes have sent so far (lost ones included).
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    /// How many pub/sub messages were delivered to nodes so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Node `i` publishes a pub/sub message to every member; returns how many.
    pub fn publish(&mut self, i: usize, topic: &str, payload: &[u8]) -> usize {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return 0;
        };
        let n = core.publish(topic, payload);
        self.after_input(i);
        n
    }

    /// The running instance of node `i`, if it runs.
    pub fn node(&self, i: usize) -> Option<Node> {
        self.nodes[i].core.as_ref().map(|c| c.local().clone())
    }

    /// The core of node `i`, if it runs.
    pub fn core(&self, i: usize) -> Option<&Core> {
        self.nodes[i].core.as_ref()
    }

    /// Every event node `i` emitted, across its restarts: the virtual time, the
    /// incarnation of node `i` that emitted it, the event.
    pub fn events(&self, i: usize) -> &[(Instant, u64, Event)] {
        &self.events[i]
    }

    /// Starts node `i` (again, with a new incarnation, if it ran before) and feeds it its
    /// candidate sets.
    pub fn start(&mut self, i: usize) {
        let seed: u64 = self.rng.r#gen();
        let n = &mut self.nodes[i];
        if n.core.is_some() {
            return;
        }
        // Unique across nodes too (as random incarnations are), so that two nodes given
        // one name are two instances: node index in the high bits, start count below.
        n.incarnation = ((i as u64) << 32) | ((n.incarnation + 1) & 0xffff_ffff);
        n.epoch += 1;
        let local = Node {
            name: n.name.clone(),
            addr: n.addr,
            incarnation: n.incarnation,
        };
        let mut core = Core::new(
            local,
            self.cfg.membership.clone(),
            n.topologies.clone(),
            seed,
            self.now,
        );
        for (t, set) in n.candidates.iter().enumerate() {
            core.handle_candidates(self.now, t, set.clone());
        }
        n.core = Some(core);
        n.timer_at = None;
        self.after_input(i);
    }

    /// Sets the candidates topology `t` of node `i` reports (addresses of other nodes).
    pub fn set_candidates(&mut self, i: usize, t: usize, nodes: &[usize]) {
        let set: PeerSet = nodes
            .iter()
            .map(|&j| Peer::new(self.nodes[j].addr))
            .collect();
        let set = Arc::new(set);
        self.nodes[i].candidates[t] = set.clone();
        let now = self.now;
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.handle_candidates(now, t, set);
            self.after_input(i);
        }
    }

    /// Crashes node `i` (like `kill -9`): its connections reset.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].core.take().is_none() {
            return;
        }
        let epoch = self.nodes[i].epoch;
        let ends: Vec<End> = self
            .pairs
            .keys()
            .filter(|e| e.0 == i && e.1 == epoch)
            .copied()
            .collect();
        for e in ends {
            self.close_end(e);
        }
    }

    /// Shuts node `i` down gracefully: it sends `Leave` to every peer.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        core.leave(now);
        self.drain(i);
        self.nodes[i].core = None;
    }

    /// Cuts every link between the groups (a node in no group keeps its links).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (gi, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(gi + 1) {
                for &x in a {
                    for &y in b {
                        self.cut_link(x, y);
                    }
                }
            }
        }
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut_link(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    /// Loses everything `from` sends to `to` (connections already open stay open; new
    /// ones cannot complete a handshake). The other direction still works.
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        self.one_way.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.one_way.clear();
    }

    /// Sets the frame "loss" probability (each lost frame is delayed by one `rto`).
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss.clamp(0.0, 0.99);
    }

    fn jitter(&mut self) -> Duration {
        if self.cfg.jitter.is_zero() {
            return Duration::ZERO;
        }
        self.cfg.jitter.mul_f64(self.rng.gen_range(0.0..1.0))
    }

    /// Whether the link between `a` and `b` is cut in either direction.
    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
            || self.one_way.contains(&(a, b))
            || self.one_way.contains(&(b, a))
    }

    /// Whether what `from` sends to `to` is lost.
    fn loses(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from.min(to), from.max(to))) || self.one_way.contains(&(from, to))
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn alive(&self, e: End) -> bool {
        self.nodes[e.0].epoch == e.1 && self.nodes[e.0].core.is_some()
    }

    /// Runs until `d` of virtual time has passed, or `max_events` were processed (then
    /// returns `false`).
    pub fn run_for(&mut self, d: Duration, max_events: u64) -> bool {
        let until = self.now + d;
        let mut budget = max_events;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            if budget == 0 {
                return false;
            }
            budget -= 1;
            let Some(Reverse(s)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(s.at);
            self.processed += 1;
            self.dispatch(s.at, s.ev);
        }
        self.now = until;
        true
    }

    /// Runs until `done` holds (checked every `step` of virtual time) or `limit` passed.
    /// Returns the virtual time it took, or `None`.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(step, u64::MAX);
        }
        done(self).then(|| self.now - start)
    }

    fn dispatch(&mut self, at: Instant, ev: Ev) {
        match ev {
            Ev::Timer(i) => {
                if self.nodes[i].timer_at != Some(at) {
                    return;
                }
                self.nodes[i].timer_at = None;
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.handle_timeout(at);
                    self.after_input(i);
                }
            }
            Ev::Accept {
                node,
                epoch,
                dialer,
            } => {
                if !self.alive(dialer) {
                    return;
                }
                if self.nodes[node].epoch != epoch
                    || self.nodes[node].core.is_none()
                    || self.is_cut(node, dialer.0)
                {
                    return;
                }
                if self.nodes[node].cookie != self.nodes[dialer.0].cookie {
                    // The sealed transport's handshake fails: the acceptor's core never
                    // hears of the connection; the dialler's learns why.
                    let t = self.now + self.cfg.latency;
                    self.schedule(t, Ev::AuthFailed(dialer));
                    return;
                }
                let remote = self.nodes[dialer.0].addr;
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return;
                };
                let id = core.handle_accepted(at, remote);
                let me = (node, epoch, id);
                self.pairs.insert(me, dialer);
                self.pairs.insert(dialer, me);
                // SYN-ACK reaches the dialer before the acceptor's Hello.
                let t = self.now + self.cfg.latency;
                self.last_delivery.insert(me, t);
                self.schedule(t, Ev::Connected(dialer));
                self.after_input(node);
            }
            Ev::AuthFailed(e) => {
                if !self.alive(e) {
                    return;
                }
                if let Some(core) = self.nodes[e.0].core.as_mut() {
                    core.handle_auth_failed(at, e.2, "bad_cookie", "the cookies differ");
                    self.after_input(e.0);
                }
            }
            Ev::Connected(e) => {
                if !self.alive(e) {
                    return;
                }
                if let Some(core) = self.nodes[e.0].core.as_mut() {
                    core.handle_connected(at, e.2);
                    self.after_input(e.0);
                }
            }
            Ev::Frame(e, frame) => {
                if !self.alive(e) {
                    return;
                }
                if let Some(core) = self.nodes[e.0].core.as_mut() {
                    core.handle_frame(at, e.2, frame);
                    self.after_input(e.0);
                }
            }
            Ev::Closed(e) => {
                self.last_delivery.remove(&e);
                self.orphans.remove(&e);
                if !self.alive(e) {
                    return;
                }
                if let Some(core) = self.nodes[e.0].core.as_mut() {
                    core.handle_closed(at, e.2);
                    self.after_input(e.0);
                }
            }
        }
    }

    fn after_input(&mut self, i: usize) {
        self.drain(i);
        let Some(t) = self.nodes[i].core.as_ref().and_then(|c| c.poll_timeout()) else {
            return;
        };
        if self.nodes[i].timer_at != Some(t) {
            self.nodes[i].timer_at = Some(t);
            self.schedule(t, Ev::Timer(i));
        }
    }

    fn drain(&mut self, i: usize) {
        let epoch = self.nodes[i].epoch;
        loop {
            let Some(action) = self.nodes[i].core.as_mut().and_then(|c| c.poll_action()) else {
                return;
            };
            match action {
                Action::Connect { conn, addr } => {
                    let me = (i, epoch, conn);
                    match self.by_addr.get(&addr).copied() {
                        Some(j) if !self.is_cut(i, j) => {
                            if self.nodes[j].core.is_some() {
                                let at = self.now + self.cfg.latency + self.jitter();
                                let jepoch = self.nodes[j].epoch;
                                self.schedule(
                                    at,
                                    Ev::Accept {
                                        node: j,
                                        epoch: jepoch,
                                        dialer: me,
                                    },
                                );
                            } else {
                                // Refused: a reset comes back.
                                let at = self.now + self.cfg.latency * 2;
                                self.schedule(at, Ev::Closed(me));
                            }
                        }
                        // Unknown address or cut link: the SYN goes nowhere; the core's
                        // own timeout ends the dial.
                        _ => {}
                    }
                }
                Action::Send { conn, frame } => {
                    let me = (i, epoch, conn);
                    let Some(&peer) = self.pairs.get(&me) else {
                        let far = self.orphans.get(&me).copied();
                        if far.is_some_and(|j| !self.is_cut(i, j)) {
                            // The far end is gone: a reset answers, if the link works
                            // (across a cut link the segment is lost and retried).
                            let at = self.now + self.cfg.latency * 2;
                            self.orphans.remove(&me);
                            self.schedule(at, Ev::Closed(me));
                        }
                        continue;
                    };
                    self.frames_sent += 1;
                    if self.loses(i, peer.0) {
                        continue;
                    }
                    let mut at = self.now + self.cfg.latency + self.jitter();
                    while self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss) {
                        at += self.cfg.rto;
                    }
                    let last = self.last_delivery.get(&me).copied().unwrap_or(at);
                    let at = at.max(last);
                    self.last_delivery.insert(me, at);
                    self.schedule(at, Ev::Frame(peer, frame));
                }
                Action::Close { conn } => self.close_end((i, epoch, conn)),
                Action::Deliver { .. } => self.delivered += 1,
                Action::Emit(e) => {
                    let inc = self.nodes[i].incarnation;
                    self.events[i].push((self.now, inc, e));
                }
            }
        }
    }

    fn close_end(&mut self, me: End) {
        // The close (FIN) follows the frames already sent on this connection.
        let last = self.last_delivery.remove(&me);
        self.orphans.remove(&me);
        let Some(peer) = self.pairs.remove(&me) else {
            return;
        };
        self.pairs.remove(&peer);
        if self.loses(me.0, peer.0) {
            self.orphans.insert(peer, me.0);
        } else {
            let base = self.now + self.cfg.latency;
            let at = last.unwrap_or(base).max(base);
            self.schedule(at, Ev::Closed(peer));
        }
    }

    /// Whether every running node in `group` has exactly the other running nodes of
    /// `group` (current incarnations) as members.
    pub fn is_full_mesh(&self, group: &[usize]) -> bool {
        let count = group
            .iter()
            .filter(|&&i| self.nodes[i].core.is_some())
            .count();
        // Cheap test first: every running node has the right number of members.
        let counts_match = group.iter().all(|&i| {
            self.nodes[i]
                .core
                .as_ref()
                .is_none_or(|c| c.members().count() + 1 == count)
        });
        if !counts_match {
            return false;
        }
        let running: BTreeSet<Node> = group.iter().filter_map(|&i| self.node(i)).collect();
        group.iter().all(|&i| match &self.nodes[i].core {
            None => true,
            Some(c) => {
                let have: BTreeSet<&Node> = c.members().collect();
                have.len() + 1 == running.len()
                    && running.iter().all(|n| *n == *c.local() || have.contains(n))
            }
        })
    }

    /// Checks every node's recorded events: no event about the node itself; per name,
    /// `NodeUp` and `NodeDown` alternate starting with `NodeUp`, and each `NodeDown` is for
    /// the incarnation that was up. Also: no node ever saw a node with another cookie up.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, evs) in self.events.iter().enumerate() {
            let me = &self.nodes[i];
            let mut up: BTreeMap<NodeName, Node> = BTreeMap::new();
            let mut observer = None;
            for (t, inc, e) in evs {
                if observer != Some(*inc) {
                    // A restarted observer starts with no members.
                    observer = Some(*inc);
                    up.clear();
                }
                let n = e.node();
                if n.name == me.name {
                    return Err(format!("node {i} got an event about itself: {e:?}"));
                }
                if let Some(&j) = self.by_addr.get(&n.addr)
                    && self.nodes[j].cookie != me.cookie
                {
                    return Err(format!(
                        "node {i} saw {} up, which has another cookie",
                        n.name
                    ));
                }
                match e {
                    Event::NodeUp(n) => {
                        if let Some(prev) = up.insert(n.name.clone(), n.clone()) {
                            return Err(format!("node {i} at {t:?}: up {n} while {prev} was up"));
                        }
                    }
                    Event::NodeDown { node, .. } => match up.remove(&node.name) {
                        Some(prev) if prev == *node => {}
                        other => {
                            return Err(format!(
                                "node {i} at {t:?}: down {node} while up was {other:?}"
                            ));
                        }
                    },
                }
            }
            // What the events say must be what the core says.
            if let Some(c) = &me.core
                && observer.is_none_or(|o| o == c.local().incarnation)
            {
                let have: BTreeMap<NodeName, Node> =
                    c.members().map(|n| (n.name.clone(), n.clone())).collect();
                if have != up {
                    return Err(format!(
                        "node {i}: events say {:?}, core says {:?}",
                        up.keys(),
                        have.keys()
                    ));
                }
            }
        }
        Ok(())
    }
}
