//! In-process [`Rpc`] for tests: requests go straight to the target server's handler,
//! subject to the partitions and isolation filters of a [`MemNetwork`] (a request across a
//! partition is unreachable; an answer across one is lost). The sender is proven as the
//! node its endpoint belongs to ([`Caller::Node`]), as the peer port's handshake would.
//!
//! The in-process request transport, honouring `MemNetwork` partitions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use presage_client::{Caller, Request, Rpc, RpcError, RpcFuture};
use presage_replication::MemNetwork;
use presage_shardmgr::NodeId;

pub use presage_client::net::Handler;

/// The handlers of every node in the process.
#[derive(Clone)]
pub struct MemRpcNet {
    handlers: Arc<Mutex<HashMap<NodeId, Handler>>>,
    net: MemNetwork,
}

impl MemRpcNet {
    /// Request/response alongside `net`, honouring its partitions.
    pub fn new(net: MemNetwork) -> Self {
        MemRpcNet { handlers: Arc::default(), net }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Handler>> {
        self.handlers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Node `id` serves requests with `handler` (replacing a previous one).
    pub fn register(&self, id: NodeId, handler: Handler) {
        self.lock().insert(id, handler);
    }

    /// Node `id` is gone: requests to it are unreachable.
    pub fn unregister(&self, id: NodeId) {
        self.lock().remove(&id);
    }

    /// The sending side of `from` (a node id, or any other id for a client).
    pub fn endpoint(&self, from: NodeId) -> MemRpc {
        MemRpc { net: self.clone(), from }
    }
}

/// One sender on a [`MemRpcNet`].
#[derive(Clone)]
pub struct MemRpc {
    net: MemRpcNet,
    from: NodeId,
}

impl Rpc for MemRpc {
    fn call(&self, to: NodeId, request: Request) -> RpcFuture {
        let handler = self.net.lock().get(&to).cloned();
        let reachable = self.net.net.reachable(self.from, to);
        let (net, from) = (self.net.net.clone(), self.from);
        Box::pin(async move {
            let Some(handler) = handler.filter(|_| reachable) else { return Err(RpcError::Unreachable(to)) };
            let answer = handler(Caller::Node { id: from }, request).await;
            if net.reachable(to, from) {
                Ok(answer)
            } else {
                Err(RpcError::Lost(to))
            }
        })
    }
}
