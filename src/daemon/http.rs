//! The HTTP API (axum).
//!
//! With an `http_token` configured, every route but `/healthz` and `/readyz` requires
//! `Authorization: Bearer TOKEN`; without it (or with another token) the answer is `401`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/members` | `{"self": NODE, "members": [NODE…], "departed": [DEPARTED…]}` ([`api::Members`]) |
//! | `GET /v1/events` | Server-Sent Events (see [`super::sse`]); with `?topologies=true`, topology health too ([`super::topologies`]) |
//! | `GET /v1/topologies` | each topology's strategy, candidates and health ([`api::Topologies`]) |
//! | `GET /metrics` | the counters in the Prometheus text format (see [`super::metrics`]) |
//! | `GET /healthz` | `200 ok` while the daemon runs |
//! | `GET /readyz` | `200` once at least `min_members` peers are up, else `503` ([`api::Ready`]) |
//! | `GET /` | the status page, for a person (with its script at `/status.js`) |
//! | `GET /openapi.yaml` | this API's OpenAPI 3 document, [`OPENAPI`] (`docs/openapi.yaml`) |
//!
//! The status page, its script and the OpenAPI document hold no data, so they need no token: the script reads
//! the API (asking for the token when it gets a `401`) and follows `/v1/events` live.
//!
//! Without a token, every route but `/healthz` and `/readyz` answers only requests whose
//! `Host` is loopback, the daemon's own address, or listed in `http_allowed_hosts`
//! (see [`super::host`]); others get `421` with a message that says so.

use std::sync::Arc;

use axum::extract::{Extension, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::departed::Departed;
use super::host::AllowedHosts;
use super::metrics::HttpStats;
use super::serve::ConnInfo;
use super::{api, metrics, sse, topologies};
use crate::Cluster;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The running node.
    pub cluster: Arc<Cluster>,
    /// Cancelled when the daemon shuts down: ends the event streams.
    pub stop: CancellationToken,
    /// How many peers must be up for `/readyz` to answer 200.
    pub min_members: usize,
    /// The metrics, read at each scrape.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The latest events, for SSE clients that resume.
    pub history: Arc<sse::History>,
    /// The peers recently down or left.
    pub departed: Arc<Departed>,
    /// The bearer token the API requires, if any.
    pub token: Option<Arc<str>>,
    /// The hosts answered without a token, besides loopback and the daemon's own
    /// address (`http_allowed_hosts`).
    pub allowed_hosts: Arc<AllowedHosts>,
    /// The HTTP server's counters.
    pub http_stats: Arc<HttpStats>,
    /// The most bytes of events that may wait for an SSE client (`sse_max_backlog`).
    pub sse_max_backlog: usize,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/v1/topologies", get(topologies))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let by_host = Router::new()
        .merge(guarded)
        .route("/", get(status_page))
        .route("/status.js", get(status_script))
        .route("/openapi.yaml", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_host));
    Router::new()
        .merge(by_host)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Without a token, refuses a request whose `Host` (or absolute-form target) is not one
/// the API answers (DNS rebinding; see [`super::host`]).
async fn require_host(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.token.is_none() {
        let local = req.extensions().get::<ConnInfo>().map(|c| c.local.ip());
        let allows = |h: &str| s.allowed_hosts.allows(Some(h), local);
        let host = req.headers().get(header::HOST).map(|v| v.to_str());
        let refused = match host {
            Some(Err(_)) => Some("(not text)"),
            Some(Ok(h)) if !allows(h) => Some(h),
            _ => None,
        }
        .or_else(|| {
            req.uri()
                .authority()
                .map(|a| a.as_str())
                .filter(|a| !allows(a))
        });
        if let Some(refused) = refused {
            s.http_stats.refused_host();
            let shown: String = refused.chars().take(100).collect();
            return (
                StatusCode::MISDIRECTED_REQUEST,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                format!(
                    "this rallypoint API has no token, so it answers only requests for \
                     localhost, a loopback address, its own address, or a host listed in \
                     `http_allowed_hosts` (or configure `http_token`); Host {shown:?} is none \
                     of these\n"
                ),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a request without the configured bearer token.
async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid bearer token is required (Authorization: Bearer TOKEN)\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares two byte strings in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn members(State(s): State<AppState>) -> Json<api::Members> {
    let snapshot = s.cluster.snapshot();
    s.departed.caught_up(snapshot.seq).await;
    let mut body = api::Members::of(&snapshot);
    body.departed = s.departed.list(
        std::time::SystemTime::now(),
        &snapshot.members.keys().collect(),
    );
    Json(body)
}

/// The query of `GET /v1/events`.
#[derive(Debug, Default, serde::Deserialize)]
struct EventsQuery {
    /// Interleave `topologies` events (see [`topologies`]).
    #[serde(default)]
    topologies: bool,
}

async fn events(
    State(s): State<AppState>,
    conn: Option<Extension<ConnInfo>>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let backlog = sse::Backlog {
        max_bytes: s.sse_max_backlog,
        conn: conn.map(|Extension(c)| c),
        stats: s.http_stats.clone(),
    };
    let follow = query
        .topologies
        .then(|| topologies::Follow::new(&s.cluster));
    sse::events(
        &s.cluster,
        &s.history,
        last,
        s.stop.child_token(),
        backlog,
        follow,
    )
    .await
}

/// The status page: static, no data (the script fetches it).
const STATUS_HTML: &str = include_str!("status.html");
/// The status page's script.
const STATUS_JS: &str = include_str!("status.js");
/// Only this page's own script, styles inline, requests to this origin.
const STATUS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, STATUS_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_HTML,
    )
}

async fn status_script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_JS,
    )
}

/// This API's OpenAPI document (docs/openapi.yaml).
pub const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

async fn openapi() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/yaml"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        OPENAPI,
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let members = s.cluster.snapshot().members.len();
    let ready = members >= s.min_members;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(api::Ready {
            ready,
            members,
            min_members: s.min_members,
        }),
    )
}

async fn topologies(State(s): State<AppState>) -> Json<api::Topologies> {
    let statuses = s.cluster.topologies();
    Json(topologies::body(
        statuses.iter().map(|(n, st)| (n.as_str(), st)),
    ))
}

async fn metrics(State(s): State<AppState>) -> Response {
    match metrics::render(&s.metrics) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}
