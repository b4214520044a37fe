//! The soak: six daemons on the test switch (`tests/support/switch.rs`) under churn on a
//! seeded schedule, while an observer follows every daemon's event stream and checks
//! its contract (`tests/support/fleet.rs`). Outside CI; needs root.
//!
//! ```sh
//! cargo bench --bench soak -- --minutes 60 --seed 1
//! ```
//!
//! Faults, one at a time, each followed by a wait for the whole cluster to be one full
//! mesh again (a cluster that does not heal within 60 s is a violation): `kill -9` and
//! restart, SIGTERM and restart, a cut link for 0.5–6 s, a partition into two random
//! groups for 1–8 s, 20 % loss on one host for 2–10 s. Hosts 0 and 1 are never
//! restarted (their links are cut, they are partitioned), so their resident memory at
//! the start and at the end shows whether a long-lived daemon grows under churn.
//!
//! The report: faults injected, events seen, contract violations (must be 0), heals
//! that timed out (must be 0), and each daemon's resident memory at the start and end.

#[path = "../tests/support/fleet.rs"]
mod fleet;
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/procstat.rs"]
mod procstat;
#[path = "../tests/support/switch.rs"]
mod switch;

use std::time::{Duration, Instant};

use fleet::{Daemon, Spec, name_on, static_hosts, wait_full_mesh};
use switch::{Link, Net};

const N: usize = 6;
/// Hosts whose daemons are never restarted.
const LONG_LIVED: usize = 2;
const TIMING: &str = r#"
[membership]
heartbeat_interval = "200ms"
down_after = "1500ms"
handshake_timeout = "2s"
reconnect_initial = "100ms"
reconnect_max = "2s"
sync_interval = "2s"
"#;
const HEAL: Duration = Duration::from_secs(60);

/// xorshift64*: the schedule needs nothing better, and the seed makes it repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    procstat::rss_kib(pid?)
}

/// Waits for one full mesh; false (and a line saying so) when it does not come.
fn healed(ds: &[Daemon], what: &str) -> bool {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_full_mesh(ds, HEAL)));
    if r.is_err() {
        eprintln!("soak: no full mesh within {HEAL:?} after {what}");
    }
    r.is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let minutes = value("--minutes").unwrap_or(60).min(60);
    let seed = value("--seed").unwrap_or(1);
    if !netns::require_root("soak") {
        return;
    }
    let net = Net::new(N).expect("the soak network");
    let mut ds: Vec<Daemon> = (0..N)
        .map(|i| {
            Daemon::start(
                &net,
                i,
                Spec {
                    name: name_on(&net, i),
                    cookie: "soak-test-cookie".into(),
                    toml: format!("{TIMING}{}", static_hosts(&net, 0..N)),
                },
            )
        })
        .collect();
    assert!(healed(&ds, "the start"), "the cluster never formed");
    // Resident memory once formed and settled.
    std::thread::sleep(Duration::from_secs(5)); // let start-up allocations settle
    let rss_start: Vec<Option<u64>> = ds.iter().map(|d| rss_kib(d.pid())).collect();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);
    let mut faults = [0u64; 5];
    let mut unhealed = 0u64;
    let mut restarts = [0u64; N];
    while Instant::now() < until {
        let kind = rng.below(5) as usize;
        let what = match kind {
            0 | 1 => {
                let i = LONG_LIVED + rng.below((N - LONG_LIVED) as u64) as usize;
                if kind == 0 {
                    ds[i].kill9();
                } else {
                    let _ = ds[i].terminate(Duration::from_secs(10));
                }
                std::thread::sleep(rng.millis(0, 3000)); // down for a while
                ds[i].restart(&net);
                restarts[i] += 1;
                format!(
                    "{} of host {i}",
                    if kind == 0 { "kill -9" } else { "SIGTERM" }
                )
            }
            2 => {
                let i = rng.below(N as u64) as usize;
                net.cut(i);
                std::thread::sleep(rng.millis(500, 6000)); // the cut lasts
                net.heal(i);
                format!("a cut of host {i}")
            }
            3 => {
                let mut a = Vec::new();
                let mut b = Vec::new();
                for i in 0..N {
                    if rng.below(2) == 0 {
                        a.push(i)
                    } else {
                        b.push(i)
                    }
                }
                net.partition(&[&a, &b]);
                std::thread::sleep(rng.millis(1000, 8000)); // the partition lasts
                net.join();
                format!("a partition {a:?} | {b:?}")
            }
            _ => {
                let i = rng.below(N as u64) as usize;
                net.set_link(
                    i,
                    Link {
                        loss: 0.2,
                        ..Link::default()
                    },
                );
                std::thread::sleep(rng.millis(2000, 10000)); // the loss lasts
                net.set_link(i, Link::default());
                format!("20 % loss on host {i}")
            }
        };
        faults[kind] += 1;
        if !healed(&ds, &what) {
            unhealed += 1;
        }
        std::thread::sleep(rng.millis(0, 2000)); // calm between faults
    }
    let elapsed = started.elapsed();
    let rss_end: Vec<Option<u64>> = ds.iter().map(|d| rss_kib(d.pid())).collect();
    let records: Vec<fleet::Record> = ds.iter().map(|d| d.observer.record()).collect();
    let events: usize = records.iter().map(|r| r.events.len()).sum();
    let violations: Vec<String> = records
        .iter()
        .flat_map(|r| r.violations.iter().cloned())
        .collect();
    println!("## soak report");
    println!();
    println!("command: cargo bench --bench soak -- --minutes {minutes} --seed {seed}");
    println!(
        "ran {:.1} min with {N} daemons",
        elapsed.as_secs_f64() / 60.0
    );
    println!(
        "faults: {} kill -9, {} SIGTERM, {} cuts, {} partitions, {} loss bursts",
        faults[0], faults[1], faults[2], faults[3], faults[4]
    );
    println!("events seen (all streams): {events}");
    println!("contract violations: {}", violations.len());
    for v in violations.iter().take(20) {
        println!("  {v}");
    }
    println!("heals that timed out: {unhealed}");
    println!();
    println!("| daemon | restarts | RSS at start | RSS at end |");
    println!("|---|---|---|---|");
    for (i, d) in ds.iter().enumerate() {
        let kib =
            |v: Option<u64>| v.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "| {} | {} | {} | {} |",
            d.name(),
            restarts[i],
            kib(rss_start[i]),
            kib(rss_end[i])
        );
    }
    for d in &mut ds {
        d.observer.stop();
    }
    drop(ds);
    drop(net);
    if !violations.is_empty() || unhealed > 0 {
        std::process::exit(1);
    }
}
