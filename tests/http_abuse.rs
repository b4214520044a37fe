//! The daemon's HTTP API under abuse, attacked from outside as a hostile client would:
//! slowloris, a flood of idle connections while the cluster must keep working, an
//! event-stream client that never reads, and DNS rebinding (`Host` headers).
//!
//! Each daemon is a real `rallypoint run` process on loopback ports (see
//! `tests/support/daemon.rs`), killed when the test ends, failed or not. Nothing sleeps
//! to synchronise: every wait is for something observable, with a deadline. The
//! attackers' own pacing (a slowloris's dribble) is the only timer.
//! Run: `cargo test --test http_abuse`.
#![cfg(feature = "daemon")]

#[path = "support/procstat.rs"]
mod procstat;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rallypoint::daemon::client;
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Event, Update};
use support::daemon::{Daemon, Seen, Spec, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

/// Formation and recovery deadlines: generous, for a busy machine.
const FORM: Duration = Duration::from_secs(30);
/// How long a failure may take to show.
const DETECT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- helpers

/// Sends `request` (raw bytes) on a new connection and reads until the daemon closes
/// it; returns the status (0 when the connection closed with no answer) and the body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let work = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write request");
        let mut buf = Vec::new();
        // A reset after the answer counts as the end.
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let buf = timeout(Duration::from_secs(10), work)
        .await
        .expect("the daemon answered and closed in time");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` with this `Host` (none: no header) and more header lines, one request
/// per connection.
async fn get_as(addr: SocketAddr, path: &str, host: Option<&str>, extra: &str) -> (u16, String) {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\n{host}{extra}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// The samples of a Prometheus text body, by `name{labels}`.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// One sample of the daemon's `/metrics`; `None` when the API does not answer.
async fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let body = timeout(Duration::from_secs(5), client::get(addr, "/metrics"))
        .await
        .ok()?
        .ok()?;
    let m = samples(&body);
    Some(
        *m.get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in {m:#?}")),
    )
}

/// Waits until `sample` on the daemon's `/metrics` is at least `min`; returns it.
async fn wait_metric(addr: SocketAddr, sample: &str, min: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(v) = metric(addr, sample).await {
            if v >= min {
                return v;
            }
            last = Some(v);
        }
        if Instant::now() >= deadline {
            panic!("{sample} did not reach {min} within {within:?} (last {last:?})");
        }
        // A scrape per 50 ms: the poll of a value that has no event to wait on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many file descriptors process `pid` has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Whether a connection the daemon holds is closed: read until EOF or an error, within
/// `within`. Returns what was read, or `None` if it stayed open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------- slowloris

#[tokio::test]
async fn slowloris_connections_are_closed_by_the_header_timeout_and_the_api_still_answers() {
    let mut spec = Spec::new("loris");
    spec.top_toml = "http_header_timeout = \"1s\"\n".into();
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;

    const DRIBBLERS: usize = 40;
    const SILENT: usize = 10;
    let closed = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..DRIBBLERS {
        let (closed, answered) = (closed.clone(), answered.clone());
        attackers.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            // A request line and a header, then one more header line every 100 ms:
            // each byte arrives in time, the head never completes.
            let start = format!("GET /v1/members HTTP/1.1\r\nHost: localhost\r\nX-Loris: {i}\r\n");
            if s.write_all(start.as_bytes()).await.is_err() {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut n = 0u64;
            loop {
                let mut buf = [0u8; 1024];
                match timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {
                        answered.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Err(_) => {}
                }
                n += 1;
                if s.write_all(format!("X-Pad-{n}: {}\r\n", "a".repeat(8)).as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "a slowloris connection was still open after 30 s (header timeout 1 s)"
                );
            }
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }
    for _ in 0..SILENT {
        let closed = closed.clone();
        attackers.spawn(async move {
            // Connects and sends nothing at all.
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let gone = closed_within(&mut s, Duration::from_secs(30)).await;
            assert_eq!(
                gone.as_deref(),
                Some(&b""[..]),
                "a silent connection is closed with no answer"
            );
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }

    // While they dribble, a normal client is answered.
    let members = timeout(Duration::from_secs(10), client::get(addr, "/v1/members"))
        .await
        .expect("answered in time during the attack")
        .expect("members during the attack");
    assert!(members.contains("loris@127.0.0.1"), "{members}");

    while let Some(r) = attackers.join_next().await {
        r.expect("attacker task");
    }
    assert_eq!(closed.load(Ordering::SeqCst), DRIBBLERS + SILENT);
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "no incomplete request was answered"
    );
    let timed_out = wait_metric(
        addr,
        "rallypoint_http_connections_closed_total{reason=\"header_timeout\"}",
        (DRIBBLERS + SILENT) as f64,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(timed_out, (DRIBBLERS + SILENT) as f64);

    // And afterwards too.
    let (status, _) = get_as(addr, "/v1/members", Some("localhost"), "").await;
    assert_eq!(status, 200);
}

/// Reads one response (head and a `Content-Length` body) from a kept-alive connection;
/// returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status");
            }
        }
        let mut chunk = [0u8; 4096];
        match timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("no whole response: {other:?}, got {text:?}"),
        }
    }
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let mut spec = Spec::new("idler");
    // The header timeout is far away: what closes the connection is the idle rule.
    spec.top_toml = "http_header_timeout = \"10min\"\nhttp_idle_timeout = \"1s\"\n".into();
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;

    let mut s = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("request");
        assert_eq!(
            read_response(&mut s).await,
            200,
            "kept alive between requests"
        );
    }
    let rest = closed_within(&mut s, Duration::from_secs(30))
        .await
        .expect("the idle connection was closed");
    assert!(rest.is_empty(), "closed without another answer: {rest:?}");
    let idle = wait_metric(
        addr,
        "rallypoint_http_connections_closed_total{reason=\"idle_timeout\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(idle, 1.0);
    assert_eq!(
        metric(
            addr,
            "rallypoint_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .await,
        Some(0.0)
    );
}

// ---------------------------------------------------------------- idle flood

#[tokio::test]
async fn an_idle_flood_over_the_cap_is_refused_and_counted_while_the_cluster_keeps_working() {
    // The daemon under attack runs with few file descriptors, as the one the review
    // exhausted did (1,024 there, 128 here), and a cap of 32 API connections; its
    // header timeout is long, so the flood stays for the whole test.
    const CAP: usize = 32;
    const NOFILE: u64 = 128;
    // Only b lists a: every connection between them is one that a must accept on its
    // cluster port, with the flood on its API port.
    let mut sa = Spec::new("a");
    let sb = Spec::new("b").peers(&[&sa]);
    sa.nofile = Some(NOFILE);
    sa.top_toml = format!("http_max_connections = {CAP}\nhttp_header_timeout = \"10min\"\n");
    let a = Daemon::start(sa.clone()).await;
    let mut b = Daemon::start(sb.clone()).await;
    let addr = a.spec.http_addr;

    // An observer of a's events, connected before the flood (it holds one of the 32).
    let mut wa = a.watch().await;
    wa.wait_members(&[b.name()], FORM).await;

    // The flood: 1,100 connections, as in the review, that never send a byte. Each is
    // read by a task that reports when the daemon closes it and what it said first.
    const FLOOD: usize = 1100;
    let refused_503 = Arc::new(AtomicUsize::new(0));
    let (closed, mut closed_rx) = tokio::sync::watch::channel(0usize);
    let closed = Arc::new(closed);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let s = timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (refused_503, closed) = (refused_503.clone(), closed.clone());
        flood.spawn(async move {
            let mut s = s;
            let mut buf = Vec::new();
            // Held connections never return; the task is aborted at the end.
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 503 ") {
                refused_503.fetch_add(1, Ordering::SeqCst);
            }
            closed.send_modify(|n| *n += 1);
            // Keep the socket until aborted, so it is not counted twice.
            std::future::pending::<()>().await;
        });
    }
    // All but the 31 the cap leaves (the observer holds the 32nd) are refused.
    let held = CAP - 1;
    let reached = matches!(
        timeout(
            Duration::from_secs(60),
            closed_rx.wait_for(|n| *n >= FLOOD - held),
        )
        .await,
        Ok(Ok(_))
    );
    let now_closed = *closed_rx.borrow();
    assert!(
        reached,
        "only {now_closed} of {FLOOD} flood connections were refused"
    );
    assert_eq!(now_closed, FLOOD - held, "the cap's connections are held");
    assert_eq!(
        refused_503.load(Ordering::SeqCst),
        now_closed,
        "every refused connection was told 503 before it was closed"
    );

    // What the flood costs the daemon.
    let fds = open_fds(a.pid()).expect("read /proc/PID/fd");
    let rss = procstat::rss_kib(a.pid()).expect("read /proc/PID/status");
    eprintln!(
        "during a flood of {FLOOD} idle connections: {fds} descriptors open (limit {NOFILE}, \
         cap {CAP}), RSS {rss} KiB"
    );
    assert!(
        fds < NOFILE as usize - 16,
        "the API left the cluster descriptors: {fds} of {NOFILE}"
    );

    // A new connection over the cap, with a request, is refused at once.
    let (status, body) = get_as(addr, "/healthz", Some("localhost"), "").await;
    assert_eq!(status, 503, "{body}");

    // The cluster keeps working: b dies and comes back, a sees both.
    b.kill9();
    wa.wait_down(b.name(), DETECT).await;
    b = Daemon::start(sb.clone()).await;
    wa.wait_up(b.name(), FORM).await;
    // The restarted b sees a too (a accepted it with the flood still held).
    let mut wb = b.watch().await;
    wb.wait_members(&[a.name()], FORM).await;

    // The flood ends; the API answers again, and counted every refusal.
    flood.abort_all();
    while flood.join_next().await.is_some() {}
    let refused = wait_metric(
        addr,
        "rallypoint_http_connections_refused_total{reason=\"limit\"}",
        (FLOOD - held + 1) as f64,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("refused over the cap: {refused}");
    let open = wait_open_at_most(addr, 2, Duration::from_secs(30)).await;
    assert!(open <= 2.0, "{open}");
}

/// Waits until the daemon has at most `n` HTTP connections open (the scrape's own
/// included).
async fn wait_open_at_most(addr: SocketAddr, n: usize, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = metric(addr, "rallypoint_http_connections").await
            && v <= n as f64
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- an SSE client that never reads

/// How far the churn may run ahead of the reading client, in events: well within what
/// the kernel's socket buffers hold, so that the reader never has a backlog in the
/// daemon, however busy the machine is.
const LAG: usize = 60;

/// The churn's pace: rounds started, and what the reading client has read (or that the
/// churn must stop).
struct Pace {
    started: AtomicUsize,
    read: tokio::sync::watch::Sender<(usize, bool)>,
}

impl Pace {
    /// Waits until round `n` may start (the reader is less than [`LAG`] events behind);
    /// `false` once the churn must stop.
    async fn may_start(&self, n: usize) -> bool {
        let mut rx = self.read.subscribe();
        let r = rx
            .wait_for(|(read, stop)| *stop || 2 * n <= read + LAG)
            .await
            .map(|v| !v.1);
        r.unwrap_or(false)
    }
}

/// Runs in-process nodes that join `target` and leave again, over and over, until the
/// pace says stop: two events (`nodeup`, `nodedown`) on the target per round. Long names
/// make the events large. Returns the number of rounds.
async fn churn(id: usize, target: SocketAddr, pace: Arc<Pace>) -> usize {
    let name = format!("churn{id}-{}@127.0.0.1", "x".repeat(200));
    let mut rounds = 0;
    loop {
        let n = pace.started.fetch_add(1, Ordering::SeqCst) + 1;
        if !pace.may_start(n).await {
            return rounds;
        }
        let node = Cluster::builder()
            .name(name.as_str())
            .cluster_addr("127.0.0.1:0".parse().unwrap())
            .cookie("test-cookie-of-the-daemons")
            .topology("seed", StaticHosts::new([target.to_string()]))
            .start()
            .await
            .expect("a churn node starts");
        let mut events = node.subscribe();
        let up = timeout(FORM, async {
            loop {
                match events.recv().await {
                    Some(Update::Event(Event::NodeUp(n))) if n.addr == target => return true,
                    Some(Update::Resync(s))
                        if s.members.values().any(|m| m.node.addr == target) =>
                    {
                        return true;
                    }
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(up, Ok(true), "churn node {id} joined the target");
        node.shutdown().await;
        rounds += 1;
    }
}

/// Reads the reader's next event before `deadline`, and tells the churn's pace.
async fn read_one(reader: &mut Watcher, pace: &Pace, seen: &mut usize, deadline: Instant) {
    let ev = reader.next(deadline).await;
    assert!(ev.is_some(), "no event in time; {seen} events read");
    *seen += 1;
    pace.read.send_modify(|(read, _)| match ev {
        // A fresh snapshot: the reader is as current as the daemon.
        Some(Seen::Snapshot(_)) => *read = 2 * pace.started.load(Ordering::SeqCst),
        _ => *read += 1,
    });
}

/// Starts a daemon with `top_toml`, opens an event stream that is never read and one
/// that is, and makes events until the daemon counts the first one cut under `sample`.
/// Checks that the reader is still served and that the stalled client's connection
/// ends after what was in flight.
async fn a_stalled_event_stream_is_cut(top_toml: &str, sample: &str) {
    let mut spec = Spec::new("streamer");
    spec.top_toml = top_toml.into();
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;

    // The stalled client: a small receive buffer, a request for the stream, and never
    // a read.
    let stalled = {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut s = TcpStream::from_std(socket.into()).expect("tokio stream");
        s.write_all(
            b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("request");
        s
    };
    // A client that reads, all along.
    let mut reader = a.watch().await;

    let pace = Arc::new(Pace {
        started: AtomicUsize::new(0),
        read: tokio::sync::watch::Sender::new((0, false)),
    });
    let churners: Vec<_> = (0..3)
        .map(|i| tokio::spawn(churn(i, a.spec.cluster_addr, pace.clone())))
        .collect();
    let mut seen = 0usize;

    // Read the events as they come, and watch the counter; stop once the stalled
    // client is cut.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        read_one(&mut reader, &pace, &mut seen, deadline).await;
        if seen.is_multiple_of(50) && metric(addr, sample).await.is_some_and(|v| v >= 1.0) {
            break;
        }
    }
    // The reader is still served: more events come after the cut.
    read_one(&mut reader, &pace, &mut seen, Instant::now() + FORM).await;
    pace.read.send_modify(|(_, stop)| *stop = true);
    let mut rounds = 0;
    for c in churners {
        rounds += c.await.expect("churn task");
    }

    // The stalled client's connection is closed: it gets what was in flight, then the
    // end.
    let mut stalled = stalled;
    let got = closed_within(&mut stalled, Duration::from_secs(30))
        .await
        .expect("the stalled client's connection was closed");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("event: snapshot"),
        "the stream began with a snapshot"
    );
    eprintln!(
        "{sample}: {rounds} churn rounds, {seen} events read by the reader; the stalled \
         client received {} bytes before it was cut",
        got.len()
    );
    assert_eq!(
        metric(addr, sample).await,
        Some(1.0),
        "exactly one client cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_is_cut_once_its_backlog_is_full_and_readers_are_not() {
    a_stalled_event_stream_is_cut(
        "sse_max_backlog = 4096\n",
        "rallypoint_http_connections_closed_total{reason=\"sse_backlog\"}",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_whose_socket_stays_full_for_the_idle_timeout_is_cut() {
    // A backlog bound too large to matter: what cuts is the stalled writes.
    a_stalled_event_stream_is_cut(
        "sse_max_backlog = 67108864\nhttp_idle_timeout = \"1s\"\n",
        "rallypoint_http_connections_closed_total{reason=\"write_stalled\"}",
    )
    .await;
}

// ---------------------------------------------------------------- DNS rebinding

#[tokio::test]
async fn without_a_token_only_loopback_own_and_allowed_hosts_are_answered() {
    let mut spec = Spec::new("rebind");
    spec.top_toml = "http_allowed_hosts = [\"rallypoint.internal\"]\n".into();
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;
    let port = addr.port();

    // A page at evil.example whose name now resolves to 127.0.0.1.
    for path in [
        "/v1/members",
        "/v1/events",
        "/v1/topologies",
        "/metrics",
        "/",
        "/status.js",
    ] {
        for host in ["evil.example".to_owned(), format!("evil.example:{port}")] {
            let (status, body) = get_as(addr, path, Some(&host), "").await;
            assert_eq!(status, 421, "{path} with Host {host}: {body}");
            assert!(body.contains("http_allowed_hosts"), "names the key: {body}");
        }
    }
    // An absolute-form target names the host too.
    let (status, _) = get_as(
        addr,
        &format!("http://evil.example:{port}/v1/members"),
        Some("localhost"),
        "",
    )
    .await;
    assert_eq!(status, 421, "absolute-form target for evil.example");
    // A Host that merely starts with an allowed name is not it.
    let (status, _) = get_as(addr, "/v1/members", Some("localhost.evil.example"), "").await;
    assert_eq!(status, 421);

    // Loopback names and addresses, with any port, and the listed host.
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("rallypoint.internal:{port}"),
        "RALLYPOINT.INTERNAL".to_owned(),
    ] {
        let (status, body) = get_as(addr, "/v1/members", Some(&host), "").await;
        assert_eq!(status, 200, "Host {host}: {body}");
        assert!(body.contains("rebind@127.0.0.1"), "{body}");
    }

    // Probes are answered whatever the Host (the kubelet sends the pod's IP).
    for path in ["/healthz", "/readyz"] {
        let (status, body) = get_as(addr, path, Some("evil.example"), "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let refused = metric(
        addr,
        "rallypoint_http_requests_refused_total{reason=\"host\"}",
    )
    .await
    .expect("metrics");
    assert_eq!(refused, 6.0 * 2.0 + 2.0);
}

#[tokio::test]
async fn with_a_token_any_host_with_the_token_is_answered() {
    let mut spec = Spec::new("tokened");
    spec.env
        .push(("RALLYPOINT_HTTP_TOKEN".into(), "s3cret-t0ken".into()));
    let a = Daemon::start(spec).await;
    let addr = a.spec.http_addr;

    let auth = "Authorization: Bearer s3cret-t0ken\r\n";
    for host in ["evil.example", "10.1.2.3:45894", "localhost"] {
        let (status, body) = get_as(addr, "/v1/members", Some(host), auth).await;
        assert_eq!(status, 200, "Host {host} with the token: {body}");
        let (status, _) = get_as(addr, "/v1/members", Some(host), "").await;
        assert_eq!(status, 401, "Host {host} without the token");
    }
    let (status, _) = get_as(addr, "/", Some("evil.example"), "").await;
    assert_eq!(
        status, 200,
        "the status page holds no data; the token guards the API"
    );
}
