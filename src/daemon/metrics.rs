//! `GET /metrics`: the node's counters in the Prometheus text format (OpenMetrics
//! flavour, as `prometheus-client` writes it).
//!
//! The values live in the library (the membership's [`Stats`](crate::membership::Stats),
//! each topology's [`TopologyStatus`](crate::strategies::TopologyStatus)); they are
//! monotonic counters already, so a [`Collector`] reads them at scrape time instead of
//! mirroring them in metric objects that could drift.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rallypoint_build_info` | info | `version`, `protocol` |
//! | `rallypoint_members` | gauge | |
//! | `rallypoint_local_health` | gauge | |
//! | `rallypoint_events_total` | counter | `kind`: `nodeup`, `nodedown` |
//! | `rallypoint_connect_attempts_total` | counter | `result`: `ok`, `refused`, `timeout`, `error` |
//! | `rallypoint_handshake_failures_total` | counter | `reason`: `bad_cookie`, `name_clash`, … |
//! | `rallypoint_transport_errors_total` | counter | `reason`: `unauthentic`, `frame_too_large`, `malformed`, `unexpected` |
//! | `rallypoint_discovered_peers` | gauge | `topology` |
//! | `rallypoint_strategy_errors_total` | counter | `topology` |
//! | `rallypoint_gossip_packets_total` | counter | `result`: `sent`, `send_errors`, `accepted`, `recv_errors`, `rejected_auth`, `rejected_version`, `rejected_malformed`, `rejected_cluster`, `rejected_replay` |
//! | `rallypoint_gossip_sent_bytes_total` | counter | |
//! | `rallypoint_http_connections` | gauge | |
//! | `rallypoint_http_connections_refused_total` | counter | `reason`: `limit` |
//! | `rallypoint_http_connections_closed_total` | counter | `reason`: `header_timeout`, `idle_timeout`, `write_stalled`, `sse_backlog` |
//! | `rallypoint_http_requests_refused_total` | counter | `reason`: `host` |
//! | `rallypoint_http_accept_errors_total` | counter | |
//!
//! The `rallypoint_http_*` values are the daemon's own ([`HttpStats`], counted by the
//! HTTP server as things happen).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::Cluster;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The results of connection attempts, always written (0 until one happens).
const CONNECT_RESULTS: &[&str] = &["ok", "refused", "timeout", "error"];
/// The reasons of handshake failures, always written (0 until one happens).
const HANDSHAKE_REASONS: &[&str] = &[
    "bad_cookie",
    "name_clash",
    "bad_version",
    "timeout",
    "protocol",
    "pruned",
    "duplicate",
    "closed",
    "not_rallypoint",
    "overload",
    "self",
];
/// Why established connections were cut, always written (0 until one happens).
const TRANSPORT_REASONS: &[&str] = &["unauthentic", "frame_too_large", "malformed", "unexpected"];
/// The prefix of topology counters that count gossip packets.
const GOSSIP_PREFIX: &str = "gossip_";
/// The topology counter of the bytes of gossip heartbeats sent.
const GOSSIP_SENT_BYTES: &str = "gossip_sent_bytes";
/// The results of gossip packets, always written (0 until one happens).
const GOSSIP_RESULTS: &[&str] = &[
    "sent",
    "send_errors",
    "accepted",
    "recv_errors",
    "rejected_auth",
    "rejected_version",
    "rejected_malformed",
    "rejected_cluster",
    "rejected_replay",
];

/// Reads the node's counters at each scrape.
struct NodeCollector {
    cluster: Arc<Cluster>,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

/// The registry of a node's metrics, and of its HTTP API's.
pub fn registry(cluster: Arc<Cluster>, http: Arc<HttpStats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { cluster }));
    registry.register_collector(Box::new(HttpCollector { stats: http }));
    registry
}

/// What the HTTP API's server counts: connections open, refused and closed by a limit,
/// requests refused, accept errors. Shared by the server, the event streams and the
/// metrics (which read it at each scrape).
#[derive(Debug, Default)]
pub struct HttpStats {
    open: AtomicU64,
    refused_limit: AtomicU64,
    closed_header_timeout: AtomicU64,
    closed_idle_timeout: AtomicU64,
    closed_write_stalled: AtomicU64,
    closed_sse_backlog: AtomicU64,
    refused_host: AtomicU64,
    accept_errors: AtomicU64,
}

/// Why the server closed a connection before the client did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// A request's head did not arrive within `http_header_timeout`.
    HeaderTimeout,
    /// A kept-alive connection saw no new request within `http_idle_timeout`.
    IdleTimeout,
    /// A response waited for the client to read for `http_idle_timeout`.
    WriteStalled,
    /// An event stream's client let more than `sse_max_backlog` bytes wait.
    SseBacklog,
}

impl HttpStats {
    /// A connection was accepted; it counts as open until the guard is dropped.
    pub fn opened(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// A connection was refused because `http_max_connections` were open.
    pub fn refused_limit(&self) {
        self.refused_limit.fetch_add(1, Ordering::Relaxed);
    }

    /// The server closed a connection, for this reason.
    pub fn closed(&self, why: Closed) {
        let counter = match why {
            Closed::HeaderTimeout => &self.closed_header_timeout,
            Closed::IdleTimeout => &self.closed_idle_timeout,
            Closed::WriteStalled => &self.closed_write_stalled,
            Closed::SseBacklog => &self.closed_sse_backlog,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused for its `Host`.
    pub fn refused_host(&self) {
        self.refused_host.fetch_add(1, Ordering::Relaxed);
    }

    /// Accepting a connection failed (other than the client giving up first).
    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections are open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// An open connection, as [`HttpStats`] counts it; dropping it closes it in the count.
#[derive(Debug)]
pub struct OpenConnection(Arc<HttpStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the HTTP API's counters at each scrape.
#[derive(Debug)]
struct HttpCollector {
    stats: Arc<HttpStats>,
}

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let open = encoder.encode_descriptor(
            "rallypoint_http_connections",
            "Connections to the HTTP API open now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(s.open()).unwrap_or(i64::MAX)).encode(open)?;
        counter_family(
            &mut encoder,
            "rallypoint_http_connections_refused",
            "Connections to the HTTP API refused at once, by reason.",
            "reason",
            &[("limit".to_owned(), n(&s.refused_limit))],
        )?;
        counter_family(
            &mut encoder,
            "rallypoint_http_connections_closed",
            "Connections to the HTTP API the daemon closed, by reason.",
            "reason",
            &[
                ("header_timeout".to_owned(), n(&s.closed_header_timeout)),
                ("idle_timeout".to_owned(), n(&s.closed_idle_timeout)),
                ("write_stalled".to_owned(), n(&s.closed_write_stalled)),
                ("sse_backlog".to_owned(), n(&s.closed_sse_backlog)),
            ],
        )?;
        counter_family(
            &mut encoder,
            "rallypoint_http_requests_refused",
            "Requests to the HTTP API refused, by reason.",
            "reason",
            &[("host".to_owned(), n(&s.refused_host))],
        )?;
        let errors = encoder.encode_descriptor(
            "rallypoint_http_accept_errors",
            "Failures to accept a connection to the HTTP API (e.g. out of file descriptors).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(n(&s.accept_errors)).encode(errors)?;
        Ok(())
    }
}

/// The registry's metrics as text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Known labels first (as 0 when absent), then any others the library counted.
fn with_known(known: &[&'static str], counted: &BTreeMap<&'static str, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = known
        .iter()
        .map(|k| ((*k).to_owned(), counted.get(k).copied().unwrap_or(0)))
        .collect();
    for (k, v) in counted {
        if !known.contains(k) {
            out.push(((*k).to_owned(), *v));
        }
    }
    out
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(String, u64)],
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        let labels = [(label, value.as_str())];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.cluster.stats();
        let topologies = self.cluster.topologies();

        let members = encoder.encode_descriptor(
            "rallypoint_members",
            "Peers that are up (this node excluded).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.cluster.members().len() as i64).encode(members)?;
        let info = encoder.encode_descriptor(
            "rallypoint_build",
            "The rallypoint that runs: always 1, its version and wire protocol as labels.",
            None,
            MetricType::Info,
        )?;
        let labels = vec![
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            (
                "protocol".to_owned(),
                crate::membership::wire::PROTOCOL_VERSION.to_string(),
            ),
        ];
        prometheus_client::metrics::info::Info::new(labels).encode(info)?;
        let health = encoder.encode_descriptor(
            "rallypoint_local_health",
            "The failure detector's local-health score (0 healthy, up to 8): raised while \
             this node's own timer fires late; its timeouts are stretched by 1 + score.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(stats.local_health)).encode(health)?;

        counter_family(
            &mut encoder,
            "rallypoint_events",
            "Membership events emitted, by kind.",
            "kind",
            &[
                ("nodeup".to_owned(), stats.nodeups),
                ("nodedown".to_owned(), stats.nodedowns),
            ],
        )?;
        counter_family(
            &mut encoder,
            "rallypoint_connect_attempts",
            "Outbound connection attempts, by result.",
            "result",
            &with_known(CONNECT_RESULTS, &stats.connect_attempts),
        )?;
        counter_family(
            &mut encoder,
            "rallypoint_handshake_failures",
            "Handshakes that failed, by reason.",
            "reason",
            &with_known(HANDSHAKE_REASONS, &stats.handshake_failures),
        )?;
        counter_family(
            &mut encoder,
            "rallypoint_transport_errors",
            "Established connections cut for what arrived on them, by reason (`unauthentic`: \
             a record altered, injected, replayed, reordered or dropped).",
            "reason",
            &with_known(TRANSPORT_REASONS, &stats.transport_errors),
        )?;

        let mut discovered = encoder.encode_descriptor(
            "rallypoint_discovered_peers",
            "Peers in each topology's current candidate set.",
            None,
            MetricType::Gauge,
        )?;
        for (name, status) in &topologies {
            let labels = [("topology", name.as_str())];
            ConstGauge::new(status.peers.len() as i64)
                .encode(discovered.encode_family(&labels)?)?;
        }

        let errors: Vec<(String, u64)> = topologies
            .iter()
            .map(|(name, status)| (name.clone(), status.errors_total))
            .collect();
        counter_family(
            &mut encoder,
            "rallypoint_strategy_errors",
            "Discovery failures reported by each topology's strategy.",
            "topology",
            &errors,
        )?;

        // Packets by result, every known result from 0; bytes in a counter of their own.
        let mut gossip: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut sent_bytes = 0;
        for (_, status) in &topologies {
            for (counter, n) in &status.counters {
                if *counter == GOSSIP_SENT_BYTES {
                    sent_bytes += n;
                } else if let Some(result) = counter.strip_prefix(GOSSIP_PREFIX) {
                    *gossip.entry(result).or_default() += n;
                }
            }
        }
        counter_family(
            &mut encoder,
            "rallypoint_gossip_packets",
            "Gossip packets, by result (all gossip topologies).",
            "result",
            &with_known(GOSSIP_RESULTS, &gossip),
        )?;
        let bytes = encoder.encode_descriptor(
            "rallypoint_gossip_sent_bytes",
            "Bytes of the gossip heartbeats this node sent (UDP payload, all gossip topologies).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(sent_bytes).encode(bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_counters_are_written_with_every_reason_from_zero() {
        let stats = Arc::new(HttpStats::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(HttpCollector {
            stats: stats.clone(),
        }));
        let text = render(&registry).unwrap();
        for line in [
            "rallypoint_http_connections 0",
            "rallypoint_http_connections_refused_total{reason=\"limit\"} 0",
            "rallypoint_http_connections_closed_total{reason=\"header_timeout\"} 0",
            "rallypoint_http_connections_closed_total{reason=\"idle_timeout\"} 0",
            "rallypoint_http_connections_closed_total{reason=\"write_stalled\"} 0",
            "rallypoint_http_connections_closed_total{reason=\"sse_backlog\"} 0",
            "rallypoint_http_requests_refused_total{reason=\"host\"} 0",
            "rallypoint_http_accept_errors_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }

        let open = stats.opened();
        let _also = stats.opened();
        stats.refused_limit();
        stats.closed(Closed::SseBacklog);
        stats.closed(Closed::HeaderTimeout);
        stats.refused_host();
        stats.accept_error();
        drop(open);
        let text = render(&registry).unwrap();
        for line in [
            "rallypoint_http_connections 1",
            "rallypoint_http_connections_refused_total{reason=\"limit\"} 1",
            "rallypoint_http_connections_closed_total{reason=\"header_timeout\"} 1",
            "rallypoint_http_connections_closed_total{reason=\"sse_backlog\"} 1",
            "rallypoint_http_requests_refused_total{reason=\"host\"} 1",
            "rallypoint_http_accept_errors_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
