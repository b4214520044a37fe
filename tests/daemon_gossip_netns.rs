//! `rallypoint run` with no configuration at all gossips, and finds a second
//! `rallypoint run` on another host; three daemons on one host share the default gossip
//! port (network namespaces on a bridge; needs root).

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

/// The member names host `i`'s daemon with its API at `http` reports (empty while it
/// does not answer).
fn members_on(lab: &Lab, i: usize, http: &str) -> Vec<String> {
    let out = lab
        .command(i, BIN)
        .args(["members", "--json", "--http-addr", http])
        .env_remove("RALLYPOINT_HTTP_TOKEN")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("rallypoint members");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = body["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn three_daemons_on_one_host_share_the_default_gossip_port() {
    if !require_root("three_daemons_on_one_host_share_the_default_gossip_port") {
        return;
    }
    // A host of its own, so the default port 45892 is free whatever runs on this machine.
    let lab = Lab::new(1).expect("lab");
    let ip = lab.host(0).ip;
    let home = tempfile::tempdir().unwrap();
    let nodes = ["x", "y", "z"];
    let mut procs = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        // No topology configured: the daemon gossips with the strategy's defaults
        // (230.1.1.251:45892); only the cluster and HTTP ports differ per daemon.
        let args = format!(
            "run --name {n}@{ip} --cluster-addr {ip}:{} --http-addr 127.0.0.1:{}",
            46000 + k,
            46100 + k
        );
        procs.push(on_host(&lab, 0, n, home.path(), &args));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (k, n) in nodes.iter().enumerate() {
        let want: Vec<String> = nodes
            .iter()
            .filter(|m| *m != n)
            .map(|m| format!("{m}@{ip}"))
            .collect();
        let http = format!("127.0.0.1:{}", 46100 + k);
        loop {
            let got = members_on(&lab, 0, &http);
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} sees {got:?}, expected {want:?}\n{n}: {}",
                std::fs::read_to_string(home.path().join(format!("{n}-run.log")))
                    .unwrap_or_default()
            );
            // A poll of the daemon's API, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // They all hold the default port, shared (SO_REUSEPORT): three UDP sockets on 45892.
    let ss = lab
        .command(0, "ss")
        .args(["-Hlunp", "sport", "=", ":45892"])
        .output()
        .expect("ss");
    let sockets = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains("rallypoint"))
        .count();
    assert_eq!(
        sockets,
        3,
        "three sockets on the default gossip port:\n{}",
        String::from_utf8_lossy(&ss.stdout)
    );
    drop(procs);
}

/// The README's recipe: three `rallypoint run` on one host, told only the ports that
/// must differ, form a cluster; their default names differ by the cluster port.
#[test]
fn three_daemons_on_one_host_told_only_their_ports_form_a_cluster() {
    if !require_root("three_daemons_on_one_host_told_only_their_ports_form_a_cluster") {
        return;
    }
    let lab = Lab::new(1).expect("lab");
    let home = tempfile::tempdir().unwrap();
    let runs = [
        ("rallypoint@one", "run".to_owned(), "127.0.0.1:45894"),
        (
            "rallypoint-45993@one",
            "run --cluster-addr 0.0.0.0:45993 --http-addr 127.0.0.1:45994".to_owned(),
            "127.0.0.1:45994",
        ),
        (
            "rallypoint-46093@one",
            "run --cluster-addr 0.0.0.0:46093 --http-addr 127.0.0.1:46094".to_owned(),
            "127.0.0.1:46094",
        ),
    ];
    let mut procs = Vec::new();
    for (_, args, _) in &runs {
        // One hostname for all three, as on one machine.
        procs.push(on_host(&lab, 0, "one", home.path(), args));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, _, http) in &runs {
        let mut want: Vec<String> = runs
            .iter()
            .map(|(n, _, _)| n.to_string())
            .filter(|n| n != name)
            .collect();
        want.sort();
        loop {
            let got = members_on(&lab, 0, http);
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} sees {got:?}, expected {want:?}\nlog: {}",
                std::fs::read_to_string(home.path().join("one-run.log")).unwrap_or_default()
            );
            // A poll of the daemon's API, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(procs);
}

/// Two daemons given one name on one host hear each other's gossip, and each says once
/// that another node uses its name, with the fix.
#[test]
fn two_daemons_with_one_name_on_one_host_say_so_with_the_fix() {
    if !require_root("two_daemons_with_one_name_on_one_host_say_so_with_the_fix") {
        return;
    }
    let lab = Lab::new(1).expect("lab");
    let ip = lab.host(0).ip;
    let home = tempfile::tempdir().unwrap();
    // One user's default cookie; two hostnames only to keep two log files (the name is
    // given, so the hostname does not make it).
    let hosts = ["twin-a", "twin-b"];
    let procs: Vec<Proc> = (0..2)
        .map(|k| {
            let args = format!(
                "run --name twin@{ip} --cluster-addr {ip}:{} --http-addr 127.0.0.1:{}",
                46200 + k,
                46300 + k
            );
            on_host(&lab, 0, hosts[k], home.path(), &args)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (k, host) in hosts.iter().enumerate() {
        let other = format!("{ip}:{}", 46200 + (1 - k));
        let path = home.path().join(format!("{host}-run.log"));
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let warned: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("uses this node's name") && l.contains(&other))
                .collect();
            if let Some(line) = warned.first() {
                assert!(line.contains("WARN") && line.contains("--name"), "{line}");
                assert_eq!(warned.len(), 1, "warned once:\n{log}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no warning naming {other}:\n{log}"
            );
            // A poll of the log file, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(procs);
}
