//! What an idle sidecar costs: eleven `rallypoint run` processes on loopback (so each
//! one has 10 peers), default membership timing (a heartbeat every 500 ms on each
//! connection), static hosts. Once the mesh is full, each daemon's CPU time and resident
//! memory are read from `/proc` over a measuring window; the release binary's size is
//! printed too.
//!
//! Run: `cargo bench --bench daemon_idle` (`WINDOW_SECS=n` sets the window, default 60).

#[path = "../tests/support/ports.rs"]
mod ports;
#[path = "../tests/support/procstat.rs"]
mod procstat;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rallypoint");
/// Daemons in the cluster: each has `N - 1` peers.
const N: usize = 11;

struct Proc {
    child: Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (user + system CPU ticks, resident kB) of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    Some((procstat::cpu_ticks(pid)?, procstat::rss_kib(pid)?))
}

fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn members(http: SocketAddr) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let body = rallypoint::daemon::client::get(http, "/v1/members").await;
        body.ok()
            .and_then(|b| serde_json::from_str::<rallypoint::daemon::api::Members>(&b).ok())
            .map(|m| m.members.len())
            .unwrap_or(0)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let window = Duration::from_secs(
        std::env::var("WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let cluster: Vec<SocketAddr> = (0..N).map(|_| ports::free_addr()).collect();
    let mut procs = Vec::new();
    for (i, addr) in cluster.iter().enumerate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = ports::free_addr();
        let hosts: Vec<String> = cluster
            .iter()
            .filter(|a| *a != addr)
            .map(|a| format!("\"{a}\""))
            .collect();
        let toml = format!(
            "name = \"n{i}@127.0.0.1\"\ncluster_addr = \"{addr}\"\nhttp_addr = \"{http}\"\n\
             [topologies.peers]\nstrategy = \"static\"\nhosts = [{}]\n",
            hosts.join(", ")
        );
        let path = dir.path().join("rallypoint.toml");
        std::fs::write(&path, toml).expect("write config");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RALLYPOINT_COOKIE", "daemon-idle-bench-cookie")
            .env("HOME", dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rallypoint");
        procs.push(Proc {
            child,
            http,
            _dir: dir,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while procs.iter().any(|p| members(p.http) != N - 1) {
        assert!(Instant::now() < deadline, "the mesh did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let start-up work (connections, first syncs) settle before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| usage(p.child.id()).expect("proc stats"))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let elapsed = t0.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = procs
        .iter()
        .map(|p| usage(p.child.id()).expect("proc stats"))
        .collect();
    assert!(
        procs.iter().all(|p| members(p.http) == N - 1),
        "the mesh broke while idle"
    );
    let hz = clock_ticks() as f64;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / hz / elapsed * 100.0)
        .collect();
    let rss: Vec<f64> = after.iter().map(|a| a.1 as f64 / 1024.0).collect();
    let max_cpu = cpu.iter().copied().fold(0.0, f64::max);
    let max_rss = rss.iter().copied().fold(0.0, f64::max);
    println!(
        "idle daemon with {} peers, over {:.0} s: CPU median {:.2} % of one core (max {:.2} %); \
         resident memory median {:.1} MiB (max {:.1} MiB)",
        N - 1,
        elapsed,
        median(cpu),
        max_cpu,
        median(rss),
        max_rss
    );
    let size = std::fs::metadata(BIN).map(|m| m.len()).unwrap_or(0);
    println!(
        "binary {BIN}: {:.1} MiB ({size} bytes)",
        size as f64 / (1024.0 * 1024.0)
    );
}
