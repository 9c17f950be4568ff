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
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::proto::{ProtoError, Request, Response};
use crate::rpc::{Rpc, RpcError, RpcFuture};

/// Bytes of a frame header: body length and body crc32, both big-endian u32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Serves one request (a node's request handler).
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Settings of native-protocol connections, both sides. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct NetConfig {
    /// Largest frame body sent or accepted, in bytes (holds the largest value or scan page).
    pub max_frame_bytes: usize,
    /// Time allowed to establish a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Requests outstanding on one connection.
    pub max_inflight_per_connection: usize,
    /// Frames queued for one connection's writer.
    pub max_queued_frames: usize,
    /// Connections a node serves at once.
    pub max_connections: usize,
    /// A served connection that sends nothing for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
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
        }
    }
}

impl NetConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 64 << 10 || self.max_frame_bytes > u32::MAX as usize {
            return Err(format!("max-frame-bytes must be within 64KiB..4GiB, not {}", self.max_frame_bytes));
        }
        for (name, v) in [
            ("connect-timeout-ms", self.connect_timeout_ms),
            ("max-inflight-per-connection", self.max_inflight_per_connection as u64),
            ("max-queued-frames", self.max_queued_frames as u64),
            ("max-connections", self.max_connections as u64),
            ("idle-timeout-ms", self.idle_timeout_ms),
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
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let expected = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > max_frame_bytes {
        return Err(FrameError::Oversize { len_bytes: len, max_frame_bytes });
    }
    let Some(body) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else { return Ok(None) };
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(Some((body, FRAME_HEADER_BYTES + len)))
}

/// Decodes a frame body: the id and the message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(u64, T), FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one frame body; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_frame_bytes: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::Oversize { len_bytes: len, max_frame_bytes });
    }
    let mut frame = header.to_vec();
    frame.resize(FRAME_HEADER_BYTES + len, 0);
    r.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await?;
    match split_frame(&frame, max_frame_bytes)? {
        Some((body, _)) => Ok(Some(body.to_vec())),
        None => Err(FrameError::Malformed("short frame".into())),
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
    async fn open(addr: &str, cfg: &NetConfig) -> std::io::Result<Arc<Conn>> {
        let connect = TcpStream::connect(addr);
        let stream = match tokio::time::timeout(Duration::from_millis(cfg.connect_timeout_ms), connect).await {
            Ok(s) => s?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        };
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
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

/// [`Rpc`] over TCP: one multiplexed connection per address, opened on first use and
/// reopened after a failure. Node ids are resolved through an address book that
/// [`Rpc::learn`] fills from the cluster's node list.
pub struct TcpRpc {
    cfg: NetConfig,
    book: RwLock<HashMap<NodeId, String>>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

impl TcpRpc {
    /// A transport with an empty address book.
    pub fn new(cfg: NetConfig) -> Self {
        TcpRpc { cfg, book: RwLock::new(HashMap::new()), conns: Mutex::new(HashMap::new()) }
    }

    /// Records where node `id` takes requests.
    pub fn set_addr(&self, id: NodeId, addr: String) {
        self.book.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, addr);
    }

    /// Where node `id` takes requests.
    pub fn addr(&self, id: NodeId) -> Option<String> {
        self.book.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    async fn conn(&self, addr: &str) -> std::io::Result<Arc<Conn>> {
        let existing = self.lock_conns().get(addr).cloned();
        if let Some(c) = existing.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let conn = Conn::open(addr, &self.cfg).await?;
        let mut conns = self.lock_conns();
        conns.retain(|_, c| !c.is_closed());
        Ok(Arc::clone(conns.entry(addr.to_string()).or_insert(conn)))
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `request` to whoever listens at `addr` (`to` names it in errors).
    pub async fn call_addr(&self, addr: &str, to: NodeId, request: Request) -> Result<Response, RpcError> {
        let conn = self.conn(addr).await.map_err(|_| RpcError::Unreachable(to))?;
        match conn.call(&request).await {
            Ok(r) => Ok(r),
            Err(CallError::NotSent) => Err(RpcError::Unreachable(to)),
            Err(CallError::Lost) => Err(RpcError::Lost(to)),
        }
    }

    /// Asks the node at `addr` who it is, and records its address under its id.
    pub async fn hello(&self, addr: &str) -> Result<NodeMeta, String> {
        let answer = tokio::time::timeout(
            Duration::from_millis(self.cfg.connect_timeout_ms.saturating_mul(2)),
            self.call_addr(addr, 0, Request::Hello),
        )
        .await;
        match answer {
            Ok(Ok(Response::Hello { node })) => {
                self.set_addr(node.id, addr.to_string());
                Ok(node)
            }
            Ok(Ok(other)) => Err(format!("{addr}: unexpected answer {other:?}")),
            Ok(Err(_)) => Err(format!("{addr}: unreachable")),
            Err(_) => Err(format!("{addr}: no answer in time")),
        }
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
        for n in nodes.iter().filter(|n| !n.client_addr.is_empty()) {
            self.set_addr(n.id, n.client_addr.clone());
        }
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

/// Serves the native protocol on `listener` with `handler`.
pub fn serve(listener: TcpListener, handler: Handler, cfg: NetConfig) -> std::io::Result<NativeServer> {
    let local_addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let cfg = Arc::new(cfg);
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
                tracing::warn!(%peer, max = cfg.max_connections, "native listener: too many connections; refused");
                continue;
            };
            let (handler, cfg) = (Arc::clone(&handler), Arc::clone(&cfg));
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, handler, &cfg).await {
                    tracing::info!(%peer, error = %e, "native connection closed");
                }
                drop(slot);
            });
        }
    });
    Ok(NativeServer { local_addr, accept })
}

async fn serve_connection(stream: TcpStream, handler: Handler, cfg: &NetConfig) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(cfg.max_queued_frames);
    let writer = tokio::spawn(write_frames(w, rx));
    let room = Arc::new(Semaphore::new(cfg.max_inflight_per_connection));
    let mut r = BufReader::new(r);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let result = loop {
        let body = match tokio::time::timeout(idle, read_frame(&mut r, cfg.max_frame_bytes)).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) | Err(_) => break Ok(()),
            Ok(Err(e)) => break Err(e),
        };
        let (id, request) = match decode_body::<Request>(&body) {
            Ok(x) => x,
            Err(e) => match decode_body::<serde::de::IgnoredAny>(&body) {
                // Framed well, but not a request we know: answer, and go on.
                Ok((id, _)) => {
                    let answer = Response::Error(ProtoError::Invalid(format!("undecodable request: {e}")));
                    let mut frame = Vec::new();
                    if encode_frame(id, &answer, &mut frame).is_ok() && tx.send(frame).await.is_err() {
                        break Ok(());
                    }
                    continue;
                }
                Err(e) => break Err(e),
            },
        };
        let Ok(permit) = Arc::clone(&room).acquire_owned().await else { break Ok(()) };
        let (handler, tx) = (Arc::clone(&handler), tx.clone());
        tokio::spawn(async move {
            let answer = handler(request).await;
            let mut frame = Vec::new();
            if let Err(e) = encode_frame(id, &answer, &mut frame) {
                let answer = Response::Error(ProtoError::Internal(format!("answer not encodable: {e}")));
                frame.clear();
                if encode_frame(id, &answer, &mut frame).is_err() {
                    return;
                }
            }
            let _ = tx.send(frame).await;
            drop(permit);
        });
    };
    drop(tx);
    // Answers still running finish and are written before the writer ends.
    let _ = writer.await;
    result
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
