//! `rallypoint run` at the edges of a process: the cookie as it comes in (too short, a
//! file other users can read, white space around it, a device instead of a file), the
//! signals from the first instant (SIGTERM at spawn, a signal while the configuration is
//! still being read, SIGHUP), and a closed stderr.
//!
//! Every wait has a deadline; nothing sleeps to synchronise. Every process is killed
//! when its guard is dropped, so a failing test leaves none behind.
//! Run: `cargo test --all-features --test process_edges`.
#![cfg(feature = "daemon")]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rallypoint::daemon::client;
use support::daemon::{Daemon, Spec, Watcher};

/// Formation deadline: generous, for a busy machine.
const FORM: Duration = Duration::from_secs(30);
/// How long a stop may take where it used to hang (or used to take 18 GB of reading).
const PROMPT: Duration = Duration::from_secs(10);

/// A child process, killed (SIGKILL) when dropped if it has not exited. A thread
/// waits for it, so its exit is an event to wait for with a deadline.
struct Guard {
    pid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Guard {
    fn new(child: Child) -> Guard {
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child = child;
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        Guard {
            pid,
            exited,
            status: None,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        assert!(
            self.status.is_none(),
            "signal {sig} to a process that exited"
        );
        // SAFETY: kill(2) on our own child, not reaped yet (no status was received).
        let r = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid);
    }

    /// Waits for the process to exit; `None` at the deadline (the drop kills it).
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(within).ok();
        }
        self.status
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.status.is_none() && self.exited.try_recv().is_err() {
            // SAFETY: as in `signal`: the waiting thread has not reaped it.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.exited.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// `rallypoint` with these arguments, in a clean environment (no `RALLYPOINT_*` but
/// `env`, `$HOME` in `home`), stdin and stdout closed, stderr piped.
fn command(args: &[&str], env: &[(&str, &str)], home: &Path) -> Command {
    let mut cmd = support::daemon::command(home);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `rallypoint` to its end, within `within` (else the test fails); returns the
/// status and stderr.
fn run_to_end(args: &[&str], env: &[(&str, &str)], within: Duration) -> (ExitStatus, String) {
    let home = tempfile::tempdir().unwrap();
    let mut child = command(args, env, home.path()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut guard = Guard::new(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        let _ = tx.send(text);
    });
    let status = guard
        .wait_exit(within)
        .unwrap_or_else(|| panic!("rallypoint {args:?} did not finish within {within:?}"));
    let err = rx.recv_timeout(within).expect("stderr read to its end");
    (status, err)
}

/// A config file for a daemon on fresh loopback ports with no peers (and no gossip),
/// with `top` (top-level keys) first.
fn config_file(dir: &Path, top: &str) -> String {
    let path = dir.join("rallypoint.toml");
    let spec = Spec::new("edge");
    std::fs::write(&path, format!("{top}{}", spec.toml())).unwrap();
    path.to_string_lossy().into_owned()
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------- the cookie

#[test]
fn a_one_byte_cookie_is_refused_with_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "");

    let (status, err) = run_to_end(
        &["run", "--config", &config],
        &[("RALLYPOINT_COOKIE", "x")],
        FORM,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains("HTTP API listening"), "{err}");
    assert!(
        err.contains("`cookie`") && err.contains("the environment") && err.contains("1 byte"),
        "{err}"
    );
    assert!(err.contains("at least 16 bytes"), "{err}");
    assert!(
        err.contains("export RALLYPOINT_COOKIE=\"$(head -c 32 /dev/urandom | base64)\""),
        "says how to make one: {err}"
    );

    let cookie = dir.path().join("cookie");
    write_mode(&cookie, b"x\n", 0o600);
    let shown = cookie.to_string_lossy().into_owned();
    let (status, err) = run_to_end(
        &["run", "--config", &config, "--cookie-file", &shown],
        &[],
        FORM,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&shown) && err.contains("1 byte"), "{err}");
    assert!(
        err.contains(&format!("head -c 32 /dev/urandom | base64 > {shown}")),
        "says how to make one: {err}"
    );
}

#[tokio::test]
async fn a_cookie_file_other_users_can_read_gets_one_warning_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    write_mode(&cookie, b"a-cookie-readable-by-all\n", 0o644);
    let shown = cookie.to_string_lossy().into_owned();
    let fix = format!("chmod 600 {shown}");

    let mut spec = Spec::new("exposed");
    spec.args = vec!["--cookie-file".into(), shown.clone()];
    let a = Daemon::start(spec.clone()).await;
    let line = a
        .wait_log("the warning", PROMPT, |l| l.contains(&fix))
        .await;
    assert!(line.contains("WARN") && line.contains("0644"), "{line}");
    let warnings = a.log().lines().filter(|l| l.contains(&fix)).count();
    assert_eq!(warnings, 1, "once: {}", a.log());
    drop(a);

    // Mode 0600: no warning.
    write_mode(&cookie, b"a-cookie-readable-by-all\n", 0o600);
    spec.http_addr = support::ports::free_addr();
    spec.cluster_addr = support::ports::free_addr();
    let b = Daemon::start(spec).await;
    assert!(!b.log().contains("chmod 600"), "{}", b.log());
}

#[tokio::test]
async fn a_cookie_in_a_file_with_unicode_white_space_and_the_same_in_the_environment_cluster() {
    const COOKIE: &str = "the-cookie-with-white-space-around";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cookie");
    write_mode(
        &file,
        format!("\u{3000}\u{a0}\u{b}{COOKIE}\u{b}\u{a0}\u{3000}\n").as_bytes(),
        0o600,
    );
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let mut sa = sa.peers(&[&sb]).cookie("not-this-one-the-flag-wins");
    sa.args = vec!["--cookie-file".into(), file.to_string_lossy().into_owned()];
    let sb = sb.peers(&[&sa]).cookie(COOKIE);
    let a = Daemon::start(sa).await;
    let b = Daemon::start(sb).await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&[b.name()], FORM).await;
    wb.wait_members(&[a.name()], FORM).await;
}

#[test]
fn a_device_or_a_large_file_as_cookie_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "cookie_file = \"/dev/zero\"\n");
    let (status, err) = run_to_end(&["run", "--config", &config], &[], PROMPT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/zero") && err.contains("a character device"),
        "{err}"
    );

    let big = dir.path().join("big");
    write_mode(&big, &vec![b'a'; 1 << 20], 0o600);
    let shown = big.to_string_lossy().into_owned();
    let config = config_file(dir.path(), "");
    let (status, err) = run_to_end(
        &["run", "--config", &config, "--cookie-file", &shown],
        &[],
        PROMPT,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&shown) && err.contains("more than the 4096 bytes"),
        "{err}"
    );

    // `check-config` says the same.
    let (status, err) = run_to_end(&["check-config", "--cookie-file", "/dev/zero"], &[], PROMPT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("a character device"), "{err}");
}

// ---------------------------------------------------------------- signals

/// Whether process `pid` has a handler installed for `sig` (`SigCgt` in
/// `/proc/PID/status`).
fn catches(pid: u32, sig: libc::c_int) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

#[tokio::test]
async fn a_signal_right_at_spawn_stops_the_daemon_promptly() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut d = Daemon::spawn(Spec::new("early"));
        d.signal(sig);
        let status = d.wait_exit(PROMPT).await;
        // Before its handlers are installed the signal kills it; after, it stops
        // (before the node is up, or by leaving): either way, status 0 or the signal.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.success() || status.signal() == Some(sig),
            "signal {sig}: {status:?}; log:\n{}",
            d.log()
        );
    }
}

#[test]
fn a_signal_while_the_configuration_is_still_being_read_stops_at_once_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO nobody writes to: reading the configuration blocks for ever.
    let fifo = dir.path().join("config.toml");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let config = fifo.to_string_lossy().into_owned();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut child = command(&["run", "--config", &config], &[], dir.path())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let mut p = Guard::new(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            let _ = tx.send(text);
        });
        // Wait until the handlers are in place (the process is then stuck on the FIFO).
        let deadline = Instant::now() + PROMPT;
        while !catches(p.pid, sig) {
            assert!(
                Instant::now() < deadline,
                "signal {sig}: no handler installed within {PROMPT:?}"
            );
            // A poll of /proc, which has no event to wait on, bounded by the deadline.
            std::thread::sleep(Duration::from_millis(5));
        }
        p.signal(sig);
        let status = p
            .wait_exit(PROMPT)
            .unwrap_or_else(|| panic!("signal {sig}: still running after {PROMPT:?}"));
        let err = rx.recv_timeout(PROMPT).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "signal {sig}: {status:?}; {err}");
        assert!(
            err.contains("stopped by a signal before the node was up"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn sighup_leaves_gracefully_as_sigterm_does() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let a = Daemon::start(sa.clone().peers(&[&sb])).await;
    let mut b = Daemon::start(sb.clone().peers(&[&sa])).await;
    let mut wa = a.watch().await;
    wa.wait_members(&[b.name()], FORM).await;
    // b must count a as up too, or it has nobody to say goodbye to.
    b.watch().await.wait_members(&[a.name()], FORM).await;

    b.signal(libc::SIGHUP);
    let (_, reason) = wa.wait_down(&sb.name, FORM).await;
    assert_eq!(reason, "left", "peers see `left`, not a closed connection");
    let status = b.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        b.log()
    );
    assert!(b.log().contains("SIGHUP received"), "{}", b.log());
}

// ---------------------------------------------------------------- a closed stderr

#[tokio::test]
async fn with_its_stderr_closed_the_daemon_keeps_running_and_exits_0_on_sigterm() {
    let (sa, sb) = (Spec::new("a"), Spec::new("b"));
    let sa = sa.peers(&[&sb]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rallypoint.toml");
    std::fs::write(&path, sa.toml()).unwrap();
    let config = path.to_string_lossy().into_owned();
    let mut child = command(
        &["run", "--config", &config],
        &[("RALLYPOINT_COOKIE", &sa.cookie)],
        dir.path(),
    )
    .spawn()
    .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut a = Guard::new(child);
    // Read stderr until the daemon is up, then close it (as `| head -3` would).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("HTTP API listening") {
                let _ = tx.send(());
                break;
            }
        }
        // The read end of the pipe is closed here.
    });
    rx.recv_timeout(FORM).expect("a came up");

    // Make a log more: a peer comes up and goes down.
    let mut wa = Watcher::connect(sa.http_addr, &sa.name).await;
    let mut b = Daemon::start(sb.peers(&[&sa])).await;
    wa.wait_up(b.name(), FORM).await;
    b.signal(libc::SIGTERM);
    wa.wait_down(b.name(), FORM).await;
    b.wait_exit(Duration::from_secs(20)).await;

    let health = tokio::time::timeout(PROMPT, client::get(sa.http_addr, "/healthz"))
        .await
        .expect("healthz answered in time")
        .expect("healthz");
    assert_eq!(health.trim(), "ok");
    assert_eq!(a.wait_exit(Duration::ZERO), None, "still running");

    // Leaving logs too, to the closed pipe.
    a.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || a.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("a exited");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
