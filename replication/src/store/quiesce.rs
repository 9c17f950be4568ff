//! Ticks and quiescence: only awake replicas are ticked; an idle, fully replicated leader sends
//! `quiesce` heartbeats and its group sleeps; nodes sharing sleeping groups ping each other once
//! per heartbeat interval and wake the groups of a node silent for an election timeout.

use super::*;

impl<E: Engine> Store<E> {
    /// Wakes a sleeping replica.
    pub(super) fn wake(&mut self, shard_id: u64) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            if peer.quiescent {
                self.ping_targets = None;
            }
            peer.wake();
            self.active.insert(shard_id);
        }
    }

    /// Wakes a sleeping replica for a client request, if it leads (a follower answers
    /// `NotLeader` asleep; waking it would only make it campaign).
    pub(super) fn wake_leader(&mut self, shard_id: u64) {
        if self.peers.get(&shard_id).is_some_and(|p| p.is_leader()) {
            self.wake(shard_id);
        }
    }

    /// Puts a replica to sleep.
    pub(super) fn quiesce(&mut self, shard_id: u64) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            peer.quiescent = true;
            // Between rounds: a sleeping replica keeps no request records in memory.
            peer.forget_known_records();
            self.active.remove(&shard_id);
            self.ping_targets = None;
        }
    }

    /// Advances the logical clock of every awake replica by one tick; puts idle groups to
    /// sleep and pings the nodes that share sleeping groups.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.check_clock();
        let max_read_age_ticks = 2 * self.config.election_ticks;
        let reissue_ticks = 2 * self.config.heartbeat_ticks;
        let quiesce_after = self.config.quiesce_after_ticks;
        let mut sleepers = Vec::new();
        for shard_id in &self.active {
            let Some(peer) = self.peers.get_mut(shard_id) else { continue };
            // A lone voter would win an election at once, and raft-rs wants its whole log
            // durable then: its clock waits for the writes in flight.
            if !peer.must_persist_before_campaign() {
                peer.raw.tick();
            }
            peer.hand_off_if_demoted();
            peer.expire_reads(max_read_age_ticks, reissue_ticks);
            peer.idle_ticks += 1;
            if quiesce_after > 0
                && peer.idle_ticks >= quiesce_after
                && !peer.raw.has_ready() // e.g. a heartbeat this tick queued: not a quiesce one
                && peer.can_quiesce()
                && !self.outgoing.iter().any(|o| o.shard_id == *shard_id)
            {
                sleepers.push(*shard_id);
            }
        }
        for shard_id in sleepers {
            self.quiesce_leader(shard_id);
        }
        // Replica reads waiting on sleeping followers (awake ones aged above).
        let (peers, active, touched) = (&mut self.peers, &self.active, &mut self.touched);
        self.reading.retain(|shard_id| {
            let Some(peer) = peers.get_mut(shard_id) else { return false };
            if !active.contains(shard_id) && peer.expire_reads(max_read_age_ticks, reissue_ticks) {
                touched.insert(*shard_id); // its round is asked again this round
            }
            peer.has_pending_reads()
        });
        if self.ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
            let requests_too = self.ticks.is_multiple_of(REQUEST_SWEEP_EVERY_TICKS);
            for shard_id in &self.active {
                let Some(peer) = self.peers.get_mut(shard_id) else { continue };
                if let Err(e) = peer.sweep_expired(SWEEP_PAGE_KEYS) {
                    tracing::warn!(node = self.node_id, shard = shard_id, error = %e, "expiry sweep failed");
                }
                if !requests_too {
                    continue;
                }
                if let Err(e) = peer.sweep_requests(crate::dedup::SWEEP_PAGE_RECORDS) {
                    tracing::warn!(node = self.node_id, shard = shard_id, error = %e, "request-record sweep failed");
                }
            }
        }
        self.expire_checksum_pins();
        self.check_liveness();
        let per_tick =
            i64::try_from(self.config.snapshot_bytes_per_tick(self.snapshot_rate_bytes_per_sec)).unwrap_or(i64::MAX);
        let cap = per_tick.saturating_add(i64::try_from(self.config.snapshot_chunk_bytes).unwrap_or(0));
        self.snapshot_budget_bytes = self.snapshot_budget_bytes.saturating_add(per_tick).min(cap);
        let node_id = self.node_id;
        let mut failed = Vec::new();
        for (i, o) in self.outgoing.iter_mut().enumerate() {
            if !o.on_tick(node_id, &self.config, &mut self.pending_out) {
                failed.push(i);
            }
        }
        for i in failed.into_iter().rev() {
            let o = self.outgoing.remove(i);
            tracing::warn!(node = node_id, shard = o.shard_id, to = o.to, "snapshot transfer timed out");
            self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
        }
    }

    /// Sends the followers of `shard_id` a last heartbeat marked `quiesce` and puts the
    /// leader to sleep.
    pub(super) fn quiesce_leader(&mut self, shard_id: u64) {
        let Some(peer) = self.peers.get(&shard_id) else { return };
        let r = &peer.raw.raft;
        let desc = peer.descriptor().clone();
        for (&to, pr) in r.prs().iter().filter(|(id, _)| **id != self.node_id) {
            let mut hb = Message::default();
            hb.set_msg_type(MessageType::MsgHeartbeat);
            hb.from = self.node_id;
            hb.to = to;
            hb.term = r.term;
            hb.commit = r.raft_log.committed.min(pr.matched); // as raft-rs's own heartbeats
            self.pending_out.push(RaftEnvelope {
                shard_id,
                from_node: self.node_id,
                to_node: to,
                descriptor: Some(desc.clone()),
                message: Some(hb),
                quiesce: true,
                ..RaftEnvelope::default()
            });
        }
        self.quiesce(shard_id);
    }

    /// Pings the nodes that share sleeping groups, and wakes the sleeping groups of nodes
    /// silent for longer than an election timeout.
    pub(super) fn check_liveness(&mut self) {
        if self.active.len() == self.peers.len() {
            return;
        }
        if self.ticks.is_multiple_of(self.config.heartbeat_ticks as u64) {
            let node_id = self.node_id;
            let targets = self.ping_targets.get_or_insert_with(|| {
                let mut t = BTreeSet::new();
                for p in self.peers.values().filter(|p| p.quiescent) {
                    t.extend(p.descriptor().replicas.iter().map(|r| r.node_id).filter(|n| *n != node_id));
                }
                t.into_iter().collect()
            });
            for &to in targets.iter() {
                self.pending_out.push(RaftEnvelope {
                    from_node: node_id,
                    to_node: to,
                    ping: true,
                    ..RaftEnvelope::default()
                });
            }
        }
        let timeout = self.config.election_ticks as u64;
        let newly_silent: Vec<u64> = self
            .last_heard
            .iter()
            .filter(|(n, at)| self.ticks.saturating_sub(**at) > timeout && !self.silent.contains(*n))
            .map(|(n, _)| *n)
            .collect();
        for n in newly_silent {
            self.silent.insert(n);
            let sleeping: Vec<u64> = self
                .peers
                .iter()
                .filter(|(_, p)| p.quiescent && p.descriptor().replicas.iter().any(|r| r.node_id == n))
                .map(|(id, _)| *id)
                .collect();
            if !sleeping.is_empty() {
                tracing::info!(
                    node = self.node_id,
                    silent = n,
                    groups = sleeping.len(),
                    "node silent: waking its sleeping groups"
                );
            }
            for shard_id in sleeping {
                self.wake(shard_id);
            }
        }
    }
}

impl<E: Engine> Store<E> {
    /// Measures the node's clock against its peers' (`crate::clock`) and says so when it
    /// falls out of sync or comes back; its leaders serve no leased read meanwhile.
    fn check_clock(&mut self) {
        let clock = &self.lease_views.clock;
        let (offset, changed) = clock.check();
        crate::metrics::set_clock(offset, clock.out_of_sync());
        if !changed {
            return;
        }
        if clock.out_of_sync() {
            tracing::error!(
                node = self.node_id,
                offset_ms = ?offset,
                max_offset_ms = clock.max_offset_ms(),
                "this node's clock is out of sync with its peers': no leased reads until it is back"
            );
        } else {
            tracing::warn!(node = self.node_id, offset_ms = ?offset, "this node's clock is back in sync with its peers'");
        }
    }
}
