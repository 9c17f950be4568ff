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

mod call;
mod frame;
mod serve;

pub use call::{Learns, TcpRpc};
pub use frame::{decode_body, encode_frame, split_frame, FrameError, FRAME_HEADER_BYTES};
pub use serve::{serve, serve_stream, Authenticator, NativeServer, NoLogins, ServeShared};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use presage_shardmgr::NodeId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::proto::{Caller, Request, Response};

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
