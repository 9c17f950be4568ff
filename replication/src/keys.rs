//! Where replication state lives in the engine.
//!
//! `Raft` key space, per shard (big-endian ids and indexes, so keys sort numerically):
//! - `l <shard u64> <index u64>` -> `eraftpb::Entry` (the log)
//! - `s <shard u64>` -> `RaftLocalState` (hard state, last index)
//! - `a <shard u64>` -> `ApplyState` (applied index, truncated index and term; written in the
//!   same batch as the data it describes)
//!
//! `Meta` key space:
//! - `d <shard u64>` -> `ShardDescriptor` (range, epoch, replicas; written with the apply
//!   state that changed it)
//! - `r <shard u64> <client u64> <slot u32>` -> `SlotRecord` (the last request of that client
//!   slot the shard applied; see `crate::dedup`)
//! - `t <shard u64>` -> tombstone (`conf_ver` of the removal)
//! - `p <shard u64>` -> `eraftpb::Snapshot` being installed (written, synced, before its data
//!   is switched in; deleted with the metadata it leads to; see `store::recover`)

use presage_engine::KeyRange;

fn shard_key(prefix: u8, shard_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&shard_id.to_be_bytes());
    k
}

/// Key of log entry `index` of `shard_id`.
pub fn log_key(shard_id: u64, index: u64) -> Vec<u8> {
    let mut k = shard_key(b'l', shard_id);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Log keys of `shard_id` from `low` (inclusive) to `high` (exclusive; at least `low + 1`).
pub fn log_range(shard_id: u64, low: u64, high: u64) -> KeyRange {
    let (start, end) = (log_key(shard_id, low), log_key(shard_id, high.max(low.saturating_add(1))));
    // Both keys are 17 bytes and `start < end` by construction; a failure here is a bug, and
    // must never widen into a range delete over other shards' logs.
    KeyRange::new(start, Some(end)).expect("log range keys are short and ordered")
}

/// Index encoded in a log key.
pub fn index_of_log_key(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Key of the Raft local state of `shard_id`.
pub fn raft_state_key(shard_id: u64) -> Vec<u8> {
    shard_key(b's', shard_id)
}

/// Key of the apply state of `shard_id`.
pub fn apply_state_key(shard_id: u64) -> Vec<u8> {
    shard_key(b'a', shard_id)
}

/// Key of the descriptor of `shard_id` (in `Meta`).
pub fn descriptor_key(shard_id: u64) -> Vec<u8> {
    shard_key(b'd', shard_id)
}

/// Key of the tombstone of `shard_id` (in `Meta`): the `conf_ver` at which this node's
/// replica was removed; messages from older configurations may not recreate it.
pub fn tombstone_key(shard_id: u64) -> Vec<u8> {
    shard_key(b't', shard_id)
}

/// Key of the request record of (`client`, `slot`) in `shard_id` (in `Meta`).
pub fn request_key(shard_id: u64, client: u64, slot: u32) -> Vec<u8> {
    let mut k = shard_key(b'r', shard_id);
    k.extend_from_slice(&client.to_be_bytes());
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// Every request record key of `shard_id` (in `Meta`).
pub fn request_range(shard_id: u64) -> KeyRange {
    let end = match shard_id.checked_add(1) {
        Some(next) => shard_key(b'r', next),
        None => vec![b'r' + 1],
    };
    KeyRange::new(shard_key(b'r', shard_id), Some(end)).expect("request keys of one shard form a valid range")
}

/// Key of the snapshot of `shard_id` being installed (in `Meta`).
pub fn pending_snapshot_key(shard_id: u64) -> Vec<u8> {
    shard_key(b'p', shard_id)
}

/// Every pending snapshot key (in `Meta`).
pub fn pending_snapshot_range() -> KeyRange {
    KeyRange::new(vec![b'p'], Some(vec![b'q'])).expect("constant range is valid")
}

/// Every descriptor key (in `Meta`).
pub fn descriptor_range() -> KeyRange {
    KeyRange::new(vec![b'd'], Some(vec![b'e'])).expect("constant range is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index_and_round_trip() {
        assert!(log_key(1, 9) < log_key(1, 10));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert_eq!(index_of_log_key(&log_key(7, 12345)), Some(12345));
        let r = log_range(3, 5, 8);
        assert!(r.contains(&log_key(3, 5)) && r.contains(&log_key(3, 7)) && !r.contains(&log_key(3, 8)));
    }

    #[test]
    fn request_keys_stay_inside_their_shards_range() {
        let r = request_range(4);
        assert!(r.contains(&request_key(4, 0, 0)) && r.contains(&request_key(4, u64::MAX, u32::MAX)));
        assert!(!r.contains(&request_key(3, u64::MAX, u32::MAX)) && !r.contains(&request_key(5, 0, 0)));
        assert!(request_range(u64::MAX).contains(&request_key(u64::MAX, 1, 1)));
        assert!(!request_range(u64::MAX).contains(&tombstone_key(0)));
    }
}
