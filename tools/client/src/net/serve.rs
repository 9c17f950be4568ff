//! The answering side: [`serve`] accepts, authenticates and serves connections;
//! [`serve_stream`] serves one already-authenticated stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::frame::{decode_body, encode_frame, read_body, read_header, write_frames, FrameError};
use super::{
    auth_failure_delay, Handler, NetConfig, LOGIN_TIMEOUT_MS, MAX_AUTH_FAILURES, MAX_CREDENTIAL_BYTES,
    MAX_UNAUTHENTICATED_FRAME_BYTES,
};
use crate::proto::{Caller, ProtoError, Request, Response};

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
