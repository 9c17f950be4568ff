//! A node's trust material as its listeners use it (design.md §10): its TLS certificate and
//! the cluster CA (`security.certs-dir`), the users and tokens (`security.users-file`), and
//! the [`Authenticator`] of the native port. An insecure node has none of them: every client
//! is the anonymous read-write user, and peers are known by their handshake's claim.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use presage_client::net::Authenticator;
use presage_client::proto::{Priority, Role};
use presage_client::{Caller, ProtoError};
use presage_security::tls::NodeTls;
use presage_security::{Credentials, SecurityError};

use super::config::SecurityConfig;

/// The name callers of an insecure node go by.
pub const ANONYMOUS_USER: &str = "anonymous";

/// A node's certificates and credentials.
pub struct NodeTrust {
    /// No TLS and no credentials (development only).
    pub insecure: bool,
    /// The node's TLS material (`None` when insecure).
    pub tls: Option<NodeTls>,
    /// Users and tokens (empty when insecure).
    pub credentials: Arc<Credentials>,
    /// `/metrics` needs no token.
    pub open_metrics: bool,
    /// Failed logins per source address, shared by the native port, RESP and the admin API.
    pub throttle: Arc<presage_security::throttle::AuthThrottle>,
}

impl NodeTrust {
    /// Loads what `cfg` names for node `node_id`.
    pub fn load(cfg: &SecurityConfig, node_id: u64) -> Result<NodeTrust, SecurityError> {
        if cfg.insecure {
            let empty = presage_security::credentials::UsersFile::default();
            let credentials = Arc::new(Credentials::from_file(empty, std::path::Path::new("(none)"))?);
            return Ok(NodeTrust {
                insecure: true,
                tls: None,
                credentials,
                open_metrics: true,
                throttle: Arc::default(),
            });
        }
        let tls = NodeTls::load(&cfg.certs_dir, node_id)?;
        let credentials = Arc::new(Credentials::load(&cfg.users_file)?);
        if credentials.is_empty() {
            tracing::warn!(
                file = %cfg.users_file.display(),
                "no users and no tokens: only client certificates of listed users could log in"
            );
        }
        Ok(NodeTrust {
            insecure: false,
            tls: Some(tls),
            credentials,
            open_metrics: cfg.open_metrics,
            throttle: Arc::default(),
        })
    }

    /// How the native port learns its callers.
    pub fn native_auth(&self) -> Arc<dyn Authenticator> {
        if self.insecure {
            return Arc::new(presage_client::net::NoLogins::anonymous(Caller::Client {
                user: ANONYMOUS_USER.into(),
                role: Role::ReadWrite,
                top_priority: Priority::Critical,
            }));
        }
        Arc::new(NativeAuth { credentials: Arc::clone(&self.credentials), throttle: Arc::clone(&self.throttle) })
    }

    /// TLS of the native and RESP ports (`None` when insecure).
    pub fn client_facing_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, SecurityError> {
        self.tls.as_ref().map(NodeTls::client_facing_acceptor).transpose()
    }

    /// TLS of the admin API (`None` when insecure).
    pub fn https_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, SecurityError> {
        self.tls.as_ref().map(NodeTls::https_acceptor).transpose()
    }
}

/// The native port's logins: a client certificate naming a listed user, or a user and
/// password. A failure waits for the per-source throttle (on top of the connection's own
/// delay), so that many connections do not multiply a guesser's rate.
struct NativeAuth {
    credentials: Arc<Credentials>,
    throttle: Arc<presage_security::throttle::AuthThrottle>,
}

impl Authenticator for NativeAuth {
    fn on_connect(&self, client_cert: Option<&[u8]>) -> Option<Caller> {
        let (user, role) = self.credentials.certificate_user(client_cert)?;
        let top_priority = self.credentials.top_priority(&user, role);
        Some(Caller::Client { user, role, top_priority })
    }

    fn login(
        &self,
        peer: std::net::SocketAddr,
        user: String,
        password: String,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, ProtoError>> + Send>> {
        let (credentials, throttle) = (Arc::clone(&self.credentials), Arc::clone(&self.throttle));
        Box::pin(async move {
            match Arc::clone(&credentials).check_password_off_thread(user.clone(), password).await {
                Ok(role) => {
                    throttle.succeeded(peer.ip());
                    let top_priority = credentials.top_priority(&user, role);
                    Ok(Caller::Client { user, role, top_priority })
                }
                Err(e) => {
                    tokio::time::sleep(throttle.failed(peer.ip())).await;
                    Err(ProtoError::Unauthenticated(e.to_string()))
                }
            }
        })
    }
}
