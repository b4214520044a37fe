//! Membership: who is connected and proven.
//!
//! - [`core`]: the sans-IO state machine (per-peer state, handshake, heartbeats, timeouts,
//!   transitive peer exchange, pruning). No sockets, no clock, no tokio.
//! - [`seal`]: the sealed transport (a Noise handshake keyed by the cookie, then
//!   encrypted and authenticated records): nothing reaches the core unauthenticated.
//! - [`wire`]: the frames peers exchange inside it.
//! - [`driver`]: the tokio shell that runs the core over TCP.
//! - [`sim`]: a deterministic simulator that runs many cores in virtual time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod core;
pub mod driver;
pub mod seal;
pub mod sim;
pub mod wire;

#[cfg(test)]
mod tests;

/// Timing and limits of the membership protocol. All durations are wall-clock spans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often a heartbeat is sent on each connection. Default 500 ms. Rule of thumb:
    /// `down_after` / 6.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer from which no frame came for this long is down (`heartbeat_timeout`).
    /// Default 3 s. Must exceed `heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// A connection whose handshake has not completed within this is cut. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// First delay before dialling a peer again after a failure; doubles per failure,
    /// with ±20 % jitter. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// The longest delay between two attempts to dial a peer. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How often each node compares its member list with one random peer's (anti-entropy,
    /// so nodes that learned of each other only through peers find each other after a
    /// partition). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A peer learned only from another peer's member list (not from any topology) is
    /// forgotten after it has not been up for this long. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// The largest frame accepted, in bytes; a peer that sends a larger one is cut off.
    /// Default 1 MiB.
    pub max_frame: u32,
    /// How many peers watch each node for silence (its monitors on the ring; Akka's
    /// `monitored-by-nr-of-members`). Heartbeats go to these only, so their cost per
    /// node does not grow with the cluster; a closed connection is noticed on every
    /// connection regardless. Default 5.
    pub monitored_by: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_millis(500),
            down_after: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
            sync_interval: Duration::from_secs(5),
            forget_after: Duration::from_secs(600),
            max_frame: 1 << 20,
            monitored_by: 5,
        }
    }
}

/// Why a membership [`Config`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership.{key} = {value}: {expected}")]
pub struct ConfigError {
    /// The key at fault.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl Config {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, value: Duration, expected| {
            Err(ConfigError {
                key,
                value: humantime::format_duration(value).to_string(),
                expected,
            })
        };
        if self.heartbeat_interval.is_zero() {
            return err(
                "heartbeat_interval",
                self.heartbeat_interval,
                "a positive duration",
            );
        }
        if self.down_after <= self.heartbeat_interval {
            return err(
                "down_after",
                self.down_after,
                "longer than heartbeat_interval",
            );
        }
        if self.handshake_timeout.is_zero() {
            return err(
                "handshake_timeout",
                self.handshake_timeout,
                "a positive duration",
            );
        }
        if self.reconnect_initial.is_zero() {
            return err(
                "reconnect_initial",
                self.reconnect_initial,
                "a positive duration",
            );
        }
        if self.sync_interval.is_zero() {
            return err("sync_interval", self.sync_interval, "a positive duration");
        }
        if self.monitored_by == 0 {
            return Err(ConfigError {
                key: "monitored_by",
                value: "0".to_string(),
                expected: "at least 1",
            });
        }
        if self.max_frame < 1024 {
            return Err(ConfigError {
                key: "max_frame",
                value: self.max_frame.to_string(),
                expected: "at least 1024 bytes",
            });
        }
        Ok(())
    }
}

/// Counters of the membership, for metrics and the HTTP API. Monotonic since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Outbound connection attempts by result: `ok`, `refused`, `timeout`, `error`.
    pub connect_attempts: std::collections::BTreeMap<&'static str, u64>,
    /// Handshakes that failed, by reason: `bad_cookie`, `name_clash`, `bad_version`,
    /// `not_rallypoint`, `timeout`, `protocol`, `pruned`, `duplicate`, `closed`,
    /// `overload` (an unauthenticated connection evicted by a newer one), `self` (a
    /// dial that reached this very node).
    pub handshake_failures: std::collections::BTreeMap<&'static str, u64>,
    /// Connections cut for a protocol violation after the handshake (bad frame, frame
    /// too large, a record that failed authentication).
    pub protocol_errors: u64,
    /// The same cuts by reason: `unauthentic` (a record altered, injected, replayed,
    /// reordered or dropped), `frame_too_large`, `malformed`, `unexpected`.
    pub transport_errors: std::collections::BTreeMap<&'static str, u64>,
    /// `NodeUp` events emitted.
    pub nodeups: u64,
    /// `NodeDown` events emitted.
    pub nodedowns: u64,
    /// Pub/sub messages not sent because the peer's write queue was too full.
    pub messages_dropped: u64,
    /// The failure detector's local-health score now (0 = healthy, up to 8): raised
    /// while this node's own timer fires late, and multiplying its timeouts by
    /// `1 + score`. A gauge, not a counter.
    pub local_health: u32,
}
