//! The native protocol over TCP: [`TcpRpc`] (the calling side, used by clients and nodes)
//! and [`serve`] (the answering side, run by every node).
//!
//! **Wire format.** Both directions of a connection carry frames:
//!
//! ```text
//! +----------------+-----------------+----------------------------------------+
//! | body_len: u32  | crc32(body): u32| body: MessagePack [id: u64, message]    |
//! +----------------+-----------------+----------------------------------------+
//!   big-endian       big-endian        body_len bytes
//! ```
//!
//! A client frame's message is a [`Request`], a node's a [`Response`] carrying the id of the
//! request it answers: one connection carries many requests at once, answered in any order.
//! The length is checked against `max-frame-bytes` before the body is read, then the crc,
//! then the body is decoded. A frame that cannot be trusted (too long, bad crc) closes the
//! connection; a well-framed request that does not decode gets an `Invalid` answer and the
//! connection goes on.
//!
//! **Limits.** A node serves at most `max-connections` connections and
//! `max-inflight-per-connection` requests per connection (it stops reading a connection
//! while that many are running: back-pressure, not an error); a caller has at most
//! `max-inflight-per-connection` requests outstanding per connection and waits for room.
//! A frame's body is read as its bytes arrive (never allocated whole from the header's
//! word), after the node-wide budget `max-inflight-bytes` granted its length; the grant is
//! returned when its answer is queued. A connection that sends nothing for
//! `idle-timeout-ms` is closed.
//!
//! **Trust** (design.md §10). [`serve`] takes an optional TLS acceptor and an
//! [`Authenticator`]: a connection starts as the caller its client certificate names, or as
//! nobody; nobody may only send [`Request::Auth`] (user and password), which the connection
//! answers itself, in frames of at most `MAX_UNAUTHENTICATED_FRAME_BYTES`, within
//! `LOGIN_TIMEOUT_MS` of connecting. Each failed login waits longer before its answer
//! (`AUTH_FAILURE_DELAY_MS` doubling) and after `MAX_AUTH_FAILURES` the connection is closed;
//! every failure is logged. The handler receives the proven [`Caller`] with each request and
//! decides what it may do. [`serve_stream`] serves one already-authenticated stream (the peer
//! port's control channel, after its handshake). On the calling side, a [`Connect`] makes the
//! stream (plain TCP, [`crate::tls::TlsConnect`], or the node's peer dialer) and [`TcpRpc`]
//! logs in first when it has a [`Login`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use presage_shardmgr::{NodeId, NodeMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::proto::{Caller, ProtoError, Request, Response};
use crate::rpc::{Rpc, RpcError, RpcFuture};

/// Bytes of a frame header: body length and body crc32, both big-endian u32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Bytes a frame body grows by per read (a body is never allocated whole up front).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Failed logins a connection may make before it is closed.
pub const MAX_AUTH_FAILURES: u32 = 10;
/// The wait before answering the first failed login; it doubles with each further failure.
pub const AUTH_FAILURE_DELAY_MS: u64 = 100;
/// The longest wait before answering a failed login.
pub const MAX_AUTH_FAILURE_DELAY_MS: u64 = 5_000;
/// The wait before answering the `failures`-th failed authentication in a row (1-based):
/// [`AUTH_FAILURE_DELAY_MS`], doubling, at most [`MAX_AUTH_FAILURE_DELAY_MS`].
pub fn auth_failure_delay(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    Duration::from_millis(AUTH_FAILURE_DELAY_MS.saturating_mul(1 << shift).min(MAX_AUTH_FAILURE_DELAY_MS))
}

/// Largest frame body read from a connection that has not logged in (a login fits easily):
/// strangers cannot take a large share of the node-wide byte budget.
pub const MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 16 << 10;
/// A connection must log in within this long of opening, in milliseconds.
pub const LOGIN_TIMEOUT_MS: u64 = 30_000;

/// Longest user name or password accepted in a login, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 1_024;

/// Serves one request from a proven caller (a node's request handler).
pub type Handler = Arc<dyn Fn(Caller, Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// A byte stream both ways (TCP, or TLS over TCP).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// A boxed [`AsyncStream`].
pub type BoxStream = Box<dyn AsyncStream>;

/// What [`Connect::connect`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send>>;

/// Makes the stream of a new connection to node `to` at `addr`.
pub trait Connect: Send + Sync + 'static {
    /// A connected stream, ready for frames.
    fn connect(&self, addr: String, to: NodeId) -> ConnectFuture;
}

/// Plain TCP (an insecure cluster).
#[derive(Debug, Clone)]
pub struct PlainConnect {
    /// Time allowed to connect.
    pub timeout: Duration,
}

impl Connect for PlainConnect {
    fn connect(&self, addr: String, _to: NodeId) -> ConnectFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
                Ok(s) => s?,
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
            };
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// A user's name and password, sent as the first request of every new connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Login {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).field("password", &"<hidden>").finish()
    }
}

/// Settings of native-protocol connections, both sides. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct NetConfig {
    /// Largest frame body sent or accepted, in bytes (holds the largest value or scan page).
    pub max_frame_bytes: usize,
    /// Time allowed to establish a connection (TCP and TLS), in milliseconds.
    pub connect_timeout_ms: u64,
    /// Requests outstanding on one connection.
    pub max_inflight_per_connection: usize,
    /// Frames queued for one connection's writer.
    pub max_queued_frames: usize,
    /// Connections a node serves at once.
    pub max_connections: usize,
    /// A served connection that sends nothing for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Request bytes a node holds at once over all its connections (read, being served or
    /// answered); a connection waits for room before reading a frame's body.
    pub max_inflight_bytes: usize,
    /// A frame's body must arrive within this long of its header, in milliseconds (a sender
    /// trickling bytes is cut off rather than holding its share of the budget).
    pub frame_timeout_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_frame_bytes: 16 << 20,
            connect_timeout_ms: 1_000,
            max_inflight_per_connection: 1_024,
            max_queued_frames: 1_024,
            max_connections: 4_096,
            idle_timeout_ms: 600_000,
            max_inflight_bytes: 256 << 20,
            frame_timeout_ms: 30_000,
        }
    }
}

impl NetConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 64 << 10 || self.max_frame_bytes > u32::MAX as usize {
            return Err(format!("max-frame-bytes must be within 64KiB..4GiB, not {}", self.max_frame_bytes));
        }
        if self.max_inflight_bytes < self.max_frame_bytes || self.max_inflight_bytes > u32::MAX as usize {
            return Err(format!(
                "max-inflight-bytes ({}) must hold one max-frame-bytes frame ({}) and be under 4GiB",
                self.max_inflight_bytes, self.max_frame_bytes
            ));
        }
        for (name, v) in [
            ("connect-timeout-ms", self.connect_timeout_ms),
            ("max-inflight-per-connection", self.max_inflight_per_connection as u64),
            ("max-queued-frames", self.max_queued_frames as u64),
            ("max-connections", self.max_connections as u64),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("frame-timeout-ms", self.frame_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced body is longer than `max-frame-bytes`.
    #[error("frame of {len_bytes} bytes > max-frame-bytes {max_frame_bytes}")]
    Oversize {
        /// Announced length.
        len_bytes: usize,
        /// The limit.
        max_frame_bytes: usize,
    },
    /// The body does not match its checksum.
    #[error("frame crc mismatch: header {expected:#010x}, body {actual:#010x}")]
    BadCrc {
        /// From the header.
        expected: u32,
        /// Of the body.
        actual: u32,
    },
    /// The body is not a message of the expected kind.
    #[error("malformed frame body: {0}")]
    Malformed(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends the frame of message `msg` answering or asking as `id` to `out`.
pub fn encode_frame<T: Serialize>(id: u64, msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let body = rmp_serde::to_vec_named(&(id, msg)).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .map_err(|_| FrameError::Oversize { len_bytes: body.len(), max_frame_bytes: u32::MAX as usize })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Splits a complete frame off the front of `buf`: its body and the bytes it used; `None`
/// while the frame is incomplete. Checks the length before the body is needed.
pub fn split_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else { return Ok(None) };
    let (len, expected) = parse_header(header, max_frame_bytes)?;
    let Some(body) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else { return Ok(None) };
    check_crc(body, expected)?;
    Ok(Some((body, FRAME_HEADER_BYTES + len)))
}

/// The body length and crc of a frame header, the length checked against the limit.
fn parse_header(header: &[u8], max_frame_bytes: usize) -> Result<(usize, u32), FrameError> {
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::Oversize { len_bytes: len, max_frame_bytes });
    }
    Ok((len, word(4)))
}

fn check_crc(body: &[u8], expected: u32) -> Result<(), FrameError> {
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(())
}

/// Decodes a frame body: the id and the message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, T), FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads the header of the next frame; `None` at a clean end of stream.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<(usize, u32)>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    parse_header(&header, max_frame_bytes).map(Some)
}

/// Reads a body of `len` bytes as they arrive, growing the buffer a chunk at a time, and
/// checks it against `crc`.
async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize, crc: u32) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK_BYTES);
        body.reserve(want);
        let n = (&mut *r).take(want as u64).read_buf(&mut body).await?;
        if n == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    check_crc(&body, crc)?;
    Ok(body)
}

/// Reads one frame body; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_frame_bytes: usize) -> Result<Option<Vec<u8>>, FrameError> {
    match read_header(r, max_frame_bytes).await? {
        Some((len, crc)) => read_body(r, len, crc).await.map(Some),
        None => Ok(None),
    }
}

/// Writes queued frames, flushing when the queue runs dry. Ends when the queue closes or a
/// write fails.
async fn write_frames<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    let mut w = BufWriter::new(w);
    while let Some(frame) = rx.recv().await {
        w.write_all(&frame).await?;
        while let Ok(more) = rx.try_recv() {
            w.write_all(&more).await?;
        }
        w.flush().await?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

/// One outgoing connection: requests go out through its writer, answers come back to the
/// waiting callers by id.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    room: Semaphore,
}

/// A call on a connection failed.
enum CallError {
    /// The request never left: certainly not carried out.
    NotSent,
    /// The connection closed after the request was queued.
    Lost,
}

impl Conn {
    /// Opens a connection through `connect`; with a `login`, the connection is usable only
    /// once the node accepted it.
    async fn open(
        addr: &str,
        to: NodeId,
        cfg: &NetConfig,
        connect: &dyn Connect,
        login: Option<&Login>,
    ) -> Result<Arc<Conn>, OpenError> {
        let stream = connect.connect(addr.to_string(), to).await.map_err(OpenError::Io)?;
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(cfg.max_queued_frames);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            room: Semaphore::new(cfg.max_inflight_per_connection),
        });
        let reader = Arc::clone(&conn);
        let max_frame_bytes = cfg.max_frame_bytes;
        let peer = addr.to_string();
        tokio::spawn(async move {
            let mut r = BufReader::new(r);
            let why = loop {
                let body = match read_frame(&mut r, max_frame_bytes).await {
                    Ok(Some(body)) => body,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                };
                match decode_body::<Response>(&body) {
                    Ok((id, response)) => {
                        if let Some(waiter) = reader.lock().remove(&id) {
                            let _ = waiter.send(response);
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            if let Some(e) = why {
                tracing::debug!(peer, error = %e, "native connection closed");
            }
            reader.close();
        });
        let writer = Arc::clone(&conn);
        tokio::spawn(async move {
            let _ = write_frames(w, rx).await;
            writer.close();
        });
        if let Some(login) = login {
            let request = Request::Auth { user: login.user.clone(), password: login.password.clone() };
            match conn.call(&request).await {
                Ok(Response::Authenticated { .. }) => {}
                Ok(Response::Error(e)) => {
                    conn.close();
                    return Err(OpenError::Refused(e));
                }
                Ok(other) => {
                    conn.close();
                    return Err(OpenError::Refused(ProtoError::Internal(format!("login answered {other:?}"))));
                }
                Err(_) => return Err(OpenError::Io(std::io::ErrorKind::ConnectionAborted.into())),
            }
        }
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the connection closed and fails every waiting call (their senders drop).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock().clear();
        self.room.close();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn call(&self, request: &Request) -> Result<Response, CallError> {
        let Ok(_room) = self.room.acquire().await else { return Err(CallError::NotSent) };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        if encode_frame(id, request, &mut frame).is_err() {
            return Err(CallError::NotSent);
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        // `close` sets the flag before clearing: a call registered after the clear sees it.
        if self.is_closed() {
            self.lock().remove(&id);
            return Err(CallError::NotSent);
        }
        if self.tx.send(frame).await.is_err() {
            self.lock().remove(&id);
            return Err(CallError::NotSent);
        }
        rx.await.map_err(|_| CallError::Lost)
    }
}

/// Why a connection could not be opened.
enum OpenError {
    /// No stream (refused, timed out, TLS failed).
    Io(std::io::Error),
    /// The node refused the login.
    Refused(ProtoError),
}

/// [`Rpc`] over TCP: one multiplexed connection per address, opened on first use and
/// reopened after a failure. Node ids are resolved through an address book that
/// [`Rpc::learn`] fills from the cluster's node list.
pub struct TcpRpc {
    cfg: NetConfig,
    connect: Arc<dyn Connect>,
    login: Option<Login>,
    book: RwLock<HashMap<NodeId, String>>,
    /// By address and the node meant there (0: whoever answers): a connection whose dialler
    /// proved node X is never used to reach node Y.
    conns: Mutex<HashMap<(String, NodeId), Arc<Conn>>>,
    /// Which address of a [`NodeMeta`] [`Rpc::learn`] records.
    learns: Learns,
}

/// Which address of a node a [`TcpRpc`] dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learns {
    /// The native (client) address: applications.
    Client,
    /// The peer address (Raft and the control plane): nodes.
    Peer,
}

impl TcpRpc {
    /// A plain-TCP transport with an empty address book (an insecure cluster).
    pub fn new(cfg: NetConfig) -> Self {
        let connect = Arc::new(PlainConnect { timeout: Duration::from_millis(cfg.connect_timeout_ms) });
        Self::with_connector(cfg, connect, None, Learns::Client)
    }

    /// A transport whose connections `connect` makes, each logging in with `login` first,
    /// dialling the addresses of kind `learns`.
    pub fn with_connector(cfg: NetConfig, connect: Arc<dyn Connect>, login: Option<Login>, learns: Learns) -> Self {
        TcpRpc { cfg, connect, login, book: RwLock::new(HashMap::new()), conns: Mutex::new(HashMap::new()), learns }
    }

    /// Records where node `id` takes requests.
    pub fn set_addr(&self, id: NodeId, addr: String) {
        self.book.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, addr);
    }

    /// Where node `id` takes requests.
    pub fn addr(&self, id: NodeId) -> Option<String> {
        self.book.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    /// Closes every connection (the next calls open new ones, with the connector's current
    /// settings).
    pub fn reset(&self) {
        for (_, c) in self.lock_conns().drain() {
            c.close();
        }
    }

    async fn conn(&self, addr: &str, to: NodeId) -> Result<Arc<Conn>, OpenError> {
        let key = (addr.to_string(), to);
        let existing = self.lock_conns().get(&key).cloned();
        if let Some(c) = existing.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let conn = Conn::open(addr, to, &self.cfg, self.connect.as_ref(), self.login.as_ref()).await?;
        let mut conns = self.lock_conns();
        conns.retain(|_, c| !c.is_closed());
        Ok(Arc::clone(conns.entry(key).or_insert(conn)))
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<(String, NodeId), Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `request` to whoever listens at `addr` (`to` names it in errors). A refused
    /// login is answered as the node's error.
    pub async fn call_addr(&self, addr: &str, to: NodeId, request: Request) -> Result<Response, RpcError> {
        let conn = match self.conn(addr, to).await {
            Ok(c) => c,
            Err(OpenError::Refused(e)) => return Ok(Response::Error(e)),
            Err(OpenError::Io(e)) => {
                tracing::debug!(addr, error = %e, "cannot connect");
                return Err(RpcError::Unreachable(to));
            }
        };
        match conn.call(&request).await {
            Ok(r) => Ok(r),
            Err(CallError::NotSent) => Err(RpcError::Unreachable(to)),
            Err(CallError::Lost) => Err(RpcError::Lost(to)),
        }
    }

    /// Asks the node at `addr` who it is, and records its address under its id. The answer
    /// is checked by asking again as that node (a connector that proves identities, the
    /// node's peer dialler, then checks the certificate): a node cannot claim another's id.
    pub async fn hello(&self, addr: &str) -> Result<NodeMeta, String> {
        let limit = Duration::from_millis(self.cfg.connect_timeout_ms.saturating_mul(2));
        let answer = tokio::time::timeout(limit, self.call_addr(addr, 0, Request::Hello)).await;
        let claimed = match answer {
            Ok(Ok(Response::Hello { node })) if node.id != 0 => node.id,
            Ok(Ok(Response::Hello { .. })) => return Err(format!("{addr}: answered as node 0")),
            other => return hello_failed(addr, other),
        };
        let answer = tokio::time::timeout(limit, self.call_addr(addr, claimed, Request::Hello)).await;
        match answer {
            Ok(Ok(Response::Hello { node })) if node.id == claimed => {
                self.set_addr(node.id, addr.to_string());
                Ok(node)
            }
            Ok(Ok(Response::Hello { node })) => {
                Err(format!("{addr}: answered as node {claimed}, then as node {}", node.id))
            }
            other => hello_failed(addr, other),
        }
    }
}

/// The error of a failed hello.
fn hello_failed(
    addr: &str,
    answer: Result<Result<Response, RpcError>, tokio::time::error::Elapsed>,
) -> Result<NodeMeta, String> {
    match answer {
        Ok(Ok(Response::Error(e))) => Err(format!("{addr}: {e}")),
        Ok(Ok(other)) => Err(format!("{addr}: unexpected answer {other:?}")),
        Ok(Err(_)) => Err(format!("{addr}: unreachable")),
        Err(_) => Err(format!("{addr}: no answer in time")),
    }
}

impl Rpc for Arc<TcpRpc> {
    fn call(&self, to: NodeId, request: Request) -> RpcFuture {
        let this = Arc::clone(self);
        Box::pin(async move {
            let Some(addr) = this.addr(to) else { return Err(RpcError::Unreachable(to)) };
            this.call_addr(&addr, to, request).await
        })
    }

    fn learn(&self, nodes: &[NodeMeta]) {
        for n in nodes {
            let addr = match self.learns {
                Learns::Client => &n.client_addr,
                Learns::Peer => &n.raft_addr,
            };
            if !addr.is_empty() {
                self.set_addr(n.id, addr.clone());
            }
        }
    }
}

/// How a native listener learns who its callers are.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller a new connection acts as before any login: from its TLS client
    /// certificate (the leaf, DER) when it presented one, or the anonymous caller of an
    /// insecure node; `None`: it must log in.
    fn on_connect(&self, client_cert: Option<&[u8]>) -> Option<Caller>;

    /// Checks a login from `peer`; may take a while (a password hash), so it is a future.
    fn login(
        &self,
        peer: SocketAddr,
        user: String,
        password: String,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, ProtoError>> + Send>>;
}

/// Connections that take no logins: every caller is `caller` (an insecure node: no TLS, no
/// users), or it is proven otherwise (`None`: the peer port's handshake). A login is refused
/// with `refusal`.
pub struct NoLogins {
    /// Who every connection is.
    pub caller: Option<Caller>,
    /// Why a login is refused.
    pub refusal: &'static str,
}

impl NoLogins {
    /// An insecure node: everyone is `caller`.
    pub fn anonymous(caller: Caller) -> Self {
        NoLogins { caller: Some(caller), refusal: "this node is insecure and has no users" }
    }

    /// The peer port: callers are proven by the handshake.
    pub fn peer() -> Self {
        NoLogins { caller: None, refusal: "logins are not accepted on this port" }
    }
}

impl Authenticator for NoLogins {
    fn on_connect(&self, _client_cert: Option<&[u8]>) -> Option<Caller> {
        self.caller.clone()
    }

    fn login(
        &self,
        _peer: SocketAddr,
        _user: String,
        _password: String,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, ProtoError>> + Send>> {
        let refusal = self.refusal;
        Box::pin(async move { Err(ProtoError::Unauthenticated(refusal.into())) })
    }
}

/// A node's native listener; dropping it does not stop it, [`NativeServer::stop`] does.
pub struct NativeServer {
    local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl NativeServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections (open connections go on until the process ends).
    pub fn stop(&self) {
        self.accept.abort();
    }
}

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct ServeShared {
    handler: Handler,
    cfg: Arc<NetConfig>,
    /// The node-wide request byte budget (`max-inflight-bytes`).
    budget: Arc<Semaphore>,
    auth: Arc<dyn Authenticator>,
}

impl ServeShared {
    /// Connections served with `handler` under `cfg`, callers proven by `auth`.
    pub fn new(handler: Handler, cfg: NetConfig, auth: Arc<dyn Authenticator>) -> Self {
        let budget = Arc::new(Semaphore::new(cfg.max_inflight_bytes));
        ServeShared { handler, cfg: Arc::new(cfg), budget, auth }
    }
}

/// Serves the native protocol on `listener` with `handler`; with `tls`, every connection
/// first completes a TLS handshake (within `connect-timeout-ms`).
pub fn serve(
    listener: TcpListener,
    shared: ServeShared,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<NativeServer> {
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let accept = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "native listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, max = shared.cfg.max_connections, "native listener: too many connections; refused");
                continue;
            };
            let (shared, tls) = (shared.clone(), tls.clone());
            tokio::spawn(async move {
                if let Err(e) = accept_connection(stream, peer, shared, tls).await {
                    tracing::info!(%peer, error = %e, "native connection closed");
                }
                drop(slot);
            });
        }
    });
    Ok(NativeServer { local_addr, accept })
}

async fn accept_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: ServeShared,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let caller = shared.auth.on_connect(None);
        return serve_stream(stream, peer, shared, caller).await;
    };
    let handshake = tokio::time::timeout(Duration::from_millis(shared.cfg.connect_timeout_ms), tls.accept(stream));
    let stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "native TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            tracing::info!(%peer, "native TLS handshake timed out");
            return Ok(());
        }
    };
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
    let caller = shared.auth.on_connect(leaf.as_deref());
    serve_stream(stream, peer, shared, caller).await
}

/// Serves one connection's stream, its caller proven as `caller` (`None`: it must log in).
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    shared: ServeShared,
    mut caller: Option<Caller>,
) -> Result<(), FrameError> {
    let cfg = Arc::clone(&shared.cfg);
    let (r, w) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(cfg.max_queued_frames);
    let writer = tokio::spawn(write_frames(w, rx));
    let room = Arc::new(Semaphore::new(cfg.max_inflight_per_connection));
    let mut r = BufReader::new(r);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let login_by = tokio::time::Instant::now() + Duration::from_millis(LOGIN_TIMEOUT_MS);
    let mut failures = 0u32;
    let result = loop {
        // Until it logs in: small frames only, and a deadline.
        let (wait, max_frame_bytes) = match caller {
            Some(_) => (idle, cfg.max_frame_bytes),
            None => (
                login_by.saturating_duration_since(tokio::time::Instant::now()),
                cfg.max_frame_bytes.min(MAX_UNAUTHENTICATED_FRAME_BYTES),
            ),
        };
        let (body, grant) = match read_granted(&mut r, &cfg, max_frame_bytes, &shared.budget, wait).await {
            Ok(Some(x)) => x,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let (id, request) = match decode_body::<Request>(&body) {
            Ok(x) => x,
            Err(e) => match decode_body::<serde::de::IgnoredAny>(&body) {
                // Framed well, but not a request we know: answer, and go on.
                Ok((id, _)) => {
                    let answer = Response::Error(ProtoError::Invalid(format!("undecodable request: {e}")));
                    if send_answer(&tx, id, &answer).await.is_err() {
                        break Ok(());
                    }
                    continue;
                }
                Err(e) => break Err(e),
            },
        };
        drop(body);
        if let Request::Auth { user, password } = request {
            drop(grant);
            let answer = login(&shared, peer, &mut caller, &mut failures, user, password).await;
            if send_answer(&tx, id, &answer).await.is_err() || failures >= MAX_AUTH_FAILURES {
                if failures >= MAX_AUTH_FAILURES {
                    tracing::warn!(%peer, failures, "native connection closed after repeated failed logins");
                }
                break Ok(());
            }
            continue;
        }
        let Some(who) = caller.clone() else {
            drop(grant);
            let answer = Response::Error(ProtoError::Unauthenticated(
                "log in first (Auth with a user and password, or a client certificate)".into(),
            ));
            if send_answer(&tx, id, &answer).await.is_err() {
                break Ok(());
            }
            continue;
        };
        let Ok(permit) = Arc::clone(&room).acquire_owned().await else { break Ok(()) };
        let (handler, tx) = (Arc::clone(&shared.handler), tx.clone());
        tokio::spawn(async move {
            let answer = handler(who, request).await;
            let _ = send_answer(&tx, id, &answer).await;
            drop((permit, grant));
        });
    };
    drop(tx);
    // Answers still running finish and are written before the writer ends.
    let _ = writer.await;
    result
}

/// Reads one frame after the node-wide budget granted its length; `None` at a clean end or
/// after `idle` without a header. The body must follow within `frame-timeout-ms`.
async fn read_granted<R: AsyncRead + Unpin>(
    r: &mut R,
    cfg: &NetConfig,
    max_frame_bytes: usize,
    budget: &Arc<Semaphore>,
    idle: Duration,
) -> Result<Option<(Vec<u8>, OwnedSemaphorePermit)>, FrameError> {
    let header = match tokio::time::timeout(idle, read_header(r, max_frame_bytes)).await {
        Ok(h) => h?,
        Err(_) => return Ok(None),
    };
    let Some((len, crc)) = header else { return Ok(None) };
    // `len` fits: validation keeps max-frame-bytes within the budget and below 4 GiB.
    let grant = Arc::clone(budget)
        .acquire_many_owned(len.max(1) as u32)
        .await
        .map_err(|_| FrameError::Io(std::io::ErrorKind::BrokenPipe.into()))?;
    let frame_timeout = Duration::from_millis(cfg.frame_timeout_ms);
    let body = match tokio::time::timeout(frame_timeout, read_body(r, len, crc)).await {
        Ok(b) => b?,
        Err(_) => {
            return Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("a frame body of {len} bytes did not arrive within {frame_timeout:?}"),
            )))
        }
    };
    Ok(Some((body, grant)))
}

/// Queues the frame of `answer` to request `id` (an answer that cannot be encoded becomes an
/// internal error).
async fn send_answer(tx: &mpsc::Sender<Vec<u8>>, id: u64, answer: &Response) -> Result<(), ()> {
    let mut frame = Vec::new();
    if let Err(e) = encode_frame(id, answer, &mut frame) {
        let answer = Response::Error(ProtoError::Internal(format!("answer not encodable: {e}")));
        frame.clear();
        encode_frame(id, &answer, &mut frame).map_err(|_| ())?;
    }
    tx.send(frame).await.map_err(|_| ())
}

/// Handles a login: the answer, the connection's new caller on success; a failure waits
/// before it is answered, longer each time, and is logged.
async fn login(
    shared: &ServeShared,
    peer: SocketAddr,
    caller: &mut Option<Caller>,
    failures: &mut u32,
    user: String,
    password: String,
) -> Response {
    if user.len() > MAX_CREDENTIAL_BYTES || password.len() > MAX_CREDENTIAL_BYTES {
        *failures += 1;
        return Response::Error(ProtoError::Unauthenticated(format!(
            "user name and password are at most {MAX_CREDENTIAL_BYTES} bytes"
        )));
    }
    let name = user.clone();
    match shared.auth.login(peer, user, password).await {
        Ok(who) => {
            let role = match &who {
                Caller::Client { role, .. } => *role,
                _ => crate::proto::Role::Node,
            };
            *caller = Some(who);
            Response::Authenticated { role }
        }
        Err(e) => {
            *failures += 1;
            tracing::warn!(%peer, user = %name, failures = *failures, error = %e, "native login failed");
            tokio::time::sleep(auth_failure_delay(*failures)).await;
            Response::Error(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Route;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let request = Request::Put {
            route: Route { shard: 3, epoch: presage_shardmgr::Epoch { version: 2, conf_ver: 1 } },
            key: b"k".to_vec(),
            value: vec![0xff; 300],
        };
        let mut buf = Vec::new();
        encode_frame(7, &request, &mut buf).expect("encodes");
        let whole = buf.len();
        for cut in 0..whole {
            assert!(split_frame(&buf[..cut], 1 << 20).expect("no error").is_none(), "cut {cut}");
        }
        let (body, used) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
        assert_eq!(used, whole);
        assert_eq!(decode_body::<Request>(body).expect("decodes"), (7, request));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut buf = Vec::new();
        encode_frame(1, &Request::Hello, &mut buf).expect("encodes");
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(split_frame(&buf, 1 << 20), Err(FrameError::BadCrc { .. })));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(split_frame(&huge, 1 << 20), Err(FrameError::Oversize { .. })));
        assert!(matches!(decode_body::<Request>(&[0xc1]), Err(FrameError::Malformed(_))));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::proto::{PfaQuery, ProtoError, Response};

    /// Every kind of answer and question survives the wire, errors with a message included.
    #[test]
    fn errors_and_pfa_queries_round_trip() {
        let answers = [
            Response::Error(ProtoError::Invalid("node 999 is not in the cluster".into())),
            Response::Error(ProtoError::Retry("later".into())),
            Response::Error(ProtoError::Internal("x".into())),
            Response::Pfa { json: "{}".into() },
        ];
        for answer in answers {
            let mut buf = Vec::new();
            encode_frame(3, &answer, &mut buf).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
            let (body, _) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
            assert_eq!(decode_body::<Response>(body).expect("decodes"), (3, answer));
        }
        let mut counters = std::collections::BTreeMap::new();
        counters.insert("smart_5_raw".to_string(), 1.0);
        for query in [
            PfaQuery::Risk,
            PfaQuery::Warnings { after_seq: 1, limit: 2 },
            PfaQuery::PushCounters { node: 999, counters },
        ] {
            let request = Request::Pfa { query };
            let mut buf = Vec::new();
            encode_frame(4, &request, &mut buf).unwrap_or_else(|e| panic!("{request:?}: {e}"));
            let (body, _) = split_frame(&buf, 1 << 20).expect("ok").expect("complete");
            assert_eq!(decode_body::<Request>(body).expect("decodes"), (4, request));
        }
    }
}
