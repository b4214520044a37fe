//! Hosts on a switch that the test controls frame by frame: cuts, partitions, loss,
//! delay and jitter, without any kernel queueing discipline (this machine's kernel has
//! no `netem`).
//!
//! A [`Net`] is one network namespace per host. Inside, host `i` has `eth0`, a TAP
//! device, with `10.<net>.<i / 250>.<i % 250 + 1>/16`, `lo` up and a route for multicast;
//! the test process holds the other end of every TAP device, and a switch thread moves
//! Ethernet frames between them: it learns which port each MAC address is behind,
//! floods broadcast, multicast and unknown destinations, and applies each host's
//! [`Link`] to every frame that host sends:
//!
//! - `up = false`: the host's cable is pulled. Nothing it sends leaves, nothing reaches
//!   it; its interface keeps its carrier, so only silence tells its programs.
//! - a partition ([`Net::partition`]): frames cross only between hosts of one group;
//! - `loss`: each frame is dropped with that probability;
//! - `delay` ± `jitter`: each frame is held that long (uniformly spread over the
//!   jitter), so frames may overtake each other, as on `netem`.
//!
//! A frame from A to B is subject to A's link only (as `netem` on every host's egress).
//! Everything is removed when the `Net` is dropped, also when a test panics: processes
//! left in its namespaces are killed, the switch stops, the namespaces are deleted.
//! Namespace names carry the process id (as [`crate::netns`]'s do), so a later run
//! removes what a killed one left behind.
#![allow(dead_code)]

use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{self, base36, ip, kill_processes};

/// What one host's link does to the frames it sends (and, when down, receives).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Whether the cable is in.
    pub up: bool,
    /// The probability that a frame is lost, 0.0–1.0.
    pub loss: f64,
    /// How long each frame is held.
    pub delay: Duration,
    /// The most a frame's delay differs from `delay`, either way.
    pub jitter: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            up: true,
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// One host.
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace (`ip netns exec <ns> …`).
    pub ns: String,
    /// The host's address.
    pub ip: Ipv4Addr,
}

/// What the switch counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Frames read from the hosts.
    pub frames: u64,
    /// Copies of frames written to hosts.
    pub delivered: u64,
    /// Copies dropped by a cut link or a partition.
    pub blocked: u64,
    /// Copies dropped as loss.
    pub lost: u64,
}

struct Control {
    links: Vec<Link>,
    /// The partition group of each host; frames cross only within a group.
    groups: Vec<u32>,
    counts: Counts,
}

/// Hosts on a switch. See the module docs.
pub struct Net {
    hosts: Vec<Host>,
    control: Arc<Mutex<Control>>,
    stop: Arc<AtomicBool>,
    switch: Option<JoinHandle<()>>,
}

/// `_IOW('T', 202, int)`: attach this file to a TUN/TAP device.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Opens a TAP device named `eth0` in the calling thread's network namespace.
fn open_tap() -> io::Result<OwnedFd> {
    // SAFETY: a plain open of a device file; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name (16 bytes), then the flags (a short) in a 24-byte union.
    let mut ifr = [0u8; 40];
    ifr[..4].copy_from_slice(b"eth0");
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is laid out as.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn in_ns(ns: &str, args: &[&str]) -> io::Result<()> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    ip(&all)
}

impl Net {
    /// A net of `hosts` hosts, cables in, no impairment.
    pub fn new(hosts: usize) -> io::Result<Net> {
        static STALE: Once = Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        STALE.call_once(netns::remove_stale);
        assert!(hosts <= 2000, "at most 2,000 hosts");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}{}{}",
            netns::PREFIX,
            base36(std::process::id(), 5),
            base36(n, 2)
        );
        let subnet = 100 + (n % 100) as u8;
        let mut net = Net {
            hosts: Vec::new(),
            control: Arc::new(Mutex::new(Control {
                links: Vec::new(),
                groups: Vec::new(),
                counts: Counts::default(),
            })),
            stop: Arc::new(AtomicBool::new(false)),
            switch: None,
        };
        let mut taps = Vec::new();
        for i in 0..hosts {
            let host = Host {
                ns: format!("{id}-s{i}"),
                ip: Ipv4Addr::new(10, subnet, (i / 250) as u8, (i % 250) as u8 + 1),
            };
            let _ = ip(&["netns", "del", &host.ns]);
            // Recorded first, so that Drop removes it even if a later step fails.
            net.hosts.push(host.clone());
            ip(&["netns", "add", &host.ns])?;
            let tap = netns::spawn_in_ns(&host.ns, "tap", open_tap)
                .join()
                .map_err(|_| io::Error::other("the TAP thread panicked"))??;
            taps.push(tap);
            let ns = host.ns.as_str();
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/16", host.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns(ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(ns, &["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            let mut c = net.control.lock().unwrap_or_else(|p| p.into_inner());
            c.links.push(Link::default());
            c.groups.push(0);
        }
        let control = net.control.clone();
        let stop = net.stop.clone();
        net.switch = Some(
            std::thread::Builder::new()
                .name("switch".into())
                .spawn(move || switch(taps, control, stop))?,
        );
        Ok(net)
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Control) -> T) -> T {
        f(&mut self.control.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Host `i`'s link.
    pub fn link(&self, i: usize) -> Link {
        self.with(|c| c.links[i])
    }

    /// Sets host `i`'s link.
    pub fn set_link(&self, i: usize, link: Link) {
        self.with(|c| c.links[i] = link);
    }

    /// Sets every host's link.
    pub fn set_all_links(&self, link: Link) {
        self.with(|c| c.links.iter_mut().for_each(|l| *l = link));
    }

    /// Pulls host `i`'s cable.
    pub fn cut(&self, i: usize) {
        self.with(|c| c.links[i].up = false);
    }

    /// Plugs host `i`'s cable back in.
    pub fn heal(&self, i: usize) {
        self.with(|c| c.links[i].up = true);
    }

    /// Splits the hosts into groups that cannot reach each other; hosts in no group form
    /// one more group.
    pub fn partition(&self, groups: &[&[usize]]) {
        self.with(|c| {
            c.groups.iter_mut().for_each(|g| *g = 0);
            for (k, group) in groups.iter().enumerate() {
                for &i in *group {
                    c.groups[i] = k as u32 + 1;
                }
            }
        });
    }

    /// Ends every partition.
    pub fn join(&self) {
        self.with(|c| c.groups.iter_mut().for_each(|g| *g = 0));
    }

    /// What the switch counted so far.
    pub fn counts(&self) -> Counts {
        self.with(|c| c.counts)
    }

    /// A command that runs `program` on host `i` (`ip netns exec <ns> program`).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns, program]);
        c
    }

    /// Starts a thread on host `i` that runs the future `f()` on a current-thread tokio
    /// runtime made after entering the host's namespace (its sockets live there).
    pub fn block_on_in<T, Fut, F>(&self, i: usize, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T>,
        F: FnOnce() -> Fut + Send + 'static,
    {
        netns::block_on_in_ns(&self.hosts[i].ns, &format!("host-{i}"), f)
    }

    /// Starts a thread on host `i` that runs `f` there.
    pub fn spawn_in<T, F>(&self, i: usize, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        netns::spawn_in_ns(&self.hosts[i].ns, &format!("host-{i}"), f)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_processes(&h.ns);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.switch.take() {
            let _ = t.join();
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
    }
}

/// A frame waiting out its delay.
struct Held {
    at: Instant,
    seq: u64,
    port: usize,
    frame: Arc<Vec<u8>>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    // The earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A small xorshift generator: loss and jitter need no more, and a fixed seed per run
/// keeps the switch free of outside dependencies.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn write_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: writes `frame.len()` bytes from a valid buffer to an open descriptor. A
    // full queue or a host that is gone loses the frame, as a switch would.
    let _ = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
}

fn switch(taps: Vec<OwnedFd>, control: Arc<Mutex<Control>>, stop: Arc<AtomicBool>) {
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut buf = vec![0u8; 65536];
    let mut fds: Vec<libc::pollfd> = taps
        .iter()
        .map(|t| libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.peek().is_some_and(|h| h.at <= now) {
            if let Some(h) = held.pop() {
                // Cut while it was on the wire: lost.
                let up = control.lock().map(|c| c.links[h.port].up).unwrap_or(true);
                if up {
                    write_frame(&taps[h.port], &h.frame);
                }
            }
        }
        let wait = held
            .peek()
            .map(|h| h.at.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let ms = wait.as_millis() as libc::c_int;
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            continue;
        }
        for src in 0..taps.len() {
            if fds[src].revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: reads into a buffer of `buf.len()` bytes from an open descriptor.
                let r = unsafe {
                    libc::read(taps[src].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if r <= 0 {
                    break;
                }
                let frame = &buf[..r as usize];
                if frame.len() < 14 {
                    continue;
                }
                let mut dst_mac = [0u8; 6];
                dst_mac.copy_from_slice(&frame[..6]);
                let mut src_mac = [0u8; 6];
                src_mac.copy_from_slice(&frame[6..12]);
                if src_mac[0] & 1 == 0 {
                    macs.insert(src_mac, src);
                }
                let targets: Vec<usize> = match macs.get(&dst_mac) {
                    Some(&p) if dst_mac[0] & 1 == 0 => vec![p],
                    _ => (0..taps.len()).filter(|&p| p != src).collect(),
                };
                let Ok(mut c) = control.lock() else { return };
                c.counts.frames += 1;
                let link = c.links[src];
                let shared = Arc::new(frame.to_vec());
                for dst in targets {
                    if dst == src {
                        continue;
                    }
                    if !link.up || !c.links[dst].up || c.groups[src] != c.groups[dst] {
                        c.counts.blocked += 1;
                        continue;
                    }
                    if link.loss > 0.0 && rng.unit() < link.loss {
                        c.counts.lost += 1;
                        continue;
                    }
                    c.counts.delivered += 1;
                    if link.delay.is_zero() && link.jitter.is_zero() {
                        write_frame(&taps[dst], frame);
                        continue;
                    }
                    let spread = link.jitter.as_secs_f64() * (2.0 * rng.unit() - 1.0);
                    let d = (link.delay.as_secs_f64() + spread).max(0.0);
                    seq += 1;
                    held.push(Held {
                        at: Instant::now() + Duration::from_secs_f64(d),
                        seq,
                        port: dst,
                        frame: shared.clone(),
                    });
                }
            }
        }
    }
}
