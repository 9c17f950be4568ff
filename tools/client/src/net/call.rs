//! The calling side: [`TcpRpc`], one multiplexed connection per node, logged in on open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use presage_shardmgr::{NodeId, NodeMeta};
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::frame::{decode_body, encode_frame, read_frame, write_frames};
use super::{Connect, Login, NetConfig, PlainConnect};
use crate::proto::{ProtoError, Request, Response};
use crate::rpc::{Rpc, RpcError, RpcFuture};

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
