//! Errors of the shard manager's pure core.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid shard manager setting {name}: {reason}")]
    Config {
        /// The setting (kebab-case, as in the config file).
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A record of the meta shard does not decode.
    #[error("corrupt meta record {key}: {reason}")]
    Corrupt {
        /// The key, escaped.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
