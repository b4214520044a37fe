//! A fake Kubernetes API server for the tests: a real HTTP/1.1 server on 127.0.0.1 that
//! answers as the Kubernetes API does for EndpointSlices (`discovery.k8s.io/v1`),
//! Endpoints and Pods (`v1`), so that a client cannot tell it from the real one for
//! what the Kubernetes strategy uses:
//!
//! - `GET` of a collection, namespaced (`/api/v1/namespaces/NS/pods`) or across all
//!   namespaces (`/api/v1/pods`), with `labelSelector` (equality `=`, `==`, `!=`,
//!   set-based `in`, `notin`, existence `key`, `!key`), `limit` and `continue` (paged
//!   lists served at one consistent version), `resourceVersion` with
//!   `resourceVersionMatch` (`Exact` on a compacted version is `410 Gone`);
//! - `?watch=true&resourceVersion=R&allowWatchBookmarks=true&timeoutSeconds=T`: a
//!   stream of newline-delimited JSON events `{"type": "ADDED" | "MODIFIED" | "DELETED"
//!   | "BOOKMARK" | "ERROR", "object": …}`: the changes after `R` from the history, then
//!   live ones, ended after `timeoutSeconds`. An object whose labels stop (start)
//!   matching the selector is `DELETED` (`ADDED`) for that watch, as on the real server.
//!   A version older than the history is answered with an `ERROR` event carrying a
//!   `Status` with code 410, reason `Expired` (what the real server does), or, when the
//!   test asks, with HTTP status 410;
//! - bearer-token auth (`401` Status for a wrong or missing token), `403` Status with
//!   the real message shape when access is switched off, any status on demand.
//!
//! Objects carry `metadata.resourceVersion` (one global, increasing counter, as etcd's
//! revision), `uid` and `creationTimestamp`; list items omit `kind` and `apiVersion`,
//! watch event objects carry them, as on the real server.
//!
//! Tests drive it through [`KubeApi`]: add, change and delete objects, force statuses,
//! compact the history (to force a 410), end the open watches, hold requests (to make
//! changes happen while a client is between two watches), stop and start the server on
//! the same port.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Endpoints.
    Endpoints,
    /// `v1` Pod.
    Pod,
}

impl Kind {
    pub fn plural(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "endpointslices",
            Kind::Endpoints => "endpoints",
            Kind::Pod => "pods",
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io",
            _ => "",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
        }
    }
    fn from_name(kind: &str) -> Option<Kind> {
        [Kind::EndpointSlice, Kind::Endpoints, Kind::Pod]
            .into_iter()
            .find(|k| k.name() == kind)
    }
    /// `pods` or `endpointslices.discovery.k8s.io`, as in messages.
    fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_owned()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
}

/// Which requests are held (left waiting for an answer) until the hold is lifted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Nothing,
    /// Watch requests only.
    Watches,
    /// Every request.
    Everything,
}

type Key = (Kind, String, String);

/// One change in the history: the object before and after (`None`: absent).
struct Change {
    rv: u64,
    key: Key,
    old: Option<Value>,
    new: Option<Value>,
}

struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct State {
    rv: u64,
    /// Changes at or below this version are gone from the history.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    token: String,
    forbidden: bool,
    forced: Option<u16>,
    expired_as_http: bool,
    page_cap: Option<usize>,
    requests: Vec<String>,
    uids: u64,
}

struct Shared {
    state: Mutex<State>,
    hold: watch::Sender<Hold>,
    held: watch::Sender<usize>,
    /// How many watch streams were opened in all.
    watches_opened: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake API server and its controls.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl KubeApi {
    /// Starts a server on a free loopback port that accepts the bearer `token`.
    pub async fn start(token: &str) -> KubeApi {
        KubeApi::start_on("127.0.0.1:0".parse().expect("address"), token).await
    }

    /// Starts a server on `bind` (port 0: a free one) that accepts the bearer `token`.
    pub async fn start_on(bind: SocketAddr, token: &str) -> KubeApi {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                compacted: 1000,
                objects: BTreeMap::new(),
                history: Vec::new(),
                watchers: Vec::new(),
                token: token.to_owned(),
                forbidden: false,
                forced: None,
                expired_as_http: false,
                page_cap: None,
                requests: Vec::new(),
                uids: 0,
            }),
            hold: watch::channel(Hold::Nothing).0,
            held: watch::channel(0).0,
            watches_opened: watch::channel(0).0,
        });
        let api = KubeApi {
            shared,
            addr,
            server: Mutex::new(None),
        };
        api.serve(listener);
        api
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping the server aborts them all, as a
            // crashed API server would.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = shared.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(handle(shared, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server: the listener closes and every open connection (watches
    /// included) is cut. The objects and history stay, as etcd's would.
    pub async fn stop(&self) {
        let task = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.shared.lock().watchers.clear();
    }

    /// Starts the server again on the same port.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the fake API server's port again");
        self.serve(listener);
    }

    /// Writes a kubeconfig for this server into `dir` with an inline `token` and
    /// `namespace` as the context's namespace; returns its path.
    pub fn kubeconfig(&self, dir: &Path, token: &str, namespace: &str) -> PathBuf {
        self.write_kubeconfig(dir, &format!("token: {token}"), namespace)
    }

    /// Writes a kubeconfig whose user reads its token from `token_file` (as an
    /// in-cluster service account does); returns its path.
    pub fn kubeconfig_with_token_file(
        &self,
        dir: &Path,
        token_file: &Path,
        namespace: &str,
    ) -> PathBuf {
        self.write_kubeconfig(
            dir,
            &format!("tokenFile: {}", token_file.display()),
            namespace,
        )
    }

    fn write_kubeconfig(&self, dir: &Path, user: &str, namespace: &str) -> PathBuf {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: tester\n  user:\n    {user}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: {namespace}\n\
             current-context: fake\n",
            url = self.url()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (its `kind` says which resource; namespace
    /// `default` when absent). Returns its new resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"]
            .as_str()
            .and_then(Kind::from_name)
            .expect("object has a known kind");
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        let key = (kind, ns.clone(), name);
        let old = st.objects.get(&key).cloned();
        let uid = match old.as_ref().and_then(|o| o["metadata"]["uid"].as_str()) {
            Some(u) => u.to_owned(),
            None => {
                st.uids += 1;
                format!("00000000-0000-4000-8000-{:012x}", st.uids)
            }
        };
        obj["apiVersion"] = json!(kind.api_version());
        let meta = &mut obj["metadata"];
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(uid);
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        st.objects.insert(key.clone(), obj.clone());
        st.record(Change {
            rv,
            key,
            old,
            new: Some(obj),
        });
        rv
    }

    /// Changes an object in place (then applies it). Panics if it does not exist.
    pub fn modify(&self, kind: Kind, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> u64 {
        let mut obj = self
            .get(kind, ns, name)
            .unwrap_or_else(|| panic!("no {} {ns}/{name}", kind.name()));
        f(&mut obj);
        self.apply(obj)
    }

    /// The stored object, if any.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> bool {
        let mut st = self.shared.lock();
        let key = (kind, ns.to_owned(), name.to_owned());
        let Some(old) = st.objects.remove(&key) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        st.record(Change {
            rv,
            key,
            old: Some(old),
            new: None,
        });
        true
    }

    /// The current resourceVersion (etcd's revision).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Drops the history up to now: a watch or exact list from an older version gets
    /// `410 Gone`.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Ends every open watch stream cleanly (as the server does at `timeoutSeconds`).
    pub fn drop_watches(&self) {
        self.shared.lock().watchers.clear();
    }

    /// Sends a BOOKMARK with the current resourceVersion on each watch that asked for
    /// bookmarks.
    pub fn send_bookmarks(&self) {
        let mut st = self.shared.lock();
        let rv = st.rv;
        st.watchers.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            let ev = json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": w.kind.name(),
                    "apiVersion": w.kind.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}
                }
            });
            w.tx.send(line(&ev)).is_ok()
        });
    }

    /// The bearer token accepted from now on.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// Answers every authenticated request with 403 Forbidden while `on`.
    pub fn set_forbidden(&self, on: bool) {
        self.shared.lock().forbidden = on;
    }

    /// Answers every authenticated request with this HTTP status (a Status body) while
    /// set.
    pub fn force_status(&self, code: Option<u16>) {
        self.shared.lock().forced = code;
    }

    /// Answers a watch from a compacted version with HTTP 410 instead of an ERROR event.
    pub fn set_expired_as_http_status(&self, on: bool) {
        self.shared.lock().expired_as_http = on;
    }

    /// Serves lists in pages of at most `cap` items (with a continue token), whatever
    /// `limit` the client asked for, as a server may.
    pub fn set_page_cap(&self, cap: Option<usize>) {
        self.shared.lock().page_cap = cap;
    }

    /// Holds requests (see [`Hold`]) until called again with `Hold::Nothing`.
    pub fn hold(&self, what: Hold) {
        self.shared.hold.send_replace(what);
    }

    /// Waits until at least `n` requests are held, for at most 10 s.
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.shared.held.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&h| h >= n))
            .await
            .expect("a request reaches the held fake API server in time")
            .expect("fake API server alive");
    }

    /// How many watch streams were opened so far.
    pub fn watches_opened(&self) -> u64 {
        *self.shared.watches_opened.borrow()
    }

    /// Waits until more than `n` watch streams were opened in all, for at most 10 s.
    pub async fn wait_watches_opened(&self, n: u64) {
        let mut rx = self.shared.watches_opened.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&w| w > n))
            .await
            .expect("a watch is opened in time")
            .expect("fake API server alive");
    }

    /// The requests received so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many list (not watch) requests were received.
    pub fn list_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl State {
    /// Appends a change to the history and sends it to the open watches.
    fn record(&mut self, change: Change) {
        self.watchers.retain(|w| match event_for(w, &change) {
            Some(ev) => w.tx.send(line(&ev)).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push(change);
    }

    /// The objects of `kind` as they were at version `rv` (not below the compaction).
    fn objects_at(&self, kind: Kind, rv: u64) -> BTreeMap<Key, Value> {
        let mut objs: BTreeMap<Key, Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for c in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if c.key.0 != kind {
                continue;
            }
            match &c.old {
                Some(o) => objs.insert(c.key.clone(), o.clone()),
                None => objs.remove(&c.key),
            };
        }
        objs
    }
}

/// The event a watcher sees for a change, if any.
fn event_for(w: &Watcher, c: &Change) -> Option<Value> {
    if c.key.0 != w.kind || w.namespace.as_ref().is_some_and(|ns| *ns != c.key.1) {
        return None;
    }
    let sees = |o: &Option<Value>| o.as_ref().filter(|o| w.selector.matches(o)).cloned();
    let (ty, mut obj) = match (sees(&c.old), sees(&c.new)) {
        (None, Some(n)) => ("ADDED", n),
        (Some(_), Some(n)) => ("MODIFIED", n),
        // Deleted, or no longer selected: the last state, at the change's version.
        (Some(o), None) => ("DELETED", c.new.clone().unwrap_or(o)),
        (None, None) => return None,
    };
    obj["metadata"]["resourceVersion"] = json!(c.rv.to_string());
    with_type(&mut obj, w.kind);
    Some(json!({"type": ty, "object": obj}))
}

fn with_type(obj: &mut Value, kind: Kind) {
    obj["kind"] = json!(kind.name());
    obj["apiVersion"] = json!(kind.api_version());
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A `Status` object as the API server sends for a failure.
fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    respond(code, &status_body(code, reason, message, details))
}

/// A status with the reason and message the real server uses for that code.
fn forced_status(code: u16) -> Response<Body> {
    let (reason, message) = match code {
        400 => (
            "BadRequest",
            "the server rejected our request for an unknown reason",
        ),
        404 => (
            "NotFound",
            "the server could not find the requested resource",
        ),
        409 => ("Conflict", "the server reported a conflict"),
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        ),
        500 => ("InternalError", "Internal error occurred: injected failure"),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        ),
        _ => (
            "",
            "an error on the server has prevented the request from succeeding",
        ),
    };
    let details = (code == 500).then(|| json!({"causes": [{"message": "injected failure"}]}));
    status(code, reason, message, details)
}

/// Decrements the held count when a held request is released or abandoned.
struct HeldGuard(Arc<Shared>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn wait_if_held(shared: &Arc<Shared>, is_watch: bool) {
    let applies = move |h: Hold| match h {
        Hold::Nothing => false,
        Hold::Watches => is_watch,
        Hold::Everything => true,
    };
    let mut rx = shared.hold.subscribe();
    if !applies(*rx.borrow()) {
        return;
    }
    shared.held.send_modify(|n| *n += 1);
    let _guard = HeldGuard(shared.clone());
    let _ = rx.wait_for(|&h| !applies(h)).await;
}

/// Where a request points: which resource, in which namespace (`None`: all).
fn route(path: &str) -> Option<(Kind, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (rest, group) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (rest, ""),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => (rest, "discovery.k8s.io"),
        _ => return None,
    };
    let (ns, plural) = match rest {
        ["namespaces", ns, plural] => (Some((*ns).to_owned()), *plural),
        [plural] => (None, *plural),
        _ => return None,
    };
    let kind = [Kind::EndpointSlice, Kind::Endpoints, Kind::Pod]
        .into_iter()
        .find(|k| k.plural() == plural && k.group() == group)?;
    Some((kind, ns))
}

async fn handle(shared: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let is_watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    shared.lock().requests.push(format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    ));
    wait_if_held(&shared, is_watch).await;

    let mut st = shared.lock();
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if bearer != Some(st.token.as_str()) {
        return status(401, "Unauthorized", "Unauthorized", None);
    }
    if req.method() != hyper::Method::GET {
        return status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        );
    }
    let Some((kind, ns)) = route(&path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        );
    };
    if st.forbidden {
        let verb = if is_watch { "watch" } else { "list" };
        let scope = match &ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let mut details = json!({"kind": kind.plural()});
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        let message = format!(
            "{} is forbidden: User \"system:serviceaccount:{}:rallypoint\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            kind.qualified(),
            ns.as_deref().unwrap_or("default"),
            kind.plural(),
            kind.group(),
        );
        return status(403, "Forbidden", &message, Some(details));
    }
    if let Some(code) = st.forced {
        return forced_status(code);
    }
    let selector =
        match Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or("")) {
            Ok(s) => s,
            Err(e) => {
                return status(
                    400,
                    "BadRequest",
                    &format!("unable to parse requirement: {e}"),
                    None,
                );
            }
        };
    if is_watch {
        watch_response(&shared, &mut st, kind, ns, selector, &query)
    } else {
        list_response(&st, kind, ns, &selector, &query)
    }
}

fn list_response(
    st: &State,
    kind: Kind,
    ns: Option<String>,
    selector: &Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let expired = |msg: &str| status(410, "Expired", msg, None);
    // The version to serve at, and where a previous page ended.
    let (at, after): (u64, Option<(String, String)>) = if let Some(token) =
        query.get("continue").filter(|t| !t.is_empty())
    {
        let Some((rv, key)) = decode_continue(token) else {
            return status(
                400,
                "BadRequest",
                "continue key is not valid: illegal base64 data",
                None,
            );
        };
        if rv < st.compacted {
            return expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            );
        }
        (rv, Some(key))
    } else {
        match (
            query.get("resourceVersion").map(String::as_str),
            query.get("resourceVersionMatch").map(String::as_str),
        ) {
            (Some(r), Some("Exact")) => {
                let Ok(r) = r.parse::<u64>() else {
                    return status(
                        400,
                        "BadRequest",
                        &format!("resourceVersion: Invalid value: \"{r}\""),
                        None,
                    );
                };
                if r < st.compacted {
                    return expired(&format!(
                        "too old resource version: {r} ({})",
                        st.compacted + 1
                    ));
                }
                (r.min(st.rv), None)
            }
            _ => (st.rv, None),
        }
    };
    let limit: Option<usize> = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0);
    let limit = match (limit, st.page_cap) {
        (Some(l), Some(c)) => Some(l.min(c)),
        (l, c) => l.or(c),
    };
    let mut matching: Vec<(Key, Value)> = st
        .objects_at(kind, at)
        .into_iter()
        .filter(|(k, _)| ns.as_ref().is_none_or(|ns| *ns == k.1))
        .filter(|(k, _)| {
            after
                .as_ref()
                .is_none_or(|(ans, aname)| (&k.1, &k.2) > (ans, aname))
        })
        .filter(|(_, v)| selector.matches(v))
        .collect();
    let mut meta = json!({"resourceVersion": at.to_string()});
    if let Some(limit) = limit
        && matching.len() > limit
    {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        let last = matching.last().map(|(k, _)| k.clone()).expect("a page");
        meta["continue"] = json!(encode_continue(at, &last));
        meta["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = matching
        .into_iter()
        .map(|(_, mut v)| {
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    respond(
        200,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": meta,
            "items": items
        }),
    )
}

fn encode_continue(rv: u64, key: &Key) -> String {
    hex::encode(format!("{rv}\n{}\n{}", key.1, key.2))
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_owned();
    let name = parts.next()?.to_owned();
    Some((rv, (ns, name)))
}

fn watch_response(
    shared: &Arc<Shared>,
    st: &mut State,
    kind: Kind,
    ns: Option<String>,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let in_scope = |k: &Key| k.0 == kind && ns.as_ref().is_none_or(|ns| *ns == k.1);
    let mut register = true;
    match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            // No version: the current objects as ADDED, then the changes.
            for (k, v) in &st.objects {
                if in_scope(k) && selector.matches(v) {
                    let mut obj = v.clone();
                    with_type(&mut obj, kind);
                    let _ = tx.send(line(&json!({"type": "ADDED", "object": obj})));
                }
            }
        }
        Some(r) => {
            let Ok(r) = r.parse::<u64>() else {
                return status(
                    400,
                    "BadRequest",
                    &format!("resourceVersion: Invalid value: \"{r}\""),
                    None,
                );
            };
            if r < st.compacted {
                let msg = format!("too old resource version: {r} ({})", st.compacted + 1);
                if st.expired_as_http {
                    return status(410, "Expired", &msg, None);
                }
                let _ = tx.send(line(&json!({
                    "type": "ERROR",
                    "object": status_body(410, "Expired", &msg, None)
                })));
                register = false;
            } else {
                let w = Watcher {
                    kind,
                    namespace: ns.clone(),
                    selector: selector.clone(),
                    bookmarks,
                    tx: tx.clone(),
                };
                for c in st.history.iter().filter(|c| c.rv > r) {
                    if let Some(ev) = event_for(&w, c) {
                        let _ = tx.send(line(&ev));
                    }
                }
            }
        }
    }
    if register {
        st.watchers.push(Watcher {
            kind,
            namespace: ns,
            selector,
            bookmarks,
            tx,
        });
    } else {
        drop(tx);
    }
    shared.watches_opened.send_modify(|n| *n += 1);
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

/// A parsed label selector.
#[derive(Clone, Debug, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        let mut depth = 0;
        let mut term = String::new();
        let mut terms = Vec::new();
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(std::mem::take(&mut term));
                    continue;
                }
                _ => {}
            }
            term.push(c);
        }
        if depth != 0 {
            return Err(format!("unbalanced parentheses in {s:?}"));
        }
        terms.push(term);
        if s.trim().is_empty() {
            return Ok(Selector(Vec::new()));
        }
        for t in terms {
            let t = t.trim();
            let word = |w: &str| -> Result<String, String> {
                let w = w.trim();
                let ok = !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
                if ok {
                    Ok(w.to_owned())
                } else {
                    Err(format!("invalid label key or value {w:?}"))
                }
            };
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("expected (values) in {t:?}"))?;
                inner.split(',').map(word).collect()
            };
            let req = if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(word(k)?)
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                Requirement::NotIn(word(k)?, set(rest)?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                Requirement::In(word(k)?, set(rest)?)
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotEq(word(k)?, word(v)?)
            } else if let Some((k, v)) = t.split_once("==") {
                Requirement::Eq(word(k)?, word(v)?)
            } else if let Some((k, v)) = t.split_once('=') {
                Requirement::Eq(word(k)?, word(v)?)
            } else {
                Requirement::Exists(word(t)?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v),
            Requirement::NotEq(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}
