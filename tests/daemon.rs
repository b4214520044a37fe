//! `rallypoint run` as real processes on loopback: the HTTP API, configuration errors,
//! and cluster formation, failure and recovery as the API shows them.
//!
//! Each daemon runs with quick membership timing (heartbeat every 100 ms, down after
//! 1 s) on its own free loopback ports. Every wait has a deadline; nothing sleeps to
//! synchronise. Run: `cargo test --test daemon`.
#![cfg(feature = "daemon")]

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use rallypoint::daemon::{api, client};
use support::daemon::{BIN, Daemon, Seen, Spec};

/// Formation and recovery deadlines: generous, for a busy machine.
const FORM: Duration = Duration::from_secs(30);
/// How long a failure may take to show.
const DETECT: Duration = Duration::from_secs(20);

fn names(w: &BTreeSet<&str>) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// Runs the binary to completion (bounded by a watchdog), returning (status, stdout,
/// stderr).
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RALLYPOINT") {
            cmd.env_remove(k);
        }
    }
    let home = tempfile::tempdir().unwrap();
    cmd.env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => {
            let out = out.expect("output");
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped (the waiting
            // thread still holds it).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("rallypoint {args:?} did not finish within 30 s");
        }
    }
}

// ---------------------------------------------------------------- HTTP API and CLI

#[tokio::test]
async fn http_api_serves_health_members_and_an_event_stream() {
    let a = Daemon::start(Spec::new("solo")).await;
    let addr = a.spec.http_addr;

    let health = client::get(addr, "/healthz").await.expect("healthz");
    assert_eq!(health.trim(), "ok");

    let m = a.members().await;
    assert_eq!(m.local.name, "solo@127.0.0.1");
    assert_eq!(
        m.local.addr, a.spec.cluster_addr,
        "advertises its cluster address"
    );
    assert!(
        m.local.incarnation.parse::<u64>().is_ok(),
        "incarnation is a decimal string: {:?}",
        m.local.incarnation
    );
    assert_eq!(m.local.up_since, None, "self has no up_since");
    assert!(m.members.is_empty());

    // The raw JSON has exactly the documented shape.
    let raw: serde_json::Value =
        serde_json::from_str(&client::get(addr, "/v1/members").await.unwrap()).unwrap();
    assert!(raw["self"]["incarnation"].is_string(), "{raw}");
    assert_eq!(raw["members"], serde_json::json!([]));

    // The event stream starts with the same body as a snapshot, with an id.
    let mut events = client::EventStream::connect(addr, "/v1/events", None)
        .await
        .expect("event stream");
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("snapshot in time")
        .expect("stream ok")
        .expect("an event");
    assert_eq!(first.event, "snapshot");
    // The id: this process's id base (its start time) plus the sequence number, 0.
    let id: u64 = first
        .id
        .as_deref()
        .and_then(|i| i.parse().ok())
        .expect("a numeric id");
    assert_eq!(id % (1 << 20), 0, "{id}");
    let snap: api::Members = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap, m);

    // With ?topologies=true, the same snapshot first, then topology health: the body
    // of /v1/topologies.
    let mut events = client::EventStream::connect(addr, "/v1/events?topologies=true", None)
        .await
        .expect("event stream with topologies");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("an event")
    };
    let snapshot = next().await;
    assert_eq!(snapshot.event, "snapshot");
    let health = next().await;
    assert_eq!(health.event, "topologies");
    // It has no id of its own: the last event id stays the snapshot's (as SSE keeps
    // it), so a client resuming from here resumes from the membership's position.
    assert_eq!(health.id, snapshot.id);
    let body: api::Topologies = serde_json::from_str(&health.data).expect("a Topologies body");
    let polled: api::Topologies =
        serde_json::from_str(&client::get(addr, "/v1/topologies").await.unwrap()).unwrap();
    let names = |t: &api::Topologies| {
        t.topologies
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&body), names(&polled));
    assert_eq!(names(&body), ["peers"]);

    // Unknown paths are 404.
    match client::get(addr, "/v2/nothing").await {
        Err(client::ClientError::Status { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }

    // `rallypoint members`, as a table and as JSON.
    let http = addr.to_string();
    let (status, out, err) = run_cli(&["members", "--http-addr", &http], &[]);
    assert!(status.success(), "members failed: {err}");
    assert!(out.contains("this node: solo@127.0.0.1"), "{out}");
    assert!(out.contains("0 members up"), "{out}");
    let (status, out, _) = run_cli(&["members", "--json"], &[("RALLYPOINT_HTTP_ADDR", &http)]);
    assert!(status.success());
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("members --json is JSON");
    assert_eq!(parsed["self"]["name"], m.local.name);
    assert_eq!(parsed["members"], serde_json::json!([]));

    // Against nothing, it fails with a clear message.
    let nowhere = support::ports::free_addr().to_string();
    let (status, _, err) = run_cli(&["members", "--http-addr", &nowhere], &[]);
    assert!(!status.success());
    assert!(
        err.contains("cannot connect") && err.contains(&nowhere),
        "{err}"
    );
}

#[tokio::test]
async fn on_sigterm_the_event_stream_ends_and_the_daemon_exits_zero() {
    let mut a = Daemon::start(Spec::new("term")).await;
    let mut events = client::EventStream::connect(a.spec.http_addr, "/v1/events", None)
        .await
        .expect("event stream");
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("snapshot in time")
        .expect("stream ok");
    assert_eq!(first.map(|e| e.event).as_deref(), Some("snapshot"));

    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        a.log()
    );
    // The stream ends rather than hanging.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = events.next().await {}
    })
    .await;
    assert!(end.is_ok(), "event stream ended");
    assert!(a.log().contains("stopped"), "{}", a.log());
}

// ---------------------------------------------------------------- configuration

/// Starts the daemon with this config file text (and flags); it must refuse to start.
fn refused(toml: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    let p = path.to_string_lossy().into_owned();
    let mut all = vec!["run", "--config", &p];
    all.extend_from_slice(args);
    let (status, _, err) = run_cli(&all, env);
    assert!(!status.success(), "refused to start; stderr:\n{err}");
    assert!(
        !err.contains("HTTP API listening"),
        "never came up; stderr:\n{err}"
    );
    err
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
    let http = format!("http_addr = \"{}\"\n", support::ports::free_addr());

    let err = refused(&format!("{http}colour = \"blue\"\n"), &[], &[]);
    assert!(err.contains("`colour`"), "{err}");

    let err = refused(
        &format!("{http}[membership]\ndown_after = \"soon\"\n"),
        &[],
        &[],
    );
    assert!(
        err.contains("`membership.down_after`") && err.contains("\"soon\""),
        "{err}"
    );

    let err = refused(
        &format!(
            "{http}[topologies.peers]\nstrategy = \"static\"\nhosts = [\"127.0.0.1:1\"]\nhost = \"x\"\n"
        ),
        &[],
        &[],
    );
    assert!(err.contains("`topologies.peers.host`"), "{err}");

    let err = refused(
        &format!("{http}[topologies.peers]\nstrategy = \"static\"\nhosts = [\"just-a-name\"]\n"),
        &[],
        &[],
    );
    assert!(
        err.contains("`topologies.peers.hosts`") && err.contains("just-a-name"),
        "{err}"
    );

    let err = refused(
        &http,
        &[],
        &[("RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL", "0s")],
    );
    assert!(
        err.contains("`membership.heartbeat_interval`") && err.contains("the environment"),
        "{err}"
    );

    let err = refused(&http, &["--static-hosts", "127.0.0.1:1,nonsense"], &[]);
    assert!(err.contains("nonsense"), "{err}");

    let err = refused(&http, &["--cluster-addr", "not-an-address"], &[]);
    assert!(err.contains("--cluster-addr"), "{err}");
}

#[tokio::test]
async fn flags_override_the_environment_which_overrides_the_file() {
    let mut spec = Spec::new("file");
    spec.env = vec![("RALLYPOINT_NAME".into(), "env@127.0.0.1".into())];
    let a = Daemon::start(spec.clone()).await;
    assert_eq!(a.members().await.local.name, "env@127.0.0.1");
    drop(a);

    let mut spec = Spec::new("file");
    spec.env = vec![("RALLYPOINT_NAME".into(), "env@127.0.0.1".into())];
    spec.args = vec!["--name".into(), "flag@127.0.0.1".into()];
    let b = Daemon::start(spec).await;
    assert_eq!(b.members().await.local.name, "flag@127.0.0.1");
}

// ---------------------------------------------------------------- the cluster

/// Three nodes that list each other.
async fn three() -> (Daemon, Daemon, Daemon) {
    let (sa, sb, sc) = (Spec::new("a"), Spec::new("b"), Spec::new("c"));
    let a = Daemon::start(sa.clone().peers(&[&sb, &sc])).await;
    let b = Daemon::start(sb.clone().peers(&[&sa, &sc])).await;
    let c = Daemon::start(sc.clone().peers(&[&sa, &sb])).await;
    (a, b, c)
}

#[tokio::test]
async fn three_nodes_with_static_hosts_form_a_full_mesh() {
    let (a, b, c) = three().await;
    let all: BTreeSet<&str> = [a.name(), b.name(), c.name()].into();
    for d in [&a, &b, &c] {
        let mut w = d.watch().await;
        let mut others = all.clone();
        others.remove(d.name());
        w.wait_members(&others.iter().copied().collect::<Vec<_>>(), FORM)
            .await;
    }
    // The member list says where each one is and since when.
    let m = a.members().await;
    let got: Vec<String> = m.members.iter().map(|n| n.name.clone()).collect();
    let mut want = all.clone();
    want.remove(a.name());
    assert_eq!(got, names(&want));
    for n in &m.members {
        let spec = if n.name == b.name() { &b.spec } else { &c.spec };
        assert_eq!(n.addr, spec.cluster_addr);
        let since = n.up_since.as_deref().expect("members have up_since");
        assert!(since.ends_with('Z'), "UTC: {since}");
        humantime::parse_rfc3339(since).expect("RFC 3339");
    }
    let b_self = b.members().await.local;
    let b_seen = m.members.iter().find(|n| n.name == b.name()).unwrap();
    assert_eq!(b_seen.incarnation, b_self.incarnation, "same instance");
}

#[tokio::test]
async fn kill_9_gives_nodedown_on_both_others_and_a_restart_a_nodeup_with_a_new_incarnation() {
    let (a, b, mut c) = three().await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&[b.name(), c.name()], FORM).await;
    wb.wait_members(&[a.name(), c.name()], FORM).await;
    let old = wa.members[c.name()].incarnation.clone();

    // `rallypoint watch` on a prints the events too.
    let mut watch_cli = Command::new(BIN)
        .args(["watch", "--http-addr", &a.spec.http_addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let watch_out = watch_cli.stdout.take().unwrap();
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(watch_out)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), line_rx.recv())
        .await
        .expect("watch prints the snapshot")
        .expect("a line");
    assert!(
        first.contains("snapshot") && first.contains("2 members"),
        "{first}"
    );

    c.kill9();
    for w in [&mut wa, &mut wb] {
        let (node, reason) = w.wait_down(c.name(), DETECT).await;
        assert_eq!(node.incarnation, old);
        assert_eq!(
            reason, "connection_closed",
            "{}: kill -9 closes the connection",
            w.owner
        );
    }
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match line_rx.recv().await {
                Some(l) if l.contains("nodedown") => return l,
                Some(_) => continue,
                None => panic!("watch ended"),
            }
        }
    })
    .await
    .expect("watch prints the nodedown");
    assert!(
        line.contains(c.name()) && line.contains("connection_closed"),
        "{line}"
    );
    let _ = watch_cli.kill();
    let _ = watch_cli.wait();

    let c2 = Daemon::start(c.spec.clone()).await;
    for w in [&mut wa, &mut wb] {
        let node = w.wait_up(c2.name(), FORM).await;
        assert_ne!(node.incarnation, old, "{}: a new incarnation", w.owner);
        assert!(
            node.up_since.is_some(),
            "a nodeup says since when: {node:?}"
        );
        assert_eq!(node.incarnation, c2.members().await.local.incarnation);
    }
}

/// Waits for `d` to log that it refused `whom` for its cookie.
/// The listener's side of a refusal for the cookie: it cannot say who it was (the
/// dialler's name is sealed with a cookie the listener does not hold), only that a
/// connection came with another cookie, and never the name.
async fn refused_a_cookie(d: &Daemon, whom: &str) -> String {
    let line = d
        .wait_log(
            "logged refusal of a connection for its cookie",
            DETECT,
            |l| l.contains("bad_cookie") && l.contains("none of this node's cookies"),
        )
        .await;
    assert!(!line.contains(whom), "the name is sealed: {line}");
    line
}

/// The dialler's side: it names the address it dialled and says that the cookies differ.
async fn refused_by(d: &Daemon, at: std::net::SocketAddr) -> String {
    let what = format!("logged that {at} refused its cookie");
    d.wait_log(&what, DETECT, |l| {
        l.contains("bad_cookie") && l.contains(&at.to_string()) && l.contains("cookies differ")
    })
    .await
}

#[tokio::test]
async fn a_node_with_the_wrong_cookie_never_appears_and_is_refused_on_both_sides() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let a = Daemon::start(sa.clone().peers(&[&sb])).await;
    let b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&[b.name()], FORM).await;
    wb.wait_members(&[a.name()], FORM).await;

    let intruder = Daemon::start(
        Spec::new("mallory")
            .cookie("wrong-cookie-of-mallory")
            .peers(&[&sa, &sb]),
    )
    .await;
    // Each side says whom it refused and why.
    refused_a_cookie(&a, intruder.name()).await;
    refused_a_cookie(&b, intruder.name()).await;
    let line = refused_by(&intruder, sa.cluster_addr).await;
    assert!(line.contains("WARN"), "a refusal is a warning: {line}");

    for w in [&mut wa, &mut wb] {
        let later = w.drain(Duration::from_millis(200)).await;
        assert!(
            w.seen
                .iter()
                .chain(later.iter())
                .all(|s| !matches!(s, Seen::Up(n) if n.name == intruder.name())),
            "{}: the intruder never came up: {:?}",
            w.owner,
            w.seen
        );
    }
    for d in [&a, &b] {
        let m = d.members().await;
        assert!(m.members.iter().all(|n| n.name != intruder.name()));
        assert_eq!(m.members.len(), 1);
    }
    assert!(intruder.members().await.members.is_empty());
}

#[tokio::test]
async fn a_node_listing_only_one_peer_ends_up_connected_to_all() {
    let (sa, sb, sc) = (Spec::new("a"), Spec::new("b"), Spec::new("c"));
    let a = Daemon::start(sa.clone().peers(&[&sb])).await;
    let b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut wb = b.watch().await;
    wb.wait_members(&[a.name()], FORM).await;

    let c = Daemon::start(sc.clone().peers(&[&sa])).await;
    let mut wc = c.watch().await;
    wc.wait_members(&[a.name(), b.name()], FORM).await;
    wb.wait_members(&[a.name(), c.name()], FORM).await;
    let mut wa = a.watch().await;
    wa.wait_members(&[b.name(), c.name()], FORM).await;
}

#[tokio::test]
async fn garbage_an_oversized_frame_and_a_stalled_handshake_are_cut_off() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let a = Daemon::start(sa.clone().peers(&[&sb])).await;
    let b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&[b.name()], FORM).await;
    wb.wait_members(&[a.name()], FORM).await;
    let seen_before = (wa.seen.len(), wb.seen.len());
    let target = a.spec.cluster_addr;

    // Each of these connections must be closed by the daemon (handshake timeout is 1 s
    // in the test config); reads see EOF or a reset within the deadline.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nthis is not a frame".to_vec(),
        ),
        ("a small frame of junk", {
            let mut v = 8u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff]);
            v
        }),
        ("an oversized frame", {
            let mut v = u32::MAX.to_be_bytes().to_vec();
            v.extend_from_slice(&[0u8; 64]);
            v
        }),
        ("a half-open handshake (a partial frame)", {
            let mut v = 200u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[1u8; 10]);
            v
        }),
        ("a silent connection", Vec::new()),
    ];
    let mut handles = Vec::new();
    for (what, bytes) in cases {
        handles.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(target).expect("connect to the cluster port");
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let _ = s.write_all(&bytes);
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(what),
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        return Ok(what);
                    }
                    Err(e) => return Err(format!("{what}: not cut off: {e}")),
                }
            }
        }));
    }
    for h in handles {
        let r = tokio::task::spawn_blocking(move || h.join().expect("thread"))
            .await
            .unwrap();
        if let Err(e) = r {
            panic!("{e}; log of a:\n{}", a.log());
        }
    }

    // Nothing else was disturbed: the pair stayed up throughout, and a still answers.
    for (w, before) in [(&mut wa, seen_before.0), (&mut wb, seen_before.1)] {
        w.drain(Duration::from_millis(200)).await;
        assert_eq!(
            w.seen.len(),
            before,
            "{}: no event while the cluster port was attacked: {:?}",
            w.owner,
            &w.seen[before..]
        );
    }
    assert_eq!(
        client::get(a.spec.http_addr, "/healthz")
            .await
            .unwrap()
            .trim(),
        "ok"
    );
    assert_eq!(a.members().await.members.len(), 1);
}

#[tokio::test]
async fn sigterm_gives_left_on_the_peers_and_exit_zero() {
    let (sa, sb, sc) = (Spec::new("a"), Spec::new("b"), Spec::new("c"));
    let a = Daemon::start(sa.clone().peers(&[&sb, &sc])).await;
    let mut b = Daemon::start(sb.clone().peers(&[&sa, &sc])).await;
    let c = Daemon::start(sc.clone().peers(&[&sa, &sb])).await;
    let mut wa = a.watch().await;
    let mut wc = c.watch().await;
    wa.wait_members(&[b.name(), c.name()], FORM).await;
    wc.wait_members(&[a.name(), b.name()], FORM).await;
    // b itself must count both as up too, or it has nobody to say goodbye to.
    b.watch()
        .await
        .wait_members(&[a.name(), c.name()], FORM)
        .await;

    b.signal(libc::SIGTERM);
    for w in [&mut wa, &mut wc] {
        let (_, reason) = w.wait_down(sb.name.as_str(), DETECT).await;
        assert_eq!(reason, "left", "{}", w.owner);
    }
    let status = b.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn ctrl_c_leaves_gracefully_too() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let a = Daemon::start(sa.clone().peers(&[&sb])).await;
    let mut b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut wa = a.watch().await;
    wa.wait_members(&[b.name()], FORM).await;
    b.watch().await.wait_members(&[a.name()], FORM).await;

    b.signal(libc::SIGINT);
    let (_, reason) = wa.wait_down(sb.name.as_str(), DETECT).await;
    assert_eq!(reason, "left");
    let status = b.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}");
}

// ---------------------------------------------------------------- readiness, topologies

/// `GET path`, as (status, body), whatever the status.
async fn status_of(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match tokio::time::timeout(Duration::from_secs(10), client::get(addr, path))
        .await
        .expect("answered in time")
    {
        Ok(body) => (200, body),
        Err(client::ClientError::Status { status, body }) => (status, body),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[tokio::test]
async fn readyz_flips_at_min_members_and_topologies_show_their_candidates() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let mut spec_a = sa.clone().peers(&[&sb]);
    spec_a
        .env
        .push(("RALLYPOINT_MIN_MEMBERS".into(), "1".into()));
    let a = Daemon::start(spec_a).await;
    let addr = a.spec.http_addr;

    // Alive, but not ready: no peer is up yet.
    assert_eq!(status_of(addr, "/healthz").await.0, 200);
    let (status, body) = status_of(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: api::Ready = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(
        ready,
        api::Ready {
            ready: false,
            members: 0,
            min_members: 1
        }
    );

    // The static topology lists b as its candidate, and has succeeded.
    let deadline = tokio::time::Instant::now() + FORM;
    let topology = loop {
        let (status, body) = status_of(addr, "/v1/topologies").await;
        assert_eq!(status, 200, "{body}");
        let t: api::Topologies = serde_json::from_str(&body).expect("topologies JSON");
        assert_eq!(t.topologies.len(), 1, "{body}");
        let t = t.topologies.into_iter().next().unwrap();
        if t.reported {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported: {body}"
        );
        // Polled, with the deadline above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(topology.name, "peers");
    assert_eq!(topology.strategy, "static");
    let addrs: Vec<_> = topology.peers.iter().map(|p| p.addr).collect();
    assert_eq!(addrs, vec![sb.cluster_addr]);
    assert_eq!(topology.last_error, None);
    assert_eq!(topology.errors_total, 0);
    let since = topology.last_success.expect("last_success once reported");
    humantime::parse_rfc3339(&since).expect("RFC 3339");

    // b comes up: a becomes ready.
    let b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut w = a.watch().await;
    w.wait_members(&[b.name()], FORM).await;
    let (status, body) = status_of(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: api::Ready = serde_json::from_str(&body).unwrap();
    assert!(ready.ready && ready.members == 1, "{body}");

    // Without `min_members`, a lone node is ready at once.
    assert_eq!(status_of(b.spec.http_addr, "/readyz").await.0, 200);
}

// ---------------------------------------------------------------- metrics

/// Parses the Prometheus text format strictly enough to catch a malformed answer:
/// every sample line is `name{label="value",…} number`, belongs to a family declared
/// by a `# TYPE` line before it (a counter's samples end in `_total`, an info's in
/// `_info`), label values are quoted, and the answer ends with `# EOF`. Returns the samples, keyed by
/// `name{labels}` as written.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut types: std::collections::BTreeMap<String, String> = Default::default();
    let mut samples = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF:\n{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').expect("closing brace"))),
            None => (series, None),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line}"
        );
        if let Some(labels) = labels {
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = match types.get(name) {
            Some(_) => name.to_owned(),
            None => {
                // A counter's samples end in `_total`, an info's in `_info`.
                let (base, kind) = match name.strip_suffix("_info") {
                    Some(base) => (base, "info"),
                    None => (name.strip_suffix("_total").unwrap_or(name), "counter"),
                };
                assert_eq!(
                    types.get(base).map(String::as_str),
                    Some(kind),
                    "a sample without a # TYPE before it: {line}"
                );
                base.to_owned()
            }
        };
        if types[&family] == "counter" {
            assert!(name.ends_with("_total"), "counter sample: {line}");
        }
        if types[&family] == "info" {
            assert!(
                name.ends_with("_info") && value == 1.0,
                "info sample: {line}"
            );
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate: {line}"
        );
    }
    samples
}

async fn scrape(d: &Daemon) -> std::collections::BTreeMap<String, f64> {
    let (status, body) = status_of(d.spec.http_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_prometheus(&body)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let (a, b, c) = three().await;
    let mut w = a.watch().await;
    w.wait_members(&[b.name(), c.name()], FORM).await;
    let sa = a.spec.clone();
    let intruder = Daemon::start(
        Spec::new("mallory")
            .cookie("wrong-cookie-of-mallory")
            .peers(&[&sa]),
    )
    .await;
    refused_a_cookie(&a, intruder.name()).await;

    let m = scrape(&a).await;
    let get = |k: &str| -> f64 {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in {m:#?}"))
    };
    assert_eq!(get("rallypoint_members"), 2.0);
    assert_eq!(get("rallypoint_local_health"), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(&format!(
            "rallypoint_build_info{{version=\"{version}\",protocol=\"2\"}}"
        )),
        1.0
    );
    // No gossip topology here: every documented result is written, at 0, and bytes
    // have a counter of their own (not a `result` of the packet counter).
    for result in ["sent", "accepted", "rejected_auth", "rejected_replay"] {
        assert_eq!(
            get(&format!(
                "rallypoint_gossip_packets_total{{result=\"{result}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(get("rallypoint_gossip_sent_bytes_total"), 0.0);
    assert!(
        !m.keys().any(|k| k.contains("result=\"sent_bytes\"")),
        "{m:#?}"
    );
    assert!(get("rallypoint_events_total{kind=\"nodeup\"}") >= 2.0);
    assert_eq!(get("rallypoint_events_total{kind=\"nodedown\"}"), 0.0);
    assert!(get("rallypoint_handshake_failures_total{reason=\"bad_cookie\"}") >= 1.0);
    assert_eq!(
        get("rallypoint_handshake_failures_total{reason=\"name_clash\"}"),
        0.0
    );
    get("rallypoint_connect_attempts_total{result=\"ok\"}");
    assert_eq!(get("rallypoint_discovered_peers{topology=\"peers\"}"), 2.0);
    assert_eq!(
        get("rallypoint_strategy_errors_total{topology=\"peers\"}"),
        0.0
    );
    // Every attempt is counted under one result; a formed mesh had some succeed (the
    // nodes started one after the other, so some dialled and some were dialled).
    let attempts: f64 = ["ok", "refused", "timeout", "error"]
        .iter()
        .map(|r| {
            get(&format!(
                "rallypoint_connect_attempts_total{{result=\"{r}\"}}"
            ))
        })
        .sum();
    assert!(attempts >= 1.0, "{m:#?}");

    // The intruder saw nobody.
    let mi = scrape(&intruder).await;
    assert_eq!(mi["rallypoint_members"], 0.0);

    // A node going down is counted.
    drop(c);
    w.wait_down("c@127.0.0.1", DETECT).await;
    let m = scrape(&a).await;
    assert_eq!(m["rallypoint_members"], 1.0);
    assert_eq!(m["rallypoint_events_total{kind=\"nodedown\"}"], 1.0);
}

// ---------------------------------------------------------------- bearer token

/// `GET path` with a token, as (status, body), whatever the status.
async fn status_with(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    match tokio::time::timeout(
        Duration::from_secs(10),
        client::get_with_token(addr, path, token),
    )
    .await
    .expect("answered in time")
    {
        Ok(body) => (200, body),
        Err(client::ClientError::Status { status, body }) => (status, body),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[tokio::test]
async fn with_an_http_token_a_missing_or_wrong_token_gets_401_but_probes_do_not_need_it() {
    let mut spec = Spec::new("guarded");
    spec.env
        .push(("RALLYPOINT_HTTP_TOKEN".into(), "s3cret-t0ken".into()));
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;

    for path in ["/healthz", "/readyz"] {
        assert_eq!(status_with(addr, path, None).await.0, 200, "{path}");
    }
    for path in ["/v1/members", "/v1/topologies", "/metrics", "/v1/events"] {
        if path != "/v1/events" {
            let (status, body) = status_with(addr, path, Some("s3cret-t0ken")).await;
            assert_eq!(status, 200, "{path} with the token: {body}");
        }
        assert_eq!(status_with(addr, path, None).await.0, 401, "{path} without");
        assert_eq!(
            status_with(addr, path, Some("s3cret-t0keN")).await.0,
            401,
            "{path} with a wrong token"
        );
    }
    // The event stream opens with the token, not without.
    let mut events =
        client::EventStream::connect_with_token(addr, "/v1/events", None, Some("s3cret-t0ken"))
            .await
            .expect("stream with the token");
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an event");
    assert_eq!(first.event, "snapshot");
    match client::EventStream::connect(addr, "/v1/events", None).await {
        Err(client::ClientError::Status { status: 401, .. }) => {}
        Err(e) => panic!("expected 401, got {e}"),
        Ok(_) => panic!("expected 401, got a stream"),
    }

    // The CLI takes the token from a flag or the environment.
    let http = addr.to_string();
    let (status, out, err) = run_cli(
        &[
            "members",
            "--http-addr",
            &http,
            "--http-token",
            "s3cret-t0ken",
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("this node: guarded@127.0.0.1"), "{out}");
    let (status, _, err) = run_cli(
        &["members", "--http-addr", &http],
        &[("RALLYPOINT_HTTP_TOKEN", "s3cret-t0ken")],
    );
    assert!(status.success(), "{err}");
    let (status, _, err) = run_cli(&["members", "--http-addr", &http], &[]);
    assert!(!status.success());
    assert!(err.contains("401"), "{err}");

    // The token is never logged.
    assert!(!a.log().contains("s3cret-t0ken"), "{}", a.log());
}

// ---------------------------------------------------------------- check-config

#[test]
fn check_config_prints_the_effective_configuration_redacted_or_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rallypoint.toml");
    std::fs::write(
        &path,
        "name = \"file@127.0.0.1\"\nmin_members = 2\n[membership]\ndown_after = \"5s\"\n\
         [topologies.peers]\nstrategy = \"static\"\nhosts = [\"10.0.0.6:45893\"]\n",
    )
    .unwrap();
    let p = path.to_string_lossy().into_owned();
    let (status, out, err) = run_cli(
        &[
            "check-config",
            "--config",
            &p,
            "--http-addr",
            "127.0.0.1:9999",
        ],
        &[
            ("RALLYPOINT_COOKIE", "cookie-s3cret-for-check-config"),
            ("RALLYPOINT_NAME", "env@127.0.0.1"),
        ],
    );
    assert!(status.success(), "{err}");
    let printed: toml::Table = out.parse().expect("prints TOML");
    assert_eq!(printed["name"].as_str(), Some("env@127.0.0.1"), "{out}");
    assert_eq!(
        printed["http_addr"].as_str(),
        Some("127.0.0.1:9999"),
        "{out}"
    );
    assert_eq!(printed["min_members"].as_integer(), Some(2), "{out}");
    assert_eq!(printed["cookie"].as_str(), Some("<redacted>"), "{out}");
    assert_eq!(
        printed["membership"]["down_after"].as_str(),
        Some("5s"),
        "{out}"
    );
    assert_eq!(
        printed["topologies"]["peers"]["hosts"][0].as_str(),
        Some("10.0.0.6:45893"),
        "{out}"
    );
    assert!(!out.contains("cookie-s3cret"), "{out}");

    // What it prints is a valid configuration itself (the redacted secret aside).
    let again = dir.path().join("again.toml");
    std::fs::write(&again, out.replace("cookie = \"<redacted>\"", "")).unwrap();
    let a = again.to_string_lossy().into_owned();
    let (status, out2, err) = run_cli(&["check-config", "--config", &a], &[]);
    assert!(status.success(), "{err}");
    assert_eq!(out2, out.replace("cookie = \"<redacted>\"\n", ""));

    // A bad configuration: exit 1, the key named, nothing on stdout.
    std::fs::write(&path, "[membership]\ndown_after = \"soon\"\n").unwrap();
    let (status, out, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("`membership.down_after`") && err.contains("\"soon\""),
        "{err}"
    );
    std::fs::write(&path, "colour = \"blue\"\n").unwrap();
    let (status, _, err) = run_cli(&["check-config", "--config", &p], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("`colour`"), "{err}");
    // An unreadable cookie file is caught too.
    let (status, _, err) = run_cli(
        &["check-config", "--cookie-file", "/nonexistent/cookie"],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/cookie"), "{err}");
}

// ---------------------------------------------------------------- resuming the stream

async fn open(addr: std::net::SocketAddr, last_event_id: Option<String>) -> client::EventStream {
    tokio::time::timeout(
        Duration::from_secs(10),
        client::EventStream::connect(addr, "/v1/events", last_event_id.as_deref()),
    )
    .await
    .expect("stream opened in time")
    .expect("stream")
}

async fn next_event(s: &mut client::EventStream) -> client::ServerEvent {
    tokio::time::timeout(DETECT, s.next())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
}

fn id_of(ev: &client::ServerEvent) -> u64 {
    ev.id
        .as_deref()
        .expect("an id")
        .parse()
        .expect("a numeric id")
}

#[tokio::test]
async fn the_event_stream_resumes_after_last_event_id_or_sends_a_fresh_snapshot() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let mut spec_a = sa.clone().peers(&[&sb]);
    spec_a
        .env
        .push(("RALLYPOINT_EVENT_HISTORY".into(), "4".into()));
    let a = Daemon::start(spec_a).await;
    let addr = a.spec.http_addr;
    // Follows everything, to know when each change has happened.
    let mut w = a.watch().await;
    let spec_b = sb.clone().peers(&[&sa]);
    let mut b = Daemon::start(spec_b.clone()).await;
    w.wait_up(b.name(), FORM).await;

    // A client reads its snapshot, then goes away; b goes down meanwhile.
    let snap = next_event(&mut open(addr, None).await).await;
    assert_eq!(snap.event, "snapshot");
    let seen = id_of(&snap);
    b.kill9();
    w.wait_down("b@127.0.0.1", DETECT).await;

    // Back with Last-Event-ID: it gets what it missed, not a snapshot.
    let mut s = open(addr, Some(seen.to_string())).await;
    let ev = next_event(&mut s).await;
    assert_eq!(ev.event, "nodedown", "{ev:?}");
    assert_eq!(id_of(&ev), seen + 1);
    let down: api::NodeDown = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(down.node.name, "b@127.0.0.1");

    // Back with the latest id: nothing replayed; the next event is the next change.
    let mut s = open(addr, Some((seen + 1).to_string())).await;
    let b2 = Daemon::start(spec_b.clone()).await;
    w.wait_up(b2.name(), FORM).await;
    let ev = next_event(&mut s).await;
    assert_eq!(ev.event, "nodeup", "{ev:?}");
    assert_eq!(id_of(&ev), seen + 2);

    // An id from the future, or not a number: a fresh snapshot.
    for id in ["999999", "yesterday"] {
        let ev = next_event(&mut open(addr, Some(id.into())).await).await;
        assert_eq!(ev.event, "snapshot", "Last-Event-ID {id}: {ev:?}");
        assert_eq!(id_of(&ev), seen + 2);
    }

    // Three more changes: the history (4 events) no longer holds seen + 1.
    drop(b2);
    w.wait_down("b@127.0.0.1", DETECT).await;
    let b3 = Daemon::start(spec_b.clone()).await;
    w.wait_up(b3.name(), FORM).await;
    drop(b3);
    w.wait_down("b@127.0.0.1", DETECT).await;
    let ev = next_event(&mut open(addr, Some(seen.to_string())).await).await;
    assert_eq!(ev.event, "snapshot", "too old: {ev:?}");
    assert_eq!(id_of(&ev), seen + 5);
    // One event later, all four are still held.
    let mut s = open(addr, Some((seen + 1).to_string())).await;
    let kinds = [
        next_event(&mut s).await,
        next_event(&mut s).await,
        next_event(&mut s).await,
        next_event(&mut s).await,
    ];
    let got: Vec<(String, u64)> = kinds.iter().map(|e| (e.event.clone(), id_of(e))).collect();
    assert_eq!(
        got,
        vec![
            ("nodeup".into(), seen + 2),
            ("nodedown".into(), seen + 3),
            ("nodeup".into(), seen + 4),
            ("nodedown".into(), seen + 5),
        ]
    );

    // The daemon restarts on the same address: an id of the old process means nothing
    // to the new one, which sends a fresh snapshot (its ids are above the old ones).
    let spec_a = a.spec.clone();
    drop(a);
    let a2 = Daemon::start(spec_a).await;
    let ev = next_event(&mut open(a2.spec.http_addr, Some((seen + 5).to_string())).await).await;
    assert_eq!(
        ev.event, "snapshot",
        "an id of the previous process: {ev:?}"
    );
    assert!(id_of(&ev) > seen + 5, "{ev:?}");
}

// ---------------------------------------------------------------- log format

#[tokio::test]
async fn log_format_json_writes_one_json_object_a_line() {
    let mut spec = Spec::new("jsonlog");
    spec.env
        .push(("RALLYPOINT_LOG_FORMAT".into(), "json".into()));
    let a = Daemon::start(spec).await;
    let log = a.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let ready = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "HTTP API listening")
        .expect("the ready line");
    assert!(
        ready["fields"]["node"]
            .as_str()
            .is_some_and(|n| n.contains("jsonlog@127.0.0.1")),
        "{ready}"
    );
    assert_eq!(ready["level"], "INFO");

    // A peer's coming and going: its name, address and incarnation (decimal, as in the
    // API) and the reason, each a field of its own.
    let mut p = Spec::new("peer");
    p.peers = vec![a.spec.cluster_addr];
    let mut p = Daemon::start(p).await;
    let fields = |line: String| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&line).expect("JSON")["fields"].clone()
    };
    let is = |msg: &'static str| {
        move |l: &str| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["fields"]["message"] == msg)
        }
    };
    let up = fields(
        a.wait_log("node up", Duration::from_secs(30), is("node up"))
            .await,
    );
    let seen = a.members().await;
    let member = &seen.members[0];
    assert_eq!(up["peer"], "peer@127.0.0.1", "{up}");
    assert_eq!(up["peer_addr"], member.addr.to_string(), "{up}");
    assert_eq!(up["incarnation"], member.incarnation.as_str(), "{up}");
    p.kill9();
    let down = fields(
        a.wait_log("node down", Duration::from_secs(30), is("node down"))
            .await,
    );
    assert_eq!(down["peer"], "peer@127.0.0.1", "{down}");
    assert_eq!(down["incarnation"], member.incarnation.as_str(), "{down}");
    assert_eq!(down["reason"], "connection_closed", "{down}");

    // By default, text.
    let b = Daemon::start(Spec::new("textlog")).await;
    assert!(b.log().lines().all(|l| !l.starts_with('{')), "{}", b.log());
}

#[tokio::test]
async fn a_peer_that_stops_reading_gets_its_messages_shed_and_its_connection_cut() {
    use rallypoint::strategies::static_hosts::StaticHosts;
    use rallypoint::{Cluster, Event, Update};

    let b = Daemon::start(Spec::new("b")).await;
    let a = Cluster::builder()
        .name("a@127.0.0.1")
        .cluster_addr("127.0.0.1:0".parse().unwrap())
        .cookie(b.spec.cookie.as_str())
        .membership(rallypoint::membership::Config {
            heartbeat_interval: Duration::from_millis(100),
            down_after: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(500),
            ..Default::default()
        })
        .topology("peers", StaticHosts::new([b.spec.cluster_addr.to_string()]))
        .start()
        .await
        .expect("cluster starts");
    let mut events = a.subscribe();
    let up = |u: &Update| matches!(u, Update::Event(Event::NodeUp(n)) if n.name.as_str() == "b@127.0.0.1");
    let deadline = tokio::time::Instant::now() + FORM;
    while !a.members().iter().any(|n| n.name.as_str() == "b@127.0.0.1") {
        let u = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("b comes up")
            .expect("events");
        if up(&u) {
            break;
        }
    }

    // b stops reading (the process is stopped, its sockets stay open): 64 messages of
    // 1 MB are far more than the kernel's buffers and the 8 MiB write budget hold, so
    // most of them are shed, not queued.
    b.signal(libc::SIGSTOP);
    for _ in 0..64 {
        a.publish("bulk", vec![7u8; 1_000_000])
            .await
            .expect("publish");
    }
    let shed = a.stats().messages_dropped;
    assert!(
        shed >= 32,
        "messages shed towards a peer that does not read: {shed}"
    );

    // b is down at a (its silence and the stalled writes both say so)...
    let down = loop {
        let u = tokio::time::timeout_at(tokio::time::Instant::now() + DETECT, events.recv())
            .await
            .expect("b goes down while stopped")
            .expect("events");
        if let Update::Event(Event::NodeDown { node, reason }) = u
            && node.name.as_str() == "b@127.0.0.1"
        {
            break reason;
        }
    };
    assert!(
        matches!(
            down,
            rallypoint::DownReason::HeartbeatTimeout | rallypoint::DownReason::ConnectionClosed
        ),
        "{down:?}"
    );
    // ...and once it runs again, it is back.
    b.signal(libc::SIGCONT);
    let deadline = tokio::time::Instant::now() + FORM;
    loop {
        let u = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("b back up after SIGCONT")
            .expect("events");
        if up(&u) {
            break;
        }
    }
    a.shutdown().await;
}
