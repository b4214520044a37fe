//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/members` | `{"self": NODE, "members": [NODE…]}` ([`api::Members`]) |
//! | `GET /v1/events` | Server-Sent Events (see [`super::sse`]) |
//! | `GET /healthz` | `200 ok` while the daemon runs |

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::{api, sse};
use crate::Cluster;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The running node.
    pub cluster: Arc<Cluster>,
    /// Cancelled when the daemon shuts down: ends the event streams.
    pub stop: CancellationToken,
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/healthz", get(healthz))
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
