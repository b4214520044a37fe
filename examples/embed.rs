//! Embedding rallypoint: a node that joins a cluster through static hosts and prints
//! membership events as they happen.
//!
//! ```sh
//! # terminal 1
//! cargo run --example embed -- a@127.0.0.1 127.0.0.1:46001 127.0.0.1:46002
//! # terminal 2
//! cargo run --example embed -- b@127.0.0.1 127.0.0.1:46002 127.0.0.1:46001
//! ```
//!
//! Arguments: the node's name, its cluster address, then the peers to try. The cookie
//! comes from `RALLYPOINT_COOKIE`, else the user's default cookie. Ctrl-C leaves the
//! cluster gracefully.

use std::net::SocketAddr;

use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Event, Update};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: embed NAME CLUSTER_ADDR [PEER_ADDR...]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse()?;
    let peers: Vec<String> = args.collect();

    let mut builder = Cluster::builder()
        .name(name)
        .cluster_addr(addr)
        .topology("peers", StaticHosts::new(peers));
    if let Ok(cookie) = std::env::var("RALLYPOINT_COOKIE") {
        builder = builder.cookie(cookie);
    }
    let cluster = builder.start().await?;
    println!("I am {}", cluster.local());

    let mut events = cluster.subscribe();
    println!("members at start: {:?}", events.snapshot().nodes());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            update = events.recv() => match update {
                Some(Update::Event(Event::NodeUp(node))) => println!("nodeup   {node}"),
                Some(Update::Event(Event::NodeDown { node, reason })) => {
                    println!("nodedown {node} ({reason})")
                }
                Some(Update::Resync(snapshot)) => {
                    println!("fell behind; members now: {:?}", snapshot.nodes())
                }
                None => break,
            },
        }
    }
    cluster.shutdown().await;
    Ok(())
}
