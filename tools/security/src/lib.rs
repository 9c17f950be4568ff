//! Presage's trust layer (design.md §10): who may connect, and how they prove it.
//!
//! - [`identity`]: what a certificate proves: a node of the cluster (`presage://node/ID`) or a
//!   user (`presage://user/NAME`), read from its subject alternative names.
//! - [`cert`]: `presage cert`: a cluster CA, node certificates (both TLS roles, the node's
//!   hosts and its identity), client certificates (a user's identity); the certs-dir layout.
//! - [`tls`]: rustls configurations for each port: the peer port (mutual TLS between nodes),
//!   client-facing ports (server certificate, optional client certificate), HTTPS.
//! - [`credentials`]: the users file: users with roles and Argon2id password hashes, bearer
//!   tokens with roles stored as SHA-256 digests and compared in constant time.
//! - [`handshake`]: the peer port's first exchange after TLS: cluster id, node id, channel.
//! - [`throttle`]: failed authentications wait longer each time, per source.
//!
//! **Architecture Invariant:** nothing here trusts what a peer *says* about itself when a
//! certificate can prove it: identities come from verified certificates, the handshake's
//! claims are checked against them.

pub mod cert;
pub mod credentials;
pub mod handshake;
pub mod identity;
pub mod throttle;
pub mod tls;

pub use credentials::Credentials;
pub use identity::Identity;

/// Why a security operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A certificate could not be made or read.
    #[error("certificate: {0}")]
    Cert(String),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] presage_client::tls::TlsError),
    /// The users file is malformed or refers to an unknown role.
    #[error("users file {path}: {reason}")]
    Users {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A name or value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn file_error(path: &std::path::Path, e: impl std::fmt::Display) -> SecurityError {
    SecurityError::File { path: path.display().to_string(), reason: e.to_string() }
}
