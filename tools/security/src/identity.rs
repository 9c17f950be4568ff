//! Identities in certificates. A node certificate carries the URI `presage://node/ID` among
//! its subject alternative names, a client certificate `presage://user/NAME` (the scheme of
//! SPIFFE-style workload identities). A certificate with neither, or with more than one
//! identity, proves nothing.

use x509_parser::extensions::GeneralName;

use crate::SecurityError;

/// A node id (as in `presage_shardmgr`).
pub type NodeId = u64;

/// The URI prefix of a node identity.
pub const NODE_URI_PREFIX: &str = "presage://node/";
/// The URI prefix of a user identity.
pub const USER_URI_PREFIX: &str = "presage://user/";
/// Longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 64;

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A node of the cluster.
    Node(NodeId),
    /// A user.
    User(String),
}

impl Identity {
    /// The URI written into a certificate.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{NODE_URI_PREFIX}{id}"),
            Identity::User(name) => format!("{USER_URI_PREFIX}{name}"),
        }
    }

    /// The identity a URI names, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
            return id.parse::<u64>().ok().filter(|id| *id > 0).map(Identity::Node);
        }
        let name = uri.strip_prefix(USER_URI_PREFIX)?;
        check_user_name(name).ok().map(|()| Identity::User(name.to_string()))
    }

    /// The identity a certificate (DER) names. The certificate's chain must have been
    /// verified already (rustls does it in the handshake).
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, SecurityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SecurityError::Cert(format!("unreadable certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SecurityError::Cert(format!("subject alternative names: {e}")))?
            .ok_or_else(|| {
                SecurityError::Cert("the certificate names no identity (no subject alternative names)".into())
            })?;
        let mut found: Option<Identity> = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = Identity::from_uri(uri) {
                    if found.replace(id).is_some() {
                        return Err(SecurityError::Cert("the certificate names more than one identity".into()));
                    }
                }
            }
        }
        found.ok_or_else(|| SecurityError::Cert("the certificate names no presage:// identity".into()))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::User(name) => write!(f, "user {name}"),
        }
    }
}

/// A user name: 1 to [`MAX_USER_NAME_BYTES`] of ASCII letters, digits, `_`, `-` and `.`.
pub fn check_user_name(name: &str) -> Result<(), SecurityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SecurityError::Invalid(format!(
            "user name {name:?}: 1 to {MAX_USER_NAME_BYTES} letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_refuse_strangers() {
        for id in [Identity::Node(7), Identity::User("app".into()), Identity::User("ops.team-1".into())] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for bad in [
            "presage://node/0",
            "presage://node/x",
            "presage://node/-1",
            "presage://user/",
            "presage://user/a b",
            "presage://user/../x",
            "https://node/1",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
