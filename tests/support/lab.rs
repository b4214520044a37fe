//! A small network of hosts in network namespaces, for tests with real processes.
//!
//! A [`Lab`] is a Linux bridge with no address and one network namespace per host, each
//! joined to the bridge by a veth pair: inside, host `i` sees `eth0` with `10.78.0.<i+1>/24`
//! and `lo` up. Every lab is its own isolated segment (the bridge has no address and
//! nothing is routed to or from the machine's network), so labs may reuse addresses.
//!
//! - Run code in a host: [`Lab::in_host`] runs a closure on a thread that entered the
//!   host's namespace (sockets it opens and processes it starts live there);
//!   [`Lab::block_on`] runs a future on a current-thread runtime on such a thread.
//! - Partition: [`Lab::cut`] adds blackhole routes between one host and some others, in
//!   both directions, so packets between them are dropped while each still reaches every
//!   other host; [`Lab::heal`] removes them.
//!
//! Everything a lab made is removed when it is dropped, also when a test panics:
//! processes left in its namespaces are killed, then the namespaces and the bridge are
//! deleted. Names carry the process id (`rpe<pid><n>…`); a new lab first removes what
//! labs of processes that no longer run left behind.
//!
//! Needs root and `ip` (iproute2). Tests call [`require_root`] first.
#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

const PREFIX: &str = "rpe";

/// Whether the test may go on: true when running as root. Otherwise prints why it skips
/// and returns false, or panics when `CI=true` (CI must run every test).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    skip_or_fail(
        test,
        &format!(
            "needs root for network namespaces and to run PostgreSQL as its user (euid {euid})"
        ),
    );
    false
}

/// Prints that `test` skips because of `why`, or panics under `CI=true`.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}; CI=true requires this test to run");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// One host.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    veth: String,
}

/// A bridge and a namespace per host. See the module docs.
pub struct Lab {
    id: String,
    bridge: String,
    hosts: Vec<Host>,
    cuts: Mutex<Vec<(usize, usize)>>,
}

/// Runs a program; an error carries its stderr.
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

/// Base 36, fixed width: keeps interface names within Linux's 15 bytes.
fn base36(mut n: u32, width: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = vec![b'0'; width];
    for slot in s.iter_mut().rev() {
        *slot = digits[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(s).unwrap_or_default()
}

fn owner_pid(name: &str) -> Option<u32> {
    u32::from_str_radix(name.strip_prefix(PREFIX)?.get(..5)?, 36).ok()
}

fn kill_processes_in(ns: &str) {
    for pid in output("ip", &["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Removes namespaces and links left by labs whose process is gone.
fn remove_stale() {
    let gone = |name: &str| {
        owner_pid(name).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in output("ip", &["netns", "list"]).lines() {
        if let Some(ns) = line.split_whitespace().next()
            && gone(ns)
        {
            kill_processes_in(ns);
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
    for line in output("ip", &["-o", "link", "show"]).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if gone(name) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

/// Enters the network namespace `ns` on the calling thread.
fn enter(ns: &str) -> io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns is called with a valid namespace fd; it only changes this thread's
    // network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Lab {
    /// A lab with `hosts` hosts.
    pub fn new(hosts: usize) -> io::Result<Lab> {
        static STALE: Once = Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        STALE.call_once(remove_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}{}", base36(std::process::id(), 5), base36(n, 2));
        let lab = Lab {
            bridge: format!("{id}br"),
            id,
            hosts: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        // A dead process with our pid may have left it behind.
        let _ = run("ip", &["link", "del", &lab.bridge]);
        run("ip", &["link", "add", &lab.bridge, "type", "bridge"])?;
        run("ip", &["link", "set", &lab.bridge, "up"])?;
        let mut lab = lab;
        for _ in 0..hosts {
            lab.add_host()?;
        }
        Ok(lab)
    }

    /// Adds a host; returns its index.
    pub fn add_host(&mut self) -> io::Result<usize> {
        let i = self.hosts.len();
        assert!(i < 200, "a lab holds at most 200 hosts");
        let host = Host {
            ns: format!("{}h{i}", self.id),
            ip: Ipv4Addr::new(10, 78, 0, i as u8 + 1),
            veth: format!("{}v{i}", self.id),
        };
        let inner = format!("{}i{i}", self.id);
        let _ = run("ip", &["netns", "del", &host.ns]);
        run("ip", &["netns", "add", &host.ns])?;
        // Pushed now so that Drop removes it even if a step below fails.
        self.hosts.push(host.clone());
        run(
            "ip",
            &[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &host.veth, "master", &self.bridge])?;
        run("ip", &["link", "set", &host.veth, "up"])?;
        run(
            "ip",
            &["link", "set", &inner, "netns", &host.ns, "name", "eth0"],
        )?;
        let ns = &host.ns;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(i)
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Runs `f` on a thread in host `i`'s namespace and returns what it returns (a panic
    /// in `f` is passed on).
    pub fn in_host<R: Send>(&self, i: usize, f: impl FnOnce() -> R + Send) -> R {
        let ns = self.hosts[i].ns.clone();
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                enter(&ns).unwrap_or_else(|e| panic!("cannot enter namespace {ns}: {e}"));
                f()
            });
            match t.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Runs `fut` to completion on a current-thread runtime in host `i`'s namespace.
    pub fn block_on<F: Future + Send>(&self, i: usize, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        self.in_host(i, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(fut)
        })
    }

    fn blackhole(&self, add: bool, a: usize, b: usize) -> io::Result<()> {
        let verb = if add { "add" } else { "del" };
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", self.hosts[to].ip);
            run(
                "ip",
                &["-n", &self.hosts[from].ns, "route", verb, "blackhole", &dst],
            )?;
        }
        Ok(())
    }

    /// Drops every packet between host `i` and each of `others`, both ways.
    pub fn cut(&self, i: usize, others: &[usize]) -> io::Result<()> {
        for &j in others {
            self.blackhole(true, i, j)?;
            self.cuts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((i, j));
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> io::Result<()> {
        let cuts = std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, j) in cuts {
            self.blackhole(false, i, j)?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_processes_in(&h.ns);
        }
        for h in &self.hosts {
            let _ = run("ip", &["link", "del", &h.veth]);
            let _ = run("ip", &["netns", "del", &h.ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
