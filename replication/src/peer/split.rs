//! Split: a `Split` admin entry at the shard's epoch keeps the left part here and writes the
//! right part's initial Raft state in the same batch, both at `version` + 1, and copies the
//! shard's request records to the new shard (a client may retry there a write applied here);
//! the store starts the new replica after the batch.

use super::*;

impl<E: Engine> Peer<E> {
    /// Applies a split: this shard keeps the left part, a new shard starts on the right part
    /// with the same replicas and an initial Raft state, all in `wb` with the apply index.
    /// The outer `Result` is the node's (reading the request records failed).
    pub(super) fn apply_split(
        &mut self,
        epoch: Epoch,
        split: Split,
        now_ms: u64,
        wb: &mut WriteBatch,
        applied: &mut Applied<E>,
    ) -> Result<Result<()>> {
        if let Err(e) = self.check_admin(epoch, &AdminEntry::Split(split.clone())) {
            return Ok(Err(e));
        }
        self.end_lease();
        let mut left = self.descriptor().clone();
        let mut new_epoch = left.epoch();
        new_epoch.version += 1;
        let right = ShardDescriptor {
            id: split.new_shard_id,
            start: split.split_key.clone(),
            end: left.end.take(),
            epoch: Some(new_epoch),
            replicas: left.replicas.clone(),
            merging_into: None,
        };
        left.end = Some(split.split_key);
        left.epoch = Some(new_epoch);
        debug_assert!(left.range().is_ok() && right.range().is_ok(), "both halves are valid ranges");
        tracing::info!(shard = left.id, new_shard = right.id, version = new_epoch.version, "shard split");
        let engine = self.raw.store().engine().clone();
        self.siblings.push_front(right.clone());
        self.siblings.truncate(MAX_SPLIT_SIBLINGS);
        if engine.get(Cf::Raft, &crate::keys::raft_state_key(right.id))?.is_some() {
            // This node already has a replica of the new shard (it got a snapshot of it before
            // replaying the split): that one is newer; keep it.
            tracing::info!(shard = right.id, "split replayed after the new shard arrived here; keeping it");
        } else {
            let (records, _) = crate::dedup::records(&engine, &self.known_records, left.id, Some(now_ms))?;
            crate::dedup::write_all(wb, right.id, &records);
            applied.split_created.push(PeerStorage::initial(engine, right, wb));
        }
        self.raw.mut_store().set_descriptor(left, wb);
        Ok(Ok(()))
    }
}
