//! How the shard manager's persisted state lies in the meta shard: one JSON record per key,
//! under the system key space (`0xff`), which only the meta shard holds.
//!
//! | key | value |
//! |---|---|
//! | `\xffm/cluster` | [`ClusterMeta`] (settings fixed at bootstrap, id allocator) |
//! | `\xffm/n/{id:016x}` | [`NodeMeta`] |
//! | `\xffm/g/{id:016x}` | [`GroupMeta`] |
//! | `\xffm/s/{id:016x}` | [`ShardRecord`] (directory entry at the highest epoch seen) |
//! | `\xffm/o/{id:016x}` | [`Operator`] |
//! | `\xffm/m/{id:016x}` | [`Migration`] |
//! | `\xffm/e/{id:016x}` | [`KnownEvent`] (maintenance windows, load spikes) |
//! | `\xffm/c/{start_ms:016x}` | [`CapacityBucket`] (every node's bytes and load in one bucket) |
//! | `\xffm/f/{shard:016x}` | [`SeriesRecord`] (a shard's load history, for its forecast) |
//! | `\xffm/x/{id:016x}` | [`MitigationRecord`] (a mitigation and its judgement) |
//!
//! Soft state (loads, samples, node stats) is not persisted: a new manager rebuilds it from
//! heartbeats within a few intervals. The failure analysis keeps its own records under
//! `\xffp/` (outside [`META_PREFIX`], so a manager's start does not read them whole).

use serde::{Deserialize, Serialize};

use crate::capacity::CapacityBucket;
use crate::error::{Error, Result};
use crate::events::KnownEvent;
use crate::feedback::MitigationRecord;
use crate::forecast::SeriesRecord;
use crate::model::Migration;
use crate::model::{ClusterMeta, GroupId, GroupMeta, NodeMeta, ShardMeta};
use crate::operator::Operator;

/// First key of the manager's records.
pub const META_PREFIX: &[u8] = b"\xffm/";

/// A shard's persisted directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The shard at the highest epoch the manager saw.
    pub shard: ShardMeta,
    /// The replication group its replicas belong in.
    pub group: GroupId,
    /// When it last split or was split off (ms, manager clock), to hold merges off.
    pub split_at_ms: Option<u64>,
}

/// One write to the meta shard: set `key` to `value`, or delete it when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

/// Key of the cluster record.
pub fn cluster_key() -> Vec<u8> {
    [META_PREFIX, b"cluster"].concat()
}

fn id_key(kind: u8, id: u64) -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.push(kind);
    k.push(b'/');
    k.extend_from_slice(format!("{id:016x}").as_bytes());
    k
}

/// Key of node `id`.
pub fn node_key(id: u64) -> Vec<u8> {
    id_key(b'n', id)
}

/// Key of group `id`.
pub fn group_key(id: u64) -> Vec<u8> {
    id_key(b'g', id)
}

/// Key of shard `id`.
pub fn shard_key(id: u64) -> Vec<u8> {
    id_key(b's', id)
}

/// Key of operator `id`.
pub fn operator_key(id: u64) -> Vec<u8> {
    id_key(b'o', id)
}

/// Key of migration `id`.
pub fn migration_key(id: u64) -> Vec<u8> {
    id_key(b'm', id)
}

/// Key of known event `id`.
pub fn event_key(id: u64) -> Vec<u8> {
    id_key(b'e', id)
}

/// Key of a mitigation record.
pub fn mitigation_key(id: u64) -> Vec<u8> {
    id_key(b'x', id)
}

/// Key of a shard's load history.
pub fn history_key(shard: u64) -> Vec<u8> {
    id_key(b'f', shard)
}

/// Key of the capacity history's bucket starting at `start_ms`.
pub fn capacity_key(start_ms: u64) -> Vec<u8> {
    id_key(b'c', start_ms)
}

/// A write that stores `value` at `key`.
pub fn put<T: Serialize>(key: Vec<u8>, value: &T) -> MetaWrite {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    let value = serde_json::to_vec(value).unwrap_or_default();
    MetaWrite { key, value: Some(value) }
}

/// Everything the manager persisted, as read back from the meta shard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistedState {
    /// `None` until the first manager initialised the cluster.
    pub cluster: Option<ClusterMeta>,
    /// Nodes.
    pub nodes: Vec<NodeMeta>,
    /// Groups.
    pub groups: Vec<GroupMeta>,
    /// Directory entries.
    pub shards: Vec<ShardRecord>,
    /// Operators, running and finished.
    pub operators: Vec<Operator>,
    /// Migrations, running and finished.
    pub migrations: Vec<Migration>,
    /// Known events, scheduled, running and finished.
    pub events: Vec<KnownEvent>,
    /// The capacity history's buckets.
    pub capacity: Vec<CapacityBucket>,
    /// The shards' load histories.
    pub histories: Vec<SeriesRecord>,
    /// Mitigations and their judgements.
    pub mitigations: Vec<MitigationRecord>,
}

impl PersistedState {
    /// Decodes the meta shard's pairs (any order; keys outside [`META_PREFIX`] are skipped).
    pub fn decode<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Self> {
        fn parse<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T> {
            serde_json::from_slice(value)
                .map_err(|e| Error::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() })
        }
        let mut out = PersistedState::default();
        let cluster = cluster_key();
        for (key, value) in pairs {
            let Some(rest) = key.strip_prefix(META_PREFIX) else { continue };
            if key == cluster.as_slice() {
                out.cluster = Some(parse(key, value)?);
                continue;
            }
            match rest.first() {
                Some(b'n') => out.nodes.push(parse(key, value)?),
                Some(b'g') => out.groups.push(parse(key, value)?),
                Some(b's') => out.shards.push(parse(key, value)?),
                Some(b'o') => out.operators.push(parse(key, value)?),
                Some(b'm') => out.migrations.push(parse(key, value)?),
                Some(b'e') => out.events.push(parse(key, value)?),
                Some(b'c') => out.capacity.push(parse(key, value)?),
                Some(b'f') => out.histories.push(parse(key, value)?),
                Some(b'x') => out.mitigations.push(parse(key, value)?),
                // A kind a newer version writes (during a rolling upgrade): not this version's
                // to read, and not a reason to refuse to run the manager.
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeState;

    #[test]
    fn round_trip_and_corruption() {
        let node = NodeMeta {
            id: 3,
            raft_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:2".into(),
            resp_addr: String::new(),
            admin_addr: String::new(),
            region: "eu-1".into(),
            capacity_bytes: 1 << 30,
            capacity_qps: 0,
            state: NodeState::Up,
            group: Some(1),
            insecure: false,
        };
        let cluster = ClusterMeta { cluster_id: 42, replication_factor: 3, next_id: 10, scheduler_paused: false };
        let writes = [put(node_key(3), &node), put(cluster_key(), &cluster)];
        let pairs: Vec<(&[u8], &[u8])> =
            writes.iter().map(|w| (w.key.as_slice(), w.value.as_deref().unwrap_or_default())).collect();
        let state = PersistedState::decode(pairs).expect("decode");
        assert_eq!(state.cluster, Some(cluster));
        assert_eq!(state.nodes, vec![node]);
        let bad = PersistedState::decode([(node_key(4).as_slice(), b"{not json".as_slice())]);
        assert!(matches!(bad, Err(Error::Corrupt { .. })), "{bad:?}");
        // A record kind from a newer version is skipped (a rolling upgrade), not refused.
        let newer = PersistedState::decode([(b"\xffm/z/0000000000000001".as_slice(), b"{}".as_slice())]);
        assert_eq!(newer.ok(), Some(PersistedState::default()));
        assert!(node_key(2) < node_key(10), "ids sort numerically");
    }
}
