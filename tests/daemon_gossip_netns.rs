//! `rallypoint run` with no configuration at all gossips, and finds a second
//! `rallypoint run` on another host (network namespaces on a bridge; needs root).

#[path = "support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netns::{Lab, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_rallypoint");

/// Kills the process when dropped, also when the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rallypoint ARGS` on host `i`, in a UTS namespace of its own with hostname `host`
/// (two machines have two hostnames, so the default names differ), with `home` as
/// `$HOME` (both use the same user's default cookie, as on one user's machines).
fn on_host(lab: &Lab, i: usize, host: &str, home: &std::path::Path, args: &str) -> Proc {
    let script = format!("hostname {host} && exec {BIN} {args}");
    let child = lab
        .command(i, "unshare")
        .args(["--uts", "sh", "-c", &script])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("RALLYPOINT_COOKIE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(home.join(format!(
                "{host}-{}.log",
                args.split_whitespace().next().unwrap_or("x")
            )))
            .expect("log file"),
        ))
        .spawn()
        .expect("spawn");
    Proc(child)
}

#[test]
fn run_with_no_configuration_gossips_and_finds_another_host() {
    if !require_root("run_with_no_configuration_gossips_and_finds_another_host") {
        return;
    }
    let lab = Lab::new(2).expect("lab");
    let home = tempfile::tempdir().unwrap();
    let _a = on_host(&lab, 0, "alpha", home.path(), "run");
    let _b = on_host(&lab, 1, "beta", home.path(), "run");
    // Follow alpha's events through its own API (on alpha's loopback), until beta is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (tx, rx) = mpsc::channel();
    let (mut watch, first_line) = loop {
        let mut w = on_host(&lab, 0, "alpha", home.path(), "watch --json");
        let out = w.0.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // `watch` exits at once while alpha's API is not listening yet: then retry.
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(first) => {
                assert!(first.contains("snapshot"), "{first}");
                break (w, first);
            }
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => panic!(
                "alpha's API never answered: {e}\nalpha: {}\nwatch: {}",
                std::fs::read_to_string(home.path().join("alpha-run.log")).unwrap_or_default(),
                std::fs::read_to_string(home.path().join("alpha-watch.log")).unwrap_or_default()
            ),
        }
    };
    let mut seen = Vec::new();
    while !first_line.contains("rallypoint@beta") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("nodeup") && line.contains("rallypoint@beta") => break,
            Ok(line) if line.contains("snapshot") && line.contains("rallypoint@beta") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "alpha never saw beta come up; events: {seen:?}\nalpha: {}\nbeta: {}",
                std::fs::read_to_string(home.path().join("alpha-run.log")).unwrap_or_default(),
                std::fs::read_to_string(home.path().join("beta-run.log")).unwrap_or_default()
            ),
        }
    }
    let _ = watch.0.kill();
}
