//! `presage cert`: the certificates of a secure cluster (design.md §10), made with rcgen.
//!
//! **Layout of a certs dir** (every name fixed, so a node needs only the folder):
//!
//! | file | what | who holds it |
//! |---|---|---|
//! | `ca.crt` | the cluster CA's certificate | every node and client |
//! | `ca.key` | the CA's private key | only where certificates are made |
//! | `node.crt`, `node.key` | a node's certificate (its id, its hosts; server and client TLS) and key | that node |
//! | `client.USER.crt`, `client.USER.key` | a user's client certificate and key | that user's applications |
//!
//! Keys are ECDSA P-256, written with mode 0600. A CA is valid for [`CA_VALIDITY_DAYS`], node
//! and client certificates for [`LEAF_VALIDITY_DAYS`]. Nothing is overwritten unless asked.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use crate::identity::{check_user_name, Identity};
use crate::{file_error, SecurityError};

/// The CA certificate's file name in a certs dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// A node certificate's file name.
pub const NODE_CERT_FILE: &str = "node.crt";
/// A node key's file name.
pub const NODE_KEY_FILE: &str = "node.key";
/// Days a CA certificate is valid.
pub const CA_VALIDITY_DAYS: i64 = 3_650;
/// Days a node or client certificate is valid.
pub const LEAF_VALIDITY_DAYS: i64 = 1_825;
/// Most hosts one node certificate names.
pub const MAX_HOSTS: usize = 64;

/// A client certificate's file name for `user`.
pub fn client_cert_file(user: &str) -> String {
    format!("client.{user}.crt")
}

/// A client key's file name for `user`.
pub fn client_key_file(user: &str) -> String {
    format!("client.{user}.key")
}

fn rcgen_err(e: rcgen::Error) -> SecurityError {
    SecurityError::Cert(e.to_string())
}

/// Validity from a day ago (clock skew) for `days`, and a random serial number.
fn base_params(common_name: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Presage");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive integer
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

/// Writes `text` to `dir/name` (mode 0600 for keys); refuses to replace a file unless
/// `overwrite`.
fn write_file(dir: &Path, name: &str, text: &str, secret: bool, overwrite: bool) -> Result<PathBuf, SecurityError> {
    use std::io::Write;
    let path = dir.join(name);
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => file_error(&path, "exists already (use --overwrite to replace it)"),
        _ => file_error(&path, e),
    })?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| file_error(&path, e))?;
    Ok(path)
}

fn read_text(path: &Path) -> Result<String, SecurityError> {
    let bytes = presage_client::tls::read_bounded(path)?;
    String::from_utf8(bytes).map_err(|_| file_error(path, "not UTF-8 PEM text"))
}

/// Makes a new cluster CA in `certs_dir` (`ca.crt`) with its key at `ca_key`.
pub fn create_ca(certs_dir: &Path, ca_key: &Path, overwrite: bool) -> Result<(), SecurityError> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let mut params = base_params("Presage cluster CA", CA_VALIDITY_DAYS);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    let key_dir = ca_key.parent().unwrap_or(Path::new("."));
    let key_name = ca_key.file_name().and_then(|n| n.to_str()).unwrap_or(CA_KEY_FILE);
    write_file(key_dir, key_name, &key.serialize_pem(), true, overwrite)?;
    write_file(certs_dir, CA_CERT_FILE, &cert.pem(), false, overwrite)?;
    Ok(())
}

/// The CA that signs: `certs_dir/ca.crt` and the key at `ca_key`.
fn load_issuer(certs_dir: &Path, ca_key: &Path) -> Result<Issuer<'static, KeyPair>, SecurityError> {
    let key = KeyPair::from_pem(&read_text(ca_key)?).map_err(|e| file_error(ca_key, e))?;
    let ca_path = certs_dir.join(CA_CERT_FILE);
    Issuer::from_ca_cert_pem(&read_text(&ca_path)?, key).map_err(|e| file_error(&ca_path, e))
}

fn issue(
    params: CertificateParams,
    certs_dir: &Path,
    ca_key: &Path,
    names: (&str, &str),
    overwrite: bool,
) -> Result<(), SecurityError> {
    let issuer = load_issuer(certs_dir, ca_key)?;
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
    write_file(certs_dir, names.1, &key.serialize_pem(), true, overwrite)?;
    write_file(certs_dir, names.0, &cert.pem(), false, overwrite)?;
    Ok(())
}

/// Makes node `node_id`'s certificate in `certs_dir` (`node.crt`, `node.key`), signed by the
/// CA there (`ca.crt`) with the key at `ca_key`. It names the node's `hosts` (IP addresses or
/// DNS names every client and peer dials it by) and its identity, and serves both as a
/// server and as a client certificate (peers connect both ways).
pub fn create_node(
    certs_dir: &Path,
    ca_key: &Path,
    node_id: u64,
    hosts: &[String],
    overwrite: bool,
) -> Result<(), SecurityError> {
    if node_id == 0 {
        return Err(SecurityError::Invalid("a node id is positive".into()));
    }
    if hosts.is_empty() || hosts.len() > MAX_HOSTS {
        return Err(SecurityError::Invalid(format!("a node certificate names 1 to {MAX_HOSTS} hosts")));
    }
    let mut params = base_params("node", LEAF_VALIDITY_DAYS);
    for h in hosts {
        params.subject_alt_names.push(match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(h.as_str().try_into().map_err(|e| SecurityError::Invalid(format!("host {h:?}: {e}")))?)
            }
        });
    }
    let uri = Identity::Node(node_id).uri();
    params.subject_alt_names.push(SanType::URI(uri.as_str().try_into().map_err(rcgen_err)?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    issue(params, certs_dir, ca_key, (NODE_CERT_FILE, NODE_KEY_FILE), overwrite)
}

/// Makes `user`'s client certificate in `certs_dir` (`client.USER.crt`, `.key`).
pub fn create_client(certs_dir: &Path, ca_key: &Path, user: &str, overwrite: bool) -> Result<(), SecurityError> {
    check_user_name(user)?;
    let mut params = base_params(user, LEAF_VALIDITY_DAYS);
    let uri = Identity::User(user.to_string()).uri();
    params.subject_alt_names.push(SanType::URI(uri.as_str().try_into().map_err(rcgen_err)?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    issue(params, certs_dir, ca_key, (&client_cert_file(user), &client_key_file(user)), overwrite)
}

/// Copies the CA certificate of `from` into `to` (a node's own certs dir).
pub fn copy_ca(from: &Path, to: &Path, overwrite: bool) -> Result<(), SecurityError> {
    let text = read_text(&from.join(CA_CERT_FILE))?;
    write_file(to, CA_CERT_FILE, &text, false, overwrite).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_nodes_and_clients_whose_identities_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (certs, key) = (dir.path().join("certs"), dir.path().join("ca.key"));
        create_ca(&certs, &key, false).expect("ca");
        assert!(create_ca(&certs, &key, false).is_err(), "never overwritten unless asked");
        create_node(&certs, &key, 3, &["127.0.0.1".into(), "localhost".into()], false).expect("node");
        create_client(&certs, &key, "app", false).expect("client");
        let leaf =
            |name: &str| presage_client::tls::load_certs(&certs.join(name)).expect("cert").remove(0).as_ref().to_vec();
        assert_eq!(Identity::from_cert_der(&leaf(NODE_CERT_FILE)).expect("node id"), Identity::Node(3));
        assert_eq!(Identity::from_cert_der(&leaf("client.app.crt")).expect("user"), Identity::User("app".into()));
        assert!(Identity::from_cert_der(&leaf(CA_CERT_FILE)).is_err(), "the CA names nobody");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.join(NODE_KEY_FILE)).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
        assert!(create_node(&certs, &key, 0, &["h".into()], true).is_err());
        assert!(create_client(&certs, &key, "no spaces", true).is_err());
    }
}
