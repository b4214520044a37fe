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
