//! Operators: every action of the shard manager is a small state machine of [`Step`]s,
//! recorded in the meta shard before its first step runs.
//!
//! A step is *idempotent*: whether it is done is decided from the directory (the shards as
//! their leaders last reported them), never from having sent it, so a step sent twice or a
//! manager that fails over and loads the operator again does no harm - it re-checks and goes
//! on. A step not done within `operator-step-timeout-ms` makes the operator roll back (run its
//! `rollback` steps) or, without any, fail.
//!
//! `Operator` = steps + rollback steps + status + verifications; `Step` (AddLearner, VerifyReplica,
//! PromoteLearner, SwapReplica, RemoveReplica, TransferLeader, Split, Merge, ResolveMerge);
//! `step_state` decides *done* from the directory alone (a VerifyReplica from the operator's
//! recorded `Verification` at the shard's current `conf_ver`: a match is done, a mismatch rolls
//! back), so steps are idempotent and resumable; timeouts roll back.

use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::model::{Epoch, NodeId, Role, ShardId};

/// One action on one shard, carried out by the shard's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// Add a learner replica on `node`.
    AddLearner {
        /// The node to receive the replica.
        node: NodeId,
    },
    /// Make the learner on `node` a voter.
    PromoteLearner {
        /// The learner's node.
        node: NodeId,
    },
    /// Remove the replica on `node` (its leader first hands leadership away if it is that
    /// replica).
    RemoveReplica {
        /// The node.
        node: NodeId,
    },
    /// Hand leadership to the voter on `to`.
    TransferLeader {
        /// The new leader's node.
        to: NodeId,
    },
    /// Split the shard (at `epoch`) at `key`, or at its middle key when `None`; the right part
    /// becomes shard `new_shard`.
    Split {
        /// The split key; `None`: the leader picks the middle key of the data.
        key: Option<Vec<u8>>,
        /// Id of the right half.
        new_shard: ShardId,
        /// The epoch the split was planned at (refused by the shard if it moved on).
        epoch: Epoch,
    },
    /// Merge the shard (the source) into its neighbour `target`; needs one node leading
    /// both, which the manager arranges first.
    Merge {
        /// The shard that absorbs this one.
        target: ShardId,
    },
    /// Settle an unfinished merge: finish it if its commit went through, else unfreeze the
    /// source.
    ResolveMerge {
        /// The merge's target.
        target: ShardId,
    },
    /// Check the replica on `node` against the leader's: both compute the range checksum
    /// at one log index. Done when the operator holds a matching [`Verification`] taken at
    /// the shard's current configuration; a mismatch makes it impossible (rollback).
    VerifyReplica {
        /// The replica's node (usually a learner just filled).
        node: NodeId,
    },
    /// One joint-consensus membership change: the learner on `promote` becomes a voter and
    /// the voter on `demote` a learner, atomically (its leader first hands leadership away
    /// if it is `demote`).
    SwapReplica {
        /// The learner to promote.
        promote: NodeId,
        /// The voter to demote.
        demote: NodeId,
    },
}

impl Step {
    /// The step's name, for people (`presage-ctl migrations`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::AddLearner { .. } => "copy",
            Step::PromoteLearner { .. } => "promote",
            Step::RemoveReplica { .. } => "remove",
            Step::TransferLeader { .. } => "transfer-leader",
            Step::Split { .. } => "split",
            Step::Merge { .. } => "merge",
            Step::ResolveMerge { .. } => "resolve-merge",
            Step::VerifyReplica { .. } => "verify",
            Step::SwapReplica { .. } => "swap",
        }
    }
}

/// The outcome of a [`Step::VerifyReplica`]: the two checksums at one log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The verified replica's node.
    pub node: NodeId,
    /// The shard's `conf_ver` when the step was sent (a verification of an older
    /// configuration does not count).
    pub conf_ver: u64,
    /// The log index both checksums were taken at.
    pub index: u64,
    /// The leader's checksum, `pairs/bytes/crc32` (engine `RangeChecksum`).
    pub leader: String,
    /// The replica's checksum.
    pub replica: String,
    /// When the manager learnt it (ms, manager clock).
    pub at_ms: u64,
}

impl Verification {
    /// True when the replica holds what the leader holds.
    pub fn matches(&self) -> bool {
        self.leader == self.replica
    }
}

/// Verifications an operator keeps (the newest).
pub const MAX_VERIFICATIONS_PER_OPERATOR: usize = 4;

/// Why an operator exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum OperatorKind {
    /// The shard passed its size or key limit.
    SizeSplit,
    /// The shard stayed hot for the load-split window.
    LoadSplit,
    /// The shard is forecast to pass the load-split threshold within the horizon.
    ForecastSplit,
    /// Two small, cold neighbours merge.
    Merge,
    /// Leadership moves to even out leader load.
    BalanceLeader,
    /// A replica moves so that the shard's replicas match its group (group change, repair,
    /// balance).
    MoveReplica {
        /// Node losing the replica (`None`: only adding).
        from: Option<NodeId>,
        /// Node gaining it (`None`: only removing).
        to: Option<NodeId>,
    },
    /// Asked for by an operator through the admin API.
    Manual,
    /// Proactive migration, prepare: a leadership moves off an at-risk node.
    ShiftLeader {
        /// The at-risk node.
        from: NodeId,
    },
    /// Proactive migration, prepare: a learner copy of a shard of an at-risk node is filled
    /// and verified on the healthy node that will replace it.
    PrepareCopy {
        /// The at-risk node.
        from: NodeId,
        /// The healthy node receiving the copy.
        to: NodeId,
    },
    /// A risky range's leadership moves to a safer voter in a gradual shift (`crate::shift`).
    DemoteLeader {
        /// The node being demoted.
        from: NodeId,
    },
    /// Getting ready for a known load spike (`crate::events`): a split of its range, or a
    /// leadership spread over the group.
    EventPrepare {
        /// The event.
        event: u64,
    },
}

/// Where an operator is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum OperatorStatus {
    /// Running its steps.
    Running,
    /// Running its rollback steps.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// Every step done.
    Done,
    /// Stopped without rollback.
    Failed {
        /// Why.
        reason: String,
    },
    /// Rollback finished.
    RolledBack {
        /// Why it rolled back.
        reason: String,
    },
}

impl OperatorStatus {
    /// True once the operator will do nothing more.
    pub fn is_finished(&self) -> bool {
        matches!(self, OperatorStatus::Done | OperatorStatus::Failed { .. } | OperatorStatus::RolledBack { .. })
    }
}

/// An action of the shard manager (persisted in the meta shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Its id (from the cluster's id allocator).
    pub id: u64,
    /// The shard it acts on.
    pub shard: ShardId,
    /// Why it exists.
    pub kind: OperatorKind,
    /// What it does, in order.
    pub steps: Vec<Step>,
    /// What undoes it, in order (run on timeout or when a step became impossible).
    pub rollback: Vec<Step>,
    /// Index of the first step not known done (of `rollback` while rolling back).
    pub next_step: usize,
    /// Where it is.
    pub status: OperatorStatus,
    /// When it was created (ms, manager clock).
    pub created_ms: u64,
    /// When its current step began.
    pub step_started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Outcomes of its verification steps, newest last (at most
    /// [`MAX_VERIFICATIONS_PER_OPERATOR`]).
    #[serde(default)]
    pub verifications: Vec<Verification>,
}

/// Whether a step is done, per the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// Done.
    Done,
    /// Not yet.
    Pending,
    /// Can never be done (the shard or replica it needs is gone).
    Impossible(String),
}

/// What [`Operator::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Poll {
    /// The operator changed and must be persisted again.
    pub changed: bool,
    /// The step to send to the shard's leader now, if any.
    pub action: Option<Step>,
}

impl Operator {
    /// A running operator whose first step starts at `now_ms`.
    pub fn new(
        id: u64,
        shard: ShardId,
        kind: OperatorKind,
        steps: Vec<Step>,
        rollback: Vec<Step>,
        now_ms: u64,
    ) -> Self {
        debug_assert!(!steps.is_empty(), "an operator does something");
        Operator {
            id,
            shard,
            kind,
            steps,
            rollback,
            next_step: 0,
            status: OperatorStatus::Running,
            created_ms: now_ms,
            step_started_ms: now_ms,
            finished_ms: None,
            verifications: Vec::new(),
        }
    }

    /// The step it runs now (of `rollback` while rolling back), if any.
    pub fn current_step(&self) -> Option<&Step> {
        match self.status {
            OperatorStatus::Running => self.steps.get(self.next_step),
            OperatorStatus::RollingBack { .. } => self.rollback.get(self.next_step),
            _ => None,
        }
    }

    /// Notes the outcome of a verification of the replica on `v.node`. Returns whether the
    /// operator changed (it was waiting on that verification).
    pub fn record_verification(&mut self, v: Verification) -> bool {
        if !matches!(self.current_step(), Some(Step::VerifyReplica { node }) if *node == v.node) {
            return false; // an answer to a step this operator is past (or a resend's)
        }
        self.verifications.push(v);
        if self.verifications.len() > MAX_VERIFICATIONS_PER_OPERATOR {
            self.verifications.remove(0);
        }
        true
    }

    /// The shards it holds busy: its own, and a merge's target.
    pub fn shards(&self) -> Vec<ShardId> {
        let mut out = vec![self.shard];
        for step in self.steps.iter().chain(&self.rollback) {
            if let Step::Merge { target } | Step::ResolveMerge { target } = step {
                if !out.contains(target) {
                    out.push(*target);
                }
            }
        }
        out
    }

    /// Advances past every step the directory shows done; decides rollback or failure on
    /// timeout or impossibility; returns the step to (re)send, if any.
    pub fn poll(&mut self, dir: &Directory, now_ms: u64, step_timeout_ms: u64) -> Poll {
        let mut out = Poll::default();
        loop {
            let steps = match &self.status {
                OperatorStatus::Running => &self.steps,
                OperatorStatus::RollingBack { .. } => &self.rollback,
                _ => return out,
            };
            let Some(step) = steps.get(self.next_step).cloned() else {
                self.status = match std::mem::replace(&mut self.status, OperatorStatus::Done) {
                    OperatorStatus::RollingBack { reason } => OperatorStatus::RolledBack { reason },
                    _ => OperatorStatus::Done,
                };
                self.finished_ms = Some(now_ms);
                out.changed = true;
                return out;
            };
            // A replica a swap demoted is removed only as a learner: a voter there means the
            // swap is not done after all (a stale directory judged it done, or a change in
            // flight undid it), so the swap is due again - removing a voter here could take
            // the shard below its replicas.
            let swap_undone = match (&step, self.next_step.checked_sub(1).and_then(|i| steps.get(i))) {
                (Step::RemoveReplica { node }, Some(Step::SwapReplica { demote, .. })) if demote == node => {
                    dir.get(self.shard).and_then(|s| s.replica(*node)).is_some_and(|r| r.role == Role::Voter)
                }
                _ => false,
            };
            if swap_undone {
                self.next_step -= 1;
                self.step_started_ms = now_ms;
                out.changed = true;
                continue;
            }
            let state = match &step {
                Step::VerifyReplica { node } => self.verify_state(*node, dir),
                _ => step_state(self.shard, &step, dir),
            };
            match state {
                StepState::Done => {
                    self.next_step += 1;
                    self.step_started_ms = now_ms;
                    out.changed = true;
                }
                StepState::Impossible(reason) => {
                    self.give_up(reason, now_ms);
                    out.changed = true;
                }
                StepState::Pending if now_ms.saturating_sub(self.step_started_ms) > step_timeout_ms => {
                    self.give_up(format!("step {} timed out", self.next_step), now_ms);
                    out.changed = true;
                }
                StepState::Pending => {
                    out.action = Some(self.action_for(step, dir));
                    return out;
                }
            }
        }
    }

    /// A verification is done when one was recorded for the replica at the shard's current
    /// configuration; a mismatch can never become done.
    fn verify_state(&self, node: NodeId, dir: &Directory) -> StepState {
        let Some(s) = dir.get(self.shard) else { return StepState::Impossible("the shard is gone".into()) };
        if s.replica(node).is_none() {
            return StepState::Impossible(format!("no replica on node {node} to verify"));
        }
        let latest = self.verifications.iter().rev().find(|v| v.node == node && v.conf_ver == s.epoch.conf_ver);
        match latest {
            Some(v) if v.matches() => StepState::Done,
            Some(v) => StepState::Impossible(format!(
                "the replica on node {node} differs from the leader's at index {}: {} vs {}",
                v.index, v.replica, v.leader
            )),
            None => StepState::Pending,
        }
    }

    /// A merge, and the resolution of a frozen one, needs one node leading both shards (the
    /// source's leader proposes the target's `CommitMerge`): until then, move the source's
    /// leadership to the target's leader.
    fn action_for(&self, step: Step, dir: &Directory) -> Step {
        if let Step::Merge { target } | Step::ResolveMerge { target } = step {
            let source_leader = dir.get(self.shard).and_then(|s| s.leader);
            let target_leader = dir.get(target).and_then(|s| s.leader);
            if let (Some(s), Some(t)) = (source_leader, target_leader) {
                if s != t {
                    return Step::TransferLeader { to: t };
                }
            }
        }
        step
    }

    /// Cancels a running operator at `now_ms` (an operator's command): it rolls back if it
    /// has rollback steps, else stops as failed. A step already sent may still take effect
    /// (the rollback then undoes what it can). `false` if it was not running.
    pub fn cancel(&mut self, now_ms: u64) -> bool {
        if self.status != OperatorStatus::Running {
            return false;
        }
        self.give_up("cancelled by an operator".into(), now_ms);
        true
    }

    fn give_up(&mut self, reason: String, now_ms: u64) {
        match self.status {
            OperatorStatus::Running if !self.rollback.is_empty() => {
                self.status = OperatorStatus::RollingBack { reason };
                self.next_step = 0;
                self.step_started_ms = now_ms;
            }
            _ => {
                self.status = OperatorStatus::Failed { reason };
                self.finished_ms = Some(now_ms);
            }
        }
    }
}

/// Whether `step` on `shard` is done, per the directory.
pub fn step_state(shard: ShardId, step: &Step, dir: &Directory) -> StepState {
    let s = dir.get(shard);
    match step {
        Step::AddLearner { node } => match s {
            None => StepState::Impossible("the shard is gone".into()),
            Some(s) if s.replica(*node).is_some() => StepState::Done,
            Some(_) => StepState::Pending,
        },
        Step::PromoteLearner { node } => match s.map(|s| s.replica(*node).map(|r| r.role)) {
            None => StepState::Impossible("the shard is gone".into()),
            Some(Some(Role::Voter)) => StepState::Done,
            Some(Some(Role::Learner)) => StepState::Pending,
            Some(None) => StepState::Impossible(format!("no replica on node {node} to promote")),
        },
        Step::RemoveReplica { node } => match s {
            Some(s) if s.replica(*node).is_some() => StepState::Pending,
            _ => StepState::Done,
        },
        Step::TransferLeader { to } => match s {
            None => StepState::Impossible("the shard is gone".into()),
            Some(s) if s.leader == Some(*to) => StepState::Done,
            Some(s) if s.replica(*to).is_none_or(|r| r.role != Role::Voter) => {
                StepState::Impossible(format!("node {to} holds no voter"))
            }
            Some(_) => StepState::Pending,
        },
        Step::Split { new_shard, .. } => {
            if dir.get(*new_shard).is_some() {
                StepState::Done
            } else if s.is_none() {
                StepState::Impossible("the shard is gone".into())
            } else {
                StepState::Pending // until the split-off shard reports (or the step times out)
            }
        }
        Step::Merge { target } => match (s, dir.get(*target)) {
            (None, _) => StepState::Done, // the target's wider range replaced the source
            (Some(_), None) => StepState::Pending,
            (Some(src), Some(tgt)) if src.voters() != tgt.voters() || src.has_learners() || tgt.has_learners() => {
                StepState::Impossible("the shards' replicas differ".into())
            }
            (Some(_), Some(_)) => StepState::Pending,
        },
        Step::ResolveMerge { .. } => match s {
            None => StepState::Done,
            Some(s) if s.merging_into.is_none() => StepState::Done,
            Some(_) => StepState::Pending,
        },
        Step::VerifyReplica { node } => match s {
            // Judged by `Operator::poll` from the operator's verifications; from the directory
            // alone only its impossibility shows.
            None => StepState::Impossible("the shard is gone".into()),
            Some(s) if s.replica(*node).is_none() => StepState::Impossible(format!("no replica on node {node}")),
            Some(_) => StepState::Pending,
        },
        Step::SwapReplica { promote, demote } => match s {
            None => StepState::Impossible("the shard is gone".into()),
            Some(s) => {
                let role = |n: &NodeId| s.replica(*n).map(|r| r.role);
                match (role(promote), role(demote)) {
                    (Some(Role::Voter), None | Some(Role::Learner)) => StepState::Done,
                    (None, _) => StepState::Impossible(format!("no replica on node {promote} to promote")),
                    _ => StepState::Pending,
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ReplicaMeta, ShardMeta};

    fn shard(id: u64, replicas: &[(u64, Role)], leader: u64) -> ShardMeta {
        ShardMeta {
            id,
            start: Vec::new(),
            end: None,
            epoch: Epoch { version: 1, conf_ver: 1 },
            replicas: replicas.iter().map(|&(node, role)| ReplicaMeta { node, role }).collect(),
            leader: Some(leader),
            merging_into: None,
        }
    }

    fn move_op() -> Operator {
        Operator::new(
            9,
            1,
            OperatorKind::MoveReplica { from: Some(3), to: Some(4) },
            vec![Step::AddLearner { node: 4 }, Step::PromoteLearner { node: 4 }, Step::RemoveReplica { node: 3 }],
            vec![Step::RemoveReplica { node: 4 }],
            0,
        )
    }

    #[test]
    fn steps_advance_from_the_directory_only() {
        let mut dir = Directory::new();
        let v = Role::Voter;
        dir.update(shard(1, &[(1, v), (2, v), (3, v)], 1));
        let mut op = move_op();
        assert_eq!(op.poll(&dir, 10, 1000), Poll { changed: false, action: Some(Step::AddLearner { node: 4 }) });
        // Sending again is harmless: still pending until the leader reports the learner.
        assert_eq!(op.poll(&dir, 20, 1000).action, Some(Step::AddLearner { node: 4 }));
        let mut s = shard(1, &[(1, v), (2, v), (3, v), (4, Role::Learner)], 1);
        s.epoch.conf_ver = 2;
        dir.update(s);
        assert_eq!(op.poll(&dir, 30, 1000), Poll { changed: true, action: Some(Step::PromoteLearner { node: 4 }) });
        // A manager that loads the operator later, after every step happened, just finishes.
        let mut s = shard(1, &[(1, v), (2, v), (4, v)], 1);
        s.epoch.conf_ver = 4;
        dir.update(s);
        let mut resumed = op.clone();
        assert_eq!(resumed.poll(&dir, 40, 1000), Poll { changed: true, action: None });
        assert_eq!(resumed.status, OperatorStatus::Done);
    }

    /// A rollback judged its swap-back done from a stale directory (the forward swap was
    /// still in flight); when the directory then shows the demoted node a voter again, the
    /// removal is not sent: the swap is due again.
    #[test]
    fn a_removal_after_a_swap_waits_for_the_swap_when_the_demoted_node_is_a_voter() {
        let (v, l) = (Role::Voter, Role::Learner);
        let mut dir = Directory::new();
        let mut op = Operator::new(
            9,
            1,
            OperatorKind::MoveReplica { from: Some(3), to: Some(4) },
            vec![Step::SwapReplica { promote: 4, demote: 3 }, Step::RemoveReplica { node: 3 }],
            vec![],
            0,
        );
        let mut s = shard(1, &[(1, v), (2, v), (4, v), (3, l)], 1);
        s.epoch.conf_ver = 3;
        dir.update(s);
        assert_eq!(op.poll(&dir, 10, 1000).action, Some(Step::RemoveReplica { node: 3 }));
        let mut s = shard(1, &[(1, v), (2, v), (3, v), (4, l)], 1);
        s.epoch.conf_ver = 5;
        dir.update(s);
        let p = op.poll(&dir, 20, 1000);
        assert_eq!(p.action, Some(Step::SwapReplica { promote: 4, demote: 3 }), "never remove the voter");
        assert!(p.changed);
        assert_eq!(op.status, OperatorStatus::Running);
    }

    #[test]
    fn timeout_rolls_back() {
        let mut dir = Directory::new();
        let v = Role::Voter;
        let mut s = shard(1, &[(1, v), (2, v), (3, v), (4, Role::Learner)], 1);
        dir.update(s.clone());
        let mut op = move_op();
        assert_eq!(op.poll(&dir, 10, 100).action, Some(Step::PromoteLearner { node: 4 }));
        let p = op.poll(&dir, 500, 100);
        assert!(matches!(op.status, OperatorStatus::RollingBack { .. }), "{:?}", op.status);
        assert_eq!(p.action, Some(Step::RemoveReplica { node: 4 }));
        s.replicas.pop();
        s.epoch.conf_ver = 3;
        dir.update(s);
        op.poll(&dir, 600, 100);
        assert!(matches!(op.status, OperatorStatus::RolledBack { .. }), "{:?}", op.status);
        assert!(op.status.is_finished());
    }

    /// A merge, and the resolution of a frozen one, first moves the source's leadership to
    /// the target's leader.
    #[test]
    fn merge_first_colocates_leaders() {
        for step in [Step::Merge { target: 1 }, Step::ResolveMerge { target: 1 }] {
            let mut dir = Directory::new();
            let v = Role::Voter;
            let mut a = shard(1, &[(1, v), (2, v), (3, v)], 1);
            a.end = Some(b"m".to_vec());
            let mut b = shard(2, &[(1, v), (2, v), (3, v)], 2);
            b.start = b"m".to_vec();
            if matches!(step, Step::ResolveMerge { .. }) {
                b.merging_into = Some(1);
            }
            dir.update(a);
            dir.update(b.clone());
            let mut op = Operator::new(5, 2, OperatorKind::Merge, vec![step.clone()], vec![], 0);
            assert_eq!(op.poll(&dir, 1, 1000).action, Some(Step::TransferLeader { to: 1 }), "{step:?}");
            b.leader = Some(1);
            dir.update(b);
            assert_eq!(op.poll(&dir, 2, 1000).action, Some(step.clone()));
            let mut merged = shard(1, &[(1, v), (2, v), (3, v)], 1);
            merged.epoch.version = 2;
            dir.update(merged);
            op.poll(&dir, 3, 1000);
            assert_eq!(op.status, OperatorStatus::Done, "{step:?}");
        }
    }

    #[test]
    fn impossible_step_fails_without_rollback() {
        let dir = Directory::new();
        let mut op = Operator::new(1, 7, OperatorKind::BalanceLeader, vec![Step::TransferLeader { to: 2 }], vec![], 0);
        assert!(op.poll(&dir, 1, 1000).changed);
        assert!(matches!(op.status, OperatorStatus::Failed { .. }));
        let json = serde_json::to_string(&op).expect("encode");
        assert_eq!(serde_json::from_str::<Operator>(&json).expect("decode"), op);
    }
}
