//! Checksum rounds: a `ComputeChecksum` entry changes no data; apply stops right after it on
//! every replica so that the store pins the engine at exactly that index for the range
//! checksum the leader and the verified replica compare.

use super::*;

impl<E: Engine> Peer<E> {
    /// Applies a `ComputeChecksum`: no data changes; if it is valid at this position (the
    /// same on every replica), apply stops after it so that the store pins the engine with
    /// this shard's data exactly as of `index` (see [`Peer::apply`]).
    pub(super) fn apply_compute_checksum(&mut self, epoch: Epoch, index: u64, applied: &mut Applied<E>) -> Result<()> {
        self.check_admin(epoch, &AdminEntry::ComputeChecksum)?;
        let range = self.descriptor().range()?;
        applied.checksum_at = Some((index, range));
        Ok(())
    }

    /// Drops the pinned checksum snapshot (a Raft snapshot replaces this replica's data).
    pub(crate) fn drop_checksum_pin(&mut self) {
        self.checksum_pin = None;
    }
}
