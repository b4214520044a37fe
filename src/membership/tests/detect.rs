//! The failure detector at scale, through the simulator (the rules in
//! `docs/membership.md`, "Failure detection"): a silent node is down at every live node
//! within the bound; a bad link between a node and one of its monitors takes it out of no
//! third node's view; frames per node per second do not grow with the cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{all, seeded_cluster};
use crate::events::{DownReason, Event};
use crate::membership::Config;
use crate::membership::sim::{Sim, SimConfig};

/// `n` nodes at the default timing, with jitter and `loss`, run to a full mesh.
fn converged(n: usize, seed: u64, loss: f64) -> Sim {
    let mut sim = seeded_cluster(
        n,
        SimConfig {
            seed,
            loss,
            jitter: Duration::from_millis(5),
            ..SimConfig::default()
        },
    );
    let took = sim.run_until(Duration::from_secs(120), Duration::from_millis(100), |s| {
        s.is_full_mesh(&all(n))
    });
    assert!(took.is_some(), "seed {seed}: {n} nodes did not converge");
    sim
}

/// Frames sent per node per second of virtual time over `window` of steady state.
fn frames_per_node_per_second(sim: &mut Sim, window: Duration) -> f64 {
    let before = sim.frames_sent();
    sim.run_for(window, u64::MAX);
    (sim.frames_sent() - before) as f64 / sim.len() as f64 / window.as_secs_f64()
}

/// The `nodedown`s node `i` reported since event `mark`: (peer name, reason, when).
fn downs_since(sim: &Sim, i: usize, mark: usize) -> Vec<(String, DownReason, Instant)> {
    sim.events(i)[mark..]
        .iter()
        .filter_map(|(at, _, e)| match e {
            Event::NodeDown { node, reason } => Some((node.name.to_string(), *reason, *at)),
            _ => None,
        })
        .collect()
}

fn marks(sim: &Sim) -> Vec<usize> {
    (0..sim.len()).map(|i| sim.events(i).len()).collect()
}

#[test]
fn frames_per_node_stay_flat_as_the_cluster_grows() {
    let d = Config::default();
    // A node's steady traffic: heartbeats to its `monitored_by` monitors every interval,
    // plus one anti-entropy exchange per `sync_interval`; nothing that grows with N.
    let ceiling = 2.0 * d.monitored_by as f64 / d.heartbeat_interval.as_secs_f64();
    let mut rates = Vec::new();
    for n in [20, 100, 300] {
        let mut sim = converged(n, n as u64, 0.0);
        let rate = frames_per_node_per_second(&mut sim, Duration::from_secs(20));
        eprintln!("{n} nodes: {rate:.2} frames per node per second");
        assert!(
            rate <= ceiling,
            "{n} nodes: {rate:.2} frames/node/s, more than {ceiling}"
        );
        rates.push(rate);
    }
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    assert!(
        hi <= lo * 1.25,
        "frames per node per second grow with N: {rates:?}"
    );
}

#[test]
fn at_a_thousand_nodes_silence_is_down_everywhere_in_bound_and_a_bad_link_nowhere_else() {
    let n = 1000;
    let cfg = Config::default();
    let d = cfg.down_after;
    // The bound the docs state: `down_after` after the last frame heard, plus the probe
    // timeout as room for the suspicion's delivery and retransmissions under loss.
    let bound = d + d / 6;
    for seed in [1u64, 2] {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = converged(n, seed, 0.01);
        let rate = frames_per_node_per_second(&mut sim, Duration::from_secs(10));
        eprintln!("seed {seed}: {n} nodes, {rate:.2} frames per node per second");

        // Steady state under 1 % loss (each loss costs a 200 ms retransmission): nobody
        // is reported down.
        let before = marks(&sim);
        sim.run_for(Duration::from_secs(30), u64::MAX);
        for i in 0..n {
            let downs = downs_since(&sim, i, before[i]);
            assert!(
                downs.is_empty(),
                "seed {seed}: node {i} false downs {downs:?}"
            );
        }

        // One bad link: everything `x` sends to one of its monitors is lost. That
        // monitor's view loses `x` (and `x`'s loses it: the monitor cuts the
        // connection); every other node confirms `x` on its own connection and keeps it.
        let x = rng.gen_range(0..n);
        let x_name = sim.node(x).expect("running").name;
        let m = (0..n)
            .find(|&i| i != x && sim.core(i).is_some_and(|c| c.watches(&x_name)))
            .expect("x has a monitor");
        let m_name = sim.node(m).expect("running").name.to_string();
        let before = marks(&sim);
        sim.cut_one_way(x, m);
        sim.run_for(d * 3, u64::MAX);
        for i in (0..n).filter(|&i| i != x && i != m) {
            let downs = downs_since(&sim, i, before[i]);
            assert!(
                downs.is_empty(),
                "seed {seed}: node {i} reported {downs:?} after a bad link {x}→{m}"
            );
        }
        let at_m = downs_since(&sim, m, before[m]);
        assert!(
            at_m.iter()
                .any(|(p, r, _)| *p == x_name.to_string() && *r == DownReason::HeartbeatTimeout),
            "seed {seed}: the monitor whose link is bad kept {x}: {at_m:?}"
        );
        assert!(
            downs_since(&sim, x, before[x])
                .iter()
                .all(|(p, _, _)| *p == m_name),
            "seed {seed}: node {x} lost others than {m}"
        );
        sim.heal();
        assert!(
            sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| s
                .is_full_mesh(&all(n)))
                .is_some(),
            "seed {seed}: the bad link healed but the mesh did not"
        );

        // A silent node: every link of `y` is cut at once (a frozen process, a pulled
        // cable). Every live node reports it down, for silence, within the bound, and
        // nobody else.
        let y = loop {
            let y = rng.gen_range(0..n);
            if y != x && y != m {
                break y;
            }
        };
        let y_name = sim.node(y).expect("running").name.to_string();
        let before = marks(&sim);
        let others: Vec<usize> = (0..n).filter(|&i| i != y).collect();
        let cut_at = sim.now();
        sim.partition(&[vec![y], others.clone()]);
        let seen = |s: &Sim| {
            others.iter().all(|&i| {
                downs_since(s, i, before[i])
                    .iter()
                    .any(|(p, _, _)| *p == y_name)
            })
        };
        assert!(
            sim.run_until(d * 4, Duration::from_millis(20), seen)
                .is_some(),
            "seed {seed}: the silent node {y} was not reported down everywhere"
        );
        let mut late = BTreeSet::new();
        for &i in &others {
            let downs = downs_since(&sim, i, before[i]);
            assert_eq!(downs.len(), 1, "seed {seed}: node {i}: {downs:?}");
            let (_, reason, at) = &downs[0];
            assert_eq!(
                *reason,
                DownReason::HeartbeatTimeout,
                "seed {seed}: node {i}"
            );
            if *at > cut_at + bound {
                late.insert((i, *at - cut_at));
            }
        }
        assert!(
            late.is_empty(),
            "seed {seed}: reported {y} down later than {bound:?}: {late:?}"
        );
        sim.check_invariants().unwrap();
    }
}
