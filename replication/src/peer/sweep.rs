//! The expiry sweep: the leader walks its shard a page at a time while it may hold expiring
//! values, with one `DeleteExpired` proposal (re-checked at apply) in flight. It also walks
//! the shard's request records (`crate::dedup`), proposing a `ForgetRequest` (re-checked at
//! apply) for each one forgotten, sharing that one proposal in flight.

use super::*;

impl<E: Engine> Peer<E> {
    /// On the leader: reads the next `max_keys` keys of the sweep and proposes deleting those
    /// expired by the clock (each delete re-checks expiry at apply, so a value written since
    /// is kept). Does nothing when the shard holds no expiring values, or while the last
    /// sweep proposal is still in flight.
    pub(crate) fn sweep_expired(&mut self, max_keys: usize) -> Result<()> {
        if !self.is_leader()
            || !self.sweep.expiring
            || self.descriptor().merging_into.is_some()
            || self.sweep.in_flight.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let desc = self.descriptor().clone();
        let shard = desc.range()?;
        // Resume after the last key looked at, if it is still inside the shard (a split or
        // merge may have moved the bounds since).
        let range = match self.sweep.resume_after.take() {
            Some(k) if shard.contains(&k) => match shard.after(&k) {
                Some(r) => r,
                None => {
                    self.end_sweep_pass();
                    return Ok(());
                }
            },
            _ => shard,
        };
        let engine = self.raw.store().engine().clone();
        let page = engine.scan(Cf::Data, &range, ScanOrder::Forward, ScanLimit::new(max_keys, SWEEP_PAGE_BYTES))?;
        let now_ms = self.now_ms();
        let mut ops = Vec::new();
        for (k, stored) in &page.pairs {
            match value::decode(k, stored) {
                Ok(v) if v.deadline_ms.is_some() => {
                    self.sweep.seen_this_pass = true;
                    if !v.live_at(now_ms) {
                        ops.push(Op::delete_expired(k.clone()));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(shard = desc.id, error = %e, "expiry sweep skips an undecodable value"),
            }
        }
        match (page.more, page.pairs.last()) {
            (true, Some((last, _))) => self.sweep.resume_after = Some(last.clone()),
            _ => self.end_sweep_pass(),
        }
        if !ops.is_empty() {
            self.propose_sweep(desc.epoch(), ops, "expired values");
        }
        Ok(())
    }

    /// Proposes one sweep page's `ops` (the only sweep proposal in flight until it ends).
    fn propose_sweep(&mut self, epoch: Epoch, ops: Vec<Op>, what: &'static str) {
        let (shard_id, n) = (self.shard_id(), ops.len());
        let in_flight = Arc::clone(&self.sweep.in_flight);
        in_flight.store(true, std::sync::atomic::Ordering::Release);
        self.propose(
            epoch,
            ops,
            None,
            Box::new(move |r| {
                in_flight.store(false, std::sync::atomic::Ordering::Release);
                match r {
                    Ok(()) => tracing::debug!(shard = shard_id, ops = n, what, "swept"),
                    Err(e) => tracing::debug!(shard = shard_id, error = %e, what, "sweep not applied; walked again"),
                }
            }),
        );
    }

    /// On the leader: reads the next page of the shard's request records and proposes
    /// forgetting those past `dedup::RECORD_TTL_MS` (each re-checked at apply, so a record
    /// refreshed since is kept). Does nothing while a sweep proposal is in flight.
    pub(crate) fn sweep_requests(&mut self, max_records: usize) -> Result<()> {
        if !self.is_leader()
            || self.descriptor().merging_into.is_some()
            || self.sweep.in_flight.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let (shard_id, epoch) = (self.shard_id(), self.descriptor().epoch());
        let now_ms = self.now_ms();
        let engine = self.raw.store().engine().clone();
        let after = self.sweep.requests_after.take();
        let (forgotten, next) = crate::dedup::forgotten_page(&engine, shard_id, after, max_records, now_ms)?;
        self.sweep.requests_after = next;
        if forgotten.is_empty() {
            return Ok(());
        }
        let ops = forgotten.into_iter().map(|r| Op { kind: Some(op::Kind::ForgetRequest(r)) }).collect();
        self.propose_sweep(epoch, ops, "forgotten request records");
        Ok(())
    }

    /// A sweep pass reached the shard's end: walk again only if it saw an expiring value.
    pub(super) fn end_sweep_pass(&mut self) {
        self.sweep.resume_after = None;
        self.sweep.expiring = self.sweep.seen_this_pass;
        self.sweep.seen_this_pass = false;
    }
}
