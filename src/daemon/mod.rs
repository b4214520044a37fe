//! The `rallypoint` daemon: a cluster node with an HTTP API, for programs in any
//! language.
//!
//! - [`cli`]: the command line (`run`, `check-config`, `members`, `watch`, `probe`);
//! - [`http`]: the HTTP API's routes; [`api`]: its JSON bodies; [`sse`]: the event
//!   stream; [`metrics`]: the Prometheus metrics;
//! - [`serve`]: the API's accept loop and connections, with a cap and timeouts
//!   ([`timeouts`]); [`host`]: the `Host` rule without a token; [`rlimit`]: the
//!   open-file limit;
//! - [`departed`]: the peers recently down or left, for `/v1/members`;
//! - [`client`]: the client of the API (used by `members`, `watch` and `probe`).
//!
//! [`run`] is the daemon: it binds the HTTP API, starts the node with the configured
//! topologies, serves until its shutdown future resolves, then leaves the cluster
//! gracefully (peers see `left`) within a bounded time. [`shutdown_signal`] is that
//! future for the binary: SIGTERM, SIGINT and SIGHUP all leave gracefully (SIGHUP does
//! not reload the configuration).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Cluster;
use crate::config::{Config, ConfigError};
use crate::events::{Subscription, Update};

/// The next update of a daemon-side follower ([`sse::History`], [`departed::Departed`]);
/// `None` once `stop` is cancelled or the cluster has shut down.
pub(crate) async fn recv_until(sub: &mut Subscription, stop: &CancellationToken) -> Option<Update> {
    tokio::select! {
        _ = stop.cancelled() => None,
        u = sub.recv() => u,
    }
}

pub mod api;
pub mod cli;
pub mod client;
pub mod departed;
pub mod host;
pub mod http;
pub mod metrics;
pub mod rlimit;
pub mod serve;
pub mod sse;
pub mod timeouts;
pub mod topologies;

/// The longest the daemon waits for the cluster to leave gracefully on shutdown.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the daemon waits for the HTTP API to finish open requests on shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the daemon could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (or its cookie cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP API's address could not be bound.
    #[error("cannot listen on HTTP address {addr}{}", bind_hint("--http-addr", "RALLYPOINT_HTTP_ADDR", *.addr, .source))]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster address could not be bound.
    #[error("cannot listen on cluster address {addr}{}", bind_hint("--cluster-addr", "RALLYPOINT_CLUSTER_ADDR", *.addr, .source))]
    ClusterBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster node could not start.
    #[error(transparent)]
    Cluster(#[from] crate::Error),
    /// The HTTP server stopped with an error.
    #[error("the HTTP API failed")]
    Http(#[source] std::io::Error),
}

/// What to do about a port that cannot be bound: for a port in use (most often another
/// rallypoint on this host), the flag and the variable that move this node elsewhere.
fn bind_hint(flag: &str, var: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            let mut other = addr;
            other.set_port(addr.port().checked_add(100).unwrap_or(addr.port() - 100));
            format!(
                " (the port is in use, perhaps by another rallypoint on this host): give \
                 this node another with {flag} {other} (or {var})"
            )
        }
        std::io::ErrorKind::AddrNotAvailable => format!(
            " (no interface of this host has that address): give one of this host's \
             addresses, or {}, with {flag} (or {var})",
            if addr.is_ipv6() { "[::]" } else { "0.0.0.0" }
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            " (ports below 1024 need privileges): give a port of 1024 or above with {flag} \
             (or {var})"
        ),
        _ => String::new(),
    }
}

/// Runs the daemon until `shutdown` resolves, then leaves the cluster gracefully. The
/// HTTP API is bound before the node starts (so a taken port starts nothing); once
/// both are up, the log line `HTTP API listening` says so. When `shutdown` resolves
/// while the cookie files are still being read, nothing is started and this returns
/// `Ok(())` at once; later, before the node is up, the node stops as soon as it is.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut shutdown = std::pin::pin!(shutdown);
    // Reading files can block (a slow or hung file system): off the runtime's threads,
    // and given up on a shutdown request.
    let files = config.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, ConfigError>((files.load_cookie()?, files.load_accepted_cookies()?))
    });
    let (cookie, accepted) = tokio::select! {
        read = read => read.map_err(|e| {
            ConfigError::Load(format!("reading the cookie files stopped: {e}"))
        })??,
        () = &mut shutdown => {
            tracing::info!("asked to stop before the node was up: stopping");
            return Ok(());
        }
    };
    let nofile = rlimit::raise_nofile();
    let max_connections = rlimit::api_share(config.http.max_connections, nofile);
    if max_connections < config.http.max_connections {
        tracing::warn!(
            configured = config.http.max_connections,
            used = max_connections,
            open_file_limit = nofile,
            "`http_max_connections` is more than half the open-file limit; using half, so \
             that the cluster always has descriptors left"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::HttpBind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| Error::HttpBind {
        addr: config.http_addr,
        source,
    })?;

    if config.http_token.is_none() && !http_addr.ip().is_loopback() {
        tracing::warn!(
            %http_addr,
            "the HTTP API listens beyond loopback with no token: anyone who reaches \
             {http_addr} can read the members, the events and the metrics; set http_token (RALLYPOINT_HTTP_TOKEN), or listen on 127.0.0.1"
        );
    }
    let mut builder = Cluster::builder()
        .name(config.name.as_str())
        .cluster_addr(config.cluster_addr)
        .membership(config.membership.clone());
    if let Some(addr) = config.advertise_addr {
        builder = builder.advertise_addr(addr);
    }
    match (&cookie, &config.cookie_file) {
        (Some(cookie), Some(path)) => {
            tracing::info!(path = %path.display(), "cookie read from file");
            builder = builder.cookie(cookie.as_bytes());
        }
        (Some(cookie), None) => {
            tracing::info!("cookie set by the configuration");
            builder = builder.cookie(cookie.as_bytes());
        }
        (None, _) => {
            let path = crate::Cookie::default_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no config directory)".into());
            tracing::info!(%path, "no cookie configured: using this user's default cookie");
        }
    }
    if !accepted.is_empty() {
        tracing::info!(
            count = accepted.len(),
            "also accepting other cookies from peers (accept_cookies, accept_cookie_files)"
        );
    }
    for c in &accepted {
        builder = builder.accept_cookie(c.as_bytes());
    }
    for (name, topology) in &config.topologies {
        tracing::info!(topology = %name, strategy = topology.strategy.kind(), "starting topology");
        builder = topology.add_to(name, builder);
    }
    if config.topologies.is_empty() {
        tracing::info!(
            "no topology configured: no discovery; this node waits for peers to dial it"
        );
    }
    let cluster = Arc::new(builder.start().await.map_err(|e| match e {
        crate::Error::Bind { addr, source } => Error::ClusterBind { addr, source },
        e => Error::Cluster(e),
    })?);

    let stop = CancellationToken::new();
    let http_stats = Arc::new(metrics::HttpStats::default());
    let app = http::router(http::AppState {
        cluster: cluster.clone(),
        stop: stop.clone(),
        min_members: config.min_members,
        metrics: Arc::new(metrics::registry(cluster.clone(), http_stats.clone())),
        history: sse::History::start(&cluster, config.event_history, stop.clone()),
        departed: departed::Departed::start(&cluster, stop.clone()),
        token: config.http_token.as_ref().map(|t| Arc::from(t.expose())),
        allowed_hosts: Arc::new(host::AllowedHosts::new(&config.http.allowed_hosts)),
        http_stats: http_stats.clone(),
        sse_max_backlog: config.http.sse_max_backlog,
    });
    let settings = serve::Settings {
        max_connections,
        limits: timeouts::Limits {
            header: config.http.header_timeout,
            idle: config.http.idle_timeout,
        },
    };
    let mut server = tokio::spawn(serve::serve(
        listener,
        app,
        settings,
        http_stats,
        stop.clone(),
    ));
    tracing::info!(
        node = %cluster.local(),
        http_addr = %http_addr,
        max_connections,
        "HTTP API listening"
    );
    if config.topologies.len() == 1
        && config
            .topologies
            .get(crate::config::DEFAULT_TOPOLOGY)
            .is_some_and(|t| t.strategy.kind() == "gossip")
    {
        // From the ports bound (not the configured ones, which may be 0).
        let next = |mut a: SocketAddr, bound: u16| {
            a.set_port(bound.checked_add(100).unwrap_or(bound - 100));
            a
        };
        let cluster_next = next(config.cluster_addr, cluster.local().addr.port());
        let http_next = next(http_addr, http_addr.port());
        tracing::info!(
            "gossip (the default) finds every node on this network that has the same \
             cookie; to start another node on this host: `rallypoint run --cluster-addr \
             {cluster_next} --http-addr {http_next}` (with the same --config, if any); to list the members: `rallypoint \
             members --http-addr {http_addr}`"
        );
    }

    let result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: leaving the cluster");
            Ok(())
        }
        r = &mut server => Err(match r {
            Ok(()) => Error::Http(std::io::Error::other("the server stopped")),
            Err(e) => Error::Http(std::io::Error::other(e)),
        }),
    };
    if tokio::time::timeout(LEAVE_TIMEOUT, cluster.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?LEAVE_TIMEOUT, "leaving the cluster took too long; stopping anyway");
    }
    stop.cancel();
    if !server.is_finished()
        && tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "HTTP requests still open; closing them");
        server.abort();
    }
    tracing::info!("stopped");
    result
}

/// A future that resolves on SIGTERM, SIGINT (Ctrl-C) or SIGHUP: all three mean "leave
/// the cluster gracefully and stop" (SIGHUP does not reload the configuration; a hang-up
/// of the terminal stops the daemon as it would stop a foreground program, but
/// gracefully). The handlers are installed when this is called (so call it first, before
/// anything slow), not when the future is first polled; from then on these signals no
/// longer kill the process by themselves, so poll the future from then on too.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        let hup = signal(SignalKind::hangup());
        async move {
            let (mut term, mut int, mut hup) = match (term, int, hup) {
                (Ok(t), Ok(i), Ok(h)) => (t, i, h),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    tracing::error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = hup.recv() => tracing::info!("SIGHUP received (it does not reload the configuration)"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(addr: &str, kind: std::io::ErrorKind) -> String {
        let addr: SocketAddr = addr.parse().unwrap();
        bind_hint("--http-addr", "RALLYPOINT_HTTP_ADDR", addr, &kind.into())
    }

    #[test]
    fn a_bind_hint_suggests_a_port_in_range_and_fits_the_cause() {
        use std::io::ErrorKind::*;
        assert!(hint("127.0.0.1:45894", AddrInUse).contains("--http-addr 127.0.0.1:45994 "));
        assert!(hint("127.0.0.1:65500", AddrInUse).contains("--http-addr 127.0.0.1:65400 "));
        assert!(hint("[::1]:80", AddrNotAvailable).contains("[::]"));
        assert!(hint("10.0.0.1:80", AddrNotAvailable).contains("0.0.0.0"));
        assert!(hint("127.0.0.1:80", PermissionDenied).contains("1024 or above"));
        // Denied for another reason (a security module): no claim about the port.
        assert_eq!(hint("127.0.0.1:8080", PermissionDenied), "");
        assert_eq!(hint("127.0.0.1:8080", ConnectionReset), "");
    }
}
