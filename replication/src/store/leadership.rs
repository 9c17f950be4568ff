//! Moving leaderships: a transfer to a chosen voter (the shard manager's balance and
//! migrations, a graceful shutdown), shedding every leadership of the node to its most
//! caught-up voters (the node's own disk check, fail-stop), and a forced campaign.
//!
//! A transfer is refused unless the target is a voter that is caught up (within
//! `max-transfer-lag-entries`), not receiving a snapshot, and heard from within the last
//! election timeout: raft-rs drops every proposal while a transfer is pending, until the
//! transferee takes over or an election timeout passes, so a transfer towards a node that
//! cannot take over costs the shard its writes for that long. The lease ends before the
//! transfer starts (the transferee campaigns past the followers' election timers).

use super::*;

impl<E: Engine> Store<E> {
    /// Asks the leader of `shard_id` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, shard_id: u64, to: u64) -> Result<()> {
        self.wake(shard_id);
        let max_lag = self.config.max_transfer_lag_entries;
        let receiving_snapshot = self.outgoing.iter().any(|o| o.shard_id == shard_id && o.to == to);
        let peer = self.peers.get_mut(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        if !peer.is_leader() {
            return Err(Error::NotLeader { shard_id, leader: peer.leader() });
        }
        let refuse = |reason: String| Err(Error::TransferRefused { shard_id, to, reason });
        if !peer.descriptor().replicas.iter().any(|r| r.node_id == to && r.is_voter()) {
            return refuse("not a voter of the shard".into());
        }
        let last = peer.raw.raft.raft_log.last_index();
        let Some(progress) = peer.raw.raft.prs().get(to) else { return refuse("no replication progress".into()) };
        if receiving_snapshot || progress.state == raft::ProgressState::Snapshot {
            return refuse("still receiving a snapshot".into());
        }
        if progress.matched + max_lag < last {
            return refuse(format!("{} entries behind (limit {max_lag})", last - progress.matched));
        }
        // raft-rs drops every proposal while a transfer is pending, until the transferee
        // takes over or an election timeout passes: never start one towards a node that
        // has not answered within the last election timeout (down, cut off, or stalled).
        if !progress.recent_active {
            return refuse("has not answered recently".into());
        }
        // The transferee campaigns at once, past the followers' election timers: the lease
        // that relies on those timers ends here.
        peer.end_lease();
        peer.raw.transfer_leader(to);
        Ok(())
    }

    /// Hands every leadership of this node to the voter most caught up with it (a slow or
    /// failing disk here: the node's local check decided). Returns the transfers started,
    /// `(shard, to)`; a shard without a voter the transfer accepts stays led here.
    pub fn shed_leaderships(&mut self) -> Vec<(u64, u64)> {
        let led: Vec<u64> = self.peers.iter().filter(|(_, p)| p.is_leader()).map(|(id, _)| *id).collect();
        self.hand_on(&led)
    }

    /// Hands each of `shards` this node leads to the voter most caught up with it; returns
    /// the transfers started.
    pub(super) fn hand_on(&mut self, shards: &[u64]) -> Vec<(u64, u64)> {
        let me = self.node_id;
        let led: Vec<(u64, Vec<u64>)> = shards
            .iter()
            .filter_map(|id| Some((*id, self.peers.get(id).filter(|p| p.is_leader())?)))
            .map(|(id, p)| {
                let mut voters: Vec<(u64, u64)> = p
                    .descriptor()
                    .replicas
                    .iter()
                    .filter(|r| r.is_voter() && r.node_id != me)
                    .map(|r| (p.raw.raft.prs().get(r.node_id).map_or(0, |pr| pr.matched), r.node_id))
                    .collect();
                // Most caught up first; ties by node id, so that a run replays.
                voters.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                (id, voters.into_iter().map(|(_, n)| n).collect())
            })
            .collect();
        let mut started = Vec::new();
        for (shard_id, voters) in led {
            if let Some(to) = voters.into_iter().find(|to| self.transfer_leader(shard_id, *to).is_ok()) {
                started.push((shard_id, to));
            }
        }
        started
    }

    /// Makes the replica of `shard_id` campaign now.
    pub fn campaign(&mut self, shard_id: u64) -> Result<()> {
        self.wake(shard_id);
        if self.peers.get(&shard_id).is_some_and(Peer::must_persist_before_campaign) {
            let out = self.flush_log_writes()?;
            self.pending_out.extend(out);
        }
        let peer = self.peers.get_mut(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        peer.raw.campaign()?;
        Ok(())
    }
}
