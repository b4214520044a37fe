//! A throwaway PostgreSQL server from the installed binaries.
//!
//! [`Postgres::start`] makes a temporary directory owned by the `postgres` user (initdb
//! and postgres refuse to run as root), runs `initdb` there as that user, and starts
//! `postgres` as that user listening on the given address and port, with its unix socket
//! in the same directory. It returns once the server logged that it accepts connections
//! and `pg_isready` agrees, or fails after a deadline with the server's log. Dropping it
//! stops the server (fast shutdown, then SIGKILL after a deadline) and removes the
//! directory, also when a test panics.
//!
//! The binaries are looked up in `$PG_BIN`, else in the highest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout; `scripts/setup.sh` installs
//! them). Call [`Postgres::start`] on a thread in the network namespace the server
//! should live in: the server process inherits it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Where the PostgreSQL binaries are, if installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("postgres").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> Option<(u32, u32)> {
    let name = c"postgres";
    // SAFETY: getpwnam takes a valid C string; the returned record is read at once,
    // before any other call that could overwrite it.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// Why a server could not be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The binaries or the `postgres` user are missing: install PostgreSQL.
    NotInstalled(String),
    /// It is installed but did not start.
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotInstalled(s) | Unavailable::Failed(s) => f.write_str(s),
        }
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The address it listens on.
    pub listen: IpAddr,
    /// Its port.
    pub port: u16,
    /// Whether commits wait for the disk (`fsync`, `synchronous_commit`). Off makes
    /// tests quicker; benchmarks that report throughput turn it on.
    pub durable: bool,
}

/// A running server. See the module docs.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    /// Its address.
    pub host: IpAddr,
    /// Its port.
    pub port: u16,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Postgres {
    /// Initialises and starts a server. See the module docs.
    pub fn start(opts: Options) -> Result<Postgres, Unavailable> {
        let bin = bin_dir().ok_or_else(|| {
            Unavailable::NotInstalled(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres; \
                 scripts/setup.sh installs it)"
                    .into(),
            )
        })?;
        let (uid, gid) = postgres_user().ok_or_else(|| {
            Unavailable::NotInstalled("there is no `postgres` user to run PostgreSQL as".into())
        })?;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Unavailable::Failed(format!("{what}: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("rallypoint-pg-")
            .tempdir()
            .map_err(|e| fail("cannot make a temporary directory", &e))?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .map_err(|e| fail("cannot give the directory to postgres", &e))?;
        let data = dir.path().join("data");
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail("cannot run initdb", &e))?;
        if !out.status.success() {
            return Err(Unavailable::Failed(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // Clients come from other hosts of the test's own network: trust them.
        let hba = data.join("pg_hba.conf");
        let mut conf =
            std::fs::read_to_string(&hba).map_err(|e| fail("cannot read pg_hba.conf", &e))?;
        conf.push_str("\nhost all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, conf).map_err(|e| fail("cannot write pg_hba.conf", &e))?;
        let durable = if opts.durable { "on" } else { "off" };
        let mut child = Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &opts.port.to_string()])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", &format!("listen_addresses={}", opts.listen)])
            .args(["-c", &format!("fsync={durable}")])
            .args(["-c", &format!("synchronous_commit={durable}")])
            .args(["-c", &format!("full_page_writes={durable}")])
            .args(["-c", "max_connections=300"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail("cannot start postgres", &e))?;
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let (lines, cv) = &*log;
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    cv.notify_all();
                }
            });
        }
        let pg = Postgres {
            child,
            dir,
            host: opts.listen,
            port: opts.port,
            log,
        };
        pg.wait_ready(&bin)?;
        Ok(pg)
    }

    /// Waits for "ready to accept connections" in the log, then for `pg_isready`.
    fn wait_ready(&self, bin: &Path) -> Result<(), Unavailable> {
        let deadline = Instant::now() + START_DEADLINE;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap_or_else(|p| p.into_inner());
        while !guard
            .iter()
            .any(|l| l.contains("ready to accept connections"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Unavailable::Failed(format!(
                    "postgres did not start within {START_DEADLINE:?}:\n{}",
                    guard.join("\n")
                )));
            }
            guard = cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(guard);
        let ok = Command::new(bin.join("pg_isready"))
            .args([
                "-h",
                &self.host.to_string(),
                "-p",
                &self.port.to_string(),
                "-t",
                "10",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(Unavailable::Failed(format!(
                "postgres logged that it is ready but pg_isready disagrees:\n{}",
                self.log_text()
            )))
        }
    }

    /// A connection string for `dbname` as the superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname} connect_timeout=5",
            self.host, self.port
        )
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Its directory (data in `data/`, the socket beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill has no memory-safety preconditions. SIGINT is a fast shutdown.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}
