//! Multi-Raft replication on raft-rs (design.md §3, §8). Only this crate touches raft-rs.
//!
//! - [`storage`]: raft-rs's `Storage` for one replica on the node's engine (`Raft` key space).
//! - [`peer`]: one replica: a `RawNode`, its waiting proposals and reads, and apply.
//! - [`store`]: every replica of a node, driven together; one engine batch and one sync per
//!   ready round for all of them (group commit).
//! - [`snapshot`]: snapshot data streamed as the engine's export chunks, rate-limited,
//!   resumable, verified before Raft may install it.
//! - [`node`]: the tokio runtime around a store: ticks, a bounded mailbox, the transport.
//! - [`transport`]: the `Transport` trait and the in-memory network with filters.
//! - [`tcp`]: the TCP transport: crc32-checked, length-prefixed frames of batched envelopes.
//! - [`wire`]: prost messages (commands, descriptors, envelopes, persisted states).
//! - [`config`]: [`RaftConfig`], every setting, validated.
//!
//! Reads are linearizable through ReadIndex. With `lease_reads` the leader answers from its
//! lease instead (raft-rs `LeaseBased`): that is safe only while clocks drift by less than
//! the gap between the election timeout and the heartbeat interval, because a partitioned old
//! leader keeps serving until its lease (the election timeout, as it measures it) runs out.

pub mod config;
pub mod error;
pub mod keys;
mod logger;
pub mod node;
pub mod peer;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod tcp;
pub mod transport;
pub mod wire;

pub use config::RaftConfig;
pub use error::{Error, Result};
pub use node::{Node, NodeHandle};
pub use peer::{AdminCommand, ReadRequest, ReadResponse};
pub use store::{ShardStatus, Store, StoreSummary};
pub use tcp::{AddressBook, TcpConfig, TcpNode, TcpServer, TcpStats, TcpTransport};
pub use transport::{Filter, MemNetwork, MemTransport, Transport};
pub use wire::{CommitMerge, Epoch, Op, PrepareMerge, RaftEnvelope, Replica, ShardDescriptor, Split};
