//! Request records: a write retried with the same [`RequestId`] applies at most once.
//!
//! A client runs its writes in slots, one request at a time per slot, numbering each slot's
//! requests with a growing `seq`, and retries a request whose outcome it did not learn with
//! the same id (to any replica, after any leader change, split or merge). Every shard keeps,
//! per (client, slot), the last `seq` it applied (a [`SlotRecord`] in `Meta`, key
//! `keys::request_key`). Walk-through of one write:
//!
//! - propose: the id rides in the `EntryCommand`;
//! - apply, on every replica at the same log position: after the epoch and range checks, the
//!   record decides ([`Seen`]): a `seq` above the record's is new; the record's own `seq` was
//!   applied already, so the command answers `Ok` and writes nothing; a lower one was
//!   overtaken by a later request of the slot (the client gave up on it), so it is refused;
//! - a new command that applies (its checks held) writes its record in the same batch as its
//!   data. A command whose check failed records nothing: it had no effect, and a retry is
//!   decided afresh.
//!
//! The records follow the data: a split copies the shard's records to the new shard (the
//! client may retry there a write the parent applied), a merge takes the larger `seq` per slot
//! of both, a snapshot carries them, destroying a replica removes them.
//!
//! Records are forgotten after [`RECORD_TTL_MS`] without a write from their slot: the test
//! uses the applying command's `now_ms`, so every replica forgets alike. A client must not
//! retry a request for that long (its request timeout is seconds). Forgotten records are
//! dropped from the disk when a split, merge or snapshot copies them.

use std::collections::{BTreeMap, HashMap};

use presage_engine::{Cf, Reader, ScanLimit, ScanOrder, WriteBatch};

use crate::error::{Error, Result};
use crate::keys;
use crate::wire::{self, RequestId, SlotRecord};

/// A record whose slot wrote nothing to the shard for this long is forgotten.
pub const RECORD_TTL_MS: u64 = 10 * 60 * 1000;
/// Most records a shard copies on a split or merge, or sends in a snapshot (the most
/// recently used first); a client holds at most its `max-write-slots` slots.
pub const MAX_RECORDS_PER_SHARD: usize = 65_536;
/// Most bytes of records read at once (a record is about 50 bytes).
const MAX_RECORDS_BYTES: usize = 8 << 20;

/// What a shard's record says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not applied yet: apply it.
    New,
    /// Applied already: answer `Ok` and write nothing.
    Applied,
    /// The slot's request `last_seq` applied after it was sent: the client moved on.
    Superseded {
        /// The slot's last applied `seq`.
        last_seq: u64,
    },
}

/// Records written in the current apply round, by (client, slot): the batch they sit in is
/// not in the engine yet.
pub(crate) type RoundRecords = HashMap<(u64, u32), SlotRecord>;

/// Is `record` still remembered by a command at `now_ms`?
fn remembered(record: &SlotRecord, now_ms: u64) -> bool {
    now_ms <= record.last_ms.saturating_add(RECORD_TTL_MS)
}

/// What `shard_id` knows of `id`, for a command at `now_ms`.
pub(crate) fn look_up<R: Reader>(
    engine: &R,
    round: &RoundRecords,
    shard_id: u64,
    id: RequestId,
    now_ms: u64,
) -> Result<Seen> {
    let record = match round.get(&(id.client, id.slot)) {
        Some(r) => Some(*r),
        None => match engine.get(Cf::Meta, &keys::request_key(shard_id, id.client, id.slot))? {
            Some(bytes) => Some(wire::decode::<SlotRecord>("request record", &bytes)?),
            None => None,
        },
    };
    Ok(match record.filter(|r| remembered(r, now_ms)) {
        None => Seen::New,
        Some(r) if id.seq > r.last_seq => Seen::New,
        Some(r) if id.seq == r.last_seq => Seen::Applied,
        Some(r) => Seen::Superseded { last_seq: r.last_seq },
    })
}

/// Records that `shard_id` applied `id` by a command at `now_ms`.
pub(crate) fn record(wb: &mut WriteBatch, round: &mut RoundRecords, shard_id: u64, id: RequestId, now_ms: u64) {
    let r = SlotRecord { client: id.client, slot: id.slot, last_seq: id.seq, last_ms: now_ms };
    write(wb, shard_id, &r);
    round.insert((id.client, id.slot), r);
}

fn write(wb: &mut WriteBatch, shard_id: u64, r: &SlotRecord) {
    wb.put(Cf::Meta, keys::request_key(shard_id, r.client, r.slot), wire::encode(r));
}

/// The records of `shard_id` still remembered at `now_ms` (all of them when `now_ms` is
/// `None`), as of the engine overlaid with this round's, most recently used first, at most
/// [`MAX_RECORDS_PER_SHARD`].
pub(crate) fn records<R: Reader>(
    engine: &R,
    round: &RoundRecords,
    shard_id: u64,
    now_ms: Option<u64>,
) -> Result<Vec<SlotRecord>> {
    let range = keys::request_range(shard_id);
    // One more than kept, to tell whether any were left.
    let limit = ScanLimit::new(MAX_RECORDS_PER_SHARD + 1, MAX_RECORDS_BYTES);
    let page = engine.scan(Cf::Meta, &range, ScanOrder::Forward, limit)?;
    let mut all: BTreeMap<(u64, u32), SlotRecord> = BTreeMap::new();
    for (_, bytes) in &page.pairs {
        let r: SlotRecord = wire::decode("request record", bytes)?;
        all.insert((r.client, r.slot), r);
    }
    all.extend(round.iter().map(|(k, r)| (*k, *r)));
    let mut out: Vec<SlotRecord> = all.into_values().filter(|r| now_ms.is_none_or(|t| remembered(r, t))).collect();
    out.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.client.cmp(&b.client)).then(a.slot.cmp(&b.slot)));
    if page.more || out.len() > MAX_RECORDS_PER_SHARD {
        tracing::warn!(
            shard = shard_id,
            kept = MAX_RECORDS_PER_SHARD,
            "too many request records: the oldest are dropped"
        );
        out.truncate(MAX_RECORDS_PER_SHARD);
    }
    Ok(out)
}

/// Writes `records` as `shard_id`'s (a split's new shard, a snapshot's receiver).
pub(crate) fn write_all(wb: &mut WriteBatch, shard_id: u64, records: &[SlotRecord]) {
    for r in records {
        write(wb, shard_id, r);
    }
}

/// Adds a merged source's `records` to the target `shard_id`'s: per slot, the later request
/// wins.
pub(crate) fn take_over<R: Reader>(
    engine: &R,
    wb: &mut WriteBatch,
    round: &mut RoundRecords,
    shard_id: u64,
    records: &[SlotRecord],
) -> Result<()> {
    let own: HashMap<(u64, u32), SlotRecord> =
        self::records(engine, round, shard_id, None)?.into_iter().map(|r| ((r.client, r.slot), r)).collect();
    for r in records {
        let newer = own.get(&(r.client, r.slot)).is_none_or(|o| r.last_seq > o.last_seq);
        if newer {
            write(wb, shard_id, r);
            round.insert((r.client, r.slot), *r);
        }
    }
    Ok(())
}

/// Adds to `wb` the removal of every record of `shard_id`.
pub(crate) fn clear(wb: &mut WriteBatch, shard_id: u64) {
    wb.delete_range(Cf::Meta, keys::request_range(shard_id));
}

/// The error a superseded request gets.
pub(crate) fn superseded(shard_id: u64, id: RequestId, last_seq: u64) -> Error {
    Error::Superseded { shard_id, client: id.client, slot: id.slot, seq: id.seq, last_seq }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_engine::{Engine, MemEngine};

    const CLIENT: u64 = 7;

    fn id(slot: u32, seq: u64) -> RequestId {
        RequestId { client: CLIENT, slot, seq }
    }

    #[test]
    fn a_slots_last_request_is_applied_earlier_ones_superseded_later_ones_new() {
        let engine = MemEngine::new();
        let mut round = RoundRecords::new();
        let mut wb = WriteBatch::new();
        assert_eq!(look_up(&engine, &round, 1, id(0, 5), 1_000).expect("the memory engine"), Seen::New);
        record(&mut wb, &mut round, 1, id(0, 5), 1_000);
        assert_eq!(
            look_up(&engine, &round, 1, id(0, 5), 1_000).expect("the memory engine"),
            Seen::Applied,
            "seen through the round"
        );
        engine.write(&wb, Default::default()).expect("the memory engine");
        round.clear();
        assert_eq!(
            look_up(&engine, &round, 1, id(0, 5), 2_000).expect("the memory engine"),
            Seen::Applied,
            "seen in the engine"
        );
        assert_eq!(
            look_up(&engine, &round, 1, id(0, 4), 2_000).expect("the memory engine"),
            Seen::Superseded { last_seq: 5 }
        );
        assert_eq!(look_up(&engine, &round, 1, id(0, 6), 2_000).expect("the memory engine"), Seen::New);
        assert_eq!(look_up(&engine, &round, 1, id(1, 5), 2_000).expect("the memory engine"), Seen::New, "another slot");
        assert_eq!(
            look_up(&engine, &round, 2, id(0, 5), 2_000).expect("the memory engine"),
            Seen::New,
            "another shard"
        );
        let late = 1_000 + RECORD_TTL_MS + 1;
        assert_eq!(
            look_up(&engine, &round, 1, id(0, 5), late).expect("the memory engine"),
            Seen::New,
            "forgotten alike everywhere"
        );
    }

    #[test]
    fn a_merge_keeps_each_slots_later_request() {
        let engine = MemEngine::new();
        let mut round = RoundRecords::new();
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut round, 1, id(0, 9), 10);
        record(&mut wb, &mut round, 1, id(1, 2), 10);
        engine.write(&wb, Default::default()).expect("the memory engine");
        round.clear();
        let source = [
            SlotRecord { client: CLIENT, slot: 0, last_seq: 8, last_ms: 20 },
            SlotRecord { client: CLIENT, slot: 1, last_seq: 3, last_ms: 20 },
            SlotRecord { client: CLIENT, slot: 2, last_seq: 1, last_ms: 20 },
        ];
        let mut wb = WriteBatch::new();
        take_over(&engine, &mut wb, &mut round, 1, &source).expect("the memory engine");
        engine.write(&wb, Default::default()).expect("the memory engine");
        round.clear();
        let mut merged: Vec<(u32, u64)> = records(&engine, &round, 1, None)
            .expect("the memory engine")
            .iter()
            .map(|r| (r.slot, r.last_seq))
            .collect();
        merged.sort();
        assert_eq!(merged, vec![(0, 9), (1, 3), (2, 1)]);
        let mut wb = WriteBatch::new();
        clear(&mut wb, 1);
        engine.write(&wb, Default::default()).expect("the memory engine");
        assert!(records(&engine, &round, 1, None).expect("the memory engine").is_empty());
    }

    #[test]
    fn copies_leave_out_forgotten_records_most_recent_first() {
        let engine = MemEngine::new();
        let mut round = RoundRecords::new();
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut round, 1, id(0, 1), 0);
        record(&mut wb, &mut round, 1, id(1, 1), RECORD_TTL_MS);
        record(&mut wb, &mut round, 1, id(2, 1), RECORD_TTL_MS + 5);
        // Not written: seen through the round.
        let now = RECORD_TTL_MS + 10;
        let kept: Vec<u32> =
            records(&engine, &round, 1, Some(now)).expect("the memory engine").iter().map(|r| r.slot).collect();
        assert_eq!(kept, vec![2, 1]);
    }
}
