//! Tests of the membership core, most through the deterministic simulator.

// Index loops read better here: several per-node vectors are walked together.
#![allow(clippy::needless_range_loop)]

use std::time::Duration;

use proptest::prelude::*;

use super::Config;
use super::core::TopologyInfo;
use super::sim::{Sim, SimConfig};
use crate::events::{DownReason, Event};

mod detect;
mod handshake;

fn static_topology() -> Vec<TopologyInfo> {
    vec![TopologyInfo {
        authoritative: false,
        prune_after: Duration::from_secs(30),
    }]
}

/// `n` nodes that all know node 0 only, started.
pub(super) fn seeded_cluster(n: usize, cfg: SimConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    for _ in 0..n {
        sim.add_node("cookie", static_topology());
    }
    for i in 1..n {
        sim.set_candidates(i, 0, &[0]);
    }
    for i in 0..n {
        sim.start(i);
    }
    sim
}

pub(super) fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

#[test]
fn three_nodes_form_a_mesh_through_one_seed() {
    let mut sim = seeded_cluster(3, SimConfig::default());
    let took = sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| {
        s.is_full_mesh(&all(3))
    });
    assert!(took.is_some(), "no full mesh");
    sim.check_invariants().unwrap();
}

#[test]
fn a_thousand_nodes_converge_to_a_full_mesh() {
    let n = 1000;
    let cfg = SimConfig {
        // Slow heartbeats keep the event count (and the test's time) down; convergence
        // does not depend on them.
        membership: Config {
            heartbeat_interval: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            ..Config::default()
        },
        seed: 1000,
        ..SimConfig::default()
    };
    let mut sim = seeded_cluster(n, cfg);
    let took = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.is_full_mesh(&all(n))
    });
    let took = took.expect("1,000 nodes did not converge within 60 s of virtual time");
    eprintln!(
        "1,000 nodes: full mesh after {took:?} of virtual time, {} events",
        sim.processed()
    );
    sim.check_invariants().unwrap();
    for i in 0..n {
        assert_eq!(sim.core(i).map(|c| c.members().count()), Some(n - 1));
    }
}

#[test]
fn simultaneous_dials_keep_one_connection_without_flapping() {
    // Everyone knows everyone and dials at once, with jittery latency: every pair races.
    let n = 30;
    for seed in 0..5 {
        let mut sim = Sim::new(SimConfig {
            seed,
            jitter: Duration::from_millis(5),
            ..SimConfig::default()
        });
        for _ in 0..n {
            sim.add_node("c", static_topology());
        }
        // All running first, then everyone learns of everyone at the same instant.
        for i in 0..n {
            sim.start(i);
        }
        for i in 0..n {
            let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
            sim.set_candidates(i, 0, &others);
        }
        let took = sim.run_until(Duration::from_secs(30), Duration::from_millis(10), |s| {
            s.is_full_mesh(&all(n))
        });
        assert!(took.is_some(), "seed {seed}: no full mesh");
        sim.run_for(Duration::from_secs(10), u64::MAX);
        let races: u64 = (0..n)
            .map(|i| {
                sim.core(i)
                    .unwrap()
                    .stats()
                    .handshake_failures
                    .get("duplicate")
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        assert!(
            races > 0,
            "seed {seed}: no simultaneous dials happened; the test tests nothing"
        );
        for i in 0..n {
            let downs = sim
                .events(i)
                .iter()
                .filter(|(_, _, e)| matches!(e, Event::NodeDown { .. }))
                .count();
            assert_eq!(
                downs,
                0,
                "seed {seed}: node {i} saw a peer flap: {:?}",
                sim.events(i)
                    .iter()
                    .filter(|(_, _, e)| matches!(e, Event::NodeDown { .. }))
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                sim.core(i).unwrap().connection_count(),
                n - 1,
                "seed {seed}: node {i} keeps extra connections"
            );
        }
        sim.check_invariants().unwrap();
    }
}

#[test]
fn a_partition_gives_each_half_the_right_downs_and_heals() {
    let n = 10;
    let mut sim = seeded_cluster(n, SimConfig::default());
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(n)))
            .is_some()
    );
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    let left: Vec<usize> = (0..5).collect();
    let right: Vec<usize> = (5..n).collect();
    sim.partition(&[left.clone(), right.clone()]);
    let halves = |s: &Sim| s.is_full_mesh(&left) && s.is_full_mesh(&right);
    assert!(
        sim.run_until(Duration::from_secs(20), Duration::from_millis(50), halves)
            .is_some(),
        "halves did not split"
    );
    for i in 0..n {
        let other: &[usize] = if i < 5 { &right } else { &left };
        let downs: Vec<(String, DownReason)> = sim.events(i)[marks[i]..]
            .iter()
            .filter_map(|(_, _, e)| match e {
                Event::NodeDown { node, reason } => Some((node.name.to_string(), *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(downs.len(), other.len(), "node {i}: {downs:?}");
        for (_, reason) in &downs {
            assert_eq!(*reason, DownReason::HeartbeatTimeout);
        }
    }
    sim.heal();
    assert!(
        sim.run_until(Duration::from_secs(60), Duration::from_millis(50), |s| s
            .is_full_mesh(&all(n)))
            .is_some(),
        "did not heal"
    );
    sim.check_invariants().unwrap();
}

#[test]
fn a_restarted_node_is_down_then_up_in_that_order() {
    let n = 3;
    let mut sim = seeded_cluster(n, SimConfig::default());
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(n)))
            .is_some()
    );
    let old = sim.node(2).unwrap();
    let mark = sim.events(0).len();
    sim.crash(2);
    sim.start(2);
    assert!(
        sim.run_until(Duration::from_secs(20), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(n)))
            .is_some()
    );
    let new = sim.node(2).unwrap();
    let evs: Vec<&Event> = sim.events(0)[mark..].iter().map(|(_, _, e)| e).collect();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(evs[0], Event::NodeDown { node, .. } if *node == old));
    assert!(matches!(evs[1], Event::NodeUp(node) if *node == new));
    sim.check_invariants().unwrap();
}

#[test]
fn two_live_nodes_with_one_name_do_not_flap() {
    // Nodes 1 and 2 are both `twin@10.9.9.9` (a copy-pasted configuration); node 0 knows
    // both. The first one up stays up at node 0; the other is refused as a name clash
    // for as long as the first lives, and node 0's events never flap between them.
    let mut sim = Sim::new(SimConfig::default());
    for _ in 0..3 {
        sim.add_node("cookie", static_topology());
    }
    sim.rename(1, "twin@10.9.9.9");
    sim.rename(2, "twin@10.9.9.9");
    sim.set_candidates(0, 0, &[1, 2]);
    sim.start(0);
    sim.start(1);
    sim.run_for(Duration::from_millis(200), u64::MAX);
    sim.start(2);
    sim.run_for(Duration::from_secs(60), u64::MAX);
    let evs: Vec<&Event> = sim.events(0).iter().map(|(_, _, e)| e).collect();
    let first = sim.node(1).unwrap();
    assert!(
        matches!(evs.as_slice(), [Event::NodeUp(n)] if *n == first),
        "one nodeup, for the first twin, and nothing else: {evs:?}"
    );
    let stats = &sim.core(0).unwrap().stats().handshake_failures;
    let clashes = stats.get("name_clash").copied().unwrap_or(0);
    assert!(clashes >= 1, "the second twin is refused: {clashes}");
    sim.check_invariants().unwrap();

    // Once the first twin is gone, the second one gets in.
    sim.crash(1);
    assert!(
        sim.run_until(Duration::from_secs(30), Duration::from_millis(10), |s| {
            s.core(0)
                .unwrap()
                .members()
                .any(|n| Some(n) == s.node(2).as_ref())
        })
        .is_some(),
        "the second twin never came up after the first one left"
    );
    let evs: Vec<&Event> = sim.events(0).iter().map(|(_, _, e)| e).collect();
    assert_eq!(evs.len(), 3, "{evs:?}");
    sim.check_invariants().unwrap();
}

#[test]
fn a_graceful_leave_is_seen_as_left() {
    let n = 4;
    let mut sim = seeded_cluster(n, SimConfig::default());
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(n)))
            .is_some()
    );
    let mark: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    sim.leave(3);
    sim.run_for(Duration::from_millis(100), u64::MAX);
    for i in 0..3 {
        let evs: Vec<&Event> = sim.events(i)[mark[i]..].iter().map(|(_, _, e)| e).collect();
        assert!(
            matches!(
                evs.as_slice(),
                [Event::NodeDown {
                    reason: DownReason::Left,
                    ..
                }]
            ),
            "node {i}: {evs:?}"
        );
    }
}

#[test]
fn a_node_with_another_cookie_never_comes_up() {
    let mut sim = Sim::new(SimConfig::default());
    for cookie in ["a", "a", "b"] {
        sim.add_node(cookie, static_topology());
    }
    sim.set_candidates(1, 0, &[0]);
    sim.set_candidates(2, 0, &[0, 1]);
    sim.set_candidates(0, 0, &[2]);
    for i in 0..3 {
        sim.start(i);
    }
    sim.run_for(Duration::from_secs(30), u64::MAX);
    assert!(sim.is_full_mesh(&[0, 1]));
    assert_eq!(sim.core(2).unwrap().members().count(), 0);
    assert!(
        sim.core(0)
            .unwrap()
            .stats()
            .handshake_failures
            .get("bad_cookie")
            .copied()
            .unwrap_or(0)
            > 1
    );
    sim.check_invariants().unwrap();
}

#[test]
fn authoritative_topology_prunes_and_refuses_until_the_peer_is_back() {
    let prune_after = Duration::from_secs(5);
    let auth = vec![TopologyInfo {
        authoritative: true,
        prune_after,
    }];
    let mut sim = Sim::new(SimConfig::default());
    for _ in 0..3 {
        sim.add_node("c", auth.clone());
    }
    for i in 0..3 {
        let others: Vec<usize> = (0..3).filter(|j| *j != i).collect();
        sim.set_candidates(i, 0, &others);
        sim.start(i);
    }
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(3)))
            .is_some()
    );
    // Node 2 disappears from the API of nodes 0 and 1 while its process lives on.
    let mark0 = sim.events(0).len();
    sim.set_candidates(0, 0, &[1]);
    sim.set_candidates(1, 0, &[0]);
    sim.run_for(prune_after - Duration::from_secs(1), u64::MAX);
    assert!(
        sim.is_full_mesh(&all(3)),
        "not pruned before the grace period"
    );
    sim.run_for(Duration::from_secs(3), u64::MAX);
    let evs: Vec<&Event> = sim.events(0)[mark0..].iter().map(|(_, _, e)| e).collect();
    assert!(
        matches!(
            evs.as_slice(),
            [Event::NodeDown {
                reason: DownReason::Pruned,
                ..
            }]
        ),
        "{evs:?}"
    );
    // Node 2 keeps dialling (0 and 1 are still its candidates) but is refused.
    sim.run_for(Duration::from_secs(20), u64::MAX);
    assert!(sim.is_full_mesh(&[0, 1]));
    assert!(
        !sim.core(0)
            .unwrap()
            .members()
            .any(|n| n.name.as_str().starts_with("n2@"))
    );
    assert!(
        sim.core(0)
            .unwrap()
            .stats()
            .handshake_failures
            .get("pruned")
            .copied()
            .unwrap_or(0)
            > 0
    );
    // Back in the API: back in the cluster, at once. Node 2's own redial waits out the
    // backoff its refusals built up (seconds by now); nodes 0 and 1, which refused it,
    // dial it as soon as their set lists it again, so the rejoin takes a handshake
    // (a few 1 ms hops of simulated time), not a backoff.
    sim.set_candidates(0, 0, &[1, 2]);
    sim.set_candidates(1, 0, &[0, 2]);
    let took = sim
        .run_until(Duration::from_secs(30), Duration::from_millis(1), |s| {
            s.is_full_mesh(&all(3))
        })
        .expect("back in the cluster");
    assert!(
        took <= Duration::from_millis(20),
        "rejoined after {took:?} of simulated time: it waited for a backoff"
    );
    sim.check_invariants().unwrap();
}

#[test]
fn heartbeats_time_out_a_silent_peer_but_loss_does_not() {
    let n = 5;
    let mut sim = seeded_cluster(
        n,
        SimConfig {
            seed: 9,
            ..SimConfig::default()
        },
    );
    assert!(
        sim.run_until(Duration::from_secs(10), Duration::from_millis(10), |s| s
            .is_full_mesh(&all(n)))
            .is_some()
    );
    let marks: Vec<usize> = (0..n).map(|i| sim.events(i).len()).collect();
    // 10 % of frames need a retransmission (200 ms): no false downs over 2 minutes.
    sim.set_loss(0.1);
    sim.run_for(Duration::from_secs(120), u64::MAX);
    for i in 0..n {
        assert_eq!(
            sim.events(i).len(),
            marks[i],
            "node {i} saw events under loss: {:?}",
            &sim.events(i)[marks[i]..]
        );
    }
    sim.check_invariants().unwrap();
}

#[derive(Clone, Debug)]
enum Fault {
    Cut(usize, usize),
    OneWay(usize, usize),
    Heal,
    Crash(usize),
    Start(usize),
    Leave(usize),
    Loss(u8),
    Wait(u16),
}

fn fault(n: usize) -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..n, 0..n).prop_map(|(a, b)| Fault::Cut(a, b)),
        (0..n, 0..n).prop_map(|(a, b)| Fault::OneWay(a, b)),
        Just(Fault::Heal),
        (0..n).prop_map(Fault::Crash),
        (0..n).prop_map(Fault::Start),
        (0..n).prop_map(Fault::Leave),
        (0u8..30).prop_map(Fault::Loss),
        (1u16..5000).prop_map(Fault::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random schedules of cuts, crashes, restarts, leaves and loss: the invariants hold
    /// throughout, and once the faults stop every running node is in one full mesh.
    #[test]
    fn invariants_hold_under_random_faults(
        n in 2usize..6,
        seed in any::<u64>(),
        faults in proptest::collection::vec(fault(6), 1..25),
    ) {
        let mut sim = seeded_cluster(n, SimConfig { seed, jitter: Duration::from_millis(3), ..SimConfig::default() });
        // One more node with another cookie, which every node tries and which tries every
        // node: it must never be up anywhere, nor anyone up at it (`check_invariants`).
        let foreign = sim.add_node("another cookie", static_topology());
        // Everyone knows everyone (as with gossip), so any two survivors can meet again.
        for i in 0..=n {
            let others: Vec<usize> = (0..=n).filter(|j| *j != i).collect();
            sim.set_candidates(i, 0, &others);
        }
        sim.start(foreign);
        for f in faults {
            match f {
                Fault::Cut(a, b) if a < n && b < n && a != b => sim.cut_link(a, b),
                Fault::OneWay(a, b) if a < n && b < n && a != b => sim.cut_one_way(a, b),
                Fault::Heal => sim.heal(),
                Fault::Crash(i) if i < n => sim.crash(i),
                Fault::Start(i) if i < n => sim.start(i),
                Fault::Leave(i) if i < n => sim.leave(i),
                Fault::Loss(p) => sim.set_loss(f64::from(p) / 100.0),
                Fault::Wait(ms) => { sim.run_for(Duration::from_millis(u64::from(ms)), u64::MAX); }
                _ => {}
            }
            prop_assert!(sim.check_invariants().is_ok(), "{:?}", sim.check_invariants());
        }
        sim.heal();
        sim.set_loss(0.0);
        let healed = sim.run_until(Duration::from_secs(120), Duration::from_millis(100), |s| s.is_full_mesh(&all(n)));
        prop_assert!(healed.is_some(), "no full mesh after the faults stopped");
        prop_assert!(sim.check_invariants().is_ok(), "{:?}", sim.check_invariants());
    }
}
