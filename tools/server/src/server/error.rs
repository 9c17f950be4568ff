//! The node server's errors: reading and writing the meta shard, loading the shard manager,
//! keeping the failure analysis's records, and invalid settings.

/// Why a meta-shard operation, a manager load or a failure-analysis record failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The replication layer refused or failed (not the leader, busy, stopped...).
    #[error(transparent)]
    Replication(#[from] presage_replication::Error),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Engine(#[from] presage_engine::EngineError),
    /// The shard manager's records do not make a manager.
    #[error("shard manager: {0}")]
    Manager(#[from] presage_shardmgr::Error),
    /// The failure analysis refused its input (a model, a recording).
    #[error("failure analysis: {0}")]
    Pfa(#[from] presage_pfa::PfaError),
    /// This node holds no replica of the meta shard.
    #[error("no meta replica on this node")]
    NoMetaReplica,
    /// A meta write did not finish in time (its outcome is unknown).
    #[error("meta write timed out")]
    MetaTimeout,
    /// What the meta shard holds cannot be used as it is.
    #[error("meta shard: {0}")]
    Meta(String),
    /// A record could not be encoded or decoded.
    #[error("{what}: {reason}")]
    Record {
        /// Which record.
        what: String,
        /// Why.
        reason: String,
    },
    /// A blocking task did not finish (it panicked or was cancelled).
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A setting out of its range, named with its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl ServerError {
    /// A record error for `what`.
    pub fn record(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ServerError::Record { what: what.into(), reason: reason.to_string() }
    }
}
