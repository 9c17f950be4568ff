//! The manager's part of known events ([`crate::events`]; declaring and cancelling them are
//! admin commands, `crate::admin`): each round, before node liveness and migrations:
//!
//! 1. **derive** the nodes the events shape now: those in a maintenance window that is
//!    preparing or open lead nothing ([`ClusterState::sheds_leaders`]; the shed policy moves
//!    their leaderships), and those whose window (or its grace) covers them are not failed
//!    when down;
//! 2. **keep quorums**: a group whose members outside any window, up and not held fall below
//!    a majority gets one of its members in a window evacuated (a `Maintenance` migration
//!    that cuts over at once), one per group per round, until the spares it brings in make a
//!    majority again; the migration is released when the window closes;
//! 3. **prune** finished events beyond [`MAX_FINISHED_EVENTS`].
//!
//! Spikes are prepared by the split and leadership policies ([`crate::policy`]).

use std::collections::BTreeSet;

use super::migrate::{self, Changes};
use super::Manager;
use crate::events::{EventView, MAX_FINISHED_EVENTS};
use crate::model::{MigrationCause, MigrationStage, NodeId, NodeState};
use crate::state::ClusterState;

/// Derives this round's event nodes, starts the evacuations quorums need, prunes (module
/// docs).
pub(crate) fn update(st: &mut ClusterState, now_ms: u64) -> Changes {
    let grace_ms = st.cfg().maintenance_grace_ms;
    let mut maintenance = BTreeSet::new();
    let mut excused = BTreeSet::new();
    for e in st.events() {
        let nodes = st.event_nodes(e);
        if e.phase(now_ms).is_active() {
            maintenance.extend(nodes.iter().copied());
        }
        if e.excuses_down(now_ms, grace_ms) {
            excused.extend(nodes);
        }
    }
    st.set_event_nodes(maintenance, excused);
    let mut out = Changes::default();
    for (node, group) in quorum_evacuations(st) {
        let (_, started) =
            migrate::start(st, node, group, MigrationCause::Maintenance, MigrationStage::CuttingOver, now_ms);
        out.writes.extend(started.writes);
        out.events.extend(started.events);
    }
    let finished: Vec<u64> = st.events().filter(|e| e.phase(now_ms).is_finished()).map(|e| e.id).collect();
    let excess = finished.len().saturating_sub(MAX_FINISHED_EVENTS);
    for id in finished.into_iter().take(excess) {
        out.writes.push(st.remove_event(id));
    }
    out
}

/// For each group short of a majority without its members in a window: one such member
/// (the lowest id not held yet) to evacuate, if a spare can take its place.
fn quorum_evacuations(st: &ClusterState) -> Vec<(NodeId, crate::model::GroupId)> {
    let mut out = Vec::new();
    for g in st.groups() {
        let majority = g.nodes.len() / 2 + 1;
        let available = g
            .nodes
            .iter()
            .filter(|n| {
                !st.in_maintenance(**n)
                    && !st.is_held(**n)
                    && st.node(**n).is_some_and(|x| matches!(x.state, NodeState::Up | NodeState::Suspect))
            })
            .count();
        if available >= majority {
            continue;
        }
        let candidate = g
            .nodes
            .iter()
            .copied()
            .filter(|n| st.in_maintenance(*n) && !st.is_held(*n))
            .find(|n| st.choose_target(*n, g.id).is_some());
        if let Some(node) = candidate {
            out.push((node, g.id));
        }
    }
    out
}

impl Manager {
    /// Every known event with its phase at `now_ms`, by start time (`presage-ctl events list`).
    pub fn events(&self, now_ms: u64) -> Vec<EventView> {
        let mut out: Vec<EventView> = self
            .st
            .events()
            .map(|e| EventView { event: e.clone(), phase: e.phase(now_ms), nodes: self.st.event_nodes(e) })
            .collect();
        out.sort_by_key(|v| (v.event.start_ms, v.event.id));
        out
    }

    /// Nodes whose being down a maintenance window excuses now (the failure analysis does not
    /// learn a failure from them).
    pub fn down_excused(&self) -> BTreeSet<NodeId> {
        self.st.nodes().map(|n| n.id).filter(|n| self.st.down_excused(*n)).collect()
    }
}
