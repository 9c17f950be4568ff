//! Which nodes fail in the failing-node story: group members with spares of their own to
//! take their places (or, for a failing region, members whose region holds other nodes, with
//! spares from other regions), the members leading the most data shards first.

use anyhow::{Context, Result};
use presage_ctl::AdminClient;
use presage_shardmgr::{NodeId, META_SHARD_ID};

/// The group member to fail: one with a spare node that could take its place (Up, in no
/// group, in a region the rest of the group lacks), leading the most data shards.
pub fn choose_failing_node(admin: &AdminClient) -> Result<NodeId> {
    let nodes = choose_failing_nodes(admin, 1, false)?;
    nodes.first().copied().context("no group member has a spare node to take its place")
}

/// `count` members of one group to fail together, each with a spare of its own that could
/// take its place (Up, in no group, in a region the group's staying members and the other
/// spares lack); the members leading the most data shards first. With `whole_region`, the
/// members are those whose region holds other nodes, the spares come from other regions than
/// the members', and every other node of the members' regions follows them in the answer.
pub fn choose_failing_nodes(admin: &AdminClient, count: usize, whole_region: bool) -> Result<Vec<NodeId>> {
    let info = admin.cluster()?;
    let rows = admin.shards(None, None, None)?;
    let leads = |m: NodeId| rows.iter().filter(|r| r.shard.id != META_SHARD_ID && r.shard.leader == Some(m)).count();
    pick_failing(&info.nodes, &info.groups, leads, count, whole_region).with_context(|| match (count, whole_region) {
        (1, false) => "no group member has a spare node to take its place".to_string(),
        (_, false) => format!("no group has {count} members with a spare node each to take their place"),
        (_, true) => {
            format!("no group has {count} member(s) sharing their region with other nodes and a spare elsewhere each")
        }
    })
}

/// [`choose_failing_nodes`] on the cluster's records, `leads` counting a node's data shards.
fn pick_failing(
    nodes: &[presage_shardmgr::NodeMeta],
    groups: &[presage_shardmgr::GroupMeta],
    leads: impl Fn(NodeId) -> usize,
    count: usize,
    whole_region: bool,
) -> Option<Vec<NodeId>> {
    let region = |id: NodeId| nodes.iter().find(|n| n.id == id).map(|n| n.region.as_str());
    let spares: Vec<(NodeId, &str)> = nodes
        .iter()
        .filter(|n| n.group.is_none() && n.state == presage_shardmgr::NodeState::Up)
        .map(|n| (n.id, n.region.as_str()))
        .collect();
    // In a failing region, a member fails with other nodes of its region (else it is a node).
    let has_neighbour = |m: NodeId| {
        nodes
            .iter()
            .any(|n| n.id != m && n.state == presage_shardmgr::NodeState::Up && Some(n.region.as_str()) == region(m))
    };
    let mut best: Option<(usize, Vec<NodeId>)> = None;
    for g in groups {
        let mut members: Vec<NodeId> = g.nodes.iter().copied().filter(|&m| !whole_region || has_neighbour(m)).collect();
        members.sort_by_key(|&m| (std::cmp::Reverse(leads(m)), m));
        // Greedy: each member, most leaderships first, takes the first spare free for it.
        let mut chosen: Vec<NodeId> = Vec::new();
        let mut taken: Vec<NodeId> = Vec::new();
        for &m in &members {
            if chosen.len() == count {
                break;
            }
            // Its region is one the group will lack: not a staying member's, nor a spare's
            // already taken.
            let fits = |s: &(NodeId, &str)| {
                let staying = g.nodes.iter().filter(|&&o| o != m && !chosen.contains(&o));
                let failing_region = whole_region && chosen.iter().chain([&m]).any(|&o| region(o) == Some(s.1));
                !taken.contains(&s.0) && !failing_region && staying.chain(&taken).all(|&o| region(o) != Some(s.1))
            };
            if let Some(&(spare, _)) = spares.iter().find(|s| fits(s)) {
                chosen.push(m);
                taken.push(spare);
            }
        }
        let score = chosen.iter().map(|&m| leads(m)).sum::<usize>();
        if chosen.len() == count && best.as_ref().is_none_or(|(l, _)| score > *l) {
            best = Some((score, chosen));
        }
    }
    let (_, mut chosen) = best?;
    if whole_region {
        let regions: Vec<&str> = chosen.iter().filter_map(|&m| region(m)).collect();
        let rest = nodes.iter().filter(|n| n.state == presage_shardmgr::NodeState::Up && !chosen.contains(&n.id));
        let neighbours: Vec<NodeId> = rest.filter(|n| regions.contains(&n.region.as_str())).map(|n| n.id).collect();
        chosen.extend(neighbours);
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_shardmgr::{GroupMeta, NodeMeta, NodeState};

    fn node(id: NodeId, region: &str, group: Option<u64>) -> NodeMeta {
        NodeMeta {
            id,
            raft_addr: String::new(),
            client_addr: String::new(),
            resp_addr: String::new(),
            admin_addr: String::new(),
            region: region.into(),
            capacity_bytes: 1 << 30,
            capacity_qps: 0,
            state: NodeState::Up,
            group,
            insecure: false,
        }
    }

    #[test]
    fn failing_members_each_get_a_spare_in_a_region_the_group_will_lack() {
        // The demo's layout: group 1 on r1-r3, spares 4 (r1) and 5 (r2).
        let nodes = [
            node(1, "r1", Some(1)),
            node(2, "r2", Some(1)),
            node(3, "r3", Some(1)),
            node(4, "r1", None),
            node(5, "r2", None),
        ];
        let groups = [GroupMeta { id: 1, nodes: vec![1, 2, 3], failures: Vec::new() }];
        let leads = |n: NodeId| match n {
            3 => 4,
            2 => 2,
            _ => 1,
        };
        // Node 3 leads most but no spare can take r3's place.
        assert_eq!(pick_failing(&nodes, &groups, leads, 1, false), Some(vec![2]));
        assert_eq!(pick_failing(&nodes, &groups, leads, 2, false), Some(vec![2, 1]));
        assert_eq!(pick_failing(&nodes, &groups, leads, 3, false), None, "a third member has no spare");
        // One spare between two failing members is not enough.
        let one_spare = [node(1, "r1", Some(1)), node(2, "r2", Some(1)), node(3, "r3", Some(1)), node(4, "r4", None)];
        assert!(pick_failing(&one_spare, &groups, leads, 1, false).is_some());
        assert_eq!(pick_failing(&one_spare, &groups, leads, 2, false), None);
    }

    #[test]
    fn a_failing_region_takes_its_spares_along_and_needs_one_elsewhere() {
        // Six nodes in four regions: group 1 on r1-r3; spares 4 (r4), 5 (r1), 6 (r2).
        let nodes = [
            node(1, "r1", Some(1)),
            node(2, "r2", Some(1)),
            node(3, "r3", Some(1)),
            node(4, "r4", None),
            node(5, "r1", None),
            node(6, "r2", None),
        ];
        let groups = [GroupMeta { id: 1, nodes: vec![1, 2, 3], failures: Vec::new() }];
        let leads = |n: NodeId| if n == 1 { 3 } else { 1 };
        assert_eq!(pick_failing(&nodes, &groups, leads, 1, true), Some(vec![1, 5]), "r1 fails, node 4 takes over");
        // The member leading most is alone in its region: r1's fails (a region, not a node).
        let leads_2 = |n: NodeId| if n == 2 { 3 } else { 1 };
        let r1_pair = [&nodes[..5]].concat();
        assert_eq!(pick_failing(&r1_pair, &groups, leads_2, 1, true), Some(vec![1, 5]));
        // Without a spare in a fourth region, no region can fail.
        assert_eq!(pick_failing(&nodes[..3], &groups, leads, 1, true), None);
        let five = [&nodes[..3], &nodes[4..]].concat();
        assert_eq!(pick_failing(&five, &groups, leads, 1, true), None, "r1's and r2's spares fail with them");
    }
}
