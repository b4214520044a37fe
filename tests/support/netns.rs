//! Hosts in network namespaces, for tests across hosts.
//!
//! A [`Lab`] is a Linux bridge and one network namespace per host, each joined to the
//! bridge by a veth pair: inside, the host sees `eth0` with `10.77.<lab>.<i+1>/24`, `lo`
//! up, and a route for multicast (`224.0.0.0/4 dev eth0`); IPv6 link-local addresses come
//! up without duplicate-address detection, so they are usable at once. Nothing is routed
//! to or from the machine's own network: the bridge has no address.
//!
//! - Run code on a host: [`Lab::spawn_in`] starts a thread that enters the host's
//!   namespace (sockets it opens live there) and runs a closure; [`Lab::block_on_in`]
//!   does the same with a current-thread tokio runtime.
//! - Run a program on a host: [`Lab::command`] (`ip netns exec <ns> program`).
//! - Cut a host off and restore it: [`Lab::cut`] / [`Lab::heal`] set the bridge side of
//!   its veth down / up.
//!
//! Everything a lab made is removed when it is dropped, also when a test panics:
//! processes left in its namespaces are killed, then the namespaces, veths and the bridge
//! are deleted. Names carry the process id (`rpt<pid><n>…`), and a new lab first removes
//! what labs of processes that no longer run left behind.
//!
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2. Tests call
//! [`require_root`] first: without root they print why they skip and return, but under
//! `CI=true` they fail instead.
#![allow(dead_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// Whether the test may go on: true when running as root. Otherwise prints the reason
/// and returns false, or panics when `CI=true` (CI must run every test).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let msg = format!("{test}: needs root to create network namespaces (euid {euid})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true requires this test to run");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// One host of a lab.
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace's name (`ip netns exec <ns> …`).
    pub ns: String,
    /// The host's IPv4 address on the lab's network.
    pub ip: Ipv4Addr,
    /// The bridge-side end of its veth: set it down to cut the host off.
    pub veth: String,
    /// The interface inside the namespace.
    pub dev: &'static str,
}

/// A bridge and a namespace per host. See the module docs.
pub struct Lab {
    id: String,
    bridge: String,
    subnet: u8,
    hosts: Vec<Host>,
}

/// The prefix of every namespace and link name (then the owning process id, base 36).
pub const PREFIX: &str = "rpt";

/// Runs `ip` with these arguments; an error carries its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Base-36, fixed width: keeps interface names within Linux's 15 bytes.
pub fn base36(mut n: u32, width: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = vec![b'0'; width];
    for slot in s.iter_mut().rev() {
        *slot = digits[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(s).unwrap_or_default()
}

fn pid_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.get(..5)?;
    u32::from_str_radix(digits, 36).ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links of labs whose process is gone.
pub fn remove_stale() {
    for line in output("ip", &["netns", "list"]).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = pid_of(ns)
            && !process_alive(pid)
        {
            kill_processes(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for line in output("ip", &["-o", "link", "show"]).lines() {
        // "7: rpt0abcd01b@if6: <…"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(pid) = pid_of(name)
            && !process_alive(pid)
        {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Kills every process left in network namespace `ns`.
pub fn kill_processes(ns: &str) {
    for pid in output("ip", &["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Lab {
    /// A lab with `hosts` hosts, ready to use.
    pub fn new(hosts: usize) -> io::Result<Lab> {
        static STALE: Once = Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        STALE.call_once(remove_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}{}", base36(std::process::id(), 5), base36(n, 2));
        let mut lab = Lab {
            bridge: format!("{id}br"),
            subnet: (n % 250) as u8,
            id,
            hosts: Vec::new(),
        };
        // A previous process with our pid may have left these behind.
        let _ = ip(&["link", "del", &lab.bridge]);
        ip(&[
            "link",
            "add",
            &lab.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for _ in 0..hosts {
            lab.add_host()?;
        }
        Ok(lab)
    }

    /// Adds a host; returns its index.
    pub fn add_host(&mut self) -> io::Result<usize> {
        let i = self.hosts.len();
        assert!(i < 250, "a lab holds at most 250 hosts");
        let host = Host {
            ns: format!("{}-h{i}", self.id),
            ip: Ipv4Addr::new(10, 77, self.subnet, i as u8 + 1),
            veth: format!("{}v{i}", self.id),
            dev: "eth0",
        };
        let _ = ip(&["netns", "del", &host.ns]);
        let _ = ip(&["link", "del", &host.veth]);
        // Recorded first, so that Drop removes it even if a later step fails.
        self.hosts.push(host.clone());
        let ns = host.ns.as_str();
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", host.dev, "netns", ns,
        ])?;
        ip(&["link", "set", &host.veth, "master", &self.bridge, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            ip(&all)
        };
        // Best effort: without IPv6 there is nothing to turn off.
        let _ = exec(&[
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad",
        ]);
        exec(&["ip", "link", "set", "lo", "up"])?;
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            host.dev,
        ])?;
        exec(&["ip", "link", "set", host.dev, "up"])?;
        exec(&["ip", "route", "add", "224.0.0.0/4", "dev", host.dev])?;
        Ok(i)
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The lab network's broadcast address (`10.77.<lab>.255`).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 255)
    }

    /// Cuts host `i` off the network (its veth's bridge side goes down). Its sockets
    /// stay open; packets to and from it are lost.
    pub fn cut(&self, i: usize) -> io::Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "down"])
    }

    /// Puts host `i` back on the network.
    pub fn heal(&self, i: usize) -> io::Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "up"])
    }

    /// A command that runs `program` on host `i` (`ip netns exec <ns> program`). Whatever
    /// it starts is killed when the lab is dropped.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns, program]);
        c
    }

    /// Starts a thread on host `i`: it enters the host's network namespace, then runs
    /// `f`. Sockets `f` opens (and the threads it starts) live on that host.
    pub fn spawn_in<T, F>(&self, i: usize, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        spawn_in_ns(&self.hosts[i].ns, &format!("host-{i}"), f)
    }

    /// Starts a thread on host `i` that runs the future `f()` on a current-thread tokio
    /// runtime (made after entering the namespace, so all its I/O is on that host).
    pub fn block_on_in<T, Fut, F>(&self, i: usize, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T>,
        F: FnOnce() -> Fut + Send + 'static,
    {
        block_on_in_ns(&self.hosts[i].ns, &format!("host-{i}"), f)
    }
}

/// Starts a thread named `name` that enters network namespace `ns`, then runs `f`.
pub fn spawn_in_ns<T, F>(ns: &str, name: &str, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            enter(&ns).unwrap_or_else(|e| panic!("cannot enter namespace {ns}: {e}"));
            f()
        })
        .expect("spawn a host thread")
}

/// Starts a thread in network namespace `ns` that runs the future `f()` on a
/// current-thread tokio runtime (made after entering, so all its I/O is there).
pub fn block_on_in_ns<T, Fut, F>(ns: &str, name: &str, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T>,
    F: FnOnce() -> Fut + Send + 'static,
{
    spawn_in_ns(ns, name, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(f())
    })
}

/// Moves the calling thread into the named network namespace.
pub fn enter(ns: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns is given an open namespace file descriptor; it only changes the
    // calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_processes(&h.ns);
        }
        for h in &self.hosts {
            let _ = ip(&["link", "del", &h.veth]);
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
