//! Reads: ReadIndex (or the leader's lease) for linearizable gets and scans. Walk-through: a
//! read is queued; once the leader committed an entry in its term the queue's reads are issued
//! as one ReadIndex round (or served at once under a valid lease); when the round's index is
//! applied here they are served from the engine; reads older than two election timeouts, or
//! caught by a leadership change, fail with a retryable error.

use super::*;

impl<E: Engine> Peer<E> {
    /// Starts a linearizable read at `now`; `cb` runs once the read index is applied here.
    ///
    /// With `lease` (lease reads on), a leader whose leadership a ReadIndex round confirmed
    /// less than `lease` ago reads at its commit index without a round trip. Why that is
    /// safe: the round's heartbeat, sent at `t`, reset the election timer of a quorum, none of
    /// which votes for another leader before an election timeout of its own ticks after `t`;
    /// `lease` is shorter by the clock-drift margin (see `RaftConfig::lease_reads`).
    pub fn read(
        &mut self,
        epoch: Epoch,
        request: ReadRequest,
        now: Instant,
        lease: Option<Duration>,
        cb: ReadCallback,
    ) {
        if !self.is_leader() {
            return cb(Err(self.not_leader()));
        }
        let keys: Vec<&[u8]> = match &request {
            ReadRequest::Get(k) => vec![k.as_slice()],
            ReadRequest::Scan { range, .. } => vec![range.start()],
        };
        if let Err(e) = self.check_epoch(epoch, keys.into_iter()) {
            return cb(Err(e));
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let r = &self.raw.raft;
        let leased = lease.is_some()
            && r.term == self.lease_term
            && self.lease_until.is_some_and(|until| now < until)
            && r.commit_to_current_term();
        let index = leased.then_some(r.raft_log.committed);
        self.reads.push_back(PendingRead { id, issued: leased, age_ticks: 0, issued_at: now, index, request, cb });
        self.issue_reads(now);
    }

    /// Hands waiting reads to Raft once this leader has committed in its term.
    pub(crate) fn issue_reads(&mut self, now: Instant) {
        if !self.is_leader() || !self.raw.raft.commit_to_current_term() {
            return;
        }
        for r in self.reads.iter_mut().filter(|r| !r.issued) {
            r.issued = true;
            r.issued_at = now;
            self.raw.read_index(r.id.to_be_bytes().to_vec());
        }
    }

    /// Ages waiting reads by one tick and fails those older than `max_age_ticks` (their
    /// confirmation was lost); reads have no effect, so the client simply retries.
    pub(crate) fn expire_reads(&mut self, max_age_ticks: usize) {
        let shard_id = self.shard_id();
        let mut kept = VecDeque::with_capacity(self.reads.len());
        for mut r in self.reads.drain(..) {
            r.age_ticks += 1;
            if r.age_ticks > max_age_ticks {
                (r.cb)(Err(Error::ProposalDropped { shard_id, reason: "read not confirmed in time" }));
            } else {
                kept.push_back(r);
            }
        }
        self.reads = kept;
    }

    /// Records the read indexes Raft confirmed.
    /// Each one, with `lease`, extends this leader's lease from the instant its round began.
    pub(crate) fn on_read_states(&mut self, states: Vec<raft::ReadState>, lease: Option<Duration>) {
        let term = self.raw.raft.term;
        for rs in states {
            let Ok(id) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()).map(u64::from_be_bytes) else { continue };
            if let Some(r) = self.reads.iter_mut().find(|r| r.id == id) {
                r.index = Some(rs.index);
                if let (Some(lease), true) = (lease, self.raw.raft.state == StateRole::Leader) {
                    let until = r.issued_at + lease;
                    if self.lease_term != term {
                        (self.lease_term, self.lease_until) = (term, None);
                    }
                    self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
                }
            }
        }
    }

    /// Answers every read whose index is applied.
    pub(crate) fn serve_reads(&mut self, done: &mut Completions) {
        if self.reads.is_empty() {
            return;
        }
        let applied = self.raw.store().applied_index();
        let engine = self.raw.store().engine().clone();
        let desc = self.descriptor().clone();
        let now_ms = self.now_ms();
        let mut waiting = VecDeque::with_capacity(self.reads.len());
        for r in self.reads.drain(..) {
            if r.index.is_some_and(|i| i <= applied) {
                let start = match &r.request {
                    ReadRequest::Get(k) => k.as_slice(),
                    ReadRequest::Scan { range, .. } => range.start(),
                };
                // A split may have moved the key out while the read waited.
                let result = if desc.contains(start) {
                    execute_read(&engine, &desc, &r.request, now_ms)
                } else {
                    Err(self_epoch_error(&desc, &self.siblings))
                };
                let cb = r.cb;
                done.push(Box::new(move || cb(result)));
            } else {
                waiting.push_back(r);
            }
        }
        self.reads = waiting;
    }

    /// Answers every waiting proposal and read (leadership lost, or the replica is going
    /// away). Proposals are in the log and may still commit under another leader, so their
    /// outcome is unknown; reads simply did not happen.
    pub(crate) fn fail_pending(&mut self, reason: &'static str, done: &mut Completions) {
        let shard_id = self.shard_id();
        for p in self.proposals.drain(..) {
            done.push(Box::new(move || p.cb.fail(Error::OutcomeUnknown { shard_id, reason })));
        }
        // Their joint configuration is committed; only its leave is not applied here yet.
        for cb in self.joint_waiters.drain(..) {
            done.push(Box::new(move || cb(Err(Error::OutcomeUnknown { shard_id, reason }))));
        }
        let err = self.not_leader();
        for r in self.reads.drain(..) {
            let e = err.clone();
            done.push(Box::new(move || (r.cb)(Err(e))));
        }
    }

    /// Called after a soft-state change: a replica that stopped leading answers what waits.
    pub(crate) fn on_role_change(&mut self, done: &mut Completions) {
        if self.is_leader() {
            // A new leader does not know what its predecessor's sweep saw.
            self.sweep.expiring = true;
        }
        if !self.is_leader() && (!self.proposals.is_empty() || !self.reads.is_empty() || !self.joint_waiters.is_empty())
        {
            self.fail_pending("leadership lost before the write applied", done);
        }
    }
}

/// Serves a read on the leader; values expired at `now_ms` (its wall clock) are absent.
pub(super) fn execute_read<R: Reader>(
    engine: &R,
    desc: &ShardDescriptor,
    request: &ReadRequest,
    now_ms: u64,
) -> Result<ReadResponse> {
    match request {
        ReadRequest::Get(key) => match engine.get(Cf::Data, key)? {
            Some(stored) => Ok(ReadResponse::Value(value::live_value(key, stored, now_ms)?)),
            None => Ok(ReadResponse::Value(None)),
        },
        ReadRequest::Scan { range, max_keys, max_bytes } => {
            let shard = desc.range()?;
            let start = range.start().max(shard.start()).to_vec();
            let Ok(clipped) = KeyRange::new(start, min_end(range.end(), shard.end())) else {
                return Ok(ReadResponse::Pairs { pairs: Vec::new(), more: false, resume_after: None });
            };
            let page = engine.scan(Cf::Data, &clipped, ScanOrder::Forward, ScanLimit::new(*max_keys, *max_bytes))?;
            let resume_after = if page.more { page.pairs.last().map(|(k, _)| k.clone()) } else { None };
            let mut pairs = Vec::with_capacity(page.pairs.len());
            for (k, stored) in page.pairs {
                if let Some(v) = value::live_value(&k, stored, now_ms)? {
                    pairs.push((k, v));
                }
            }
            Ok(ReadResponse::Pairs { pairs, more: page.more, resume_after })
        }
    }
}
