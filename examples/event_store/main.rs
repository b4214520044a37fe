//! Event-store nodes on rallypoint membership: a worked example.
//!
//! Each node serves an HTTP API over one PostgreSQL database shared by all nodes: append
//! to streams with an expected version, read streams and the global log, and run
//! persistent named subscriptions with at-least-once delivery. rallypoint decides where
//! subscriptions run and carries the "something was appended" hints; the store keeps them
//! safe:
//!
//! - after each commit the node publishes `{stream, first, last, global_last}` to every
//!   member; receivers re-read the store (a lost hint delays, never loses: runners also
//!   read on `nodeup`, when the database is back, and every `--catch-up-interval`);
//! - each subscription is owned by the member that rendezvous hashing of its name picks
//!   among the live members, so subscriptions spread and move on `nodeup`/`nodedown`;
//! - before delivering, the owner takes a lease with an epoch in the store; every
//!   checkpoint write is conditional on that epoch, so a node cut off from its peers
//!   cannot move a checkpoint once another node took the lease.
//!
//! Modules: [`store`] (PostgreSQL), [`placement`] (rendezvous hashing and who may take a
//! lease from whom), [`acks`] (contiguous-ack checkpoints), [`subscription`] (one
//! subscription's runner), [`supervisor`] (which runners run here, and what wakes them),
//! [`fanout`] (the pub/sub messages), [`http`] (the API).
//!
//! ```text
//! cargo run --example event_store --features daemon -- \
//!     --name a@127.0.0.1 --cluster-addr 127.0.0.1:45893 --http-addr 127.0.0.1:8081 \
//!     --peers 127.0.0.1:45895 --database-url 'host=/var/run/postgresql user=postgres'
//! ```

mod acks;
mod fanout;
mod http;
mod placement;
mod store;
mod subscription;
mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rallypoint::Cluster;
use rallypoint::strategies::static_hosts::StaticHosts;
use tokio::sync::watch;

use crate::store::Store;
use crate::supervisor::{Settings, Shared};

/// An event-store node on rallypoint membership.
#[derive(Parser, Debug)]
#[command(name = "event_store", version)]
struct Args {
    /// This node's name, basename@host (e.g. es@10.0.0.5); unique in the cluster.
    #[arg(long)]
    name: String,
    /// Address of the cluster port (peer connections).
    #[arg(long, default_value = "0.0.0.0:45893")]
    cluster_addr: SocketAddr,
    /// Address peers dial (default: derived as rallypoint does).
    #[arg(long)]
    advertise_addr: Option<SocketAddr>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Peers' cluster addresses, host:port, comma-separated (static hosts).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// The cluster's shared secret (default: rallypoint's per-user cookie).
    #[arg(long, env = "EVENT_STORE_COOKIE", hide_env_values = true)]
    cookie: Option<String>,
    /// PostgreSQL connection string (`host=… port=… user=… dbname=…` or a URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// How long to keep trying to reach the database at start.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    db_wait: Duration,
    /// Most connections to the database.
    #[arg(long, default_value_t = 16)]
    db_connections: usize,
    /// Membership: heartbeat interval.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Membership: a silent peer is down after this.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    down_after: Duration,
    /// Membership: first reconnect delay.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    reconnect_initial: Duration,
    /// Membership: longest reconnect delay.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
    /// Membership: handshake timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// A subscription lease lasts this long without renewal (renewed every third).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// How often a node waiting for a lease looks at it again.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lease_retry: Duration,
    /// Subscriptions read the store at least this often, told to or not.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    catch_up_interval: Duration,
    /// Checkpoints are written at most this long after an acknowledgement.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// Most delivered events awaiting acknowledgement, per subscription.
    #[arg(long, default_value_t = 16)]
    max_in_flight: usize,
    /// Events per read.
    #[arg(long, default_value_t = 100)]
    batch: i64,
    /// How long the example handler works on each event before acknowledging it.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    handler_delay: Duration,
    /// How long the view of the members must stay unchanged before this node takes a
    /// lease over from a node it lost (or records a smaller view with its own leases).
    /// Longer than a heartbeat interval or two: every peer cut off by a partition is seen
    /// going within that time, and a view on the way there must not count.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    view_settle: Duration,
    /// How long a handoff waits for acknowledgements in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Serve POST /admin/faults (for tests: drop notifications).
    #[arg(long)]
    fault_injection: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.max_in_flight == 0 {
        anyhow::bail!("--max-in-flight 0: expected at least 1");
    }
    if args.batch < 1 {
        anyhow::bail!("--batch {}: expected at least 1", args.batch);
    }
    if args.lease_ttl < Duration::from_millis(300) {
        anyhow::bail!(
            "--lease-ttl {}: expected at least 300ms",
            humantime::format_duration(args.lease_ttl)
        );
    }
    let store =
        Store::new(&args.database_url, args.db_connections).context("bad --database-url")?;
    let deadline = tokio::time::Instant::now() + args.db_wait;
    loop {
        match store.migrate().await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not ready, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("cannot reach the database"),
        }
    }
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
    let http_addr = listener.local_addr()?;

    let membership = rallypoint::membership::Config {
        heartbeat_interval: args.heartbeat_interval,
        down_after: args.down_after,
        reconnect_initial: args.reconnect_initial,
        reconnect_max: args.reconnect_max,
        handshake_timeout: args.handshake_timeout,
        ..Default::default()
    };
    let mut builder = Cluster::builder()
        .name(&args.name)
        .cluster_addr(args.cluster_addr)
        .membership(membership)
        .topology(
            "peers",
            StaticHosts::new(args.peers.clone()).resolve_interval(Duration::from_secs(1)),
        );
    if let Some(a) = args.advertise_addr {
        builder = builder.advertise_addr(a);
    }
    if let Some(c) = &args.cookie {
        builder = builder.cookie(c);
    }
    let cluster = Arc::new(builder.start().await.context("cannot start the cluster")?);
    let local = cluster.local().clone();
    store
        .register_node(
            local.name.as_str(),
            &http_addr.to_string(),
            local.incarnation,
        )
        .await
        .context("cannot register the node")?;

    let settings = Settings {
        lease_ttl: args.lease_ttl,
        lease_retry: args.lease_retry,
        catch_up_interval: args.catch_up_interval,
        checkpoint_interval: args.checkpoint_interval,
        max_in_flight: args.max_in_flight,
        batch: args.batch,
        handler_delay: args.handler_delay,
        view_settle: args.view_settle,
        drain_timeout: args.drain_timeout,
    };
    let shared = Arc::new(Shared::new(
        cluster.clone(),
        store,
        settings,
        http_addr,
        args.fault_injection,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = tokio::spawn(supervisor::supervise(shared.clone(), stop_rx.clone()));

    tracing::info!(
        node = %local.name,
        cluster = %local.addr,
        http = %http_addr,
        fault_injection = args.fault_injection,
        "event store node ready"
    );
    let mut stop_http = stop_rx.clone();
    let server =
        axum::serve(listener, http::router(shared.clone())).with_graceful_shutdown(async move {
            let _ = stop_http.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(async move { server.await });

    shutdown_signal().await;
    tracing::info!("shutting down: handing off subscriptions");
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    cluster.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
