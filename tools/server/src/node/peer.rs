//! The peer port (design.md §10): Raft and the control plane, for nodes of this cluster only.
//!
//! Every connection, both ways: TCP, then TLS with *both* node certificates checked against
//! the cluster CA (skipped only on an insecure node), then the handshake
//! ([`presage_security::handshake`]): the dialler says which node it is, which cluster it
//! belongs to and which channel it wants; the listener checks that claim against the
//! certificate and its own cluster id ([`handshake::admit`]) and answers with its own id and
//! cluster, which the dialler checks in turn (the node it meant to reach, the cluster it
//! belongs to). Then the connection carries one channel:
//!
//! - **Raft**: frames to [`presage_replication::RaftInbound::serve`], every envelope's sender
//!   checked against the proven node id;
//! - **RPC**: native-protocol requests to the node's handler as [`Caller::Node`] (or
//!   [`Caller::Joining`] for a node that has not joined: hello and join only).
//!
//! A refusal is logged on both sides with its reason; nothing a refused connection sent
//! reaches Raft or the handler.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presage_client::net::{BoxStream, Connect, ConnectFuture, ServeShared};
use presage_client::Caller;
use presage_replication::{DialFuture, Dialer, RaftInbound, RaftStream};
use presage_security::handshake::{self, Admitted, Answer, Channel, Hello};
use presage_security::tls::{peer_identity, NodeTls};
use presage_security::{Identity, SecurityError};
use presage_shardmgr::NodeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// TLS of the peer port, both sides.
struct PeerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// What the peer port trusts: this node's identity and cluster, and its TLS (none when
/// insecure).
pub struct PeerTrust {
    me: NodeId,
    cluster_id: Arc<AtomicU64>,
    tls: Option<PeerTls>,
    timeout: Duration,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
}

impl PeerTrust {
    /// Node `me` of the cluster in `cluster_id` (0 until known), with `tls` (`None`:
    /// insecure); TLS and handshake each way within `timeout`.
    pub fn new(
        me: NodeId,
        cluster_id: Arc<AtomicU64>,
        tls: Option<&NodeTls>,
        timeout: Duration,
    ) -> Result<PeerTrust, SecurityError> {
        let tls = match tls {
            Some(t) => Some(PeerTls {
                acceptor: t.peer_acceptor()?,
                connector: tokio_rustls::TlsConnector::from(t.peer_client_config()?),
            }),
            None => None,
        };
        Ok(PeerTrust { me, cluster_id, tls, timeout })
    }

    fn hello(&self, channel: Channel) -> Hello {
        Hello { channel, node_id: self.me, cluster_id: self.cluster_id.load(Ordering::SeqCst) }
    }

    /// Checks the listener's answer: node `to` (0: whoever listens at a join address) of
    /// this cluster.
    fn check_answer(&self, addr: &str, answer: &Answer, to: NodeId) -> std::io::Result<()> {
        if to != 0 && answer.node_id != to {
            return Err(io_err(format!("{addr} is node {}, not node {to}", answer.node_id)));
        }
        let ours = self.cluster_id.load(Ordering::SeqCst);
        if ours != 0 && answer.cluster_id != 0 && answer.cluster_id != ours {
            return Err(io_err(format!(
                "node {} at {addr} belongs to cluster {:#x}, this node to cluster {ours:#x}",
                answer.node_id, answer.cluster_id
            )));
        }
        Ok(())
    }

    /// A connection to node `to` (0: whoever listens) at `addr`, handshaken for `channel`.
    pub async fn dial(&self, addr: &str, to: NodeId, channel: Channel) -> std::io::Result<BoxStream> {
        let work = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let hello = self.hello(channel);
            let Some(tls) = &self.tls else {
                let mut stream = tcp;
                let answer = handshake::dial(&mut stream, &hello, self.timeout).await.map_err(io_err)?;
                self.check_answer(addr, &answer, to)?;
                return Ok(Box::new(stream) as BoxStream);
            };
            let name = presage_client::tls::server_name_for(addr, None)?;
            let mut stream = tls.connector.connect(name, tcp).await?;
            let proven = match peer_identity(stream.get_ref().1.peer_certificates()) {
                Some(Ok(Identity::Node(id))) => id,
                Some(Ok(other)) => return Err(io_err(format!("{addr} presented the certificate of {other}"))),
                Some(Err(e)) => return Err(io_err(e)),
                None => return Err(io_err(format!("{addr} presented no certificate"))),
            };
            if to != 0 && proven != to {
                return Err(io_err(format!("{addr} presented node {proven}'s certificate, not node {to}'s")));
            }
            let answer = handshake::dial(&mut stream, &hello, self.timeout).await.map_err(io_err)?;
            self.check_answer(addr, &answer, proven)?;
            Ok(Box::new(stream) as BoxStream)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer connect and handshake timed out")),
        }
    }
}

/// Raft's dialler: peer connections on the Raft channel.
pub struct RaftDialer(pub Arc<PeerTrust>);

impl Dialer for RaftDialer {
    fn dial(&self, to: u64, addr: SocketAddr) -> DialFuture {
        let trust = Arc::clone(&self.0);
        Box::pin(async move {
            let stream = trust.dial(&addr.to_string(), to, Channel::Raft).await?;
            Ok(Box::new(stream) as RaftStream)
        })
    }
}

/// The control plane's dialler: peer connections on the RPC channel.
pub struct RpcDialer(pub Arc<PeerTrust>);

impl Connect for RpcDialer {
    fn connect(&self, addr: String, to: NodeId) -> ConnectFuture {
        let trust = Arc::clone(&self.0);
        Box::pin(async move { trust.dial(&addr, to, Channel::Rpc).await })
    }
}

/// Connections in their TLS handshake or peer handshake at once (each within the
/// handshake timeout); past it new connections are refused until one finishes.
pub const MAX_PEER_HANDSHAKES: usize = 64;

/// Serves the peer port on `listener`: at most `max_connections` admitted connections (a
/// slot is taken only once a connection proved itself, so strangers cannot hold them) and
/// [`MAX_PEER_HANDSHAKES`] handshakes at once.
pub fn serve(
    listener: TcpListener,
    trust: Arc<PeerTrust>,
    raft: RaftInbound,
    rpc: ServeShared,
    max_connections: usize,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let handshakes = Arc::new(Semaphore::new(MAX_PEER_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(in_handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::warn!(%peer, "peer listener: too many handshakes at once; refused");
                continue;
            };
            let (trust, raft, rpc, slots) = (Arc::clone(&trust), raft.clone(), rpc.clone(), Arc::clone(&slots));
            tokio::spawn(async move {
                accept(stream, peer, Peer { trust: &trust, raft: &raft, rpc, slots, handshake: in_handshake }).await;
            });
        }
    })
}

/// What serving one peer connection needs.
struct Peer<'a> {
    trust: &'a PeerTrust,
    raft: &'a RaftInbound,
    rpc: ServeShared,
    /// Admitted connections.
    slots: Arc<Semaphore>,
    /// This connection's place among the handshakes, released once admitted.
    handshake: tokio::sync::OwnedSemaphorePermit,
}

async fn accept(tcp: TcpStream, peer: SocketAddr, p: Peer<'_>) {
    let _ = tcp.set_nodelay(true);
    let trust = p.trust;
    let Some(tls) = &trust.tls else {
        return admit_and_serve(tcp, None, peer, p).await;
    };
    let stream = match tokio::time::timeout(trust.timeout, tls.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "peer TLS handshake failed; connection refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "peer TLS handshake timed out; connection refused");
            return;
        }
    };
    let cert = peer_identity(stream.get_ref().1.peer_certificates());
    admit_and_serve(stream, Some(cert), peer, p).await;
}

/// Reads the hello, decides, answers, then serves the channel. `cert` is `None` on an
/// insecure node, else what the TLS client certificate proved.
async fn admit_and_serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    cert: Option<Option<Result<Identity, SecurityError>>>,
    peer: SocketAddr,
    p: Peer<'_>,
) {
    let Peer { trust, raft, rpc, slots, handshake: in_handshake } = p;
    let hello = match handshake::read_hello(&mut stream, trust.timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "peer handshake failed; connection refused");
            return;
        }
    };
    let cluster_id = trust.cluster_id.load(Ordering::SeqCst);
    let secure = cert.is_some();
    let mut decided = match cert.flatten() {
        Some(Err(e)) => Err(format!("unreadable certificate identity: {e}")),
        Some(Ok(identity)) => handshake::admit(&hello, Some(&identity), secure, cluster_id),
        None => handshake::admit(&hello, None, secure, cluster_id),
    };
    let slot = match &decided {
        Ok(_) => match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                decided = Err("too many peer connections on this node".into());
                None
            }
        },
        Err(_) => None,
    };
    let answer = Answer { node_id: trust.me, cluster_id, refused: decided.as_ref().err().cloned() };
    if let Err(e) = handshake::write_answer(&mut stream, &answer).await {
        tracing::debug!(%peer, error = %e, "peer handshake answer not delivered");
        return;
    }
    drop(in_handshake);
    let admitted = match decided {
        Ok(a) => a,
        Err(reason) if cluster_id == 0 => {
            // Expected while this node starts and joins: its peers find it before it joined.
            tracing::debug!(%peer, claimed = hello.node_id, %reason, "peer connection refused");
            return;
        }
        Err(reason) => {
            tracing::warn!(%peer, claimed = hello.node_id, %reason, "peer connection refused");
            return;
        }
    };
    let outcome = match (hello.channel, admitted) {
        (Channel::Raft, Admitted::Member(id)) => raft.serve(stream, id).await,
        (Channel::Rpc, Admitted::Member(id)) => {
            presage_client::net::serve_stream(stream, peer, rpc, Some(Caller::Node { id }))
                .await
                .map_err(|e| e.to_string())
        }
        (Channel::Rpc, Admitted::Joining(id)) => {
            presage_client::net::serve_stream(stream, peer, rpc, Some(Caller::Joining { id }))
                .await
                .map_err(|e| e.to_string())
        }
        (Channel::Raft, Admitted::Joining(id)) => Err(format!("node {id} sent Raft before joining")),
    };
    if let Err(e) = outcome {
        tracing::info!(%peer, node = hello.node_id, error = %e, "peer connection closed");
    }
    drop(slot);
}
