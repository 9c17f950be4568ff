//! Conversions between the replication layer's types and the shard manager's and the
//! protocol's.
//!
//! Descriptor/epoch/error conversions; `bootstrap_descriptors`.

use presage_client::ProtoError;
use presage_replication::wire::ReplicaRole;
use presage_replication::{Epoch as WireEpoch, Error, Replica, ShardDescriptor};
use presage_shardmgr::{Epoch, NodeId, ReplicaMeta, Role, ShardMeta, META_SHARD_ID, SYSTEM_KEY_PREFIX};

/// The replication layer's request id.
pub fn request_id(id: presage_client::RequestId) -> presage_replication::RequestId {
    presage_replication::RequestId { client: id.client, slot: id.slot, seq: id.seq }
}

/// The replication layer's epoch.
pub fn wire_epoch(e: Epoch) -> WireEpoch {
    WireEpoch { version: e.version, conf_ver: e.conf_ver }
}

/// The shard manager's epoch.
pub fn meta_epoch(e: WireEpoch) -> Epoch {
    Epoch { version: e.version, conf_ver: e.conf_ver }
}

/// The directory entry of a descriptor, with `leader` as its leader.
pub fn shard_meta(d: &ShardDescriptor, leader: Option<NodeId>) -> ShardMeta {
    ShardMeta {
        id: d.id,
        start: d.start.clone(),
        end: d.end.clone(),
        epoch: meta_epoch(d.epoch()),
        replicas: d
            .replicas
            .iter()
            .map(|r| ReplicaMeta { node: r.node_id, role: if r.is_voter() { Role::Voter } else { Role::Learner } })
            .collect(),
        leader,
        merging_into: d.merging_into,
    }
}

/// The replication descriptor of a directory entry.
pub fn descriptor(s: &ShardMeta) -> ShardDescriptor {
    ShardDescriptor {
        id: s.id,
        start: s.start.clone(),
        end: s.end.clone(),
        epoch: Some(wire_epoch(s.epoch)),
        replicas: s
            .replicas
            .iter()
            .map(|r| Replica {
                node_id: r.node,
                role: match r.role {
                    Role::Voter => ReplicaRole::Voter as i32,
                    Role::Learner => ReplicaRole::Learner as i32,
                },
            })
            .collect(),
        merging_into: s.merging_into,
    }
}

/// The shards a brand-new cluster starts with, all on `node`: the meta shard over the system
/// key space `[0xff, ∞)` and shard 1 over every user key `["", 0xff)`.
pub fn bootstrap_descriptors(node: NodeId) -> Vec<ShardDescriptor> {
    let one = |id, start: Vec<u8>, end| ShardDescriptor {
        id,
        start,
        end,
        epoch: Some(WireEpoch { version: 1, conf_ver: 1 }),
        replicas: vec![Replica { node_id: node, role: ReplicaRole::Voter as i32 }],
        merging_into: None,
    };
    vec![one(META_SHARD_ID, vec![SYSTEM_KEY_PREFIX], None), one(1, Vec::new(), Some(vec![SYSTEM_KEY_PREFIX]))]
}

/// Does `e` count against the shard's health (its error rate, `presage_shardmgr::LoadReport`)?
/// Routing answers (not the leader, a stale epoch, no such shard), a client's own mistakes
/// (a failed condition, an invalid request) and a superseded request do not.
pub fn is_shard_fault(e: &Error) -> bool {
    match e {
        Error::NotLeader { .. }
        | Error::EpochNotMatch { .. }
        | Error::ShardNotFound { .. }
        | Error::ConditionFailed { .. }
        | Error::Invalid(_)
        | Error::Superseded { .. }
        | Error::TransferRefused { .. }
        | Error::SwapRefused { .. }
        | Error::ChecksumNotReady { .. }
        | Error::ChecksumMissed { .. } => false,
        Error::ProposalDropped { .. }
        | Error::OutcomeUnknown { .. }
        | Error::Busy
        | Error::Unresponsive { .. }
        | Error::Stopped
        | Error::DiskFailed
        | Error::Config(_)
        | Error::Engine(_)
        | Error::Corrupt { .. }
        | Error::Raft(_)
        | Error::Thread(_) => true,
    }
}

/// The protocol error for a replication error; `write` tells whether the request wrote (an
/// unknown outcome matters only then).
pub fn proto_error(e: Error, write: bool) -> ProtoError {
    match e {
        Error::NotLeader { shard_id, leader } => ProtoError::NotLeader { shard: shard_id, leader },
        Error::EpochNotMatch { shard_id, current } => ProtoError::EpochNotMatch {
            shard: shard_id,
            current: current.iter().map(|d| shard_meta(d, None)).collect(),
        },
        Error::ShardNotFound { shard_id } => ProtoError::ShardNotFound { shard: shard_id },
        Error::ProposalDropped { .. }
        | Error::Busy
        | Error::TransferRefused { .. }
        | Error::SwapRefused { .. }
        | Error::ChecksumNotReady { .. }
        | Error::ChecksumMissed { .. } => ProtoError::Retry(e.to_string()),
        Error::Unresponsive { .. } | Error::DiskFailed => ProtoError::Unavailable(e.to_string()),
        Error::OutcomeUnknown { shard_id, .. } if write => ProtoError::OutcomeUnknown { shard: shard_id },
        Error::OutcomeUnknown { .. } => ProtoError::Retry(e.to_string()),
        Error::ConditionFailed { key, current, .. } => ProtoError::ConditionFailed { key, current },
        Error::Invalid(why) => ProtoError::Invalid(why),
        Error::Stopped if !write => ProtoError::Retry(e.to_string()),
        Error::Superseded { .. } => ProtoError::Superseded(e.to_string()),
        Error::Stopped
        | Error::Config(_)
        | Error::Engine(_)
        | Error::Corrupt { .. }
        | Error::Raft(_)
        | Error::Thread(_) => ProtoError::Internal(e.to_string()),
    }
}
