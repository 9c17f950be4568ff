//! The simulated data layer the manager tests drive: shards with sizes, a load generator,
//! heartbeats, and the manager's commands carried out as the replication layer would.

use super::*;

/// The simulated data layer: shards with sizes and a load generator.
pub(crate) struct Sim {
    pub(crate) shards: BTreeMap<u64, ShardMeta>,
    /// Bytes and keys per shard.
    pub(crate) size: BTreeMap<u64, (u64, u64)>,
    /// Requests per heartbeat per shard, as (key, count) hot spots.
    pub(crate) traffic: Vec<(u64, u64)>,
    pub(crate) nodes: Vec<NodeMeta>,
    /// Nodes that stopped (send no heartbeats, ignore commands).
    pub(crate) dead: Vec<u64>,
    /// The meta shard's contents.
    pub(crate) meta: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) now_ms: u64,
    pub(crate) rng: SmallRng,
    /// Commands to drop instead of carrying out (a partitioned leader).
    pub(crate) drop_commands: bool,
    /// Replicas, by (shard, node), whose data differs from the leader's (every verification
    /// of them fails).
    pub(crate) diverged: std::collections::BTreeSet<(u64, u64)>,
    /// Verification answers to hand the manager: (operator, outcome).
    pub(crate) verified: Vec<(u64, Verification)>,
    /// The failure model's risk per node, fed to the manager every round.
    pub(crate) risk: BTreeMap<u64, f64>,
    /// Nodes under a disk warning, fed each round.
    pub(crate) degraded: BTreeSet<u64>,
    /// Nodes whose own disk check hands their leaderships away (in their heartbeats).
    pub(crate) shedding: BTreeSet<u64>,
    /// Each request a shard's leader serves on these nodes takes this many µs (else 500).
    pub(crate) slow_us: BTreeMap<u64, u64>,
    /// Each request of these shards takes this many µs wherever they are led.
    pub(crate) slow_shard_us: BTreeMap<u64, u64>,
}

impl Sim {
    /// A cluster bootstrapped by node 1: the meta shard and shard 1 over every user key.
    pub(crate) fn bootstrap(seed: u64, cfg: &ManagerConfig) -> (Sim, Manager) {
        let first = node(1, "r1");
        let mut shards = BTreeMap::new();
        let one = |id, start: Vec<u8>, end| ShardMeta {
            id,
            start,
            end,
            epoch: Epoch { version: 1, conf_ver: 1 },
            replicas: vec![ReplicaMeta { node: 1, role: Role::Voter }],
            leader: Some(1),
            merging_into: None,
        };
        shards.insert(META_SHARD_ID, one(META_SHARD_ID, vec![0xff], None));
        shards.insert(1, one(1, Vec::new(), Some(vec![0xff])));
        let sim = Sim {
            shards,
            size: BTreeMap::new(),
            traffic: Vec::new(),
            nodes: vec![first.clone()],
            dead: Vec::new(),
            meta: BTreeMap::new(),
            now_ms: 1_000_000,
            rng: SmallRng::seed_from_u64(seed),
            drop_commands: false,
            diverged: Default::default(),
            verified: Vec::new(),
            risk: BTreeMap::new(),
            degraded: BTreeSet::new(),
            shedding: BTreeSet::new(),
            slow_us: BTreeMap::new(),
            slow_shard_us: BTreeMap::new(),
        };
        let m = Manager::bootstrap(cfg.clone(), 77, first, sim.now_ms).expect("bootstrap");
        (sim, m)
    }

    pub(crate) fn persist(&mut self, fx: &Effects) {
        for w in &fx.writes {
            match &w.value {
                Some(v) => self.meta.insert(w.key.clone(), v.clone()),
                None => self.meta.remove(&w.key),
            };
        }
    }

    pub(crate) fn recover(&self, cfg: &ManagerConfig) -> Manager {
        let state =
            PersistedState::decode(self.meta.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).expect("decode");
        Manager::recover(cfg.clone(), state, self.now_ms).expect("recover")
    }

    pub(crate) fn heartbeats(&mut self, m: &mut Manager, interval_ms: u64) {
        // Spread the traffic over the shards holding each hot spot.
        let mut reports: BTreeMap<u64, LoadReport> = BTreeMap::new();
        for &(center, count) in &self.traffic.clone() {
            for _ in 0..count {
                // Keys around the hot spot (a narrow normal-ish bump).
                let k = center.wrapping_add(self.rng.random_range(0..1_000_000)).saturating_sub(500_000);
                let Some(s) = self.shards.values().find(|s| s.contains(&key(k))) else { continue };
                let us = self
                    .slow_shard_us
                    .get(&s.id)
                    .or_else(|| s.leader.and_then(|l| self.slow_us.get(&l)))
                    .copied()
                    .unwrap_or(500);
                let r = reports.entry(s.id).or_default();
                r.read_ops += 1;
                r.read_bytes += 100;
                r.latency_buckets.resize(presage_shardmgr::load::LATENCY_BUCKETS, 0);
                r.latency_buckets[presage_shardmgr::load::latency_bucket(us)] += 1;
                if r.samples.len() < 64 {
                    r.samples.push(KeySpan::point(&key(k)));
                }
            }
        }
        let live: Vec<u64> = self.nodes.iter().map(|n| n.id).filter(|id| !self.dead.contains(id)).collect();
        // Shards whose leader died elect a live voter.
        for s in self.shards.values_mut() {
            if s.leader.is_some_and(|l| self.dead.contains(&l)) {
                s.leader = s.voters().into_iter().find(|v| live.contains(v));
            }
        }
        // Each node's storage: the bytes of every replica it holds.
        let mut used: BTreeMap<u64, u64> = BTreeMap::new();
        for s in self.shards.values() {
            let (bytes, _) = self.size.get(&s.id).copied().unwrap_or((1 << 20, 1000));
            for r in &s.replicas {
                *used.entry(r.node).or_default() += bytes;
            }
        }
        for id in live {
            let mut shards = Vec::new();
            for s in self.shards.values().filter(|s| s.leader == Some(id)) {
                let mut load = reports.remove(&s.id).unwrap_or_default();
                load.interval_ms = interval_ms;
                let (size_bytes, keys) = self.size.get(&s.id).copied().unwrap_or((1 << 20, 1000));
                shards.push(ShardReport { shard: s.clone(), load, size_bytes, keys });
            }
            let replicas = self.shards.values().filter(|s| s.replica(id).is_some()).map(|s| (s.id, s.epoch)).collect();
            let hb = NodeHeartbeat {
                node: id,
                stats: NodeStats {
                    shedding_leaders: self.shedding.contains(&id),
                    used_bytes: used.get(&id).copied().unwrap_or(0),
                    ..NodeStats::default()
                },
                shards,
                replicas,
                replica_loads: Vec::new(),
                telemetry: None,
                telemetry_backlog: None,
            };
            let answer = m.heartbeat(hb, self.now_ms).expect("the node is known");
            assert!(answer.stale.is_empty(), "the simulation keeps no stale replica: {answer:?}");
        }
    }

    pub(crate) fn execute(&mut self, c: &Command) {
        if self.drop_commands || self.dead.contains(&c.leader) {
            return;
        }
        let Some(s) = self.shards.get(&c.shard).cloned() else { return };
        if s.leader != Some(c.leader) {
            return; // not the leader any more: the node answers NotLeader
        }
        let mut s = s;
        match &c.step {
            Step::AddLearner { node } => {
                if s.replica(*node).is_none() {
                    s.replicas.push(ReplicaMeta { node: *node, role: Role::Learner });
                    s.epoch.conf_ver += 1;
                }
            }
            Step::PromoteLearner { node } => {
                if let Some(r) = s.replicas.iter_mut().find(|r| r.node == *node && r.role == Role::Learner) {
                    r.role = Role::Voter;
                    s.epoch.conf_ver += 1;
                }
            }
            Step::RemoveReplica { node } => {
                if s.leader == Some(*node) {
                    s.leader = s.replicas.iter().find(|r| r.node != *node && r.role == Role::Voter).map(|r| r.node);
                } else if s.replica(*node).is_some() {
                    s.replicas.retain(|r| r.node != *node);
                    s.epoch.conf_ver += 1;
                }
            }
            Step::TransferLeader { to } => {
                if s.replica(*to).is_some_and(|r| r.role == Role::Voter) && !self.dead.contains(to) {
                    s.leader = Some(*to);
                }
            }
            Step::Split { key: split_key, new_shard, epoch } => {
                if s.epoch != *epoch {
                    return;
                }
                let end = s.end.as_deref().map_or(u64::MAX, num);
                let at = split_key.clone().unwrap_or_else(|| key(num(&s.start) / 2 + end / 2));
                if !s.contains(&at) || at == s.start {
                    return;
                }
                s.epoch.version += 1;
                let right = ShardMeta { id: *new_shard, start: at.clone(), ..s.clone() };
                s.end = Some(at);
                let (bytes, keys) = self.size.get(&s.id).copied().unwrap_or((1 << 20, 1000));
                self.size.insert(s.id, (bytes / 2, keys / 2));
                self.size.insert(*new_shard, (bytes / 2, keys / 2));
                self.shards.insert(right.id, right);
            }
            Step::Merge { target } => {
                let Some(mut t) = self.shards.get(target).cloned() else { return };
                if t.leader != s.leader || t.end.as_deref() != Some(s.start.as_slice()) {
                    return;
                }
                t.end = s.end.clone();
                t.epoch.version = t.epoch.version.max(s.epoch.version) + 1;
                self.shards.remove(&s.id);
                self.shards.insert(t.id, t);
                return;
            }
            Step::ResolveMerge { .. } => s.merging_into = None,
            Step::VerifyReplica { node } => {
                if s.replica(*node).is_none() || self.dead.contains(node) {
                    return;
                }
                let replica = if self.diverged.contains(&(s.id, *node)) { "1/1/bad" } else { "1/1/good" };
                let v = Verification {
                    node: *node,
                    conf_ver: c.epoch.conf_ver,
                    index: 1,
                    leader: "1/1/good".into(),
                    replica: replica.into(),
                    at_ms: self.now_ms,
                };
                self.verified.push((c.operator, v));
                return;
            }
            Step::SwapReplica { promote, demote } => {
                if s.leader == Some(*demote) {
                    s.leader = s.replicas.iter().find(|r| r.node != *demote && r.role == Role::Voter).map(|r| r.node);
                } else if s.replica(*promote).is_some_and(|r| r.role == Role::Learner) {
                    for r in s.replicas.iter_mut() {
                        if r.node == *promote {
                            r.role = Role::Voter;
                        } else if r.node == *demote {
                            r.role = Role::Learner;
                        }
                    }
                    s.epoch.conf_ver += 2; // enter and leave the joint configuration
                }
            }
        }
        self.shards.insert(s.id, s);
    }

    /// One scheduling round: heartbeats, a tick, persist, execute.
    pub(crate) fn round(&mut self, m: &mut Manager, interval_ms: u64) -> Effects {
        self.now_ms += interval_ms;
        self.heartbeats(m, interval_ms);
        m.set_risks(RiskInputs { nodes: self.risk.clone(), degraded: self.degraded.clone(), ..Default::default() });
        let fx = m.tick(self.now_ms);
        self.persist(&fx);
        for c in &fx.commands {
            self.execute(c);
        }
        for (op, v) in std::mem::take(&mut self.verified) {
            m.record_verification(op, v);
        }
        fx
    }

    pub(crate) fn join(&mut self, m: &mut Manager, n: NodeMeta) {
        m.join(n.clone(), self.now_ms).expect("join");
        self.nodes.push(n);
    }
}

/// 1,000 nodes in regions r1-r3 (333 groups) holding 3,000 shards over the key space, each
/// placed in a group and led by the member `leader` picks among its three.
pub(crate) fn thousand_nodes(cfg: &ManagerConfig, mut leader: impl FnMut(&mut Sim, &[u64]) -> u64) -> (Sim, Manager) {
    let (mut sim, mut m) = Sim::bootstrap(seed(), cfg);
    for id in 2..=1000u64 {
        sim.join(&mut m, node(id, &format!("r{}", id % 3 + 1)));
    }
    sim.round(&mut m, 1000);
    let groups: Vec<Vec<u64>> = m.groups().map(|g| g.nodes.clone()).collect();
    assert_eq!(groups.len(), 333);
    let width = 0xfe00_0000_0000_0000u64 / 3_000;
    sim.shards.retain(|id, _| *id == META_SHARD_ID);
    for i in 0..3_000u64 {
        let g = &groups[i as usize % groups.len()];
        let s = ShardMeta {
            id: 10_000 + i,
            start: if i == 0 { Vec::new() } else { key(i * width) },
            end: Some(if i == 2_999 { vec![0xff] } else { key((i + 1) * width) }),
            epoch: Epoch { version: 2, conf_ver: 3 },
            replicas: g.iter().map(|&node| ReplicaMeta { node, role: Role::Voter }).collect(),
            leader: Some(leader(&mut sim, g)),
            merging_into: None,
        };
        sim.shards.insert(s.id, s);
    }
    (sim, m)
}
