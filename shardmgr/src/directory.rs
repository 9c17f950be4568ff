//! The shard directory: which shard holds a key, at the highest epoch seen.
//!
//! Shard descriptors are authoritative in each shard's own Raft state; a directory is a cache
//! of them (the shard manager's, built from heartbeats, and each client's, built from the
//! manager's answers and refreshed on `NotLeader`/`EpochNotMatch`). It never goes backwards:
//! a descriptor older than what it holds for the same shard, or overlapping a shard whose
//! `version` is at least as high, is refused (the PD model, design.md §3).
//!
//! `Directory`, shards by start key; `update` keeps the highest epoch seen and drops overlapped
//! entries of lower version; `get_shard(key)`. Used by the manager and by clients.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::model::{NodeId, ShardId, ShardMeta};

/// What [`Directory::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A shard it did not know.
    Inserted {
        /// Shards removed because the new one's higher version covers them.
        removed: Vec<ShardId>,
    },
    /// A newer epoch of a known shard.
    Newer {
        /// Shards removed because the new range's higher version covers them.
        removed: Vec<ShardId>,
    },
    /// Same epoch; the leader or merge flag may have changed.
    Same,
    /// Older than what the directory holds: ignored.
    Stale,
}

/// Shards by start key and by id.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_start: BTreeMap<Vec<u8>, ShardId>,
    by_id: HashMap<ShardId, ShardMeta>,
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Directory::default()
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when it holds no shard.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The shard with `id`.
    pub fn get(&self, id: ShardId) -> Option<&ShardMeta> {
        self.by_id.get(&id)
    }

    /// The shard holding `key`, if the directory knows it.
    pub fn get_shard(&self, key: &[u8]) -> Option<&ShardMeta> {
        let (_, id) = self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back()?;
        let shard = self.by_id.get(id)?;
        shard.contains(key).then_some(shard)
    }

    /// Shards in key order from the one holding `key` (or, if none does, the first one
    /// after it).
    pub fn iter_from<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a ShardMeta> + 'a {
        let first = self.get_shard(key).map_or_else(|| key.to_vec(), |s| s.start.clone());
        self.by_start.range::<Vec<u8>, _>(first..).filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Every shard in key order.
    pub fn iter(&self) -> impl Iterator<Item = &ShardMeta> + '_ {
        self.by_start.values().filter_map(|id| self.by_id.get(id))
    }

    /// Records `shard` unless the directory already holds something newer (module docs).
    pub fn update(&mut self, shard: ShardMeta) -> Update {
        let known = self.by_id.get(&shard.id);
        if let Some(cur) = known {
            if shard.epoch.is_stale(&cur.epoch) {
                return Update::Stale;
            }
            if shard.epoch == cur.epoch {
                let cur = self.by_id.get_mut(&shard.id).expect("present");
                if shard.leader.is_some() {
                    cur.leader = shard.leader;
                }
                cur.merging_into = shard.merging_into;
                return Update::Same;
            }
        }
        let overlapping: Vec<ShardId> =
            self.overlapping(&shard).filter(|s| s.id != shard.id).map(|s| s.id).collect::<Vec<_>>();
        if overlapping.iter().any(|id| self.by_id[id].epoch.version >= shard.epoch.version) {
            return Update::Stale;
        }
        let newer = known.is_some();
        if let Some(old) = self.by_id.remove(&shard.id) {
            self.by_start.remove(&old.start);
        }
        for id in &overlapping {
            if let Some(old) = self.by_id.remove(id) {
                self.by_start.remove(&old.start);
            }
        }
        self.by_start.insert(shard.start.clone(), shard.id);
        self.by_id.insert(shard.id, shard);
        if newer {
            Update::Newer { removed: overlapping }
        } else {
            Update::Inserted { removed: overlapping }
        }
    }

    /// Notes that `leader` leads `id` (a hint from a reply; no epoch change).
    pub fn set_leader(&mut self, id: ShardId, leader: Option<NodeId>) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.leader = leader;
        }
    }

    /// Forgets `id` (the shard is gone, or its entry is known to be wrong).
    pub fn remove(&mut self, id: ShardId) -> Option<ShardMeta> {
        let old = self.by_id.remove(&id)?;
        self.by_start.remove(&old.start);
        Some(old)
    }

    /// The shard ending where `shard` starts (its left neighbour), if known.
    pub fn left_neighbour(&self, shard: &ShardMeta) -> Option<&ShardMeta> {
        let (_, id) =
            self.by_start.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(shard.start.as_slice()))).next_back()?;
        self.by_id.get(id).filter(|s| s.end.as_deref() == Some(shard.start.as_slice()))
    }

    /// Shards sharing a key with `shard` (itself included if known).
    pub fn overlapping<'a>(&'a self, shard: &'a ShardMeta) -> impl Iterator<Item = &'a ShardMeta> + 'a {
        // The one starting at or before `start` may reach into the range; then every shard
        // starting inside it.
        let before = self
            .by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(shard.start.as_slice())))
            .next_back()
            .map(|(_, id)| *id);
        let inside = self
            .by_start
            .range::<[u8], _>((Bound::Excluded(shard.start.as_slice()), Bound::Unbounded))
            .take_while(move |(start, _)| shard.end.as_deref().is_none_or(|e| start.as_slice() < e))
            .map(|(_, id)| *id);
        before.into_iter().chain(inside).filter_map(|id| self.by_id.get(&id)).filter(move |s| s.overlaps(shard))
    }

    /// Checks the invariant: ranges are disjoint and every entry is indexed by its start.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.by_start.len() != self.by_id.len() {
            return Err(format!("{} starts for {} shards", self.by_start.len(), self.by_id.len()));
        }
        let mut prev: Option<&ShardMeta> = None;
        for s in self.iter() {
            if let Some(p) = prev {
                if p.end.as_deref().is_none_or(|e| e > s.start.as_slice()) {
                    return Err(format!("shard {} overlaps shard {}", p.id, s.id));
                }
            }
            prev = Some(s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Epoch, ReplicaMeta, Role};
    use proptest::prelude::*;

    fn shard(id: u64, start: &str, end: Option<&str>, version: u64) -> ShardMeta {
        ShardMeta {
            id,
            start: start.as_bytes().to_vec(),
            end: end.map(|e| e.as_bytes().to_vec()),
            epoch: Epoch { version, conf_ver: 1 },
            replicas: vec![ReplicaMeta { node: 1, role: Role::Voter }],
            leader: Some(1),
            merging_into: None,
        }
    }

    #[test]
    fn split_reports_in_either_order() {
        let mut d = Directory::new();
        d.update(shard(1, "", None, 1));
        // The split-off half reports first: it replaces the parent's stale range.
        assert_eq!(d.update(shard(2, "m", None, 2)), Update::Inserted { removed: vec![1] });
        assert!(d.get_shard(b"a").is_none(), "the left half has not reported yet");
        assert_eq!(d.update(shard(1, "", Some("m"), 2)), Update::Inserted { removed: vec![] });
        assert_eq!(d.get_shard(b"a").map(|s| s.id), Some(1));
        assert_eq!(d.get_shard(b"m").map(|s| s.id), Some(2));
        assert_eq!(d.get_shard(b"zzz").map(|s| s.id), Some(2));
        // A late report of the parent's old range is refused.
        assert_eq!(d.update(shard(1, "", None, 1)), Update::Stale);
        d.check().expect("disjoint");
    }

    #[test]
    fn merge_replaces_the_source() {
        let mut d = Directory::new();
        d.update(shard(1, "", Some("m"), 2));
        d.update(shard(2, "m", None, 2));
        assert_eq!(d.update(shard(1, "", None, 3)), Update::Newer { removed: vec![2] });
        assert_eq!(d.len(), 1);
        assert_eq!(d.update(shard(2, "m", None, 2)), Update::Stale, "the merged source reports late");
        d.check().expect("disjoint");
    }

    #[test]
    fn same_epoch_updates_the_leader_only() {
        let mut d = Directory::new();
        d.update(shard(1, "", None, 1));
        let mut s = shard(1, "", None, 1);
        s.leader = Some(3);
        assert_eq!(d.update(s), Update::Same);
        assert_eq!(d.get(1).and_then(|s| s.leader), Some(3));
        let mut conf = shard(1, "", None, 1);
        conf.epoch.conf_ver = 0;
        assert_eq!(d.update(conf), Update::Stale);
    }

    proptest! {
        /// Splits and merges reported in any order leave disjoint ranges, and once every
        /// shard's final descriptor arrived, the directory is exactly the final layout.
        #[test]
        fn any_report_order_converges(seed in 0u64..10_000, splits in 1usize..12) {
            use rand::{Rng, SeedableRng, seq::SliceRandom};
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            // Build a history of descriptors by splitting at random keys.
            let mut layout = vec![shard(1, "", None, 1)];
            let mut history = layout.clone();
            for i in 0..splits {
                let idx = rng.random_range(0..layout.len());
                let s = layout[idx].clone();
                let key = format!("{}{:02}", String::from_utf8_lossy(&s.start), rng.random_range(10..99));
                if !s.contains(key.as_bytes()) || key.as_bytes() == s.start.as_slice() { continue; }
                let v = s.epoch.version + 1;
                let left = ShardMeta { end: Some(key.as_bytes().to_vec()), epoch: Epoch { version: v, conf_ver: 1 }, ..s.clone() };
                let right = ShardMeta { id: 100 + i as u64, start: key.as_bytes().to_vec(), epoch: Epoch { version: v, conf_ver: 1 }, ..s.clone() };
                history.push(left.clone());
                history.push(right.clone());
                layout[idx] = left;
                layout.insert(idx + 1, right);
            }
            history.shuffle(&mut rng);
            let mut d = Directory::new();
            for s in history {
                d.update(s);
                prop_assert!(d.check().is_ok(), "seed {seed}: {:?}", d.check());
            }
            for s in &layout {
                d.update(s.clone());
            }
            let got: Vec<_> = d.iter().cloned().collect();
            prop_assert_eq!(got, layout, "seed {}", seed);
        }
    }
}
