//! The HTTP admin API (JSON) and Prometheus `/metrics`, on every node. Cluster-wide reads
//! and commands go to the shard manager through the node (forwarded when another node runs
//! it); a command is answered once the manager has persisted it.
//!
//! | Method, path | What |
//! |---|---|
//! | `GET /health` | `{"status":"ok","node":N}` (liveness) |
//! | `GET /ready` | [`Readiness`]: 200 when serving and caught up, else 503 |
//! | `GET /metrics` | Prometheus text: requests, latency, connections, replicas, manager, engine |
//! | `GET /v1/cluster` | cluster id, manager, nodes, groups, operators, counts |
//! | `GET /v1/nodes`, `/v1/groups`, `/v1/operators`, `/v1/migrations` | parts of the above |
//! | `GET /v1/shards?node=&group=&key=&key-hex=` | shards with range, epoch, replicas, leader, size, load |
//! | `GET /v1/shards/{id}` | one shard |
//! | `GET /v1/shards/{id}/checksums` | every replica's range checksum at one log index (equal: consistent) |
//! | `POST /v1/admin` | an [`AdminCommand`] as JSON, e.g. `{"command":"split","shard":3}` |
//! | `GET/PUT/DELETE /v1/faults` | engine fault injection (only with `fault-injection = true`) |
//! | `GET/PUT/DELETE /v1/faults/network` | network faults on the node's outgoing Raft links (same) |
//! | `GET/PUT/DELETE /v1/faults/host` | CPU contention and memory pressure in the node (same) |
//! | `GET/PUT /v1/log-level` | the log filter (`RUST_LOG` syntax) in force; `PUT {"filter":"..."}` replaces it until restart |
//! | `GET /v1/forecast?top=N` | predicted load: regions, nodes, the N hottest shards (20), advice |
//! | `GET /v1/capacity` | per node and region: projected bytes and load, when each crosses capacity, nodes to add |
//! | `GET /v1/risk` | failure probability per node and region, the models' status |
//! | `GET /v1/warnings?after=SEQ&limit=N` | active early warnings and the events after `SEQ` |
//! | `GET /v1/pfa/report?horizon_ms=` | warnings that preceded a failure vs false ones, mitigations that helped (default horizon 1 h) |
//! | `GET /v1/telemetry/{node}?after_ms=&limit=` | the node's raw telemetry samples kept by the manager |
//! | `GET /v1/history/{node}?minutes=` | the node's per-minute history kept in the meta shard (default 60 minutes) |
//! | `PUT /v1/nodes/{id}/counters` | push counters for a node, e.g. `{"smart_5_raw": 8}` (SMART) |
//!
//! **Who may call** (design.md §10): HTTPS with the node's certificate; every path but
//! `/health` and `/ready` (load balancers and supervisors probe them; they tell counts, no
//! keys) needs `Authorization: Bearer TOKEN`, a token of the users file
//! (`presage user token`), compared in constant time. Inspection (every `GET`) needs any
//! role; `POST /v1/admin`, the fault endpoints, pushed counters and `PUT /v1/log-level` need `operator`.
//! `/metrics` is open with `security.open-metrics`. A missing or wrong token is 401, a role
//! that does not allow the request 403; each failure is logged and answered later the more a
//! source fails ([`presage_security::throttle`]). An insecure node serves plain HTTP to
//! anyone, as an operator. Errors are JSON `{"error": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request as HttpRequest, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use presage_client::net::{BoxStream, Handler};
use presage_client::proto::Role;
use presage_client::proto::{ClusterInfo, ShardRow};
use presage_client::{PfaQuery, ProtoError, Request, Response};
use presage_engine::{EngineMetrics, FaultConfig, FaultInjector};
use presage_replication::{NetFaultConfig, NetFaults};

use crate::host_fault::{HostFaultConfig, HostFaults};
use presage_security::throttle::AuthThrottle;
use presage_security::Credentials;
use presage_shardmgr::{AdminCommand, NodeId};
use serde::Deserialize;
use serde_json::json;

use crate::metrics::{Metrics, NodeGauges};

/// Reads this node's scrape-time gauges.
pub type GaugeProbe =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = NodeGauges> + Send>> + Send + Sync>;

/// Reads this node's readiness (see [`Readiness`]).
pub type ReadinessProbe =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Readiness> + Send>> + Send + Sync>;

/// Most entries a replica may have committed and not applied yet and still count as caught up.
pub const READY_MAX_APPLY_LAG_ENTRIES: u64 = 1_000;
/// Most lagging shards one `/ready` answer names.
pub const READY_MAX_LISTED_SHARDS: usize = 16;
/// The replication loop must answer `/ready`'s question within this.
pub const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What `/ready` answers: may this node take traffic? (A node serves its admin API only once
/// it joined the cluster, so one that answers has joined.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Serving and caught up.
    pub ready: bool,
    /// The replication loop answered within [`READY_PROBE_TIMEOUT`] (it has not stopped or
    /// stalled).
    pub serving: bool,
    /// Every replica here knows its shard's leader and has applied its log to within
    /// [`READY_MAX_APPLY_LAG_ENTRIES`] of its commit index.
    pub caught_up: bool,
    /// Replicas on this node.
    pub replicas: usize,
    /// Shards whose replica here is not caught up (at most [`READY_MAX_LISTED_SHARDS`]).
    pub behind: Vec<u64>,
}

impl Readiness {
    /// The readiness of a node whose replication loop answered with `statuses`.
    pub fn of(statuses: &[presage_replication::ShardStatus]) -> Readiness {
        let lagging = statuses
            .iter()
            .filter(|s| s.leader.is_none() || s.applied.saturating_add(READY_MAX_APPLY_LAG_ENTRIES) < s.commit);
        let behind: Vec<u64> = lagging.map(|s| s.descriptor.id).take(READY_MAX_LISTED_SHARDS).collect();
        let caught_up = behind.is_empty();
        Readiness { ready: caught_up, serving: true, caught_up, replicas: statuses.len(), behind }
    }

    /// The readiness of a node whose replication loop did not answer.
    pub fn not_serving() -> Readiness {
        Readiness { ready: false, serving: false, caught_up: false, replicas: 0, behind: Vec::new() }
    }
}

/// Reads (`None`) or replaces (`Some(filter)`) the node's log filter at run time; answers the
/// filter in force, or why the new one was refused. The node binary owns the logger, so it
/// hands this in.
pub type LogLevelControl = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

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
    /// Readiness.
    pub readiness: ReadinessProbe,
    /// The log filter, when the process's logger can change it.
    pub log_level: Option<LogLevelControl>,
    /// Who may call.
    pub auth: AdminAuth,
    /// Fault injection, when enabled.
    pub faults: Option<Arc<FaultInjector>>,
    /// Network fault injection on the Raft links, when enabled.
    pub net_faults: Option<Arc<NetFaults>>,
    /// Host fault injection (CPU, memory), when enabled.
    pub host_faults: Option<Arc<HostFaults>>,
}

/// Who may call the admin API.
#[derive(Clone)]
pub struct AdminAuth {
    /// The tokens (`None`: an insecure node, where every caller is an operator).
    pub credentials: Option<Arc<Credentials>>,
    /// `/metrics` needs no token.
    pub open_metrics: bool,
    /// Failed tokens per source address.
    pub throttle: Arc<AuthThrottle>,
}

/// Connections the admin API serves at once (TLS handshakes included).
pub const MAX_ADMIN_CONNECTIONS: usize = 256;
/// A TLS handshake must complete within this.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
        ProtoError::Retry(_)
        | ProtoError::Unavailable(_)
        | ProtoError::DiskFull { .. }
        | ProtoError::NotManager { .. }
        | ProtoError::NotLeader { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ProtoError::ShardNotFound { .. } => StatusCode::NOT_FOUND,
        ProtoError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ProtoError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Serves the admin API on `listener`: HTTPS with `tls`, plain HTTP without (an insecure
/// node).
pub fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> AdminServer {
    let local_addr = listener.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let app = router(state).into_make_service_with_connect_info::<RemoteAddr>();
    let listener = AdminListener::start(listener, tls, local_addr);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    AdminServer { task, local_addr }
}

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>> for RemoteAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        RemoteAddr(*stream.remote_addr())
    }
}

/// The admin API's connections: accepted (and TLS-handshaken, each on its own task within
/// `HANDSHAKE_TIMEOUT`) at most [`MAX_ADMIN_CONNECTIONS`] at once.
pub struct AdminListener {
    rx: tokio::sync::mpsc::Receiver<(BoxStream, std::net::SocketAddr)>,
    local_addr: std::net::SocketAddr,
    _accept: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AdminListener {
    fn start(
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        local_addr: std::net::SocketAddr,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "admin API: too many connections; refused");
                    continue;
                };
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let stream: BoxStream = match tls {
                        None => Box::new(Counted::new(tcp, slot)),
                        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(s)) => Box::new(Counted::new(s, slot)),
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "admin API: TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%peer, "admin API: TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    let _ = tx.send((stream, peer)).await;
                });
            }
        });
        AdminListener { rx, local_addr, _accept: AbortOnDrop(accept) }
    }
}

/// A connection holding its slot of [`MAX_ADMIN_CONNECTIONS`] until it is dropped.
struct Counted<S> {
    inner: S,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<S> Counted<S> {
    fn new(inner: S, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        Counted { inner, _slot: slot }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = BoxStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (the listener is being dropped): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/nodes", get(nodes))
        .route("/v1/groups", get(groups))
        .route("/v1/operators", get(operators))
        .route("/v1/migrations", get(migrations))
        .route("/v1/shards", get(shards))
        .route("/v1/shards/{id}", get(shard))
        .route("/v1/shards/{id}/checksums", get(shard_checksums))
        .route("/v1/admin", post(admin))
        .route("/v1/faults", fault_routes::<FaultInjector>())
        .route("/v1/faults/network", fault_routes::<NetFaults>())
        .route("/v1/faults/host", fault_routes::<HostFaults>())
        .route("/v1/forecast", get(forecast))
        .route("/v1/capacity", get(capacity))
        .route("/v1/risk", get(risk))
        .route("/v1/warnings", get(warnings))
        .route("/v1/pfa/report", get(pfa_report))
        .route("/v1/telemetry/{node}", get(telemetry))
        .route("/v1/history/{node}", get(history))
        .route("/v1/nodes/{id}/counters", axum::routing::put(push_counters))
        .route("/v1/log-level", get(log_level).put(set_log_level))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing (liveness).
    Nothing,
    /// Any token (inspection).
    Inspect,
    /// An operator token.
    Operate,
}

fn need(method: &Method, path: &str, open_metrics: bool) -> Need {
    match (method, path) {
        (_, "/health") | (_, "/ready") => Need::Nothing,
        (_, "/metrics") if open_metrics => Need::Nothing,
        (&Method::GET, _) | (&Method::HEAD, _) => Need::Inspect,
        _ => Need::Operate,
    }
}

/// Checks the bearer token of every request against what its method and path need.
async fn authorize(State(s): State<AdminState>, request: HttpRequest, next: Next) -> HttpResponse {
    let Some(credentials) = &s.auth.credentials else { return next.run(request).await };
    let required = need(request.method(), request.uri().path(), s.auth.open_metrics);
    if required == Need::Nothing {
        return next.run(request).await;
    }
    let source = request.extensions().get::<ConnectInfo<RemoteAddr>>().map(|c| c.0 .0);
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let checked = given.map(|t| credentials.check_token(t.trim()));
    let (name, role) = match checked {
        Some(Ok((name, role))) => (name.to_string(), role),
        failure => {
            let why = if failure.is_none() { "missing bearer token" } else { "wrong bearer token" };
            tracing::warn!(source = ?source, path = %request.uri().path(), why, "admin API: authentication failed");
            if let Some(addr) = source {
                tokio::time::sleep(s.auth.throttle.failed(addr.ip())).await;
            }
            return ApiError(StatusCode::UNAUTHORIZED, format!("{why} (Authorization: Bearer TOKEN)")).into_response();
        }
    };
    if let Some(addr) = source {
        s.auth.throttle.succeeded(addr.ip());
    }
    if required == Need::Operate && role != Role::Operator {
        tracing::warn!(source = ?source, token = %name, %role, path = %request.uri().path(), "admin API: permission denied");
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "token {name} ({role}) may not {} {}: it needs the operator role",
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

async fn health(State(s): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "node": s.node }))
}

/// Body of `PUT /v1/log-level`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelBody {
    filter: String,
}

fn log_control(s: &AdminState) -> ApiResult<&LogLevelControl> {
    s.log_level.as_ref().ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, "this process's logger cannot change its filter at run time".into())
    })
}

async fn log_level(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    let filter = log_control(&s)?(None).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(json!({ "filter": filter })))
}

async fn set_log_level(
    State(s): State<AdminState>,
    body: Result<Json<LogLevelBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad log-level JSON: {e}")))?;
    let filter = log_control(&s)?(Some(&body.filter)).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "filter": filter })))
}

async fn ready(State(s): State<AdminState>) -> HttpResponse {
    let r = (s.readiness)().await;
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}

async fn metrics(State(s): State<AdminState>) -> ApiResult<String> {
    let gauges = (s.gauges)().await;
    s.metrics.set_gauges(&gauges);
    Ok(s.metrics.render(&[s.engine_metrics.registry(), presage_replication::metrics::registry()]))
}

async fn ask(s: &AdminState, request: Request) -> ApiResult<Response> {
    match (s.handler)(presage_client::Caller::Local, request).await {
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

async fn cluster(State(s): State<AdminState>) -> ApiResult<Json<ClusterInfo>> {
    Ok(Json(cluster_info(&s).await?))
}

/// The query of `/v1/forecast`.
#[derive(Debug, Deserialize)]
struct ForecastQuery {
    /// Shards to list.
    top: Option<u32>,
}

async fn forecast(
    State(s): State<AdminState>,
    Query(q): Query<ForecastQuery>,
) -> ApiResult<Json<presage_shardmgr::ForecastReport>> {
    match ask(&s, Request::Forecast { top: q.top.unwrap_or(20).min(1_000) }).await? {
        Response::Forecast(report) => Ok(Json(*report)),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn capacity(State(s): State<AdminState>) -> ApiResult<Json<presage_shardmgr::CapacityReport>> {
    match ask(&s, Request::Capacity).await? {
        Response::Capacity(report) => Ok(Json(*report)),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn nodes(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(cluster_info(&s).await?.nodes)))
}

async fn groups(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(cluster_info(&s).await?.groups)))
}

async fn operators(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(cluster_info(&s).await?.operators)))
}

async fn migrations(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(cluster_info(&s).await?.migrations)))
}

/// Filters of `/v1/shards`.
#[derive(Debug, Deserialize)]
struct ShardFilter {
    node: Option<NodeId>,
    group: Option<u64>,
    /// A key (UTF-8); the shard holding it.
    key: Option<String>,
    /// A key in hex (any bytes); the shard holding it.
    #[serde(rename = "key-hex")]
    key_hex: Option<String>,
}

async fn all_shards(s: &AdminState) -> ApiResult<Vec<ShardRow>> {
    match ask(s, Request::Shards { start: Vec::new(), max_shards: MAX_SHARDS_PER_ANSWER }).await? {
        Response::Shards { shards } => Ok(shards),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn shards(State(s): State<AdminState>, Query(f): Query<ShardFilter>) -> ApiResult<Json<Vec<ShardRow>>> {
    let key_hex = match f.key_hex.as_deref().map(from_hex).transpose() {
        Ok(k) => k,
        Err(e) => return Err(ApiError(StatusCode::BAD_REQUEST, format!("key-hex: {e}"))),
    };
    let key = key_hex.or_else(|| f.key.map(String::into_bytes));
    let rows = all_shards(&s).await?;
    let rows = rows
        .into_iter()
        .filter(|r| f.node.is_none_or(|n| r.shard.replica(n).is_some()))
        .filter(|r| f.group.is_none_or(|g| r.group == Some(g)))
        .filter(|r| key.as_ref().is_none_or(|k| r.shard.contains(k)))
        .collect();
    Ok(Json(rows))
}

/// Bytes from hex digits.
fn from_hex(digits: &str) -> Result<Vec<u8>, &'static str> {
    let d = digits.as_bytes();
    if !d.len().is_multiple_of(2) {
        return Err("an odd number of hex digits");
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    d.chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect::<Option<_>>().ok_or("not hex digits")
}

async fn shard(State(s): State<AdminState>, Path(id): Path<u64>) -> ApiResult<Json<ShardRow>> {
    let rows = all_shards(&s).await?;
    rows.into_iter()
        .find(|r| r.shard.id == id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("shard {id} does not exist")))
}

/// Every replica's checksum of a shard at one log index.
async fn shard_checksums(State(s): State<AdminState>, Path(id): Path<u64>) -> ApiResult<Json<serde_json::Value>> {
    match ask(&s, Request::VerifyShard { shard: id }).await? {
        Response::ShardChecksums { index, checksums } => {
            let equal = checksums.windows(2).all(|w| w[0].1 == w[1].1);
            let by_node: Vec<serde_json::Value> =
                checksums.iter().map(|(node, c)| json!({ "node": node, "checksum": c })).collect();
            Ok(Json(json!({ "shard": id, "index": index, "equal": equal, "replicas": by_node })))
        }
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn admin(State(s): State<AdminState>, body: axum::body::Bytes) -> ApiResult<HttpResponse> {
    let command: AdminCommand = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad admin command JSON: {e}")))?;
    match ask(&s, Request::Admin { command }).await? {
        Response::Admin(outcome) => Ok(Json(outcome).into_response()),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

/// A kind of fault the admin API reads, replaces and clears (`/v1/faults`,
/// `/v1/faults/network`, `/v1/faults/host`); each change is logged.
trait Injector: Send + Sync + 'static {
    /// Its configuration, as JSON.
    type Config: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + Send;
    /// What it is called in errors and in the log.
    const KIND: &'static str;
    /// This node's injector (`None`: fault injection is off).
    fn of(s: &AdminState) -> Option<&Arc<Self>>;
    fn current(&self) -> Self::Config;
    fn replace(&self, config: Self::Config) -> Result<(), String>;
    fn remove(&self);
}

impl Injector for FaultInjector {
    type Config = FaultConfig;
    const KIND: &'static str = "engine";
    fn of(s: &AdminState) -> Option<&Arc<Self>> {
        s.faults.as_ref()
    }
    fn current(&self) -> FaultConfig {
        self.config()
    }
    fn replace(&self, config: FaultConfig) -> Result<(), String> {
        self.set(config).map_err(|e| e.to_string())
    }
    fn remove(&self) {
        self.clear();
    }
}

impl Injector for NetFaults {
    type Config = NetFaultConfig;
    const KIND: &'static str = "network";
    fn of(s: &AdminState) -> Option<&Arc<Self>> {
        s.net_faults.as_ref()
    }
    fn current(&self) -> NetFaultConfig {
        self.config()
    }
    fn replace(&self, config: NetFaultConfig) -> Result<(), String> {
        self.set(config).map_err(|e| e.to_string())
    }
    fn remove(&self) {
        self.clear();
    }
}

impl Injector for HostFaults {
    type Config = HostFaultConfig;
    const KIND: &'static str = "host";
    fn of(s: &AdminState) -> Option<&Arc<Self>> {
        s.host_faults.as_ref()
    }
    fn current(&self) -> HostFaultConfig {
        self.config()
    }
    fn replace(&self, config: HostFaultConfig) -> Result<(), String> {
        self.set(config).map_err(|e| e.to_string())
    }
    fn remove(&self) {
        self.clear();
    }
}

/// `GET`, `PUT` and `DELETE` of one kind of fault.
fn fault_routes<F: Injector>() -> axum::routing::MethodRouter<AdminState> {
    get(faults_get::<F>).put(faults_put::<F>).delete(faults_clear::<F>)
}

fn injector<F: Injector>(s: &AdminState) -> ApiResult<&Arc<F>> {
    F::of(s).ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, "fault injection is disabled on this node (fault-injection = false)".into())
    })
}

async fn faults_get<F: Injector>(State(s): State<AdminState>) -> ApiResult<Json<F::Config>> {
    Ok(Json(injector::<F>(&s)?.current()))
}

async fn faults_put<F: Injector>(State(s): State<AdminState>, body: axum::body::Bytes) -> ApiResult<StatusCode> {
    let faults = injector::<F>(&s)?;
    let config: F::Config = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad {} fault config JSON: {e}", F::KIND)))?;
    let shown = format!("{config:?}");
    faults.replace(config).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    tracing::warn!(node = s.node, config = %shown, "{} fault injection set", F::KIND);
    Ok(StatusCode::NO_CONTENT)
}

async fn faults_clear<F: Injector>(State(s): State<AdminState>) -> ApiResult<StatusCode> {
    injector::<F>(&s)?.remove();
    tracing::warn!(node = s.node, "{} fault injection cleared", F::KIND);
    Ok(StatusCode::NO_CONTENT)
}

/// Asks the failure analysis; its JSON answer is passed through as it is.
async fn pfa(s: &AdminState, query: PfaQuery) -> ApiResult<HttpResponse> {
    match ask(s, Request::Pfa { query }).await? {
        Response::Pfa { json } => Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response()),
        other => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}"))),
    }
}

async fn risk(State(s): State<AdminState>) -> ApiResult<HttpResponse> {
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

async fn warnings(State(s): State<AdminState>, Query(q): Query<WarningsQuery>) -> ApiResult<HttpResponse> {
    pfa(&s, PfaQuery::Warnings { after_seq: q.after, limit: q.limit }).await
}

/// Query of `/v1/pfa/report`.
#[derive(Debug, Deserialize)]
struct ReportQuery {
    #[serde(default = "default_report_horizon_ms")]
    horizon_ms: u64,
}

fn default_report_horizon_ms() -> u64 {
    3_600_000
}

async fn pfa_report(State(s): State<AdminState>, Query(q): Query<ReportQuery>) -> ApiResult<HttpResponse> {
    pfa(&s, PfaQuery::Report { horizon_ms: q.horizon_ms }).await
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
    Path(node): Path<NodeId>,
    Query(q): Query<TelemetryQuery>,
) -> ApiResult<HttpResponse> {
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
    Path(node): Path<NodeId>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<HttpResponse> {
    pfa(&s, PfaQuery::History { node, minutes: q.minutes }).await
}

async fn push_counters(
    State(s): State<AdminState>,
    Path(node): Path<NodeId>,
    body: axum::body::Bytes,
) -> ApiResult<HttpResponse> {
    let counters: std::collections::BTreeMap<String, f64> = serde_json::from_slice(&body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, format!("counters must be a JSON object of names to numbers: {e}"))
    })?;
    pfa(&s, PfaQuery::PushCounters { node, counters }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_replication::ShardStatus;

    fn replica(id: u64, leader: Option<u64>, commit: u64, applied: u64) -> ShardStatus {
        let mut s = ShardStatus { leader, commit, applied, ..ShardStatus::default() };
        s.descriptor.id = id;
        s
    }

    #[test]
    fn ready_when_every_replica_knows_its_leader_and_has_applied_nearly_all_it_committed() {
        let lag = READY_MAX_APPLY_LAG_ENTRIES;
        let fine = [replica(1, Some(1), 5_000, 5_000), replica(2, Some(2), 5_000, 5_000 - lag)];
        let r = Readiness::of(&fine);
        assert!(r.ready && r.serving && r.caught_up && r.behind.is_empty(), "{r:?}");
        assert_eq!(r.replicas, 2);
        let lagging = [replica(1, Some(1), 5_000, 5_000), replica(2, Some(2), 5_000, 5_000 - lag - 1)];
        assert_eq!(Readiness::of(&lagging).behind, vec![2]);
        assert!(!Readiness::of(&lagging).ready);
        let leaderless = [replica(3, None, 0, 0)];
        assert_eq!(Readiness::of(&leaderless).behind, vec![3], "an election is under way");
        let many: Vec<ShardStatus> = (0..100).map(|i| replica(i, None, 0, 0)).collect();
        assert_eq!(Readiness::of(&many).behind.len(), READY_MAX_LISTED_SHARDS);
        assert!(!Readiness::not_serving().ready && !Readiness::not_serving().serving);
    }

    #[test]
    fn only_liveness_readiness_and_open_metrics_need_no_token() {
        assert_eq!(need(&Method::GET, "/health", false), Need::Nothing);
        assert_eq!(need(&Method::GET, "/ready", false), Need::Nothing);
        assert_eq!(need(&Method::GET, "/metrics", false), Need::Inspect);
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Nothing);
        assert_eq!(need(&Method::GET, "/v1/shards", true), Need::Inspect);
        assert_eq!(need(&Method::POST, "/v1/admin", true), Need::Operate);
        assert_eq!(need(&Method::GET, "/v1/log-level", true), Need::Inspect);
        assert_eq!(need(&Method::PUT, "/v1/log-level", true), Need::Operate);
    }
}
