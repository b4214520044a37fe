//! A newcomer's first hour with the daemon, driven as they drive it: the binary as a
//! subprocess, its output read. Each test is one thing a new user hit (issue 14): a
//! taken port, two nodes with one name, a missing cookie file, different cookies, an API
//! that wants a token, an API open beyond loopback, settings from the environment.
//!
//! Every wait has a deadline; every process is killed when its handle drops.
//! Run: `cargo test --all-features --test first_hour`.
#![cfg(feature = "daemon")]

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use support::daemon::{Daemon, Spec, command};
use support::ports::free_addr;

/// A deadline for things that happen within a second or two on an idle machine.
const SOON: Duration = Duration::from_secs(30);

/// `rallypoint ARGS` run to its end in a clean environment (no `RALLYPOINT_*` but
/// `env`, `$HOME` a fresh directory).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("temp dir");
    let mut cmd = command(home.path());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // `members` and `check-config` end by themselves; the test's own timeout bounds them.
    cmd.output().expect("run rallypoint")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn a_taken_http_port_and_then_a_taken_cluster_port_each_name_the_flag_that_fixes_it() {
    let first = Daemon::start(Spec::new("first")).await;
    // Same HTTP port.
    let mut spec = Spec::new("second");
    spec.http_addr = first.spec.http_addr;
    let mut second = Daemon::spawn(spec);
    let status = second.wait_exit(SOON).await;
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains(&format!(
            "cannot listen on HTTP address {}",
            first.spec.http_addr
        )) && log.contains("in use")
            && log.contains("--http-addr 127.0.0.1:")
            && log.contains("RALLYPOINT_HTTP_ADDR"),
        "{log}"
    );
    // The HTTP port moved, the cluster port still taken.
    let mut spec = Spec::new("second");
    spec.cluster_addr = first.spec.cluster_addr;
    let mut second = Daemon::spawn(spec);
    let status = second.wait_exit(SOON).await;
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains("cannot listen on cluster address")
            && log.contains("--cluster-addr 127.0.0.1:")
            && log.contains("RALLYPOINT_CLUSTER_ADDR"),
        "{log}"
    );
}

#[tokio::test]
async fn two_nodes_with_one_name_each_say_so_with_the_fix_and_neither_joins() {
    let a = Spec::new("same");
    let mut b = Spec::new("same");
    b.peers = vec![a.cluster_addr];
    let a = a.peers(&[&b]);
    let a = Daemon::start(a).await;
    let b = Daemon::start(b).await;
    let fix = "give every node its own name";
    for d in [&a, &b] {
        let line = d
            .wait_log("a name-clash warning", SOON, |l| {
                l.contains("WARN") && l.contains("name") && l.contains(fix)
            })
            .await;
        assert!(line.contains("--name"), "{line}");
    }
    assert!(a.members().await.members.is_empty());
    assert!(b.members().await.members.is_empty());
}

#[tokio::test]
async fn different_cookies_are_reported_as_such_not_as_an_unreachable_peer() {
    let a = Spec::new("a").cookie("the first cookie, 32 bytes long!");
    let b = Spec::new("b")
        .cookie("the second cookie, also 32 bytes")
        .peers(&[&a]);
    let a = Daemon::start(a).await;
    let b = Daemon::start(b).await;
    let line = b
        .wait_log("a cookie warning", SOON, |l| {
            l.contains("WARN") && l.contains("cookies differ")
        })
        .await;
    assert!(line.contains("same cookie"), "{line}");
    a.wait_log("a refusal on the listener", SOON, |l| {
        l.contains("WARN") && l.contains("none of this node's cookies")
    })
    .await;
    assert!(
        !b.log().contains("cannot reach peer"),
        "the peer was reached: {}",
        b.log()
    );
}

#[test]
fn a_missing_cookie_file_says_it_is_not_created_and_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie");
    let path = path.to_string_lossy();
    let o = run(&["check-config", "--cookie-file", &path], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("the cookie file {path} does not exist"))
            && err.contains("never created")
            && err.contains(&format!("head -c 32 /dev/urandom | base64 > {path}")),
        "{err}"
    );
    assert!(!err.contains("or create"), "{err}");
}

#[tokio::test]
async fn members_without_the_token_names_the_flag_and_the_variable() {
    let mut spec = Spec::new("locked");
    spec.top_toml = "http_token = \"let-me-in-please\"\n".into();
    let d = Daemon::start(spec).await;
    let http = d.spec.http_addr.to_string();
    let o = tokio::task::spawn_blocking(move || run(&["members", "--http-addr", &http], &[]))
        .await
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("401")
            && err.contains("--http-token")
            && err.contains("RALLYPOINT_HTTP_TOKEN"),
        "{err}"
    );
    let http = d.spec.http_addr.to_string();
    let o = tokio::task::spawn_blocking(move || {
        run(
            &["members", "--http-addr", &http],
            &[("RALLYPOINT_HTTP_TOKEN", "let-me-in-please")],
        )
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test]
async fn an_api_beyond_loopback_without_a_token_is_warned_about_and_with_one_is_not() {
    let mut spec = Spec::new("open");
    spec.http_addr = format!("0.0.0.0:{}", free_addr().port()).parse().unwrap();
    let d = Daemon::start(spec).await;
    d.wait_log("the open-API warning", SOON, |l| {
        l.contains("WARN") && l.contains("beyond loopback") && l.contains("http_token")
    })
    .await;

    let mut spec = Spec::new("closed");
    spec.http_addr = format!("0.0.0.0:{}", free_addr().port()).parse().unwrap();
    spec.top_toml = "http_token = \"let-me-in-please\"\n".into();
    let d = Daemon::start(spec).await;
    assert!(!d.log().contains("beyond loopback"), "{}", d.log());
    let d = Daemon::start(Spec::new("local")).await;
    assert!(!d.log().contains("beyond loopback"), "{}", d.log());
}

#[test]
fn static_hosts_come_from_the_environment_comma_separated_and_a_flag_wins() {
    let o = run(
        &["check-config"],
        &[("RALLYPOINT_STATIC_HOSTS", "10.1.0.1:45893, node2:45893")],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("[topologies.static]")
            && out.contains(r#"hosts = ["10.1.0.1:45893", "node2:45893"]"#),
        "{out}"
    );
    let o = run(
        &["check-config", "--static-hosts", "10.1.0.9:1"],
        &[("RALLYPOINT_STATIC_HOSTS", "10.1.0.1:45893")],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(r#"hosts = ["10.1.0.9:1"]"#), "{out}");
    // A bad entry is blamed on the variable.
    let o = run(
        &["check-config"],
        &[("RALLYPOINT_STATIC_HOSTS", "10.1.0.1:45893,")],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("the environment variable RALLYPOINT_STATIC_HOSTS"),
        "{err}"
    );
}

#[test]
fn settings_from_the_environment_are_blamed_on_their_variable_with_a_suggestion() {
    let o = run(
        &["check-config"],
        &[("RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL", "5s")],
    );
    let err = stderr(&o);
    assert!(
        err.contains("`membership.heartbeat_interval` = 5s")
            && err.contains("RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL"),
        "{err}"
    );
    let o = run(&["check-config"], &[("RALLYPOINT_HTTP_ADR", "127.0.0.1:1")]);
    let err = stderr(&o);
    assert!(
        err.contains("RALLYPOINT_HTTP_ADR") && err.contains("did you mean `http_addr`?"),
        "{err}"
    );
}

#[test]
fn run_help_shows_the_variable_of_each_flag() {
    let o = run(&["run", "--help"], &[]);
    let help = String::from_utf8_lossy(&o.stdout);
    for var in [
        "RALLYPOINT_NAME",
        "RALLYPOINT_CLUSTER_ADDR",
        "RALLYPOINT_ADVERTISE_ADDR",
        "RALLYPOINT_HTTP_ADDR",
        "RALLYPOINT_COOKIE_FILE",
        "RALLYPOINT_STATIC_HOSTS",
    ] {
        assert!(help.contains(&format!("[env: {var}")), "{var} in:\n{help}");
    }
}

/// A running `rallypoint ARGS` with its stdout and stderr lines as they come; killed
/// when dropped.
struct Running {
    child: std::process::Child,
    out: tokio::sync::mpsc::UnboundedReceiver<String>,
    err: tokio::sync::mpsc::UnboundedReceiver<String>,
    _home: tempfile::TempDir,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let home = tempfile::tempdir().expect("temp dir");
        let mut child = command(home.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rallypoint");
        fn lines(
            r: impl std::io::Read + Send + 'static,
        ) -> tokio::sync::mpsc::UnboundedReceiver<String> {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        }
        let out = lines(child.stdout.take().expect("stdout"));
        let err = lines(child.stderr.take().expect("stderr"));
        Running {
            child,
            out,
            err,
            _home: home,
        }
    }

    /// The next line of `which` (stdout or stderr) that contains `what`.
    async fn line(which: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            match tokio::time::timeout_at(deadline, which.recv()).await {
                Ok(Some(l)) if l.contains(what) => return l,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the output ended before a line with {what:?}"),
                Err(_) => panic!("no line with {what:?} within {SOON:?}"),
            }
        }
    }

    /// Waits for the process to exit.
    async fn exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rallypoint ARGS` on a blocking thread.
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[])
    })
    .await
    .expect("run")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn members_lists_who_left_with_status_reason_and_time_filtered_by_status_and_name() {
    let a = Spec::new("a");
    let b = Spec::new("b").peers(&[&a]);
    let a = Daemon::start(a.peers(&[&b])).await;
    let mut b = Daemon::start(b).await;
    let mut wa = a.watch().await;
    wa.wait_members(&[b.name()], SOON).await;
    let http = a.spec.http_addr.to_string();
    let members = |extra: &[&str]| {
        let mut args = vec!["members".to_owned(), "--http-addr".into(), http.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_async(args)
    };

    let o = members(&[]).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("STATUS") && out.contains("1 member up"),
        "{out}"
    );
    let b_line = out
        .lines()
        .find(|l| l.starts_with("b@127.0.0.1"))
        .expect(&out);
    assert!(b_line.contains(" up "), "{b_line}");

    // b leaves: a lists it as left, with the reason and when.
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(SOON).await.success());
    let (_, reason) = wa.wait_down(b.name(), SOON).await;
    assert_eq!(reason, "left");
    // The API's departed list agrees with its snapshot, which has seen b go.
    let out = stdout(&members(&[]).await);
    let b_line = out
        .lines()
        .find(|l| l.starts_with("b@127.0.0.1"))
        .expect(&out);
    assert!(
        b_line.contains(" left ") && b_line.trim_end().ends_with("left"),
        "{b_line}"
    );
    assert!(out.contains("0 members up, 1 down or left"), "{out}");
    // The API body says the same.
    let body: serde_json::Value = serde_json::from_str(
        &rallypoint::daemon::client::get(a.spec.http_addr, "/v1/members")
            .await
            .expect("members"),
    )
    .expect("JSON");
    assert_eq!(body["departed"][0]["node"]["name"], "b@127.0.0.1", "{body}");
    assert_eq!(body["departed"][0]["status"], "left", "{body}");
    assert_eq!(body["departed"][0]["reason"], "left", "{body}");
    assert!(
        body["departed"][0]["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );

    // Filters, and the machine format.
    let out = stdout(&members(&["--status", "up"]).await);
    assert!(!out.contains("b@127.0.0.1"), "{out}");
    let o = members(&["--status", "down,left", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON rows");
    assert_eq!(rows["self"]["name"], "a@127.0.0.1");
    assert_eq!(rows["members"], serde_json::json!([]), "{rows}");
    assert_eq!(rows["departed"].as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows["departed"][0]["name"], "b@127.0.0.1");
    assert_eq!(rows["departed"][0]["status"], "left");
    assert_eq!(rows["departed"][0]["reason"], "left");
    let out = stdout(&members(&["--name", "^c@"]).await);
    assert!(
        !out.contains("b@127.0.0.1") && out.contains("0 members up"),
        "{out}"
    );
    let o = members(&["--name", "("]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--name \"(\" is not a regular expression"),
        "{}",
        stderr(&o)
    );
    let o = members(&["--status", "gone"]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("possible values: up, down, left"),
        "{}",
        stderr(&o)
    );

    // b comes back: up again, and no longer listed as left.
    let b2 = Daemon::start(b.spec.clone()).await;
    wa.wait_up(b2.name(), SOON).await;
    let out = stdout(&members(&[]).await);
    let b_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("b@127.0.0.1"))
        .collect();
    assert_eq!(b_lines.len(), 1, "{out}");
    assert!(b_lines[0].contains(" up "), "{out}");
}

#[tokio::test]
async fn watch_reconnects_when_the_node_restarts_and_no_reconnect_ends_instead() {
    let spec = Spec::new("a");
    let mut a = Daemon::start(spec.clone()).await;
    let http = a.spec.http_addr.to_string();
    let mut watch = Running::spawn(&["watch", "--http-addr", &http]);
    let mut once = Running::spawn(&["watch", "--no-reconnect", "--http-addr", &http]);
    Running::line(&mut watch.out, "snapshot").await;
    Running::line(&mut once.out, "snapshot").await;

    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(SOON).await.success());
    let said = Running::line(&mut watch.err, "reconnecting in").await;
    assert!(said.contains("event stream ended"), "{said}");
    // --no-reconnect: it ends with the reason.
    assert!(!once.exit().await.success());
    Running::line(&mut once.err, "event stream ended").await;

    // The node is back on the same ports: watch follows it, from a fresh snapshot
    // (a new process's ids are its own).
    let _a = Daemon::start(spec).await;
    let said = Running::line(&mut watch.err, "reconnected to").await;
    assert!(said.contains("resuming after #"), "{said}");
    Running::line(&mut watch.out, "snapshot").await;
    assert!(
        watch.child.try_wait().expect("try_wait").is_none(),
        "watch is still running"
    );
}

/// A stand-in API on loopback: connection `i` gets `replies[i]` (raw bytes) and is
/// closed, but the last, which stays open; each request's head (lowercased) is sent on
/// the channel.
async fn stand_in(
    replies: Vec<Vec<u8>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (head_tx, head_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let n = replies.len();
        for (i, reply) in replies.into_iter().enumerate() {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = head_tx.send(String::from_utf8_lossy(&head).to_lowercase());
            let _ = s.write_all(&reply).await;
            if i + 1 < n {
                drop(s); // the stream ends
            } else {
                held.push(s); // stays open
            }
        }
        std::future::pending::<()>().await;
    });
    (addr, head_rx)
}

/// An event stream's reply: the head, then these raw bytes.
fn sse_reply(body: &[u8]) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n".to_vec();
    r.extend_from_slice(body);
    r
}

/// A `nodeup` event of node `n{i}@10.0.0.1` with this id line.
fn nodeup(i: usize, id: &str) -> Vec<u8> {
    format!(
        "event: nodeup\nid: {id}\ndata: {{\"node\":{{\"name\":\"n{i}@10.0.0.1\",\"addr\":\"10.0.0.1:45893\",\"incarnation\":\"7\"}}}}\n\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn watch_resumes_with_the_last_event_id_it_printed() {
    // The first stream gives one event and ends; the second must ask for what follows.
    let (addr, mut heads) = stand_in(vec![
        sse_reply(&nodeup(0, "41")),
        sse_reply(&nodeup(1, "42")),
    ])
    .await;
    let mut watch = Running::spawn(&["watch", "--http-addr", &addr.to_string()]);
    let first = Running::line(&mut watch.out, "nodeup").await;
    assert!(
        first.contains("#41") && first.contains("n0@10.0.0.1"),
        "{first}"
    );
    let head1 = heads.recv().await.expect("first request");
    assert!(!head1.contains("last-event-id"), "{head1}");
    let second = Running::line(&mut watch.out, "nodeup").await;
    assert!(
        second.contains("#42") && second.contains("n1@10.0.0.1"),
        "{second}"
    );
    let head2 = heads.recv().await.expect("second request");
    assert!(head2.contains("last-event-id: 41\r\n"), "{head2}");
    Running::line(&mut watch.err, "resuming after #41").await;
}

/// `watch --no-reconnect` on a stream of this body exits 1 saying `why`.
async fn refused_stream(body: &[u8], why: &str) {
    let (addr, _heads) = stand_in(vec![sse_reply(body)]).await;
    let mut w = Running::spawn(&["watch", "--no-reconnect", "--http-addr", &addr.to_string()]);
    assert_eq!(w.exit().await.code(), Some(1));
    Running::line(&mut w.err, why).await;
}

#[tokio::test]
async fn watch_gives_up_on_bad_streams_at_once_and_never_sends_back_an_unsendable_id() {
    // Invalid UTF-8, then good events on an open stream: refused at the bad byte, not
    // when the stream ends (it does not).
    let mut body = b"event: nodeup\nid: 1\ndata: {\"x\":\"\xff\"}\n\n".to_vec();
    body.extend(nodeup(0, "2"));
    refused_stream(&body, "not UTF-8").await;

    // A line that never ends: refused at 4 MiB, memory bounded.
    let mut body = b"data: ".to_vec();
    body.resize(5 * 1024 * 1024, b'a');
    refused_stream(&body, "line longer than").await;

    // A 200 that is not an event stream ends watch (no reconnect loop), with the reason.
    let json = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let (addr, _heads) = stand_in(vec![
        sse_reply(&nodeup(0, "5")),
        json.to_vec(),
        json.to_vec(),
    ])
    .await;
    let mut w = Running::spawn(&["watch", "--http-addr", &addr.to_string()]);
    Running::line(&mut w.out, "nodeup").await;
    assert_eq!(w.exit().await.code(), Some(1));
    Running::line(&mut w.err, "not an event stream").await;

    // An id with a control character cannot be a header: the next connection asks for a
    // fresh start instead of failing forever.
    let (addr, mut heads) = stand_in(vec![
        sse_reply(&nodeup(0, "1\u{1}2")),
        sse_reply(&nodeup(1, "3")),
    ])
    .await;
    let mut w = Running::spawn(&["watch", "--http-addr", &addr.to_string()]);
    Running::line(&mut w.out, "n0@10.0.0.1").await;
    Running::line(&mut w.out, "n1@10.0.0.1").await;
    let _ = heads.recv().await.expect("first request");
    let head2 = heads.recv().await.expect("second request");
    assert!(!head2.contains("last-event-id"), "{head2}");
}

#[tokio::test]
async fn probe_live_and_ready_exit_zero_or_one_with_the_reason() {
    let mut a = Spec::new("a");
    a.top_toml = "min_members = 1\nhttp_token = \"t0ken-for-the-api\"".into();
    let b = Spec::new("b").peers(&[&a]);
    let a = Daemon::start(a.peers(&[&b])).await;
    let http = a.spec.http_addr.to_string();
    let probe = |check: &str| {
        run_async(
            ["probe", check, "--http-addr", &http]
                .map(str::to_owned)
                .to_vec(),
        )
    };
    // Live at once; not ready while alone (min_members 1); neither needs the token.
    let o = probe("live").await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "live");
    let o = probe("ready").await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not ready: 0 peers up, min_members is 1"),
        "{}",
        stderr(&o)
    );
    // With its peer up, ready.
    let _b = Daemon::start(b).await;
    // Wait for a's nodeup of b (its stream wants the token; /readyz reads the same
    // snapshot, updated before the event is sent).
    let mut events = rallypoint::daemon::client::EventStream::connect_with_token(
        a.spec.http_addr,
        "/v1/events",
        None,
        Some("t0ken-for-the-api"),
    )
    .await
    .expect("event stream");
    tokio::time::timeout(SOON, async {
        loop {
            let ev = events.next().await.expect("event").expect("stream open");
            if ev.data.contains("\"b@127.0.0.1\"") {
                return;
            }
        }
    })
    .await
    .expect("a sees b up");
    let o = probe("ready").await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ready: 1 peer up (min_members 1)");
    // Against nothing: exit 1, saying so.
    let nowhere = free_addr().to_string();
    let o = run_async(
        ["probe", "live", "--http-addr", &nowhere]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
}
