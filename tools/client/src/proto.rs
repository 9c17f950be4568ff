//! The native protocol's messages: what clients, nodes and the shard manager ask each other.
//!
//! Data requests name the shard and the epoch the sender routed with; a node that does not
//! lead the shard forwards the request once to the leader it knows, or answers
//! [`ProtoError::NotLeader`] with a hint; a stale epoch gets [`ProtoError::EpochNotMatch`]
//! with the fresh descriptors, so a client re-routes without another round trip.
//!
//! The native protocol: `Request` (get/put/delete/scan/batch with a `Route` = shard + epoch;
//! routes, join, heartbeat, execute, cluster info, shards, admin, hello; `Forwarded`), `Response`
//! (`Redirected` wraps a forwarded reply with the leader), `ProtoError`; `nodes_digest` (heartbeats
//! carry it; the answer lists the nodes when it is out of date).

use presage_shardmgr::{AdminCommand, AdminOutcome, Command, NodeHeartbeat, NodeId, NodeMeta, ShardId, ShardMeta};
use serde::{Deserialize, Serialize};
/// Bytes on the wire (a key or value inside a list).
pub use serde_bytes::ByteBuf;

mod views;
pub use views::{ClusterInfo, ShardRow};

/// Routing of a data request: the shard and the epoch the sender's directory has, and the
/// request's priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The shard.
    pub shard: ShardId,
    /// Its epoch as the sender knows it.
    pub epoch: presage_shardmgr::Epoch,
    /// Which requests a node under load keeps serving first.
    #[serde(default)]
    pub priority: Priority,
    /// A read any replica may answer (a replica read): a follower asks its leader for the
    /// read index and answers from its own copy once it has applied that far. Linearizable
    /// all the same; ignored by writes.
    #[serde(default)]
    pub replica_read: bool,
}

/// A request's priority (seed 001: critical traffic first). A node that is overloaded or at
/// risk refuses `bulk` requests first, then `normal` ones, with [`ProtoError::Overloaded`];
/// `critical` ones are refused only at its hard in-flight limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Traffic that must not wait (a checkout, a login).
    Critical,
    /// Everything else.
    #[default]
    Normal,
    /// Traffic that can wait (backfills, batch jobs, analytics scans).
    Bulk,
}

impl Priority {
    /// Every priority, most important first.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Bulk];

    /// Its name (`critical`, `normal`, `bulk`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }

    /// Its index in [`Priority::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown priority `{s}` (critical, normal or bulk)"))
    }
}

/// A client's name for one write, kept by all its retries, so that the write applies at most
/// once however many attempts reach the cluster. A client runs its writes in slots, one at a
/// time per slot, numbering each slot's writes with a growing `seq`; every retry of a write
/// carries the same ops (to one shard). A retry of a write that applied is answered
/// [`Response::Done`] without applying again. A shard remembers a slot's last write for ten
/// minutes without another from that slot: retry only within that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The client: a random number drawn when it starts.
    pub client: u64,
    /// The slot.
    pub slot: u32,
    /// The slot's write number.
    pub seq: u64,
}

/// A request to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Request {
    /// The value of `key` (linearizable).
    Get {
        /// Where it goes.
        route: Route,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The value of `key` and when it expires (linearizable), answered
    /// [`Response::ValueWithExpiry`].
    GetWithExpiry {
        /// Where it goes.
        route: Route,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The values of `keys`, all in the routed shard, in order (each linearizable). The
    /// answer may hold only the first ones (their values reached the node's answer size
    /// limit, and at least one is answered): ask again for the rest.
    GetMany {
        /// Where it goes.
        route: Route,
        /// The keys.
        keys: Vec<serde_bytes::ByteBuf>,
    },
    /// Set `key` to `value`.
    Put {
        /// Where it goes.
        route: Route,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Its retries carry the same id, and it applies once (see [`RequestId`]).
        #[serde(default)]
        id: Option<RequestId>,
    },
    /// Remove `key`.
    Delete {
        /// Where it goes.
        route: Route,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its retries carry the same id, and it applies once (see [`RequestId`]).
        #[serde(default)]
        id: Option<RequestId>,
    },
    /// Pairs of `[start, end)` within the shard, ascending, bounded.
    Scan {
        /// Where it goes.
        route: Route,
        /// First key.
        start: Vec<u8>,
        /// Exclusive end; `None`: the shard's end.
        end: Option<Vec<u8>>,
        /// At most this many pairs.
        max_keys: u32,
        /// At most this many key+value bytes (at least one pair is returned).
        max_bytes: u32,
    },
    /// Directory entries from the shard holding `key` on, at most `max_shards` (answered by
    /// the shard manager).
    Routes {
        /// Where to start.
        key: Vec<u8>,
        /// At most this many shards.
        max_shards: u32,
    },
    /// A node asks to join the cluster (answered by the shard manager).
    Join {
        /// The node.
        node: NodeMeta,
    },
    /// A node's periodic report (to the shard manager).
    Heartbeat {
        /// The report.
        heartbeat: NodeHeartbeat,
        /// [`nodes_digest`] of the nodes the sender knows: the answer lists every node when
        /// the manager's differs.
        #[serde(default)]
        nodes_digest: u64,
    },
    /// Several writes to one shard, applied atomically and in order.
    Batch {
        /// Where it goes.
        route: Route,
        /// The writes (every key inside the shard).
        ops: Vec<BatchOp>,
        /// Its retries carry the same id, and it applies once (see [`RequestId`]).
        #[serde(default)]
        id: Option<RequestId>,
    },
    /// Who is at this address? (a client or node resolving a seed address)
    Hello,
    /// Directory entries with their size and load, from the shard holding `start` on, at
    /// most `max_shards` (answered by the shard manager).
    Shards {
        /// Where to start.
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// At most this many.
        max_shards: u32,
    },
    /// An operator's command (answered by the shard manager once its records are durable).
    Admin {
        /// The command.
        command: AdminCommand,
    },
    /// The shard manager asks a shard's leader to carry out an operator step.
    Execute {
        /// The step.
        command: Command,
    },
    /// Nodes, groups, operators and counts (answered by the shard manager).
    ClusterInfo,
    /// Predicted load: every node and region, the `top` hottest shards, the advice (answered
    /// by the shard manager).
    Forecast {
        /// Shards to list (at most 1,000).
        top: u32,
    },
    /// Capacity advice: every node's and region's projected bytes and load, when each crosses
    /// its capacity, nodes to add (answered by the shard manager).
    Capacity,
    /// This node's replica's range checksum of `shard` at log index `index` (the index of a
    /// checksum round its leader started to verify a new replica).
    ReplicaChecksum {
        /// The shard.
        shard: ShardId,
        /// The checksum round's log index.
        index: u64,
    },
    /// A question to the failure analysis (answered by the shard manager).
    Pfa {
        /// The question.
        query: PfaQuery,
    },
    /// A request another node forwarded (never forwarded again).
    Forwarded {
        /// The original request.
        request: Box<Request>,
    },
    /// Checksums of every replica of `shard` at one log index (an operator's consistency
    /// check; answered by the shard's leader).
    VerifyShard {
        /// The shard.
        shard: ShardId,
    },
    /// Log in as `user` (the first request on a native connection that presented no client
    /// certificate). Answered [`Response::Authenticated`] or [`ProtoError::Unauthenticated`];
    /// handled by the connection, never by the node's request handler.
    Auth {
        /// The user's name.
        user: String,
        /// The user's password.
        password: String,
    },
}

impl Request {
    /// A data request's route (its shard, epoch and priority), also inside a forwarded one.
    pub fn route(&self) -> Option<&Route> {
        match self {
            Request::Get { route, .. }
            | Request::GetWithExpiry { route, .. }
            | Request::GetMany { route, .. }
            | Request::Put { route, .. }
            | Request::Delete { route, .. }
            | Request::Scan { route, .. }
            | Request::Batch { route, .. } => Some(route),
            Request::Forwarded { request } => request.route(),
            _ => None,
        }
    }

    /// Sets a data request's priority (nothing for other requests).
    pub fn set_priority(&mut self, priority: Priority) {
        if let Some(route) = self.route_mut() {
            route.priority = priority;
        }
    }

    /// Lets any replica answer this request if it is a read (a replica read, see
    /// [`Route::replica_read`]); returns whether it is one.
    pub fn allow_replica_read(&mut self) -> bool {
        match self {
            Request::Get { route, .. }
            | Request::GetWithExpiry { route, .. }
            | Request::GetMany { route, .. }
            | Request::Scan { route, .. } => {
                route.replica_read = true;
                true
            }
            _ => false,
        }
    }

    fn route_mut(&mut self) -> Option<&mut Route> {
        match self {
            Request::Get { route, .. }
            | Request::GetWithExpiry { route, .. }
            | Request::GetMany { route, .. }
            | Request::Put { route, .. }
            | Request::Delete { route, .. }
            | Request::Scan { route, .. }
            | Request::Batch { route, .. } => Some(route),
            Request::Forwarded { request } => request.route_mut(),
            _ => None,
        }
    }

    /// The request's name (metrics labels, errors).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::GetWithExpiry { .. } => "get_with_expiry",
            Request::GetMany { .. } => "get_many",
            Request::Put { .. } => "put",
            Request::Delete { .. } => "delete",
            Request::Scan { .. } => "scan",
            Request::Batch { .. } => "batch",
            Request::Routes { .. } => "routes",
            Request::Join { .. } => "join",
            Request::Heartbeat { .. } => "heartbeat",
            Request::Execute { .. } => "execute",
            Request::ClusterInfo => "cluster_info",
            Request::Forecast { .. } => "forecast",
            Request::Capacity => "capacity",
            Request::Forwarded { .. } => "forwarded",
            Request::Hello => "hello",
            Request::Shards { .. } => "shards",
            Request::Admin { .. } => "admin",
            Request::Pfa { .. } => "pfa",
            Request::ReplicaChecksum { .. } => "replica_checksum",
            Request::VerifyShard { .. } => "verify_shard",
            Request::Auth { .. } => "auth",
        }
    }
}

/// What a caller may do (design.md §10). Roles are ordered by what they allow, except
/// [`Role::Node`], which only nodes of the cluster hold (their certificate names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads and inspection.
    ReadOnly,
    /// Reads, writes and inspection.
    ReadWrite,
    /// Everything a read-write user may do, plus operator commands and fault injection.
    Operator,
    /// A node of the cluster: the control plane and Raft (peer port only).
    Node,
}

impl Role {
    /// Every role, for help texts.
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::ReadWrite, Role::Operator, Role::Node];

    /// May read data and routes.
    pub fn may_read(self) -> bool {
        true
    }

    /// May write data.
    pub fn may_write(self) -> bool {
        !matches!(self, Role::ReadOnly)
    }

    /// May run operator commands (split, move, drain, faults ...).
    pub fn may_operate(self) -> bool {
        matches!(self, Role::Operator)
    }

    /// The role's name as written in files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::ReadWrite => "read-write",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?} (one of {})", names.join(", "))
        })
    }
}

/// Who sent a request, as the connection proved it (never as the request claims it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An application on the native port, logged in as `user` (or by a client certificate
    /// naming it); `anonymous` on an insecure node.
    Client {
        /// The user.
        user: String,
        /// Its role.
        role: Role,
        /// The highest priority its requests may carry: critical for operators and users the
        /// users file grants it, else normal.
        top_priority: Priority,
    },
    /// A node of this cluster on the peer port (its certificate names it, its handshake
    /// carried this cluster's id).
    Node {
        /// The node.
        id: NodeId,
    },
    /// A node whose data dir belongs to no cluster yet: it may only say hello and join.
    Joining {
        /// The node.
        id: NodeId,
    },
    /// This process itself: its own RESP listener and admin API (which checked their callers'
    /// roles), and in-process test transports.
    Local,
}

impl Caller {
    /// The user or node, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Caller::Client { user, role, .. } => format!("user {user} ({role})"),
            Caller::Node { id } => format!("node {id}"),
            Caller::Joining { id } => format!("joining node {id}"),
            Caller::Local => "this node".into(),
        }
    }
}

/// Questions to the failure analysis on the shard manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "query")]
pub enum PfaQuery {
    /// Failure probability per node and per region, and the models' status.
    Risk,
    /// Active warnings and the warning events after `after_seq`, at most `limit`.
    Warnings {
        /// Events after this sequence number (0: from the oldest kept).
        after_seq: u64,
        /// At most this many events.
        limit: u32,
    },
    /// The raw telemetry samples of `node` kept by the aggregator, after `after_ms`.
    Telemetry {
        /// The node.
        node: NodeId,
        /// Samples taken after this time (ms since the Unix epoch).
        after_ms: u64,
        /// At most this many samples.
        limit: u32,
    },
    /// The per-minute history of `node` kept in the meta shard, over the last `minutes`.
    History {
        /// The node.
        node: NodeId,
        /// How far back, minutes.
        minutes: u32,
    },
    /// Counters an operator pushes for a node (SMART attributes of its disk).
    PushCounters {
        /// The node.
        node: NodeId,
        /// Values by name (`smart_5_raw`, ...).
        counters: std::collections::BTreeMap<String, f64>,
    },
    /// The feedback report (`presage_shardmgr::PfaReport`): warnings that preceded a failure
    /// within `horizon_ms` and false ones, mitigations that helped, per day.
    Report {
        /// A warning followed by its node's failure within this long preceded it.
        horizon_ms: u64,
    },
}

/// One write of a [`Request::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Set `key` to `value` for `ttl_ms`; the key then reads as absent.
    PutExpiring {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Time to live (ms from when the leader proposes it), at least 1.
        ttl_ms: u64,
    },
    /// Set `key` to `value` until `deadline_ms` (Unix ms; a time already past leaves the key
    /// absent at once).
    PutUntil {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// When it expires.
        deadline_ms: u64,
    },
    /// A condition: if any check of the batch does not hold when the batch applies, none of
    /// its writes do and the answer is [`ProtoError::ConditionFailed`]. Checks see the state
    /// before the batch.
    Check {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// What its value must be.
        expect: Expect,
    },
}

/// What a [`BatchOp::Check`] expects of a key's value (an expired value is absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "is")]
pub enum Expect {
    /// The key has no value.
    Absent,
    /// The key has a value.
    Present,
    /// The key's value is this.
    Equals {
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// The key's value is this and it expires at `expires_at_ms` (`None`: never): what a
    /// read-modify-write checks when the write keeps or changes the expiry.
    Exactly {
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Its deadline (Unix ms).
        expires_at_ms: Option<u64>,
    },
}

impl Expect {
    /// Does `current` (the key's value and deadline) meet it?
    pub fn holds(&self, current: Option<(&[u8], Option<u64>)>) -> bool {
        match self {
            Expect::Absent => current.is_none(),
            Expect::Present => current.is_some(),
            Expect::Equals { value } => current.is_some_and(|(v, _)| v == value.as_slice()),
            Expect::Exactly { value, expires_at_ms } => current == Some((value.as_slice(), *expires_at_ms)),
        }
    }
}

impl BatchOp {
    /// The key written or checked.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. }
            | BatchOp::Delete { key }
            | BatchOp::PutExpiring { key, .. }
            | BatchOp::PutUntil { key, .. }
            | BatchOp::Check { key, .. } => key,
        }
    }

    /// The value written, if any.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            BatchOp::Put { value, .. } | BatchOp::PutExpiring { value, .. } | BatchOp::PutUntil { value, .. } => {
                Some(value)
            }
            BatchOp::Delete { .. } | BatchOp::Check { .. } => None,
        }
    }

    /// Key and value bytes.
    pub fn bytes(&self) -> usize {
        self.key().len() + self.value().map_or(0, <[u8]>::len)
    }

    /// Is it a write (not a check)?
    pub fn is_write(&self) -> bool {
        !matches!(self, BatchOp::Check { .. })
    }
}

/// A digest of where every node is reached: a node's copy is out of date when it differs
/// from the shard manager's (FNV-1a over ids and addresses, order-independent).
pub fn nodes_digest<'a>(nodes: impl IntoIterator<Item = &'a NodeMeta>) -> u64 {
    let mut sum = 0u64;
    for n in nodes {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let id = n.id.to_be_bytes();
        let parts: [&[u8]; 5] =
            [&id, n.raft_addr.as_bytes(), n.client_addr.as_bytes(), n.resp_addr.as_bytes(), n.admin_addr.as_bytes()];
        for part in parts {
            for b in part.iter().chain(&[0xffu8]) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        sum = sum.wrapping_add(h);
    }
    sum
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "answer")]
pub enum Response {
    /// The value of a `Get`.
    Value {
        /// `None` when the key is absent.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
    /// The value of a `GetWithExpiry` and its deadline.
    ValueWithExpiry {
        /// `None` when the key is absent.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// When the value expires (Unix ms); `None`: never (or no value).
        expires_at_ms: Option<u64>,
    },
    /// The values of the first keys of a `GetMany`, in order (`None`: absent).
    Values {
        /// One per key answered.
        values: Vec<Option<serde_bytes::ByteBuf>>,
    },
    /// A write or step was carried out.
    Done,
    /// The pairs of a `Scan`.
    Pairs {
        /// In key order.
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        /// The shard holds more pairs in the range.
        more: bool,
        /// With `more`: the next page starts after this key (the page may end in, or hold
        /// only, expired values that are not returned).
        #[serde(default, with = "serde_bytes")]
        resume_after: Option<Vec<u8>>,
    },
    /// Directory entries.
    Routes {
        /// In key order.
        shards: Vec<ShardMeta>,
        /// Every node, so that the client can reach the leaders.
        nodes: Vec<NodeMeta>,
        /// Nodes that should get less than their share of replica reads, with their weight
        /// (0 to 1; a node not listed weighs 1): see `Manager::read_weights`.
        #[serde(default)]
        read_weights: Vec<(NodeId, f64)>,
    },
    /// The node was registered.
    Joined {
        /// The cluster it joined.
        cluster_id: u64,
        /// The node running the shard manager (heartbeats go there).
        manager: NodeId,
        /// Every node of the cluster (where to reach them).
        #[serde(default)]
        nodes: Vec<NodeMeta>,
    },
    /// The answer to `Shards`.
    Shards {
        /// In key order.
        shards: Vec<ShardRow>,
    },
    /// The answer to `Admin`.
    Admin(AdminOutcome),
    /// The answer to `Hello`.
    Hello {
        /// The answering node.
        node: NodeMeta,
    },
    /// A heartbeat was taken in.
    HeartbeatAck {
        /// The node running the shard manager.
        manager: NodeId,
        /// Current descriptors of shards the node holds a stale replica of (a newer
        /// configuration without it): the node destroys those replicas.
        stale: Vec<ShardMeta>,
        /// Shards the node holds a replica of that the directory does not list (merged away
        /// while the node was out of the group, or new): the node asks whether they were merged.
        #[serde(default)]
        unlisted: Vec<u64>,
        /// Every node, when the heartbeat's `nodes_digest` was out of date; else empty.
        #[serde(default)]
        nodes: Vec<NodeMeta>,
        /// The manager has no telemetry history of the node (it just took over): the next
        /// heartbeat carries the node's backlog of samples.
        #[serde(default)]
        telemetry_backlog_wanted: bool,
    },
    /// The cluster's state.
    ClusterInfo(Box<ClusterInfo>),
    /// The answer to `Forecast`.
    Forecast(Box<presage_shardmgr::ForecastReport>),
    /// The answer to `Capacity`.
    Capacity(Box<presage_shardmgr::CapacityReport>),
    /// The answer to `Pfa`: the failure analysis's JSON (the types of `presage_pfa`, kept out
    /// of this crate so that applications do not compile the failure model).
    Pfa {
        /// The JSON document.
        json: String,
    },
    /// The answer to `ReplicaChecksum`: `pairs/bytes/crc32` of the replica's data.
    Checksum {
        /// The log index it was taken at.
        index: u64,
        /// The checksum.
        checksum: String,
    },
    /// A `VerifyReplica` step ran: both checksums at one log index (equal: verified).
    Verified {
        /// The log index.
        index: u64,
        /// The leader's checksum.
        leader: String,
        /// The verified replica's checksum.
        replica: String,
    },
    /// A data request reached a follower, which forwarded it to `leader`: `reply` is the
    /// leader's answer, and the sender should route the shard's requests there directly (a stale
    /// route must not stay on a path through a node that may be the slow one).
    Redirected {
        /// The shard's leader that answered.
        leader: NodeId,
        /// Its answer.
        reply: Box<Response>,
    },
    /// The answer to `VerifyShard`: each replica's `pairs/bytes/crc32` at `index`.
    ShardChecksums {
        /// The log index of the checksum round.
        index: u64,
        /// By node, the leader's first.
        checksums: Vec<(NodeId, String)>,
    },
    /// The answer to `Auth`: the connection now acts as this user.
    Authenticated {
        /// The user's role.
        role: Role,
    },
    /// The request failed.
    Error(ProtoError),
}

/// Why a request failed. Adjacently tagged: an internally tagged enum cannot carry the
/// variants that hold a bare message (`Invalid(String)`), and would fail to encode them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "error", content = "detail")]
pub enum ProtoError {
    /// The node does not lead the shard; retry at the hinted node.
    #[error("shard {shard}: not the leader (hint: {leader:?})")]
    NotLeader {
        /// The shard.
        shard: ShardId,
        /// The leader the node knows of.
        leader: Option<NodeId>,
    },
    /// The routing is stale; the fresh descriptors the node knows are attached.
    #[error("shard {shard}: stale epoch or key outside the shard")]
    EpochNotMatch {
        /// The shard addressed.
        shard: ShardId,
        /// Fresh descriptors for the addressed range.
        current: Vec<ShardMeta>,
    },
    /// The node holds no replica of the shard.
    #[error("shard {shard} is not on this node")]
    ShardNotFound {
        /// The shard.
        shard: ShardId,
    },
    /// The node does not run the shard manager.
    #[error("not the shard manager (hint: {leader:?})")]
    NotManager {
        /// The node believed to run it.
        leader: Option<NodeId>,
    },
    /// Keys from `0xff` on belong to the system (the meta shard).
    #[error("keys starting with 0xff are reserved for the system")]
    ReservedKey,
    /// The request is malformed or over a limit.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The write may or may not have happened (leadership changed before it applied).
    #[error("shard {shard}: outcome unknown")]
    OutcomeUnknown {
        /// The shard.
        shard: ShardId,
    },
    /// Certainly not done; retry later (leadership changed, the node is busy, a step is not
    /// ready).
    #[error("retry later: {0}")]
    Retry(String),
    /// The join was refused.
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// A check of the batch did not hold; nothing was written. `current` is the key's
    /// value when the batch was decided.
    #[error("condition on key {} failed", String::from_utf8_lossy(key))]
    ConditionFailed {
        /// The key checked.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its value then.
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// An operator's command was refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The node failed internally.
    #[error("internal error: {0}")]
    Internal(String),
    /// This node cannot serve the request now (its disk is stalled: its replication loop
    /// took nothing in time); nothing was done. Another replica may serve it.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// The connection has not proved who it is (log in first), or the credentials are wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the request.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The node is overloaded or at risk and sheds requests of this priority first; nothing
    /// was done. Retry after a backoff (a client library does, doubling its pause).
    #[error("node overloaded: {priority} requests are shed; retry in {retry_after_ms} ms or more")]
    Overloaded {
        /// The refused request's priority.
        priority: Priority,
        /// The pause to wait at least, ms.
        retry_after_ms: u64,
    },
    /// The node leading the shard has less free disk than its reserve: writes are refused
    /// (nothing was done), reads are served, and writes are taken again once space returns.
    #[error("disk nearly full on node {node}: {available_bytes} bytes free, below the reserve of {reserve_bytes}; writes refused until space returns")]
    DiskFull {
        /// The node.
        node: NodeId,
        /// Bytes free on its disk.
        available_bytes: u64,
        /// Its `reserve-space-bytes`.
        reserve_bytes: u64,
    },
    /// A later write of the same request-id slot was applied first: this one is not applied
    /// now (an earlier attempt may have been). Only a client that reused a slot gets it.
    #[error("superseded: {0}")]
    Superseded(String),
}

impl ProtoError {
    /// True when the request certainly had no effect.
    pub fn is_definite(&self) -> bool {
        !matches!(self, ProtoError::OutcomeUnknown { .. } | ProtoError::Internal(_) | ProtoError::Superseded(_))
    }
}
