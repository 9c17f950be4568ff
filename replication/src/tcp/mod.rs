//! The TCP transport: Raft envelopes between nodes over tokio TCP streams.
//!
//! **Wire format.** A connection carries frames one way (sender to receiver). A frame is
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | body_len: u32  | crc32(body):u32| body: prost `RaftBatch`    |
//! +----------------+----------------+---------------------------+
//!   big-endian       big-endian       body_len bytes
//! ```
//!
//! A receiver checks the length against `max_frame_bytes` as soon as the 8 header bytes
//! arrive (before buffering the body), then the crc, then decodes. Any failure closes that
//! connection - never the node - and counts a rejected frame; the sender reconnects and Raft
//! resends what was lost.
//!
//! **Who sends.** [`TcpNode::start`] listens itself and trusts nobody's identity (a test
//! cluster, the benchmark). A node process instead runs its own peer listener (TLS, the
//! handshake that proves the sender's node id and cluster) and hands each Raft connection to
//! [`RaftInbound::serve`] with the proven sender: an envelope claiming another sender closes
//! that connection and counts a rejected frame. Outbound connections are made by a
//! [`Dialer`] ([`PlainDialer`]: TCP), so the node's dialler can add TLS and the handshake.
//!
//! **Sending.** [`TcpTransport::send`] never blocks: it puts the envelope on the bounded queue
//! of the target node (dropped and counted when full - Raft tolerates loss). One task per
//! target node drains its queue into batches of at most `max_batch_msgs` envelopes and
//! `max_batch_bytes`, one frame each, and reconnects with exponential backoff when the
//! connection fails; while it is down, queued envelopes are dropped rather than delivered
//! late.
//!
//! - [`fault`]: network faults on the outgoing links (delay, loss, a bandwidth cap), set at
//!   run time, off by default.

pub mod fault;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use presage_engine::Engine;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::runtime::Node;
use crate::store::Store;
use crate::transport::{Deliver, Transport};
use crate::wire::RaftEnvelope;
use fault::NetFaults;

/// Bytes of a frame header: body length and body crc32, both big-endian u32.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The body of one frame: envelopes from one node, delivered in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    /// The envelopes.
    #[prost(message, repeated, tag = "1")]
    pub envelopes: Vec<RaftEnvelope>,
}

/// Settings of the TCP transport. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TcpConfig {
    /// Largest frame body accepted or sent, in bytes. Must hold the largest Raft message
    /// (`max-msg-bytes`) or snapshot chunk with room for its envelope.
    pub max_frame_bytes: usize,
    /// Most envelopes in one frame.
    pub max_batch_msgs: usize,
    /// A frame is closed once its envelopes reach this many bytes.
    pub max_batch_bytes: usize,
    /// Most envelopes queued for one target node.
    pub max_queue_msgs: usize,
    /// Most envelope bytes queued for one target node.
    pub max_queue_bytes: usize,
    /// Most inbound connections served at once.
    pub max_inbound_connections: usize,
    /// Time allowed to establish a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed to write one frame, in milliseconds.
    pub write_timeout_ms: u64,
    /// An inbound connection that sends nothing for this long is closed, in milliseconds
    /// (its sender reconnects when it has traffic again).
    pub idle_timeout_ms: u64,
    /// First reconnect delay, in milliseconds; doubles per failure.
    pub reconnect_backoff_min_ms: u64,
    /// Longest reconnect delay, in milliseconds.
    pub reconnect_backoff_max_ms: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_frame_bytes: 8 * 1024 * 1024,
            max_batch_msgs: 256,
            max_batch_bytes: 1024 * 1024,
            max_queue_msgs: 8192,
            max_queue_bytes: 64 * 1024 * 1024,
            // Peers, not clients: two connections (Raft, control plane) per peer node.
            // Together with max-frame-bytes this bounds inbound buffering (128 x 8 MiB).
            max_inbound_connections: 128,
            connect_timeout_ms: 1000,
            write_timeout_ms: 5000,
            idle_timeout_ms: 60_000,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 2000,
        }
    }
}

impl TcpConfig {
    /// Fails with a message naming the first bad setting. `max_msg_bytes` is the Raft
    /// setting the frames must hold.
    pub fn validate(&self, max_msg_bytes: u64) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.max_frame_bytes > u32::MAX as usize || self.max_frame_bytes < 64 * 1024 {
            return bad(format!("max-frame-bytes ({}) must be between 64 KiB and 4 GiB", self.max_frame_bytes));
        }
        if self.max_queue_bytes < self.max_frame_bytes {
            return bad("max-queue-bytes must hold at least one max-frame-bytes frame".into());
        }
        if (self.max_frame_bytes as u64) < max_msg_bytes.saturating_mul(2) {
            return bad(format!(
                "max-frame-bytes ({}) must be at least twice the raft max-msg-bytes ({max_msg_bytes})",
                self.max_frame_bytes
            ));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > self.max_frame_bytes / 2 {
            return bad("max-batch-bytes must be positive and at most half of max-frame-bytes".into());
        }
        if self.max_batch_msgs == 0 || self.max_queue_msgs == 0 || self.max_inbound_connections == 0 {
            return bad("max-batch-msgs, max-queue-msgs and max-inbound-connections must be positive".into());
        }
        if self.connect_timeout_ms == 0 || self.write_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return bad("connect-timeout-ms, write-timeout-ms and idle-timeout-ms must be positive".into());
        }
        if self.reconnect_backoff_min_ms == 0 || self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms {
            return bad("reconnect-backoff-min-ms must be positive and at most reconnect-backoff-max-ms".into());
        }
        Ok(())
    }
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a body larger than allowed.
    #[error("frame of {len_bytes} bytes exceeds max-frame-bytes ({max_frame_bytes})")]
    Oversize {
        /// Announced body length.
        len_bytes: usize,
        /// The limit.
        max_frame_bytes: usize,
    },
    /// The body does not match its checksum.
    #[error("frame crc32 mismatch: header {expected:#010x}, body {actual:#010x}")]
    BadCrc {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the body received.
        actual: u32,
    },
    /// The body is not a `RaftBatch`.
    #[error("frame body does not decode: {0}")]
    Malformed(String),
}

/// Decodes the first frame of `buf`. `Ok(None)` asks for more bytes; `Ok(Some((batch, n)))`
/// consumed `n` bytes. Total: never panics, whatever the bytes.
pub fn decode_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(RaftBatch, usize)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else { return Ok(None) };
    let len_bytes = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let expected = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len_bytes > max_frame_bytes {
        return Err(FrameError::Oversize { len_bytes, max_frame_bytes });
    }
    let Some(body) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len_bytes) else { return Ok(None) };
    let actual = crc32fast::hash(body);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    let batch = RaftBatch::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((batch, FRAME_HEADER_BYTES + len_bytes)))
}

/// Appends `batch` to `out` as one frame.
pub fn encode_frame(batch: &RaftBatch, out: &mut Vec<u8>) {
    let body_start = out.len() + FRAME_HEADER_BYTES;
    out.resize(body_start, 0);
    batch.encode(out).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
    let len = u32::try_from(out.len() - body_start).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[body_start..]);
    out[body_start - 8..body_start - 4].copy_from_slice(&len.to_be_bytes());
    out[body_start - 4..body_start].copy_from_slice(&crc.to_be_bytes());
}

/// Counters of one node's transport (both directions).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Envelopes written.
    pub envelopes_sent: AtomicU64,
    /// Frames read and accepted.
    pub frames_received: AtomicU64,
    /// Frames rejected (bad length, crc or body); each closed its connection.
    pub frames_rejected: AtomicU64,
    /// Envelopes dropped on the sending side (full queue, no address, connection down).
    pub envelopes_dropped: AtomicU64,
    /// Outbound connections established.
    pub connects: AtomicU64,
    /// Outbound connection attempts that failed.
    pub connect_failures: AtomicU64,
}

impl TcpStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where each node listens. Shared and updatable (nodes join, move).
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    inner: Arc<RwLock<HashMap<u64, SocketAddr>>>,
}

impl AddressBook {
    /// Records the address of `node_id`.
    pub fn set(&self, node_id: u64, addr: SocketAddr) {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node_id, addr);
    }

    /// The address of `node_id`.
    pub fn get(&self, node_id: u64) -> Option<SocketAddr> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&node_id).copied()
    }
}

/// An outbound Raft stream (written only).
pub type RaftStream = Box<dyn AsyncWrite + Send + Unpin>;

/// What [`Dialer::dial`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = std::io::Result<RaftStream>> + Send>>;

/// Makes the outbound Raft connection to node `to` at `addr`, ready for frames.
pub trait Dialer: Send + Sync + 'static {
    /// Connects (within the dialler's own time limit).
    fn dial(&self, to: u64, addr: SocketAddr) -> DialFuture;
}

/// Plain TCP with a connect timeout.
#[derive(Debug, Clone)]
pub struct PlainDialer {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
}

impl Dialer for PlainDialer {
    fn dial(&self, _to: u64, addr: SocketAddr) -> DialFuture {
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as RaftStream)
        })
    }
}

/// The sending side: one queue and connection task per target node.
#[derive(Clone)]
pub struct TcpTransport {
    node_id: u64,
    config: Arc<TcpConfig>,
    book: AddressBook,
    queues: Arc<Mutex<HashMap<u64, LinkQueue>>>,
    stats: Arc<TcpStats>,
    dialer: Arc<dyn Dialer>,
    runtime: tokio::runtime::Handle,
    faults: Arc<NetFaults>,
}

impl TcpTransport {
    /// A transport for `node_id` that finds peers in `book` and dials plain TCP. Call inside
    /// a tokio runtime.
    pub fn new(node_id: u64, config: TcpConfig, book: AddressBook, stats: Arc<TcpStats>) -> Self {
        let dialer = Arc::new(PlainDialer { connect_timeout: Duration::from_millis(config.connect_timeout_ms) });
        Self::with_dialer(node_id, config, book, stats, dialer)
    }

    /// A transport whose connections `dialer` makes.
    pub fn with_dialer(
        node_id: u64,
        config: TcpConfig,
        book: AddressBook,
        stats: Arc<TcpStats>,
        dialer: Arc<dyn Dialer>,
    ) -> Self {
        TcpTransport {
            node_id,
            config: Arc::new(config),
            book,
            queues: Arc::default(),
            stats,
            dialer,
            runtime: tokio::runtime::Handle::current(),
            faults: Arc::default(),
        }
    }

    /// The network faults this transport injects (off until set).
    pub fn net_faults(&self) -> Arc<NetFaults> {
        Arc::clone(&self.faults)
    }

    fn queue(&self, to: u64) -> LinkQueue {
        let mut queues = self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(q) = queues.get(&to).filter(|q| !q.tx.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.max_queue_msgs);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let link = Link {
            from: self.node_id,
            to,
            config: self.config.clone(),
            book: self.book.clone(),
            stats: self.stats.clone(),
            queued_bytes: queued_bytes.clone(),
            dialer: Arc::clone(&self.dialer),
            faults: Arc::clone(&self.faults),
        };
        self.runtime.spawn(link.run(rx));
        let q = LinkQueue { tx, queued_bytes };
        queues.insert(to, q.clone());
        q
    }
}

/// The sending end of one link's queue, and the bytes waiting in it. Each envelope travels
/// with its encoded length, measured once.
#[derive(Clone)]
struct LinkQueue {
    tx: mpsc::Sender<Queued>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Bytes `env_bytes` of envelope add to a `RaftBatch` (field key, length, body).
fn batch_entry_bytes(env_bytes: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(env_bytes as u64) + env_bytes
}

impl Transport for TcpTransport {
    fn send(&self, env: RaftEnvelope) {
        // No address: an unknown or removed node (for instance the sender of a message that
        // got a tombstone reply). No link is started for it.
        if env.to_node == self.node_id || self.book.get(env.to_node).is_none() {
            TcpStats::add(&self.stats.envelopes_dropped, 1);
            return;
        }
        if self.faults.drops() {
            TcpStats::add(&self.stats.envelopes_dropped, 1);
            return;
        }
        let q = self.queue(env.to_node);
        let bytes = env.encoded_len();
        if q.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > self.config.max_queue_bytes {
            q.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            TcpStats::add(&self.stats.envelopes_dropped, 1);
            return;
        }
        if q.tx.try_send((env, bytes, Instant::now())).is_err() {
            q.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            TcpStats::add(&self.stats.envelopes_dropped, 1);
        }
    }
}

/// One direction of traffic to one node.
struct Link {
    from: u64,
    to: u64,
    config: Arc<TcpConfig>,
    book: AddressBook,
    stats: Arc<TcpStats>,
    /// Bytes of envelopes in this link's queue (shared with its [`LinkQueue`]).
    queued_bytes: Arc<AtomicUsize>,
    dialer: Arc<dyn Dialer>,
    faults: Arc<NetFaults>,
}

/// An envelope, its encoded length and when it was queued.
type Queued = (RaftEnvelope, usize, Instant);

impl Link {
    async fn recv(&self, rx: &mut mpsc::Receiver<Queued>) -> Option<Queued> {
        let item = rx.recv().await?;
        self.queued_bytes.fetch_sub(item.1, Ordering::Relaxed);
        Some(item)
    }

    fn try_recv(&self, rx: &mut mpsc::Receiver<Queued>) -> Option<Queued> {
        let item = rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(item.1, Ordering::Relaxed);
        Some(item)
    }

    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let min = Duration::from_millis(self.config.reconnect_backoff_min_ms);
        let max = Duration::from_millis(self.config.reconnect_backoff_max_ms);
        let mut backoff = min;
        // Wait for traffic before connecting; exit when the transport is dropped.
        let Some(mut first) = self.recv(&mut rx).await else { return };
        loop {
            let outcome = match self.connect().await {
                Ok(mut stream) => {
                    TcpStats::add(&self.stats.connects, 1);
                    self.pump(&mut stream, first, &mut rx).await
                }
                Err(e) => {
                    TcpStats::add(&self.stats.connect_failures, 1);
                    Err((false, e))
                }
            };
            let (delivered_some, e) = match outcome {
                Ok(()) => return, // the transport is gone
                Err(x) => x,
            };
            // Back off from the first delay again only after a connection that carried frames,
            // so a peer that accepts and drops connections is not hammered.
            if delivered_some {
                backoff = min;
            }
            tracing::debug!(from = self.from, to = self.to, error = %e, backoff_ms = backoff.as_millis() as u64, "link down");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
            // What queued meanwhile is stale: Raft resends what still matters.
            let mut dropped = 1;
            while self.try_recv(&mut rx).is_some() {
                dropped += 1;
            }
            TcpStats::add(&self.stats.envelopes_dropped, dropped);
            match self.recv(&mut rx).await {
                Some(env) => first = env,
                None => return,
            }
        }
    }

    async fn connect(&self) -> std::io::Result<RaftStream> {
        let addr = self
            .book
            .get(self.to)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address for node"))?;
        self.dialer.dial(self.to, addr).await
    }

    /// Writes batches until the queue closes (`Ok`) or the connection fails (`Err`, with
    /// whether any frame went through first).
    async fn pump(
        &self,
        stream: &mut RaftStream,
        first: Queued,
        rx: &mut mpsc::Receiver<Queued>,
    ) -> std::result::Result<(), (bool, std::io::Error)> {
        let mut delivered_some = false;
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        let mut next = Some(first);
        let mut frame = Vec::new();
        loop {
            let (env, env_bytes, queued_at) = match next.take() {
                Some(item) => item,
                None => match self.recv(rx).await {
                    Some(item) => item,
                    None => return Ok(()),
                },
            };
            // An injected delay: the envelope leaves when due, with those due by then.
            let due = self.faults.due(queued_at);
            if due > Instant::now() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            }
            // The batch's encoded size, kept exactly as envelopes join.
            let mut batch_bytes = batch_entry_bytes(env_bytes);
            let mut batch = RaftBatch { envelopes: vec![env] };
            while batch.envelopes.len() < self.config.max_batch_msgs && batch_bytes < self.config.max_batch_bytes {
                match self.try_recv(rx) {
                    Some((env, bytes, queued_at)) if self.faults.due(queued_at) <= Instant::now() => {
                        batch_bytes += batch_entry_bytes(bytes);
                        batch.envelopes.push(env);
                    }
                    Some(not_due) => {
                        next = Some(not_due);
                        break;
                    }
                    None => break,
                }
            }
            debug_assert_eq!(batch_bytes, batch.encoded_len(), "batch size kept exactly");
            if batch_bytes > self.config.max_frame_bytes {
                // Too large for one frame: send the envelopes one per frame, dropping any that
                // alone exceed the limit (the receiver would refuse it anyway).
                for env in batch.envelopes {
                    let one = RaftBatch { envelopes: vec![env] };
                    let bytes = one.encoded_len();
                    if bytes > self.config.max_frame_bytes {
                        tracing::warn!(
                            from = self.from,
                            to = self.to,
                            bytes,
                            "envelope exceeds max-frame-bytes; dropped"
                        );
                        TcpStats::add(&self.stats.envelopes_dropped, 1);
                        continue;
                    }
                    self.write(stream, &one, &mut frame, timeout).await.map_err(|e| (delivered_some, e))?;
                    delivered_some = true;
                }
                continue;
            }
            self.write(stream, &batch, &mut frame, timeout).await.map_err(|e| (delivered_some, e))?;
            delivered_some = true;
        }
    }

    async fn write(
        &self,
        stream: &mut RaftStream,
        batch: &RaftBatch,
        frame: &mut Vec<u8>,
        timeout: Duration,
    ) -> std::io::Result<()> {
        frame.clear();
        encode_frame(batch, frame);
        let write = async {
            stream.write_all(frame).await?;
            stream.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
        TcpStats::add(&self.stats.frames_sent, 1);
        TcpStats::add(&self.stats.envelopes_sent, batch.envelopes.len() as u64);
        // An injected bandwidth cap: silence in proportion to the frame.
        let pace = self.faults.pace(frame.len());
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        Ok(())
    }
}

/// The receiving side: accepts connections and hands every envelope to `deliver`.
pub struct TcpServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    /// Listens on `addr` and serves until dropped. Call inside a tokio runtime.
    pub async fn bind(addr: SocketAddr, config: TcpConfig, deliver: Deliver, stats: Arc<TcpStats>) -> Result<Self> {
        let listener =
            TcpListener::bind(addr).await.map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr().map_err(|e| Error::Config(format!("listener address: {e}")))?;
        let config = Arc::new(config);
        let slots = Arc::new(Semaphore::new(config.max_inbound_connections));
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many inbound connections; refusing one");
                    continue;
                };
                let (config, deliver, stats) = (config.clone(), deliver.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, None, &config, &deliver, &stats).await {
                        tracing::warn!(%peer, error = %e, "closing connection");
                    }
                    drop(permit);
                });
            }
        });
        Ok(TcpServer { local_addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why an inbound connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("an envelope claims node {claimed} as its sender on node {proven}'s connection")]
    ForgedSender { claimed: u64, proven: u64 },
}

/// Serves one inbound Raft connection; with `sender`, every envelope must claim it.
async fn serve_connection<S: AsyncRead + Unpin>(
    mut stream: S,
    sender: Option<u64>,
    config: &TcpConfig,
    deliver: &Deliver,
    stats: &TcpStats,
) -> std::result::Result<(), ConnectionError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decode_frame(&buf, config.max_frame_bytes) {
                Ok(Some((batch, used))) => {
                    buf.advance(used);
                    if let Some(proven) = sender {
                        if let Some(env) = batch.envelopes.iter().find(|e| e.from_node != proven) {
                            TcpStats::add(&stats.frames_rejected, 1);
                            return Err(ConnectionError::ForgedSender { claimed: env.from_node, proven });
                        }
                    }
                    TcpStats::add(&stats.frames_received, 1);
                    for env in batch.envelopes {
                        deliver(env);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    TcpStats::add(&stats.frames_rejected, 1);
                    return Err(e.into());
                }
            }
        }
        let idle = Duration::from_millis(config.idle_timeout_ms);
        match tokio::time::timeout(idle, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok(()), // closed by the sender
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnectionError::Idle(idle)),
        }
    }
}

/// Where a node's own peer listener hands its authenticated Raft connections.
#[derive(Clone)]
pub struct RaftInbound {
    config: Arc<TcpConfig>,
    deliver: Deliver,
    stats: Arc<TcpStats>,
}

impl RaftInbound {
    /// Serves one Raft connection from node `sender` (proven by the caller: a certificate
    /// and handshake) until it closes; an envelope claiming another sender closes it.
    pub async fn serve<S: AsyncRead + Unpin>(&self, stream: S, sender: u64) -> std::result::Result<(), String> {
        serve_connection(stream, Some(sender), &self.config, &self.deliver, &self.stats)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A node serving Raft over TCP: the store's runtime, its transport and its listener.
pub struct TcpNode {
    /// The store's runtime.
    pub node: Node,
    /// Its own listener, when it has one ([`TcpNode::start`]); dropping it stops accepting.
    pub server: Option<TcpServer>,
    /// Where authenticated inbound connections are served ([`TcpNode::start_behind`]).
    pub inbound: RaftInbound,
    /// Counters of both directions.
    pub stats: Arc<TcpStats>,
    /// Network faults injected on its outgoing links (off until set).
    pub net_faults: Arc<NetFaults>,
}

impl TcpNode {
    /// Starts `store` with a TCP transport that finds peers in `book`, listening on `listen`
    /// (its actual address is recorded in `book`). Call inside a tokio runtime.
    pub async fn start<E: Engine>(
        store: Store<E>,
        raft: &RaftConfig,
        tcp: TcpConfig,
        listen: SocketAddr,
        book: AddressBook,
    ) -> Result<TcpNode> {
        let node_id = store.node_id();
        let dialer = Arc::new(PlainDialer { connect_timeout: Duration::from_millis(tcp.connect_timeout_ms) });
        let mut started = Self::start_behind(store, raft, tcp.clone(), book.clone(), dialer)?;
        let (deliver, stats) = (started.inbound.deliver.clone(), started.stats.clone());
        let server = match TcpServer::bind(listen, tcp, deliver, stats).await {
            Ok(s) => s,
            Err(e) => {
                started.node.kill();
                return Err(e);
            }
        };
        book.set(node_id, server.local_addr());
        started.server = Some(server);
        Ok(started)
    }

    /// Starts `store` with a transport whose connections `dialer` makes and no listener of
    /// its own: the caller's listener hands authenticated connections to
    /// [`TcpNode::inbound`]. Call inside a tokio runtime.
    pub fn start_behind<E: Engine>(
        store: Store<E>,
        raft: &RaftConfig,
        tcp: TcpConfig,
        book: AddressBook,
        dialer: Arc<dyn Dialer>,
    ) -> Result<TcpNode> {
        tcp.validate(raft.max_msg_bytes)?;
        if raft.snapshot_chunk_bytes.saturating_mul(2) > tcp.max_frame_bytes {
            // A chunk that does not compress is a little larger than its raw bytes.
            return Err(Error::Config(format!(
                "max-frame-bytes ({}) must be at least twice snapshot-chunk-bytes ({})",
                tcp.max_frame_bytes, raft.snapshot_chunk_bytes
            )));
        }
        let node_id = store.node_id();
        let stats = Arc::new(TcpStats::default());
        let transport = TcpTransport::with_dialer(node_id, tcp.clone(), book, stats.clone(), dialer);
        let net_faults = transport.net_faults();
        let node = Node::spawn_on_own_thread(store, transport, raft)?;
        let handle = node.handle();
        let deliver: Deliver = Arc::new(move |env| handle.deliver(env));
        let inbound = RaftInbound { config: Arc::new(tcp), deliver, stats: stats.clone() };
        Ok(TcpNode { node, server: None, inbound, stats, net_faults })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(i: u64) -> RaftEnvelope {
        RaftEnvelope { shard_id: i, from_node: 1, to_node: 2, ..RaftEnvelope::default() }
    }

    async fn wait(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(RaftEnvelope, Instant)>,
        ms: u64,
    ) -> Option<(RaftEnvelope, Instant)> {
        tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await.ok().flatten()
    }

    /// Injected network faults act on a real link: a delayed envelope arrives no sooner than
    /// its delay, a lost one never (counted as dropped), and clearing them restores delivery.
    #[tokio::test]
    async fn network_faults_delay_and_drop_envelopes_on_a_link() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let deliver: Deliver = Arc::new(move |env| drop(tx.send((env, Instant::now()))));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = TcpServer::bind(loopback, TcpConfig::default(), deliver, Arc::default()).await.expect("bind");
        let book = AddressBook::default();
        book.set(2, server.local_addr());
        let stats = Arc::new(TcpStats::default());
        let transport = TcpTransport::new(1, TcpConfig::default(), book, Arc::clone(&stats));
        let faults = transport.net_faults();

        faults.set(fault::NetFaultConfig { delay_ms: 150, ..Default::default() }).expect("valid");
        let sent = Instant::now();
        transport.send(envelope(7));
        let (env, at) = wait(&mut rx, 5_000).await.expect("delivered after the delay");
        assert_eq!(env.shard_id, 7);
        assert!(at >= sent + Duration::from_millis(150), "arrived {:?} after sending", at - sent);

        faults.set(fault::NetFaultConfig { loss_rate: 1.0, ..Default::default() }).expect("valid");
        let dropped = stats.envelopes_dropped.load(Ordering::Relaxed);
        transport.send(envelope(8));
        assert!(wait(&mut rx, 300).await.is_none(), "a lost envelope never arrives");
        assert_eq!(stats.envelopes_dropped.load(Ordering::Relaxed), dropped + 1);

        faults.clear();
        transport.send(envelope(9));
        assert_eq!(wait(&mut rx, 5_000).await.expect("delivered").0.shard_id, 9);
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let batch = RaftBatch { envelopes: (0..5).map(envelope).collect() };
        let mut buf = Vec::new();
        encode_frame(&batch, &mut buf);
        encode_frame(&batch, &mut buf);
        let one = buf.len() / 2;
        for cut in 0..one {
            assert_eq!(decode_frame(&buf[..cut], 1 << 20), Ok(None), "cut {cut}");
        }
        let (got, used) = decode_frame(&buf, 1 << 20).expect("decodes").expect("complete");
        assert_eq!((got, used), (batch.clone(), one));
        assert_eq!(decode_frame(&buf[one..], 1 << 20).expect("decodes").map(|x| x.0), Some(batch));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut buf = Vec::new();
        encode_frame(&RaftBatch { envelopes: vec![envelope(7)] }, &mut buf);
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(decode_frame(&buf, 1 << 20), Err(FrameError::BadCrc { .. })));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(decode_frame(&huge, 1 << 20), Err(FrameError::Oversize { len_bytes: 0xffff_ffff, .. })));
        // A valid crc over bytes that are not a RaftBatch.
        let body = [0x0a, 0xff, 0xff, 0xff];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        frame.extend_from_slice(&body);
        assert!(matches!(decode_frame(&frame, 1 << 20), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn config_validation_names_the_setting() {
        TcpConfig::default().validate(1024 * 1024).expect("defaults valid");
        let err = TcpConfig { max_frame_bytes: 1024, ..TcpConfig::default() }.validate(1024 * 1024).expect_err("bad");
        assert!(err.to_string().contains("max-frame-bytes"), "{err}");
    }
}
