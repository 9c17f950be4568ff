//! Presage's client library (design.md §3, §7): it keeps a cache of the shard directory,
//! routes each request to the shard's leader, and re-routes on `NotLeader` and
//! `EpochNotMatch`. It depends on the shard manager's types only: an application linking it
//! compiles neither RocksDB nor raft.
//!
//! - [`proto`]: the native protocol's requests, responses and errors.
//! - [`rpc`]: the [`Rpc`] trait a transport implements (in-process for tests, TCP for
//!   programs).
//! - [`client`]: [`Client`], the routing and retry logic; [`Client::connect`] reaches a
//!   cluster over TCP from seed addresses.
//! - [`net`]: the native protocol over TCP: frames, [`net::TcpRpc`], [`net::serve`], logins.
//! - [`tls`]: TLS for the calling side: the cluster CA, an optional client certificate.
//! - `write_id`: request ids of writes (client, slot, number), so that a retried write
//!   applies once.

pub mod client;
pub mod net;
pub mod proto;
pub mod rpc;
pub mod tls;
mod write_id;

pub use client::{with_priority, with_replica_reads, Client, ClientConfig, ClientError};
pub use net::{Login, NetConfig, TcpRpc};
pub use proto::{BatchOp, Caller, Expect, PfaQuery, Priority, ProtoError, Request, RequestId, Response, Route};
pub use rpc::{Rpc, RpcError, RpcFuture};
pub use tls::ClientTls;
