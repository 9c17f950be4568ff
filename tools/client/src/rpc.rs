//! The request/response transport between clients and nodes, and between nodes.

use std::future::Future;
use std::pin::Pin;

use presage_shardmgr::{NodeId, NodeMeta};

use crate::proto::{Request, Response};

/// What an [`Rpc::call`] returns.
pub type RpcFuture = Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>>;

/// Sends a request to a node and waits for its answer. Implementations bound their own
/// queues; callers bound the wait with a timeout.
pub trait Rpc: Send + Sync + 'static {
    /// Sends `request` to node `to`.
    fn call(&self, to: NodeId, request: Request) -> RpcFuture;

    /// Where the cluster's nodes are (from a directory refresh, a join or a heartbeat): a
    /// transport that addresses nodes by network address records them.
    fn learn(&self, _nodes: &[NodeMeta]) {}
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The node could not be reached: the request was not delivered.
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// The request was sent but the connection failed before an answer: it may have been
    /// carried out.
    #[error("node {0}: connection lost before the answer")]
    Lost(NodeId),
}
