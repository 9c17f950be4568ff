//! How Raft messages travel between nodes: the [`Transport`] trait and [`MemNetwork`], the
//! in-memory network for tests, which takes filters (seeded drops, delays, partitions,
//! isolation, drops by message type, damaged snapshot chunks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::MessageType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::wire::RaftEnvelope;

/// Sends Raft messages to other nodes. Best effort: Raft tolerates loss, so a send never
/// blocks and may drop.
pub trait Transport: Send + Sync + 'static {
    /// Sends `env` to `env.to_node`.
    fn send(&self, env: RaftEnvelope);
}

/// A transport that stamps each envelope with its node's clock as it leaves
/// (`RaftEnvelope::clock_ms`, for the peers' estimate of it: `crate::clock`).
pub struct Stamped<T> {
    inner: T,
    clock: Arc<crate::clock::GroupClock>,
}

impl<T: Transport> Stamped<T> {
    /// Stamps with `clock`, then sends through `inner`.
    pub fn new(inner: T, clock: Arc<crate::clock::GroupClock>) -> Self {
        Stamped { inner, clock }
    }
}

impl<T: Transport> Transport for Stamped<T> {
    fn send(&self, mut env: RaftEnvelope) {
        env.clock_ms = self.clock.own_ms();
        self.inner.send(env);
    }
}

impl<T: Transport> Transport for Arc<T> {
    fn send(&self, env: RaftEnvelope) {
        (**self).send(env);
    }
}

/// Delivers a message into a node (its mailbox).
pub type Deliver = Arc<dyn Fn(RaftEnvelope) + Send + Sync>;

/// A rule the in-memory network applies to every message.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Drop each message with this probability (seeded).
    Drop {
        /// Probability in `[0, 1]`.
        probability: f64,
    },
    /// Deliver each message after a delay drawn uniformly from `[min, max]` (seeded); this
    /// also reorders messages.
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// No message crosses between the two sides.
    Partition {
        /// One side.
        a: Vec<u64>,
        /// The other side.
        b: Vec<u64>,
    },
    /// No message reaches or leaves this node.
    Isolate(u64),
    /// Drop every message of this Raft type.
    DropType(MessageType),
    /// Damage the next `count` snapshot chunks sent to node `to` (one bit of each frame's
    /// last byte flipped, as a bad link or NIC would): the receiver's crc check must catch
    /// them and the sender resend.
    CorruptSnapshotChunks {
        /// The receiving node.
        to: u64,
        /// Chunks left to damage.
        count: u64,
    },
}

impl Filter {
    fn blocks(&self, from: u64, to: u64, msg_type: Option<MessageType>, rng: &mut SmallRng) -> bool {
        match self {
            Filter::Drop { probability } => rng.random_bool(probability.clamp(0.0, 1.0)),
            Filter::Delay { .. } => false,
            Filter::Partition { .. } | Filter::Isolate(_) => self.separates(from, to),
            Filter::DropType(t) => msg_type == Some(*t),
            Filter::CorruptSnapshotChunks { .. } => false,
        }
    }

    /// True for a partition or isolation that cuts `from` off from `to`.
    fn separates(&self, from: u64, to: u64) -> bool {
        match self {
            Filter::Partition { a, b } => {
                (a.contains(&from) && b.contains(&to)) || (b.contains(&from) && a.contains(&to))
            }
            Filter::Isolate(n) => *n == from || *n == to,
            _ => false,
        }
    }
}

struct NetState {
    nodes: HashMap<u64, Deliver>,
    filters: Vec<(u64, Filter)>,
    next_filter_id: u64,
    rng: SmallRng,
    delivered: u64,
    dropped: u64,
    corrupted: u64,
}

/// An in-memory network between the nodes of one process. Cloning shares it.
#[derive(Clone)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
}

impl MemNetwork {
    /// A network whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        MemNetwork {
            state: Arc::new(Mutex::new(NetState {
                nodes: HashMap::new(),
                filters: Vec::new(),
                next_filter_id: 1,
                rng: SmallRng::seed_from_u64(seed),
                delivered: 0,
                dropped: 0,
                corrupted: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connects `node_id`: messages to it go to `deliver`. Replaces an earlier connection
    /// (a restarted node).
    pub fn connect(&self, node_id: u64, deliver: Deliver) {
        self.lock().nodes.insert(node_id, deliver);
    }

    /// Disconnects `node_id` (a killed node): messages to it are dropped.
    pub fn disconnect(&self, node_id: u64) {
        self.lock().nodes.remove(&node_id);
    }

    /// Adds a filter; returns its id for [`MemNetwork::remove_filter`].
    pub fn add_filter(&self, filter: Filter) -> u64 {
        let mut s = self.lock();
        let id = s.next_filter_id;
        s.next_filter_id += 1;
        s.filters.push((id, filter));
        id
    }

    /// True unless a partition or isolation filter separates `from` and `to` (request/response
    /// transports built on this network use it to honour the same faults).
    pub fn reachable(&self, from: u64, to: u64) -> bool {
        !self.lock().filters.iter().any(|(_, f)| f.separates(from, to))
    }

    /// Removes one filter.
    pub fn remove_filter(&self, id: u64) {
        self.lock().filters.retain(|(fid, _)| *fid != id);
    }

    /// Removes every filter (heals the network).
    pub fn clear_filters(&self) {
        self.lock().filters.clear();
    }

    /// Messages delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.dropped)
    }

    /// Snapshot chunks damaged so far by [`Filter::CorruptSnapshotChunks`].
    pub fn corrupted(&self) -> u64 {
        self.lock().corrupted
    }

    /// A transport for `node_id` on this network.
    pub fn transport(&self) -> MemTransport {
        MemTransport { net: self.clone() }
    }

    fn route(&self, mut env: RaftEnvelope) {
        let msg_type = env.message.as_ref().map(|m| m.get_msg_type());
        let (deliver, delay) = {
            let mut s = self.lock();
            let NetState { filters, rng, corrupted, .. } = &mut *s;
            if let Some(chunk) = env.snapshot_chunk.as_mut() {
                for (_, f) in filters.iter_mut() {
                    if let Filter::CorruptSnapshotChunks { to, count } = f {
                        if *to == env.to_node && *count > 0 {
                            if let Some(b) = chunk.frame.last_mut() {
                                *b ^= 0x01;
                                *count -= 1;
                                *corrupted += 1;
                            }
                        }
                    }
                }
            }
            let blocked = filters.iter().any(|(_, f)| f.blocks(env.from_node, env.to_node, msg_type, rng));
            let mut delay = Duration::ZERO;
            for (_, f) in filters.iter() {
                if let Filter::Delay { min, max } = f {
                    let (lo, hi) = (min.as_micros() as u64, max.as_micros().max(min.as_micros()) as u64);
                    delay = delay.max(Duration::from_micros(rng.random_range(lo..=hi)));
                }
            }
            let deliver = if blocked { None } else { s.nodes.get(&env.to_node).cloned() };
            match deliver {
                Some(_) => s.delivered += 1,
                None => s.dropped += 1,
            }
            (deliver, delay)
        };
        let Some(deliver) = deliver else { return };
        if delay.is_zero() {
            deliver(env);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                deliver(env);
            });
        }
    }
}

/// One node's sending side of a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn send(&self, env: RaftEnvelope) {
        self.net.route(env);
    }
}
