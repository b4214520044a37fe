//! Where each subscription runs, and when a node may take a lease from another.
//!
//! Placement is rendezvous hashing: every node scores every (subscription, node) pair with
//! the same hash, and the live node with the highest score owns the subscription. Nodes
//! that see the same members agree without talking, subscriptions spread evenly, and when
//! a node comes or goes only the subscriptions it wins or held move.
//!
//! Membership can be wrong (a node cut off from its peers sees itself alone), so placement
//! only says who *should* run a subscription; the lease in the store says who *may*. A
//! node takes a lease that is held by someone else without waiting for it to expire only
//! when the holder is not in its view and its view holds a strict majority of the view
//! the holder recorded with the lease ([`may_take_over`]), and only once its view has
//! stayed unchanged for a settling time (the caller checks that: a node that is losing
//! its peers one heartbeat after the other must not act on the view in between). Two
//! sides of a partition have
//! disjoint views, so at most one of them can hold a majority of any recorded view: the
//! larger side takes the leases of the nodes it lost, the smaller side cannot take them
//! back, and nothing flaps.
//!
//! A holder keeps its record current ([`next_record`]): a larger view is recorded at once;
//! a smaller one only once it has been stable for a while and still holds a majority of
//! the recorded one. So a node cut off alone cannot shrink its record to itself and make
//! its leases unstealable, neither at once nor step by step: a partition removes its peers
//! from its view within about a heartbeat of each other, so the intermediate views never
//! last long enough to be recorded, while a single peer that died is dropped from the
//! record after the settling time.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// The score of `node` for `subscription`: the first eight bytes of SHA-256 over the
/// length-prefixed subscription name and the node name. Stable across processes,
/// platforms and versions, as placement must be.
pub fn score(subscription: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((subscription.len() as u64).to_be_bytes());
    h.update(subscription.as_bytes());
    h.update(node.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The owner of `subscription` among `nodes`: the highest score (ties, which SHA-256 makes
/// practically impossible, go to the smaller name). `None` when `nodes` is empty.
pub fn owner<'a, I>(subscription: &str, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .map(|n| (score(subscription, n), std::cmp::Reverse(n)))
        .max()
        .map(|(_, std::cmp::Reverse(n))| n)
}

/// Whether `view` holds a strict majority of `recorded`. An empty record has no majority.
pub fn holds_majority_of(view: &BTreeSet<String>, recorded: &[String]) -> bool {
    let recorded: BTreeSet<&str> = recorded.iter().map(String::as_str).collect();
    let present = recorded.iter().filter(|n| view.contains(**n)).count();
    present * 2 > recorded.len()
}

/// Whether a node whose view (itself and the members it sees) is `view` may take the
/// lease from `holder`, whose recorded view is `holder_view`, before the lease expires.
pub fn may_take_over(view: &BTreeSet<String>, holder: &str, holder_view: &[String]) -> bool {
    !view.contains(holder) && holds_majority_of(view, holder_view)
}

/// What a holder whose view is now `view` records with its lease instead of `recorded`,
/// if anything: `view` when it holds every recorded node (it grew), or when it is
/// `settled` (unchanged for the settling time) and holds a majority of `recorded`.
pub fn next_record(
    view: &BTreeSet<String>,
    recorded: &[String],
    settled: bool,
) -> Option<Vec<String>> {
    let same = recorded.len() == view.len() && recorded.iter().all(|n| view.contains(n));
    if same {
        return None;
    }
    let grew = recorded.iter().all(|n| view.contains(n));
    (grew || (settled && holds_majority_of(view, recorded))).then(|| view.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn vec(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn score_is_stable() {
        // Placement must not change between builds or machines: pin a value.
        assert_eq!(
            score("orders", "es@10.0.0.1"),
            score("orders", "es@10.0.0.1")
        );
        assert_ne!(
            score("orders", "es@10.0.0.1"),
            score("orders", "es@10.0.0.2")
        );
        assert_ne!(score("ab", "c@h"), score("a", "bc@h"));
        assert_eq!(score("s", "n@h"), PINNED);
    }

    // SHA-256 of 0x0000000000000001 "s" "n@h", first eight bytes.
    const PINNED: u64 = 0x3bae_5e79_fad4_8764;

    #[test]
    fn owner_is_the_same_whatever_the_order() {
        let a = ["x@h", "y@h", "z@h"];
        let b = ["z@h", "x@h", "y@h"];
        for i in 0..50 {
            let s = format!("sub-{i}");
            assert_eq!(owner(&s, a), owner(&s, b));
        }
        assert_eq!(owner("s", []), None);
    }

    #[test]
    fn removing_a_node_moves_only_its_subscriptions() {
        let all = ["a@h", "b@h", "c@h", "d@h"];
        let without_c = ["a@h", "b@h", "d@h"];
        let mut moved = 0;
        for i in 0..400 {
            let s = format!("sub-{i}");
            let before = owner(&s, all).unwrap_or_default();
            let after = owner(&s, without_c).unwrap_or_default();
            if before != "c@h" {
                assert_eq!(before, after, "{s} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        // About a quarter of 400: spread, not piled up.
        assert!((60..140).contains(&moved), "{moved} of 400 were on c");
    }

    #[test]
    fn the_larger_side_of_a_partition_takes_over_and_the_smaller_cannot_take_back() {
        let recorded_by_a = vec(&["a", "b", "c"]);
        // b and c lost a: they may take a's leases.
        assert!(may_take_over(&set(&["b", "c"]), "a", &recorded_by_a));
        // a, alone, may not take b's lease back, whichever view b recorded.
        assert!(!may_take_over(&set(&["a"]), "b", &vec(&["b", "c"])));
        assert!(!may_take_over(&set(&["a"]), "b", &vec(&["a", "b", "c"])));
        // Nobody takes a lease from a holder it still sees.
        assert!(!may_take_over(&set(&["a", "b", "c"]), "a", &recorded_by_a));
    }

    #[test]
    fn a_holder_records_growth_at_once_and_shrinking_only_when_settled_and_majority() {
        let abc = vec(&["a", "b", "c"]);
        assert_eq!(next_record(&set(&["a", "b", "c"]), &abc, true), None);
        assert_eq!(
            next_record(&set(&["a", "b", "c", "d"]), &abc, false),
            Some(vec(&["a", "b", "c", "d"]))
        );
        // A peer died: recorded once the view has settled.
        assert_eq!(next_record(&set(&["a", "c"]), &abc, false), None);
        assert_eq!(
            next_record(&set(&["a", "c"]), &abc, true),
            Some(vec(&["a", "c"]))
        );
        // Cut off alone: never, settled or not.
        assert_eq!(next_record(&set(&["a"]), &abc, true), None);
        // b and c, having lost a, keep their records current.
        assert_eq!(
            next_record(&set(&["b", "c"]), &abc, true),
            Some(vec(&["b", "c"]))
        );
    }

    #[test]
    fn a_partition_seen_step_by_step_leaves_the_record_takeable() {
        // a sees b go, then c, within a heartbeat: the intermediate view is not settled.
        let mut recorded = vec(&["a", "b", "c"]);
        for (view, settled) in [
            (set(&["a", "c"]), false),
            (set(&["a"]), false),
            (set(&["a"]), true),
        ] {
            if let Some(r) = next_record(&view, &recorded, settled) {
                recorded = r;
            }
        }
        assert_eq!(recorded, vec(&["a", "b", "c"]));
        assert!(may_take_over(&set(&["b", "c"]), "a", &recorded));
    }

    #[test]
    fn an_even_split_takes_nothing() {
        let recorded = vec(&["a", "b", "c", "d"]);
        assert!(!may_take_over(&set(&["a", "b"]), "c", &recorded));
        assert!(!may_take_over(&set(&["c", "d"]), "a", &recorded));
        assert!(!may_take_over(&set(&["a", "b"]), "c", &[]));
    }
}
