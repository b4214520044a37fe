//! The node's HTTP API (JSON).
//!
//! | request | answer |
//! |---|---|
//! | `POST /streams/{stream}` `{"expected_version": "any"\|"no_stream"\|"stream_exists"\|N, "events": [{"id"?, "type", "data", "metadata"?}]}` | 200 `{"stream", "first_version", "last_version", "first_position", "last_position"}`; 409 `wrong_expected_version` (with `current`) or `duplicate_event` (with `id`); 400 `bad_request` |
//! | `GET /streams/{stream}?from=1&limit=100` | 200 `{"events": [...]}` from version `from`; 404 `stream_not_found` |
//! | `GET /all?from=1&limit=100` | 200 `{"events": [...]}` from global position `from` |
//! | `POST /subscriptions` `{"name", "after"?}` | 201 created, 200 existed (unchanged) |
//! | `GET /subscriptions` | 200 `{"node", "subscriptions": [{"name", "owner", "epoch", "checkpoint", "lease_remaining_ms", "owner_view", "placement", "local"}]}` |
//! | `GET /cluster` | 200 `{"self": NODE, "members": [NODE...]}`, NODE = `{"name", "cluster_addr", "http_addr", "incarnation"}` |
//! | `GET /status` | 200 the node's counters |
//! | `GET /healthz` | 200 |
//! | `POST /admin/faults` `{"drop_notifications": bool}` | 200; 404 unless started with `--fault-injection` |
//!
//! Errors are `{"error": CODE, "message": TEXT, ...}`; 503 `store_unavailable` when the
//! database cannot be reached. Every event carries `position`, `id`, `stream`, `version`,
//! `type`, `data` and `metadata`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::placement;
use crate::store::{self, AppendError, ExpectedVersion, NewEvent, StoreError};
use crate::supervisor::Shared;

/// The largest number of events one read returns.
const MAX_READ: i64 = 1000;

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/streams/{stream}", post(append).get(read_stream))
        .route("/all", get(read_all))
        .route(
            "/subscriptions",
            post(create_subscription).get(subscriptions),
        )
        .route("/cluster", get(cluster))
        .route("/status", get(status))
        .route("/admin/faults", post(faults))
        .with_state(shared)
}

/// An error answer.
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: json!({"error": code, "message": message.to_string()}),
        }
    }

    fn bad_request(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(body: Value) -> ApiResult {
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendRequest {
    #[serde(default)]
    expected_version: Option<Value>,
    events: Vec<EventRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    data: Value,
    #[serde(default)]
    metadata: Option<Value>,
}

/// Reads `"any"`, `"no_stream"`, `"stream_exists"` or a version number.
fn parse_expected(v: Option<Value>) -> Result<ExpectedVersion, ApiError> {
    match v {
        None => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) => match s.as_str() {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "stream_exists" => Ok(ExpectedVersion::StreamExists),
            other => Err(ApiError::bad_request(format!(
                "expected_version {other:?}: expected \"any\", \"no_stream\", \"stream_exists\" or a version number"
            ))),
        },
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if v >= 0 => Ok(ExpectedVersion::Exact(v)),
            _ => Err(ApiError::bad_request(format!(
                "expected_version {n}: expected a version number of 0 or more"
            ))),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "expected_version {other}: expected \"any\", \"no_stream\", \"stream_exists\" or a version number"
        ))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn append(
    State(shared): State<Arc<Shared>>,
    Path(stream): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: AppendRequest = parse_json(&body)?;
    let expected = parse_expected(req.expected_version)?;
    let events = req
        .events
        .into_iter()
        .map(|e| NewEvent {
            id: e.id,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata.unwrap_or(Value::Null),
        })
        .collect();
    match shared.store.append(&stream, expected, events).await {
        Ok(appended) => {
            shared.appended(&appended).await;
            ok(serde_json::to_value(&appended).unwrap_or_default())
        }
        Err(AppendError::WrongExpectedVersion { expected, current }) => Err(ApiError {
            status: StatusCode::CONFLICT,
            body: json!({
                "error": "wrong_expected_version",
                "message": format!("expected version {expected}, stream {stream:?} is at {current}"),
                "expected": expected.to_string(),
                "current": current,
            }),
        }),
        Err(AppendError::DuplicateEvent { id }) => Err(ApiError {
            status: StatusCode::CONFLICT,
            body: json!({
                "error": "duplicate_event",
                "message": format!("an event with id {id:?} is already stored"),
                "id": id,
            }),
        }),
        Err(AppendError::Invalid(msg)) => Err(ApiError::bad_request(msg)),
        Err(AppendError::Store(e)) => Err(e.into()),
    }
}

/// Reads `from` (default 1) and `limit` (default 100, at most [`MAX_READ`]).
fn range(q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let num = |key: &str, default: i64, min: i64| -> Result<i64, ApiError> {
        match q.get(key) {
            None => Ok(default),
            Some(s) => match s.parse::<i64>() {
                Ok(v) if v >= min => Ok(v),
                _ => Err(ApiError::bad_request(format!(
                    "{key}={s:?}: expected a whole number of at least {min}"
                ))),
            },
        }
    };
    Ok((num("from", 1, 0)?, num("limit", 100, 1)?.min(MAX_READ)))
}

async fn read_stream(
    State(shared): State<Arc<Shared>>,
    Path(stream): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (from, limit) = range(&q)?;
    match shared.store.read_stream(&stream, from, limit).await? {
        Some(events) => ok(json!({ "events": events })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("stream {stream:?} has no events"),
        )),
    }
}

async fn read_all(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (from, limit) = range(&q)?;
    let events = shared.store.read_all(from, limit).await?;
    ok(json!({ "events": events }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscription {
    name: String,
    #[serde(default)]
    after: i64,
}

async fn create_subscription(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let req: CreateSubscription = parse_json(&body)?;
    store::check_name("subscription name", &req.name).map_err(ApiError::bad_request)?;
    if req.after < 0 {
        return Err(ApiError::bad_request(format!(
            "after={}: expected a position of 0 or more",
            req.after
        )));
    }
    let created = shared
        .store
        .create_subscription(&req.name, req.after)
        .await?;
    if created {
        shared.created(&req.name).await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({"name": req.name, "created": created})),
    )
        .into_response())
}

async fn subscriptions(State(shared): State<Arc<Shared>>) -> ApiResult {
    let rows = shared.store.subscriptions().await?;
    let view = shared.view();
    let local = shared.statuses();
    let subs: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let placement = placement::owner(&r.name, view.iter().map(String::as_str));
            json!({
                "name": r.name,
                "owner": r.owner,
                "epoch": r.epoch,
                "checkpoint": r.checkpoint,
                "lease_remaining_ms": r.lease_remaining_ms,
                "owner_view": r.owner_view,
                "placement": placement,
                "local": local.get(&r.name),
            })
        })
        .collect();
    ok(json!({"node": shared.name, "subscriptions": subs}))
}

async fn cluster(State(shared): State<Arc<Shared>>) -> ApiResult {
    let http = shared.store.nodes().await.unwrap_or_default();
    let local = shared.cluster.local();
    let members: Vec<Value> = shared
        .cluster
        .members()
        .iter()
        .map(|n| {
            let name = n.name.to_string();
            json!({
                "name": name,
                "cluster_addr": n.addr.to_string(),
                "http_addr": http.get(&name).map(|(addr, _)| addr.clone()),
                "incarnation": n.incarnation.to_string(),
            })
        })
        .collect();
    ok(json!({
        "self": {
            "name": shared.name,
            "cluster_addr": local.addr.to_string(),
            "http_addr": shared.http_addr.to_string(),
            "incarnation": local.incarnation.to_string(),
        },
        "members": members,
    }))
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult {
    let c = &shared.counters;
    let stats = shared.cluster.stats();
    ok(json!({
        "node": shared.name,
        "notifications_published": c.notifications_published.get(),
        "notifications_dropped": c.notifications_dropped.get(),
        "notifications_received": c.notifications_received.get(),
        "bad_messages": c.bad_messages.get(),
        "catch_up_reads": c.catch_up_reads.get(),
        "rejected_writes": c.rejected_writes.get(),
        "store_reconnects": shared.store.reconnects(),
        "pubsub_messages_dropped": stats.messages_dropped,
        "faults": {
            "enabled": shared.faults.enabled,
            "drop_notifications": shared.faults.drop_notifications.load(Ordering::Relaxed),
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    drop_notifications: bool,
}

async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    if !shared.faults.enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "fault injection is off (start the node with --fault-injection)",
        ));
    }
    let req: FaultRequest = parse_json(&body)?;
    shared
        .faults
        .drop_notifications
        .store(req.drop_notifications, Ordering::Relaxed);
    tracing::warn!(
        drop_notifications = req.drop_notifications,
        "fault injection"
    );
    ok(json!({"drop_notifications": req.drop_notifications}))
}
