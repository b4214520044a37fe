//! The daemon's configuration: the model ([`Config`]) and how it is loaded.
//!
//! Three layers, each overriding the one before ([`Config::load`]):
//! 1. a TOML file (`--config FILE`);
//! 2. environment variables `RALLYPOINT_<KEY>`, nested keys joined by `__`
//!    (`RALLYPOINT_MEMBERSHIP__DOWN_AFTER=5s`, `RALLYPOINT_TOPOLOGIES__PEERS__STRATEGY=static`);
//!    an empty variable counts as unset; the two lists of secrets, `accept_cookies`
//!    and `accept_cookie_files`, are comma-separated there;
//! 3. command-line flags ([`Flags`]).
//!
//! Every key is checked: an unknown key, a value of the wrong type or out of range, and a
//! topology whose strategy does not know one of its keys are refused with the key, the
//! value, where it came from and what was expected ([`ConfigError`]).
//!
//! # Topologies
//!
//! `[topologies.NAME]` tables, one per topology. Each has `strategy` (which strategy runs
//! it), the topology options `authoritative` and `prune_after`, and the strategy's own
//! keys, which are handed to that strategy's `Config` (for `strategy = "static"`,
//! [`static_hosts::Config`]). To add a strategy: a variant of
//! [`StrategyConfig`], an arm in `StrategyConfig::from_table`, and the compiler points
//! to the other places (its name, `StrategyConfig::kind`; starting it,
//! [`Topology::add_to`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Map, Source, Value, ValueKind};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::cluster::{Builder, TopologyOptions};
use crate::cookie::{self, Cookie, CookieError};
use crate::membership;
use crate::node::NodeName;
use crate::strategies::static_hosts::{self, StaticHosts};

mod http;
pub use http::HttpLimits;

/// The prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "RALLYPOINT";

/// The top-level keys, in the order they are documented.
pub const KEYS: &[&str] = &[
    "name",
    "cluster_addr",
    "advertise_addr",
    "http_addr",
    "min_members",
    "event_history",
    "cookie_file",
    "cookie",
    "accept_cookies",
    "accept_cookie_files",
    "http_token",
    "http_max_connections",
    "http_header_timeout",
    "http_idle_timeout",
    "http_allowed_hosts",
    "sse_max_backlog",
    "log_format",
    "membership",
    "topologies",
];

/// The default of `event_history`.
pub const DEFAULT_EVENT_HISTORY: usize = 1024;

/// The strategies a topology can name in `strategy = "…"`.
pub const STRATEGIES: &[&str] = &["static", "gossip", "kubernetes", "dns"];

/// The topology the daemon runs when none is configured: gossip with its defaults.
pub const DEFAULT_TOPOLOGY: &str = "gossip";

/// The keys of a `[topologies.NAME]` table that are not the strategy's own.
pub const TOPOLOGY_KEYS: &[&str] = &["strategy", "authoritative", "prune_after"];

/// The name of the topology that `--static-hosts` defines.
pub const STATIC_HOSTS_TOPOLOGY: &str = "static";

/// The daemon's whole configuration, with defaults filled in.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// This node's name, `basename@host`. Default `rallypoint@<hostname>`, or
    /// `rallypoint-<port>@<hostname>` when the cluster port is not the default 45893.
    pub name: NodeName,
    /// The address the cluster listener binds (TCP). Default `0.0.0.0:45893`.
    pub cluster_addr: SocketAddr,
    /// The address peers dial to reach this node. Default: see
    /// [`Builder::advertise_addr`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<SocketAddr>,
    /// The address of the HTTP API. Default `127.0.0.1:45894`.
    pub http_addr: SocketAddr,
    /// How many peers must be up for `/readyz` to answer 200. Default 0 (ready as soon
    /// as the daemon runs).
    pub min_members: usize,
    /// How many of the latest events the daemon keeps for SSE clients that reconnect
    /// with `Last-Event-ID`. Default 1024; 0 keeps none (a reconnecting client always
    /// gets a snapshot).
    pub event_history: usize,
    /// A file holding the cluster's cookie (white space around it is ignored, see
    /// [`cookie::trim`]; at least 16 bytes; read as [`Cookie::from_file`] says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<PathBuf>,
    /// The cookie itself (usually from `RALLYPOINT_COOKIE`), at least 16 bytes once
    /// trimmed. At most one of `cookie` and `cookie_file` is set; with neither, the
    /// user's default cookie is used ([`Cookie::load_or_create_default`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Secret>,
    /// More cookies accepted from peers, never used to dial (a rotation: see the
    /// "Rotating the cookie" in docs/daemon.md); each as `cookie`. In the environment
    /// (`RALLYPOINT_ACCEPT_COOKIES`), comma-separated. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accept_cookies: Vec<Secret>,
    /// Files each holding a cookie accepted from peers, as `accept_cookies`; each read as
    /// `cookie_file`. In the environment, comma-separated. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accept_cookie_files: Vec<PathBuf>,
    /// A bearer token the HTTP API requires on every route but `/healthz` and
    /// `/readyz` (usually from `RALLYPOINT_HTTP_TOKEN`). Default: none, no token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_token: Option<Secret>,
    /// The HTTP API's limits (`http_max_connections`, `http_header_timeout`,
    /// `http_idle_timeout`, `http_allowed_hosts`, `sse_max_backlog`), written flat.
    #[serde(flatten)]
    pub http: HttpLimits,
    /// How the daemon writes its logs (to stderr): `text` (default) or `json` (one
    /// object a line). The level comes from `RUST_LOG`.
    pub log_format: LogFormat,
    /// Timing and limits of the membership protocol (`[membership]`).
    pub membership: membership::Config,
    /// The topologies by name (`[topologies.NAME]`). When no layer mentions
    /// `topologies` (and there is no `--static-hosts`), one topology named `gossip` runs
    /// UDP multicast gossip with its defaults, so nodes on one LAN find each other with
    /// no set-up.
    pub topologies: BTreeMap<String, Topology>,
}

/// How logs are written (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// A secret string: `Debug` and `Serialize` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// One topology: a strategy and its options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Topology {
    /// The strategy and its configuration (`strategy = "…"` and the strategy's keys).
    #[serde(flatten)]
    pub strategy: StrategyConfig,
    /// Whether the topology prunes peers that left its set; unset: the strategy's
    /// default (static hosts and gossip: no; Kubernetes and DNS: yes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authoritative: Option<bool>,
    /// How long a peer may be absent from every authoritative set before it is pruned.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub prune_after: Duration,
}

/// Which strategy a topology runs, with its configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "strategy")]
pub enum StrategyConfig {
    /// `strategy = "static"`: a fixed list of `host:port`.
    #[serde(rename = "static")]
    Static(static_hosts::Config),
    /// `strategy = "gossip"`: authenticated UDP multicast heartbeats.
    #[serde(rename = "gossip")]
    Gossip(crate::strategies::gossip::Config),
    /// `strategy = "kubernetes"`: endpoints chosen by a label selector, watched (feature
    /// `kubernetes`).
    #[cfg(feature = "kubernetes")]
    #[serde(rename = "kubernetes")]
    Kubernetes(crate::strategies::kubernetes::Config),
    /// `strategy = "dns"`: A/AAAA or SRV records of a name (feature `dns`).
    #[cfg(feature = "dns")]
    #[serde(rename = "dns")]
    Dns(crate::strategies::dns::Config),
}

impl StrategyConfig {
    /// The strategy's configuration from the rest of its topology table (`strategy`,
    /// `authoritative` and `prune_after` taken out). `key` is the table's key
    /// (`topologies.NAME`), for errors.
    fn from_table(
        key: &str,
        kind: &str,
        kind_origin: Option<&str>,
        rest: Map<String, Value>,
    ) -> Result<Self, ConfigError> {
        let hosts_origin = rest.get("hosts").and_then(first_origin);
        let table = Value::new(None, ValueKind::Table(rest));
        match kind {
            "static" => {
                let config: static_hosts::Config = deserialize(key, table)?;
                StaticHosts::from_config(config.clone()).map_err(|e| ConfigError::BadValue {
                    key: format!("{key}.hosts"),
                    value: format!("{:?}", e.entry),
                    origin: hosts_origin,
                    expected: "host:port (e.g. 10.0.0.6:45893 or node3:45893)".into(),
                })?;
                Ok(StrategyConfig::Static(config))
            }
            #[cfg(feature = "dns")]
            "dns" => {
                let config: crate::strategies::dns::Config = deserialize(key, table)?;
                config.validate().map_err(|e| ConfigError::BadValue {
                    key: format!("{key}.{}", e.key),
                    value: e.value.clone(),
                    origin: None,
                    expected: e.expected.into(),
                })?;
                Ok(StrategyConfig::Dns(config))
            }
            "gossip" => {
                let config: crate::strategies::gossip::Config = deserialize(key, table)?;
                config.validate().map_err(|e| ConfigError::BadValue {
                    key: format!("{key}.{}", e.key),
                    value: e.value.clone(),
                    origin: None,
                    expected: e.expected.to_string(),
                })?;
                Ok(StrategyConfig::Gossip(config))
            }
            #[cfg(feature = "kubernetes")]
            "kubernetes" => {
                let config: crate::strategies::kubernetes::Config = deserialize(key, table)?;
                crate::strategies::kubernetes::Kubernetes::from_config(config.clone()).map_err(
                    |e| ConfigError::BadValue {
                        key: format!("{key}.{}", e.key),
                        value: e.value.clone(),
                        origin: None,
                        expected: e.expected.to_string(),
                    },
                )?;
                Ok(StrategyConfig::Kubernetes(config))
            }
            other => Err(ConfigError::BadValue {
                key: format!("{key}.strategy"),
                value: format!("{other:?}"),
                origin: kind_origin.map(str::to_owned),
                expected: format!("one of {}", quoted(STRATEGIES)),
            }),
        }
    }

    /// The strategy's name as written in `strategy = "…"`.
    pub fn kind(&self) -> &'static str {
        match self {
            StrategyConfig::Static(_) => "static",
            StrategyConfig::Gossip(_) => "gossip",
            #[cfg(feature = "kubernetes")]
            StrategyConfig::Kubernetes(_) => "kubernetes",
            #[cfg(feature = "dns")]
            StrategyConfig::Dns(_) => "dns",
        }
    }
}

impl Topology {
    /// Adds this topology, named `name`, to a cluster builder.
    pub fn add_to(&self, name: &str, builder: Builder) -> Builder {
        let options = TopologyOptions {
            authoritative: self.authoritative,
            prune_after: self.prune_after,
        };
        match &self.strategy {
            StrategyConfig::Static(c) => {
                let strategy =
                    StaticHosts::new(c.hosts.clone()).resolve_interval(c.resolve_interval);
                builder.topology_with(name, strategy, options)
            }
            StrategyConfig::Gossip(c) => match crate::strategies::gossip::Gossip::new(c.clone()) {
                Ok(strategy) => builder.topology_with(name, strategy, options),
                // Checked when the configuration was loaded.
                Err(e) => {
                    tracing::error!(topology = name, error = %e, "invalid gossip topology");
                    builder
                }
            },
            #[cfg(feature = "kubernetes")]
            StrategyConfig::Kubernetes(c) => {
                match crate::strategies::kubernetes::Kubernetes::from_config(c.clone()) {
                    Ok(strategy) => builder.topology_with(name, strategy, options),
                    // Checked when the configuration was loaded.
                    Err(e) => {
                        tracing::error!(topology = name, error = %e, "invalid kubernetes topology");
                        builder
                    }
                }
            }
            #[cfg(feature = "dns")]
            StrategyConfig::Dns(c) => match crate::strategies::dns::Dns::from_config(c.clone()) {
                Ok(strategy) => builder.topology_with(name, strategy, options),
                // Checked when the configuration was loaded.
                Err(e) => {
                    tracing::error!(topology = name, error = %e, "invalid dns topology");
                    builder
                }
            },
        }
    }
}

/// Settings from the command line: the top layer. `None` leaves a key to the lower
/// layers.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--name`.
    pub name: Option<String>,
    /// `--cluster-addr`.
    pub cluster_addr: Option<SocketAddr>,
    /// `--advertise-addr`.
    pub advertise_addr: Option<SocketAddr>,
    /// `--http-addr`.
    pub http_addr: Option<SocketAddr>,
    /// `--cookie-file`.
    pub cookie_file: Option<PathBuf>,
    /// `--static-hosts`: sets the topology named [`STATIC_HOSTS_TOPOLOGY`] to a static
    /// one with these hosts.
    pub static_hosts: Option<Vec<String>>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML.
    #[error("cannot load the configuration: {0}")]
    Load(String),
    /// A key that no part of the configuration knows.
    #[error("unknown configuration key `{key}`{}: expected one of {expected}", from(.origin))]
    UnknownKey {
        /// The key, dotted (`membership.hearbeat_interval`).
        key: String,
        /// Where it was set: a file's path, `the environment`; `None`: a flag.
        origin: Option<String>,
        /// The keys that are known there.
        expected: String,
    },
    /// A key whose value is refused.
    #[error("configuration key `{key}` = {value}{}: expected {expected}", from(.origin))]
    BadValue {
        /// The key, dotted (`membership.down_after`).
        key: String,
        /// The value as given.
        value: String,
        /// Where it was set: a file's path, `the environment`; `None`: a flag or unknown.
        origin: Option<String>,
        /// What was expected.
        expected: String,
    },
    /// A required key is absent.
    #[error("configuration key `{key}` is missing: expected {expected}")]
    Missing {
        /// The key, dotted.
        key: String,
        /// What was expected.
        expected: String,
    },
    /// The cookie could not be read.
    #[error(transparent)]
    Cookie(#[from] CookieError),
}

fn from(origin: &Option<String>) -> String {
    match origin.as_deref() {
        Some(o) => format!(" (from {o})"),
        None => String::new(),
    }
}

/// Where a value came from, for people: a value from the environment names its
/// variable (`RALLYPOINT_MEMBERSHIP__HEARTBEAT_INTERVAL`); a misspelt key or value gets
/// the known one it is closest to.
fn for_humans(e: ConfigError) -> ConfigError {
    let env_var = |key: &str, origin: Option<String>| match origin.as_deref() {
        Some("the environment") if !key.starts_with(ENV_PREFIX) => {
            Some(format!("the environment variable {}", env_var_of(key)))
        }
        _ => origin,
    };
    match e {
        ConfigError::UnknownKey {
            key,
            origin,
            expected,
        } => {
            let last = key.rsplit('.').next().unwrap_or(&key).to_owned();
            let origin = env_var(&key, origin);
            let expected = match closest(&last, &expected) {
                Some(near) => format!("{expected}; did you mean `{near}`?"),
                None => expected,
            };
            ConfigError::UnknownKey {
                key,
                origin,
                expected,
            }
        }
        ConfigError::BadValue {
            key,
            value,
            origin,
            expected,
        } => {
            let origin = env_var(&key, origin);
            let given = value.trim_matches('"');
            let expected = match expected
                .starts_with("one of")
                .then(|| closest(given, &expected))
                .flatten()
            {
                Some(near) => format!("{expected}; did you mean `{near}`?"),
                None => expected,
            };
            ConfigError::BadValue {
                key,
                value,
                origin,
                expected,
            }
        }
        e => e,
    }
}

/// The environment variable that sets `key` (`membership.down_after` →
/// `RALLYPOINT_MEMBERSHIP__DOWN_AFTER`; an item `hosts[2]` → its list's variable).
fn env_var_of(key: &str) -> String {
    let path: Vec<String> = key
        .split('.')
        .map(|seg| seg.split('[').next().unwrap_or(seg).to_uppercase())
        .collect();
    format!("{ENV_PREFIX}_{}", path.join("__"))
}

/// Of the `quoted` names in `expected`, the one closest to `given` by edit distance,
/// when it is close enough to be a typo (at most a third of its length, at least 1).
/// Only the case differing counts as the closest of all (`Gossip` for `gossip`). Names
/// longer than [`MAX_SUGGESTED`] characters get no suggestion (no key is that long).
fn closest<'a>(given: &str, expected: &'a str) -> Option<&'a str> {
    let n = given.chars().count();
    if n > MAX_SUGGESTED {
        return None;
    }
    let lower = given.to_lowercase();
    let limit = (n / 3).max(1);
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|cand| *cand != given && cand.chars().count().abs_diff(n) <= limit)
        .map(|cand| (edit_distance(&lower, &cand.to_lowercase()), cand))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, cand)| cand)
}

/// The longest key or value a suggestion is looked for.
const MAX_SUGGESTED: usize = 64;

/// Edit distance in characters (insertions, deletions, substitutions, and swaps of two
/// neighbours: `nmae` is one from `name`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an environment variable is one Kubernetes puts into every pod for a Service
/// whose name starts with `rallypoint` (`RALLYPOINT_PORT=tcp://…`,
/// `RALLYPOINT_API_SERVICE_HOST`, `RALLYPOINT_PORT_45894_TCP_ADDR`, …), not a
/// configuration key: no top-level key ends that way, and nested keys hold `__`.
fn is_service_link(key: &str) -> bool {
    let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    if rest.contains("__") {
        return false;
    }
    let words: Vec<&str> = rest.split('_').skip(1).collect();
    let n = words.len();
    let proto = |w: &str| matches!(w, "TCP" | "UDP" | "SCTP");
    let number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    // …_SERVICE_HOST, …_SERVICE_PORT, …_SERVICE_PORT_<name>
    let service = (0..n).any(|i| {
        words[i] == "SERVICE"
            && match words.get(i + 1) {
                Some(&"HOST") => i + 2 == n,
                Some(&"PORT") => true,
                _ => false,
            }
    });
    if service {
        return true;
    }
    // …_PORT, …_PORT_<n>_<PROTO>, …_PORT_<n>_<PROTO>_{ADDR,PORT,PROTO}
    if let Some(i) = words.iter().rposition(|w| *w == "PORT") {
        let tail = &words[i + 1..];
        return match tail {
            [] => true,
            [p, q] => number(p) && proto(q),
            [p, q, r] => number(p) && proto(q) && matches!(*r, "ADDR" | "PORT" | "PROTO"),
            _ => false,
        };
    }
    false
}

/// Whether a key (or an environment variable's name) is letters, digits, `_` and `-`
/// only: the config crate reads anything else in a key as a path expression.
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Refuses a TOML text with a key the config crate would misread: it takes every key
/// as a path expression, so `"a[-120855006]" = 5` made it build an array of 120 million
/// entries (found by the `config_loader` fuzz target). Every key rallypoint knows, and
/// every topology name, is letters, digits, `_` and `-`. Text that is not TOML is left to
/// the loader, which reports it.
fn check_keys(text: &str, origin: &str) -> Result<(), ConfigError> {
    fn walk(value: &toml::Value, path: &str, origin: &str) -> Result<(), ConfigError> {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if !plain_key(k) {
                        return Err(ConfigError::UnknownKey {
                            key,
                            origin: Some(origin.to_owned()),
                            expected: "keys (and topology names) of letters, digits, `_` and `-`"
                                .into(),
                        });
                    }
                    walk(v, &key, origin)?;
                }
                Ok(())
            }
            toml::Value::Array(items) => items.iter().try_for_each(|v| walk(v, path, origin)),
            _ => Ok(()),
        }
    }
    match text.parse::<toml::Table>() {
        Ok(table) => walk(&toml::Value::Table(table), "", origin),
        Err(_) => Ok(()),
    }
}

/// The largest configuration file read, in bytes.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Whether a configuration path may be read: a regular file or a pipe (`--config <(…)`),
/// not a device, a socket or a directory.
fn readable_as_config(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        kind.is_file() || kind.is_fifo()
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

impl Config {
    /// Loads the configuration: `file` (if any) < the environment variables `env`
    /// (pass `std::env::vars()`; only `RALLYPOINT_*` ones are read) < `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Config, ConfigError> {
        if let Some(path) = file {
            // A device or a huge file is refused before anything reads it
            // (`--config /dev/zero` would be read without end). A pipe is read, so that
            // `--config <(…)` works.
            if let Ok(meta) = std::fs::metadata(path) {
                if !readable_as_config(&meta) {
                    return Err(ConfigError::Load(format!(
                        "the configuration {} is not a regular file",
                        path.display()
                    )));
                }
                if meta.len() > MAX_CONFIG_FILE {
                    return Err(ConfigError::Load(format!(
                        "the configuration {} has {} bytes; at most {MAX_CONFIG_FILE} are read",
                        path.display(),
                        meta.len()
                    )));
                }
            }
            if let Ok(text) = std::fs::read_to_string(path) {
                check_keys(&text, &path.display().to_string()).map_err(for_humans)?;
            }
        }
        let file = file.map(|path| {
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true)
        });
        Config::load_with(file, env, flags).map_err(for_humans)
    }

    /// [`Config::load`] with the file's part given as TOML text.
    pub fn load_str(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Config, ConfigError> {
        check_keys(toml, "the configuration text").map_err(for_humans)?;
        let text = config::File::from_str(toml, config::FileFormat::Toml);
        Config::load_with(Some(text), env, flags).map_err(for_humans)
    }

    fn load_with<S>(
        file: Option<S>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Config, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let env: Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !is_service_link(k))
            .collect();
        // The config crate reads an environment variable's name as a path expression:
        // `RALLYPOINT_A[500000000]` would make it build an array of that many entries.
        // A key is letters, digits and `_`; anything else is refused before it is read.
        if let Some(bad) = env.keys().find(|k| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| !plain_key(rest))
        }) {
            return Err(ConfigError::UnknownKey {
                key: bad.to_owned(),
                origin: Some("the environment".into()),
                expected: "a variable named RALLYPOINT_ and the key in letters, digits, `_` \
                           and `-` (nested keys joined by `__`)"
                    .into(),
            });
        }
        let load = |e: config::ConfigError| ConfigError::Load(e.to_string());
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .ignore_empty(true)
                .source(Some(env)),
        );
        let mut set = |key: &str, value: Option<Value>| -> Result<(), ConfigError> {
            if let Some(v) = value {
                builder = std::mem::take(&mut builder)
                    .set_override(key, v)
                    .map_err(load)?;
            }
            Ok(())
        };
        set("name", flags.name.clone().map(Value::from))?;
        set(
            "cluster_addr",
            flags.cluster_addr.map(|a| Value::from(a.to_string())),
        )?;
        set(
            "advertise_addr",
            flags.advertise_addr.map(|a| Value::from(a.to_string())),
        )?;
        set(
            "http_addr",
            flags.http_addr.map(|a| Value::from(a.to_string())),
        )?;
        set(
            "cookie_file",
            flags
                .cookie_file
                .as_ref()
                .map(|p| Value::from(p.to_string_lossy().into_owned())),
        )?;
        if let Some(hosts) = &flags.static_hosts {
            set(
                &format!("topologies.{STATIC_HOSTS_TOPOLOGY}.strategy"),
                Some(Value::from("static")),
            )?;
            set(
                &format!("topologies.{STATIC_HOSTS_TOPOLOGY}.hosts"),
                Some(Value::from(hosts.clone())),
            )?;
        }
        let merged = builder.build().map_err(load)?;
        let root = merged.collect().map_err(load)?;
        Config::from_root(root)
    }

    /// Builds the configuration from the merged tree of keys.
    fn from_root(root: Map<String, Value>) -> Result<Config, ConfigError> {
        let mut name = None;
        let mut cluster_addr = SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_CLUSTER_PORT));
        let mut advertise_addr = None;
        let mut http_addr = crate::DEFAULT_HTTP_ADDR;
        let mut min_members = 0;
        let mut event_history = DEFAULT_EVENT_HISTORY;
        let mut cookie_file: Option<(PathBuf, Option<String>)> = None;
        let mut cookie: Option<(Secret, Option<String>)> = None;
        let mut accept_cookies = Vec::new();
        let mut accept_cookie_files = Vec::new();
        let mut http_token = None;
        let mut http = HttpLimits::default();
        let mut log_format = LogFormat::default();
        let mut membership = membership::Config::default();
        let mut topologies = None;
        for (key, value) in root {
            match key.as_str() {
                "name" => name = Some(deserialize::<NodeName>(&key, value)?),
                "cluster_addr" => cluster_addr = deserialize(&key, value)?,
                "advertise_addr" => advertise_addr = Some(deserialize(&key, value)?),
                "http_addr" => http_addr = deserialize(&key, value)?,
                "min_members" => min_members = deserialize(&key, value)?,
                "event_history" => event_history = deserialize(&key, value)?,
                "cookie_file" => {
                    let origin = value.origin().map(str::to_owned);
                    cookie_file = Some((deserialize(&key, value)?, origin));
                }
                "cookie" => {
                    let origin = value.origin().map(str::to_owned);
                    let secret: String = deserialize(&key, value)?;
                    check_cookie(&key, &key, &secret, origin.as_deref())?;
                    cookie = Some((Secret(secret), origin));
                }
                "accept_cookies" => {
                    for (i, (secret, origin)) in list(&key, value, true)?.into_iter().enumerate() {
                        check_cookie(&format!("{key}[{i}]"), &key, &secret, origin.as_deref())?;
                        accept_cookies.push(Secret(secret));
                    }
                }
                "accept_cookie_files" => {
                    for (i, (path, origin)) in list(&key, value, false)?.into_iter().enumerate() {
                        if path.is_empty() {
                            return Err(ConfigError::BadValue {
                                key: format!("{key}[{i}]"),
                                value: "\"\"".into(),
                                origin,
                                expected: "the path of a file holding a cookie".into(),
                            });
                        }
                        accept_cookie_files.push(PathBuf::from(path));
                    }
                }
                "log_format" => log_format = deserialize(&key, value)?,
                "http_token" => {
                    let origin = value.origin().map(str::to_owned);
                    let token: String = deserialize(&key, value)?;
                    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(ConfigError::BadValue {
                            key,
                            value: "<redacted>".into(),
                            origin,
                            expected: "a non-empty token of printable ASCII without spaces".into(),
                        });
                    }
                    http_token = Some(Secret(token));
                }
                k if HttpLimits::KEYS.contains(&k) => http.set(k, value)?,
                "membership" => {
                    let set: BTreeMap<String, Option<String>> = match &value.kind {
                        ValueKind::Table(t) => t
                            .iter()
                            .map(|(k, v)| (k.clone(), v.origin().map(str::to_owned)))
                            .collect(),
                        _ => BTreeMap::new(),
                    };
                    membership = deserialize(&key, value)?;
                    membership.validate().map_err(|e| {
                        // down_after against heartbeat_interval: blame the one that was
                        // set (a default is no one's mistake).
                        if e.key == "down_after"
                            && !set.contains_key("down_after")
                            && let Some(origin) = set.get("heartbeat_interval")
                        {
                            return ConfigError::BadValue {
                                key: "membership.heartbeat_interval".into(),
                                value: humantime::format_duration(membership.heartbeat_interval)
                                    .to_string(),
                                origin: origin.clone(),
                                expected: format!(
                                    "shorter than membership.down_after ({}, its default); \
                                     set down_after too",
                                    humantime::format_duration(membership.down_after)
                                ),
                            };
                        }
                        ConfigError::BadValue {
                            key: format!("membership.{}", e.key),
                            origin: set.get(e.key).cloned().flatten(),
                            value: e.value,
                            expected: e.expected.into(),
                        }
                    })?;
                }
                "topologies" => topologies = Some(parse_topologies(value)?),
                _ => {
                    return Err(ConfigError::UnknownKey {
                        origin: value.origin().map(str::to_owned),
                        key,
                        expected: quoted(KEYS),
                    });
                }
            }
        }
        // Both cookie keys set: the one from the higher layer wins; in one layer, refuse.
        if let (Some((_, c)), Some((_, f))) = (&cookie, &cookie_file) {
            match layer(c.as_deref()).cmp(&layer(f.as_deref())) {
                std::cmp::Ordering::Greater => cookie_file = None,
                std::cmp::Ordering::Less => cookie = None,
                std::cmp::Ordering::Equal => {
                    return Err(ConfigError::BadValue {
                        key: "cookie".into(),
                        value: "<redacted>".into(),
                        origin: c.clone(),
                        expected: "either `cookie` or `cookie_file`, not both".into(),
                    });
                }
            }
        }
        Ok(Config {
            name: match name {
                Some(n) => n,
                None => default_name(cluster_addr.port())?,
            },
            cluster_addr,
            advertise_addr,
            http_addr,
            min_members,
            event_history,
            cookie_file: cookie_file.map(|(p, _)| p),
            cookie: cookie.map(|(s, _)| s),
            accept_cookies,
            accept_cookie_files,
            http_token,
            http,
            log_format,
            membership,
            topologies: topologies.unwrap_or_else(default_topologies),
        })
    }

    /// The configured cookie: read from `cookie_file`, or `cookie`; `None` when neither
    /// is set (the default cookie is used).
    pub fn load_cookie(&self) -> Result<Option<Cookie>, ConfigError> {
        if let Some(path) = &self.cookie_file {
            return Ok(Some(Cookie::from_file(path)?));
        }
        Ok(self
            .cookie
            .as_ref()
            .map(|s| Cookie::new(cookie::trim(s.0.as_bytes()))))
    }

    /// The cookies accepted from peers besides the cookie: `accept_cookies`, then those
    /// read from `accept_cookie_files` (read and checked as `cookie_file` is). Empty when
    /// neither is set.
    pub fn load_accepted_cookies(&self) -> Result<Vec<Cookie>, ConfigError> {
        let mut out: Vec<Cookie> = self
            .accept_cookies
            .iter()
            .map(|s| Cookie::new(cookie::trim(s.0.as_bytes())))
            .collect();
        for path in &self.accept_cookie_files {
            out.push(Cookie::from_file(path)?);
        }
        Ok(out)
    }
}

/// Refuses a cookie set in the configuration (`key`, an item of the top-level key
/// `base`) that is shorter than [`cookie::MIN_LEN`] bytes once [`cookie::trim`]med,
/// with how to make a good one.
fn check_cookie(
    key: &str,
    base: &str,
    secret: &str,
    origin: Option<&str>,
) -> Result<(), ConfigError> {
    let len = cookie::trim(secret.as_bytes()).len();
    if len >= cookie::MIN_LEN {
        return Ok(());
    }
    let how = if origin == Some("the environment") {
        format!("`export {}=\"$({})\"`", env_var_of(base), cookie::MAKE_ONE)
    } else {
        format!("`{}` and set `{base}` to its output", cookie::MAKE_ONE)
    };
    Err(ConfigError::BadValue {
        key: key.to_owned(),
        value: format!("<redacted: {}>", cookie::bytes(len)),
        origin: origin.map(str::to_owned),
        expected: format!(
            "a cookie of at least {} bytes (white space around it aside); make one with {how}",
            cookie::MIN_LEN
        ),
    })
}

/// A list of strings, each with its origin: a list in a file; in the environment, where a
/// variable holds one string, comma-separated items with white space around each
/// removed. (Not the config crate's own list parsing: it needs `try_parsing`, which
/// would turn every variable that looks like a number, a cookie of digits too, into
/// one.) A `secret` list's values are never shown in errors.
fn list(
    key: &str,
    value: Value,
    secret: bool,
) -> Result<Vec<(String, Option<String>)>, ConfigError> {
    let origin = first_origin(&value);
    if let ValueKind::String(s) = &value.kind
        && origin.as_deref() == Some("the environment")
    {
        return Ok(s
            .split(',')
            .map(|item| (item.trim().to_owned(), origin.clone()))
            .collect());
    }
    let items: Vec<Value> = match value.kind {
        ValueKind::Array(items) => items,
        other => {
            return Err(ConfigError::BadValue {
                key: key.to_owned(),
                value: if secret {
                    "<redacted>".into()
                } else {
                    show(&Value::new(origin.as_ref(), other))
                },
                origin,
                expected: "a list, such as [\"a\", \"b\"]".into(),
            });
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let origin = first_origin(&item).or_else(|| origin.clone());
            let item_key = format!("{key}[{i}]");
            match &item.kind {
                ValueKind::String(s) => Ok((s.clone(), origin)),
                _ => Err(ConfigError::BadValue {
                    value: if secret {
                        "<redacted>".into()
                    } else {
                        show(&item)
                    },
                    key: item_key,
                    origin,
                    expected: "a string".into(),
                }),
            }
        })
        .collect()
}

/// The layer a value came from, by its origin: flags (none) above the environment above
/// the file.
fn layer(origin: Option<&str>) -> u8 {
    match origin {
        None => 3,
        Some("the environment") => 2,
        Some(_) => 1,
    }
}

/// `rallypoint@<hostname>` on the default cluster port, `rallypoint-<port>@<hostname>`
/// on any other: two daemons on one host must differ in their cluster port, so they
/// then differ in their default names too, and find each other with nothing else set.
fn default_name(cluster_port: u16) -> Result<NodeName, ConfigError> {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    // Port 0 (any free port) is not known yet, and says nothing about the node.
    let basename = if cluster_port == crate::DEFAULT_CLUSTER_PORT || cluster_port == 0 {
        "rallypoint".to_owned()
    } else {
        format!("rallypoint-{cluster_port}")
    };
    NodeName::new(&basename, &host).map_err(|e| ConfigError::Missing {
        key: "name".into(),
        expected: format!("basename@host (the default from the hostname is invalid: {e})"),
    })
}

/// The origin of a value, or of the first leaf inside it that has one.
fn first_origin(value: &Value) -> Option<String> {
    if let Some(o) = value.origin() {
        return Some(o.to_owned());
    }
    match &value.kind {
        ValueKind::Table(t) => t.values().find_map(first_origin),
        ValueKind::Array(a) => a.iter().find_map(first_origin),
        _ => None,
    }
}

/// The topologies when none is configured: gossip with its defaults.
fn default_topologies() -> BTreeMap<String, Topology> {
    BTreeMap::from([(
        DEFAULT_TOPOLOGY.to_owned(),
        Topology {
            strategy: StrategyConfig::Gossip(crate::strategies::gossip::Config::default()),
            authoritative: None,
            prune_after: crate::TopologyOptions::default().prune_after,
        },
    )])
}

/// Parses the `topologies` table.
fn parse_topologies(value: Value) -> Result<BTreeMap<String, Topology>, ConfigError> {
    let origin = value.origin().map(str::to_owned);
    let shown = show(&value);
    let table = value.into_table().map_err(|_| ConfigError::BadValue {
        key: "topologies".into(),
        value: shown,
        origin,
        expected: "a table of topologies ([topologies.NAME] with strategy = \"…\")".into(),
    })?;
    let mut out = BTreeMap::new();
    for (name, value) in table {
        let key = format!("topologies.{name}");
        let origin = value.origin().map(str::to_owned);
        let shown = show(&value);
        let mut t = value.into_table().map_err(|_| ConfigError::BadValue {
            key: key.clone(),
            value: shown,
            origin,
            expected: "a table with strategy = \"…\" and the strategy's keys".into(),
        })?;
        let strategy = t.remove("strategy").ok_or_else(|| ConfigError::Missing {
            key: format!("{key}.strategy"),
            expected: format!("one of {}", quoted(STRATEGIES)),
        })?;
        let kind_origin = strategy.origin().map(str::to_owned);
        let kind: String = deserialize(&format!("{key}.strategy"), strategy)?;
        let authoritative = match t.remove("authoritative") {
            Some(v) => Some(deserialize(&format!("{key}.authoritative"), v)?),
            None => None,
        };
        let prune_after = match t.remove("prune_after") {
            Some(v) => deserialize::<Duration_>(&format!("{key}.prune_after"), v)?.0,
            None => TopologyOptions::default().prune_after,
        };
        let strategy = StrategyConfig::from_table(&key, &kind, kind_origin.as_deref(), t)?;
        out.insert(
            name,
            Topology {
                strategy,
                authoritative,
                prune_after,
            },
        );
    }
    Ok(out)
}

/// A duration in humantime form (`500ms`, `3s`).
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct Duration_(#[serde(with = "humantime_serde")] Duration);

/// Deserializes `value`, found at `key`, into `T`; an error names the key (down to the
/// nested key at fault), the value, where it came from and what was expected.
fn deserialize<T: DeserializeOwned>(key: &str, value: Value) -> Result<T, ConfigError> {
    let original = value.clone();
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut full = key.to_owned();
            let mut at = Some(&original);
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => {
                        full.push('.');
                        full.push_str(key);
                        at = at.and_then(|v| match &v.kind {
                            ValueKind::Table(t) => t.get(key),
                            _ => None,
                        });
                    }
                    serde_path_to_error::Segment::Seq { index } => {
                        full.push_str(&format!("[{index}]"));
                        at = at.and_then(|v| match &v.kind {
                            ValueKind::Array(a) => a.get(*index),
                            _ => None,
                        });
                    }
                    _ => {}
                }
            }
            if let config::ConfigError::NotFound(field) = e.inner() {
                return Err(ConfigError::Missing {
                    key: format!("{full}.{field}"),
                    expected: "a value".into(),
                });
            }
            let message = message_of(e.inner());
            // A list from the environment is one string, comma-separated: split it where
            // a list is expected, and deserialize again.
            if message.ends_with("expected a sequence")
                && let Some(leaf) = at
                && leaf.origin() == Some("the environment")
                && let ValueKind::String(text) = &leaf.kind
            {
                let steps: Vec<Step> = e
                    .path()
                    .iter()
                    .filter_map(|seg| match seg {
                        serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
                        serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
                        _ => None,
                    })
                    .collect();
                let origin = Some("the environment".to_owned());
                let items: Vec<Value> = text
                    .split(',')
                    .map(|item| Value::new(origin.as_ref(), item.trim().to_owned()))
                    .collect();
                let mut split = original.clone();
                if let Some(slot) = value_at(&mut split, &steps) {
                    slot.kind = ValueKind::Array(items);
                    return deserialize(key, split);
                }
            }
            if let Some(rest) = message.strip_prefix("unknown field `")
                && let Some((field, expected)) = rest.split_once('`')
            {
                // The path usually ends at the unknown key already.
                let origin = if full.ends_with(&format!(".{field}")) {
                    at.and_then(first_origin)
                } else {
                    full = format!("{full}.{field}");
                    at.and_then(|v| match &v.kind {
                        ValueKind::Table(t) => t.get(field),
                        _ => None,
                    })
                    .and_then(first_origin)
                };
                let expected = expected
                    .trim_start_matches(',')
                    .trim()
                    .trim_start_matches("expected")
                    .trim();
                let expected = expected.strip_prefix("one of ").unwrap_or(expected);
                return Err(ConfigError::UnknownKey {
                    key: full,
                    origin,
                    expected: if expected.is_empty() {
                        "no keys here".into()
                    } else {
                        expected.into()
                    },
                });
            }
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|r| r.split_once('`'))
                .map(|(f, _)| f)
            {
                return Err(ConfigError::Missing {
                    key: format!("{full}.{field}"),
                    expected: "a value".into(),
                });
            }
            let expected = match message.split_once("expected ") {
                // A closing parenthesis left over from "(expected …)".
                Some((_, exp)) if exp.ends_with(')') && !exp.contains('(') => {
                    exp[..exp.len() - 1].to_owned()
                }
                Some((_, exp)) => exp.to_owned(),
                None => message.clone(),
            };
            let expected = if expected == "a duration" {
                "a duration such as \"500ms\" or \"3s\"".to_owned()
            } else if expected == "a sequence" {
                "a list, such as [\"a\", \"b\"]".to_owned()
            } else if message.contains("socket address") {
                format!("an address such as \"127.0.0.1:45894\" ({message})")
            } else {
                expected
            };
            Err(ConfigError::BadValue {
                key: full,
                value: at.map(show).unwrap_or_else(|| "?".into()),
                origin: at.and_then(first_origin),
                expected,
            })
        }
    }
}

/// One step of a path into a [`Value`].
enum Step {
    Key(String),
    Index(usize),
}

/// The value at `steps` inside `value`.
fn value_at<'a>(value: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps
        .iter()
        .try_fold(value, |v, step| match (&mut v.kind, step) {
            (ValueKind::Table(t), Step::Key(k)) => t.get_mut(k),
            (ValueKind::Array(a), Step::Index(i)) => a.get_mut(*i),
            _ => None,
        })
}

/// The message of a deserialization error, without `config`'s key and origin suffixes.
fn message_of(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::At { error, .. } => message_of(error),
        other => other.to_string(),
    }
}

/// A value as it would be written in TOML.
fn show(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{k} = {}", show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ValueKind::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
