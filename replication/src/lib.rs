//! Multi-Raft replication on raft-rs (design.md §3, §8). Only this crate touches raft-rs.
//!
//! - [`storage`]: raft-rs's `Storage` for one replica on the node's engine (`Raft` key space).
//! - [`peer`]: one replica: a `RawNode`, its waiting proposals and reads, and apply.
//! - [`store`]: every replica of a node, driven together; one engine batch per ready round for
//!   all of them, synced off the loop by the log writer (group commit across rounds).
//! - [`snapshot`]: snapshot data streamed as the engine's export chunks, rate-limited,
//!   resumable, verified before Raft may install it.
//! - [`runtime`]: the tokio runtime around a store: ticks, a bounded mailbox, the transport.
//! - [`lease`]: the read leases a node's leaders publish; [`local_read`]: reads answered on
//!   the caller's thread under them, without a trip through the loop.
//! - [`transport`]: the `Transport` trait and the in-memory network with filters.
//! - [`tcp`]: the TCP transport: crc32-checked, length-prefixed frames of batched envelopes;
//!   network faults on a node's outgoing links ([`tcp::fault`]).
//! - [`dedup`]: request records, so that a write retried with the same id applies once.
//! - [`value`]: how a value is stored (a header with an optional expiry deadline).
//! - [`wire`]: prost messages (commands, descriptors, envelopes, persisted states).
//! - [`config`]: [`RaftConfig`], every setting, validated.
//! - [`metrics`]: commit latency and ready-round time (Prometheus).
//!
//! Reads are linearizable through ReadIndex, one round per ready round for every read waiting
//! on a replica. With `lease_reads` (on by default) a leader answers without a round trip for
//! a lease (4/5 of the election timeout, minus a tick) after a ReadIndex round
//! confirmed it, timed on its monotonic clock from the round's start: the round's heartbeat
//! reset a quorum's election timers, so no other leader is elected for an election timeout
//! of *their* clocks. The bound this relies on: no node's clock runs more than 20% faster
//! than another's. A leader that stalls keeps no stale lease (its clock keeps running); a
//! follower whose clock runs fast is what would break it. raft-rs's own `LeaseBased` is not
//! used: it trusts check-quorum, which can notice a lost quorum a whole election timeout late.
//! The lease ends when a leadership transfer starts (the transferee campaigns at once, past
//! the followers' timers) and when a split or merge applies; a leased read still queued when
//! its lease lapses goes through a ReadIndex round instead. While a lease holds, reads are
//! answered on the caller's thread ([`local_read`]), checked again after the engine read.

pub mod clock;
pub mod config;
pub mod dedup;
pub mod error;
pub mod keys;
pub mod lease;
pub mod local_read;
mod logger;
pub mod metrics;
pub mod peer;
pub mod read_pool;
pub mod runtime;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod tcp;
pub mod transport;
pub mod value;
pub mod wire;

pub use config::RaftConfig;
pub use error::{Error, Result};
pub use lease::LeaseViews;
pub use local_read::LocalReader;
pub use peer::{AdminEntry, ReadRequest, ReadResponse};
pub use runtime::{ChecksumAt, Node, NodeHandle};
pub use snapshot::{GovernorAction, GovernorWindow, RateGovernor};
pub use store::{PinnedData, ShardStatus, Store, StoreSummary};
pub use tcp::fault::{NetFaultConfig, NetFaults};
pub use tcp::{
    AddressBook, DialFuture, Dialer, PlainDialer, RaftInbound, RaftStream, TcpConfig, TcpNode, TcpServer, TcpStats,
    TcpTransport,
};
pub use transport::{Filter, MemNetwork, MemTransport, Transport};
pub use wire::{CommitMerge, Epoch, Op, PrepareMerge, RaftEnvelope, Replica, RequestId, ShardDescriptor, Split};
