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
//!   record (from the replica's `KnownRecords`; the engine only on a miss) decides
//!   ([`Seen`]): a `seq` above the record's is new; the record's own `seq` was decided
//!   already, so the command answers `Ok` (or, if its condition had failed, that it was not
//!   applied) and writes nothing; a lower one was overtaken by a later request of the slot
//!   (the client gave up on it), so it is refused;
//! - a new command, once decided, writes its record in the same batch as its data, whether it
//!   applied or its condition failed: a failed condition is final too, so an earlier attempt
//!   still in flight can never apply after the client was told it failed.
//!
//! The records follow the data: a split copies the shard's records to the new shard (the
//! client may retry there a write the parent applied), a merge takes the larger `seq` per slot
//! of both, a snapshot carries them, destroying a replica removes them.
//!
//! Records are forgotten after [`RECORD_TTL_MS`] without a write from their slot: the test
//! uses the applying command's `now_ms`, so every replica forgets alike. A client must not
//! retry a request for that long (its request timeout is seconds). The leader's sweep walks
//! the records a page at a time and proposes a `ForgetRequest` for each forgotten one, which
//! deletes it at apply only if it is still that record and still forgotten; a split or merge
//! does not copy forgotten records.

use std::collections::{BTreeMap, HashMap};

use presage_engine::{Cf, Reader, ScanLimit, ScanOrder, WriteBatch};

use crate::error::{Error, Result};
use crate::keys;
use crate::wire::{self, RequestId, SlotRecord};

/// A record whose slot wrote nothing to the shard for this long is forgotten.
pub const RECORD_TTL_MS: u64 = 10 * 60 * 1000;
/// Most records a shard copies on a split or merge (more are cut, the same way on every
/// replica) or sends in a snapshot (more, and it sends none until the sweep trims them); a
/// client holds at most its `max-write-slots` slots.
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
    /// Decided already, and its condition failed: it wrote nothing, and never will.
    Failed,
    /// The slot's request `last_seq` applied after it was sent: the client moved on.
    Superseded {
        /// The slot's last applied `seq`.
        last_seq: u64,
    },
}

/// A client slot: (client, slot).
pub(crate) type Slot = (u64, u32);

/// Most slots a replica keeps in its `KnownRecords` from one round to the next (a round may
/// add more; they are dropped when the next starts).
pub const MAX_KNOWN_RECORDS: usize = 1_024;

/// The request records one replica (of one shard) knows without reading the engine, by client
/// slot: each entry is the slot's record (`None`: it has none) as the engine holds it once the
/// current round's batch is written. Applying a write of a known slot reads nothing; before,
/// every applied write read its record back from the engine, on every replica (a third of
/// the store loop's engine time under a put load).
///
/// Kept exact by one rule: every change to the shard's records goes through it ([`record`],
/// [`forget`], [`take_over`]), and a snapshot install, the only other writer, empties it
/// ([`KnownRecords::clear`]). Emptying is always safe between rounds (a miss costs one read),
/// never within one: what the round wrote is not in the engine yet. So the bound is applied
/// at [`KnownRecords::start_round`], and a sleeping replica empties it.
#[derive(Debug, Default)]
pub(crate) struct KnownRecords {
    slots: HashMap<Slot, Option<SlotRecord>>,
}

impl KnownRecords {
    /// A new apply round starts (the last round's batch is in the engine): over
    /// [`MAX_KNOWN_RECORDS`], forget them all.
    pub(crate) fn start_round(&mut self) {
        if self.slots.len() > MAX_KNOWN_RECORDS {
            self.clear();
        }
    }

    /// Forgets every record (between rounds only: see the type's doc).
    pub(crate) fn clear(&mut self) {
        self.slots = HashMap::new();
    }

    /// Slots known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn get(&self, slot: &Slot) -> Option<Option<SlotRecord>> {
        self.slots.get(slot).copied()
    }

    fn set(&mut self, slot: Slot, record: Option<SlotRecord>) {
        self.slots.insert(slot, record);
    }
}

/// Records one page of the sweep reads.
pub const SWEEP_PAGE_RECORDS: usize = 1_024;

/// Is `record` still remembered by a command at `now_ms`?
fn remembered(record: &SlotRecord, now_ms: u64) -> bool {
    now_ms <= record.last_ms.saturating_add(RECORD_TTL_MS)
}

/// What `shard_id` knows of `id`, for a command at `now_ms`.
pub(crate) fn look_up<R: Reader>(
    engine: &R,
    known: &mut KnownRecords,
    shard_id: u64,
    id: RequestId,
    now_ms: u64,
) -> Result<Seen> {
    let record = current(engine, known, shard_id, id.client, id.slot)?;
    Ok(match record.filter(|r| remembered(r, now_ms)) {
        None => Seen::New,
        Some(r) if id.seq > r.last_seq => Seen::New,
        Some(r) if id.seq == r.last_seq && r.failed => Seen::Failed,
        Some(r) if id.seq == r.last_seq => Seen::Applied,
        Some(r) => Seen::Superseded { last_seq: r.last_seq },
    })
}

/// The record of (`client`, `slot`): the known one, else the engine's (then known).
fn current<R: Reader>(
    engine: &R,
    known: &mut KnownRecords,
    shard_id: u64,
    client: u64,
    slot: u32,
) -> Result<Option<SlotRecord>> {
    if let Some(r) = known.get(&(client, slot)) {
        return Ok(r);
    }
    let record = match engine.get(Cf::Meta, &keys::request_key(shard_id, client, slot))? {
        Some(bytes) => Some(wire::decode::<SlotRecord>("request record", &bytes)?),
        None => None,
    };
    known.set((client, slot), record);
    Ok(record)
}

/// Records that `shard_id` decided `id` by a command at `now_ms`: applied it, or found its
/// condition `failed`.
pub(crate) fn record(
    wb: &mut WriteBatch,
    known: &mut KnownRecords,
    shard_id: u64,
    id: RequestId,
    now_ms: u64,
    failed: bool,
) {
    let r = SlotRecord { client: id.client, slot: id.slot, last_seq: id.seq, last_ms: now_ms, failed };
    write(wb, shard_id, &r);
    known.set((id.client, id.slot), Some(r));
}

/// The sweep's `ForgetRequest`: deletes `seen` if it is still the slot's record and is
/// forgotten at `now_ms`.
pub(crate) fn forget<R: Reader>(
    engine: &R,
    wb: &mut WriteBatch,
    known: &mut KnownRecords,
    shard_id: u64,
    seen: SlotRecord,
    now_ms: u64,
) -> Result<()> {
    let Some(r) = current(engine, known, shard_id, seen.client, seen.slot)? else { return Ok(()) };
    if r == seen && !remembered(&r, now_ms) {
        wb.delete(Cf::Meta, keys::request_key(shard_id, r.client, r.slot));
        known.set((r.client, r.slot), None);
    }
    Ok(())
}

/// Up to `max_records` records of `shard_id` after (`client`, `slot`) (from the first when
/// `None`) that are forgotten at `now_ms`, as the engine holds them, and where the next
/// page starts (`None`: the walk reached the end).
pub(crate) fn forgotten_page<R: Reader>(
    engine: &R,
    shard_id: u64,
    after: Option<Slot>,
    max_records: usize,
    now_ms: u64,
) -> Result<(Vec<SlotRecord>, Option<Slot>)> {
    let range = keys::request_range(shard_id);
    let range = match after {
        None => range,
        Some((client, slot)) => match range.after(&keys::request_key(shard_id, client, slot)) {
            Some(r) => r,
            None => return Ok((Vec::new(), None)),
        },
    };
    let page = engine.scan(Cf::Meta, &range, ScanOrder::Forward, ScanLimit::new(max_records, MAX_RECORDS_BYTES))?;
    let mut forgotten = Vec::new();
    let mut last = None;
    for (_, bytes) in &page.pairs {
        let r: SlotRecord = wire::decode("request record", bytes)?;
        last = Some((r.client, r.slot));
        if !remembered(&r, now_ms) {
            forgotten.push(r);
        }
    }
    Ok((forgotten, if page.more { last } else { None }))
}

fn write(wb: &mut WriteBatch, shard_id: u64, r: &SlotRecord) {
    wb.put(Cf::Meta, keys::request_key(shard_id, r.client, r.slot), wire::encode(r));
}

/// The records of `shard_id` still remembered at `now_ms` (all of them when `now_ms` is
/// `None`), as of the engine overlaid with the known ones (this known's writes among them),
/// most recently used first, and whether there were more than [`MAX_RECORDS_PER_SHARD`] (then
/// only the first ones in key order were read: the same ones on every replica).
pub(crate) fn records<R: Reader>(
    engine: &R,
    known: &KnownRecords,
    shard_id: u64,
    now_ms: Option<u64>,
) -> Result<(Vec<SlotRecord>, bool)> {
    let range = keys::request_range(shard_id);
    // One more than kept, to tell whether any were left.
    let limit = ScanLimit::new(MAX_RECORDS_PER_SHARD + 1, MAX_RECORDS_BYTES);
    let page = engine.scan(Cf::Meta, &range, ScanOrder::Forward, limit)?;
    let mut all: BTreeMap<Slot, SlotRecord> = BTreeMap::new();
    for (_, bytes) in &page.pairs {
        let r: SlotRecord = wire::decode("request record", bytes)?;
        all.insert((r.client, r.slot), r);
    }
    for (k, r) in &known.slots {
        match r {
            Some(r) => drop(all.insert(*k, *r)),
            None => drop(all.remove(k)),
        }
    }
    let mut out: Vec<SlotRecord> = all.into_values().filter(|r| now_ms.is_none_or(|t| remembered(r, t))).collect();
    out.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.client.cmp(&b.client)).then(a.slot.cmp(&b.slot)));
    let truncated = page.more || out.len() > MAX_RECORDS_PER_SHARD;
    if truncated {
        tracing::warn!(shard = shard_id, kept = MAX_RECORDS_PER_SHARD, "more request records than a shard copies");
        out.truncate(MAX_RECORDS_PER_SHARD);
    }
    Ok((out, truncated))
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
    known: &mut KnownRecords,
    shard_id: u64,
    records: &[SlotRecord],
) -> Result<()> {
    for r in records {
        let own = current(engine, known, shard_id, r.client, r.slot)?;
        let newer = own.is_none_or(|o| r.last_seq > o.last_seq);
        if newer {
            write(wb, shard_id, r);
            known.set((r.client, r.slot), Some(*r));
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
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 5), 1_000).expect("the memory engine"), Seen::New);
        record(&mut wb, &mut known, 1, id(0, 5), 1_000, false);
        assert_eq!(
            look_up(&engine, &mut known, 1, id(0, 5), 1_000).expect("the memory engine"),
            Seen::Applied,
            "seen through the round"
        );
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.clear();
        assert_eq!(
            look_up(&engine, &mut known, 1, id(0, 5), 2_000).expect("the memory engine"),
            Seen::Applied,
            "seen in the engine"
        );
        assert_eq!(
            look_up(&engine, &mut known, 1, id(0, 4), 2_000).expect("the memory engine"),
            Seen::Superseded { last_seq: 5 }
        );
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 6), 2_000).expect("the memory engine"), Seen::New);
        assert_eq!(
            look_up(&engine, &mut known, 1, id(1, 5), 2_000).expect("the memory engine"),
            Seen::New,
            "another slot"
        );
        assert_eq!(
            look_up(&engine, &mut KnownRecords::default(), 2, id(0, 5), 2_000).expect("the memory engine"),
            Seen::New,
            "another shard (another replica: its own known records)"
        );
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut known, 1, id(3, 1), 2_000, true);
        assert_eq!(look_up(&engine, &mut known, 1, id(3, 1), 2_000).expect("the memory engine"), Seen::Failed);
        assert_eq!(look_up(&engine, &mut known, 1, id(3, 2), 2_000).expect("the memory engine"), Seen::New);
        let late = 1_000 + RECORD_TTL_MS + 1;
        assert_eq!(
            look_up(&engine, &mut known, 1, id(0, 5), late).expect("the memory engine"),
            Seen::New,
            "forgotten alike everywhere"
        );
    }

    #[test]
    fn a_merge_keeps_each_slots_later_request() {
        let engine = MemEngine::new();
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut known, 1, id(0, 9), 10, false);
        record(&mut wb, &mut known, 1, id(1, 2), 10, false);
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.clear();
        let source = [
            SlotRecord { client: CLIENT, slot: 0, last_seq: 8, last_ms: 20, failed: false },
            SlotRecord { client: CLIENT, slot: 1, last_seq: 3, last_ms: 20, failed: false },
            SlotRecord { client: CLIENT, slot: 2, last_seq: 1, last_ms: 20, failed: false },
        ];
        let mut wb = WriteBatch::new();
        take_over(&engine, &mut wb, &mut known, 1, &source).expect("the memory engine");
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.clear();
        let mut merged: Vec<(u32, u64)> = records(&engine, &known, 1, None)
            .expect("the memory engine")
            .0
            .iter()
            .map(|r| (r.slot, r.last_seq))
            .collect();
        merged.sort();
        assert_eq!(merged, vec![(0, 9), (1, 3), (2, 1)]);
        let mut wb = WriteBatch::new();
        clear(&mut wb, 1);
        engine.write(&wb, Default::default()).expect("the memory engine");
        assert!(records(&engine, &known, 1, None).expect("the memory engine").0.is_empty());
    }

    #[test]
    fn the_sweep_forgets_only_records_still_forgotten_and_unchanged() {
        let engine = MemEngine::new();
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        for slot in 0..5 {
            record(&mut wb, &mut known, 1, id(slot, 1), u64::from(slot) * RECORD_TTL_MS, false);
        }
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.clear();
        let now = 4 * RECORD_TTL_MS;
        // Pages of two: slots 0-2 are forgotten (slot 2 just so), 3 and 4 are not.
        let (first, next) = forgotten_page(&engine, 1, None, 2, now).expect("the memory engine");
        assert_eq!(first.iter().map(|r| r.slot).collect::<Vec<_>>(), vec![0, 1]);
        let (second, next) = forgotten_page(&engine, 1, next, 2, now).expect("the memory engine");
        assert_eq!(second.iter().map(|r| r.slot).collect::<Vec<_>>(), vec![2]);
        let (third, next) = forgotten_page(&engine, 1, next, 2, now).expect("the memory engine");
        assert!(third.is_empty() && next.is_none(), "{third:?} {next:?}");
        // Slot 1 wrote again since the sweep looked: kept.
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut known, 1, id(1, 2), now, false);
        for r in first.iter().chain(&second) {
            forget(&engine, &mut wb, &mut known, 1, *r, now).expect("the memory engine");
        }
        assert_eq!(
            look_up(&engine, &mut known, 1, id(0, 1), 0).expect("the memory engine"),
            Seen::New,
            "deleted in the round"
        );
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.clear();
        let left: Vec<(u32, u64)> = records(&engine, &known, 1, None)
            .expect("the memory engine")
            .0
            .iter()
            .map(|r| (r.slot, r.last_seq))
            .collect();
        assert_eq!(left, vec![(1, 2), (4, 1), (3, 1)], "most recent first");
    }

    #[test]
    fn copies_leave_out_forgotten_records_most_recent_first() {
        let engine = MemEngine::new();
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut known, 1, id(0, 1), 0, false);
        record(&mut wb, &mut known, 1, id(1, 1), RECORD_TTL_MS, false);
        record(&mut wb, &mut known, 1, id(2, 1), RECORD_TTL_MS + 5, false);
        // Not written: seen through the round.
        let now = RECORD_TTL_MS + 10;
        let kept: Vec<u32> =
            records(&engine, &known, 1, Some(now)).expect("the memory engine").0.iter().map(|r| r.slot).collect();
        assert_eq!(kept, vec![2, 1]);
    }

    #[test]
    fn known_records_spare_the_engine_read_until_forgotten() {
        let engine = MemEngine::new();
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        record(&mut wb, &mut known, 1, id(0, 5), 1_000, false);
        engine.write(&wb, Default::default()).expect("the memory engine");
        // Removed behind the replica's back: only what it knows can still answer.
        let mut wb = WriteBatch::new();
        clear(&mut wb, 1);
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.start_round();
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 5), 1_000).expect("the memory engine"), Seen::Applied);
        // A slot read from the engine once is known from then on, absent ones too.
        assert_eq!(look_up(&engine, &mut known, 1, id(1, 1), 1_000).expect("the memory engine"), Seen::New);
        assert_eq!(known.len(), 2);
        // Emptied (a snapshot install, a replica going to sleep): the engine answers again.
        known.clear();
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 5), 1_000).expect("the memory engine"), Seen::New);
    }

    #[test]
    fn known_records_are_bounded_only_between_rounds() {
        let engine = MemEngine::new();
        let mut known = KnownRecords::default();
        let mut wb = WriteBatch::new();
        let slots = u32::try_from(MAX_KNOWN_RECORDS).expect("a small bound") + 1;
        for slot in 0..slots {
            record(&mut wb, &mut known, 1, id(slot, 1), 1_000, false);
        }
        // Within the known, past the bound: still all known (the batch is not written).
        assert_eq!(known.len(), MAX_KNOWN_RECORDS + 1);
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 1), 1_000).expect("the memory engine"), Seen::Applied);
        engine.write(&wb, Default::default()).expect("the memory engine");
        known.start_round();
        assert_eq!(known.len(), 0, "over the bound: forgotten when the next round starts");
        assert_eq!(look_up(&engine, &mut known, 1, id(0, 1), 1_000).expect("the memory engine"), Seen::Applied);
        known.start_round();
        assert_eq!(known.len(), 1, "under the bound: kept");
    }
}
