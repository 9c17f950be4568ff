//! The HTTP admin API (JSON) and Prometheus `/metrics`, on every node. Cluster-wide reads
//! and commands go to the shard manager through the node (forwarded when another node runs
//! it); a command is answered once the manager has persisted it.
//!
//! | Method, path | What |
//! |---|---|
//! | `GET /health` | `{"status":"ok","node":N}` |
//! | `GET /metrics` | Prometheus text: requests, latency, connections, replicas, manager, engine |
//! | `GET /v1/cluster` | cluster id, manager, nodes, groups, operators, counts |
//! | `GET /v1/nodes`, `/v1/groups`, `/v1/operators`, `/v1/migrations` | parts of the above |
//! | `GET /v1/shards?node=&group=&key=` | shards with range, epoch, replicas, leader, size, load |
//! | `GET /v1/shards/{id}` | one shard |
//! | `POST /v1/admin` | an [`AdminCommand`] as JSON, e.g. `{"command":"split","shard":3}` |
//! | `GET/PUT/DELETE /v1/faults` | engine fault injection (only with `fault-injection = true`) |
//! | `GET /v1/risk` | failure probability per node and region, the models' status |
//! | `GET /v1/warnings?after=SEQ&limit=N` | active early warnings and the events after `SEQ` |
//! | `GET /v1/telemetry/{node}?after_ms=&limit=` | the node's raw telemetry samples kept by the manager |
//! | `GET /v1/history/{node}?minutes=` | the node's per-minute history kept in the meta shard (default 60 minutes) |
//! | `PUT /v1/nodes/{id}/counters` | push counters for a node, e.g. `{"smart_5_raw": 8}` (SMART) |
//!
//! When `admin-token` is set every path but `/health` needs `Authorization: Bearer TOKEN`.
//! Errors are JSON `{"error": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use presage_client::net::Handler;
use presage_client::proto::{ClusterInfo, ShardRow};
use presage_client::{PfaQuery, ProtoError, Request, Response};
use presage_engine::{EngineMetrics, FaultConfig, FaultInjector};
use presage_shardmgr::{AdminCommand, NodeId};
use serde::Deserialize;
use serde_json::json;

use crate::metrics::{Metrics, NodeGauges};

/// Reads this node's scrape-time gauges.
pub type GaugeProbe =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = NodeGauges> + Send>> + Send + Sync>;

/// What the admin API serves from.
#[derive(Clone)]
pub struct AdminState {
    /// This node.
    pub node: NodeId,
    /// The node's request handler (forwards manager requests).
    pub handler: Handler,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The engine's metrics.
    pub engine_metrics: Arc<EngineMetrics>,
    /// Scrape-time gauges.
    pub gauges: GaugeProbe,
    /// Required bearer token (empty: none).
    pub token: String,
    /// Fault injection, when enabled.
    pub faults: Option<Arc<FaultInjector>>,
}

/// Most shards one `/v1/shards` answer lists.
pub const MAX_SHARDS_PER_ANSWER: u32 = 100_000;

/// A running admin listener.
pub struct AdminServer {
    task: tokio::task::JoinHandle<()>,
    local_addr: std::net::SocketAddr,
}

impl AdminServer {
    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }
}

/// An error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn proto_status(e: &ProtoError) -> StatusCode {
    match e {
        ProtoError::Refused(_) | ProtoError::Invalid(_) | ProtoError::ReservedKey => StatusCode::BAD_REQUEST,
        ProtoError::Retry(_) | ProtoError::NotManager { .. } | ProtoError::NotLeader { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Serves the admin API on `listener`.
pub fn serve(listener: tokio::net::TcpListener, state: AdminState) -> AdminServer {
    let local_addr = listener.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    AdminServer { task, local_addr }
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/nodes", get(nodes))
        .route("/v1/groups", get(groups))
        .route("/v1/operators", get(operators))
        .route("/v1/migrations", get(migrations))
        .route("/v1/shards", get(shards))
        .route("/v1/shards/{id}", get(shard))
        .route("/v1/admin", post(admin))
        .route("/v1/faults", get(faults_get).put(faults_put).delete(faults_clear))
        .route("/v1/risk", get(risk))
        .route("/v1/warnings", get(warnings))
        .route("/v1/telemetry/{node}", get(telemetry))
        .route("/v1/history/{node}", get(history))
        .route("/v1/nodes/{id}/counters", axum::routing::put(push_counters))
        .with_state(state)
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> ApiResult<()> {
    if state.token.is_empty() {
        return Ok(());
    }
    let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if t == state.token => Ok(()),
        _ => Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())),
    }
}

async fn health(State(s): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "node": s.node }))
}

async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<String> {
    authorize(&s, &headers)?;
    let gauges = (s.gauges)().await;
    s.metrics.set_gauges(&gauges);
    Ok(s.metrics.render(&[s.engine_metrics.registry()]))
}

async fn ask(s: &AdminState, request: Request) -> ApiResult<Response> {
    match (s.handler)(request).await {
        Response::Error(e) => Err(ApiError(proto_status(&e), e.to_string())),
        other => Ok(other),
    }
}

async fn cluster_info(s: &AdminState) -> ApiResult<ClusterInfo> {
    match ask(s, Request::ClusterInfo).await? {
        Response::ClusterInfo(info) => Ok(*info),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn cluster(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<ClusterInfo>> {
    authorize(&s, &headers)?;
    Ok(Json(cluster_info(&s).await?))
}

async fn nodes(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&s, &headers)?;
    Ok(Json(json!(cluster_info(&s).await?.nodes)))
}

async fn groups(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&s, &headers)?;
    Ok(Json(json!(cluster_info(&s).await?.groups)))
}

async fn operators(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&s, &headers)?;
    Ok(Json(json!(cluster_info(&s).await?.operators)))
}

async fn migrations(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&s, &headers)?;
    Ok(Json(json!(cluster_info(&s).await?.migrations)))
}

/// Filters of `/v1/shards`.
#[derive(Debug, Deserialize)]
struct ShardFilter {
    node: Option<NodeId>,
    group: Option<u64>,
    /// A key (UTF-8); the shard holding it.
    key: Option<String>,
}

async fn all_shards(s: &AdminState) -> ApiResult<Vec<ShardRow>> {
    match ask(s, Request::Shards { start: Vec::new(), max_shards: MAX_SHARDS_PER_ANSWER }).await? {
        Response::Shards { shards } => Ok(shards),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn shards(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(f): Query<ShardFilter>,
) -> ApiResult<Json<Vec<ShardRow>>> {
    authorize(&s, &headers)?;
    let rows = all_shards(&s).await?;
    let rows = rows
        .into_iter()
        .filter(|r| f.node.is_none_or(|n| r.shard.replica(n).is_some()))
        .filter(|r| f.group.is_none_or(|g| r.group == Some(g)))
        .filter(|r| f.key.as_ref().is_none_or(|k| r.shard.contains(k.as_bytes())))
        .collect();
    Ok(Json(rows))
}

async fn shard(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<u64>) -> ApiResult<Json<ShardRow>> {
    authorize(&s, &headers)?;
    let rows = all_shards(&s).await?;
    rows.into_iter()
        .find(|r| r.shard.id == id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("shard {id} does not exist")))
}

async fn admin(State(s): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    let command: AdminCommand = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad admin command JSON: {e}")))?;
    match ask(&s, Request::Admin { command }).await? {
        Response::Admin(outcome) => Ok(Json(outcome).into_response()),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

fn faults_of(s: &AdminState) -> ApiResult<&Arc<FaultInjector>> {
    s.faults.as_ref().ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, "fault injection is disabled on this node (fault-injection = false)".into())
    })
}

async fn faults_get(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<Json<FaultConfig>> {
    authorize(&s, &headers)?;
    Ok(Json(faults_of(&s)?.config()))
}

async fn faults_put(State(s): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult<StatusCode> {
    authorize(&s, &headers)?;
    let faults = faults_of(&s)?;
    let config: FaultConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad fault config JSON: {e}")))?;
    faults.set(config).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    tracing::warn!(node = s.node, ?config, "engine fault injection set");
    Ok(StatusCode::NO_CONTENT)
}

async fn faults_clear(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<StatusCode> {
    authorize(&s, &headers)?;
    faults_of(&s)?.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Asks the failure analysis; its JSON answer is passed through as it is.
async fn pfa(s: &AdminState, query: PfaQuery) -> ApiResult<HttpResponse> {
    match ask(s, Request::Pfa { query }).await? {
        Response::Pfa { json } => Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response()),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn risk(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    pfa(&s, PfaQuery::Risk).await
}

/// Query of `/v1/warnings`.
#[derive(Debug, Deserialize)]
struct WarningsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    1_000
}

async fn warnings(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<WarningsQuery>,
) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    pfa(&s, PfaQuery::Warnings { after_seq: q.after, limit: q.limit }).await
}

/// Query of `/v1/telemetry/{node}`.
#[derive(Debug, Deserialize)]
struct TelemetryQuery {
    #[serde(default)]
    after_ms: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

async fn telemetry(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(node): Path<NodeId>,
    Query(q): Query<TelemetryQuery>,
) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    pfa(&s, PfaQuery::Telemetry { node, after_ms: q.after_ms, limit: q.limit }).await
}

/// Query of `/v1/history/{node}`.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    #[serde(default = "default_history_minutes")]
    minutes: u32,
}

fn default_history_minutes() -> u32 {
    60
}

async fn history(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(node): Path<NodeId>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    pfa(&s, PfaQuery::History { node, minutes: q.minutes }).await
}

async fn push_counters(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(node): Path<NodeId>,
    body: axum::body::Bytes,
) -> ApiResult<HttpResponse> {
    authorize(&s, &headers)?;
    let counters: std::collections::BTreeMap<String, f64> = serde_json::from_slice(&body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, format!("counters must be a JSON object of names to numbers: {e}"))
    })?;
    pfa(&s, PfaQuery::PushCounters { node, counters }).await
}
