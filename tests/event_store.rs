//! The event-store example (`examples/event_store`) as separate processes on real
//! rallypoint membership and a real PostgreSQL: each node in its own network namespace,
//! PostgreSQL in another, the test's client code beside PostgreSQL.
//!
//! Each test asserts what a user of the example would observe (HTTP answers, and the
//! `deliveries` and `leases` tables its handler and leases write) and waits for it with
//! a deadline. Tests run one at a time (each starts a PostgreSQL and several processes).
//! They need root; without it they print why they skip, but with `CI=true` they fail.

#[path = "support/event_store.rs"]
mod es;
#[path = "support/http_client.rs"]
mod http_client;
#[path = "support/lab.rs"]
mod lab;
#[allow(dead_code)]
#[path = "../examples/event_store/placement.rs"]
mod placement;
#[path = "support/postgres.rs"]
mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use es::{
    Delivery, Fixture, append, create_subscription, db, deliveries, expected_owner, node_name,
    spread_names, status, subscriptions, wait_delivered, wait_for, wait_members, wait_placed,
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// One test at a time: each runs PostgreSQL and several nodes on a small machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn others(k: usize, n: usize) -> Vec<usize> {
    (0..n).filter(|&j| j != k).collect()
}

/// Starts nodes `0..n` and waits until each sees all the others.
async fn form(fx: &Fixture, n: usize) {
    for k in 0..n {
        wait_members(fx, k, &others(k, n)).await;
    }
}

fn positions(ds: &[Delivery]) -> Vec<i64> {
    ds.iter().map(|d| d.position).collect()
}

/// Checks that `ds` delivers each of `1..=last` exactly once, in order, by `node` under
/// one epoch.
fn assert_once_in_order_by(sub: &str, ds: &[Delivery], last: i64, node: &str) {
    assert_eq!(
        positions(ds),
        (1..=last).collect::<Vec<_>>(),
        "{sub}: every event once, in order"
    );
    assert!(
        ds.iter().all(|d| d.node == node),
        "{sub}: delivered by {node} only, got {:?}",
        ds.iter().map(|d| &d.node).collect::<BTreeSet<_>>()
    );
    let epochs: BTreeSet<i64> = ds.iter().map(|d| d.epoch).collect();
    assert_eq!(epochs.len(), 1, "{sub}: one lease epoch, got {epochs:?}");
}

#[test]
fn append_on_a_reaches_subscribers_on_b_and_c_in_order() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "append_on_a_reaches_subscribers_on_b_and_c_in_order",
        3,
        &[],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        let subs = spread_names(&[0, 1, 2], 1, |_, _| true);
        for s in &subs {
            create_subscription(&fx, 0, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        let on = |k: usize| {
            subs.iter()
                .find(|s| expected_owner(s, &[0, 1, 2]) == node_name(k))
                .cloned()
                .expect("a subscription per node")
        };
        let (on_b, on_c) = (on(1), on(2));

        for i in 0..4 {
            let (st, body) = append(&fx, 0, "orders-1", json!(i * 5), 5).await;
            assert_eq!(st, StatusCode::OK, "{body}");
            assert_eq!(body["first_position"], json!(i * 5 + 1));
            assert_eq!(body["last_version"], json!(i * 5 + 5));
        }
        let db = db(&fx).await;
        wait_delivered(&fx, &db, &[on_b.clone(), on_c.clone()], 20).await;
        assert_once_in_order_by(&on_b, &deliveries(&db, &on_b).await, 20, &node_name(1));
        assert_once_in_order_by(&on_c, &deliveries(&db, &on_c).await, 20, &node_name(2));

        // Every node reads the same stream and log.
        let stream = http_client::get(fx.http(2), "/streams/orders-1?limit=100")
            .await
            .expect("read stream");
        let versions: Vec<i64> = stream["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["version"].as_i64().expect("version"))
            .collect();
        assert_eq!(versions, (1..=20).collect::<Vec<_>>());
        let all = http_client::get(fx.http(1), "/all?from=1&limit=100")
            .await
            .expect("read all");
        let pos: Vec<i64> = all["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["position"].as_i64().expect("position"))
            .collect();
        assert_eq!(pos, (1..=20).collect::<Vec<_>>());
    });
}

#[test]
fn concurrent_appends_with_the_same_expected_version_exactly_one_wins() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "concurrent_appends_with_the_same_expected_version_exactly_one_wins",
        2,
        &[],
    ) else {
        return;
    };
    for k in 0..2 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 2).await;
        let (st, body) = append(&fx, 0, "account-7", json!("no_stream"), 1).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        const ROUNDS: i64 = 25;
        for round in 0..ROUNDS {
            let version = round + 1;
            let (a, b) = tokio::join!(
                append(&fx, 0, "account-7", json!(version), 1),
                append(&fx, 1, "account-7", json!(version), 1),
            );
            let winners = [&a, &b]
                .iter()
                .filter(|(s, _)| *s == StatusCode::OK)
                .count();
            assert_eq!(winners, 1, "round {round}: a {a:?}, b {b:?}");
            let loser = if a.0 == StatusCode::OK { &b } else { &a };
            assert_eq!(loser.0, StatusCode::CONFLICT, "round {round}: {loser:?}");
            assert_eq!(loser.1["error"], "wrong_expected_version");
            assert_eq!(loser.1["current"], json!(version + 1));
        }
        // The stream has one event per round, and the global log has no gap.
        let stream = http_client::get(fx.http(1), "/streams/account-7?limit=1000")
            .await
            .expect("read stream");
        let versions: Vec<i64> = stream["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["version"].as_i64().expect("version"))
            .collect();
        assert_eq!(versions, (1..=ROUNDS + 1).collect::<Vec<_>>());
        let all = http_client::get(fx.http(0), "/all?from=1&limit=1000")
            .await
            .expect("read all");
        let pos: Vec<i64> = all["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["position"].as_i64().expect("position"))
            .collect();
        assert_eq!(pos, (1..=ROUNDS + 1).collect::<Vec<_>>());
    });
}

#[test]
fn six_subscriptions_spread_over_three_nodes_with_one_active_owner_each() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "six_subscriptions_spread_over_three_nodes_with_one_active_owner_each",
        3,
        &[],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        // A client given one node finds every node's HTTP address.
        let cluster = http_client::get(fx.http(0), "/cluster")
            .await
            .expect("cluster");
        let mut http: BTreeSet<String> = cluster["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["http_addr"].as_str().expect("http_addr").to_string())
            .collect();
        http.insert(
            cluster["self"]["http_addr"]
                .as_str()
                .expect("self")
                .to_string(),
        );
        let want: BTreeSet<String> = (0..3).map(|k| fx.http(k).to_string()).collect();
        assert_eq!(http, want);

        let subs = spread_names(&[0, 1, 2], 2, |_, _| true);
        for (i, s) in subs.iter().enumerate() {
            create_subscription(&fx, i % 3, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        let mut owned: BTreeMap<String, usize> = BTreeMap::new();
        for s in &subs {
            *owned.entry(expected_owner(s, &[0, 1, 2])).or_default() += 1;
        }
        assert_eq!(owned.len(), 3, "every node owns some: {owned:?}");

        for i in 0..6 {
            let (st, body) =
                append(&fx, i % 3, &format!("stream-{}", i % 2), json!("any"), 5).await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        let db = db(&fx).await;
        wait_delivered(&fx, &db, &subs, 30).await;
        // The timeline: each subscription was delivered by one node, under one lease.
        for s in &subs {
            let ds = deliveries(&db, s).await;
            assert_once_in_order_by(s, &ds, 30, &expected_owner(s, &[0, 1, 2]));
        }
        let leases: i64 = db
            .query_one("SELECT count(*) FROM leases", &[])
            .await
            .expect("leases")
            .get(0);
        assert_eq!(leases, 6, "one acquisition per subscription");
    });
}

#[test]
fn kill_9_of_an_owner_mid_stream_resumes_on_the_survivors_from_the_checkpoint() {
    let _serial = serial();
    const NAME: &str = "kill_9_of_an_owner_mid_stream_resumes_on_the_survivors_from_the_checkpoint";
    // Handlers take 20 ms per event, two at a time: the stream takes seconds to deliver.
    let Some(fx) = Fixture::start(
        NAME,
        3,
        &["--handler-delay", "20ms", "--max-in-flight", "2"],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        let subs = spread_names(&[0, 1, 2], 2, |_, _| true);
        for s in &subs {
            create_subscription(&fx, 1, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        let victim = node_name(0);
        let victims: Vec<String> = subs
            .iter()
            .filter(|s| expected_owner(s, &[0, 1, 2]) == victim)
            .cloned()
            .collect();
        const LAST: i64 = 300;
        for i in 0..10 {
            let (st, body) = append(&fx, 1 + i % 2, "orders", json!("any"), 30).await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        let db = db(&fx).await;
        // Mid-stream: the victim delivered some of each of its subscriptions' events.
        for s in &victims {
            wait_for(&format!("{victim} to be delivering {s}"), || async {
                let n = deliveries(&db, s).await.len();
                if n >= 20 {
                    Ok(())
                } else {
                    Err(format!("{n} delivered"))
                }
            })
            .await;
        }
        // The store's clock just before the kill: the failover printed below is an upper
        // bound.
        let killed_at_us: i64 = db
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .expect("clock")
            .get(0);
        fx.with_node(0, |n| n.kill9());
        for s in &victims {
            let n = deliveries(&db, s).await.len() as i64;
            assert!(
                n < LAST,
                "{s} was not mid-stream when {victim} was killed ({n} delivered)"
            );
        }
        wait_members(&fx, 1, &[2]).await;
        wait_members(&fx, 2, &[1]).await;
        wait_delivered(&fx, &db, &subs, LAST).await;

        for s in &subs {
            let ds = deliveries(&db, s).await;
            if !victims.contains(s) {
                assert_once_in_order_by(s, &ds, LAST, &expected_owner(s, &[0, 1, 2]));
                continue;
            }
            let lease = db
                .query_one(
                    "SELECT epoch, node, checkpoint, reason FROM leases \
                     WHERE subscription = $1 ORDER BY epoch DESC LIMIT 1",
                    &[s],
                )
                .await
                .expect("lease");
            let (epoch, node, from, reason): (i64, String, i64, String) =
                (lease.get(0), lease.get(1), lease.get(2), lease.get(3));
            assert_eq!(
                node,
                expected_owner(s, &[1, 2]),
                "{s}: taken over by its new owner"
            );
            assert!(
                reason == "takeover" || reason == "expired",
                "{s}: reason {reason}"
            );
            let old: Vec<&Delivery> = ds.iter().filter(|d| d.epoch != epoch).collect();
            let new: Vec<&Delivery> = ds.iter().filter(|d| d.epoch == epoch).collect();
            assert!(
                old.iter().all(|d| d.node == victim),
                "{s}: before, only {victim}"
            );
            assert!(
                new.iter().all(|d| d.node == node),
                "{s}: after, only {node}"
            );
            // The new owner resumes right after the stored checkpoint, in order, to the end.
            assert_eq!(
                new.iter().map(|d| d.position).collect::<Vec<_>>(),
                (from + 1..=LAST).collect::<Vec<_>>(),
                "{s}: resumed from checkpoint {from}"
            );
            // Everything up to the checkpoint was delivered by the victim, exactly once;
            // what it delivered after it is what the new owner delivered again.
            let old_pos: Vec<i64> = old.iter().map(|d| d.position).collect();
            let acked: Vec<i64> = old_pos.iter().copied().filter(|p| *p <= from).collect();
            assert_eq!(
                acked,
                (1..=from).collect::<Vec<_>>(),
                "{s}: acknowledged part"
            );
            // Duplicates: delivered by both, hence all past the checkpoint (unacknowledged
            // in the store when the victim died), each exactly twice.
            let mut count: BTreeMap<i64, usize> = BTreeMap::new();
            for d in &ds {
                *count.entry(d.position).or_default() += 1;
            }
            let duplicates: Vec<i64> = count
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(p, _)| *p)
                .collect();
            assert!(
                duplicates.iter().all(|p| *p > from && count[p] == 2),
                "{s}: duplicates only among the unacknowledged: {duplicates:?}, checkpoint {from}"
            );
            let first_new = new.first().map(|d| d.at_us).unwrap_or_default();
            println!(
                "{s}: {victim} killed after delivering up to {}, checkpoint {from}; \
                 {node} resumed {:.0} ms after the kill; {} redelivered",
                old_pos.last().copied().unwrap_or(0),
                (first_new - killed_at_us) as f64 / 1000.0,
                duplicates.len()
            );
        }
    });
}

/// Six names spread two per node over a, b, c, of which at least two move to d when
/// it joins (and at least two stay).
fn names_for_join() -> Vec<String> {
    let moves = |s: &str| expected_owner(s, &[0, 1, 2, 3]) == node_name(3);
    let mut moved = 0;
    let mut stayed = 0;
    spread_names(&[0, 1, 2], 2, |s, _| {
        // Take the first two movers and the first two stayers, then anything.
        let m = moves(s);
        let ok = if m {
            moved < 2 || stayed >= 2
        } else {
            stayed < 2 || moved >= 2
        };
        if ok {
            if m {
                moved += 1;
            } else {
                stayed += 1;
            }
        }
        ok
    })
}

#[test]
fn a_joining_node_takes_its_subscriptions_with_no_gap_and_no_overlap() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "a_joining_node_takes_its_subscriptions_with_no_gap_and_no_overlap",
        4,
        &[],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        let subs = names_for_join();
        let moving: Vec<String> = subs
            .iter()
            .filter(|s| expected_owner(s, &[0, 1, 2, 3]) == node_name(3))
            .cloned()
            .collect();
        assert!(moving.len() >= 2, "{subs:?}");
        for s in &subs {
            create_subscription(&fx, 0, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        for _ in 0..5 {
            let (st, body) = append(&fx, 0, "orders", json!("any"), 10).await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        let db = db(&fx).await;
        wait_delivered(&fx, &db, &subs, 50).await;

        // Appends keep coming while d joins and the subscriptions move.
        let stop = AtomicBool::new(false);
        let appender = async {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut last = 50;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (st, body) = append(&fx, 1, "orders", json!("any"), 2).await;
                assert_eq!(st, StatusCode::OK, "{body}");
                last = body["last_position"].as_i64().expect("position");
            }
            last
        };
        let join = async {
            fx.spawn(3, &[]);
            form(&fx, 4).await;
            wait_placed(&fx, &subs, &[0, 1, 2, 3]).await;
            stop.store(true, Ordering::Relaxed);
        };
        let (last, ()) = tokio::join!(appender, join);
        let (st, body) = append(&fx, 3, "orders", json!("any"), 10).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let last = body["last_position"].as_i64().expect("position").max(last);
        wait_delivered(&fx, &db, &subs, last).await;

        for s in &subs {
            let ds = deliveries(&db, s).await;
            let old_owner = expected_owner(s, &[0, 1, 2]);
            if !moving.contains(s) {
                assert_once_in_order_by(s, &ds, last, &old_owner);
                continue;
            }
            // No gap, no duplicate: every event once, in order.
            assert_eq!(positions(&ds), (1..=last).collect::<Vec<_>>(), "{s}");
            let epochs: Vec<(i64, String)> = ds.iter().fold(Vec::new(), |mut v, d| {
                if v.last().map(|(e, _)| *e) != Some(d.epoch) {
                    v.push((d.epoch, d.node.clone()));
                }
                v
            });
            assert_eq!(
                epochs.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
                vec![old_owner.clone(), node_name(3)],
                "{s}: delivered by {old_owner}, then by d"
            );
            // No overlap: the old owner's last delivery precedes d's first.
            let split = ds
                .iter()
                .position(|d| d.node == node_name(3))
                .expect("d delivered");
            assert!(
                ds[split - 1].at_us <= ds[split].at_us,
                "{s}: overlap in time"
            );
            let lease = db
                .query_one(
                    "SELECT node, checkpoint, reason FROM leases \
                     WHERE subscription = $1 ORDER BY epoch DESC LIMIT 1",
                    &[s],
                )
                .await
                .expect("lease");
            let (node, from, reason): (String, i64, String) =
                (lease.get(0), lease.get(1), lease.get(2));
            assert_eq!(node, node_name(3));
            assert_eq!(reason, "free", "{s}: handed over by release, not taken");
            assert_eq!(
                from,
                ds[split - 1].position,
                "{s}: d starts where {old_owner} stopped"
            );
        }
    });
}

#[test]
fn a_partitioned_node_cannot_checkpoint_once_others_own_the_lease_and_heals_to_one_owner() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "a_partitioned_node_cannot_checkpoint_once_others_own_the_lease_and_heals_to_one_owner",
        3,
        &[],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        let subs = spread_names(&[0, 1, 2], 2, |_, _| true);
        for s in &subs {
            create_subscription(&fx, 1, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        let (st, body) = append(&fx, 1, "orders", json!("any"), 20).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let db = db(&fx).await;
        wait_delivered(&fx, &db, &subs, 20).await;
        let a = node_name(0);
        let a_subs: Vec<String> = subs
            .iter()
            .filter(|s| expected_owner(s, &[0, 1, 2]) == a)
            .cloned()
            .collect();
        let before = subscriptions(&fx, 0).await.expect("subscriptions");
        let partition_at_us: i64 = db
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .expect("clock")
            .get(0);

        // a keeps reaching PostgreSQL (and this test), not b and c.
        fx.partition(0, &[1, 2]);
        wait_members(&fx, 1, &[2]).await;
        wait_members(&fx, 2, &[1]).await;
        wait_members(&fx, 0, &[]).await;
        let (st, body) = append(&fx, 1, "orders", json!("any"), 20).await;
        assert_eq!(st, StatusCode::OK, "{body}");

        // b and c take a's leases; a's next checkpoint write is rejected and it stops.
        wait_for(
            "a's subscriptions to be taken over, and a's writes rejected",
            || async {
                let on_a = subscriptions(&fx, 0).await?;
                for s in &a_subs {
                    let row = &on_a[s];
                    let new_owner = expected_owner(s, &[1, 2]);
                    if row["owner"].as_str() != Some(&new_owner)
                        || row["epoch"].as_i64() <= before[s]["epoch"].as_i64()
                    {
                        return Err(format!(
                            "{s}: owner {} epoch {}",
                            row["owner"], row["epoch"]
                        ));
                    }
                    let local = &row["local"];
                    if local["rejected_writes"].as_u64().unwrap_or(0) < 1
                        || local["state"].as_str() == Some("active")
                    {
                        return Err(format!("{s} on a: {local}"));
                    }
                }
                Ok(())
            },
        )
        .await;
        wait_delivered(&fx, &db, &subs, 40).await;
        // Alone, a took no lease from anyone.
        let taken_by_a: i64 = db
            .query_one(
                "SELECT count(*) FROM leases WHERE node = $1 \
                 AND at > to_timestamp($2::float8 / 1000000)",
                &[&a, &(partition_at_us as f64)],
            )
            .await
            .expect("leases")
            .get(0);
        assert_eq!(taken_by_a, 0, "a took a lease while cut off");
        wait_for("a to log the rejection", || async {
            if fx.with_node(0, |n| n.logged("checkpoint write rejected")) {
                Ok(())
            } else {
                Err("not logged".to_string())
            }
        })
        .await;
        let st_a = status(&fx, 0).await;
        assert!(
            st_a["rejected_writes"].as_u64().unwrap_or(0) >= a_subs.len() as u64,
            "{st_a}"
        );

        // Heal: one owner per subscription again, the one placement gives.
        fx.heal();
        form(&fx, 3).await;
        let (st, body) = append(&fx, 0, "orders", json!("any"), 10).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        wait_delivered(&fx, &db, &subs, 50).await;
        wait_for("every checkpoint to reach 50", || async {
            let rows = subscriptions(&fx, 2).await?;
            for s in &subs {
                if rows[s]["checkpoint"].as_i64() != Some(50) {
                    return Err(format!("{s}: {}", rows[s]));
                }
            }
            Ok(())
        })
        .await;
        for s in &subs {
            let ds = deliveries(&db, s).await;
            let mut owners: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
            for d in &ds {
                owners.entry(d.epoch).or_default().insert(d.node.clone());
            }
            assert!(
                owners.values().all(|n| n.len() == 1),
                "{s}: one node per epoch: {owners:?}"
            );
            let last_epoch = owners.keys().last().copied().expect("deliveries");
            assert_eq!(
                owners[&last_epoch].iter().next().cloned(),
                Some(expected_owner(s, &[0, 1, 2])),
                "{s}: after the heal, its owner delivers"
            );
        }
    });
}

#[test]
fn lost_notifications_are_caught_up_by_the_timer() {
    let _serial = serial();
    let Some(fx) = Fixture::start(
        "lost_notifications_are_caught_up_by_the_timer",
        3,
        &["--fault-injection"],
    ) else {
        return;
    };
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    fx.block_on(async {
        form(&fx, 3).await;
        let subs = spread_names(&[0, 1, 2], 1, |_, _| true);
        for s in &subs {
            create_subscription(&fx, 0, s).await;
        }
        wait_placed(&fx, &subs, &[0, 1, 2]).await;
        let (st, _) = append(&fx, 0, "orders", json!("any"), 5).await;
        assert_eq!(st, StatusCode::OK);
        let db = db(&fx).await;
        wait_delivered(&fx, &db, &subs, 5).await;

        let (st, body) = http_client::post(
            fx.http(0),
            "/admin/faults",
            &json!({"drop_notifications": true}),
        )
        .await
        .expect("faults");
        assert_eq!(st, StatusCode::OK, "{body}");
        let received_before = [status(&fx, 1).await, status(&fx, 2).await]
            .map(|s| s["notifications_received"].as_u64().unwrap_or(0));
        // Appends whose notifications are lost, and no later append.
        for _ in 0..2 {
            let (st, body) = append(&fx, 0, "orders", json!("any"), 5).await;
            assert_eq!(st, StatusCode::OK, "{body}");
        }
        wait_delivered(&fx, &db, &subs, 15).await;
        let st_a = status(&fx, 0).await;
        assert_eq!(st_a["notifications_dropped"], json!(2), "{st_a}");
        for (i, k) in [1, 2].into_iter().enumerate() {
            let st = status(&fx, k).await;
            assert_eq!(
                st["notifications_received"].as_u64().unwrap_or(0),
                received_before[i],
                "{}: no notification came, the timer caught up: {st}",
                node_name(k)
            );
            assert!(st["catch_up_reads"].as_u64().unwrap_or(0) > 0, "{st}");
        }
        for s in &subs {
            assert_once_in_order_by(
                s,
                &deliveries(&db, s).await,
                15,
                &expected_owner(s, &[0, 1, 2]),
            );
        }
    });
}

#[test]
fn storage_semantics_errors_and_bad_messages() {
    let _serial = serial();
    let Some(fx) = Fixture::start("storage_semantics_errors_and_bad_messages", 1, &[]) else {
        return;
    };
    fx.spawn(0, &[]);
    fx.block_on(async {
        let a = fx.http(0);
        wait_for("a to serve", || async {
            http_client::get(a, "/healthz").await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        let post = |path: &'static str, body: Value| async move {
            http_client::post(a, path, &body).await.expect("post")
        };
        let ev = |id: &str| json!({"id": id, "type": "t", "data": {"id": id}});

        let (st, b) = post("/streams/s1", json!({"expected_version": "no_stream", "events": [ev("e1"), ev("e2")]})).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!(
            b,
            json!({"stream": "s1", "first_version": 1, "last_version": 2, "first_position": 1, "last_position": 2})
        );
        let (st, b) = post("/streams/s1", json!({"expected_version": "no_stream", "events": [ev("e3")]})).await;
        assert_eq!((st, &b["error"], &b["current"]), (StatusCode::CONFLICT, &json!("wrong_expected_version"), &json!(2)));
        let (st, b) = post("/streams/s2", json!({"expected_version": "stream_exists", "events": [ev("e3")]})).await;
        assert_eq!((st, &b["current"]), (StatusCode::CONFLICT, &json!(0)), "{b}");
        let (st, b) = post("/streams/s1", json!({"expected_version": 1, "events": [ev("e3")]})).await;
        assert_eq!((st, &b["current"]), (StatusCode::CONFLICT, &json!(2)), "{b}");
        let (st, b) = post("/streams/s1", json!({"expected_version": 2, "events": [ev("e3")]})).await;
        assert_eq!((st, &b["last_version"]), (StatusCode::OK, &json!(3)), "{b}");
        let (st, b) = post("/streams/s1", json!({"expected_version": "stream_exists", "events": [ev("e4")]})).await;
        assert_eq!((st, &b["last_version"]), (StatusCode::OK, &json!(4)), "{b}");
        let (st, b) = post("/streams/s2", json!({"events": [ev("e5")]})).await;
        assert_eq!((st, &b["last_position"]), (StatusCode::OK, &json!(5)), "{b}");

        // A duplicate id rejects the whole batch.
        let (st, b) = post("/streams/s3", json!({"events": [ev("z1"), ev("e2")]})).await;
        assert_eq!((st, &b["error"], &b["id"]), (StatusCode::CONFLICT, &json!("duplicate_event"), &json!("e2")), "{b}");
        let (st, b) = http_client::request(Method::GET, a, "/streams/s3", None).await.expect("get");
        assert_eq!((st, &b["error"]), (StatusCode::NOT_FOUND, &json!("stream_not_found")));
        let (st, b) = post("/streams/s2", json!({"events": [ev("z2")]})).await;
        assert_eq!((st, &b["first_position"]), (StatusCode::OK, &json!(6)), "positions stay gap-free: {b}");

        // Bad requests: named, nothing written.
        for body in [
            json!({"events": []}),
            json!({"events": [ev("d1"), ev("d1")]}),
            json!({"expected_version": "sometimes", "events": [ev("d2")]}),
            json!({"expected_version": -1, "events": [ev("d3")]}),
            json!({"events": [{"type": "t"}]}),
            json!({"events": [ev("d4")], "extra": 1}),
        ] {
            let (st, b) = post("/streams/s9", body.clone()).await;
            assert_eq!((st, &b["error"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body} -> {b}");
        }
        let (st, b) = http_client::request_raw(Method::POST, a, "/streams/s9", Some(b"\x00not json".to_vec()))
            .await
            .expect("post");
        assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
        let (st, _) = http_client::request(Method::GET, a, "/all?from=x", None).await.expect("get");
        assert_eq!(st, StatusCode::BAD_REQUEST);

        // Reads.
        let v = http_client::get(a, "/streams/s1?from=2&limit=2").await.expect("read");
        let versions: Vec<i64> = v["events"].as_array().expect("events").iter().map(|e| e["version"].as_i64().unwrap_or(0)).collect();
        assert_eq!(versions, vec![2, 3]);
        let v = http_client::get(a, "/all?from=3&limit=2").await.expect("read");
        let got: Vec<(i64, String)> = v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| (e["position"].as_i64().unwrap_or(0), e["id"].as_str().unwrap_or("").to_string()))
            .collect();
        assert_eq!(got, vec![(3, "e3".to_string()), (4, "e4".to_string())]);
        let all = http_client::get(a, "/all?limit=1000").await.expect("read");
        assert_eq!(all["events"].as_array().map(Vec::len), Some(6));

        // A member that sends malformed messages: dropped and counted, nothing else.
        let probe = rallypoint::Cluster::builder()
            .name(format!("probe@{}", fx.lab.host(0).ip))
            .cluster_addr(std::net::SocketAddr::from((fx.lab.host(0).ip, 0)))
            .cookie("event-store-test-cookie")
            .topology(
                "peers",
                rallypoint::strategies::static_hosts::StaticHosts::new([format!(
                    "{}:{}",
                    es::node_ip(0),
                    es::CLUSTER_PORT
                )]),
            )
            .start()
            .await
            .expect("probe");
        let mut w = probe.watch();
        tokio::time::timeout(es::DEADLINE, async {
            while probe.members().is_empty() {
                w.changed().await.expect("probe alive");
            }
        })
        .await
        .expect("the probe joins a");
        probe.publish("event_store.appended", &b"\xff garbage"[..]).await.expect("publish");
        probe
            .publish("event_store.appended", &br#"{"stream":"s","first":9,"last":2,"global_last":9}"#[..])
            .await
            .expect("publish");
        probe.publish("event_store.control", &b"{}"[..]).await.expect("publish");
        wait_for("a to drop three bad messages", || async {
            let st = http_client::get(a, "/status").await.map_err(|e| e.to_string())?;
            if st["bad_messages"].as_u64() == Some(3) { Ok(()) } else { Err(st.to_string()) }
        })
        .await;
        let (st, b) = post("/streams/s1", json!({"expected_version": 4, "events": [ev("e9")]})).await;
        assert_eq!(st, StatusCode::OK, "a still serves: {b}");
        wait_for("a to log the bad notification", || async {
            if fx.with_node(0, |n| n.logged("dropped a bad notification")) {
                Ok(())
            } else {
                Err("not logged".to_string())
            }
        })
        .await;
        probe.shutdown().await;
    });
}
