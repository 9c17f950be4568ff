//! Reads: ReadIndex (or the leader's lease) for linearizable gets and scans. Walk-through:
//!
//! - **lease**: a leader whose lease holds (a ReadIndex round confirmed it less than `lease`
//!   ago, in this term, with no leadership transfer started since and no split or merge applied
//!   since) reads at its commit index: at once when that index is applied here, else when it
//!   is; a queued leased read whose lease lapsed before it was served goes the ReadIndex way;
//! - **ReadIndex**: every read waiting on a replica is issued in **one** ReadIndex round per
//!   ready round (one heartbeat round for all of them), once the leader has committed an entry
//!   in its term; when the round's index is applied here they are all served from the engine.
//!
//! - **replica reads** (follower reads): a follower asked for a linearizable read sends the
//!   same one-per-round ReadIndex request to its leader, which confirms its leadership with a
//!   heartbeat round and answers with its commit index; the follower serves the reads once it
//!   has applied that index. Linearizable as a leader's read, served from the follower's engine.
//!
//! Reads older than two election timeouts, or caught by a leadership change, fail with a
//! retryable error.
//!
//! A served read's engine work runs on the node's read pool when it has one (`read_pool.rs`):
//! the loop decides what the read sees (range, expiry clock, an engine snapshot as applied
//! when it was served) and a pool thread reads the snapshot, so a slow disk read never holds
//! up the loop. Without a pool (`read-threads = 0`, and the deterministic test runtime) the
//! loop reads the engine itself.

use super::*;

impl<E: Engine> Peer<E> {
    /// Starts a linearizable read at `now`; `cb` runs once the read index is applied here (at
    /// once, for a leased read whose index is applied already).
    ///
    /// With `lease` (lease reads on), a leader whose leadership a ReadIndex round confirmed
    /// less than `lease` ago reads at its commit index without a round trip. Why that is
    /// safe: the round's heartbeat, sent at `t`, reset the election timer of a quorum, none of
    /// which votes for another leader before an election timeout of its own ticks after `t`;
    /// `lease` is shorter by the clock-drift margin (see `RaftConfig::lease_reads`). A
    /// leadership transfer makes the transferee campaign at once, past that timer, so the
    /// lease ends when one starts (`end_lease`), as it does when a split or merge
    /// changes the range.
    ///
    /// With `replica`, a follower takes the read too (a replica read, module doc) while it
    /// knows its leader. A read served at once runs on `pool` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &mut self,
        epoch: Epoch,
        request: ReadRequest,
        now: Instant,
        lease: Option<Duration>,
        replica: bool,
        pool: Option<&ReadPool>,
        cb: ReadCallback,
    ) {
        // A follower judges expiry by its clock: not while that is out of sync with its peers'.
        let follower_may = replica && self.leader().is_some() && !self.lease_views.clock.out_of_sync();
        if !self.is_leader() && !follower_may {
            return cb(Err(self.not_leader()));
        }
        if let Err(e) = self.check_epoch(epoch, request.keys().into_iter()) {
            return cb(Err(e));
        }
        if self.reads.len() >= MAX_PENDING_READS {
            return cb(Err(Error::ProposalDropped { shard_id: self.shard_id(), reason: "too many reads waiting" }));
        }
        let leased = self.is_leader() && lease.is_some() && self.lease_holds(now);
        let index = leased.then_some(self.raw.raft.raft_log.committed);
        if index.is_some_and(|i| i <= self.raw.store().applied_index()) {
            // Served now, under the lease that holds at `now`.
            return match pool {
                Some(pool) => pool.run(self.read_job(request, &mut None, cb)),
                None => cb(self.execute(&request)),
            };
        }
        // Issued with every other read that arrives before the ready round (`issue_reads`).
        let version = self.descriptor().epoch().version;
        self.reads.push_back(PendingRead {
            leased,
            round: None,
            age_ticks: 0,
            issued_at: now,
            index,
            version,
            request,
            cb,
        });
    }

    /// True while this leader's read lease holds at `now` (see [`Peer::read`]).
    pub(crate) fn lease_holds(&self, now: Instant) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader
            && r.term == self.lease_term
            && r.lead_transferee.is_none()
            && self.lease_until.is_some_and(|until| now < until)
            && r.commit_to_current_term()
            && !self.lease_views.clock.out_of_sync()
            && !self.lease_views.fenced(self.shard_id(), r.term)
    }

    /// True while this replica leads a term whose lease was fenced without the loop
    /// (`crate::lease`): it should hand its leadership on, as no lease of that term holds.
    pub(crate) fn leads_fenced_term(&self) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader && r.lead_transferee.is_none() && self.lease_views.fenced(self.shard_id(), r.term)
    }

    /// Ends this replica's read lease: the next leased read first confirms leadership with a
    /// ReadIndex round. Called when a leadership transfer starts and when a split or merge
    /// applies.
    pub(crate) fn end_lease(&mut self) {
        self.lease_until = None;
        self.withdraw_lease();
    }

    /// Publishes this leader's lease for reads served off the loop (see `local_read.rs`)
    /// once it holds at `now`, the replica is not merging and everything committed is
    /// applied (so every entry of earlier terms is in the engine); withdraws it otherwise.
    /// Called at the end of each of the replica's ready rounds.
    pub(crate) fn publish_lease(&mut self, now: Instant) {
        let (Some(until), true) = (self.lease_until, self.lease_holds(now)) else {
            return self.withdraw_lease();
        };
        if self.descriptor().merging_into.is_some() {
            return self.withdraw_lease();
        }
        let epoch = self.descriptor().epoch();
        match self.published_lease {
            Some((_, u, e)) if u == until && e == epoch => return,
            None if self.raw.raft.raft_log.committed > self.raw.store().applied_index() => return,
            _ => {}
        }
        let lease = Lease {
            term: self.raw.raft.term,
            until,
            descriptor: self.descriptor().clone(),
            clock_floor_ms: Arc::clone(&self.clock_floor_ms),
        };
        self.published_lease = Some((self.lease_views.publish(self.shard_id(), lease), until, epoch));
    }

    /// Publishes the leader this replica knows while it follows (cleared while it leads or
    /// knows none), so that reads sent here are redirected off the loop with the same answer
    /// the loop gives ([`Peer::read`]: `NotLeader` with the leader, whatever the epoch).
    /// Called at the end of each of the replica's ready rounds: a change of leader always
    /// comes with a ready.
    pub(crate) fn publish_leader_hint(&mut self) {
        let hint = if self.is_leader() { None } else { self.leader() };
        if hint != self.published_leader_hint {
            self.lease_views.set_leader_hint(self.shard_id(), hint);
            self.published_leader_hint = hint;
        }
    }

    /// Withdraws the published lease if it no longer holds at `now` (a transfer raft-rs
    /// started on a message, a step-down): called before a round's messages go out, so that
    /// no message that lets another node lead leaves while reads are still served here.
    pub(crate) fn withdraw_lapsed_lease(&mut self, now: Instant) {
        if self.published_lease.is_some() && !self.lease_holds(now) {
            self.withdraw_lease();
        }
    }

    /// Withdraws the lease this replica published, if any (see [`Peer::publish_lease`]).
    pub(crate) fn withdraw_lease(&mut self) {
        if let Some((generation, _, _)) = self.published_lease.take() {
            self.lease_views.withdraw(self.shard_id(), Some(generation));
        }
    }

    /// Hands every waiting read to Raft as one ReadIndex round: on a leader once it has
    /// committed in its term; on a follower (replica reads) while it knows its leader, which
    /// raft-rs asks.
    pub(crate) fn issue_reads(&mut self, now: Instant) {
        // raft-rs drops a ReadIndex request that reaches a leader before it committed in its
        // term: a follower asks once it has seen such a commit itself.
        let log = &self.raw.raft.raft_log;
        let committed_in_term = log.term(log.committed).is_ok_and(|t| t == self.raw.raft.term);
        let ready = if self.is_leader() {
            self.raw.raft.commit_to_current_term()
        } else {
            self.leader().is_some() && committed_in_term
        };
        if !ready || self.reads.is_empty() {
            return;
        }
        let round = self.next_read_id;
        let mut any = false;
        for r in self.reads.iter_mut().filter(|r| !r.leased && r.round.is_none()) {
            r.round = Some(round);
            r.issued_at = now;
            any = true;
        }
        if any {
            self.next_read_id += 1;
            self.raw.read_index(read_context(self.node_id, self.read_nonce, round));
        }
    }

    /// Whether reads wait on this replica.
    pub(crate) fn has_pending_reads(&self) -> bool {
        !self.reads.is_empty()
    }

    /// Ages waiting reads by one tick and fails those older than `max_age_ticks` (their
    /// confirmation was lost); reads have no effect, so the client simply retries. On a
    /// follower, a round unanswered for `reissue_ticks` is asked again under a new id (the
    /// request or its answer was lost, or the leader was not ready); returns whether one is.
    pub(crate) fn expire_reads(&mut self, max_age_ticks: usize, reissue_ticks: usize) -> bool {
        let shard_id = self.shard_id();
        let follower = !self.is_leader();
        let mut reissue = false;
        let mut kept = VecDeque::with_capacity(self.reads.len());
        for mut r in self.reads.drain(..) {
            r.age_ticks += 1;
            if follower && r.index.is_none() && r.round.is_some() && r.age_ticks.is_multiple_of(reissue_ticks.max(1)) {
                r.round = None;
                reissue = true;
            }
            if r.age_ticks > max_age_ticks {
                (r.cb)(Err(Error::ProposalDropped { shard_id, reason: "read not confirmed in time" }));
            } else {
                kept.push_back(r);
            }
        }
        self.reads = kept;
        reissue
    }

    /// Records the read indexes Raft confirmed, for every read of each round. Each round,
    /// with `lease`, extends this leader's lease from the instant it began.
    pub(crate) fn on_read_states(&mut self, states: Vec<raft::ReadState>, lease: Option<Duration>) {
        let term = self.raw.raft.term;
        for rs in states {
            // Only this incarnation's rounds (an answer to an earlier one may arrive late).
            let Some((node, nonce, round)) = parse_read_context(&rs.request_ctx) else { continue };
            if (node, nonce) != (self.node_id, self.read_nonce) {
                continue;
            }
            let mut began = None;
            for r in self.reads.iter_mut().filter(|r| r.round == Some(round)) {
                r.index = Some(rs.index);
                began = Some(r.issued_at);
            }
            if let (Some(lease), Some(began), true) = (lease, began, self.raw.raft.state == StateRole::Leader) {
                let until = began + lease;
                if self.lease_term != term {
                    (self.lease_term, self.lease_until) = (term, None);
                }
                self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
            }
        }
    }

    /// The job answering `request` from this replica's engine as it is now, for the read
    /// pool: the range and the expiry clock are read here, the engine from `snapshot` (taken
    /// here if `None`, shared by the reads served together) wherever the job runs.
    fn read_job(&mut self, request: ReadRequest, snapshot: &mut Option<Arc<E::Snapshot>>, cb: ReadCallback) -> ReadJob {
        let now_ms = self.now_ms();
        let desc = self.descriptor();
        // A split may have moved the key out while the read waited.
        if !request.keys().iter().all(|k| desc.contains(k)) {
            let e = self_epoch_error(desc, &self.siblings);
            return Box::new(move |_| cb(Err(e)));
        }
        let desc = desc.clone();
        let snapshot = Arc::clone(snapshot.get_or_insert_with(|| Arc::new(self.raw.store().engine().snapshot())));
        Box::new(move |admitted| match admitted {
            Admitted::Run => cb(execute_read(&*snapshot, &desc, &request, now_ms)),
            Admitted::Refused => cb(Err(Error::Busy)),
        })
    }

    /// Reads `request` from this replica's engine as of now.
    fn execute(&mut self, request: &ReadRequest) -> Result<ReadResponse> {
        let now_ms = self.now_ms();
        let desc = self.descriptor();
        // A split may have moved the key out while the read waited.
        if request.keys().iter().all(|k| desc.contains(k)) {
            execute_read(self.raw.store().engine(), desc, request, now_ms)
        } else {
            Err(self_epoch_error(desc, &self.siblings))
        }
    }

    /// Answers every read whose index is applied (their engine work on `pool` when given).
    /// A leased read whose lease no longer holds at `now` is not answered: it waits for a
    /// ReadIndex round instead. Returns how many reads it served as a follower (replica
    /// reads).
    pub(crate) fn serve_reads(&mut self, now: Instant, pool: Option<&ReadPool>, done: &mut Completions) -> u64 {
        if self.reads.is_empty() {
            return 0;
        }
        let mut served = 0;
        let applied = self.raw.store().applied_index();
        let lease_holds = self.lease_holds(now);
        let mut waiting = VecDeque::with_capacity(self.reads.len());
        let mut reissue = false;
        let mut snapshot = None;
        for mut r in std::mem::take(&mut self.reads) {
            if r.leased && !lease_holds {
                (r.leased, r.index, r.round) = (false, None, None);
                reissue = true;
                waiting.push_back(r);
            } else if r.index.is_some_and(|i| i <= applied) {
                served += 1;
                if let (Some(pool), true) = (pool, r.version == self.descriptor().epoch().version) {
                    pool.run(self.read_job(r.request, &mut snapshot, r.cb));
                    continue;
                }
                let result = if r.version == self.descriptor().epoch().version {
                    self.execute(&r.request)
                } else {
                    // A split or merge applied while it waited: its range is not what it was.
                    Err(self_epoch_error(self.descriptor(), &self.siblings))
                };
                let cb = r.cb;
                done.push(Box::new(move || cb(result)));
            } else {
                waiting.push_back(r);
            }
        }
        self.reads = waiting;
        if reissue {
            self.issue_reads(now);
        }
        if self.is_leader() {
            0
        } else {
            served
        }
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
pub(crate) fn execute_read<R: Reader>(
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
        ReadRequest::GetWithDeadline(key) => match engine.get(Cf::Data, key)? {
            Some(stored) => Ok(ReadResponse::ValueWithDeadline(value::live_with_deadline(key, stored, now_ms)?)),
            None => Ok(ReadResponse::ValueWithDeadline(None)),
        },
        ReadRequest::GetMany { keys, max_bytes } => {
            let mut values = Vec::with_capacity(keys.len());
            let mut bytes = 0usize;
            for key in keys {
                let value = match engine.get(Cf::Data, key)? {
                    Some(stored) => value::live_value(key, stored, now_ms)?,
                    None => None,
                };
                bytes = bytes.saturating_add(value.as_ref().map_or(0, Vec::len));
                if bytes > *max_bytes && !values.is_empty() {
                    break;
                }
                values.push(value);
            }
            Ok(ReadResponse::Values(values))
        }
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
