//! Operators' commands (the admin API and `presage-ctl`): manual splits, merges, moves,
//! leader transfers and drains, checked against the directory and run as `Manual`
//! operators through the same steps the policies use.
//!
//! `AdminCommand` (split, merge, move = re-place into the target node's group, migrate (the same,
//! from the shard's leader), transfer-leader, drain, evacuate = a Manual migration that cuts over
//! at once, release = end a held node's evacuation by hand: an evacuated node is released, a
//! preparing one stands down, a cut-over is not interrupted; decommission = an evacuation after
//! which the node is Removed; recommission = undo a drain) checked against the directory and
//! started as `Manual` operators or migrations; pause-scheduler and resume-scheduler set the
//! persisted flag `policy::plan` reads; add-event and cancel-event declare and cancel known
//! events (maintenance windows, load spikes: `crate::events`).

use serde::{Deserialize, Serialize};

use crate::events::{EventKind, KnownEvent, MaintenanceScope, NewEvent, MAX_EVENTS};
use crate::manager::Manager;
use crate::model::{GroupId, NodeId, NodeState, Role, ShardId, ShardMeta};
use crate::operator::Step;
use crate::state::ClusterState;

/// A command from an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum AdminCommand {
    /// Split `shard` at `key` (or at its middle key, chosen by the leader).
    Split {
        /// The shard.
        shard: ShardId,
        /// The first key of the right half; must be strictly inside the shard.
        #[serde(default)]
        key: Option<Vec<u8>>,
    },
    /// Merge `shard`'s right neighbour into `shard` (both in one group).
    Merge {
        /// The left shard, which stays.
        shard: ShardId,
    },
    /// Move `shard` off node `from` to node `to`. Replicas follow their shard's replication
    /// group (one node per region), so this re-places the shard into the group of `to`: every
    /// replica moves there, one at a time, `from`'s among them.
    Move {
        /// The shard.
        shard: ShardId,
        /// A node holding a replica of it.
        from: NodeId,
        /// A node of another group.
        to: NodeId,
    },
    /// Make `to` the leader of `shard`.
    TransferLeader {
        /// The shard.
        shard: ShardId,
        /// A node holding a voter of it.
        to: NodeId,
    },
    /// Mark `node` Draining: its leaderships move to the other replicas and no new ones
    /// are given to it.
    Drain {
        /// The node.
        node: NodeId,
    },
    /// Evacuate `node` now (a migration that starts cutting over at once): a healthy spare
    /// node takes its place in its replication group and every replica moves there,
    /// verified, through joint-consensus swaps. The node is held out of groups afterwards.
    Evacuate {
        /// The node.
        node: NodeId,
    },
    /// End `node`'s evacuation by hand (the node was repaired, or a preparation is not
    /// wanted): an evacuated node is released (it may take a group's place again, as a
    /// spare); a preparing one stands down (its prepared copies are dropped). A cut-over
    /// in progress is not interrupted: release the node once it is evacuated.
    Release {
        /// The node.
        node: NodeId,
    },
    /// Migrate `shard`'s replicas to node `to`'s replication group (the replica in `to`'s
    /// region first), each copied, verified and swapped in.
    Migrate {
        /// The shard.
        shard: ShardId,
        /// A node of another group.
        to: NodeId,
    },
    /// Decommission `node` for good: its replicas move to a spare node that takes its place
    /// in its group (as `Evacuate`), then the node is `Removed` (its id never reused). A node
    /// in no group is removed at once.
    Decommission {
        /// The node.
        node: NodeId,
    },
    /// Return a `Draining` node to service (`Up`): the undo of `Drain`. A removed node
    /// cannot come back (start a new node), nor can a cut-over be interrupted.
    Recommission {
        /// The node.
        node: NodeId,
    },
    /// Pause load-driven scheduling (splits, merges, leader and group balancing) until
    /// resumed, kept across manager fail-overs; running operators finish, manual commands
    /// work, and safety moves go on (evacuations, failing disks' leaderships shed, lost
    /// replicas repaired).
    PauseScheduler,
    /// Cancel a running operator: it rolls back if it has rollback steps (a merge), else
    /// stops; a step already sent to the shard may still take effect.
    CancelOperator {
        /// The operator.
        id: u64,
    },
    /// Resume load-driven scheduling.
    ResumeScheduler,
    /// Declare a known event: a maintenance window of a node or region, or a load spike on
    /// a key range (`crate::events`).
    AddEvent {
        /// The declaration.
        event: crate::events::NewEvent,
    },
    /// Cancel a known event that has not finished.
    CancelEvent {
        /// The event.
        id: u64,
    },
}

/// What a command started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AdminOutcome {
    /// Operators started, by id.
    pub operators: Vec<u64>,
    /// What happened, for people.
    pub message: String,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdminError {
    /// No such shard.
    #[error("shard {0} does not exist")]
    NoShard(ShardId),
    /// No such node.
    #[error("node {0} does not exist")]
    NoNode(NodeId),
    /// The shard has an operator running, or is being merged.
    #[error("shard {0} is busy with another operator; retry when it finishes")]
    Busy(ShardId),
    /// The command does not fit the cluster as it is.
    #[error("{0}")]
    Refused(String),
}

impl Manager {
    /// Carries out an operator's command (module docs). The records it produces are taken
    /// with [`Manager::take_writes`]; the caller persists them before answering.
    pub fn admin(&mut self, command: AdminCommand, now_ms: u64) -> Result<AdminOutcome, AdminError> {
        let refused = |m: String| Err(AdminError::Refused(m));
        match command {
            AdminCommand::Split { shard, key } => {
                let s = self.shard_for_admin(shard)?;
                if ClusterState::is_meta(&s) {
                    return refused("the meta shard does not split".into());
                }
                if let Some(k) = &key {
                    if k.as_slice() <= s.start.as_slice() || !s.contains(k) {
                        return refused(format!("the split key must be inside shard {shard} and after its start"));
                    }
                }
                let steps = vec![Step::Split { key, new_shard: 0, epoch: s.epoch }];
                self.submit_admin(shard, steps, vec![], now_ms, format!("splitting shard {shard}"))
            }
            AdminCommand::Merge { shard } => {
                let left = self.shard_for_admin(shard)?;
                let right = self
                    .st
                    .directory()
                    .iter()
                    .find(|r| left.is_left_neighbour_of(r))
                    .cloned()
                    .ok_or_else(|| AdminError::Refused(format!("shard {shard} has no right neighbour")))?;
                if ClusterState::is_meta(&left) || ClusterState::is_meta(&right) {
                    return refused("the meta shard does not merge".into());
                }
                if self.st.is_busy(right.id) || right.merging_into.is_some() {
                    return Err(AdminError::Busy(right.id));
                }
                if self.group_of(shard) != self.group_of(right.id) || left.voters() != right.voters() {
                    return refused(format!(
                        "shards {shard} and {} are in different groups or replica sets; move one first",
                        right.id
                    ));
                }
                if left.has_learners() || right.has_learners() {
                    return Err(AdminError::Busy(shard));
                }
                let steps = vec![Step::Merge { target: left.id }];
                let rollback = vec![Step::ResolveMerge { target: left.id }];
                let msg = format!("merging shard {} into shard {shard}", right.id);
                self.submit_admin(right.id, steps, rollback, now_ms, msg)
            }
            AdminCommand::Migrate { shard, to } => {
                let s = self.shard_for_admin(shard)?;
                let from = s.leader.or_else(|| s.voters().first().copied()).ok_or(AdminError::Busy(shard))?;
                self.admin(AdminCommand::Move { shard, from, to }, now_ms)
            }
            AdminCommand::Evacuate { node } => self.evacuate(node, crate::model::MigrationCause::Manual, now_ms),
            AdminCommand::Decommission { node } => {
                let n = self.st.node(node).ok_or(AdminError::NoNode(node))?;
                if n.state == NodeState::Removed {
                    return refused(format!("node {node} is removed already"));
                }
                let holds = self.st.directory().iter().any(|s| s.replica(node).is_some());
                match self.st.migration_of(node).map(|m| (m.id, m.cause)) {
                    Some((id, crate::model::MigrationCause::Decommission)) => {
                        return Ok(AdminOutcome {
                            operators: vec![],
                            message: format!("node {node} is being decommissioned already (migration {id})"),
                        })
                    }
                    Some((id, _)) => {
                        return refused(format!(
                            "node {node} is being evacuated (migration {id}); decommission it once that ends"
                        ))
                    }
                    None => {}
                }
                if n.group.is_none() && !holds {
                    self.set_node_state(node, NodeState::Removed);
                    return Ok(AdminOutcome {
                        operators: vec![],
                        message: format!("node {node} held nothing and is removed; stop its process"),
                    });
                }
                let mut out = self.evacuate(node, crate::model::MigrationCause::Decommission, now_ms)?;
                out.message.push_str(&format!("; then node {node} is removed"));
                Ok(out)
            }
            AdminCommand::Recommission { node } => {
                let n = self.st.node(node).ok_or(AdminError::NoNode(node))?;
                match n.state {
                    NodeState::Removed => {
                        return refused(format!(
                            "node {node} was removed for good; its id is not reused: start a new node"
                        ))
                    }
                    NodeState::Draining => {}
                    other => return refused(format!("node {node} is {other:?}, not Draining: nothing to undo")),
                }
                if let Some(m) = self.st.migration_of(node) {
                    return refused(format!(
                        "node {node} is being evacuated (migration {}, {:?}); a cut-over is not interrupted",
                        m.id, m.stage
                    ));
                }
                self.set_node_state(node, NodeState::Up);
                Ok(AdminOutcome {
                    operators: vec![],
                    message: format!("node {node} is Up: it takes leaderships and replicas again"),
                })
            }
            AdminCommand::Release { node } => {
                use crate::model::MigrationStage;
                self.st.node(node).ok_or(AdminError::NoNode(node))?;
                let Some(m) = self.st.migration_of(node).cloned() else {
                    return refused(format!("node {node} is not being evacuated or held"));
                };
                let stage = match m.stage {
                    MigrationStage::Evacuated => MigrationStage::Released,
                    MigrationStage::Preparing => MigrationStage::StoodDown,
                    MigrationStage::CuttingOver => {
                        return refused(format!(
                            "node {node} is being cut over (migration {}): its replicas are moving now; release it \
                             once it is evacuated",
                            m.id
                        ))
                    }
                    MigrationStage::StoodDown | MigrationStage::Released => {
                        unreachable!("migration_of returns migrations that hold their node")
                    }
                };
                let changes = crate::manager::migrate::finish(&mut self.st, m.id, stage, now_ms);
                self.absorb(changes);
                Ok(AdminOutcome {
                    operators: vec![],
                    message: format!("migration {} of node {node}: {stage:?} by hand", m.id),
                })
            }
            AdminCommand::Move { shard, from, to } => {
                let s = self.shard_for_admin(shard)?;
                if s.replica(from).is_none() {
                    return refused(format!("node {from} holds no replica of shard {shard}"));
                }
                let to_node = self.st.node(to).ok_or(AdminError::NoNode(to))?;
                if to_node.state != NodeState::Up {
                    return refused(format!("node {to} is {:?}, not Up", to_node.state));
                }
                if s.replica(to).is_some() {
                    return refused(format!("node {to} already holds a replica of shard {shard}"));
                }
                let Some(group) = to_node.group else {
                    return refused(format!("node {to} is in no replication group yet"));
                };
                if self.group_of(shard) == Some(group) {
                    return refused(format!(
                        "node {to} is in shard {shard}'s group already; it gets a replica by repair"
                    ));
                }
                self.replace_shard(shard, group);
                Ok(AdminOutcome {
                    operators: vec![],
                    message: format!(
                        "shard {shard} re-placed into group {group}; its replicas move there one at a time"
                    ),
                })
            }
            AdminCommand::TransferLeader { shard, to } => {
                let s = self.shard_for_admin(shard)?;
                if !s.replica(to).is_some_and(|r| r.role == Role::Voter) {
                    return refused(format!("node {to} holds no voter of shard {shard}"));
                }
                if s.leader == Some(to) {
                    return Ok(AdminOutcome {
                        operators: vec![],
                        message: format!("node {to} leads shard {shard} already"),
                    });
                }
                let msg = format!("moving shard {shard}'s leadership to node {to}");
                self.submit_admin(shard, vec![Step::TransferLeader { to }], vec![], now_ms, msg)
            }
            AdminCommand::CancelOperator { id } => {
                let op = self.st.operator(id).ok_or_else(|| AdminError::Refused(format!("no operator {id}")))?;
                if !matches!(op.status, crate::operator::OperatorStatus::Running) {
                    return refused(format!("operator {id} is not running ({:?})", op.status));
                }
                let write = self.st.update_operator(id, |op| op.cancel(now_ms));
                self.pending.extend(write);
                self.st.rebuild_busy();
                let op =
                    self.st.operator(id).cloned().ok_or_else(|| AdminError::Refused(format!("no operator {id}")))?;
                let what = if op.status.is_finished() { "stopped" } else { "rolling back" };
                if op.status.is_finished() {
                    self.finished.push(op);
                }
                Ok(AdminOutcome { operators: vec![id], message: format!("operator {id} cancelled: {what}") })
            }
            AdminCommand::PauseScheduler | AdminCommand::ResumeScheduler => {
                let paused = command == AdminCommand::PauseScheduler;
                let was = self.st.cluster().scheduler_paused;
                let write = self.st.set_scheduler_paused(paused);
                self.pending.push(write);
                let now = if paused { "paused" } else { "running" };
                let before = if was == paused { " (it was already)" } else { "" };
                Ok(AdminOutcome { operators: vec![], message: format!("load-driven scheduling is {now}{before}") })
            }
            AdminCommand::AddEvent { event } => self.add_event(event, now_ms),
            AdminCommand::CancelEvent { id } => self.cancel_event(id, now_ms),
            AdminCommand::Drain { node } => {
                if !self.set_node_state(node, NodeState::Draining) {
                    return Err(AdminError::NoNode(node));
                }
                let led: Vec<ShardMeta> =
                    self.st.directory().iter().filter(|s| s.leader == Some(node)).cloned().collect();
                let mut out = AdminOutcome::default();
                let mut skipped = 0;
                for s in led {
                    let to = s.voters().into_iter().find(|n| *n != node && self.node_is_up(*n));
                    let started =
                        to.and_then(|to| self.submit(s.id, vec![Step::TransferLeader { to }], vec![], now_ms));
                    match started {
                        Some(id) => out.operators.push(id),
                        None => skipped += 1,
                    }
                }
                out.message = format!(
                    "node {node} is Draining; {} leadership transfers started{}",
                    out.operators.len(),
                    if skipped > 0 {
                        format!(", {skipped} shards busy or without another Up voter")
                    } else {
                        String::new()
                    }
                );
                Ok(out)
            }
        }
    }

    /// Declares a known event (`presage-ctl events add`).
    fn add_event(&mut self, new: NewEvent, now_ms: u64) -> Result<AdminOutcome, AdminError> {
        let lead_ms = new.validate(now_ms, self.st.cfg().event_lead_ms).map_err(AdminError::Refused)?;
        if self.st.events().count() >= MAX_EVENTS {
            return Err(AdminError::Refused(format!(
                "{MAX_EVENTS} events are known already; cancel some or wait for them to finish"
            )));
        }
        match &new.what {
            EventKind::Maintenance { scope: MaintenanceScope::Node { node } } => {
                let n = self.st.node(*node).ok_or(AdminError::NoNode(*node))?;
                if n.state == NodeState::Removed {
                    return Err(AdminError::Refused(format!("node {node} is removed")));
                }
            }
            EventKind::Maintenance { scope: MaintenanceScope::Region { region } } => {
                if !self.st.nodes().any(|n| &n.region == region && n.state != NodeState::Removed) {
                    return Err(AdminError::Refused(format!("no node is in region {region:?}")));
                }
            }
            EventKind::Spike { .. } => {}
        }
        let id = self.alloc_id();
        let event = KnownEvent {
            id,
            what: new.what,
            start_ms: new.start_ms,
            end_ms: new.end_ms,
            lead_ms,
            note: new.note,
            created_ms: now_ms,
            cancelled_ms: None,
        };
        let phase = event.phase(now_ms);
        let warning = self.quorum_warning(&event, now_ms);
        let write = self.st.put_event(event);
        self.pending.push(write);
        Ok(AdminOutcome {
            operators: vec![],
            message: format!(
                "event {id} declared ({phase:?}); the cluster prepares from {lead_ms} ms before it{}",
                warning.map_or(String::new(), |w| format!("; WARNING: {w}"))
            ),
        })
    }

    /// A maintenance window that, with the windows overlapping it and the nodes down now,
    /// leaves a group without a majority while no spare is left to take a member's place:
    /// accepted (the operator decides), but said.
    fn quorum_warning(&self, event: &KnownEvent, now_ms: u64) -> Option<String> {
        if !matches!(event.what, EventKind::Maintenance { .. }) {
            return None;
        }
        let overlapping = self.st.events().filter(|e| {
            matches!(e.what, EventKind::Maintenance { .. })
                && !e.phase(now_ms).is_finished()
                && e.prepare_ms() < event.end_ms
                && event.prepare_ms() < e.end_ms
        });
        let away: std::collections::BTreeSet<NodeId> =
            overlapping.flat_map(|e| self.st.event_nodes(e)).chain(self.st.event_nodes(event)).collect();
        let spares = self
            .st
            .nodes()
            .any(|n| n.state == NodeState::Up && n.group.is_none() && !away.contains(&n.id) && !self.st.is_held(n.id));
        self.st.groups().find_map(|g| {
            let gone = g.nodes.iter().filter(|n| away.contains(n) || !self.node_is_up(**n)).count();
            let short = g.nodes.len() - gone < g.nodes.len() / 2 + 1;
            (short && !spares).then(|| {
                format!(
                    "group {} keeps {} of its {} members through the window and no spare node is free to take a \
                     member's place: it loses its quorum then unless a node is added",
                    g.id,
                    g.nodes.len() - gone,
                    g.nodes.len()
                )
            })
        })
    }

    /// Cancels a known event that has not finished (`presage-ctl events cancel`).
    fn cancel_event(&mut self, id: u64, now_ms: u64) -> Result<AdminOutcome, AdminError> {
        let e = self.st.event(id).cloned().ok_or_else(|| AdminError::Refused(format!("no event {id}")))?;
        let phase = e.phase(now_ms);
        if phase.is_finished() {
            return Err(AdminError::Refused(format!("event {id} is {phase:?} already")));
        }
        let write = self.st.put_event(KnownEvent { cancelled_ms: Some(now_ms), ..e });
        self.pending.push(write);
        Ok(AdminOutcome {
            operators: vec![],
            message: format!("event {id} cancelled; its nodes take leaderships again and spare copies are released"),
        })
    }

    /// Starts moving every replica of `node` to a spare node that takes its place in its
    /// group, cutting over at once (`Evacuate`, `Decommission`).
    fn evacuate(
        &mut self,
        node: NodeId,
        cause: crate::model::MigrationCause,
        now_ms: u64,
    ) -> Result<AdminOutcome, AdminError> {
        let n = self.st.node(node).ok_or(AdminError::NoNode(node))?;
        if let Some(m) = self.st.migration_of(node) {
            return Ok(AdminOutcome {
                operators: vec![],
                message: format!("node {node} is being evacuated already (migration {}, {:?})", m.id, m.stage),
            });
        }
        let Some(group) = n.group else {
            return Err(AdminError::Refused(format!(
                "node {node} is in no replication group: it holds no replicas to move"
            )));
        };
        if self.st.choose_target(node, group).is_none() {
            return Err(AdminError::Refused(format!(
                "no eligible node to take node {node}'s place: it needs an Up node in no group, at low \
                 risk, in a region group {group}'s other members are not in; start one first"
            )));
        }
        let (id, changes) = crate::manager::migrate::start(
            &mut self.st,
            node,
            group,
            cause,
            crate::model::MigrationStage::CuttingOver,
            now_ms,
        );
        self.absorb(changes);
        let target = self.st.migration(id).and_then(|m| m.target).unwrap_or_default();
        Ok(AdminOutcome {
            operators: vec![],
            message: format!(
                "migration {id}: node {target} takes node {node}'s place in group {group}; its replicas move \
                 there one at a time (presage-ctl migrations)"
            ),
        })
    }

    fn shard_for_admin(&self, shard: ShardId) -> Result<ShardMeta, AdminError> {
        let s = self.st.directory().get(shard).cloned().ok_or(AdminError::NoShard(shard))?;
        if self.st.is_busy(shard) || s.merging_into.is_some() {
            return Err(AdminError::Busy(shard));
        }
        Ok(s)
    }

    fn submit_admin(
        &mut self,
        shard: ShardId,
        steps: Vec<Step>,
        rollback: Vec<Step>,
        now_ms: u64,
        message: String,
    ) -> Result<AdminOutcome, AdminError> {
        match self.submit(shard, steps, rollback, now_ms) {
            Some(id) => Ok(AdminOutcome { operators: vec![id], message }),
            None => Err(AdminError::Busy(shard)),
        }
    }

    /// The group a shard is placed in.
    pub fn group_of(&self, shard: ShardId) -> Option<GroupId> {
        self.st.group_of(shard)
    }

    pub(crate) fn node_is_up(&self, node: NodeId) -> bool {
        self.st.node(node).is_some_and(|n| n.state == NodeState::Up)
    }
}
