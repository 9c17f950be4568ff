//! Merge: `PrepareMerge` freezes the source; `CommitMerge` (on the target, once every source
//! replica confirmed the freeze) extends the target, takes the source's request records over
//! (per client slot, the later request) and destroys the source's metadata in the same batch;
//! `RollbackMerge` unfreezes the source when no `CommitMerge` can apply any more.

use super::*;

impl<E: Engine> Peer<E> {
    /// Freezes this shard for its merge into `target`.
    pub(super) fn apply_prepare_merge(
        &mut self,
        epoch: Epoch,
        target: ShardDescriptor,
        wb: &mut WriteBatch,
    ) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::PrepareMerge(target.clone()))?;
        let mut desc = self.descriptor().clone();
        desc.merging_into = Some(target.id);
        desc.epoch = Some(Epoch { version: epoch.version + 1, ..desc.epoch() });
        tracing::info!(shard = desc.id, target = target.id, "shard frozen to merge");
        self.end_lease();
        self.raw.mut_store().set_descriptor(desc, wb);
        Ok(())
    }

    /// Takes the frozen `source` over: the range grows over it and its replica here is
    /// destroyed, its data kept, in the same batch. The outer `Result` is the node's (reading
    /// the request records failed).
    pub(super) fn apply_commit_merge(
        &mut self,
        epoch: Epoch,
        source: ShardDescriptor,
        now_ms: u64,
        wb: &mut WriteBatch,
        applied: &mut Applied<E>,
    ) -> Result<Result<()>> {
        self.end_lease();
        if let Err(e) = self.check_admin(epoch, &AdminEntry::CommitMerge(source.clone())) {
            return Ok(Err(e));
        }
        let mut desc = self.descriptor().clone();
        // The source is the right neighbour (`check_admin`): the range grows at its end.
        desc.end = source.end.clone();
        let version = desc.epoch().version.max(source.epoch().version) + 1;
        desc.epoch = Some(Epoch { version, ..desc.epoch() });
        debug_assert!(desc.range().is_ok(), "a merged range is valid");
        tracing::info!(shard = desc.id, source = source.id, version, "shards merged");
        self.sweep.expiring = true; // the source's values may expire too
                                    // The source froze in an earlier round (`must_wait`): its records are all in the engine.
        let engine = self.raw.store().engine().clone();
        let (records, _) = crate::dedup::records(&engine, &Default::default(), source.id, Some(now_ms))?;
        crate::dedup::take_over(&engine, wb, &mut self.known_records, desc.id, &records)?;
        crate::storage::destroy_metadata(&source, wb);
        self.siblings.retain(|s| s.id != source.id);
        applied.merged_sources.push(source.id);
        applied.merged = true;
        self.raw.mut_store().set_descriptor(desc, wb);
        Ok(Ok(()))
    }
}
