//! Writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) from real traffic:
//!
//! - peer connections: two nodes on loopback connect through a relay that records each
//!   direction's bytes (handshake, member lists, heartbeats, pub/sub messages, the
//!   leave), and a node with another cookie is refused through it (a `Reject`); each
//!   stream is a seed of `frame_decoder` and, with the side byte, of `handshake`, and
//!   each frame on its own a seed of `frame_decoder`;
//! - gossip: heartbeats a gossip node sends on the loopback multicast group, sealed
//!   with the fuzz target's secret, and their decrypted bodies (`gossip_packet`);
//! - configuration: the README's configuration examples (`config_loader`).
//!
//! Run: `cargo run --example fuzz_seeds` (from the repository; writes under `fuzz/seeds`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rallypoint::strategies::gossip::{self, Gossip, packet};
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The secret of the `gossip_packet` target.
const GOSSIP_SECRET: &str = "rallypoint fuzz seed secret";

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

/// Splits a recorded stream into its length-delimited frames (each with its prefix).
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= stream.len() {
        let len = u32::from_be_bytes([stream[at], stream[at + 1], stream[at + 2], stream[at + 3]])
            as usize;
        let end = at + 4 + len;
        if end > stream.len() {
            break;
        }
        out.push(&stream[at..end]);
        at = end;
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
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

    // Peer connections, through a recording relay.
    let streams: Streams = Arc::default();
    let b = node("b@127.0.0.1", "the fuzz seeds' cookie", vec![]).await?;
    let via = relay(b.local().addr, streams.clone()).await?;
    let a = node(
        "a@127.0.0.1",
        "the fuzz seeds' cookie",
        vec![via.to_string()],
    )
    .await?;
    let mut events = b.subscribe();
    while !matches!(
        events.recv().await,
        Some(Update::Event(rallypoint::Event::NodeUp(_)))
    ) {}
    a.publish("orders", &b"order 42 shipped"[..]).await?;
    b.publish("orders", &b"ack"[..]).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
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
    let mut n = 0;
    for (k, (up, down)) in recorded.iter().enumerate() {
        for (dir, stream, side) in [("in", up, 0u8), ("out", down, 1u8)] {
            // To the target the dialler's bytes arrive inbound; to the dialler the
            // target's bytes are the answers on a connection it dialled.
            write(
                &seeds.join("frame_decoder"),
                &format!("conn{k}-{dir}"),
                stream,
            )?;
            let mut hs = vec![side];
            hs.extend_from_slice(stream);
            write(&seeds.join("handshake"), &format!("conn{k}-{dir}"), &hs)?;
            for (f, frame) in frames(stream).into_iter().enumerate() {
                write(
                    &seeds.join("frame_decoder"),
                    &format!("conn{k}-{dir}-{f}"),
                    frame,
                )?;
                n += 1;
            }
        }
    }
    println!("{} connections, {n} frames", recorded.len());

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
