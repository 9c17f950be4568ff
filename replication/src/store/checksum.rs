//! Checksum pins: right after each batch write, every replica that applied a `ComputeChecksum`
//! into it gets one shared engine snapshot as its pin (the newest only, dropped on a snapshot
//! install, after `CHECKSUM_PIN_MAX_AGE_SECS` or with the replica).

use super::*;

impl<E: Engine> Store<E> {
    /// Drops checksum pins older than [`CHECKSUM_PIN_MAX_AGE_SECS`].
    pub(super) fn expire_checksum_pins(&mut self) {
        let max_age = Duration::from_secs(CHECKSUM_PIN_MAX_AGE_SECS);
        let now = self.now;
        let peers = &mut self.peers;
        self.pinned.retain(|shard_id| {
            let Some(peer) = peers.get_mut(shard_id) else { return false };
            match &peer.checksum_pin {
                Some(pin) if now.saturating_duration_since(pin.taken_at) >= max_age => {
                    peer.checksum_pin = None;
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    /// Pins the engine for every replica that applied a `ComputeChecksum` into the batch just
    /// written (`round`: what each replica's apply did this round): apply stopped right after that entry, so the engine now holds the
    /// shard's data exactly as of its index. One engine snapshot serves them all.
    pub(super) fn pin_checksums(&mut self, round: &mut BTreeMap<u64, Applied<E>>, written: bool) {
        let mut snapshot: Option<Arc<E::Snapshot>> = None;
        for (shard_id, applied) in round.iter_mut() {
            let Some((index, range)) = applied.checksum_at.take() else { continue };
            let Some(peer) = self.peers.get_mut(shard_id) else { continue };
            debug_assert!(written, "shard {shard_id}: a ComputeChecksum applied into a batch that was not written");
            debug_assert_eq!(
                peer.raw.store().applied_index(),
                index,
                "shard {shard_id}: nothing applies after a ComputeChecksum before its data is pinned"
            );
            let snapshot = Arc::clone(snapshot.get_or_insert_with(|| Arc::new(self.engine.snapshot())));
            peer.checksum_pin = Some(ChecksumPin { index, range, snapshot, taken_at: self.now });
            self.pinned.insert(*shard_id);
        }
    }

    /// This replica's data pinned at `index` by a `ComputeChecksum`, with the shard's range
    /// then. `ChecksumNotReady` while `index` is not applied here; `ChecksumMissed` when it
    /// applied past `index` without a pin there (it caught up by snapshot, a newer checksum
    /// replaced it, the pin expired, or the entry was refused at apply).
    pub fn checksum_pin(&self, shard_id: u64, index: u64) -> Result<PinnedData> {
        let peer = self.peers.get(&shard_id).ok_or(Error::ShardNotFound { shard_id })?;
        match &peer.checksum_pin {
            Some(pin) if pin.index == index => {
                let reader: Arc<dyn Reader + Send + Sync> = Arc::clone(&pin.snapshot) as _;
                Ok(PinnedData { index, range: pin.range.clone(), reader })
            }
            _ => {
                let applied = peer.raw.store().applied_index();
                if applied < index {
                    Err(Error::ChecksumNotReady { shard_id, index, applied })
                } else {
                    Err(Error::ChecksumMissed { shard_id, index })
                }
            }
        }
    }
}
