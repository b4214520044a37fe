//! A TCP proxy between two rallypoint nodes that knows where the sealed transport's
//! records start and end (it cannot read them): it records everything that crosses,
//! and, when armed, tampers with one record in one direction: flips a byte, injects a
//! record of its own, replays one, drops one, or swaps two.
//!
//! The framing it follows (see `src/membership/seal.rs`): each side first sends the
//! 10-byte preamble; then units of a 2-byte big-endian length and that many bytes. From
//! the dialler: `msg1`, then the key confirmation (record 0), then records. From the
//! listener: `msg2` (or a zero length and a one-byte refusal), then records. A stream
//! that does not follow this is forwarded as it comes.
//!
//! The proxy keeps nothing running once dropped: its tasks are aborted.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

/// The length of the plaintext preamble each side sends first.
pub const PREAMBLE_LEN: usize = 10;

/// Which way bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the node that dialled (through the proxy) to the node it reached.
    ToListener,
    /// Back from the listener to the dialler.
    ToDialler,
}

/// What to do to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Flip the lowest bit of the first ciphertext byte.
    Flip,
    /// Send a record of random bytes (same length) before it.
    Inject,
    /// Forward it twice.
    Replay,
    /// Do not forward it.
    Drop,
    /// Hold it, forward the next record, then it.
    Reorder,
    /// Flip the top bit of its length (a 21-byte record claims 32,789).
    FlipLength,
    /// Send three bytes before it: a record of one byte, shorter than any tag.
    InjectShort,
}

/// One tampering, armed in advance: applied to the next record that matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The direction.
    pub dir: Dir,
    /// What to do.
    pub tamper: Tamper,
    /// Only a record whose ciphertext (tag included) is this long; `None`: any record.
    pub only_len: Option<usize>,
}

/// A plan carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Which proxied connection (1, 2, …).
    pub conn: u64,
    /// The plan.
    pub plan: Plan,
    /// The ciphertext length of the record it was applied to.
    pub len: usize,
}

#[derive(Default)]
struct State {
    plan: Option<Plan>,
    applied: Vec<Applied>,
    /// Every byte read from either side, per connection and direction.
    captured: Vec<(u64, Dir, Vec<u8>)>,
    connections: u64,
    /// Records (after the handshake) seen, per direction.
    records: [u64; 2],
}

/// A running proxy: listens on `addr`, connects each connection to `upstream`.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it connects.
    pub upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Receiver<u64>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    /// Starts a proxy on `listen` (which must be free).
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).await.expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (st, tk) = (state.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    drop(inbound);
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let conn = {
                    let mut s = st.lock().unwrap();
                    s.connections += 1;
                    let n = s.connections;
                    s.captured.push((n, Dir::ToListener, Vec::new()));
                    s.captured.push((n, Dir::ToDialler, Vec::new()));
                    n
                };
                tx.send_modify(|n| *n += 1);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let up = tokio::spawn(pump(conn, Dir::ToListener, ri, wo, st.clone(), tx.clone()));
                let down = tokio::spawn(pump(conn, Dir::ToDialler, ro, wi, st.clone(), tx.clone()));
                let mut t = tk.lock().unwrap();
                t.retain(|h| !h.is_finished());
                t.push(up);
                t.push(down);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy {
            addr,
            upstream,
            state,
            changed,
            tasks,
        }
    }

    /// Arms a plan (replacing one not yet carried out).
    pub fn arm(&self, plan: Plan) {
        self.state.lock().unwrap().plan = Some(plan);
    }

    /// The plans carried out so far.
    pub fn applied(&self) -> Vec<Applied> {
        self.state.lock().unwrap().applied.clone()
    }

    /// How many connections it proxied so far.
    pub fn connections(&self) -> u64 {
        self.state.lock().unwrap().connections
    }

    /// Records seen after the handshake, toward the listener and toward the dialler.
    pub fn records(&self) -> [u64; 2] {
        self.state.lock().unwrap().records
    }

    /// Everything read from either side, concatenated.
    pub fn captured(&self) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        s.captured.iter().flat_map(|(_, _, b)| b.clone()).collect()
    }

    /// What connection `conn` carried in direction `dir`.
    pub fn captured_of(&self, conn: u64, dir: Dir) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        s.captured
            .iter()
            .find(|(c, d, _)| *c == conn && *d == dir)
            .map(|(_, _, b)| b.clone())
            .unwrap_or_default()
    }

    /// Waits until `ok` holds of the proxy's state, at most `within`; panics saying
    /// `what` otherwise.
    pub async fn wait(&self, what: &str, within: Duration, ok: impl Fn(&Proxy) -> bool) {
        if !self.wait_until(within, ok).await {
            panic!(
                "proxy: no {what} within {within:?} (connections {}, records {:?}, applied {:?})",
                self.connections(),
                self.records(),
                self.applied()
            )
        }
    }

    /// Waits until `ok` holds of the proxy's state, at most `within`: whether it did.
    pub async fn wait_until(&self, within: Duration, ok: impl Fn(&Proxy) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut rx = self.changed.clone();
        loop {
            rx.borrow_and_update();
            if ok(self) {
                return true;
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return ok(self),
            }
        }
    }

    /// Stops listening and cuts every proxied connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn index(dir: Dir) -> usize {
    match dir {
        Dir::ToListener => 0,
        Dir::ToDialler => 1,
    }
}

async fn pump(
    conn: u64,
    dir: Dir,
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    st: Arc<Mutex<State>>,
    tx: Arc<watch::Sender<u64>>,
) {
    let _ = relay(conn, dir, &mut r, &mut w, &st, &tx).await;
    let _ = w.shutdown().await;
}

/// Reads exactly `buf.len()` bytes, recording them.
async fn read_rec(
    r: &mut OwnedReadHalf,
    buf: &mut [u8],
    conn: u64,
    dir: Dir,
    st: &Mutex<State>,
) -> std::io::Result<()> {
    r.read_exact(buf).await?;
    let mut s = st.lock().unwrap();
    if let Some((_, _, b)) = s
        .captured
        .iter_mut()
        .find(|(c, d, _)| *c == conn && *d == dir)
    {
        b.extend_from_slice(buf);
    }
    Ok(())
}

/// One unit: its 2-byte length and its bytes.
async fn read_unit(
    r: &mut OwnedReadHalf,
    conn: u64,
    dir: Dir,
    st: &Mutex<State>,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    read_rec(r, &mut len, conn, dir, st).await?;
    let n = u16::from_be_bytes(len) as usize;
    let mut unit = vec![0u8; 2 + n];
    unit[..2].copy_from_slice(&len);
    read_rec(r, &mut unit[2..], conn, dir, st).await?;
    Ok(unit)
}

async fn relay(
    conn: u64,
    dir: Dir,
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    st: &Mutex<State>,
    tx: &watch::Sender<u64>,
) -> std::io::Result<()> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_rec(r, &mut pre, conn, dir, st).await?;
    w.write_all(&pre).await?;
    let handshake_units = match dir {
        Dir::ToListener => 2,
        Dir::ToDialler => 1,
    };
    for _ in 0..handshake_units {
        let unit = read_unit(r, conn, dir, st).await?;
        w.write_all(&unit).await?;
        if unit.len() == 2 {
            // A refusal (a zero length and a code) or something else: pass the rest on.
            let mut buf = vec![0u8; 4096];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                {
                    let mut s = st.lock().unwrap();
                    if let Some((_, _, b)) = s
                        .captured
                        .iter_mut()
                        .find(|(c, d, _)| *c == conn && *d == dir)
                    {
                        b.extend_from_slice(&buf[..n]);
                    }
                }
                w.write_all(&buf[..n]).await?;
            }
        }
    }
    let mut held: Option<(Vec<u8>, Plan)> = None;
    loop {
        let mut unit = read_unit(r, conn, dir, st).await?;
        let len = unit.len() - 2;
        if let Some((first, plan)) = held.take() {
            // Reorder: the next record goes first.
            w.write_all(&unit).await?;
            w.write_all(&first).await?;
            done(st, tx, conn, plan, first.len() - 2);
            continue;
        }
        let plan = {
            let mut s = st.lock().unwrap();
            s.records[index(dir)] += 1;
            match s.plan {
                Some(p) if p.dir == dir && p.only_len.is_none_or(|l| l == len) => {
                    s.plan = None;
                    Some(p)
                }
                _ => None,
            }
        };
        let Some(plan) = plan else {
            w.write_all(&unit).await?;
            continue;
        };
        match plan.tamper {
            Tamper::Flip => {
                unit[2] ^= 0x01;
                w.write_all(&unit).await?;
            }
            Tamper::Inject => {
                let mut fake = unit.clone();
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut fake[2..]);
                w.write_all(&fake).await?;
                w.write_all(&unit).await?;
            }
            Tamper::Replay => {
                w.write_all(&unit).await?;
                w.write_all(&unit).await?;
            }
            Tamper::Drop => {}
            Tamper::FlipLength => {
                unit[0] ^= 0x80;
                w.write_all(&unit).await?;
            }
            Tamper::InjectShort => {
                w.write_all(&[0, 1, 0xaa]).await?;
                w.write_all(&unit).await?;
            }
            Tamper::Reorder => {
                held = Some((unit, plan));
                continue;
            }
        }
        done(st, tx, conn, plan, len);
    }
}

fn done(st: &Mutex<State>, tx: &watch::Sender<u64>, conn: u64, plan: Plan, len: usize) {
    st.lock().unwrap().applied.push(Applied { conn, plan, len });
    tx.send_modify(|n| *n += 1);
}
