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
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use rand::SeedableRng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::{Context, Peer, PeerSet, Strategy};
use crate::node::NodeName;

/// Where the service account's namespace is mounted in a pod.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The label an EndpointSlice carries with the name of its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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
        let mut stream = watcher(api, wc).boxed();
        let rules = Rules::new(&self.config, ctx, &conn.namespace);
        let resync_at = tokio::time::Instant::now() + self.config.resync_interval;
        // Peers per object name, as of the last complete list plus the changes since.
        let mut current: Option<BTreeMap<String, Vec<Peer>>> = None;
        // The list in progress.
        let mut listing: Option<BTreeMap<String, Vec<Peer>>> = None;
        // True until the first complete list: until then each step is a list request,
        // bounded by request_timeout; after it, a quiet watch may be silent for long.
        let mut initial = true;
        loop {
            let next = async {
                if initial {
                    tokio::time::timeout(self.config.request_timeout, stream.next()).await
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
                Ok(Some(Err(e))) => return self.classify(&e, conn),
                Ok(Some(Ok(event))) => event,
            };
            match event {
                watcher::Event::Init => {
                    ctx.count("lists", 1);
                    listing = Some(BTreeMap::new());
                }
                watcher::Event::InitApply(obj) => {
                    let (name, peers) = self.peers_of(ctx, &rules, &obj);
                    listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name, peers);
                }
                watcher::Event::InitDone => {
                    initial = false;
                    current = Some(listing.take().unwrap_or_default());
                    self.backoff.reset();
                    ctx.report(union(current.as_ref()));
                }
                watcher::Event::Apply(obj) => {
                    ctx.count("events", 1);
                    self.expired_in_a_row = 0;
                    let (name, peers) = self.peers_of(ctx, &rules, &obj);
                    let Some(cur) = current.as_mut() else {
                        continue;
                    };
                    if cur.get(&name) != Some(&peers) {
                        let before = union(Some(cur));
                        cur.insert(name, peers);
                        let after = union(Some(cur));
                        if after != before {
                            ctx.report(after);
                        }
                    }
                }
                watcher::Event::Delete(obj) => {
                    ctx.count("events", 1);
                    self.expired_in_a_row = 0;
                    let Some(cur) = current.as_mut() else {
                        continue;
                    };
                    if cur.remove(&obj.name_any()).is_some() {
                        ctx.report(union(Some(cur)));
                    }
                }
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

/// The union of the peers of all objects.
fn union(objects: Option<&BTreeMap<String, Vec<Peer>>>) -> PeerSet {
    objects
        .into_iter()
        .flat_map(|m| m.values())
        .flatten()
        .cloned()
        .collect()
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

/// What turns an endpoint into a [`Peer`]: the naming mode and its parts, the port.
struct Rules {
    basename: String,
    namespace: String,
    mode: Mode,
    cluster_domain: String,
    service: Option<String>,
    port_name: String,
    default_port: u16,
    include_not_ready: bool,
}

impl Rules {
    fn new(config: &Config, ctx: &Context, namespace: &str) -> Self {
        Rules {
            basename: config
                .node_basename
                .clone()
                .unwrap_or_else(|| ctx.local().name.basename().to_owned()),
            namespace: namespace.to_owned(),
            mode: config.mode,
            cluster_domain: config.cluster_domain.clone(),
            service: config.service.clone(),
            port_name: config.port_name.clone(),
            default_port: ctx.local().addr.port(),
            include_not_ready: config.include_not_ready,
        }
    }

    /// The port: the named one when present and valid, else this node's own.
    fn port(&self, named: Option<i32>) -> u16 {
        named
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .unwrap_or(self.default_port)
    }

    /// A peer from an address string, a port and, for `hostname` mode, the endpoint's
    /// hostname and Service. `None` when the address does not parse or the name cannot
    /// be formed.
    fn peer(&self, ip: &str, port: u16, host: Option<(&str, Option<&str>)>) -> Option<Peer> {
        let ip: IpAddr = ip.trim().parse().ok()?;
        let host = match self.mode {
            Mode::Ip => ip.to_string(),
            Mode::Dns => {
                let dashed: String = ip
                    .to_string()
                    .chars()
                    .map(|c| if c == '.' || c == ':' { '-' } else { c })
                    .collect();
                format!("{dashed}.{}.pod.{}", self.namespace, self.cluster_domain)
            }
            Mode::Hostname => {
                let (hostname, service) = host?;
                let service = self.service.as_deref().or(service)?;
                if hostname.is_empty() {
                    return None;
                }
                format!(
                    "{hostname}.{service}.{}.svc.{}",
                    self.namespace, self.cluster_domain
                )
            }
        };
        let name = NodeName::new(&self.basename, &host).ok()?;
        Some(Peer::named(name, SocketAddr::new(ip, port)))
    }
}

/// Where a [`Source`] sends each endpoint it takes: `(ip, port, Some((hostname,
/// service)))`, the hostname empty and the service `None` where unknown.
type Emit<'a> = dyn FnMut(&str, u16, Option<(&str, Option<&str>)>) + 'a;

/// A resource the strategy can read peers from.
trait Source:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Calls `out(ip, port, Some((hostname, service)))` for each endpoint to take.
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>);
}

impl Source for EndpointSlice {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        if self.address_type != "IPv4" && self.address_type != "IPv6" {
            return; // FQDN slices name hosts, not addresses
        }
        let port = rules.port(
            self.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                .and_then(|p| p.port),
        );
        let service = self.labels().get(SERVICE_NAME_LABEL).map(String::as_str);
        for ep in &self.endpoints {
            let c = ep.conditions.as_ref();
            // `ready` unset means ready; older producers may set only `serving`.
            let ready = c.and_then(|c| c.ready.or(c.serving)).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if terminating || !(ready || rules.include_not_ready) {
                continue;
            }
            // Addresses are fungible; consumers may take the first.
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            out(
                addr,
                port,
                Some((ep.hostname.as_deref().unwrap_or(""), service)),
            );
        }
    }
}

impl Source for Endpoints {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        let service = self.metadata.name.as_deref();
        for subset in self.subsets.iter().flatten() {
            let port = rules.port(
                subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                    .map(|p| p.port),
            );
            let mut take = |a: &EndpointAddress| {
                out(
                    &a.ip,
                    port,
                    Some((a.hostname.as_deref().unwrap_or(""), service)),
                );
            };
            subset.addresses.iter().flatten().for_each(&mut take);
            if rules.include_not_ready {
                subset
                    .not_ready_addresses
                    .iter()
                    .flatten()
                    .for_each(&mut take);
            }
        }
    }
}

impl Source for Pod {
    fn peers(&self, rules: &Rules, out: &mut Emit<'_>) {
        if self.metadata.deletion_timestamp.is_some() {
            return; // terminating
        }
        let Some(status) = &self.status else { return };
        let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
            return;
        };
        let phase = status.phase.as_deref().unwrap_or("");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let take = if rules.include_not_ready {
            !matches!(phase, "Succeeded" | "Failed")
        } else {
            phase == "Running" && ready
        };
        if !take {
            return;
        }
        let spec = self.spec.as_ref();
        let port = rules.port(
            spec.into_iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(rules.port_name.as_str()))
                .map(|p| p.container_port),
        );
        // A pod's hostname is spec.hostname, else its name; it has a DNS name under
        // its subdomain (a headless Service).
        let hostname = spec
            .and_then(|s| s.hostname.as_deref())
            .or(self.metadata.name.as_deref())
            .unwrap_or("");
        let subdomain = spec.and_then(|s| s.subdomain.as_deref());
        out(ip, port, Some((hostname, subdomain)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn rules(mode: Mode) -> Rules {
        Rules {
            basename: "app".into(),
            namespace: "prod".into(),
            mode,
            cluster_domain: "cluster.local".into(),
            service: None,
            port_name: "cluster".into(),
            default_port: 45893,
            include_not_ready: false,
        }
    }

    #[test]
    fn names_per_mode() {
        let p = rules(Mode::Ip).peer("10.0.0.5", 7, None).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "app@10.0.0.5");
        assert_eq!(p.addr, "10.0.0.5:7".parse().unwrap());
        let p = rules(Mode::Dns).peer("10.0.0.5", 7, None).unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@10-0-0-5.prod.pod.cluster.local"
        );
        let p = rules(Mode::Dns).peer("fd00::5", 7, None).unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@fd00--5.prod.pod.cluster.local"
        );
        let p = rules(Mode::Hostname)
            .peer("10.0.0.5", 7, Some(("web-0", Some("web"))))
            .unwrap();
        assert_eq!(
            p.name.unwrap().as_str(),
            "app@web-0.web.prod.svc.cluster.local"
        );
        assert!(rules(Mode::Hostname).peer("10.0.0.5", 7, None).is_none());
        assert!(
            rules(Mode::Hostname)
                .peer("10.0.0.5", 7, Some(("", Some("web"))))
                .is_none()
        );
        assert!(
            rules(Mode::Hostname)
                .peer("10.0.0.5", 7, Some(("w", None)))
                .is_none()
        );
        let mut r = rules(Mode::Hostname);
        r.service = Some("svc".into());
        let p = r.peer("10.0.0.5", 7, Some(("w", Some("other")))).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "app@w.svc.prod.svc.cluster.local");
        assert!(rules(Mode::Ip).peer("not-an-ip", 7, None).is_none());
        assert_eq!(rules(Mode::Ip).port(Some(70000)), 45893);
        assert_eq!(rules(Mode::Ip).port(Some(0)), 45893);
        assert_eq!(rules(Mode::Ip).port(Some(9000)), 9000);
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
