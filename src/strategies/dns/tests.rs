//! The DNS strategy with a scripted resolver, in paused (virtual) time: scheduling by TTL
//! and interval, per-name failure handling, SRV targets, configuration. The tests against
//! a real DNS server are in `tests/dns.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::parse_nameserver;
use super::*;
use crate::cookie::Cookie;
use crate::node::Node;
use crate::strategies::{Context, TopologyHandle, TopologyStatus};

type Reply<T> = Result<Answer<T>, LookupError>;

/// Answers from a table that the test edits; logs every query with its (virtual) time.
#[derive(Clone, Default)]
struct Scripted {
    inner: Arc<Mutex<Script>>,
    asked: Arc<Notify>,
}

#[derive(Default)]
struct Script {
    ips: HashMap<(String, Family), Reply<IpAddr>>,
    srv: HashMap<String, Reply<Srv>>,
    log: Vec<(Instant, String, &'static str)>,
}

impl Scripted {
    fn ip(&self, name: &str, family: Family, reply: Reply<IpAddr>) {
        let mut s = self.inner.lock().unwrap();
        s.ips.insert((name.to_owned(), family), reply);
    }

    fn addrs(&self, name: &str, ips: &[&str], ttl: u64) {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips
            .iter()
            .map(|s| s.parse::<IpAddr>().unwrap())
            .partition(|ip| ip.is_ipv4());
        for (family, records) in [(Family::V4, v4), (Family::V6, v6)] {
            self.ip(
                name,
                family,
                Ok(Answer {
                    records,
                    ttl: Some(Duration::from_secs(ttl)),
                }),
            );
        }
    }

    fn fail(&self, name: &str, e: LookupError) {
        self.ip(name, Family::V4, Err(e.clone()));
        self.ip(name, Family::V6, Err(e));
    }

    fn srv(&self, name: &str, reply: Reply<Srv>) {
        self.inner
            .lock()
            .unwrap()
            .srv
            .insert(name.to_owned(), reply);
    }

    fn log(&self) -> Vec<(Instant, String, &'static str)> {
        self.inner.lock().unwrap().log.clone()
    }

    /// Waits until `n` queries have been logged in all.
    async fn wait_queries(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                let notified = self.asked.notified();
                if self.inner.lock().unwrap().log.len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("queries made");
    }
}

fn nxdomain<T>() -> Reply<T> {
    Ok(Answer {
        records: Vec::new(),
        ttl: Some(Duration::from_secs(30)),
    })
}

impl Resolve for Scripted {
    async fn lookup_ip(&self, name: &str, family: Family) -> Reply<IpAddr> {
        let r = {
            let mut s = self.inner.lock().unwrap();
            s.log
                .push((Instant::now(), name.to_owned(), family.record_type()));
            s.ips
                .get(&(name.to_owned(), family))
                .cloned()
                .unwrap_or_else(nxdomain)
        };
        self.asked.notify_waiters();
        r
    }

    async fn lookup_srv(&self, name: &str) -> Reply<Srv> {
        let r = {
            let mut s = self.inner.lock().unwrap();
            s.log.push((Instant::now(), name.to_owned(), "SRV"));
            s.srv.get(name).cloned().unwrap_or_else(nxdomain)
        };
        self.asked.notify_waiters();
        r
    }
}

const PORT: u16 = 45893;

fn start(dns: Dns<Scripted>) -> (TopologyHandle, tokio::task::JoinHandle<()>) {
    let me = Node {
        name: "app@10.0.0.1".parse().unwrap(),
        addr: SocketAddr::new("10.0.0.1".parse().unwrap(), PORT),
        incarnation: 1,
    };
    let (ctx, handle) = Context::new("dns", "dns", me, Cookie::new("c"));
    (handle, tokio::spawn(dns.run(ctx)))
}

/// Waits (virtual time) for a status that satisfies `f`.
async fn wait_for(
    handle: &mut TopologyHandle,
    what: &str,
    f: impl Fn(&TopologyStatus) -> bool,
) -> TopologyStatus {
    let r = tokio::time::timeout(Duration::from_secs(3600), async {
        loop {
            {
                let st = handle.status.borrow_and_update();
                if f(&st) {
                    return st.clone();
                }
            }
            handle.status.changed().await.unwrap();
        }
    })
    .await;
    match r {
        Ok(st) => st,
        Err(_) => panic!("timed out waiting for {what}: {:?}", handle.status.borrow()),
    }
}

fn names(st: &TopologyStatus) -> Vec<String> {
    st.peers
        .iter()
        .map(|p| format!("{}={}", p.name.as_ref().unwrap(), p.addr))
        .collect()
}

fn scripted(queries: &[&str]) -> (Scripted, Dns<Scripted>) {
    let script = Scripted::default();
    let dns = Dns::new(queries.iter().copied())
        .interval(Duration::from_secs(5))
        .with_resolver(script.clone());
    (script, dns)
}

#[tokio::test(start_paused = true)]
async fn a_and_aaaa_give_named_peers_on_the_cluster_port() {
    let (script, dns) = scripted(&["app.test"]);
    script.addrs("app.test", &["10.0.0.2", "10.0.0.1", "fd00:0:0::0:5"], 30);
    let (mut h, task) = start(dns);
    let st = wait_for(&mut h, "peers", |s| s.reported).await;
    assert_eq!(
        names(&st),
        vec!["app@10.0.0.2=10.0.0.2:45893", "app@fd00::5=[fd00::5]:45893"],
        "this node (10.0.0.1) left out, IPv6 canonical"
    );
    h.shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn each_query_has_its_basename() {
    let script = Scripted::default();
    let dns = Dns::new([
        Query::new("a.test"),
        Query::new("b.test").node_basename("store"),
    ])
    .with_resolver(script.clone());
    script.addrs("a.test", &["10.0.0.2"], 30);
    script.addrs("b.test", &["10.0.0.3"], 30);
    let (mut h, _task) = start(dns);
    let st = wait_for(&mut h, "peers", |s| s.peers.len() == 2).await;
    assert_eq!(
        names(&st),
        vec![
            "app@10.0.0.2=10.0.0.2:45893",
            "store@10.0.0.3=10.0.0.3:45893"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_name_keeps_its_peers_and_does_not_touch_the_others() {
    let (script, dns) = scripted(&["a.test", "b.test"]);
    script.addrs("a.test", &["10.0.0.2"], 1);
    script.addrs("b.test", &["10.0.0.3"], 1);
    let (mut h, _task) = start(dns);
    wait_for(&mut h, "both", |s| s.peers.len() == 2).await;

    script.fail("a.test", LookupError::ResponseCode("SERVFAIL".into()));
    script.addrs("b.test", &["10.0.0.4"], 1);
    let st = wait_for(&mut h, "b changed, a kept", |s| {
        names(s) == vec!["app@10.0.0.2=10.0.0.2:45893", "app@10.0.0.4=10.0.0.4:45893"]
            && s.last_error.is_some()
    })
    .await;
    let err = st.last_error.unwrap();
    assert!(err.starts_with("a.test A"), "{err}");
    assert!(err.contains("server answered SERVFAIL"), "{err}");
    assert!(!err.contains("b.test"), "{err}");

    // It keeps failing: the same message (logged once), counted each time.
    let before = st.errors_total;
    let st = wait_for(&mut h, "more failures", |s| {
        s.errors_total >= before + 3 && s.counters["errors_response_code"] >= 6
    })
    .await;
    assert_eq!(st.last_error.as_deref(), Some(err.as_str()));
    assert_eq!(st.peers.len(), 2);

    // NXDOMAIN is an answer: a's peers go, the failure is over.
    script.ip("a.test", Family::V4, nxdomain());
    script.ip("a.test", Family::V6, nxdomain());
    let st = wait_for(&mut h, "a gone", |s| {
        s.peers.len() == 1 && s.last_error.is_none()
    })
    .await;
    assert_eq!(names(&st), vec!["app@10.0.0.4=10.0.0.4:45893"]);
    assert_eq!(st.last_error, None);
    assert!(st.counters["empty_answers"] >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_first_failure_reports_nothing_and_no_empty_set() {
    let (script, dns) = scripted(&["a.test"]);
    script.fail("a.test", LookupError::Timeout);
    let (mut h, _task) = start(dns);
    let st = wait_for(&mut h, "failure", |s| s.last_error.is_some()).await;
    assert!(!st.reported, "no set before any answer");
    assert!(st.last_error.unwrap().contains("timed out"));
    script.addrs("a.test", &["10.0.0.2"], 30);
    let st = wait_for(&mut h, "recovered", |s| {
        s.reported && s.last_error.is_none()
    })
    .await;
    assert_eq!(st.peers.len(), 1);
    assert_eq!(st.last_error, None);
}

/// The times (from the first) at which `name`'s A record was asked.
fn a_times(log: &[(Instant, String, &'static str)], name: &str) -> Vec<Duration> {
    let times: Vec<Instant> = log
        .iter()
        .filter(|(_, n, t)| n == name && *t == "A")
        .map(|(at, _, _)| *at)
        .collect();
    times.iter().map(|t| *t - times[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn asks_again_when_the_ttl_ends_before_the_interval() {
    let script = Scripted::default();
    let dns = Dns::new(["short.test", "long.test", "zero.test"])
        .interval(Duration::from_secs(10))
        .with_resolver(script.clone());
    script.addrs("short.test", &["10.0.0.2"], 3);
    script.addrs("long.test", &["10.0.0.3"], 3600);
    script.addrs("zero.test", &["10.0.0.4"], 0);
    let (_h, _task) = start(dns);
    // In 30 s: short every 3 s (11), zero every 1 s (31), long every 10 s (4); A and AAAA.
    script.wait_queries(2 * (11 + 31 + 4)).await;
    let log = script.log();
    let secs = |v: Vec<Duration>| v.into_iter().map(|d| d.as_secs()).collect::<Vec<_>>();
    assert_eq!(
        secs(a_times(&log, "short.test"))[..5],
        [0, 3, 6, 9, 12],
        "TTL 3 s under a 10 s interval"
    );
    assert_eq!(
        secs(a_times(&log, "long.test"))[..4],
        [0, 10, 20, 30],
        "interval caps a long TTL"
    );
    assert_eq!(
        secs(a_times(&log, "zero.test"))[..4],
        [0, 1, 2, 3],
        "TTL 0 asked each second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_retried_with_backoff_no_later_than_the_interval() {
    let (script, dns) = scripted(&["a.test"]);
    script.fail("a.test", LookupError::Timeout);
    let (_h, _task) = start(dns);
    script.wait_queries(2 * 6).await;
    let gaps: Vec<Duration> = a_times(&script.log(), "a.test")
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(gaps[0] <= Duration::from_millis(1200), "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(5)),
        "{gaps:?}"
    );
    assert!(gaps[4] > gaps[0], "backs off: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn srv_targets_are_resolved_and_named() {
    let script = Scripted::default();
    let dns = Dns::new([Query::new("_c._tcp.app.test").node_basename("store")])
        .srv()
        .with_resolver(script.clone());
    let srv = |t: &str, port| Srv {
        target: t.into(),
        port,
    };
    script.srv(
        "_c._tcp.app.test",
        Ok(Answer {
            records: vec![
                srv("App-0.app.test.", 7000),
                srv("app-1.app.test.", 7001),
                srv(".", 7002),
                srv("bad target.test.", 7003),
            ],
            ttl: Some(Duration::from_secs(30)),
        }),
    );
    script.addrs("app-0.app.test.", &["fd00::7", "10.1.0.7"], 30);
    script.addrs("app-1.app.test.", &["10.1.0.8"], 30);
    let (mut h, _task) = start(dns);
    let st = wait_for(&mut h, "srv peers", |s| s.reported).await;
    assert_eq!(
        names(&st),
        vec![
            "store@app-0.app.test=10.1.0.7:7000",
            "store@app-1.app.test=10.1.0.8:7001"
        ]
    );
    assert_eq!(st.counters["invalid_records"], 2);

    // A target whose addresses fail keeps them; one that leaves the SRV answer goes.
    script.fail("app-0.app.test.", LookupError::Timeout);
    script.srv(
        "_c._tcp.app.test",
        Ok(Answer {
            records: vec![srv("app-0.app.test.", 7000)],
            ttl: Some(Duration::from_secs(1)),
        }),
    );
    let st = wait_for(&mut h, "app-1 gone", |s| s.peers.len() == 1).await;
    assert_eq!(names(&st), vec!["store@app-0.app.test=10.1.0.7:7000"]);

    // No SRV records any more: the set empties.
    script.srv("_c._tcp.app.test", nxdomain());
    wait_for(&mut h, "empty", |s| s.peers.is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_is_reported_and_the_strategy_waits_for_shutdown() {
    let (_script, dns) = scripted(&["bad name.test"]);
    let (mut h, task) = start(dns);
    let st = wait_for(&mut h, "error", |s| s.last_error.is_some()).await;
    assert!(st.last_error.unwrap().contains("query[0].name"));
    assert!(!st.reported);
    h.shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn config_takes_one_name_a_list_or_tables() {
    let c: Config = serde_json::from_str(r#"{"query": "app.ns.svc.cluster.local"}"#).unwrap();
    assert_eq!(c.query, vec![Query::new("app.ns.svc.cluster.local")]);
    assert_eq!(c.record, Record::A);
    assert_eq!(c.interval, Duration::from_secs(5));
    assert!(c.nameservers.is_empty());

    let c: Config = serde_json::from_str(
        r#"{"query": ["a.test", {"name": "b.test", "node_basename": "store"}],
            "record": "srv", "interval": "2s", "nameservers": ["127.0.0.1:5353"],
            "timeout": "500ms"}"#,
    )
    .unwrap();
    assert_eq!(
        c.query,
        vec![
            Query::new("a.test"),
            Query::new("b.test").node_basename("store")
        ]
    );
    assert_eq!(c.record, Record::Srv);
    assert_eq!(c.interval, Duration::from_secs(2));
    assert_eq!(c.timeout, Some(Duration::from_millis(500)));
    let dns = Dns::from_config(c.clone()).unwrap();
    assert_eq!(dns.config(), &c);

    // Round trip.
    let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);

    let c: Config = serde_json::from_str(r#"{"query": {"name": "x.test"}}"#).unwrap();
    assert_eq!(c.query, vec![Query::new("x.test")]);

    for bad in [
        r#"{"query": "a.test", "port": 1}"#,
        r#"{"query": "a.test", "record": "mx"}"#,
        r#"{"query": [{"name": "a.test", "basename": "x"}]}"#,
        r#"{"query": 5}"#,
        r#"{"query": [["a.test"]]}"#,
        r#"{"record": "a"}"#,
    ] {
        assert!(serde_json::from_str::<Config>(bad).is_err(), "{bad}");
    }
}

#[test]
fn config_errors_name_the_key_the_value_and_what_was_expected() {
    let cfg = |f: &dyn Fn(&mut Config)| {
        let mut c = Config {
            query: vec![Query::new("a.test")],
            ..Config::default()
        };
        f(&mut c);
        Dns::from_config(c).unwrap_err()
    };
    let e = cfg(&|c| c.query.clear());
    assert_eq!(e.key, "query");
    let e = cfg(&|c| c.query.push(Query::new("two words")));
    assert_eq!(e.key, "query[1].name");
    assert_eq!(e.value, "\"two words\"");
    let e = cfg(&|c| c.query.push(Query::new("a..b")));
    assert_eq!(e.key, "query[1].name");
    let e = cfg(&|c| c.query[0].node_basename = Some("no@".into()));
    assert_eq!(e.key, "query[0].node_basename");
    let e = cfg(&|c| c.interval = Duration::ZERO);
    assert_eq!(e.key, "interval");
    let e = cfg(&|c| c.nameservers = vec!["10.0.0.1:53".into(), "dns.example:53".into()]);
    assert_eq!(e.key, "nameservers[1]");
    assert_eq!(
        e.to_string(),
        "dns: nameservers[1] = \"dns.example:53\": expected ip:port (e.g. 10.96.0.10:53 or [fd00::a]:53)"
    );
    assert_eq!(
        parse_nameserver("10.0.0.1"),
        Some("10.0.0.1:53".parse().unwrap())
    );
    assert_eq!(
        parse_nameserver("[::1]:5353"),
        Some("[::1]:5353".parse().unwrap())
    );
    assert_eq!(parse_nameserver("::1"), Some("[::1]:53".parse().unwrap()));
    assert_eq!(parse_nameserver("10.0.0.1:0"), None);
}

#[test]
fn strategy_is_authoritative() {
    let d = Dns::new(["a.test"]);
    assert!(d.authoritative());
    assert_eq!(d.kind(), "dns");
}

/// The system resolver sets itself up from `/etc/resolv.conf` and answers special-use
/// names itself (RFC 6761: `localhost.` is loopback, `.invalid.` does not exist), so no
/// query leaves this machine.
#[tokio::test]
async fn the_system_resolver_answers_special_use_names_locally() {
    let r = HickoryResolver::system().timeout(Duration::from_millis(200));
    let a = r.lookup_ip("localhost.", Family::V4).await.unwrap();
    assert_eq!(a.records, vec![IpAddr::from([127, 0, 0, 1])]);
    let none = r
        .lookup_ip("rallypoint-test.invalid.", Family::V4)
        .await
        .unwrap();
    assert!(none.records.is_empty(), "NXDOMAIN is an empty answer");
    let none = r.lookup_srv("localhost.").await.unwrap();
    assert!(none.records.is_empty(), "no data is an empty answer");
}
