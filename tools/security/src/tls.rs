//! rustls configurations of a node's listeners and of its peer connections (design.md §10).
//!
//! | port | server side | client side |
//! |---|---|---|
//! | peer (Raft + control plane) | node certificate, a client certificate *required* | node certificate presented, server checked against the CA and the dialled IP |
//! | native, RESP | node certificate, a client certificate *optional* (names a user) | [`presage_client::tls::ClientTls`] |
//! | admin HTTPS | node certificate, ALPN `http/1.1`, no client certificate | CA checked |
//!
//! Every configuration uses the *ring* provider and rustls's safe defaults (TLS 1.2 and 1.3).

use std::path::Path;
use std::sync::Arc;

use presage_client::tls::{load_certs, load_key, provider, root_store};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::cert::{CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
use crate::identity::Identity;
use crate::SecurityError;

/// A node's TLS material: the cluster CA, its certificate chain and key.
pub struct NodeTls {
    roots: Arc<rustls::RootCertStore>,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn config_err(what: &str) -> impl Fn(rustls::Error) -> SecurityError + '_ {
    move |e| SecurityError::Cert(format!("{what}: {e}"))
}

impl NodeTls {
    /// Loads `certs_dir/{ca.crt,node.crt,node.key}` and checks that the certificate names
    /// node `node_id` (a node never starts under another node's identity).
    pub fn load(certs_dir: &Path, node_id: u64) -> Result<NodeTls, SecurityError> {
        let ca = load_certs(&certs_dir.join(CA_CERT_FILE))?;
        let chain = load_certs(&certs_dir.join(NODE_CERT_FILE))?;
        let key = load_key(&certs_dir.join(NODE_KEY_FILE))?;
        let named = Identity::from_cert_der(chain[0].as_ref())?;
        if named != Identity::Node(node_id) {
            return Err(SecurityError::Cert(format!(
                "{} names {named}, but this is node {node_id}",
                certs_dir.join(NODE_CERT_FILE).display()
            )));
        }
        let roots = Arc::new(root_store(&ca)?);
        Ok(NodeTls { roots, ca, chain, key })
    }

    /// The cluster CA's certificates.
    pub fn ca(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    fn server(
        &self,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<rustls::ServerConfig, SecurityError> {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err("protocol versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_err("node certificate"))
    }

    fn client_verifier(
        &self,
        required: bool,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, SecurityError> {
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider());
        let builder = if required { builder } else { builder.allow_unauthenticated() };
        builder.build().map_err(|e| SecurityError::Cert(format!("client verifier: {e}")))
    }

    /// The peer port's server side: only certificates of this CA get in.
    pub fn peer_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(self.server(self.client_verifier(true)?)?)))
    }

    /// The peer port's client side: presents this node's certificate, checks the peer's.
    pub fn peer_client_config(&self) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err("protocol versions"))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_err("node certificate"))?;
        Ok(Arc::new(config))
    }

    /// The native and RESP ports: a client certificate of this CA is optional.
    pub fn client_facing_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(self.server(self.client_verifier(false)?)?)))
    }

    /// The admin API's HTTPS.
    pub fn https_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err("protocol versions"))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(config_err("node certificate"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A client configuration trusting only the CA at `ca_cert` (for HTTPS to the admin API).
pub fn ca_client_config(ca_cert: &Path) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    let roots = root_store(&load_certs(ca_cert)?)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err("protocol versions"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The identity of the leaf certificate a TLS peer presented, if any.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<Result<Identity, SecurityError>> {
    certs.and_then(|c| c.first()).map(|leaf| Identity::from_cert_der(leaf.as_ref()))
}
