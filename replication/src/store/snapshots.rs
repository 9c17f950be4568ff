//! Snapshot transfers from this node: `MsgSnapshot`s are held back and their data streamed as
//! export chunks under the node's bandwidth budget; acknowledgements move the window, and the
//! outcome is reported to Raft.

use super::*;

impl<E: Engine> Store<E> {
    pub(super) fn report_snapshot(&mut self, shard_id: u64, to: u64, status: SnapshotStatus) {
        if let Some(peer) = self.peers.get_mut(&shard_id) {
            peer.raw.report_snapshot(to, status);
        }
    }

    pub(super) fn on_snapshot_ack(&mut self, env: &RaftEnvelope, ack: &wire::SnapshotAck) {
        let Some(i) = self.outgoing.iter().position(|o| o.shard_id == env.shard_id && o.to == env.from_node) else {
            return;
        };
        match self.outgoing[i].on_ack(ack) {
            AckOutcome::Continue => {}
            AckOutcome::Complete => {
                let o = self.outgoing.remove(i);
                tracing::info!(
                    node = self.node_id,
                    shard = o.shard_id,
                    to = o.to,
                    index = o.index,
                    bytes = o.bytes_sent,
                    "snapshot data delivered"
                );
                let desc = self.peers.get(&o.shard_id).map(|p| p.descriptor().clone());
                self.pending_out.push(RaftEnvelope {
                    shard_id: o.shard_id,
                    from_node: self.node_id,
                    to_node: o.to,
                    descriptor: desc,
                    message: Some(o.msg),
                    ..RaftEnvelope::default()
                });
                self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Finish);
            }
            AckOutcome::Failed(why) => {
                let o = self.outgoing.remove(i);
                tracing::warn!(node = self.node_id, shard = o.shard_id, to = o.to, reason = %why, "snapshot transfer failed");
                self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
            }
        }
    }

    pub(super) fn start_snapshots(&mut self, msgs: Vec<(u64, Message)>) {
        for (shard_id, msg) in msgs {
            let to = msg.to;
            let index = msg.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
            let Some(peer) = self.peers.get_mut(&shard_id) else { continue };
            let started = peer
                .raw
                .store()
                .take_generated(index)
                .map(|g| OutgoingSnapshot::new(to, msg, g.descriptor, g.data, &self.config));
            match started {
                Some(Ok(o)) => {
                    self.outgoing.retain(|x| !(x.shard_id == shard_id && x.to == to));
                    tracing::info!(node = self.node_id, shard = shard_id, to, index, "sending snapshot");
                    self.outgoing.push(o);
                }
                Some(Err(e)) => {
                    tracing::warn!(node = self.node_id, shard = shard_id, to, error = %e, "cannot start snapshot");
                    peer.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
                None => peer.raw.report_snapshot(to, SnapshotStatus::Failure),
            }
        }
    }

    pub(super) fn pump_snapshots(&mut self, out: &mut Vec<RaftEnvelope>) -> Result<()> {
        let node_id = self.node_id;
        let mut failed = Vec::new();
        for (i, o) in self.outgoing.iter_mut().enumerate() {
            if self.snapshot_budget_bytes <= 0 {
                break;
            }
            match o.pump(node_id, &self.config, self.snapshot_budget_bytes, out) {
                Ok(used) => {
                    self.snapshot_budget_bytes -= used;
                    self.snapshot_bytes_sent += u64::try_from(used).unwrap_or(0);
                }
                Err(e) => {
                    tracing::warn!(node = node_id, shard = o.shard_id, to = o.to, error = %e, "snapshot export failed");
                    failed.push(i);
                }
            }
        }
        for i in failed.into_iter().rev() {
            let o = self.outgoing.remove(i);
            self.report_snapshot(o.shard_id, o.to, SnapshotStatus::Failure);
        }
        Ok(())
    }
}
