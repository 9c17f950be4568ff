//! Roll-forward of a snapshot install that a crash interrupted.
//!
//! Installing a snapshot changes two things that cannot share one atomic write: the shard's
//! data (the staged copy switched in by [`snapshot::install`], an ingested file, durable at
//! once) and its Raft metadata (apply and log state, descriptor, request records; written by
//! the round's log job). A crash between them would leave new data under old metadata, and
//! the replica would replay its old log over the snapshot's data: a conditional write
//! decided again against other data can diverge from the other replicas.
//!
//! Walk-through:
//! 1. **mark** (`ready.rs`): before switching the data in, the store writes the whole Raft
//!    snapshot (metadata and descriptor) under `keys::pending_snapshot_key`, synced. The
//!    staged copy is complete and durable by then (every chunk was staged synced).
//! 2. **install**: the staged data is switched in, and the staging cleared (synced).
//! 3. **metadata**: the round's log job writes the new metadata and deletes the mark in the
//!    same batch.
//!
//! At open ([`finish_pending_snapshots`]), a mark means step 3 never landed. What is staged
//! for the shard tells how far step 2 got:
//! - the complete stream of the marked snapshot: step 2 had not finished (or not started);
//!   it is switched in now. If that fails (the staged copy does not verify), the range is
//!   untouched: the staging is dropped and the mark deleted, the replica keeps its old state
//!   and fetches the snapshot again, as before the install began;
//! - nothing: step 2 finished (clearing the staging is its last write);
//! - anything else cannot follow from the walk-through above: the open fails, naming the
//!   shard, rather than guess.
//!
//! Then the metadata is written as step 3 would have, replicas the snapshot superseded are
//! dropped, and the mark deleted, all in one synced batch. A crash before the mark leaves the
//! old state whole; after step 3 there is no mark.

use super::*;

/// Finishes every interrupted snapshot install under `engine` (see the module doc).
pub(super) fn finish_pending_snapshots<E: Engine>(engine: &E, node_id: u64) -> Result<()> {
    let mut pending = Vec::new();
    for_each_pair(engine, Cf::Meta, &keys::pending_snapshot_range(), |k, v| {
        pending.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    for (key, raw) in pending {
        finish_one(engine, node_id, &key, &raw)?;
    }
    Ok(())
}

fn finish_one<E: Engine>(engine: &E, node_id: u64, key: &[u8], raw: &[u8]) -> Result<()> {
    let snap: raft::eraftpb::Snapshot = wire::decode("pending snapshot", raw)?;
    let data: SnapshotData = wire::decode("snapshot data", &snap.data)?;
    let desc = data.descriptor.ok_or(Error::Corrupt { what: "pending snapshot", reason: "no descriptor".into() })?;
    let (shard_id, range, index) = (desc.id, desc.range()?, snap.get_metadata().index);
    if key != keys::pending_snapshot_key(shard_id).as_slice() {
        return Err(Error::Corrupt {
            what: "pending snapshot",
            reason: format!("stored under another shard's key: {key:?}"),
        });
    }
    let staged = snapshot::staged(engine, shard_id, &range, index)?;
    match staged {
        snapshot::Staged::Nothing => {}
        snapshot::Staged::Complete => {
            if let Err(e) = snapshot::install(engine, shard_id, &range) {
                tracing::warn!(node = node_id, shard = shard_id, index, error = %e,
                    "an interrupted snapshot install does not verify; dropped, the replica keeps its old state");
                snapshot::abort_staged(engine, shard_id)?;
                let mut wb = WriteBatch::new();
                wb.delete(Cf::Meta, key.to_vec());
                engine.write(&wb, WriteOptions::SYNC)?;
                return Ok(());
            }
        }
        snapshot::Staged::Other => {
            return Err(Error::Corrupt {
                what: "pending snapshot",
                reason: format!(
                    "shard {shard_id}: snapshot {index} is marked as being installed but another import is staged"
                ),
            });
        }
    }
    let mut wb = WriteBatch::new();
    for other in stored_descriptors(engine)? {
        if other.id != shard_id && other.overlaps(&desc) {
            crate::storage::destroy_metadata(&other, &mut wb);
        }
    }
    crate::dedup::clear(&mut wb, shard_id);
    crate::dedup::write_all(&mut wb, shard_id, &data.requests);
    let mut storage = PeerStorage::for_pending_snapshot(engine.clone(), desc.clone())?;
    storage.apply_snapshot_metadata(&snap, desc, &mut wb);
    wb.delete(Cf::Meta, key.to_vec());
    engine.write(&wb, WriteOptions::SYNC)?;
    tracing::warn!(node = node_id, shard = shard_id, index, ?staged, "interrupted snapshot install finished at open");
    Ok(())
}

fn stored_descriptors<E: Engine>(engine: &E) -> Result<Vec<ShardDescriptor>> {
    let mut out = Vec::new();
    for_each_pair(engine, Cf::Meta, &keys::descriptor_range(), |_, v| {
        // An undecodable descriptor fails the open right after this (`Store::open`).
        if let Ok(d) = wire::decode::<ShardDescriptor>("shard descriptor", v) {
            out.push(d);
        }
        Ok(())
    })?;
    Ok(out)
}
