//! Shard metadata, routing and the shard manager's policies (design.md §1-§4).
//!
//! Everything here is pure: it takes cluster state and returns decisions, with no I/O and no
//! clock reads of its own (the caller passes `now_ms`). That is what lets the policies run at
//! 1,000 nodes and 100,000 shards inside a unit test. The node server (`tools`) runs the
//! [`Manager`] on the meta shard's leader and carries out its `Effect`s.
//!
//! - [`model`]: nodes, replication groups, shards, epochs; the reserved system key space.
//! - [`directory`]: shards by key, keeping the highest epoch seen; `get_shard(key)` routing.
//! - [`load`]: per-shard load counters and the reservoir of sampled request keys and spans;
//!   the load-split key choice.
//! - [`config`]: [`ManagerConfig`], every threshold, validated.
//! - [`operator`]: operators - small state machines of steps (add learner, verify, promote,
//!   swap, remove, transfer leader, split, merge), idempotent, resumable, with a timeout and
//!   rollback.
//! - [`policy`]: split by size and load, merge of cold neighbours, leader and replica balance,
//!   group formation.
//! - [`events`]: known events operators declare (maintenance windows, load spikes) and
//!   their phases.
//! - [`forecast`]: load series per shard and their exponential-smoothing forecasts.
//! - [`capacity`]: each node's bytes and load per bucket, their trends against the capacity
//!   offered, and how many nodes to add where.
//! - [`meta`]: how the manager's state is laid out in the meta shard's keys.
//! - `state`: the cluster as the manager knows it; what the policies read.
//! - [`manager`]: the pure core of the shard manager: heartbeats and time in, effects out; its
//!   `migrate` part drives proactive migration - node evacuations driven by the failure
//!   model's risk (prepare, cut over, stand down), and reactive repair of failed nodes through
//!   the same operators.

pub mod admin;
pub mod capacity;
pub mod config;
pub mod directory;
pub mod error;
pub mod events;
pub mod feedback;
pub mod forecast;
pub mod load;
pub mod manager;
pub mod meta;
pub mod model;
pub mod operator;
pub mod policy;
pub mod range_risk;
pub mod shift;
mod state;

pub use admin::{AdminCommand, AdminError, AdminOutcome};
pub use capacity::{CapacityReport, NodeCapacity, Projection, RegionCapacity};
pub use config::ManagerConfig;
pub use directory::Directory;
pub use error::{Error, Result};
pub use events::{EventKind, EventPhase, EventView, KnownEvent, MaintenanceScope, NewEvent};
pub use feedback::{Kpis, MitigationKind, MitigationRecord, PfaReport};
pub use forecast::{Forecast, ForecastReport, PlaceForecast, Recommendation, ShardForecast};
pub use load::{KeySpan, LoadRecorder, LoadReport, ShardLoad};
pub use manager::{
    Command, Effects, HeartbeatAnswer, JoinError, Manager, ManagerStats, NodeStatus, RiskInputs,
    MAX_UNLISTED_PER_HEARTBEAT,
};
pub use meta::{MetaWrite, PersistedState};
pub use model::{
    is_system_key, ClusterMeta, Epoch, GroupId, GroupMeta, NodeHeartbeat, NodeId, NodeMeta, NodeState, NodeStats,
    ReplicaMeta, Role, ShardId, ShardMeta, ShardReport, TelemetryReport, META_SHARD_ID, SYSTEM_KEY_PREFIX,
};
pub use model::{Migration, MigrationCause, MigrationStage, MigrationView};
pub use operator::{Operator, OperatorKind, OperatorStatus, Step, Verification};
pub use range_risk::RangeRisk;
pub use shift::Shift;
