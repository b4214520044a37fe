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
//! | `rallypoint_members` | gauge | |
//! | `rallypoint_events_total` | counter | `kind`: `nodeup`, `nodedown` |
//! | `rallypoint_connect_attempts_total` | counter | `result`: `ok`, `refused`, `timeout`, `error` |
//! | `rallypoint_handshake_failures_total` | counter | `reason`: `bad_cookie`, `name_clash`, … |
//! | `rallypoint_transport_errors_total` | counter | `reason`: `unauthentic`, `frame_too_large`, `malformed`, `unexpected` |
//! | `rallypoint_discovered_peers` | gauge | `topology` |
//! | `rallypoint_strategy_errors_total` | counter | `topology` |
//! | `rallypoint_gossip_packets_total` | counter | `result` (topology counters named `gossip_RESULT`) |

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

/// Reads the node's counters at each scrape.
struct NodeCollector {
    cluster: Arc<Cluster>,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

/// The registry of a node's metrics.
pub fn registry(cluster: Arc<Cluster>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { cluster }));
    registry
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

        let mut gossip: BTreeMap<String, u64> = BTreeMap::new();
        for (_, status) in &topologies {
            for (counter, n) in &status.counters {
                if let Some(result) = counter.strip_prefix(GOSSIP_PREFIX) {
                    *gossip.entry(result.to_owned()).or_default() += n;
                }
            }
        }
        counter_family(
            &mut encoder,
            "rallypoint_gossip_packets",
            "Gossip packets, by result (all gossip topologies).",
            "result",
            &gossip.into_iter().collect::<Vec<_>>(),
        )?;
        Ok(())
    }
}
