//! Membership changes at apply: the descriptor lists the voters of both halves of a joint
//! configuration as voters, then learners, by node id; every conf change entry, the automatic
//! leave included, bumps `conf_ver`.

use super::*;

impl<E: Engine> Peer<E> {
    /// Applies a membership change: raft-rs's configuration, and the descriptor derived from
    /// it with `conf_ver` + 1 (every conf change entry bumps it, the automatic leave of a
    /// joint configuration included). In a joint configuration every voter of either half is
    /// listed as a voter (it still votes in one of the two majorities): a voter being demoted
    /// (in `learners_next`) shows as a learner only once the joint state is left. Voters
    /// first, then learners, each by node id, so that every replica derives the same bytes.
    pub(super) fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
        wb: &mut WriteBatch,
        applied: &mut Applied<E>,
    ) -> Result<()> {
        let cs = self.raw.apply_conf_change(cc)?;
        applied.conf_changed = true;
        let mut desc = self.descriptor().clone();
        let mut epoch = desc.epoch();
        epoch.conf_ver += 1;
        desc.epoch = Some(epoch);
        let voters: BTreeSet<u64> = cs.voters.iter().chain(cs.voters_outgoing.iter()).copied().collect();
        let learners: BTreeSet<u64> =
            cs.learners.iter().chain(cs.learners_next.iter()).copied().filter(|id| !voters.contains(id)).collect();
        debug_assert!(
            cs.learners.iter().all(|id| !voters.contains(id))
                && cs.learners_next.iter().all(|id| cs.voters_outgoing.contains(id) && !cs.voters.contains(id)),
            "raft-rs keeps learners out of both voter sets and demotes only outgoing voters: {cs:?}"
        );
        debug_assert!(
            !cs.voters_outgoing.is_empty() || cs.learners_next.is_empty(),
            "learners_next exists only in a joint configuration: {cs:?}"
        );
        desc.replicas = voters
            .iter()
            .map(|id| Replica::voter(*id))
            .chain(learners.iter().map(|id| Replica::learner(*id)))
            .collect();
        let me = self.node_id;
        applied.removed = !desc.replicas.iter().any(|r| r.node_id == me);
        tracing::info!(
            node = me,
            shard = desc.id,
            conf_ver = epoch.conf_ver,
            joint = !cs.voters_outgoing.is_empty(),
            voters = ?voters,
            learners = ?learners,
            "membership changed"
        );
        self.raw.mut_store().set_membership(cs, desc, wb);
        self.hand_off_if_demoted();
        Ok(())
    }

    /// True while this replica leads its shard as a learner (a change demoted it).
    pub(crate) fn leads_as_learner(&self) -> bool {
        self.is_leader() && self.descriptor().replicas.iter().any(|r| r.node_id == self.node_id && !r.is_voter())
    }

    /// A leader the membership demoted to learner hands its leadership to the voter with the
    /// most of its log, unless a transfer already runs.
    pub(crate) fn hand_off_if_demoted(&mut self) {
        if !self.leads_as_learner() || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let prs = self.raw.raft.prs();
        let best = self
            .descriptor()
            .replicas
            .iter()
            .filter(|r| r.is_voter())
            .filter_map(|r| prs.get(r.node_id).map(|p| (p.matched, r.node_id)))
            .max();
        let Some((_, to)) = best else { return };
        tracing::info!(node = self.node_id, shard = self.shard_id(), to, "demoted leader hands its leadership over");
        // The transferee campaigns past the followers' election timers: no lease from here.
        self.end_lease();
        self.raw.transfer_leader(to);
    }
}
