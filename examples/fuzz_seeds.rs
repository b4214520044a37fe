//! Writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`):
//!
//! - `sealed_handshake`: real first bytes of the sealed transport. Two nodes with the
//!   target's seed cookie connect through a relay that records each direction, and a
//!   node with another cookie is refused through it; the dialler's preamble, first
//!   message and key confirmation are seeds of the listener's side, the listener's
//!   answer (its message, or the refusal) of the dialler's side. Besides: a protocol-1
//!   `Hello`, garbage, an oversized handshake length, an overload refusal.
//! - `handshake` and `frame_decoder`: plaintext frame streams (what travels inside the
//!   opened records, which the relay only sees sealed), made with `wire::encode`: a
//!   whole connection (hello, accept, members, heartbeats, sync, messages, leave),
//!   refusals of every reason either way, and frames that do not belong; each stream
//!   with side bytes for `handshake`, each stream and each frame alone for
//!   `frame_decoder`.
//! - `sealed_records`: a few operation lists (frames of record-spanning sizes, a flipped
//!   byte, injected bytes).
//! - `gossip_packet`: heartbeats a gossip node sends on the loopback multicast group,
//!   sealed with the fuzz target's secret, and their decrypted bodies;
//! - `config_loader`: the configuration examples of the manual (docs/daemon.md).
//!
//! Run: `cargo run --example fuzz_seeds` (from the repository; writes under
//! `fuzz/seeds`, after removing what was there).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rallypoint::membership::seal::PREAMBLE;
use rallypoint::membership::wire::{
    self, Frame, Hello, MAGIC, MemberEntry, PROTOCOL_VERSION, RejectReason,
};
use rallypoint::strategies::gossip::{self, Gossip, packet};
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The secret of the `gossip_packet` target.
const GOSSIP_SECRET: &str = "rallypoint fuzz seed secret";
/// The cookie the `sealed_handshake` target's listener holds (and dials with).
const SEED_COOKIE: &str = "rallypoint fuzz seed cookie";

type Streams = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Copies one direction, recording what passed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = to.shutdown().await;
    seen
}

/// A relay to `target` that records every connection (dialler → target, target →
/// dialler).
async fn relay(target: SocketAddr, streams: Streams) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                let (up, down) = tokio::join!(pump(ir, ow), pump(or, iw));
                streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((up, down));
            });
        }
    });
    Ok(addr)
}

async fn node(name: &str, cookie: &str, peers: Vec<String>) -> Result<Cluster, rallypoint::Error> {
    Cluster::builder()
        .name(name)
        .cluster_addr("127.0.0.1:0".parse().expect("address"))
        .cookie(cookie)
        .membership(rallypoint::membership::Config {
            heartbeat_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .topology("peers", StaticHosts::new(peers))
        .start()
        .await
}

/// The handshake at the start of a recorded sealed stream: the preamble, then
/// `messages` length-prefixed messages (the dialler's first message and its key
/// confirmation; the listener's message, or its refusal: a zero length and a code).
fn handshake_prefix(stream: &[u8], messages: usize) -> &[u8] {
    let mut at = PREAMBLE.len().min(stream.len());
    for _ in 0..messages {
        let Some(len) = stream.get(at..at + 2) else {
            break;
        };
        let len = match usize::from(u16::from_be_bytes([len[0], len[1]])) {
            0 => 1,
            n => n,
        };
        at = (at + 2 + len).min(stream.len());
    }
    &stream[..at]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

/// Frames, each with its 4-byte length, as they are inside the opened records.
fn stream(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let body = wire::encode(f);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// The `handshake` target's local node is `fuzz@10.0.0.1` (incarnation 1, at
/// 10.0.0.1:45893); it dials its topology's peer at 10.0.0.2:45893.
fn hello(name: &str, addr: &str, incarnation: u64, version: u16) -> Frame {
    Frame::Hello(Hello {
        magic: MAGIC,
        version,
        name: name.into(),
        incarnation,
        addr: addr.parse().expect("address"),
        nonce: [9; 32],
    })
}

/// The plaintext connections of the `handshake` and `frame_decoder` seeds, with the
/// `handshake` target's side bytes for each.
fn plaintext_streams() -> Vec<(&'static str, Vec<u8>, &'static [u8])> {
    let peer = || hello("peer@10.0.0.2", "10.0.0.2:45893", 7, PROTOCOL_VERSION);
    let accept = |exchange| Frame::Accept { exchange };
    // Inbound, dialled; both connections; authoritative; the clock's steps.
    const ALL: &[u8] = &[0, 1, 2, 3, 4, 5, 0x08, 0x11, 0x18, 0x1d];
    const SIDES: &[u8] = &[0, 1];
    let mut out: Vec<(&'static str, Vec<u8>, &'static [u8])> = vec![
        (
            "whole",
            stream(&[
                peer(),
                accept(true),
                Frame::Members(vec![
                    MemberEntry {
                        name: "c@10.0.0.3".into(),
                        addr: "10.0.0.3:45893".parse().expect("address"),
                        incarnation: 3,
                    },
                    MemberEntry {
                        name: "fuzz@10.0.0.1".into(),
                        addr: "10.0.0.1:45893".parse().expect("address"),
                        incarnation: 1,
                    },
                ]),
                Frame::Heartbeat,
                Frame::Sync {
                    digest: 0x5eed,
                    reply: false,
                },
                Frame::Heartbeat,
                Frame::Message {
                    topic: "orders".into(),
                    payload: b"order 42 shipped".to_vec(),
                },
                Frame::Sync {
                    digest: 0x5eed,
                    reply: true,
                },
                Frame::Heartbeat,
                Frame::Leave,
            ]),
            ALL,
        ),
        (
            "quiet",
            stream(&[peer(), accept(false), Frame::Heartbeat]),
            ALL,
        ),
        (
            "cut-duplicate",
            stream(&[
                peer(),
                accept(false),
                Frame::Heartbeat,
                Frame::Reject(RejectReason::Duplicate),
            ]),
            ALL,
        ),
        (
            "cut-protocol",
            stream(&[peer(), accept(true), Frame::Reject(RejectReason::Protocol)]),
            SIDES,
        ),
        (
            "name-clash",
            stream(&[
                hello("fuzz@10.0.0.1", "10.0.0.2:45893", 2, PROTOCOL_VERSION),
                accept(false),
            ]),
            SIDES,
        ),
        (
            "self",
            stream(&[
                hello("fuzz@10.0.0.1", "10.0.0.1:45893", 1, PROTOCOL_VERSION),
                accept(false),
            ]),
            SIDES,
        ),
        (
            "bad-name",
            stream(&[hello("no at sign", "10.0.0.2:45893", 7, PROTOCOL_VERSION)]),
            SIDES,
        ),
        (
            "version-1",
            stream(&[hello("peer@10.0.0.2", "10.0.0.2:45893", 7, 1)]),
            SIDES,
        ),
        ("accept-first", stream(&[accept(true), peer()]), SIDES),
        ("hello-twice", stream(&[peer(), peer()]), SIDES),
        (
            "hello-when-up",
            stream(&[peer(), accept(false), peer()]),
            SIDES,
        ),
        (
            "heartbeat-in-handshake",
            stream(&[peer(), Frame::Heartbeat]),
            SIDES,
        ),
        (
            "reject-before-hello",
            stream(&[Frame::Reject(RejectReason::BadCookie)]),
            SIDES,
        ),
    ];
    for (name, reason) in [
        ("refused-bad-cookie", RejectReason::BadCookie),
        ("refused-name-clash", RejectReason::NameClash),
        ("refused-bad-version", RejectReason::BadVersion),
        ("refused-pruned", RejectReason::Pruned),
        ("refused-duplicate", RejectReason::Duplicate),
        ("refused-protocol", RejectReason::Protocol),
    ] {
        out.push((name, stream(&[peer(), Frame::Reject(reason)]), SIDES));
    }
    let mut too_large = stream(&[peer()]);
    too_large.extend_from_slice(&u32::MAX.to_be_bytes());
    out.push(("too-large", too_large, SIDES));
    let mut truncated = stream(&[peer(), accept(false)]);
    truncated.extend_from_slice(&[0, 0, 0, 50, 3, 1]);
    out.push(("truncated", truncated, SIDES));
    let mut trailing = stream(&[peer()]);
    trailing.extend_from_slice(&[0, 0, 0, 2, 3, 0]);
    out.push(("trailing-byte", trailing, SIDES));
    out
}

/// Splits a plaintext stream into its frames (each with its length).
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= stream.len() {
        let len = u32::from_be_bytes([stream[at], stream[at + 1], stream[at + 2], stream[at + 3]])
            as usize;
        let Some(end) = at.checked_add(4 + len).filter(|&e| e <= stream.len()) else {
            break;
        };
        out.push(&stream[at..end]);
        at = end;
    }
    out
}

const CONFIGS: &[&str] = &[
    r#"name = "app@10.0.0.5"
cluster_addr = "0.0.0.0:45893"
http_addr = "127.0.0.1:45894"
cookie_file = "/etc/rallypoint/cookie"

[membership]
heartbeat_interval = "500ms"
down_after = "3s"

[topologies.peers]
strategy = "static"
hosts = ["10.0.0.6:45893", "node3:45893"]
"#,
    r#"[topologies.lan]
strategy = "gossip"
interval = "500ms"
multicast_addr = "ff02::1:251"
multicast_if = "eth0"
"#,
    r#"[topologies.k8s]
strategy = "kubernetes"
selector = "kubernetes.io/service-name=myapp-headless"
port_name = "cluster"
mode = "hostname"
prune_after = "30s"
"#,
    r#"[topologies.store]
strategy = "dns"
record = "srv"
query = { name = "_cluster._tcp.store.default.svc.cluster.local", node_basename = "store" }
"#,
    r#"[topologies.dns]
strategy = "dns"
nameservers = ["10.0.0.53:53"]
query = ["nodes.example.internal.", { name = "workers.example.internal.", node_basename = "worker" }]
%%
MEMBERSHIP__DOWN_AFTER=5s
MIN_MEMBERS=2
"#,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");

    for target in [
        "sealed_handshake",
        "sealed_records",
        "handshake",
        "frame_decoder",
        "gossip_packet",
        "config_loader",
    ] {
        let dir = seeds.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }

    // Sealed connections, through a recording relay: the first bytes of each side.
    let streams: Streams = Arc::default();
    let b = node("b@127.0.0.1", SEED_COOKIE, vec![]).await?;
    let via = relay(b.local().addr, streams.clone()).await?;
    let a = node("a@127.0.0.1", SEED_COOKIE, vec![via.to_string()]).await?;
    let mut events = b.subscribe();
    while !matches!(
        events.recv().await,
        Some(Update::Event(rallypoint::Event::NodeUp(_)))
    ) {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stranger = node(
        "c@127.0.0.1",
        "another cluster's cookie",
        vec![via.to_string()],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stranger.shutdown().await;
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.shutdown().await;
    let recorded = streams.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let dir = seeds.join("sealed_handshake");
    let mut answered = None;
    for (k, (up, down)) in recorded.iter().enumerate() {
        // The listener answered with its message (same cookie) or refused (another).
        let answer = handshake_prefix(down, 1);
        let what = if answer.len() > PREAMBLE.len() + 3 {
            answered.get_or_insert(k);
            "answered"
        } else {
            "refused"
        };
        // To the listener: the dialler's preamble, first message, key confirmation
        // (which comes only from a dialler that was answered), with each set of
        // cookies the target's listener can hold.
        let first = handshake_prefix(up, 2);
        for cookies in [0u8, 1, 2, 3] {
            let mut seed = vec![cookies << 1];
            seed.extend_from_slice(first);
            write(&dir, &format!("{what}{k}-dialler-cookies{cookies}"), &seed)?;
        }
        // To the dialler: the listener's preamble and message (or refusal).
        let mut seed = vec![1];
        seed.extend_from_slice(answer);
        write(&dir, &format!("{what}{k}-listener"), &seed)?;
    }
    let mut v1_hello = vec![0, 0, 0, 40, 0, b'R', b'L', b'P', b'T', 1];
    v1_hello.resize(44, 7);
    let mut oversized = PREAMBLE.to_vec();
    oversized.extend_from_slice(&u16::MAX.to_be_bytes());
    let mut overload = PREAMBLE.to_vec();
    overload.extend_from_slice(&[0, 0, 2]);
    for (name, bytes) in [
        ("v1-hello", &v1_hello[..]),
        ("garbage", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        ("oversized", &oversized[..]),
        ("overload", &overload[..]),
        ("preamble", &PREAMBLE[..]),
    ] {
        for side in [0u8, 1] {
            let mut seed = vec![side];
            seed.extend_from_slice(bytes);
            write(&dir, &format!("{name}-{side}"), &seed)?;
        }
    }
    if let Some((up, _)) = answered.and_then(|k| recorded.get(k)) {
        // An overloaded listener (it reads the preamble, then refuses).
        let mut seed = vec![8];
        seed.extend_from_slice(handshake_prefix(up, 2));
        write(&dir, "overloaded", &seed)?;
    }
    println!("{} sealed connections", recorded.len());

    // Plaintext frame streams (inside the records), encoded.
    let mut n = 0;
    for (name, bytes, sides) in plaintext_streams() {
        write(&seeds.join("frame_decoder"), name, &bytes)?;
        for (f, frame) in frames(&bytes).into_iter().enumerate() {
            write(&seeds.join("frame_decoder"), &format!("{name}-{f}"), frame)?;
            n += 1;
        }
        for &side in sides {
            let mut seed = vec![side];
            seed.extend_from_slice(&bytes);
            write(
                &seeds.join("handshake"),
                &format!("{name}-{side:02x}"),
                &seed,
            )?;
        }
    }
    println!(
        "{} plaintext streams, {n} frames",
        plaintext_streams().len()
    );

    // Record streams: frames of sizes around a record's, a flipped byte, injected bytes.
    // (Operations: 0 seal, with 0x10 the length times 5; 2 flip; 3 inject.)
    let records: &[(&str, &[u8])] = &[
        ("small-frames", &[7, 0, 0, 5, 0, 0, 0, 0, 0, 40]),
        (
            "record-sized",
            &[7, 0, 0xff, 0xeb, 0, 0xff, 0xef, 0, 0xff, 0xf0],
        ),
        ("spanning", &[7, 0x10, 0x80, 0x00, 0, 0, 3]),
        ("above-max-frame", &[2, 0, 0, 50, 0, 0, 101, 0, 0, 1]),
        ("flipped", &[7, 0, 0, 20, 0, 0, 20, 2, 0, 30, 1]),
        ("flipped-length", &[7, 0, 0, 20, 0, 0, 20, 2, 0, 42, 0x80]),
        ("injected", &[15, 0, 0, 20, 3, 4, 0, 2, 1, 2, 0, 0, 20]),
    ];
    for (name, ops) in records {
        write(&seeds.join("sealed_records"), name, ops)?;
    }
    println!("{} record streams", records.len());

    // Gossip heartbeats on the loopback multicast group, on a port of their own.
    let port = 45_000 + (std::process::id() % 1000) as u16;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.join_multicast_v4(&rallypoint::DEFAULT_GOSSIP_GROUP, &Ipv4Addr::LOCALHOST)?;
    socket.set_nonblocking(true)?;
    let receiver = tokio::net::UdpSocket::from_std(socket.into())?;
    let g = Cluster::builder()
        .name("g@127.0.0.1")
        .cluster_addr("127.0.0.1:0".parse()?)
        .cookie("the fuzz seeds' cookie")
        .topology(
            "lan",
            Gossip::new(gossip::Config {
                port,
                multicast_if: Some("127.0.0.1".into()),
                interval: Duration::from_millis(50),
                secret: Some(GOSSIP_SECRET.into()),
                ..gossip::Config::default()
            })?,
        )
        .start()
        .await?;
    let key = packet::Key::derive(GOSSIP_SECRET.as_bytes());
    let mut buf = [0u8; 2048];
    for k in 0..4 {
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(10), receiver.recv_from(&mut buf)).await??;
        let pkt = &buf[..len];
        write(&seeds.join("gossip_packet"), &format!("heartbeat{k}"), pkt)?;
        if let Ok(body) = packet::open_body(&key, pkt) {
            write(&seeds.join("gossip_packet"), &format!("body{k}"), &body)?;
        }
    }
    g.shutdown().await;
    println!("4 heartbeats");

    for (k, text) in CONFIGS.iter().enumerate() {
        write(
            &seeds.join("config_loader"),
            &format!("readme{k}.toml"),
            text.as_bytes(),
        )?;
    }
    println!("{} configurations", CONFIGS.len());
    Ok(())
}
