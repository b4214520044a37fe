//! The event store in PostgreSQL: streams, the global log, subscriptions and their leases.
//!
//! Tables (created at start, under an advisory lock so nodes starting together do not
//! race):
//! - `events`: one row per event, with its gap-free global `position` (primary key), its
//!   `stream_id` and per-stream `version` (unique together), a unique `event_id`, type,
//!   JSON data and metadata;
//! - `streams`: each stream's current version, locked (`FOR UPDATE`) by an append, so two
//!   appends to one stream run one after the other and the second sees the first;
//! - `global_position`: a single row holding the last position handed out. An append
//!   takes its positions by `UPDATE … RETURNING` in its own transaction, so the row stays
//!   locked until commit: positions are committed in order and a rolled-back append gives
//!   its positions back. A reader therefore never sees position `p + 1` without `p`.
//! - `subscriptions`: each named subscription's `checkpoint` (every event up to it is
//!   acknowledged) and its lease: `owner`, `epoch` (incremented by every acquisition),
//!   `lease_until` (the store's clock), `owner_view` (the members the holder saw, see
//!   [`crate::placement`]) and `renewals` (bumped by every write to the lease, so an
//!   acquisition decided on a stale read fails). Every checkpoint write is conditional
//!   on the writer's epoch: a holder that lost its lease cannot move the checkpoint.
//! - `leases`: the history of acquisitions (who, which epoch, from which checkpoint, why);
//! - `deliveries`: what the example's handler records for each event it is handed;
//! - `nodes`: each node's HTTP address, for `GET /cluster`.
//!
//! Every method that talks to PostgreSQL returns [`StoreError`] when the database cannot
//! be reached; the store notices when it can be reached again and says so through
//! [`Store::reconnected`], so subscriptions catch up at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

/// The most events one append may carry.
pub const MAX_BATCH: usize = 1000;
/// The longest stream name, subscription name or event id accepted, in bytes.
pub const MAX_NAME: usize = 200;

const SCHEMA_LOCK: i64 = 0x6576_7374_6f72_6531; // "evstore1"

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS streams (
    stream_id text PRIMARY KEY,
    version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    position bigint PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    data jsonb NOT NULL,
    metadata jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS global_position (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    last bigint NOT NULL
);
INSERT INTO global_position (id, last) VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS subscriptions (
    name text PRIMARY KEY,
    checkpoint bigint NOT NULL,
    owner text,
    owner_view text[] NOT NULL DEFAULT '{}',
    epoch bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    renewals bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS leases (
    subscription text NOT NULL,
    epoch bigint NOT NULL,
    node text NOT NULL,
    checkpoint bigint NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (subscription, epoch)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id bigserial PRIMARY KEY,
    subscription text NOT NULL,
    position bigint NOT NULL,
    node text NOT NULL,
    epoch bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS nodes (
    name text PRIMARY KEY,
    http_addr text NOT NULL,
    incarnation text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"#;

/// The database could not do what was asked (unreachable, or an unexpected error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("database error: {}", with_sources(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// An error's message followed by those of its sources (tokio-postgres says only
/// "db error" and keeps the server's message in the source).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(src) = next {
        s.push_str(": ");
        s.push_str(&src.to_string());
        next = src.source();
    }
    s
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(with_sources(&e))
    }
}

/// What the writer expects the stream's version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever it is.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// Exactly this version (the version of its last event; 0: no events).
    Exact(i64),
}

impl ExpectedVersion {
    fn accepts(self, current: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("stream_exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Its unique id; the store makes one when `None`.
    pub id: Option<String>,
    /// Its type.
    pub event_type: String,
    /// Its data.
    pub data: Value,
    /// Its metadata.
    pub metadata: Value,
}

/// A stored event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordedEvent {
    /// Its position in the global log (1, 2, 3, … without gaps).
    pub position: i64,
    /// Its unique id.
    pub id: String,
    /// Its stream.
    pub stream: String,
    /// Its version in the stream (1, 2, 3, …).
    pub version: i64,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its data.
    pub data: Value,
    /// Its metadata.
    pub metadata: Value,
}

/// What an append wrote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Appended {
    /// The stream.
    pub stream: String,
    /// The version of the first event written.
    pub first_version: i64,
    /// The stream's version now.
    pub last_version: i64,
    /// The global position of the first event written.
    pub first_position: i64,
    /// The global position of the last event written.
    pub last_position: i64,
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's version is not what the writer expected. Nothing was written.
    #[error("wrong expected version: expected {expected}, stream is at {current}")]
    WrongExpectedVersion {
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version.
        current: i64,
    },
    /// An event with this id is already stored. Nothing was written.
    #[error("an event with id {id:?} is already stored")]
    DuplicateEvent {
        /// The id.
        id: String,
    },
    /// The request is malformed (no events, a name too long, an id twice in the batch).
    /// Nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The database failed. Nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for AppendError {
    fn from(e: tokio_postgres::Error) -> Self {
        AppendError::Store(StoreError::Db(e))
    }
}

impl From<deadpool_postgres::PoolError> for AppendError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        AppendError::Store(e.into())
    }
}

/// A subscription's row.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubscriptionRow {
    /// Its name.
    pub name: String,
    /// Every event up to this position is acknowledged.
    pub checkpoint: i64,
    /// The lease holder, if any.
    pub owner: Option<String>,
    /// The view the holder recorded.
    pub owner_view: Vec<String>,
    /// The lease's epoch.
    pub epoch: i64,
    /// Bumped by every write to the lease.
    pub renewals: i64,
    /// Milliseconds until the lease expires (negative: expired); `None` when unowned.
    pub lease_remaining_ms: Option<i64>,
}

impl SubscriptionRow {
    /// Whether nobody holds a live lease.
    pub fn is_free(&self) -> bool {
        self.owner.is_none() || self.lease_remaining_ms.is_none_or(|ms| ms < 0)
    }
}

/// A lease held by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its epoch.
    pub epoch: i64,
    /// The checkpoint when it was taken.
    pub checkpoint: i64,
}

/// The event store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    inner: Arc<Health>,
}

struct Health {
    failing: AtomicBool,
    reconnects: AtomicU64,
    reconnected: watch::Sender<u64>,
}

fn row_to_event(r: &Row) -> RecordedEvent {
    RecordedEvent {
        position: r.get("position"),
        id: r.get("event_id"),
        stream: r.get("stream_id"),
        version: r.get("version"),
        event_type: r.get("event_type"),
        data: r.get("data"),
        metadata: r.get("metadata"),
    }
}

fn row_to_subscription(r: &Row) -> SubscriptionRow {
    SubscriptionRow {
        name: r.get("name"),
        checkpoint: r.get("checkpoint"),
        owner: r.get("owner"),
        owner_view: r.get("owner_view"),
        epoch: r.get("epoch"),
        renewals: r.get("renewals"),
        lease_remaining_ms: r.get("lease_remaining_ms"),
    }
}

const SUBSCRIPTION_COLUMNS: &str = "name, checkpoint, owner, owner_view, epoch, renewals, \
     (extract(epoch from (lease_until - clock_timestamp())) * 1000)::bigint AS lease_remaining_ms";

/// Checks a stream, subscription or event name.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{what} is {} bytes long, the limit is {MAX_NAME}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} {name:?} has a control character"));
    }
    Ok(())
}

impl Store {
    /// A store on the database at `url` (`host=… port=… user=… dbname=…` or a
    /// `postgresql://` URL), with up to `max_connections` connections. Connects lazily:
    /// call [`Store::migrate`] to connect and create the tables.
    pub fn new(url: &str, max_connections: usize) -> Result<Store, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Unavailable(e.to_string()))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(2))
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Store {
            pool,
            inner: Arc::new(Health {
                failing: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                reconnected: watch::channel(0).0,
            }),
        })
    }

    /// A `watch` that changes each time the database can be reached again after a
    /// failure.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.inner.reconnected.subscribe()
    }

    /// How many times the database could be reached again after a failure.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Passes `r` through, noting whether the database was reachable.
    fn note<T, E>(&self, r: Result<T, E>) -> Result<T, E>
    where
        E: IsUnavailable,
    {
        match &r {
            Ok(_) => {
                if self.inner.failing.swap(false, Ordering::AcqRel) {
                    let n = self.inner.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!("database reachable again");
                    self.inner.reconnected.send_replace(n);
                }
            }
            Err(e) if e.is_unavailable() => {
                if !self.inner.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!("database unreachable");
                }
            }
            Err(_) => {}
        }
        r
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let c = self.pool.get().await.map_err(StoreError::from);
        self.note(c)
    }

    /// Creates the tables if they are missing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let r = client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
            ))
            .await
            .map_err(StoreError::from);
        self.note(r)
    }

    /// Appends `events` to `stream` atomically if its version is what `expected` says.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        check_name("stream name", stream).map_err(AppendError::Invalid)?;
        if events.is_empty() {
            return Err(AppendError::Invalid("no events to append".into()));
        }
        if events.len() > MAX_BATCH {
            return Err(AppendError::Invalid(format!(
                "{} events in one append, the limit is {MAX_BATCH}",
                events.len()
            )));
        }
        if let ExpectedVersion::Exact(v) = expected
            && v < 0
        {
            return Err(AppendError::Invalid(format!(
                "expected version {v} is negative"
            )));
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut seen = std::collections::HashSet::new();
        for e in &events {
            let id = match &e.id {
                Some(id) => {
                    check_name("event id", id).map_err(AppendError::Invalid)?;
                    id.clone()
                }
                None => new_id(),
            };
            check_name("event type", &e.event_type).map_err(AppendError::Invalid)?;
            if !seen.insert(id.clone()) {
                return Err(AppendError::Invalid(format!(
                    "event id {id:?} appears twice in the batch"
                )));
            }
            ids.push(id);
        }
        let r = self.append_checked(stream, expected, &events, &ids).await;
        self.note(r)
    }

    async fn append_checked(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        ids: &[String],
    ) -> Result<Appended, AppendError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO streams (stream_id, version) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&stream],
        )
        .await?;
        let current: i64 = tx
            .query_one(
                "SELECT version FROM streams WHERE stream_id = $1 FOR UPDATE",
                &[&stream],
            )
            .await?
            .get(0);
        if !expected.accepts(current) {
            return Err(AppendError::WrongExpectedVersion { expected, current });
        }
        if let Some(row) = tx
            .query_opt(
                "SELECT event_id FROM events WHERE event_id = ANY($1) LIMIT 1",
                &[&ids],
            )
            .await?
        {
            return Err(AppendError::DuplicateEvent { id: row.get(0) });
        }
        let n = events.len() as i64;
        let last: i64 = tx
            .query_one(
                "UPDATE global_position SET last = last + $1 RETURNING last",
                &[&n],
            )
            .await?
            .get(0);
        let first = last - n + 1;
        let insert = tx
            .prepare(
                "INSERT INTO events (position, event_id, stream_id, version, event_type, data, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        for (i, (e, id)) in events.iter().zip(ids).enumerate() {
            let i = i as i64;
            let r = tx
                .execute(
                    &insert,
                    &[
                        &(first + i),
                        id,
                        &stream,
                        &(current + 1 + i),
                        &e.event_type,
                        &e.data,
                        &e.metadata,
                    ],
                )
                .await;
            if let Err(err) = r {
                // Another append with the same id committed after our check.
                if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    return Err(AppendError::DuplicateEvent { id: id.clone() });
                }
                return Err(err.into());
            }
        }
        tx.execute(
            "UPDATE streams SET version = $2 WHERE stream_id = $1",
            &[&stream, &(current + n)],
        )
        .await?;
        tx.commit().await?;
        Ok(Appended {
            stream: stream.to_owned(),
            first_version: current + 1,
            last_version: current + n,
            first_position: first,
            last_position: last,
        })
    }

    /// The stream's events from version `from` on, at most `limit`; `None` when the
    /// stream has no events.
    pub async fn read_stream(
        &self,
        stream: &str,
        from: i64,
        limit: i64,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let r = async {
            let client = self.client().await?;
            let exists = client
                .query_opt(
                    "SELECT version FROM streams WHERE stream_id = $1 AND version > 0",
                    &[&stream],
                )
                .await?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let rows = client
                .query(
                    "SELECT * FROM events WHERE stream_id = $1 AND version >= $2 \
                     ORDER BY version LIMIT $3",
                    &[&stream, &from, &limit],
                )
                .await?;
            Ok(Some(rows.iter().map(row_to_event).collect()))
        }
        .await;
        self.note(r)
    }

    /// Events of every stream from position `from` on, at most `limit`, in order.
    pub async fn read_all(&self, from: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let r = async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT * FROM events WHERE position >= $1 ORDER BY position LIMIT $2",
                    &[&from, &limit],
                )
                .await?;
            Ok(rows.iter().map(row_to_event).collect())
        }
        .await;
        self.note(r)
    }

    /// Creates a subscription that starts after position `after` (0: from the first
    /// event). Returns false when it existed already (left unchanged).
    pub async fn create_subscription(&self, name: &str, after: i64) -> Result<bool, StoreError> {
        let r = async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "INSERT INTO subscriptions (name, checkpoint) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&name, &after],
                )
                .await?;
            Ok(n == 1)
        }
        .await;
        self.note(r)
    }

    /// Every subscription, by name.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let r = async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY name"),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(row_to_subscription).collect())
        }
        .await;
        self.note(r)
    }

    /// One subscription.
    pub async fn subscription(&self, name: &str) -> Result<Option<SubscriptionRow>, StoreError> {
        let r = async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1"),
                    &[&name],
                )
                .await?;
            Ok(row.as_ref().map(row_to_subscription))
        }
        .await;
        self.note(r)
    }

    /// Takes the lease of `seen` for `node` if nobody wrote to it since `seen` was read:
    /// bumps the epoch, records `view` and the acquisition. `None`: someone did.
    pub async fn acquire(
        &self,
        seen: &SubscriptionRow,
        node: &str,
        view: &[String],
        ttl: Duration,
        reason: &str,
    ) -> Result<Option<Lease>, StoreError> {
        let r = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "UPDATE subscriptions SET owner = $2, owner_view = $3, epoch = epoch + 1, \
                     renewals = renewals + 1, \
                     lease_until = clock_timestamp() + $4::float8 * interval '1 second' \
                     WHERE name = $1 AND epoch = $5 AND renewals = $6 \
                     RETURNING epoch, checkpoint",
                    &[
                        &seen.name,
                        &node,
                        &view,
                        &ttl.as_secs_f64(),
                        &seen.epoch,
                        &seen.renewals,
                    ],
                )
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let lease = Lease {
                epoch: row.get(0),
                checkpoint: row.get(1),
            };
            tx.execute(
                "INSERT INTO leases (subscription, epoch, node, checkpoint, reason) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&seen.name, &lease.epoch, &node, &lease.checkpoint, &reason],
            )
            .await?;
            tx.commit().await?;
            Ok(Some(lease))
        }
        .await;
        self.note(r)
    }

    /// Writes the checkpoint and extends the lease, if `node` still holds it at `epoch`;
    /// also records `view` when given. Returns false when the write was rejected (the
    /// lease is someone else's now): nothing changed.
    pub async fn renew(
        &self,
        name: &str,
        node: &str,
        epoch: i64,
        checkpoint: i64,
        view: Option<&[String]>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let r = async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE subscriptions SET checkpoint = GREATEST(checkpoint, $4), \
                     owner_view = COALESCE($5, owner_view), renewals = renewals + 1, \
                     lease_until = clock_timestamp() + $6::float8 * interval '1 second' \
                     WHERE name = $1 AND owner = $2 AND epoch = $3",
                    &[&name, &node, &epoch, &checkpoint, &view, &ttl.as_secs_f64()],
                )
                .await?;
            Ok(n == 1)
        }
        .await;
        self.note(r)
    }

    /// Writes the final checkpoint and gives the lease up, if `node` still holds it at
    /// `epoch`. Returns false when rejected: nothing changed.
    pub async fn release(
        &self,
        name: &str,
        node: &str,
        epoch: i64,
        checkpoint: i64,
    ) -> Result<bool, StoreError> {
        let r = async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE subscriptions SET checkpoint = GREATEST(checkpoint, $4), \
                     owner = NULL, owner_view = '{}', lease_until = NULL, \
                     renewals = renewals + 1 \
                     WHERE name = $1 AND owner = $2 AND epoch = $3",
                    &[&name, &node, &epoch, &checkpoint],
                )
                .await?;
            Ok(n == 1)
        }
        .await;
        self.note(r)
    }

    /// Records that `node` handed the event at `position` to the handler of
    /// `subscription` under lease `epoch`.
    pub async fn record_delivery(
        &self,
        subscription: &str,
        position: i64,
        node: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let r = async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO deliveries (subscription, position, node, epoch) \
                     VALUES ($1, $2, $3, $4)",
                    &[&subscription, &position, &node, &epoch],
                )
                .await?;
            Ok(())
        }
        .await;
        self.note(r)
    }

    /// Records this node's HTTP address.
    pub async fn register_node(
        &self,
        name: &str,
        http_addr: &str,
        incarnation: u64,
    ) -> Result<(), StoreError> {
        let r = async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO nodes (name, http_addr, incarnation) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET http_addr = $2, incarnation = $3, \
                     started_at = clock_timestamp()",
                    &[&name, &http_addr, &incarnation.to_string()],
                )
                .await?;
            Ok(())
        }
        .await;
        self.note(r)
    }

    /// Each known node's HTTP address and incarnation, by name.
    pub async fn nodes(
        &self,
    ) -> Result<std::collections::BTreeMap<String, (String, String)>, StoreError> {
        let r = async {
            let client = self.client().await?;
            let rows = client
                .query("SELECT name, http_addr, incarnation FROM nodes", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect())
        }
        .await;
        self.note(r)
    }
}

/// A fresh event id: 128 random bits in hex.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether an error means that the database could not be reached.
trait IsUnavailable {
    fn is_unavailable(&self) -> bool;
}

impl IsUnavailable for StoreError {
    fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Db(e) => e.is_closed() || e.as_db_error().is_none(),
        }
    }
}

impl IsUnavailable for AppendError {
    fn is_unavailable(&self) -> bool {
        matches!(self, AppendError::Store(e) if e.is_unavailable())
    }
}
