//! Kubernetes: the peers are the endpoints (or pods) that a label selector picks in a
//! namespace, followed by a watch on the Kubernetes API.
//!
//! The strategy lists the objects once, then watches from the list's `resourceVersion`
//! with bookmarks (kube-runtime's [`watcher`]); a change in the API reaches the
//! candidate set within one round trip, where a poller waits for its next tick. A watch
//! that the server ends is resumed from the last version seen; a `410 Gone` (the version
//! has left the server's history) leads to a fresh list. Each list replaces the set as a
//! whole, when it is complete (`Init … InitDone`), never piecemeal. A periodic full
//! relist (`resync_interval`) is the safety net against anything missed.
//!
//! An API error (401, 403, 5xx, a timeout, an unreachable server) never empties the
//! set: the last good set stays, the error is reported once as a transition with a hint
//! of what to do (for a 403, the RBAC rule that is missing), and the strategy retries
//! with exponential backoff ([`Backoff`]) and a fresh list.
//!
//! Credentials come from kube's inferred configuration: `KUBECONFIG` or
//! `~/.kube/config` when present, else the pod's service account. The service-account
//! token file is re-read by kube at least once a minute, and the client is rebuilt (so
//! the file is read at once) whenever the server answers 401: a rotated token is picked
//! up without a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::{Context, Peer, PeerSet, Strategy};
use crate::node::NodeName;

mod sources;
use sources::{Rules, Source};

/// Where the service account's namespace is mounted in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Which Kubernetes resource the selector picks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// `discovery.k8s.io/v1` EndpointSlices (the default): the endpoints of the Services
    /// whose slices carry the selected labels (usually `kubernetes.io/service-name=<svc>`).
    #[default]
    EndpointSlices,
    /// `v1` Endpoints (deprecated since Kubernetes 1.33, still common).
    Endpoints,
    /// `v1` Pods, selected by their own labels.
    Pods,
}

impl ResourceKind {
    /// The resource's plural name, as in RBAC rules and URLs.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::EndpointSlices => "endpointslices",
            ResourceKind::Endpoints => "endpoints",
            ResourceKind::Pods => "pods",
        }
    }

    /// The resource's API group (`""` is the core group).
    pub fn group(self) -> &'static str {
        match self {
            ResourceKind::EndpointSlices => "discovery.k8s.io",
            ResourceKind::Endpoints | ResourceKind::Pods => "",
        }
    }
}

/// How a peer's node name is formed from what the API says about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `basename@10.0.0.5` (the default).
    #[default]
    Ip,
    /// `basename@10-0-0-5.<namespace>.pod.<cluster domain>`.
    Dns,
    /// `basename@<hostname>.<service>.<namespace>.svc.<cluster domain>` (StatefulSets
    /// behind a headless Service); endpoints without a hostname are skipped.
    Hostname,
}

/// Configuration of the Kubernetes strategy (`strategy = "kubernetes"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Label selector (required), as `kubectl -l` takes it: `app=myapp`,
    /// `app in (a,b),tier!=db`. For EndpointSlices, `kubernetes.io/service-name=<svc>`
    /// picks one Service's slices.
    pub selector: String,
    /// Namespace to look in. Default: the service account's namespace
    /// (`/var/run/secrets/kubernetes.io/serviceaccount/namespace`), else the
    /// kubeconfig context's namespace, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `endpointslices` (default), `endpoints` or `pods`.
    #[serde(default)]
    pub resource: ResourceKind,
    /// Also take endpoints that are not ready (never terminating ones). Default false; set
    /// it for clusters that must form before their pods report ready.
    #[serde(default)]
    pub include_not_ready: bool,
    /// The name of the port (endpoint port or container port) that carries the cluster
    /// protocol. Default `cluster`. Without such a port, peers are dialled on this
    /// node's own cluster port.
    #[serde(default = "default_port_name")]
    pub port_name: String,
    /// How peers' node names are formed: `ip` (default), `dns` or `hostname`.
    #[serde(default)]
    pub mode: Mode,
    /// The basename of peers' node names (`basename@host`). Default: this node's.
    #[serde(default)]
    pub node_basename: Option<String>,
    /// The Service in `hostname` names. Default: the EndpointSlice's
    /// `kubernetes.io/service-name` label, the Endpoints' name, the pod's `subdomain`.
    #[serde(default)]
    pub service: Option<String>,
    /// The cluster's DNS domain. Default `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// How often everything is listed again, as a safety net under the watch. Default
    /// 5 min.
    #[serde(with = "humantime_serde", default = "default_resync_interval")]
    pub resync_interval: Duration,
    /// How long one list request may take before it counts as failed. Default 30 s.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// First delay before a retry after an error. Default 500 ms; it doubles with each
    /// failure in a row, up to `backoff_max`.
    #[serde(with = "humantime_serde", default = "default_backoff_initial")]
    pub backoff_initial: Duration,
    /// Longest delay between retries. Default 30 s.
    #[serde(with = "humantime_serde", default = "default_backoff_max")]
    pub backoff_max: Duration,
    /// A kubeconfig file to use instead of kube's inference (`KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account). Default: none.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

fn default_port_name() -> String {
    "cluster".to_owned()
}
fn default_cluster_domain() -> String {
    "cluster.local".to_owned()
}
fn default_resync_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

impl Default for Config {
    /// The defaults, with an empty selector (which [`Kubernetes::from_config`] refuses:
    /// set one).
    fn default() -> Self {
        Config {
            selector: String::new(),
            namespace: None,
            resource: ResourceKind::default(),
            include_not_ready: false,
            port_name: default_port_name(),
            mode: Mode::default(),
            node_basename: None,
            service: None,
            cluster_domain: default_cluster_domain(),
            resync_interval: default_resync_interval(),
            request_timeout: default_request_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            kubeconfig: None,
        }
    }
}

/// A configuration value the Kubernetes strategy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kubernetes: {key} = {value:?} is invalid: expected {expected}")]
pub struct ConfigError {
    /// The configuration key.
    pub key: &'static str,
    /// The value given.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, value: &dyn fmt::Display, expected| {
            Err(ConfigError {
                key,
                value: value.to_string(),
                expected,
            })
        };
        if !selector_looks_valid(&self.selector) {
            return bad(
                "selector",
                &self.selector,
                "a label selector such as app=myapp or app in (a,b),tier!=db",
            );
        }
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            return bad(
                "namespace",
                ns,
                "a namespace name (lowercase letters, digits, '-', at most 63)",
            );
        }
        if self.port_name.is_empty() || self.port_name.len() > 63 {
            return bad("port_name", &self.port_name, "a port name such as cluster");
        }
        if let Some(b) = &self.node_basename
            && NodeName::new(b, "h").is_err()
        {
            return bad(
                "node_basename",
                b,
                "letters, digits, '_', '-', '.' (the part before '@')",
            );
        }
        if let Some(s) = &self.service
            && !is_dns_label(s)
        {
            return bad("service", s, "a Service name (a DNS label)");
        }
        if self.cluster_domain.is_empty() || !self.cluster_domain.split('.').all(is_dns_label) {
            return bad(
                "cluster_domain",
                &self.cluster_domain,
                "a DNS domain such as cluster.local",
            );
        }
        for (key, d) in [
            ("resync_interval", self.resync_interval),
            ("request_timeout", self.request_timeout),
            ("backoff_initial", self.backoff_initial),
        ] {
            if d.is_zero() {
                return bad(key, &humantime::format_duration(d), "a duration above zero");
            }
        }
        if self.backoff_max < self.backoff_initial {
            return bad(
                "backoff_max",
                &humantime::format_duration(self.backoff_max),
                "at least backoff_initial",
            );
        }
        Ok(())
    }
}

/// A DNS label as Kubernetes names use them: 1–63 of `a–z 0–9 -`, not starting or
/// ending with `-`.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A shallow check of a label selector: not empty, no empty requirement, balanced
/// parentheses, only the characters selectors use. The API server has the last word.
fn selector_looks_valid(s: &str) -> bool {
    let s = s.trim();
    if s.is_empty() {
        return false;
    }
    let mut depth = 0i32;
    let mut term_len = 0usize;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                if term_len == 0 {
                    return false;
                }
                term_len = 0;
                continue;
            }
            c if c.is_ascii_alphanumeric()
                || matches!(c, '.' | '-' | '_' | '/' | '=' | '!' | ' ' | ',') => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
        if !c.is_whitespace() {
            term_len += 1;
        }
    }
    depth == 0 && term_len > 0
}

/// The Kubernetes strategy. Authoritative by default: a peer gone from the API, or no
/// longer ready, is pruned after the topology's `prune_after`.
#[derive(Clone, Debug)]
pub struct Kubernetes {
    config: Config,
}

impl Kubernetes {
    /// The strategy with its defaults, for the pods or endpoints `selector` picks.
    pub fn new(selector: impl Into<String>) -> Result<Self, ConfigError> {
        Self::from_config(Config {
            selector: selector.into(),
            ..Config::default()
        })
    }

    /// The strategy from its configuration, refusing invalid values.
    pub fn from_config(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Kubernetes { config })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Strategy for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn authoritative(&self) -> bool {
        true
    }

    async fn run(self, ctx: Context) {
        let mut runner = Runner {
            backoff: Backoff::new(self.config.backoff_initial, self.config.backoff_max),
            config: self.config,
            rng: rand::rngs::StdRng::from_entropy(),
            client: None,
            expired_in_a_row: 0,
        };
        runner.run(&ctx).await;
    }
}

/// A connected client: the client, the namespace it looks in, the server's URL.
#[derive(Clone)]
struct Connection {
    client: Client,
    namespace: String,
    server: String,
}

/// Why one watch session ended.
enum Ended {
    Shutdown,
    /// Time for the periodic full relist.
    Resync,
    /// The server's history no longer has our version: list again.
    Expired,
    /// An error; `reconnect` asks for a new client (credentials re-read).
    Failed {
        error: Failure,
        reconnect: bool,
    },
}

/// A discovery failure, with the hint shown to the operator.
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Runner {
    config: Config,
    backoff: Backoff,
    rng: rand::rngs::StdRng,
    client: Option<Connection>,
    expired_in_a_row: u32,
}

impl Runner {
    async fn run(&mut self, ctx: &Context) {
        loop {
            if ctx.is_shutting_down() {
                return;
            }
            let conn = match &self.client {
                Some(c) => c.clone(),
                None => match self.connect().await {
                    Ok(c) => {
                        self.client = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        ctx.failing(&e);
                        if !self.pause(ctx).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let ended = match self.config.resource {
                ResourceKind::EndpointSlices => self.session::<EndpointSlice>(ctx, &conn).await,
                ResourceKind::Endpoints => self.session::<Endpoints>(ctx, &conn).await,
                ResourceKind::Pods => self.session::<Pod>(ctx, &conn).await,
            };
            match ended {
                Ended::Shutdown => return,
                Ended::Resync => ctx.count("resyncs", 1),
                Ended::Expired => {
                    ctx.count("expired", 1);
                    self.expired_in_a_row += 1;
                    // The first 410 relists at once; a server that keeps answering 410
                    // is retried with backoff.
                    if self.expired_in_a_row > 1 && !self.pause(ctx).await {
                        return;
                    }
                }
                Ended::Failed { error, reconnect } => {
                    ctx.failing(&error);
                    if reconnect {
                        ctx.count("reconnects", 1);
                        self.client = None;
                    }
                    if !self.pause(ctx).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a failed watch: waits out the backoff, then checks that the API server
    /// answers (a list of at most one object's metadata, within `request_timeout`),
    /// again and again until it does. `None` once it answers; `Some` to end the session
    /// (shutdown, or an answer that needs a new client or a relist).
    async fn wait_until_answering<K: Source>(
        &mut self,
        ctx: &Context,
        api: &Api<K>,
        conn: &Connection,
    ) -> Option<Ended> {
        loop {
            if !self.pause(ctx).await {
                return Some(Ended::Shutdown);
            }
            let lp = kube::api::ListParams::default()
                .labels(&self.config.selector)
                .limit(1);
            let answer = tokio::time::timeout(self.config.request_timeout, api.list_metadata(&lp));
            let error = match answer.await {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => self.classify(&watcher::Error::InitialListFailed(e), conn),
                Err(_) => Ended::Failed {
                    error: Failure(format!(
                        "the API server at {} did not answer within {} (request_timeout)",
                        conn.server,
                        humantime::format_duration(self.config.request_timeout)
                    )),
                    reconnect: false,
                },
            };
            match error {
                Ended::Failed {
                    error,
                    reconnect: false,
                } => ctx.failing(&error),
                other => return Some(other),
            }
        }
    }

    /// Waits out the backoff; false on shutdown.
    async fn pause(&mut self, ctx: &Context) -> bool {
        let d = self.backoff.next_delay(&mut self.rng);
        ctx.sleep(d).await
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let config = match &self.config.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    Failure(format!(
                        "cannot read kubeconfig {}: {}",
                        path.display(),
                        chain(&e)
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| {
                        Failure(format!(
                            "cannot use kubeconfig {}: {}",
                            path.display(),
                            chain(&e)
                        ))
                    })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                Failure(format!(
                    "no Kubernetes API configuration (not in a pod with a service account, \
                     and no KUBECONFIG or ~/.kube/config): {}",
                    chain(&e)
                ))
            })?,
        };
        let server = config.cluster_url.to_string();
        let namespace = match &self.config.namespace {
            Some(ns) => ns.clone(),
            None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| is_dns_label(s))
                .unwrap_or_else(|| config.default_namespace.clone()),
        };
        let client = Client::try_from(config).map_err(|e| {
            Failure(format!(
                "cannot make a Kubernetes client for {server}: {}",
                chain(&e)
            ))
        })?;
        Ok(Connection {
            client,
            namespace,
            server,
        })
    }

    /// One watch session: list, then watch, until an error, the resync time or
    /// shutdown. Reports the set at each complete list and each change.
    async fn session<K: Source>(&mut self, ctx: &Context, conn: &Connection) -> Ended {
        let api: Api<K> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let wc = watcher::Config::default().labels(&self.config.selector);
        let mut stream = watcher(api.clone(), wc).boxed();
        let rules = Rules::new(&self.config, ctx, &conn.namespace);
        let resync_at = tokio::time::Instant::now() + self.config.resync_interval;
        let mut objects = Objects::default();
        // After a failure of the watch (not of a list) and once the server answers again:
        // until when the resumed watch must stay free of errors to count as healthy.
        let mut settle: Option<tokio::time::Instant> = None;
        loop {
            // Until the first complete list each step is a list request, bounded by
            // request_timeout; after it, a quiet watch may be silent for long.
            let initial = !objects.listed();
            let next = async {
                if initial {
                    tokio::time::timeout(self.config.request_timeout, stream.next()).await
                } else if let Some(at) = settle {
                    tokio::time::timeout_at(at, stream.next()).await
                } else {
                    Ok(stream.next().await)
                }
            };
            let item = tokio::select! {
                _ = ctx.shutdown() => return Ended::Shutdown,
                _ = tokio::time::sleep_until(resync_at) => return Ended::Resync,
                item = next => item,
            };
            let event = match item {
                Err(_) if !initial => {
                    // The resumed watch settled without an error: healthy again.
                    settle = None;
                    self.backoff.reset();
                    ctx.report(objects.peers());
                    continue;
                }
                Err(_) => {
                    return Ended::Failed {
                        error: Failure(format!(
                            "listing {} in namespace {} at {} took longer than {} \
                             (request_timeout); is the API server reachable?",
                            self.config.resource.plural(),
                            conn.namespace,
                            conn.server,
                            humantime::format_duration(self.config.request_timeout)
                        )),
                        reconnect: false,
                    };
                }
                Ok(None) => {
                    return Ended::Failed {
                        error: Failure("the watch stream ended".to_owned()),
                        reconnect: false,
                    };
                }
                Ok(Some(Err(e))) => {
                    let resumable = !initial && resumable(&e);
                    match self.classify(&e, conn) {
                        // After the first list, kube's watcher keeps the last version it
                        // saw and, polled again, starts a new watch from there: a dropped
                        // connection, a restarted API server or a passing 5xx resumes
                        // without a relist. (A 410 relists, a 401 rebuilds the client, a
                        // decode error relists: those end the session.)
                        Ended::Failed {
                            error,
                            reconnect: false,
                        } if resumable => {
                            ctx.failing(&error);
                            if let Some(ended) = self.wait_until_answering(ctx, &api, conn).await {
                                return ended;
                            }
                            settle = Some(tokio::time::Instant::now() + WATCH_SETTLE);
                            continue;
                        }
                        ended => return ended,
                    }
                }
                Ok(Some(Ok(event))) => event,
            };
            if settle.take().is_some() {
                // The watch is back: whatever it brings, the set is current again.
                self.backoff.reset();
                ctx.report(objects.peers());
            }
            let change = match event {
                watcher::Event::Init => {
                    ctx.count("lists", 1);
                    Change::Init
                }
                watcher::Event::InitApply(obj) => {
                    let (name, peers) = self.peers_of(ctx, &rules, &obj);
                    Change::InitApply(name, peers)
                }
                watcher::Event::InitDone => {
                    self.backoff.reset();
                    Change::InitDone
                }
                watcher::Event::Apply(obj) => {
                    ctx.count("events", 1);
                    self.expired_in_a_row = 0;
                    let (name, peers) = self.peers_of(ctx, &rules, &obj);
                    Change::Apply(name, peers)
                }
                watcher::Event::Delete(obj) => {
                    ctx.count("events", 1);
                    self.expired_in_a_row = 0;
                    Change::Delete(obj.name_any())
                }
            };
            if let Some(peers) = objects.apply(change) {
                ctx.report(peers);
            }
        }
    }

    fn peers_of<K: Source>(&self, ctx: &Context, rules: &Rules, obj: &K) -> (String, Vec<Peer>) {
        let mut peers = Vec::new();
        let mut skipped = 0u64;
        obj.peers(
            rules,
            &mut |ip, port, host| match rules.peer(ip, port, host) {
                Some(p) => peers.push(p),
                None => skipped += 1,
            },
        );
        if skipped > 0 {
            tracing::debug!(topology = %ctx.topology(), object = %obj.name_any(), skipped,
                "endpoints skipped (no usable address or hostname)");
            ctx.count("skipped_endpoints", skipped);
        }
        peers.sort();
        peers.dedup();
        (obj.name_any(), peers)
    }

    /// Turns a watcher error into how the session ends, with an actionable message.
    fn classify(&self, e: &watcher::Error, conn: &Connection) -> Ended {
        let what = self.config.resource.plural();
        let ns = &conn.namespace;
        let client_err = match e {
            watcher::Error::InitialListFailed(c)
            | watcher::Error::WatchStartFailed(c)
            | watcher::Error::WatchFailed(c) => c,
            watcher::Error::WatchError(status) => {
                if status.code == 410 {
                    return Ended::Expired;
                }
                return Ended::Failed {
                    error: Failure(format!(
                        "the API server ended the watch on {what} with {} {}: {}",
                        status.code, status.reason, status.message
                    )),
                    reconnect: status.code == 401,
                };
            }
            watcher::Error::NoResourceVersion => {
                return Ended::Failed {
                    error: Failure(format!(
                        "the API server listed {what} without a resourceVersion, so they \
                         cannot be watched"
                    )),
                    reconnect: false,
                };
            }
        };
        if let kube::Error::SerdeError(e) = client_err {
            return Ended::Failed {
                error: Failure(format!(
                    "cannot decode the {what} in namespace {ns} that {} sent \
                     (an object that does not match the {what} schema): {e}",
                    conn.server
                )),
                reconnect: false,
            };
        }
        let kube::Error::Api(status) = client_err else {
            return Ended::Failed {
                error: Failure(format!(
                    "cannot list or watch {what} at {}: {}",
                    conn.server,
                    chain(client_err)
                )),
                reconnect: false,
            };
        };
        match status.code {
            // kube reads a watch line it cannot decode as an event as a Status, which
            // then has no code: the server sent an object this client cannot decode.
            0 => Ended::Failed {
                error: Failure(format!(
                    "cannot decode a watch event for {what} in namespace {ns} from {} \
                     (an object that does not match the {what} schema)",
                    conn.server
                )),
                reconnect: false,
            },
            410 => Ended::Expired,
            401 => Ended::Failed {
                error: Failure(format!(
                    "the API server at {} refused the credentials (401 Unauthorized: {}); \
                     check the pod's service-account token or the kubeconfig's user \
                     (the token file is read again before the next try)",
                    conn.server, status.message
                )),
                reconnect: true,
            },
            403 => {
                let group = self.config.resource.group();
                Ended::Failed {
                    error: Failure(format!(
                        "forbidden (403: {}); grant the service account verbs get, list, watch \
                         on resource {what:?} in apiGroup {group:?} in namespace {ns:?} \
                         (a Role with that rule and a RoleBinding to the service account)",
                        status.message
                    )),
                    reconnect: false,
                }
            }
            code => Ended::Failed {
                error: Failure(format!(
                    "the API server at {} answered {code} {} for {what} in namespace {ns}: {}",
                    conn.server, status.reason, status.message
                )),
                reconnect: false,
            },
        }
    }
}

/// How long a watch resumed after a failure must go without an error before the
/// strategy counts as healthy again (a watch that cannot start fails within a round trip).
const WATCH_SETTLE: Duration = Duration::from_secs(1);

/// Whether kube's watcher can resume after this error by itself, from the version it
/// has: transport failures, server errors, throttling and a refused watch. Not a decode
/// error (the set may be missing an object: relist), a 410 or a 401.
fn resumable(e: &watcher::Error) -> bool {
    let status_resumable = |code: u16| code == 403 || code == 429 || code >= 500;
    match e {
        watcher::Error::WatchStartFailed(c) | watcher::Error::WatchFailed(c) => match c {
            kube::Error::Api(status) => status_resumable(status.code),
            kube::Error::SerdeError(_) => false,
            _ => true,
        },
        watcher::Error::WatchError(status) => status_resumable(status.code),
        watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => false,
    }
}

/// A watch event with the peers of its object already worked out: what [`Objects`]
/// applies.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// A (re)list starts.
    Init,
    /// An object of the list in progress, by name, with its peers.
    InitApply(String, Vec<Peer>),
    /// The list is complete.
    InitDone,
    /// An object added or changed after the list.
    Apply(String, Vec<Peer>),
    /// An object deleted after the list.
    Delete(String),
}

/// The session's objects, as a pure state machine (no I/O, no clock): the peers per
/// object as of the last complete list plus the changes since, and the list in
/// progress. [`apply`](Objects::apply) answers the set to report, when one is due.
#[derive(Debug, Default)]
struct Objects {
    /// Peers per object name; `None` until a list has completed.
    current: Option<BTreeMap<String, Vec<Peer>>>,
    /// The list in progress.
    listing: Option<BTreeMap<String, Vec<Peer>>>,
}

impl Objects {
    /// Whether a list has completed (changes count from then on).
    fn listed(&self) -> bool {
        self.current.is_some()
    }

    /// The union of the peers of all objects (empty before the first list).
    fn peers(&self) -> PeerSet {
        self.current
            .iter()
            .flat_map(|m| m.values())
            .flatten()
            .cloned()
            .collect()
    }

    /// Applies one change; the set to report, if one is due: at each complete list
    /// (even unchanged, as a sign of health), and after it when the union changes. A
    /// change before the first list completes is ignored (the list brings it).
    fn apply(&mut self, change: Change) -> Option<PeerSet> {
        match change {
            Change::Init => {
                self.listing = Some(BTreeMap::new());
                None
            }
            Change::InitApply(name, peers) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, peers);
                None
            }
            Change::InitDone => {
                self.current = Some(self.listing.take().unwrap_or_default());
                Some(self.peers())
            }
            Change::Apply(name, peers) => {
                let cur = self.current.as_mut()?;
                if cur.get(&name) == Some(&peers) {
                    return None;
                }
                let before = self.peers();
                self.current.as_mut()?.insert(name, peers);
                let after = self.peers();
                (after != before).then_some(after)
            }
            Change::Delete(name) => {
                self.current.as_mut()?.remove(&name)?;
                Some(self.peers())
            }
        }
    }
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Peer {
        Peer::new(format!("{ip}:45893").parse().expect("addr"))
    }

    fn set(ips: &[&str]) -> PeerSet {
        ips.iter().map(|ip| peer(ip)).collect()
    }

    #[test]
    fn objects_report_each_complete_list_and_each_change_of_the_union() {
        let mut o = Objects::default();
        // Before the first list completes: nothing to report, changes ignored.
        assert!(!o.listed());
        assert_eq!(
            o.apply(Change::Apply("early".into(), vec![peer("10.0.0.9")])),
            None
        );
        assert_eq!(o.apply(Change::Init), None);
        assert_eq!(
            o.apply(Change::InitApply(
                "s1".into(),
                vec![peer("10.0.0.1"), peer("10.0.0.2")]
            )),
            None
        );
        assert_eq!(
            o.apply(Change::InitApply("s2".into(), vec![peer("10.0.0.2")])),
            None
        );
        assert_eq!(
            o.apply(Change::InitDone),
            Some(set(&["10.0.0.1", "10.0.0.2"])),
            "the list, without the change that came before it"
        );
        assert!(o.listed());
        // The same object again: nothing. A change that leaves the union as it was
        // (10.0.0.2 is still in s1): nothing. A real change: the new union.
        assert_eq!(
            o.apply(Change::Apply("s2".into(), vec![peer("10.0.0.2")])),
            None
        );
        assert_eq!(o.apply(Change::Apply("s2".into(), vec![])), None);
        assert_eq!(
            o.apply(Change::Apply("s3".into(), vec![peer("10.0.0.3")])),
            Some(set(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
        );
        // A delete of an unknown object: nothing; of a known one: the union without it.
        assert_eq!(o.apply(Change::Delete("nope".into())), None);
        assert_eq!(
            o.apply(Change::Delete("s1".into())),
            Some(set(&["10.0.0.3"]))
        );
        // A relist replaces everything, and an unchanged list is still reported.
        assert_eq!(o.apply(Change::Init), None);
        assert_eq!(
            o.apply(Change::InitApply("s3".into(), vec![peer("10.0.0.3")])),
            None
        );
        assert_eq!(o.apply(Change::InitDone), Some(set(&["10.0.0.3"])));
        // An empty list is a report too (of no peers).
        assert_eq!(o.apply(Change::Init), None);
        assert_eq!(o.apply(Change::InitDone), Some(PeerSet::new()));
        assert_eq!(o.peers(), PeerSet::new());
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: Config = parse(r#"{"selector": "app=x"}"#);
        assert_eq!(c.resource, ResourceKind::EndpointSlices);
        assert_eq!(c.mode, Mode::Ip);
        assert_eq!(c.port_name, "cluster");
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.resync_interval, Duration::from_secs(300));
        assert!(Kubernetes::from_config(c.clone()).is_ok());

        let c: Config = parse(
            r#"{"selector": "app in (a,b),tier!=db", "resource": "pods", "mode": "hostname",
                "resync_interval": "1m", "namespace": "prod"}"#,
        );
        assert_eq!(c.resource, ResourceKind::Pods);
        assert!(Kubernetes::from_config(c).is_ok());

        assert!(serde_json::from_str::<Config>(r#"{"selector": "a=b", "nope": 1}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"selector": "a=b", "mode": "x"}"#).is_err());

        for (cfg, key) in [
            (Config::default(), "selector"),
            (
                Config {
                    selector: "app=(x".into(),
                    ..Config::default()
                },
                "selector",
            ),
            (
                Config {
                    selector: "a=b,,c".into(),
                    ..Config::default()
                },
                "selector",
            ),
            (
                Config {
                    selector: "a=b".into(),
                    namespace: Some("Bad_NS".into()),
                    ..Config::default()
                },
                "namespace",
            ),
            (
                Config {
                    selector: "a=b".into(),
                    cluster_domain: "..".into(),
                    ..Config::default()
                },
                "cluster_domain",
            ),
            (
                Config {
                    selector: "a=b".into(),
                    node_basename: Some("a b".into()),
                    ..Config::default()
                },
                "node_basename",
            ),
            (
                Config {
                    selector: "a=b".into(),
                    resync_interval: Duration::ZERO,
                    ..Config::default()
                },
                "resync_interval",
            ),
            (
                Config {
                    selector: "a=b".into(),
                    backoff_max: Duration::from_millis(1),
                    ..Config::default()
                },
                "backoff_max",
            ),
        ] {
            let err = Kubernetes::from_config(cfg).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
    }

    fn parse(json: &str) -> Config {
        serde_json::from_str(json).expect("config parses")
    }

    #[test]
    fn selector_check() {
        for ok in [
            "app=x",
            "app==x",
            "a!=b",
            "app in (a, b),tier notin (db)",
            "a",
            "!a",
            "example.com/app=x",
        ] {
            assert!(selector_looks_valid(ok), "{ok}");
        }
        for bad in ["", " ", "a=b,", ",a", "a in (b", "a)", "a=b;c", "a=\"b\""] {
            assert!(!selector_looks_valid(bad), "{bad}");
        }
    }
}
