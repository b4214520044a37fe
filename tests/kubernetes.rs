//! The Kubernetes strategy against the fake API server of `tests/support/kube_api.rs`,
//! reached through a kubeconfig file as a real cluster would be.

#![cfg(feature = "kubernetes")]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rallypoint::strategies::kubernetes::{Config, Kubernetes, Mode, ResourceKind};
use rallypoint::strategies::{Context, Peer, PeerSet, Strategy, TopologyHandle, TopologyStatus};
use rallypoint::{Cookie, Node};
use serde_json::json;
use support::kube_api::{Hold, Kind, KubeApi};
use support::kube_objects::{Ep, endpoint_slice, endpoints, pod};

const TOKEN: &str = "token-one";
const NS: &str = "prod";
const SVC_SELECTOR: &str = "kubernetes.io/service-name=app";
/// This node's own cluster port: the port peers get when no port is named `cluster`.
const OWN_PORT: u16 = 45893;
const DEADLINE: Duration = Duration::from_secs(15);

struct Run {
    api: KubeApi,
    dir: tempfile::TempDir,
    handle: TopologyHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    /// Waits until the status satisfies `pred`; panics with the last status after the
    /// deadline.
    async fn wait(&mut self, what: &str, pred: impl Fn(&TopologyStatus) -> bool) -> TopologyStatus {
        let rx = &mut self.handle.status;
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                {
                    let st = rx.borrow_and_update();
                    if pred(&st) {
                        return st.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    panic!("the strategy ended while waiting for {what}");
                }
            }
        })
        .await;
        match found {
            Ok(st) => st,
            Err(_) => panic!(
                "timed out waiting for {what}; last status: {:?}",
                *self.handle.status.borrow()
            ),
        }
    }

    /// Waits until the reported set is exactly `expected`.
    async fn wait_set(&mut self, what: &str, expected: &PeerSet) -> TopologyStatus {
        self.wait(what, |st| st.reported && *st.peers == *expected)
            .await
    }

    async fn stop(self) {
        self.handle.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the strategy stops on shutdown")
            .expect("the strategy does not panic");
    }
}

fn me() -> Node {
    Node {
        name: "app@10.255.0.1".parse().expect("name"),
        addr: format!("10.255.0.1:{OWN_PORT}").parse().expect("addr"),
        incarnation: 1,
    }
}

fn base_config(kubeconfig: std::path::PathBuf) -> Config {
    Config {
        selector: SVC_SELECTOR.into(),
        kubeconfig: Some(kubeconfig),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Starts the strategy against `api` with the base config changed by `tweak`.
async fn run(api: KubeApi, tweak: impl FnOnce(&mut Config)) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), TOKEN, NS);
    let mut config = base_config(kubeconfig);
    tweak(&mut config);
    start(api, dir, config)
}

fn start(api: KubeApi, dir: tempfile::TempDir, config: Config) -> Run {
    let strategy = Kubernetes::from_config(config).expect("valid config");
    assert_eq!(strategy.kind(), "kubernetes");
    assert!(strategy.authoritative());
    let (ctx, handle) = Context::new(
        "k8s",
        "kubernetes",
        me(),
        Cookie::new("kubernetes-test-cookie"),
    );
    let task = tokio::spawn(strategy.run(ctx));
    Run {
        api,
        dir,
        handle,
        task,
    }
}

/// `app@IP` at `IP:port`.
fn peer(ip: &str, port: u16) -> Peer {
    named(&format!("app@{ip}"), ip, port)
}

fn named(name: &str, ip: &str, port: u16) -> Peer {
    Peer::named(
        name.parse().expect("node name"),
        format!("{ip}:{port}").parse().expect("addr"),
    )
}

fn set(peers: impl IntoIterator<Item = Peer>) -> PeerSet {
    peers.into_iter().collect()
}

#[tokio::test]
async fn endpointslice_endpoints_follow_readiness_and_deletion() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-abc",
        "app",
        Some(4000),
        &[
            Ep::ready("10.0.0.1", "app-0"),
            Ep::ready("10.0.0.2", "app-1"),
            Ep::ready("10.0.0.3", "app-2").not_ready(),
            Ep::ready("10.0.0.4", "app-3").terminating(),
        ],
    ));
    let mut r = run(api, |_| {}).await;
    r.wait_set(
        "the ready, non-terminating endpoints",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
    )
    .await;

    // A new pod becomes ready: it appears through the watch, without a relist.
    let lists = r.api.list_requests();
    r.api.modify(Kind::EndpointSlice, NS, "app-abc", |o| {
        o["endpoints"][2]["conditions"] =
            json!({"ready": true, "serving": true, "terminating": false});
    });
    r.wait_set(
        "the endpoint that became ready",
        &set([
            peer("10.0.0.1", 4000),
            peer("10.0.0.2", 4000),
            peer("10.0.0.3", 4000),
        ]),
    )
    .await;

    // One turns not ready, another starts terminating: both leave the set.
    r.api.modify(Kind::EndpointSlice, NS, "app-abc", |o| {
        o["endpoints"][0]["conditions"] =
            json!({"ready": false, "serving": false, "terminating": false});
        o["endpoints"][1]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
    });
    r.wait_set(
        "not-ready and terminating endpoints removed",
        &set([peer("10.0.0.3", 4000)]),
    )
    .await;

    // A second slice of the same Service adds to the set; deleting the first removes
    // its endpoints.
    r.api.apply(endpoint_slice(
        NS,
        "app-def",
        "app",
        Some(4000),
        &[Ep::ready("10.0.1.1", "app-4")],
    ));
    r.wait_set(
        "endpoints of the second slice",
        &set([peer("10.0.0.3", 4000), peer("10.0.1.1", 4000)]),
    )
    .await;
    assert!(r.api.delete(Kind::EndpointSlice, NS, "app-abc"));
    r.wait_set(
        "the deleted slice's endpoints removed",
        &set([peer("10.0.1.1", 4000)]),
    )
    .await;
    let st = r.handle.status.borrow().clone();
    assert_eq!(st.last_error, None);
    assert_eq!(
        r.api.list_requests(),
        lists,
        "changes came by watch, not by relist"
    );
    let reqs = r.api.requests();
    let watch = reqs
        .iter()
        .find(|q| q.contains("watch=true"))
        .expect("a watch request");
    assert!(watch.contains("allowWatchBookmarks=true"), "{watch}");
    assert!(watch.contains("resourceVersion="), "{watch}");
    assert!(
        watch.contains("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"),
        "{watch}"
    );
    r.stop().await;
}

#[tokio::test]
async fn endpointslice_include_not_ready_takes_not_ready_but_never_terminating() {
    let api = KubeApi::start(TOKEN).await;
    let mut unset = endpoint_slice(NS, "app-abc", "app", None, &[Ep::ready("10.0.0.5", "e")]);
    // Conditions left unset count as ready.
    unset["endpoints"][0]
        .as_object_mut()
        .expect("endpoint")
        .remove("conditions");
    api.apply(unset);
    api.apply(endpoint_slice(
        NS,
        "app-def",
        "app",
        None,
        &[
            Ep::ready("10.0.0.1", "a"),
            Ep::ready("10.0.0.2", "b").not_ready(),
            Ep::ready("10.0.0.3", "c").terminating(),
        ],
    ));
    let mut r = run(api, |c| c.include_not_ready = true).await;
    r.wait_set(
        "ready, not-ready and condition-less endpoints, not the terminating one",
        &set([
            peer("10.0.0.1", OWN_PORT),
            peer("10.0.0.2", OWN_PORT),
            peer("10.0.0.5", OWN_PORT),
        ]),
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn endpoints_resource_ready_and_not_ready_addresses() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoints(
        NS,
        "app",
        &[("10.0.0.1", None), ("10.0.0.2", None)],
        &[("10.0.0.3", None)],
        None,
    ));
    let mut r = run(api, |c| {
        c.resource = ResourceKind::Endpoints;
        c.selector = "app=app".into();
    })
    .await;
    // No port named `cluster`: peers get this node's own cluster port.
    r.wait_set(
        "the ready addresses",
        &set([peer("10.0.0.1", OWN_PORT), peer("10.0.0.2", OWN_PORT)]),
    )
    .await;
    r.api.apply(endpoints(
        NS,
        "app",
        &[("10.0.0.2", None)],
        &[("10.0.0.1", None), ("10.0.0.3", None)],
        Some(5000),
    ));
    r.wait_set(
        "10.0.0.1 moved to notReadyAddresses",
        &set([peer("10.0.0.2", 5000)]),
    )
    .await;
    let api = {
        let Run {
            api,
            handle,
            task,
            dir,
        } = r;
        handle.shutdown.cancel();
        task.await.expect("strategy stops");
        drop(dir);
        api
    };

    // With include_not_ready, the not-ready addresses count too.
    let mut r = run(api, |c| {
        c.resource = ResourceKind::Endpoints;
        c.selector = "app=app".into();
        c.include_not_ready = true;
    })
    .await;
    r.wait_set(
        "ready and not-ready addresses",
        &set([
            peer("10.0.0.1", 5000),
            peer("10.0.0.2", 5000),
            peer("10.0.0.3", 5000),
        ]),
    )
    .await;
    assert!(r.api.delete(Kind::Endpoints, NS, "app"));
    r.wait_set("nothing once the Endpoints are deleted", &PeerSet::new())
        .await;
    r.stop().await;
}

#[tokio::test]
async fn pods_resource_phase_ready_condition_and_deletion() {
    let api = KubeApi::start(TOKEN).await;
    let labels = [("app", "web")];
    api.apply(pod(NS, "web-0", &labels, Some("10.0.0.1"), true, 4000));
    api.apply(pod(NS, "web-1", &labels, Some("10.0.0.2"), false, 4000));
    api.apply(pod(NS, "web-2", &labels, None, false, 4000));
    let mut r = run(api, |c| {
        c.resource = ResourceKind::Pods;
        c.selector = "app=web".into();
    })
    .await;
    r.wait_set("the running, ready pod", &set([peer("10.0.0.1", 4000)]))
        .await;

    r.api
        .apply(pod(NS, "web-1", &labels, Some("10.0.0.2"), true, 4000));
    r.wait_set(
        "web-1 turned ready",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
    )
    .await;

    // Graceful deletion: first the deletionTimestamp (terminating), then the removal.
    r.api.modify(Kind::Pod, NS, "web-0", |o| {
        o["metadata"]["deletionTimestamp"] = json!("2025-01-01T01:00:00Z");
        o["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    });
    r.wait_set(
        "the terminating pod removed",
        &set([peer("10.0.0.2", 4000)]),
    )
    .await;
    assert!(r.api.delete(Kind::Pod, NS, "web-0"));

    // A pod that fails is not a candidate.
    r.api.modify(Kind::Pod, NS, "web-1", |o| {
        o["status"]["phase"] = json!("Failed")
    });
    r.wait_set("the failed pod removed", &PeerSet::new()).await;
    r.stop().await;
}

#[tokio::test]
async fn pods_include_not_ready_but_never_terminating() {
    let api = KubeApi::start(TOKEN).await;
    let labels = [("app", "web")];
    api.apply(pod(NS, "web-0", &labels, Some("10.0.0.1"), false, 4000));
    api.apply(pod(NS, "web-1", &labels, None, false, 4000));
    let mut r = run(api, |c| {
        c.resource = ResourceKind::Pods;
        c.selector = "app=web".into();
        c.include_not_ready = true;
    })
    .await;
    r.wait_set(
        "the not-ready pod with an IP",
        &set([peer("10.0.0.1", 4000)]),
    )
    .await;
    r.api.modify(Kind::Pod, NS, "web-0", |o| {
        o["metadata"]["deletionTimestamp"] = json!("2025-01-01T01:00:00Z");
    });
    r.wait_set("the terminating pod removed", &PeerSet::new())
        .await;
    r.stop().await;
}

#[tokio::test]
async fn naming_modes_for_all_three_resources() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "db-xyz",
        "db",
        Some(4000),
        &[
            Ep::ready("10.0.0.1", "db-0").hostname("db-0"),
            Ep::ready("10.0.0.2", "other"),
        ],
    ));
    api.apply(endpoints(
        NS,
        "db",
        &[("10.0.0.1", Some("db-0")), ("10.0.0.2", None)],
        &[],
        Some(4000),
    ));
    let mut p = pod(NS, "db-0", &[("app", "db")], Some("10.0.0.1"), true, 4000);
    p["spec"]["hostname"] = json!("db-0");
    p["spec"]["subdomain"] = json!("db");
    api.apply(p);
    // A Deployment pod: no subdomain, so no hostname name.
    api.apply(pod(
        NS,
        "loose",
        &[("app", "db")],
        Some("10.0.0.2"),
        true,
        4000,
    ));

    let cases: Vec<(ResourceKind, &str, Mode, PeerSet)> = vec![
        (
            ResourceKind::EndpointSlices,
            "kubernetes.io/service-name=db",
            Mode::Dns,
            set([
                named("app@10-0-0-1.prod.pod.cluster.local", "10.0.0.1", 4000),
                named("app@10-0-0-2.prod.pod.cluster.local", "10.0.0.2", 4000),
            ]),
        ),
        (
            ResourceKind::EndpointSlices,
            "kubernetes.io/service-name=db",
            Mode::Hostname,
            set([named(
                "app@db-0.db.prod.svc.cluster.local",
                "10.0.0.1",
                4000,
            )]),
        ),
        (
            ResourceKind::Endpoints,
            "app=db",
            Mode::Hostname,
            set([named(
                "app@db-0.db.prod.svc.cluster.local",
                "10.0.0.1",
                4000,
            )]),
        ),
        (
            ResourceKind::Endpoints,
            "app=db",
            Mode::Ip,
            set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
        ),
        (
            ResourceKind::Pods,
            "app=db",
            Mode::Hostname,
            set([named(
                "app@db-0.db.prod.svc.cluster.local",
                "10.0.0.1",
                4000,
            )]),
        ),
        (
            ResourceKind::Pods,
            "app=db",
            Mode::Dns,
            set([
                named("app@10-0-0-1.prod.pod.cluster.local", "10.0.0.1", 4000),
                named("app@10-0-0-2.prod.pod.cluster.local", "10.0.0.2", 4000),
            ]),
        ),
    ];
    let mut api = api;
    for (resource, selector, mode, expected) in cases {
        let mut r = run(api, |c| {
            c.resource = resource;
            c.selector = selector.into();
            c.mode = mode;
        })
        .await;
        let what = format!("{resource:?} names in {mode:?} mode");
        r.wait_set(&what, &expected).await;
        let Run {
            api: a,
            handle,
            task,
            ..
        } = r;
        handle.shutdown.cancel();
        task.await.expect("strategy stops");
        api = a;
    }

    // A custom basename, cluster domain and Service.
    let mut r = run(api, |c| {
        c.selector = "kubernetes.io/service-name=db".into();
        c.mode = Mode::Hostname;
        c.node_basename = Some("store".into());
        c.cluster_domain = "corp.internal".into();
        c.service = Some("db-headless".into());
    })
    .await;
    r.wait_set(
        "custom basename, domain and service",
        &set([named(
            "store@db-0.db-headless.prod.svc.corp.internal",
            "10.0.0.1",
            4000,
        )]),
    )
    .await;
    let st = r.handle.status.borrow().clone();
    assert!(
        st.counters.get("skipped_endpoints").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn selector_and_namespace_are_honoured() {
    let api = KubeApi::start(TOKEN).await;
    let p = |ns: &str, name: &str, labels: &[(&str, &str)], ip: &str| {
        pod(ns, name, labels, Some(ip), true, 4000)
    };
    api.apply(p(
        NS,
        "web-0",
        &[("app", "web"), ("tier", "front")],
        "10.0.0.1",
    ));
    api.apply(p(
        NS,
        "api-0",
        &[("app", "api"), ("tier", "back")],
        "10.0.0.2",
    ));
    api.apply(p(NS, "db-0", &[("app", "api"), ("tier", "db")], "10.0.0.3"));
    api.apply(p(NS, "cron-0", &[("app", "cron")], "10.0.0.4"));
    api.apply(p(
        "staging",
        "web-s",
        &[("app", "web"), ("tier", "front")],
        "10.0.9.1",
    ));
    let mut r = run(api, |c| {
        c.resource = ResourceKind::Pods;
        c.selector = "app in (web, api),tier!=db".into();
        c.namespace = Some(NS.into());
    })
    .await;
    r.wait_set(
        "only the selected pods of the namespace",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
    )
    .await;

    // Changes outside the selection or the namespace do not matter; a pod whose labels
    // stop matching leaves.
    r.api
        .apply(p("staging", "api-s", &[("app", "api")], "10.0.9.2"));
    r.api.apply(p(NS, "cron-1", &[("app", "cron")], "10.0.0.5"));
    r.api.modify(Kind::Pod, NS, "api-0", |o| {
        o["metadata"]["labels"]["tier"] = json!("db")
    });
    r.wait_set(
        "api-0 relabelled out of the selection",
        &set([peer("10.0.0.1", 4000)]),
    )
    .await;
    r.api.modify(Kind::Pod, NS, "db-0", |o| {
        o["metadata"]["labels"]["tier"] = json!("back")
    });
    r.wait_set(
        "db-0 relabelled into the selection",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.3", 4000)]),
    )
    .await;
    assert!(
        r.api
            .requests()
            .iter()
            .all(|q| q.contains("/namespaces/prod/pods")),
        "only the configured namespace is read"
    );

    // The namespace defaults to the kubeconfig context's.
    let Run {
        api, handle, task, ..
    } = r;
    handle.shutdown.cancel();
    task.await.expect("stops");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), TOKEN, "staging");
    let mut config = base_config(kubeconfig);
    config.resource = ResourceKind::Pods;
    config.selector = "app".into();
    let mut r = start(api, dir, config);
    r.wait_set(
        "the staging pods",
        &set([peer("10.0.9.1", 4000), peer("10.0.9.2", 4000)]),
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_version_without_losing_a_change() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |_| {}).await;
    r.wait_set("the first endpoint", &set([peer("10.0.0.1", 4000)]))
        .await;
    r.api.wait_watches_opened(0).await;
    let lists = r.api.list_requests();
    let watches = r.api.watches_opened();

    // The server ends the watch; the client's next watch waits while a change lands.
    r.api.hold(Hold::Watches);
    r.api.drop_watches();
    r.api.wait_held(1).await;
    r.api.apply(endpoint_slice(
        NS,
        "app-2",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.2", "b")],
    ));
    r.api.hold(Hold::Nothing);

    r.wait_set(
        "the change made between two watches",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
    )
    .await;
    assert!(r.api.watches_opened() > watches);
    assert_eq!(
        r.api.list_requests(),
        lists,
        "resumed from the version, no relist"
    );
    assert_eq!(r.handle.status.borrow().last_error, None);
    r.stop().await;
}

#[tokio::test]
async fn bookmarks_advance_the_version_a_watch_resumes_from() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |_| {}).await;
    r.wait_set("the first endpoint", &set([peer("10.0.0.1", 4000)]))
        .await;
    r.api.wait_watches_opened(0).await;
    // Changes the watch does not see (another Service), then a bookmark.
    for i in 0..3 {
        r.api.apply(endpoint_slice(
            NS,
            &format!("other-{i}"),
            "other",
            Some(4000),
            &[Ep::ready("10.0.5.1", "o")],
        ));
    }
    let rv = r.api.resource_version();
    r.api.send_bookmarks();
    // After the bookmark, the resumed watch starts from the bookmark's version. The
    // bookmark and the end of the stream travel in order on one connection.
    let watches = r.api.watches_opened();
    r.api.drop_watches();
    r.api.wait_watches_opened(watches).await;
    let reqs = r.api.requests();
    let last_watch = reqs
        .iter()
        .rev()
        .find(|q| q.contains("watch=true"))
        .expect("a watch");
    assert!(
        last_watch.contains(&format!("resourceVersion={rv}")),
        "resumed from the bookmark's version {rv}: {last_watch}"
    );
    r.stop().await;
}

/// Makes the client fall out of the server's history while it is between two watches.
async fn force_expiry(r: &mut Run, change: impl FnOnce(&KubeApi)) {
    r.api.hold(Hold::Watches);
    r.api.drop_watches();
    r.api.wait_held(1).await;
    change(&r.api);
    r.api.compact();
    r.api.hold(Hold::Nothing);
}

#[tokio::test]
async fn gone_410_as_watch_error_event_relists_to_the_correct_set() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a"), Ep::ready("10.0.0.2", "b")],
    ));
    let mut r = run(api, |_| {}).await;
    r.wait_set(
        "both endpoints",
        &set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]),
    )
    .await;
    let lists = r.api.list_requests();
    force_expiry(&mut r, |api| {
        api.apply(endpoint_slice(
            NS,
            "app-1",
            "app",
            Some(4000),
            &[Ep::ready("10.0.0.2", "b")],
        ));
        api.apply(endpoint_slice(
            NS,
            "app-2",
            "app",
            Some(4000),
            &[Ep::ready("10.0.0.3", "c")],
        ));
    })
    .await;
    let st = r
        .wait_set(
            "the set after the relist",
            &set([peer("10.0.0.2", 4000), peer("10.0.0.3", 4000)]),
        )
        .await;
    assert!(r.api.list_requests() > lists, "a relist happened");
    assert!(
        st.counters.get("expired").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    assert_eq!(st.last_error, None, "a 410 is routine, not a failure");
    assert_eq!(st.errors_total, 0);
    r.stop().await;
}

#[tokio::test]
async fn gone_410_as_http_status_relists_to_the_correct_set() {
    let api = KubeApi::start(TOKEN).await;
    api.set_expired_as_http_status(true);
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |_| {}).await;
    r.wait_set("the endpoint", &set([peer("10.0.0.1", 4000)]))
        .await;
    force_expiry(&mut r, |api| {
        assert!(api.delete(Kind::EndpointSlice, NS, "app-1"));
        api.apply(endpoint_slice(
            NS,
            "app-2",
            "app",
            Some(4000),
            &[Ep::ready("10.0.0.3", "c")],
        ));
    })
    .await;
    let st = r
        .wait_set("the set after the relist", &set([peer("10.0.0.3", 4000)]))
        .await;
    assert!(
        st.counters.get("expired").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    assert_eq!(st.last_error, None);
    r.stop().await;
}

#[tokio::test]
async fn paged_lists_are_followed_to_the_end() {
    let api = KubeApi::start(TOKEN).await;
    api.set_page_cap(Some(2));
    let mut expected = PeerSet::new();
    for i in 1..=5 {
        let ip = format!("10.0.0.{i}");
        api.apply(endpoint_slice(
            NS,
            &format!("app-{i}"),
            "app",
            Some(4000),
            &[Ep::ready(&ip, "p")],
        ));
        expected.insert(peer(&ip, 4000));
    }
    let mut r = run(api, |_| {}).await;
    r.wait_set("all five slices across three pages", &expected)
        .await;
    let pages = r
        .api
        .requests()
        .iter()
        .filter(|q| q.contains("continue="))
        .count();
    assert_eq!(pages, 2, "two follow-up pages: {:?}", r.api.requests());
    r.stop().await;
}

#[tokio::test]
async fn forbidden_keeps_the_set_names_the_rbac_rule_and_recovers() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a"), Ep::ready("10.0.0.2", "b")],
    ));
    let mut r = run(api, |_| {}).await;
    let good = set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]);
    r.wait_set("the endpoints", &good).await;

    // RBAC is taken away and the watch ends: the next requests are refused.
    r.api.set_forbidden(true);
    r.api.drop_watches();
    let st = r
        .wait("a failure report", |st| st.last_error.is_some())
        .await;
    let err = st.last_error.clone().expect("error");
    for needle in [
        "403",
        "get, list, watch",
        "\"endpointslices\"",
        "\"discovery.k8s.io\"",
        "\"prod\"",
        "RoleBinding",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
    assert!(
        err.contains("cannot"),
        "the server's own message is kept: {err}"
    );
    assert_eq!(*st.peers, good, "a 403 never empties the set");

    // While forbidden, the set stays put even after many retries.
    r.api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.2", "b")],
    ));
    r.wait("several retries", |st| st.errors_total >= 3).await;
    assert_eq!(*r.handle.status.borrow().peers, good);

    // Access returns: the strategy recovers and catches up.
    r.api.set_forbidden(false);
    let st = r
        .wait("recovery with the change", |st| {
            st.last_error.is_none() && *st.peers == set([peer("10.0.0.2", 4000)])
        })
        .await;
    assert!(st.errors_total >= 3);
    r.stop().await;
}

#[tokio::test]
async fn server_errors_keep_the_set_and_are_retried() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |_| {}).await;
    let good = set([peer("10.0.0.1", 4000)]);
    r.wait_set("the endpoint", &good).await;
    r.api.force_status(Some(500));
    r.api.drop_watches();
    let st = r
        .wait("a 500 reported", |st| {
            st.last_error.as_deref().is_some_and(|e| e.contains("500"))
        })
        .await;
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("InternalError"),
        "{st:?}"
    );
    assert_eq!(*st.peers, good);
    r.api.force_status(None);
    let st = r.wait("recovery", |st| st.last_error.is_none()).await;
    assert_eq!(*r.handle.status.borrow().peers, good);
    // The watch resumed from its version: one full list in all.
    assert_eq!(st.counters.get("lists"), Some(&1), "{st:?}");
    r.stop().await;
}

#[tokio::test]
async fn a_rotated_token_is_picked_up_without_a_restart() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let kubeconfig = api.kubeconfig_with_token_file(dir.path(), &token_file, NS);
    let mut r = start(api, dir, base_config(kubeconfig));
    let good = set([peer("10.0.0.1", 4000)]);
    r.wait_set("the endpoint", &good).await;

    // The server now wants a new token; the old one is refused.
    r.api.set_token("token-two");
    r.api.drop_watches();
    let st = r
        .wait("a 401 reported", |st| {
            st.last_error.as_deref().is_some_and(|e| e.contains("401"))
        })
        .await;
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("token"),
        "{st:?}"
    );
    assert_eq!(*st.peers, good, "a 401 never empties the set");

    // The kubelet writes the rotated token: the strategy reads it and recovers.
    std::fs::write(&token_file, "token-two").expect("rotate token");
    r.api.apply(endpoint_slice(
        NS,
        "app-2",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.2", "b")],
    ));
    let st = r
        .wait("recovery with the new token", |st| {
            st.last_error.is_none()
                && *st.peers == set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)])
        })
        .await;
    assert!(
        st.counters.get("reconnects").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn the_api_server_restarts_mid_watch() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a"), Ep::ready("10.0.0.2", "b")],
    ));
    let mut r = run(api, |_| {}).await;
    let good = set([peer("10.0.0.1", 4000), peer("10.0.0.2", 4000)]);
    r.wait_set("the endpoints", &good).await;
    r.api.wait_watches_opened(0).await;
    let lists = r.api.list_requests();

    r.api.stop().await;
    let st = r
        .wait("the outage reported", |st| st.last_error.is_some())
        .await;
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains(&r.api.url().replace("http://", "")),
        "{st:?}"
    );
    assert_eq!(
        *st.peers, good,
        "an unreachable server never empties the set"
    );

    // What changed while the server was down shows once it is back.
    r.api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.2", "b"), Ep::ready("10.0.0.3", "c")],
    ));
    r.api.restart().await;
    let st = r
        .wait("recovery with the change", |st| {
            st.last_error.is_none()
                && *st.peers == set([peer("10.0.0.2", 4000), peer("10.0.0.3", 4000)])
        })
        .await;
    // It resumed: a new watch from the version it had, no full list (only one-item
    // probes of whether the server answers again).
    let after: Vec<String> = r.api.requests().into_iter().collect();
    let full_lists = after
        .iter()
        .filter(|q| !q.contains("watch=true") && !q.contains("limit=1"))
        .count();
    assert_eq!(
        full_lists, lists,
        "resumed by a watch, not a relist: {after:#?}"
    );
    assert_eq!(st.counters.get("lists"), Some(&1), "{st:?}");
    r.stop().await;
}

#[tokio::test]
async fn a_hanging_api_server_times_out_and_keeps_the_set() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.resync_interval = Duration::from_millis(500);
    })
    .await;
    let good = set([peer("10.0.0.1", 4000)]);
    r.wait_set("the endpoint", &good).await;
    r.api.hold(Hold::Everything);
    let st = r
        .wait("a timeout reported", |st| {
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("request_timeout"))
        })
        .await;
    assert_eq!(*st.peers, good);
    r.api.hold(Hold::Nothing);
    r.wait("recovery", |st| st.last_error.is_none()).await;
    let st = r
        .wait("a periodic resync", |st| {
            st.counters.get("resyncs").copied().unwrap_or(0) >= 1
        })
        .await;
    assert_eq!(*st.peers, good);
    r.stop().await;
}

#[tokio::test]
async fn a_malformed_object_is_an_error_not_a_crash() {
    let api = KubeApi::start(TOKEN).await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    let mut r = run(api, |_| {}).await;
    let good = set([peer("10.0.0.1", 4000)]);
    r.wait_set("the endpoint", &good).await;
    // An object the client cannot decode (endpoints is not a list).
    r.api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "app-bad", "namespace": NS, "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "endpoints": "garbage"
    }));
    let st = r
        .wait("a decode error reported", |st| {
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("decode") && e.contains("endpointslices"))
        })
        .await;
    assert_eq!(*st.peers, good);
    assert!(!r.task.is_finished());
    assert!(r.api.delete(Kind::EndpointSlice, NS, "app-bad"));
    r.wait("recovery", |st| st.last_error.is_none()).await;
    r.stop().await;
}

#[tokio::test]
async fn a_wrong_kubeconfig_is_reported_and_retried() {
    let api = KubeApi::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-kubeconfig");
    let mut r = start(api, dir, base_config(missing.clone()));
    let st = r.wait("a failure report", |st| st.errors_total >= 2).await;
    let err = st.last_error.clone().unwrap_or_default();
    assert!(err.contains("no-such-kubeconfig"), "{err}");
    assert!(!st.reported);
    // The file appears: the strategy starts working.
    let written = r.api.kubeconfig(r.dir.path(), TOKEN, NS);
    std::fs::rename(written, &missing).expect("move kubeconfig");
    r.api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.0.0.1", "a")],
    ));
    r.wait_set("the endpoint", &set([peer("10.0.0.1", 4000)]))
        .await;
    r.stop().await;
}

#[test]
fn config_from_toml_style_keys() {
    let c: Config = serde_json::from_value(json!({
        "selector": "app=web",
        "resource": "endpoints",
        "mode": "dns",
        "include_not_ready": true,
        "resync_interval": "2m",
        "cluster_domain": "corp.internal"
    }))
    .expect("config");
    assert_eq!(c.resource, ResourceKind::Endpoints);
    assert_eq!(c.mode, Mode::Dns);
    assert_eq!(c.resync_interval, Duration::from_secs(120));
    let names: BTreeSet<&str> = ["endpointslices", "endpoints", "pods"].into();
    for n in names {
        let c: Config =
            serde_json::from_value(json!({"selector": "a=b", "resource": n})).expect("resource");
        assert_eq!(serde_json::to_value(c.resource).expect("ser"), json!(n));
    }
    let err = Kubernetes::new("").expect_err("empty selector refused");
    assert_eq!(err.key, "selector");
}
