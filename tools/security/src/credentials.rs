//! The users file: who may log in, with which role (design.md §10).
//!
//! ```toml
//! [[users]]                 # RESP `AUTH user pass`, the native protocol's login
//! name = "app"
//! role = "read-write"       # read-only | read-write | operator
//! password-hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//!
//! [[tokens]]                # the admin API's `Authorization: Bearer TOKEN`
//! name = "ops"
//! role = "operator"
//! sha256 = "9f86d0..."      # of the token; the token itself is shown once, when made
//! ```
//!
//! Passwords are stored as Argon2id hashes (PHC strings) and checked on a blocking thread by
//! the callers; an unknown user is checked against a dummy hash so that the answer takes as
//! long as for a known one and both fail alike (no user enumeration). Tokens are random
//! 256-bit strings stored as SHA-256 digests; a presented token's digest is compared with
//! every stored one in constant time. `presage user add` and `presage user token` edit the
//! file (written atomically, mode 0600); a node reads it at start.

use std::collections::BTreeMap;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use presage_client::proto::{Priority, Role};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::identity::check_user_name;
use crate::{file_error, SecurityError};

/// Largest users file read, in bytes.
pub const MAX_USERS_FILE_BYTES: u64 = 4 << 20;
/// Most users and tokens in one file.
pub const MAX_ENTRIES: usize = 10_000;
/// Shortest password accepted by `presage user add`, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;

/// One user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UserEntry {
    /// The name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Argon2id PHC string of the password.
    pub password_hash: String,
    /// The priority of its RESP requests unless a connection sets another (`CLIENT
    /// PRIORITY`).
    #[serde(default, skip_serializing_if = "is_normal")]
    pub priority: Priority,
}

fn is_normal(p: &Priority) -> bool {
    *p == Priority::Normal
}

/// One bearer token of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TokenEntry {
    /// A name for logs.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UsersFile {
    /// Users.
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// Tokens.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

impl UsersFile {
    /// Reads `path`; a missing file is empty.
    pub fn read(path: &Path) -> Result<UsersFile, SecurityError> {
        let bytes = match presage_client::tls::read_bounded(path) {
            Ok(b) => b,
            Err(_) if !path.exists() => return Ok(UsersFile::default()),
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 > MAX_USERS_FILE_BYTES {
            return Err(file_error(path, format!("larger than {MAX_USERS_FILE_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| file_error(path, "not UTF-8"))?;
        toml::from_str(&text)
            .map_err(|e| SecurityError::Users { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Writes `path` atomically, readable by its owner only.
    pub fn write(&self, path: &Path) -> Result<(), SecurityError> {
        use std::io::Write;
        let text = toml::to_string_pretty(self).map_err(|e| SecurityError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        let mut file = options.open(&tmp).map_err(|e| file_error(&tmp, e))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| file_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
    }

    /// Adds (or replaces) user `name` with `role` and `password`.
    pub fn set_user(&mut self, name: &str, role: Role, password: &str) -> Result<(), SecurityError> {
        check_user_name(name)?;
        check_role(role)?;
        if password.len() < MIN_PASSWORD_BYTES {
            return Err(SecurityError::Invalid(format!("a password has at least {MIN_PASSWORD_BYTES} bytes")));
        }
        let entry = UserEntry {
            name: name.to_string(),
            role,
            password_hash: hash_password(password)?,
            priority: Priority::Normal,
        };
        self.users.retain(|u| u.name != name);
        self.users.push(entry);
        Ok(())
    }

    /// Sets user `name`'s default request priority.
    pub fn set_priority(&mut self, name: &str, priority: Priority) -> Result<(), SecurityError> {
        let user = self.users.iter_mut().find(|u| u.name == name);
        user.map(|u| u.priority = priority).ok_or_else(|| SecurityError::Invalid(format!("no user {name}")))
    }

    /// Adds a new token named `name` with `role` (replacing one of that name); returns the
    /// token, which is stored only as its digest.
    pub fn new_token(&mut self, name: &str, role: Role) -> Result<String, SecurityError> {
        check_user_name(name)?;
        check_role(role)?;
        let token = new_token();
        self.tokens.retain(|t| t.name != name);
        self.tokens.push(TokenEntry { name: name.to_string(), role, sha256: token_sha256(&token) });
        Ok(token)
    }
}

fn check_role(role: Role) -> Result<(), SecurityError> {
    if role == Role::Node {
        return Err(SecurityError::Invalid(
            "the node role belongs to node certificates, not to users or tokens".into(),
        ));
    }
    Ok(())
}

/// An Argon2id hash of `password` (a PHC string with a random salt).
pub fn hash_password(password: &str) -> Result<String, SecurityError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SecurityError::Invalid(format!("password hash: {e}")))
}

/// A new random bearer token (256 bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// The hex SHA-256 of `token`.
pub fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Why a login failed. One message for an unknown user and a wrong password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The user is unknown or the password wrong.
    #[error("invalid username-password pair or user is disabled")]
    WrongPass,
    /// No user or token matches.
    #[error("invalid token")]
    BadToken,
}

/// Password checks running at once per node: each costs ~19 MiB and a core for tens of
/// milliseconds (Argon2id's defaults), so a flood of logins queues instead of exhausting the
/// node.
pub const MAX_CONCURRENT_PASSWORD_CHECKS: usize = 2;

/// The users and tokens a node accepts, checked and ready.
pub struct Credentials {
    users: BTreeMap<String, (Role, String)>,
    priorities: BTreeMap<String, Priority>,
    tokens: Vec<([u8; 32], String, Role)>,
    dummy_hash: String,
    checks: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("users", &self.users.len()).field("tokens", &self.tokens.len()).finish()
    }
}

impl Credentials {
    /// Loads and checks the users file at `path`.
    pub fn load(path: &Path) -> Result<Credentials, SecurityError> {
        Credentials::from_file(UsersFile::read(path)?, path)
    }

    /// Checks `file` (read from `path`, named in errors).
    pub fn from_file(file: UsersFile, path: &Path) -> Result<Credentials, SecurityError> {
        let bad = |reason: String| SecurityError::Users { path: path.display().to_string(), reason };
        if file.users.len() + file.tokens.len() > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} users and tokens")));
        }
        let mut users = BTreeMap::new();
        let mut priorities = BTreeMap::new();
        for u in file.users {
            if u.priority != Priority::Normal {
                priorities.insert(u.name.clone(), u.priority);
            }
            check_user_name(&u.name).map_err(|e| bad(e.to_string()))?;
            check_role(u.role).map_err(|e| bad(format!("user {}: {e}", u.name)))?;
            PasswordHash::new(&u.password_hash).map_err(|e| bad(format!("user {}: password-hash: {e}", u.name)))?;
            if users.insert(u.name.clone(), (u.role, u.password_hash)).is_some() {
                return Err(bad(format!("user {} is listed twice", u.name)));
            }
        }
        let mut tokens = Vec::new();
        for t in file.tokens {
            check_role(t.role).map_err(|e| bad(format!("token {}: {e}", t.name)))?;
            let digest =
                unhex(&t.sha256).ok_or_else(|| bad(format!("token {}: sha256 is not 64 hex digits", t.name)))?;
            tokens.push((digest, t.name, t.role));
        }
        let dummy_hash = hash_password("presage-dummy-password")?;
        let checks = tokio::sync::Semaphore::new(MAX_CONCURRENT_PASSWORD_CHECKS);
        Ok(Credentials { users, priorities, tokens, dummy_hash, checks })
    }

    /// No users and no tokens.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty()
    }

    /// User `name`'s default request priority (normal unless the users file says otherwise).
    pub fn user_priority(&self, name: &str) -> Priority {
        self.priorities.get(name).copied().unwrap_or_default()
    }

    /// The highest priority `user` (of `role`) may give its requests: critical for operators
    /// and users the users file makes critical, else normal (anyone may lower its own to
    /// bulk).
    pub fn top_priority(&self, user: &str, role: Role) -> Priority {
        if role.may_operate() || self.user_priority(user) == Priority::Critical {
            Priority::Critical
        } else {
            Priority::Normal
        }
    }

    /// The role of user `name`, if it exists (a client certificate naming it).
    pub fn user_role(&self, name: &str) -> Option<Role> {
        self.users.get(name).map(|(role, _)| *role)
    }

    /// Checks `password` for `user` (slow by design: call it on a blocking thread).
    pub fn check_password(&self, user: &str, password: &str) -> Result<Role, AuthFailure> {
        let (role, hash) = match self.users.get(user) {
            Some((role, hash)) => (Some(*role), hash.as_str()),
            None => (None, self.dummy_hash.as_str()),
        };
        let parsed = PasswordHash::new(hash).map_err(|_| AuthFailure::WrongPass)?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        match role {
            Some(role) if ok => Ok(role),
            _ => Err(AuthFailure::WrongPass),
        }
    }

    /// The user a TLS client certificate (the leaf, DER) names, with its role, if that user
    /// is listed.
    pub fn certificate_user(&self, client_cert: Option<&[u8]>) -> Option<(String, Role)> {
        match crate::identity::Identity::from_cert_der(client_cert?) {
            Ok(crate::identity::Identity::User(user)) => {
                let role = self.user_role(&user)?;
                Some((user, role))
            }
            _ => None,
        }
    }

    /// [`Credentials::check_password`] on a blocking thread (Argon2 is slow by design), at
    /// most [`MAX_CONCURRENT_PASSWORD_CHECKS`] at once.
    pub async fn check_password_off_thread(
        self: std::sync::Arc<Self>,
        user: String,
        password: String,
    ) -> Result<Role, AuthFailure> {
        let Ok(_turn) = self.checks.acquire().await else { return Err(AuthFailure::WrongPass) };
        let this = std::sync::Arc::clone(&self);
        tokio::task::spawn_blocking(move || this.check_password(&user, &password))
            .await
            .unwrap_or(Err(AuthFailure::WrongPass))
    }

    /// The name and role of the token `token`, comparing its digest with every stored one in
    /// constant time.
    pub fn check_token(&self, token: &str) -> Result<(&str, Role), AuthFailure> {
        let digest = Sha256::digest(token.as_bytes());
        let mut found = None;
        for (stored, name, role) in &self.tokens {
            if bool::from(stored.as_slice().ct_eq(digest.as_slice())) {
                found = Some((name.as_str(), *role));
            }
        }
        found.ok_or(AuthFailure::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_tokens_check_and_survive_a_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let mut file = UsersFile::read(&path).expect("a missing file is empty");
        file.set_user("app", Role::ReadWrite, "s3cret-pass").expect("user");
        file.set_user("reader", Role::ReadOnly, "reader-pass").expect("user");
        let token = file.new_token("ops", Role::Operator).expect("token");
        assert!(file.set_user("n", Role::Node, "whatever-pass").is_err(), "no user holds the node role");
        assert!(file.set_user("short", Role::ReadOnly, "short").is_err(), "short passwords refused");
        file.write(&path).expect("write");
        let creds = Credentials::load(&path).expect("load");
        assert_eq!(creds.check_password("app", "s3cret-pass"), Ok(Role::ReadWrite));
        assert_eq!(creds.check_password("reader", "reader-pass"), Ok(Role::ReadOnly));
        assert_eq!(creds.check_password("app", "wrong"), Err(AuthFailure::WrongPass));
        assert_eq!(creds.check_password("nobody", "s3cret-pass"), Err(AuthFailure::WrongPass));
        assert_eq!(creds.check_token(&token), Ok(("ops", Role::Operator)));
        assert_eq!(creds.check_token("x"), Err(AuthFailure::BadToken));
        assert_eq!(creds.user_role("reader"), Some(Role::ReadOnly));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("s3cret-pass") && !text.contains(&token), "only hashes are stored");
    }

    #[test]
    fn malformed_files_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        for (text, needle) in [
            ("[[users]]\nname = \"a\"\nrole = \"god\"\npassword-hash = \"x\"\n", "role"),
            ("[[users]]\nname = \"a\"\nrole = \"read-only\"\npassword-hash = \"x\"\n", "password-hash"),
            ("[[tokens]]\nname = \"t\"\nrole = \"operator\"\nsha256 = \"abc\"\n", "64 hex"),
            ("[[tokens]]\nname = \"t\"\nrole = \"node\"\nsha256 = \"abc\"\n", "node role"),
            ("colour = 1\n", "colour"),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Credentials::load(&path).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
