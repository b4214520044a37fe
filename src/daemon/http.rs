//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/members` | `{"self": NODE, "members": [NODE…]}` ([`api::Members`]) |
//! | `GET /v1/events` | Server-Sent Events (see [`super::sse`]) |
//! | `GET /v1/topologies` | each topology's strategy, candidates and health ([`api::Topologies`]) |
//! | `GET /metrics` | the counters in the Prometheus text format (see [`super::metrics`]) |
//! | `GET /healthz` | `200 ok` while the daemon runs |
//! | `GET /readyz` | `200` once at least `min_members` peers are up, else `503` ([`api::Ready`]) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::{api, metrics, sse};
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
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/v1/topologies", get(topologies))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn members(State(s): State<AppState>) -> Json<api::Members> {
    Json(api::Members::of(&s.cluster.snapshot()))
}

async fn events(State(s): State<AppState>) -> impl IntoResponse {
    sse::events(&s.cluster, s.stop.child_token())
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
    let mut topologies: Vec<api::Topology> = s
        .cluster
        .topologies()
        .iter()
        .map(|(name, status)| api::Topology::of(name, status))
        .collect();
    topologies.sort_by(|a, b| a.name.cmp(&b.name));
    Json(api::Topologies { topologies })
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
