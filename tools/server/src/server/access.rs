//! Who may send which request (design.md §10). The connection proves the [`Caller`]; this
//! decides, before anything is served, whether that caller may ask this.
//!
//! | caller | may ask |
//! |---|---|
//! | this process (its RESP and admin API, which checked their own callers) | everything |
//! | an application (native port) | `Hello`, `Routes`, reads; writes with a write role |
//! | a node of the cluster (peer port) | the control plane; a heartbeat or join only for itself; operator steps only as the shard manager this node knows |
//! | a node that has not joined | `Hello`, and `Join` as itself |
//!
//! Operator commands (`Admin`) reach a node only through its admin API (operator role),
//! which forwards them to the shard manager over the peer port.

use presage_client::{Caller, ProtoError, Request};
use presage_shardmgr::NodeId;

/// May `caller` ask `request`? `manager` is the node this one believes runs the shard
/// manager (the only one whose operator steps it carries out).
pub(crate) fn check(caller: &Caller, request: &Request, manager: Option<NodeId>) -> Result<(), ProtoError> {
    match caller {
        Caller::Local => Ok(()),
        Caller::Client { user, role, top_priority } => match request {
            r if r.route().is_some_and(|route| route.priority < *top_priority) => {
                Err(ProtoError::PermissionDenied(format!(
                    "user {user} may send requests of priority {top_priority} at most, not {}; the users file \
                     grants critical (`presage user add --priority critical`)",
                    r.route().map_or(*top_priority, |route| route.priority)
                )))
            }
            Request::Hello
            | Request::Routes { .. }
            | Request::Get { .. }
            | Request::GetWithExpiry { .. }
            | Request::GetMany { .. }
            | Request::Scan { .. } => Ok(()),
            Request::Put { .. } | Request::Delete { .. } | Request::Batch { .. } if role.may_write() => Ok(()),
            Request::Put { .. } | Request::Delete { .. } | Request::Batch { .. } => {
                Err(ProtoError::PermissionDenied(format!("user {user} ({role}) may not write")))
            }
            Request::Admin { .. } => Err(ProtoError::PermissionDenied(
                "operator commands go through the admin API with an operator token".into(),
            )),
            other => Err(ProtoError::PermissionDenied(format!(
                "`{}` belongs to the control plane: nodes of the cluster ask it on the peer port",
                other.name()
            ))),
        },
        Caller::Joining { id } => match request {
            Request::Hello => Ok(()),
            Request::Join { node } if node.id == *id => Ok(()),
            Request::Join { node } => {
                Err(ProtoError::PermissionDenied(format!("node {id} may not join as node {}", node.id)))
            }
            other => Err(ProtoError::PermissionDenied(format!(
                "node {id} has not joined this cluster: it may only say hello and join, not `{}`",
                other.name()
            ))),
        },
        Caller::Node { id } => node_check(*id, request, manager),
    }
}

fn node_check(id: NodeId, request: &Request, manager: Option<NodeId>) -> Result<(), ProtoError> {
    match request {
        Request::Heartbeat { heartbeat, .. } if heartbeat.node != id => Err(ProtoError::PermissionDenied(format!(
            "a heartbeat speaks only for its sender: node {id} sent one for node {}",
            heartbeat.node
        ))),
        Request::Join { node } if node.id != id => {
            Err(ProtoError::PermissionDenied(format!("node {id} may not join as node {}", node.id)))
        }
        Request::Execute { .. } if manager != Some(id) => Err(ProtoError::Retry(format!(
            "node {id} is not the shard manager this node knows ({}); operator steps come from the manager",
            manager.map_or("none".to_string(), |m| format!("node {m}"))
        ))),
        Request::Forwarded { request } => match request.as_ref() {
            Request::Get { .. }
            | Request::GetWithExpiry { .. }
            | Request::GetMany { .. }
            | Request::Put { .. }
            | Request::Delete { .. }
            | Request::Scan { .. }
            | Request::Batch { .. }
            | Request::Routes { .. }
            | Request::Shards { .. }
            | Request::ClusterInfo
            | Request::Forecast { .. }
            | Request::Capacity
            | Request::Pfa { .. }
            | Request::VerifyShard { .. }
            | Request::Admin { .. } => Ok(()),
            other => Err(ProtoError::Invalid(format!("`{}` is never forwarded", other.name()))),
        },
        // Operator commands and pushed counters reach a node's admin API (which checked the
        // operator's token) and travel forwarded to the manager; a node never issues them as
        // its own.
        Request::Admin { .. } | Request::Pfa { query: presage_client::PfaQuery::PushCounters { .. } } => {
            Err(ProtoError::PermissionDenied(format!(
                "node {id} may only forward operator requests from its admin API, not issue them"
            )))
        }
        Request::Auth { .. } => Err(ProtoError::Invalid("a login is answered by the connection".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presage_client::proto::Role;
    use presage_client::Priority;
    use presage_shardmgr::{NodeHeartbeat, NodeMeta};

    fn heartbeat(node: NodeId) -> Request {
        let heartbeat = NodeHeartbeat {
            node,
            stats: Default::default(),
            shards: vec![],
            replicas: vec![],
            replica_loads: vec![],
            telemetry: None,
            telemetry_backlog: None,
        };
        Request::Heartbeat { heartbeat, nodes_digest: 0 }
    }

    fn join(id: NodeId) -> Request {
        let node = NodeMeta {
            id,
            raft_addr: String::new(),
            client_addr: String::new(),
            resp_addr: String::new(),
            admin_addr: String::new(),
            region: "r".into(),
            capacity_bytes: 1,
            capacity_qps: 0,
            state: presage_shardmgr::NodeState::Up,
            group: None,
            insecure: false,
        };
        Request::Join { node }
    }

    #[test]
    fn each_caller_gets_only_what_its_proof_allows() {
        let reader = Caller::Client { user: "r".into(), role: Role::ReadOnly, top_priority: Priority::Normal };
        let writer = Caller::Client { user: "w".into(), role: Role::ReadWrite, top_priority: Priority::Normal };
        let put = Request::Delete {
            route: presage_client::Route {
                shard: 1,
                epoch: presage_shardmgr::Epoch::default(),
                priority: Default::default(),
                replica_read: false,
            },
            key: b"k".to_vec(),
            id: None,
        };
        let admin = Request::Admin { command: presage_shardmgr::AdminCommand::Drain { node: 1 } };
        assert!(check(&writer, &put, None).is_ok());
        assert!(matches!(check(&reader, &put, None), Err(ProtoError::PermissionDenied(_))));
        // Critical requests only from users granted them; anyone may lower to bulk.
        let mut critical = put.clone();
        critical.set_priority(Priority::Critical);
        let denied = check(&writer, &critical, None);
        assert!(
            matches!(&denied, Err(ProtoError::PermissionDenied(m)) if m.contains("priority normal at most")),
            "{denied:?}"
        );
        let granted = Caller::Client { user: "c".into(), role: Role::ReadWrite, top_priority: Priority::Critical };
        assert!(check(&granted, &critical, None).is_ok());
        let mut bulk = put.clone();
        bulk.set_priority(Priority::Bulk);
        assert!(check(&writer, &bulk, None).is_ok());
        for caller in [&reader, &writer] {
            for r in [&admin, &heartbeat(1), &join(1), &Request::ClusterInfo] {
                assert!(matches!(check(caller, r, None), Err(ProtoError::PermissionDenied(_))), "{r:?}");
            }
        }
        let node2 = Caller::Node { id: 2 };
        assert!(check(&node2, &heartbeat(2), None).is_ok());
        assert!(check(&node2, &heartbeat(3), None).is_err(), "a heartbeat for another node");
        assert!(check(&node2, &join(3), None).is_err(), "a join as another node");
        assert!(check(&node2, &admin, None).is_err(), "a node does not issue operator commands");
        let forwarded = Request::Forwarded { request: Box::new(admin.clone()) };
        assert!(check(&node2, &forwarded, None).is_ok(), "an admin API forwards them");
        let command = presage_shardmgr::Command {
            operator: 1,
            shard: 1,
            epoch: presage_shardmgr::Epoch::default(),
            leader: 2,
            step: presage_shardmgr::Step::TransferLeader { to: 2 },
        };
        let execute = Request::Execute { command };
        assert!(matches!(check(&node2, &execute, Some(1)), Err(ProtoError::Retry(_))), "not the manager");
        assert!(check(&node2, &execute, Some(2)).is_ok());
        let forwarded_heartbeat = Request::Forwarded { request: Box::new(heartbeat(2)) };
        assert!(check(&node2, &forwarded_heartbeat, None).is_err(), "claims are not relayed");
        let joining = Caller::Joining { id: 4 };
        assert!(check(&joining, &join(4), None).is_ok() && check(&joining, &Request::Hello, None).is_ok());
        assert!(check(&joining, &join(5), None).is_err() && check(&joining, &heartbeat(4), None).is_err());
        assert!(check(&Caller::Local, &admin, None).is_ok());
    }
}
