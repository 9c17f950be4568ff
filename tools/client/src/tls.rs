//! TLS for the calling side of the native protocol (design.md §10): the cluster CA's
//! certificate checks the node; a client certificate, when given, proves the user (otherwise
//! the connection logs in with a user and password, see [`crate::net`]).
//!
//! The node's certificate must name the address dialled (its IP, or `server-name`). Files are
//! PEM, read with a byte limit ([`MAX_PEM_FILE_BYTES`]). The crypto provider is *ring*
//! (pure Rust and assembly: no C++ or cmake in an application's build).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::net::{BoxStream, Connect, ConnectFuture};
use presage_shardmgr::NodeId;

/// Largest PEM file read (a certificate chain or a key).
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// Why TLS could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, is too large or holds no PEM object of the kind needed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads a file of at most [`MAX_PEM_FILE_BYTES`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let bad = |reason: String| TlsError::File { path: path.display().to_string(), reason };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(bad(format!("larger than {MAX_PEM_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File { path: path.display().to_string(), reason: format!("bad PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: path.display().to_string(), reason: "no certificate in it".into() });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| TlsError::File { path: path.display().to_string(), reason: format!("no private key: {e}") })
}

/// The process's TLS crypto provider (*ring*), never the global default.
///
/// rustls deprecates *ring* for its lack of post-quantum key exchange; its replacement
/// (aws-lc-rs) needs a C toolchain and cmake in every application's build. Presage keeps
/// *ring* until that trade changes (ARCHITECTURE.md, decisions).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding `certs` (the cluster CA).
pub fn root_store(certs: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// TLS settings of a client (kebab-case, for configuration files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientTls {
    /// The cluster CA's certificate (PEM).
    pub ca_cert: PathBuf,
    /// A client certificate naming the user (PEM), with `client-key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The name the node certificates must carry (default: the IP address dialled).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl ClientTls {
    /// The rustls configuration.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let roots = root_store(&load_certs(&self.ca_cert)?)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}"))),
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(TlsError::Config("client-cert and client-key go together".into())),
        }
    }

    /// A [`Connect`] that dials TLS with these settings.
    pub fn connector(&self, connect_timeout: Duration) -> Result<TlsConnect, TlsError> {
        let server_name = match &self.server_name {
            Some(n) => {
                Some(ServerName::try_from(n.clone()).map_err(|e| TlsError::Config(format!("server-name {n:?}: {e}")))?)
            }
            None => None,
        };
        Ok(TlsConnect::new(Arc::new(self.rustls_config()?), server_name, connect_timeout))
    }
}

/// The server name to check a node's certificate against: `name`, else the host of `addr`.
pub fn server_name_for(addr: &str, name: Option<&ServerName<'static>>) -> std::io::Result<ServerName<'static>> {
    if let Some(n) = name {
        return Ok(n.clone());
    }
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: not a server name: {e}")))
}

/// Dials TCP, then TLS.
#[derive(Clone)]
pub struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    timeout: Duration,
}

impl TlsConnect {
    /// Dials with `config`, checking node certificates against `server_name` (default: the
    /// dialled IP), each connection (TCP and handshake) within `timeout`.
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: Option<ServerName<'static>>, timeout: Duration) -> Self {
        TlsConnect { connector: tokio_rustls::TlsConnector::from(config), server_name, timeout }
    }

    /// A TLS stream to `addr`.
    pub async fn dial(&self, addr: &str) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = server_name_for(addr, self.server_name.as_ref())?;
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            self.connector.connect(name, tcp).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")),
        }
    }
}

impl Connect for TlsConnect {
    fn connect(&self, addr: String, _to: NodeId) -> ConnectFuture {
        let this = self.clone();
        Box::pin(async move { Ok(Box::new(this.dial(&addr).await?) as BoxStream) })
    }
}
