//! The fault matrix: real `rallypoint run` daemons, each on a host of its own (a
//! network namespace) on a switch the test controls frame by frame
//! (`tests/support/switch.rs`), one test per fault. Each test follows every daemon's
//! event stream from its host (`tests/support/fleet.rs`) and asserts what each
//! subscriber saw, not only the final member lists; every stream's contract (snapshot
//! first, ids up by one, `nodeup`/`nodedown` alternating per node for the instance that
//! is up, nothing about the daemon itself) is checked throughout.
//!
//! | fault | test |
//! |---|---|
//! | `kill -9` of a node | [`kill_9_gives_connection_closed_everywhere`] |
//! | SIGTERM | [`sigterm_gives_left_everywhere`] |
//! | link cut | [`a_cut_link_gives_heartbeat_timeout_and_heals`] |
//! | partition into halves | [`a_partition_into_halves_downs_the_other_half_and_heals`] |
//! | 10 % loss on every link, 2 minutes, default timing | [`ten_percent_loss_gives_no_false_nodedown`] |
//! | 200 ms delay ± 50 ms | [`a_200_ms_delay_with_jitter_forms_and_stays_stable`] |
//! | a flapping link | [`a_flapping_link_gives_strictly_alternating_events`] |
//! | restart with the same name | [`a_restart_is_old_incarnation_down_then_new_up`] |
//! | Kubernetes API 403, 500, silent | [`kubernetes_api_failures_change_no_membership`] |
//! | DNS timing out, SERVFAIL | [`dns_failures_change_no_membership`] |
//! | a foreign cluster on the same group | [`a_foreign_cluster_never_joins_and_is_counted`] |
//! | 20 nodes started at once | [`twenty_nodes_started_at_once_form_one_mesh`] |
//!
//! Needs root (namespaces, TAP devices); without it each test says so and passes,
//! except under `CI=true`, where it fails. The tests run one at a time (they share two
//! cores). Run: `cargo test --test fault_matrix`.

// Index loops read better here: hosts, daemons and marks are walked together.
#![allow(clippy::needless_range_loop)]

#[cfg(feature = "dns")]
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/fleet.rs"]
mod fleet;
#[cfg(feature = "kubernetes")]
#[path = "support/kube_api.rs"]
mod kube_api;
#[cfg(feature = "kubernetes")]
#[path = "support/kube_objects.rs"]
mod kube_objects;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/switch.rs"]
mod switch;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleet::{Daemon, FAST, Seen, Spec, name_on, others, static_hosts, wait_full_mesh};
use switch::{Link, Net};

/// Formation and healing deadlines: generous, for a loaded 2-core machine.
const FORM: Duration = Duration::from_secs(60);
/// How long a failure may take to show.
const DETECT: Duration = Duration::from_secs(30);
const COOKIE: &str = "fault-matrix-cookie";

/// One test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A net of `hosts` hosts, or `None` when the test cannot run here.
fn net(test: &str, hosts: usize) -> Option<Net> {
    if !netns::require_root(test) {
        return None;
    }
    Some(Net::new(hosts).expect("the test network"))
}

/// Daemons on hosts `0..n`, each listing all of them as static hosts, with `timing`.
fn static_cluster(net: &Net, n: usize, timing: &str) -> Vec<Daemon> {
    (0..n)
        .map(|i| {
            Daemon::start(
                net,
                i,
                Spec {
                    name: name_on(net, i),
                    cookie: COOKIE.into(),
                    toml: format!("{timing}{}", static_hosts(net, 0..n)),
                },
            )
        })
        .collect()
}

/// A formed cluster of static-hosts daemons, with a mark in each observer's record.
/// Bind every field (`_one` too: it holds the one-test-at-a-time lock).
struct Formed {
    _one: MutexGuard<'static, ()>,
    net: Net,
    ds: Vec<Daemon>,
    marks: Vec<usize>,
}

/// `hosts` daemons with `timing`, formed into one full mesh; `None` when the test
/// cannot run here.
fn formed(test: &str, hosts: usize, timing: &str) -> Option<Formed> {
    let one = serial();
    let net = net(test, hosts)?;
    let ds = static_cluster(&net, hosts, timing);
    wait_full_mesh(&ds, FORM);
    let marks = ds.iter().map(|d| d.observer.mark()).collect();
    Some(Formed {
        _one: one,
        net,
        ds,
        marks,
    })
}

/// The events about `node` an observer saw after `mark`.
fn about(d: &Daemon, node: &str, mark: usize) -> Vec<Seen> {
    d.observer
        .record()
        .since(mark)
        .iter()
        .filter(|(_, e)| e.node() == Some(node))
        .map(|(_, e)| e.clone())
        .collect()
}

fn kinds(events: &[Seen]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Seen::Up { .. } => "up".to_owned(),
            Seen::Down { reason, .. } => format!("down:{reason}"),
            Seen::Snapshot { .. } => "snapshot".to_owned(),
        })
        .collect()
}

fn all_clean(ds: &[Daemon]) {
    for d in ds {
        d.observer.assert_clean();
    }
}

/// Asserts that no observer sees a `nodedown` (or any change at all, with `any`) for
/// `window` after `marks`.
fn assert_quiet(ds: &[Daemon], marks: &[usize], window: Duration, what: &str) {
    let until = Instant::now() + window;
    for (d, &mark) in ds.iter().zip(marks) {
        let left = until.saturating_duration_since(Instant::now());
        if let Some(r) = d.observer.watch_for(left, |r| {
            r.since(mark)
                .iter()
                .any(|(_, e)| matches!(e, Seen::Down { .. }))
        }) {
            panic!(
                "{}: a nodedown during {what}: {:#?}",
                d.name(),
                r.since(mark)
            );
        }
    }
}

#[test]
fn kill_9_gives_connection_closed_everywhere() {
    let Some(Formed {
        _one,
        net: _net,
        mut ds,
        marks,
    }) = formed("kill_9_gives_connection_closed_everywhere", 3, FAST)
    else {
        return;
    };
    let victim = ds[2].name().to_owned();
    let t0 = Instant::now();
    ds[2].kill9();
    for i in 0..2 {
        let (reason, at) = ds[i].observer.wait_down(&victim, marks[i], DETECT);
        assert_eq!(reason, "connection_closed", "{}", ds[i].name());
        eprintln!("{}: nodedown {victim} after {:?}", ds[i].name(), at - t0);
        assert_eq!(
            kinds(&about(&ds[i], &victim, marks[i])),
            ["down:connection_closed"]
        );
        ds[i]
            .observer
            .wait_members(&[ds[1 - i].name().to_owned()], DETECT);
    }
    all_clean(&ds[..2]);
}

#[test]
fn sigterm_gives_left_everywhere() {
    let Some(Formed {
        _one,
        net: _net,
        mut ds,
        marks,
    }) = formed("sigterm_gives_left_everywhere", 3, FAST)
    else {
        return;
    };
    let victim = ds[2].name().to_owned();
    let t0 = Instant::now();
    let status = ds[2].terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exits 0 on SIGTERM: {status:?}\n{}",
        ds[2].log()
    );
    for i in 0..2 {
        let (reason, at) = ds[i].observer.wait_down(&victim, marks[i], DETECT);
        assert_eq!(reason, "left", "{}", ds[i].name());
        eprintln!(
            "{}: nodedown {victim} (left) after {:?}",
            ds[i].name(),
            at - t0
        );
        assert_eq!(kinds(&about(&ds[i], &victim, marks[i])), ["down:left"]);
    }
    all_clean(&ds[..2]);
}

#[test]
fn a_cut_link_gives_heartbeat_timeout_and_heals() {
    let Some(Formed {
        _one,
        net,
        ds,
        marks,
    }) = formed("a_cut_link_gives_heartbeat_timeout_and_heals", 3, FAST)
    else {
        return;
    };
    let cut = ds[2].name().to_owned();
    let t0 = Instant::now();
    net.cut(2);
    // Both sides see the other down, by silence.
    for i in 0..2 {
        let (reason, at) = ds[i].observer.wait_down(&cut, marks[i], DETECT);
        assert_eq!(reason, "heartbeat_timeout", "{}", ds[i].name());
        eprintln!(
            "{}: nodedown {cut} after {:?} (down_after 1 s, heartbeat 100 ms)",
            ds[i].name(),
            at - t0
        );
        let (reason, _) = ds[2].observer.wait_down(ds[i].name(), marks[2], DETECT);
        assert_eq!(reason, "heartbeat_timeout");
    }
    ds[2].observer.wait_members(&[], DETECT);
    net.heal(2);
    wait_full_mesh(&ds, FORM);
    for i in 0..2 {
        assert_eq!(
            kinds(&about(&ds[i], &cut, marks[i])),
            ["down:heartbeat_timeout", "up"]
        );
        assert_eq!(
            kinds(&about(&ds[2], ds[i].name(), marks[2])),
            ["down:heartbeat_timeout", "up"]
        );
    }
    all_clean(&ds);
}

#[test]
fn a_partition_into_halves_downs_the_other_half_and_heals() {
    let Some(Formed {
        _one,
        net,
        ds,
        marks,
    }) = formed(
        "a_partition_into_halves_downs_the_other_half_and_heals",
        4,
        FAST,
    )
    else {
        return;
    };
    let halves: [&[usize]; 2] = [&[0, 1], &[2, 3]];
    net.partition(&halves);
    for half in halves {
        for &i in half {
            let mine: Vec<String> = half
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| ds[j].name().to_owned())
                .collect();
            ds[i].observer.wait_members(&mine, DETECT);
        }
    }
    net.join();
    wait_full_mesh(&ds, FORM);
    // Each saw each node of the other half go down (by silence) and come back, once.
    for (i, d) in ds.iter().enumerate() {
        for j in 0..4 {
            if j == i {
                continue;
            }
            let across = (i < 2) != (j < 2);
            let want: &[&str] = if across {
                &["down:heartbeat_timeout", "up"]
            } else {
                &[]
            };
            assert_eq!(
                kinds(&about(d, ds[j].name(), marks[i])),
                want,
                "{} about {}",
                d.name(),
                ds[j].name()
            );
        }
    }
    all_clean(&ds);
}

#[test]
fn ten_percent_loss_gives_no_false_nodedown() {
    let _one = serial();
    let Some(net) = net("ten_percent_loss_gives_no_false_nodedown", 3) else {
        return;
    };
    // Default membership timing: a heartbeat every 500 ms, down after 3 s.
    let ds = static_cluster(&net, 3, "");
    wait_full_mesh(&ds, FORM);
    let marks: Vec<usize> = ds.iter().map(|d| d.observer.mark()).collect();
    net.set_all_links(Link {
        loss: 0.10,
        ..Link::default()
    });
    let before = net.counts();
    assert_quiet(
        &ds,
        &marks,
        Duration::from_secs(120),
        "2 minutes of 10 % loss",
    );
    let after = net.counts();
    let lost = after.lost - before.lost;
    let sent = (after.delivered + after.lost) - (before.delivered + before.lost);
    eprintln!("frames lost: {lost} of {sent}");
    assert!(
        lost * 20 >= sent && lost * 5 <= sent,
        "about 10 % lost: {lost} of {sent}"
    );
    for d in &ds {
        assert_eq!(d.observer.names().len(), 2);
    }
    all_clean(&ds);
}

#[test]
fn a_200_ms_delay_with_jitter_forms_and_stays_stable() {
    let _one = serial();
    let Some(net) = net("a_200_ms_delay_with_jitter_forms_and_stays_stable", 3) else {
        return;
    };
    net.set_all_links(Link {
        delay: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
        ..Link::default()
    });
    let t0 = Instant::now();
    let ds = static_cluster(&net, 3, "");
    wait_full_mesh(&ds, FORM);
    // A connection and its handshake take two round trips at the least: the delay is
    // real (a lower bound, which a slow machine cannot break).
    let took = t0.elapsed();
    eprintln!("formed in {took:?} at 200 ms ± 50 ms one way");
    assert!(
        took >= Duration::from_millis(600),
        "formed too fast for the delay: {took:?}"
    );
    let marks: Vec<usize> = ds.iter().map(|d| d.observer.mark()).collect();
    assert_quiet(
        &ds,
        &marks,
        Duration::from_secs(30),
        "30 s at 200 ms ± 50 ms",
    );
    for (i, d) in ds.iter().enumerate() {
        // Formed once: one nodeup per peer, nothing else.
        let r = d.observer.record();
        let ups = r
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Seen::Up { .. }))
            .count();
        assert_eq!(ups, 2, "{}: {:#?}", d.name(), r.events);
        assert_eq!(d.observer.names().len(), others(&ds, i).len());
    }
    all_clean(&ds);
}

#[test]
fn a_flapping_link_gives_strictly_alternating_events() {
    let Some(Formed {
        _one,
        net,
        ds,
        marks,
    }) = formed("a_flapping_link_gives_strictly_alternating_events", 3, FAST)
    else {
        return;
    };
    let flapping = ds[2].name().to_owned();
    // Cut long enough to be seen down, healed long enough to be seen up: five times.
    for round in 0..5 {
        net.cut(2);
        for i in 0..2 {
            let downs_before = round;
            ds[i]
                .observer
                .wait(&format!("down #{} of {flapping}", round + 1), DETECT, |r| {
                    r.since(marks[i])
                        .iter()
                        .filter(|(_, e)| matches!(e, Seen::Down { name, .. } if *name == flapping))
                        .count()
                        > downs_before
                });
        }
        net.heal(2);
        wait_full_mesh(&ds, FORM);
    }
    // Then short flaps, quicker than down_after: they may or may not be seen, but
    // whatever is seen alternates, and the cluster settles whole.
    for _ in 0..10 {
        net.cut(2);
        std::thread::sleep(Duration::from_millis(300)); // pacing the flaps
        net.heal(2);
        std::thread::sleep(Duration::from_millis(300)); // pacing the flaps
    }
    // Settled: each side's last word about the flapping node is that it is up (a side
    // may still be finishing a reconnect when another first shows the full mesh).
    for i in 0..2 {
        ds[i]
            .observer
            .wait(&format!("{flapping} up for good"), FORM, |r| {
                r.members.contains_key(&flapping)
                    && r.since(marks[i])
                        .iter()
                        .rev()
                        .find(|(_, e)| e.node() == Some(flapping.as_str()))
                        .is_some_and(|(_, e)| matches!(e, Seen::Up { .. }))
            });
    }
    wait_full_mesh(&ds, FORM);
    for i in 0..2 {
        let seen = kinds(&about(&ds[i], &flapping, marks[i]));
        assert!(seen.len() >= 10, "{}: {seen:?}", ds[i].name());
        for (k, pair) in seen.chunks(2).enumerate() {
            // The long flaps are seen by silence. In the short ones, TCP's retransmission
            // backoff can outlast a flap (a timeout too), or the other side's timeout
            // closes the connection first (seen as closed once the cable is back).
            let reason_ok = if k < 5 {
                pair[0] == "down:heartbeat_timeout"
            } else {
                pair[0] == "down:heartbeat_timeout" || pair[0] == "down:connection_closed"
            };
            assert!(
                reason_ok && pair.get(1).map(String::as_str) == Some("up"),
                "{}: {seen:?}\n--- its log\n{}\n--- {flapping}'s log\n{}",
                ds[i].name(),
                ds[i].log(),
                ds[2].log()
            );
        }
    }
    all_clean(&ds);
}

#[test]
fn a_restart_is_old_incarnation_down_then_new_up() {
    let Some(Formed {
        _one,
        net,
        mut ds,
        marks,
    }) = formed("a_restart_is_old_incarnation_down_then_new_up", 3, FAST)
    else {
        return;
    };
    let name = ds[2].name().to_owned();
    let old = ds[0].observer.record().members[&name].clone();
    ds[2].restart(&net);
    for i in 0..2 {
        ds[i].observer.wait(&format!("{name} back"), FORM, |r| {
            r.members.get(&name).is_some_and(|inc| *inc != old)
        });
        let evs = about(&ds[i], &name, marks[i]);
        match evs.as_slice() {
            [
                Seen::Down {
                    incarnation: down, ..
                },
                Seen::Up {
                    incarnation: up, ..
                },
            ] => {
                assert_eq!(*down, old, "the old incarnation goes down");
                assert_ne!(*up, old, "a new incarnation comes up");
            }
            other => panic!("{}: {other:#?}", ds[i].name()),
        }
    }
    // The restarted daemon's own stream starts afresh with both others.
    ds[2].observer.wait_members(&others(&ds, 2), FORM);
    all_clean(&ds);
}

/// The error and error count of topology `topology` on host `host`, from its API.
fn topology_health(net: &Net, host: usize, topology: &str) -> (Option<String>, u64, usize) {
    let body = fleet::api_get(net, host, "/v1/topologies").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let t = v["topologies"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == topology))
        .cloned()
        .unwrap_or_default();
    (
        t["last_error"].as_str().map(str::to_owned),
        t["errors_total"].as_u64().unwrap_or(0),
        t["peers"].as_array().map_or(0, |p| p.len()),
    )
}

/// Waits until topology `topology` on every daemon host reports an error containing
/// `want`, and checks its candidates stayed (two each).
fn wait_failing(net: &Net, hosts: usize, topology: &str, want: &str) -> Vec<u64> {
    (0..hosts)
        .map(|h| {
            let (total, peers) = fleet::poll(
                &format!("error {want:?} on host {h}'s topology {topology}"),
                DETECT,
                Duration::from_millis(100),
                || match topology_health(net, h, topology) {
                    (Some(e), total, peers) if e.contains(want) => Ok((total, peers)),
                    (err, ..) => Err(format!("last error {err:?}")),
                },
            );
            assert_eq!(peers, 2, "host {h}: the last good set stays while failing");
            total
        })
        .collect()
}

#[cfg(feature = "kubernetes")]
#[test]
fn kubernetes_api_failures_change_no_membership() {
    use kube_api::KubeApi;
    use kube_objects::{Ep, endpoint_slice};
    let _one = serial();
    let Some(net) = net("kubernetes_api_failures_change_no_membership", 4) else {
        return;
    };
    const TOKEN: &str = "matrix-token";
    const NS: &str = "prod";
    // Host 3 is the API server.
    let bind = std::net::SocketAddr::new(net.host(3).ip.into(), 6443);
    let api = fleet::OnHost::start(&net, 3, move || KubeApi::start_on(bind, TOKEN));
    let eps: Vec<Ep> = (0..3)
        .map(|i| Ep::ready(&net.host(i).ip.to_string(), &format!("app-{i}")))
        .collect();
    api.get().apply(endpoint_slice(
        NS,
        "app-x1",
        "app",
        Some(fleet::CLUSTER_PORT),
        &eps,
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = api.get().kubeconfig(dir.path(), TOKEN, NS);
    let topology = format!(
        "{FAST}\n[topologies.k8s]\nstrategy = \"kubernetes\"\n\
         selector = \"kubernetes.io/service-name=app\"\nkubeconfig = \"{}\"\n\
         request_timeout = \"2s\"\nresync_interval = \"3s\"\nbackoff_initial = \"200ms\"\n\
         backoff_max = \"1s\"\nprune_after = \"2s\"\n",
        kubeconfig.display()
    );
    let ds = fleet::start_apps(&net, 3, COOKIE, &topology);
    wait_full_mesh(&ds, FORM);
    let marks: Vec<usize> = ds.iter().map(|d| d.observer.mark()).collect();

    // 403: the service account lost its Role.
    api.get().set_forbidden(true);
    api.get().drop_watches();
    wait_failing(&net, 3, "k8s", "403");
    // 500: the API server is in trouble.
    api.get().set_forbidden(false);
    api.get().force_status(Some(500));
    api.get().drop_watches();
    wait_failing(&net, 3, "k8s", "500");
    // Not answering at all: its host is cut off (requests time out).
    api.get().force_status(None);
    net.cut(3);
    let before: Vec<u64> = (0..3).map(|h| topology_health(&net, h, "k8s").1).collect();
    let during = wait_failing(&net, 3, "k8s", "request_timeout");
    for h in 0..3 {
        assert!(during[h] > before[h], "host {h}: the errors are counted");
        let metrics = fleet::api_get(&net, h, "/metrics").unwrap_or_default();
        let counted = fleet::metric(
            &metrics,
            "rallypoint_strategy_errors_total{topology=\"k8s\"}",
        );
        assert!(counted.is_some_and(|c| c >= 3.0), "host {h}: {counted:?}");
    }
    // Through all of it (and twice prune_after more), nobody went down.
    assert_quiet(&ds, &marks, Duration::from_secs(5), "the API's failures");
    for (i, d) in ds.iter().enumerate() {
        assert_eq!(d.observer.names(), {
            let mut o = others(&ds, i);
            o.sort();
            o
        });
        assert!(
            d.observer.record().since(marks[i]).is_empty(),
            "no event at all"
        );
    }
    // The API comes back: healthy again, same members.
    net.heal(3);
    for h in 0..3 {
        fleet::poll(
            &format!("recovery on host {h}"),
            FORM,
            Duration::from_millis(100),
            || match topology_health(&net, h, "k8s").0 {
                None => Ok(()),
                Some(e) => Err(e),
            },
        );
    }
    all_clean(&ds);
}

#[cfg(feature = "dns")]
#[test]
fn dns_failures_change_no_membership() {
    use dns_server::{DnsServer, Mode};
    let _one = serial();
    let Some(net) = net("dns_failures_change_no_membership", 4) else {
        return;
    };
    // Host 3 is the DNS server.
    let ip = std::net::IpAddr::from(net.host(3).ip);
    let ips: Vec<std::net::IpAddr> = (0..3).map(|i| net.host(i).ip.into()).collect();
    let dns = fleet::OnHost::start(&net, 3, move || async move {
        let s = DnsServer::start_on(ip, 0).await;
        s.set_ips("pods.rp.test.", &ips, 1).await;
        s
    });
    let topology = format!(
        "{FAST}\n[topologies.pods]\nstrategy = \"dns\"\nquery = \"pods.rp.test.\"\n\
         nameservers = [\"{}\"]\ninterval = \"500ms\"\ntimeout = \"500ms\"\n\
         prune_after = \"2s\"\n",
        dns.get().addr()
    );
    let ds = fleet::start_apps(&net, 3, COOKIE, &topology);
    wait_full_mesh(&ds, FORM);
    let marks: Vec<usize> = ds.iter().map(|d| d.observer.mark()).collect();

    // No answers at all (queries time out), for well over prune_after.
    dns.get().set_mode(Mode::Silent);
    wait_failing(&net, 3, "pods", "");
    assert_quiet(&ds, &marks, Duration::from_secs(5), "DNS timing out");
    // SERVFAIL, for well over prune_after.
    dns.get().set_mode(Mode::ServFail);
    wait_failing(&net, 3, "pods", "SERVFAIL");
    assert_quiet(&ds, &marks, Duration::from_secs(5), "SERVFAIL");
    for (i, d) in ds.iter().enumerate() {
        assert!(
            d.observer.record().since(marks[i]).is_empty(),
            "{}: no event at all",
            d.name()
        );
        let metrics = fleet::api_get(&net, i, "/metrics").unwrap_or_default();
        let counted = fleet::metric(
            &metrics,
            "rallypoint_strategy_errors_total{topology=\"pods\"}",
        );
        assert!(counted.is_some_and(|c| c >= 2.0), "host {i}: {counted:?}");
    }
    dns.get().set_mode(Mode::Answer);
    all_clean(&ds);
}

#[test]
fn a_foreign_cluster_never_joins_and_is_counted() {
    let _one = serial();
    let Some(net) = net("a_foreign_cluster_never_joins_and_is_counted", 4) else {
        return;
    };
    // No topology configured: every daemon gossips on 230.1.1.251:45892, the default.
    // Hosts 0–2 share a cookie; host 3 has another one.
    let ds: Vec<Daemon> = (0..4)
        .map(|i| {
            Daemon::start(
                &net,
                i,
                Spec {
                    name: name_on(&net, i),
                    cookie: if i < 3 {
                        COOKIE.into()
                    } else {
                        "another cluster's cookie".into()
                    },
                    toml: FAST.into(),
                },
            )
        })
        .collect();
    let ours = &ds[..3];
    wait_full_mesh(ours, FORM);
    // Each of ours has rejected several of the foreign node's heartbeats.
    for h in 0..3 {
        fleet::poll(
            &format!("rejected packets counted on host {h}"),
            FORM,
            Duration::from_millis(200),
            || {
                let m = fleet::api_get(&net, h, "/metrics").unwrap_or_default();
                let rejected: f64 = m
                    .lines()
                    .filter(|l| {
                        l.starts_with("rallypoint_gossip_packets_total") && l.contains("auth")
                    })
                    .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                    .sum();
                if rejected >= 3.0 { Ok(()) } else { Err(m) }
            },
        );
    }
    let foreign = ds[3].name().to_owned();
    for d in ours {
        let r = d.observer.record();
        assert!(
            r.events
                .iter()
                .all(|(_, e)| e.node() != Some(foreign.as_str())),
            "{}: saw the foreign node: {:#?}",
            d.name(),
            r.events
        );
    }
    let r = ds[3].observer.record();
    assert!(
        r.members.is_empty(),
        "the foreign node joined nobody: {:?}",
        r.members
    );
    assert!(
        r.events
            .iter()
            .all(|(_, e)| matches!(e, Seen::Snapshot { .. })),
        "{:#?}",
        r.events
    );
    all_clean(&ds);
}

#[test]
fn twenty_nodes_started_at_once_form_one_mesh() {
    let _one = serial();
    let Some(net) = net("twenty_nodes_started_at_once_form_one_mesh", 20) else {
        return;
    };
    // The daemon's default discovery (gossip), all started together.
    let t0 = Instant::now();
    let ds: Vec<Daemon> = (0..20)
        .map(|i| {
            Daemon::start(
                &net,
                i,
                Spec {
                    name: name_on(&net, i),
                    cookie: COOKIE.into(),
                    toml: FAST.into(),
                },
            )
        })
        .collect();
    wait_full_mesh(&ds, Duration::from_secs(120));
    eprintln!(
        "20 daemons: one full mesh (190 connections) {:?} after the first start",
        t0.elapsed()
    );
    for (i, d) in ds.iter().enumerate() {
        // Every stream: one nodeup per peer, no nodedown, the others exactly.
        let r = d.observer.record();
        let mut ups: Vec<&str> = r
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Seen::Up { name, .. } => Some(name.as_str()),
                Seen::Down { .. } => panic!("{}: a nodedown while forming: {e:?}", d.name()),
                Seen::Snapshot { .. } => None,
            })
            .collect();
        ups.sort();
        let mut want = others(&ds, i);
        want.sort();
        // A snapshot taken mid-formation already holds some members.
        let in_snapshot: Vec<String> = r
            .events
            .iter()
            .find_map(|(_, e)| match e {
                Seen::Snapshot { members, .. } => Some(members.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut seen: Vec<String> = in_snapshot
            .into_iter()
            .chain(ups.iter().map(|s| s.to_string()))
            .collect();
        seen.sort();
        assert_eq!(seen, want, "{}: each peer came up exactly once", d.name());
    }
    all_clean(&ds);
}
