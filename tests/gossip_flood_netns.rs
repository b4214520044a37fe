//! A gossip flood from forged source addresses, as an attacker on the link would send it:
//! three `rallypoint run` daemons gossip in network namespaces on one bridge, and a
//! fourth host sends them packets that look like heartbeats (the right version, the
//! right size, sealed with a key nobody has) from 10,000 spoofed source addresses, with a
//! raw socket. Each daemon must log at most the per-reason warning budget, count every
//! packet in `/metrics`, and keep its peers.
//!
//! Needs root; without it the test prints why it skips, and fails under `CI=true`.
//! Everything it starts dies with the lab (its namespaces' processes are killed when it
//! is dropped, also when the test fails), and each daemon is killed when its handle is.

#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use netns::{Lab, require_root};
use rallypoint::strategies::gossip::{WARN_BURST, packet};

const BIN: &str = env!("CARGO_BIN_EXE_rallypoint");
const DEADLINE: Duration = Duration::from_secs(30);
const GROUP: Ipv4Addr = rallypoint::DEFAULT_GOSSIP_GROUP;
const PORT: u16 = rallypoint::DEFAULT_GOSSIP_PORT;
const HTTP: &str = "127.0.0.1:45894";
/// The daemons' hosts; the attacker is the next one.
const DAEMONS: usize = 3;
/// Distinct forged source addresses, in 10.99.0.0/16.
const SOURCES: u32 = 10_000;
/// Each source sends this many packets.
const ROUNDS: u32 = 2;
/// Packets sent before the sender waits for every daemon to have read them all: small
/// enough that a socket's receive buffer always holds a burst, so none is lost and every
/// one must be counted.
const BURST: u32 = 50;

/// A daemon in a namespace, killed when dropped (also when the test fails).
struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_daemon(lab: &Lab, i: usize, dir: &Path) -> Daemon {
    let ip = lab.host(i).ip;
    let name = format!("n{i}@{ip}");
    let config = dir.join(format!("n{i}.toml"));
    let toml = format!(
        "name = \"{name}\"\ncluster_addr = \"{ip}:45893\"\nhttp_addr = \"{HTTP}\"\n\
         log_format = \"json\"\n{}\n[topologies.lan]\nstrategy = \"gossip\"\n\
         interval = \"200ms\"\n",
        include_str!("support/fast_membership.toml")
    );
    std::fs::write(&config, toml).expect("config file");
    let log = dir.join(format!("n{i}.log"));
    let child = lab
        .command(i, BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RALLYPOINT_COOKIE", "flood test cookie")
        .env("HOME", dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .expect("spawn rallypoint run");
    Daemon { child, name, log }
}

/// `GET path` from the daemon on host `i` (its API listens on that host's loopback);
/// the body of a 200 answer, `None` otherwise.
fn http_get(lab: &Lab, i: usize, path: &str) -> Option<String> {
    let path = path.to_owned();
    lab.spawn_in(i, move || {
        let addr: SocketAddr = HTTP.parse().ok()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {HTTP}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    })
    .join()
    .ok()
    .flatten()
}

/// The value of `metric{labels}` in a Prometheus text answer.
fn metric(text: &str, metric: &str, labels: &str) -> Option<u64> {
    let key = format!("{metric}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// What one scrape of a daemon's `/metrics` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scrape {
    rejected_auth: u64,
    accepted: u64,
    nodedown: u64,
    gossip_peers: u64,
    members: u64,
}

fn scrape(lab: &Lab, i: usize) -> Option<Scrape> {
    let text = http_get(lab, i, "/metrics")?;
    let gossip = |result: &str| {
        metric(
            &text,
            "rallypoint_gossip_packets_total",
            &format!("result=\"{result}\""),
        )
    };
    Some(Scrape {
        rejected_auth: gossip("rejected_auth").unwrap_or(0),
        accepted: gossip("accepted").unwrap_or(0),
        nodedown: metric(&text, "rallypoint_events_total", "kind=\"nodedown\"").unwrap_or(0),
        gossip_peers: metric(&text, "rallypoint_discovered_peers", "topology=\"lan\"")?,
        members: text
            .lines()
            .find_map(|l| l.strip_prefix("rallypoint_members "))
            .and_then(|v| v.trim().parse::<f64>().ok())? as u64,
    })
}

/// Scrapes daemon `i` until `ok` holds, or fails at the deadline with its log.
fn wait_scrape(
    lab: &Lab,
    d: &Daemon,
    i: usize,
    what: &str,
    ok: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = scrape(lab, i);
        if let Some(s) = s.filter(&ok) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{}: timed out waiting for {what}; last scrape {s:?}; log (tail):\n{}",
            d.name,
            tail(&d.log(), 20)
        );
        // A poll of the daemon's API, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `drops` and `rx_queue` (bytes waiting) of the gossip sockets of process `pid`'s
/// network namespace, from `/proc/PID/net/udp`.
fn gossip_socket_queue(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    let port = format!(":{PORT:04X}");
    let (mut queued, mut drops) = (0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 || !f[1].ends_with(&port) {
            continue;
        }
        // "tx_queue:rx_queue", in hex.
        if let Some((_, rx)) = f[4].split_once(':') {
            queued += u64::from_str_radix(rx, 16).unwrap_or(0);
        }
        drops += f[f.len() - 1].parse::<u64>().unwrap_or(0);
    }
    (queued, drops)
}

/// An IPv4 + UDP datagram from `src` to the gossip group, with `payload`, for a raw
/// socket with IP_HDRINCL (the kernel fills in the header checksum and the total
/// length; a UDP checksum of 0 means none).
fn forged_datagram(src: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut d = Vec::with_capacity(total);
    d.extend_from_slice(&[0x45, 0]);
    d.extend_from_slice(&(total as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0, 0x40, 0]); // id (filled in), don't fragment
    d.extend_from_slice(&[1, libc::IPPROTO_UDP as u8, 0, 0]); // TTL 1, UDP, checksum
    d.extend_from_slice(&src.ip().octets());
    d.extend_from_slice(&GROUP.octets());
    d.extend_from_slice(&src.port().to_be_bytes());
    d.extend_from_slice(&PORT.to_be_bytes());
    d.extend_from_slice(&(udp_len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

/// The dropped-packet warnings in a daemon's JSON log, by reason.
fn drop_warnings(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .filter_map(|v| {
            let msg = v["fields"]["message"].as_str()?.to_owned();
            msg.starts_with("dropped a gossip packet").then(|| {
                let reason = v["fields"]["reason"].as_str().unwrap_or("").to_owned();
                (reason, msg)
            })
        })
        .collect()
}

#[test]
fn a_flood_from_10000_forged_sources_gives_a_few_warnings_counts_every_packet_and_keeps_the_mesh() {
    if !require_root("a_flood_from_10000_forged_sources_gives_a_few_warnings") {
        return;
    }
    let lab = Lab::new(DAEMONS + 1).expect("lab");
    let attacker = DAEMONS;
    // The forged sources look like neighbours on the link (an on-link route), so that
    // reverse-path filtering, whatever this machine's default, lets them in.
    for h in &lab.hosts()[..DAEMONS] {
        netns::ip(&[
            "netns",
            "exec",
            &h.ns,
            "ip",
            "route",
            "add",
            "10.99.0.0/16",
            "dev",
            h.dev,
        ])
        .expect("route for the forged sources");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let daemons: Vec<Daemon> = (0..DAEMONS)
        .map(|i| start_daemon(&lab, i, dir.path()))
        .collect();
    let peers = (DAEMONS - 1) as u64;
    let before: Vec<Scrape> = (daemons.iter().enumerate())
        .map(|(i, d)| {
            wait_scrape(&lab, d, i, "a full mesh", |s| {
                s.members == peers && s.gossip_peers == peers && s.accepted >= 10
            })
        })
        .collect();

    // The flood, from the attacker's host.
    let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
    let queued = pids.clone();
    let flood = lab.spawn_in(attacker, move || -> Result<(u32, Duration, u64), String> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| format!("raw socket: {e}"))?;
        let dest = SockAddr::from(SocketAddrV4::new(GROUP, 0));
        let drops_before: u64 = queued.iter().map(|p| gossip_socket_queue(*p).1).sum();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut payload = [0u8; 80];
        let t0 = Instant::now();
        let mut sent = 0u32;
        for _round in 0..ROUNDS {
            for k in 1..=SOURCES {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 0, 0)) + k);
                let src = SocketAddrV4::new(ip, 40_000 + (k % 20_000) as u16);
                // The right version and size; the nonce and "ciphertext" are noise.
                for b in payload.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                payload[0] = packet::VERSION;
                sock.send_to(&forged_datagram(src, &payload), &dest)
                    .map_err(|e| format!("send from {src}: {e}"))?;
                sent += 1;
                if sent.is_multiple_of(BURST) {
                    // Wait (with a deadline) until every daemon has read the burst.
                    let end = Instant::now() + DEADLINE;
                    while queued.iter().any(|p| gossip_socket_queue(*p).0 > 0) {
                        if Instant::now() > end {
                            return Err(format!(
                                "daemons still had packets queued after {DEADLINE:?}"
                            ));
                        }
                        std::thread::yield_now();
                    }
                }
            }
        }
        let took = t0.elapsed();
        let drops_after: u64 = queued.iter().map(|p| gossip_socket_queue(*p).1).sum();
        Ok((sent, took, drops_after - drops_before))
    });
    let (sent, took, drops) = flood
        .join()
        .expect("flood thread")
        .unwrap_or_else(|e| panic!("flood: {e}"));
    let rate = f64::from(sent) / took.as_secs_f64();
    eprintln!(
        "flood: {sent} forged packets from {SOURCES} source addresses to {DAEMONS} daemons in {took:.2?} ({rate:.0} packets/s), {drops} dropped by the sockets"
    );
    assert_eq!(drops, 0, "the flow control kept every packet");

    for (i, d) in daemons.iter().enumerate() {
        // Every packet counted (the counters reach the metrics at the next heartbeat).
        let want = before[i].rejected_auth + u64::from(sent);
        let after = wait_scrape(&lab, d, i, "every forged packet counted", |s| {
            s.rejected_auth >= want
        });
        let log = d.log();
        let warnings = drop_warnings(&log);
        eprintln!(
            "{}: {} dropped-packet warnings, log {} lines, {} bytes",
            d.name,
            warnings.len(),
            log.lines().count(),
            log.len()
        );
        assert_eq!(after.rejected_auth, want, "{}: {after:?}", d.name);
        // The mesh stayed: the same members, no nodedown, both peers still heard.
        assert_eq!(after.nodedown, before[i].nodedown, "{}: {after:?}", d.name);
        assert_eq!(after.members, peers, "{}: {after:?}", d.name);
        assert_eq!(after.gossip_peers, peers, "{}: {after:?}", d.name);
        assert!(after.accepted > before[i].accepted, "{}: {after:?}", d.name);
        // A few warnings, all for the one reason, whatever the number of sources.
        assert!(
            warnings.len() <= WARN_BURST as usize,
            "{}: {} warnings, over the budget of {WARN_BURST}; first ones: {:#?}",
            d.name,
            warnings.len(),
            &warnings[..warnings.len().min(10)]
        );
        assert!(
            !warnings.is_empty(),
            "{}: the flood is warned about",
            d.name
        );
        assert!(
            (warnings.iter())
                .all(|(r, m)| r == "gossip_rejected_auth" && m.contains("from 10.99.")),
            "{}: {warnings:#?}",
            d.name
        );
    }
}
