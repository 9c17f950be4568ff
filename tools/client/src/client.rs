//! [`Client`]: routes each request by a cached directory and retries what is safe to retry.
//!
//! Retry rules: every request retries on any error until the deadline. An answer that carries
//! the new route (a leader hint, newer descriptors) is retried at once, up to
//! [`MAX_IMMEDIATE_RETRIES`] times in a row; every other retry waits a backoff with jitter.
//! Writes are safe to retry because each carries a request id (`write_id`): every attempt of
//! a write carries the same id and the same ops, and the cluster applies it once. A write
//! whose ops no longer fit one shard (it split) is re-sent in parts under new ids when no
//! attempt may have applied it, and reported [`ClientError::OutcomeUnknown`] otherwise; so is
//! a write whose deadline passed after an attempt that may have applied.
//!
//! `Client` (`connect(seeds)` over TCP): cached `Directory`, routes to the leader (else a voter,
//! which forwards; a node that did not answer in time is tried last by every request for
//! `silent-node-ms`, so a stalled node costs one attempt timeout, not one per request), refreshes on
//! `NotLeader`/`EpochNotMatch`/`ShardNotFound`, takes the leader from a `Redirected` reply;
//! `batch` (atomic per shard), `get_many`, `cluster_info`; `write_if`/`put_if` (a
//! `Check` and a write in one batch; `ConditionFailed` carries the current value) and
//! `put_with_ttl`.
//!
//! Priorities: every data request carries one ([`Priority`]): the one [`with_priority`] set
//! for the task running it, else [`ClientConfig::priority`]. A node that sheds it answers
//! `Overloaded`, retried after a backoff like `Retry` (so bulk traffic backs off, doubling its
//! pause, while critical traffic keeps being served).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use presage_shardmgr::{Directory, NodeId, NodeMeta, Role, ShardMeta};

use crate::net::{Connect, Learns, PlainConnect, TcpRpc};
use crate::proto::{BatchOp, ByteBuf, Expect, Priority, ProtoError, Request, Response, Route};
use crate::rpc::{Rpc, RpcError};
use crate::write_id::WriteSlots;
use check::{check_key, check_op, check_value, ttl_ms};
pub use config::{with_priority, with_replica_reads, ClientConfig};
use config::{TASK_PRIORITY, TASK_REPLICA_READS};

/// Most nodes one directory refresh asks (seeds, known nodes and redirects).
const MAX_REFRESH_ASKS: usize = 16;
/// Most nodes a client remembers as silent at once (the oldest marks are dropped first).
const MAX_SILENT_NODES: usize = 1024;

/// Longest key a client may send (the engine's limit).
pub const MAX_KEY_BYTES: usize = 8 << 10;
/// Largest value a client may send.
pub const MAX_VALUE_BYTES: usize = 4 << 20;

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The key is in the system key space or too long, or the value too large.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The write may or may not have taken effect; read to find out.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No answer within the request timeout. For a write: no attempt may have applied it (else
    /// it is `OutcomeUnknown`).
    #[error("timed out after {timeout_ms} ms; last error: {last}")]
    Timeout {
        /// The request timeout.
        timeout_ms: u64,
        /// The last error seen.
        last: String,
    },
    /// The cluster refused the request.
    #[error(transparent)]
    Refused(ProtoError),
    /// No seed node answered.
    #[error("cluster unreachable: {0}")]
    Unreachable(String),
    /// The keys of a write that must be atomic are in more than one shard (nothing written).
    #[error("keys in more than one shard: {0}")]
    CrossShard(String),
}

#[derive(Default)]
struct Cache {
    directory: Directory,
    nodes: BTreeMap<NodeId, NodeMeta>,
    /// The manager's read weights (nodes below 1), from its last routes.
    read_weights: BTreeMap<NodeId, f64>,
    /// Nodes that did not answer in time, and until when they are tried last.
    silent: BTreeMap<NodeId, tokio::time::Instant>,
}

impl Cache {
    fn is_silent(&self, node: NodeId, now: tokio::time::Instant) -> bool {
        self.silent.get(&node).is_some_and(|until| *until > now)
    }

    /// `node` could not serve a request on `shard` (at `now`): the shard's leader is looked
    /// for afresh, and the node is tried last until `until`.
    fn shun(
        &mut self,
        node: NodeId,
        shard: presage_shardmgr::ShardId,
        now: tokio::time::Instant,
        until: tokio::time::Instant,
    ) {
        self.mark_silent(node, now, until);
        self.directory.set_leader(shard, None);
    }

    /// `node` did not answer in time (at `now`): try it last until `until`.
    fn mark_silent(&mut self, node: NodeId, now: tokio::time::Instant, until: tokio::time::Instant) {
        self.silent.retain(|_, u| *u > now);
        if self.silent.len() >= MAX_SILENT_NODES {
            if let Some((&oldest, _)) = self.silent.iter().min_by_key(|(_, u)| **u) {
                self.silent.remove(&oldest);
            }
        }
        self.silent.insert(node, until);
    }
}

/// A client of a Presage cluster. Cheap to share (`Arc`); requests may run concurrently.
pub struct Client {
    rpc: Arc<dyn Rpc>,
    seeds: Vec<NodeId>,
    cfg: ClientConfig,
    cache: Mutex<Cache>,
    /// Draws the retry jitter.
    jitter: Mutex<rand::rngs::SmallRng>,
    /// Request ids of writes.
    slots: WriteSlots,
}

/// What to do after one attempt.
enum Next {
    Answer(Response),
    /// Try again: `at_once` when the answer carried the new route (a leader hint or newer
    /// descriptors), after a backoff otherwise. `maybe_applied`: a write's attempt may have
    /// taken effect (its retries carry its request id, so it applies once).
    Retry {
        why: String,
        at_once: bool,
        maybe_applied: bool,
        /// Pause at least this long (a node that shed the request said so), ms.
        pause_ms: u64,
    },
    Fail(ClientError),
}

impl Next {
    /// Retry after a backoff: this attempt certainly had no effect.
    fn retry(why: impl Into<String>) -> Next {
        Next::Retry { why: why.into(), at_once: false, maybe_applied: false, pause_ms: 0 }
    }

    /// Retry after a backoff: this attempt may have had an effect.
    fn unknown(why: impl Into<String>) -> Next {
        Next::Retry { why: why.into(), at_once: false, maybe_applied: true, pause_ms: 0 }
    }
}

/// How a routed request ended (returned at once, never stored).
#[allow(clippy::large_enum_variant)]
enum Sent {
    /// The answer, and the shard as the attempt that got it routed it.
    Answer(Response, ShardMeta),
    /// The request's keys no longer fit one shard, and no attempt may have applied it.
    Spans,
}

/// Retries in a row a request makes at once on a new route before it backs off (a route that
/// keeps moving is not chased in a tight loop).
pub const MAX_IMMEDIATE_RETRIES: u32 = 3;

/// A pause of `backoff` with equal jitter: somewhere in `[backoff / 2, backoff]`, so that
/// clients that failed together do not retry together.
fn jittered(rng: &mut impl rand::Rng, backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + rng.random_range(Duration::ZERO..=half)
}

impl Client {
    /// A client that first asks `seeds` (any nodes of the cluster) for routes.
    pub fn new(rpc: Arc<dyn Rpc>, seeds: Vec<NodeId>, cfg: ClientConfig) -> Self {
        use rand::SeedableRng;
        let jitter = match cfg.jitter_seed {
            Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
            None => rand::rngs::SmallRng::from_os_rng(),
        };
        // Never seeded: two clients of one seeded test must not share request ids.
        let slots = WriteSlots::new(rand::random(), cfg.max_write_slots);
        Client { rpc, seeds, cfg, cache: Mutex::new(Cache::default()), jitter: Mutex::new(jitter), slots }
    }

    /// A client over TCP (TLS when `cfg.tls` is set) that first asks the nodes at `seeds`
    /// (`host:port` of their native listeners) who they are; fails when none answers.
    pub async fn connect(seeds: &[impl AsRef<str>], cfg: ClientConfig) -> Result<Client, ClientError> {
        cfg.net.validate().map_err(ClientError::Invalid)?;
        let timeout = Duration::from_millis(cfg.net.connect_timeout_ms);
        let connect: Arc<dyn Connect> = match &cfg.tls {
            Some(tls) => Arc::new(tls.connector(timeout).map_err(|e| ClientError::Invalid(e.to_string()))?),
            None => Arc::new(PlainConnect { timeout }),
        };
        let rpc = Arc::new(TcpRpc::with_connector(cfg.net.clone(), connect, cfg.login.clone(), Learns::Client));
        let mut ids = Vec::new();
        let mut errors = Vec::new();
        for seed in seeds {
            match rpc.hello(seed.as_ref()).await {
                Ok(node) => ids.push(node.id),
                Err(e) => errors.push(e),
            }
        }
        if ids.is_empty() {
            let why = if errors.is_empty() { "no seed address given".to_string() } else { errors.join("; ") };
            return Err(ClientError::Unreachable(why));
        }
        Ok(Client::new(Arc::new(rpc), ids, cfg))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached directory, in key order (for tools and tests).
    pub fn cached_routes(&self) -> Vec<ShardMeta> {
        self.cache().directory.iter().cloned().collect()
    }

    /// The value of `key`, linearizable.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        check_key(key)?;
        let key = key.to_vec();
        match self.routed(&key, false, |s| Request::Get { route: route(s), key: key.clone() }).await? {
            Response::Value { value } => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key` and when it expires (Unix ms; `None`: never), linearizable.
    pub async fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Option<u64>)>, ClientError> {
        check_key(key)?;
        let key = key.to_vec();
        match self.routed(&key, false, |s| Request::GetWithExpiry { route: route(s), key: key.clone() }).await? {
            Response::ValueWithExpiry { value, expires_at_ms } => Ok(value.map(|v| (v, expires_at_ms))),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        check_key(key)?;
        check_value(value)?;
        let (key, value) = (key.to_vec(), value.to_vec());
        let slot = self.slots.take().await;
        let id = Some(slot.id());
        let r = self
            .routed(&key, true, |s| Request::Put { route: route(s), key: key.clone(), value: value.clone(), id })
            .await?;
        expect_done(r)
    }

    /// Sets `key` to `value` for `ttl` (at least 1 ms); the key then reads as absent.
    pub async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<(), ClientError> {
        let ttl_ms = ttl_ms(ttl)?;
        self.batch(vec![BatchOp::PutExpiring { key: key.to_vec(), value: value.to_vec(), ttl_ms }]).await
    }

    /// Carries out `write` (a put, expiring put or delete) only if `key`'s value meets
    /// `expect` when it applies; atomic. `Ok(Err(current))` when the condition did not hold:
    /// nothing was written and `current` is the value then. Retried like every write: a retry
    /// of a write that applied answers `Ok` (its request id), it does not find its own write.
    pub async fn write_if(&self, expect: Expect, write: BatchOp) -> Result<Result<(), Option<Vec<u8>>>, ClientError> {
        if !write.is_write() {
            return Err(ClientError::Invalid("write_if takes a put, expiring put or delete".into()));
        }
        check_op(&write)?;
        let key = write.key().to_vec();
        let ops = vec![BatchOp::Check { key: key.clone(), expect }, write];
        let slot = self.slots.take().await;
        let id = Some(slot.id());
        let answer = self.routed(&key, true, |s| Request::Batch { route: route(s), ops: ops.clone(), id }).await;
        match answer {
            Ok(r) => expect_done(r).map(Ok),
            Err(ClientError::Refused(ProtoError::ConditionFailed { current, .. })) => Ok(Err(current)),
            Err(e) => Err(e),
        }
    }

    /// Carries out `ops` (writes and checks, at most `max-batch-keys`) as one atomic write:
    /// every key must be in one shard ([`ClientError::CrossShard`] otherwise, nothing
    /// written). If a check does not hold when it applies, nothing is written and the answer
    /// is `Ok(Err((key, current)))`: the key checked and its value then. Retried like every
    /// write (one request id).
    pub async fn write_checked(
        &self,
        ops: Vec<BatchOp>,
    ) -> Result<Result<(), (Vec<u8>, Option<Vec<u8>>)>, ClientError> {
        if ops.is_empty() || ops.len() > self.cfg.max_batch_keys {
            return Err(ClientError::Invalid(format!("a checked write has 1..={} ops", self.cfg.max_batch_keys)));
        }
        ops.iter().try_for_each(check_op)?;
        let first = ops[0].key().to_vec();
        match self.write_part(&first, ops).await {
            Ok(Sent::Answer(answer, _)) => expect_done(answer).map(Ok),
            Ok(Sent::Spans) => Err(ClientError::CrossShard("the keys of one atomic write".into())),
            Err(ClientError::Refused(ProtoError::ConditionFailed { key, current })) => Ok(Err((key, current))),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` to `value` only if its value meets `expect` (see [`Client::write_if`]).
    pub async fn put_if(
        &self,
        key: &[u8],
        value: &[u8],
        expect: Expect,
    ) -> Result<Result<(), Option<Vec<u8>>>, ClientError> {
        self.write_if(expect, BatchOp::Put { key: key.to_vec(), value: value.to_vec() }).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        check_key(key)?;
        let key = key.to_vec();
        let slot = self.slots.take().await;
        let id = Some(slot.id());
        expect_done(self.routed(&key, true, |s| Request::Delete { route: route(s), key: key.clone(), id }).await?)
    }

    /// The values of `keys`, in order, each linearizable (not one snapshot): one request per
    /// shard, the shards asked concurrently.
    pub async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        if keys.len() > self.cfg.max_batch_keys {
            return Err(ClientError::Invalid(format!(
                "{} keys > max-batch-keys {}",
                keys.len(),
                self.cfg.max_batch_keys
            )));
        }
        keys.iter().try_for_each(|k| check_key(k))?;
        // Group by the cached directory; each group re-partitions if shards changed.
        let mut groups: BTreeMap<Option<u64>, Vec<usize>> = BTreeMap::new();
        {
            let cache = self.cache();
            for (i, key) in keys.iter().enumerate() {
                groups.entry(cache.directory.get_shard(key).map(|s| s.id)).or_default().push(i);
            }
        }
        let parts = futures::future::join_all(groups.into_values().map(|g| self.get_group(keys, g))).await;
        let mut values = vec![None; keys.len()];
        for part in parts {
            for (i, value) in part? {
                values[i] = value;
            }
        }
        Ok(values)
    }

    /// Reads `keys[i]` for each `i` of `pending` shard by shard: each round asks the shard
    /// holding the first pending key, as the shard is when the attempt is made, for its
    /// pending keys; an answer may cover only the first of them (its size limit).
    async fn get_group(&self, keys: &[Vec<u8>], mut pending: Vec<usize>) -> GroupValues {
        let mut out = Vec::with_capacity(pending.len());
        while let Some(&first) = pending.first() {
            let asked =
                |s: &ShardMeta| -> Vec<usize> { pending.iter().copied().filter(|i| s.contains(&keys[*i])).collect() };
            let make = |s: &ShardMeta| Request::GetMany {
                route: route(s),
                keys: asked(s).into_iter().map(|i| ByteBuf::from(keys[i].clone())).collect(),
            };
            let (answer, shard) = match self.routed_with_shard(&keys[first], false, |s| Some(make(s))).await? {
                Sent::Answer(answer, shard) => (answer, shard),
                Sent::Spans => return Err(spans_error()),
            };
            let asked = asked(&shard);
            let values = match answer {
                Response::Values { values } if !values.is_empty() && values.len() <= asked.len() => values,
                other => return Err(unexpected(&other)),
            };
            let answered = values.len();
            out.extend(asked.iter().copied().zip(values.into_iter().map(|v| v.map(ByteBuf::into_vec))));
            let done: std::collections::HashSet<usize> = asked[..answered].iter().copied().collect();
            pending.retain(|i| !done.contains(i));
        }
        Ok(out)
    }

    /// Carries out `ops`: the writes to one shard are applied atomically and in order, the
    /// shards' parts concurrently (the whole is not atomic across shards). On an error some
    /// parts may have been applied.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<(), ClientError> {
        if ops.len() > self.cfg.max_batch_keys {
            return Err(ClientError::Invalid(format!(
                "{} ops > max-batch-keys {}",
                ops.len(),
                self.cfg.max_batch_keys
            )));
        }
        for op in &ops {
            if !op.is_write() {
                return Err(ClientError::Invalid(
                    "a check in a batch would gate only its own shard's part: use write_if".into(),
                ));
            }
            check_op(op)?;
        }
        // Group by the cached directory; each group re-partitions if shards changed.
        let mut groups: BTreeMap<Option<u64>, Vec<(usize, BatchOp)>> = BTreeMap::new();
        {
            let cache = self.cache();
            for (i, op) in ops.into_iter().enumerate() {
                groups.entry(cache.directory.get_shard(op.key()).map(|s| s.id)).or_default().push((i, op));
            }
        }
        let parts = futures::future::join_all(groups.into_values().map(|g| self.write_group(g))).await;
        let mut outcomes: Vec<(usize, Result<(), ClientError>)> = parts.into_iter().flatten().collect();
        outcomes.sort_by_key(|(i, _)| *i);
        outcomes.into_iter().try_for_each(|(_, r)| r)
    }

    /// Sets each of `pairs` (key, value), reporting each pair's outcome in order: the pairs of
    /// one shard go in one atomic request, the shards concurrently. A pair that fails its
    /// checks gets that error; when a shard's request fails, its pairs (and those of later
    /// shards of its group, not sent) get that error while other groups go on.
    pub async fn put_each(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Result<(), ClientError>> {
        let mut outcomes: Vec<Result<(), ClientError>> = vec![Ok(()); pairs.len()];
        if pairs.len() > self.cfg.max_batch_keys {
            let e = ClientError::Invalid(format!("{} pairs > max-batch-keys {}", pairs.len(), self.cfg.max_batch_keys));
            return vec![Err(e); pairs.len()];
        }
        let mut groups: BTreeMap<Option<u64>, Vec<(usize, BatchOp)>> = BTreeMap::new();
        {
            let cache = self.cache();
            for (i, (key, value)) in pairs.into_iter().enumerate() {
                let op = BatchOp::Put { key, value };
                if let Err(e) = check_op(&op) {
                    outcomes[i] = Err(e);
                    continue;
                }
                groups.entry(cache.directory.get_shard(op.key()).map(|s| s.id)).or_default().push((i, op));
            }
        }
        let parts = futures::future::join_all(groups.into_values().map(|g| self.write_group(g))).await;
        for (i, outcome) in parts.into_iter().flatten() {
            outcomes[i] = outcome;
        }
        outcomes
    }

    /// Writes a group of ops (with their indexes) shard by shard: each round sends, as one
    /// write, the ops of the cached shard holding the first one (just the first when no shard
    /// is cached). Returns each op's outcome by its index: when a round fails, its ops and
    /// the group's later ones (not sent) get its error.
    async fn write_group(&self, mut ops: Vec<(usize, BatchOp)>) -> Vec<(usize, Result<(), ClientError>)> {
        let mut out = Vec::with_capacity(ops.len());
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms);
        while let Some(first) = ops.first().map(|(_, o)| o.key().to_vec()) {
            let shard = self.cache().directory.get_shard(&first).cloned();
            let (part, rest): (Vec<_>, Vec<_>) = match &shard {
                Some(s) => ops.into_iter().partition(|(_, o)| s.contains(o.key())),
                None => {
                    let mut all = ops.into_iter();
                    (all.next().into_iter().collect(), all.collect())
                }
            };
            ops = rest;
            let part_ops: Vec<BatchOp> = part.iter().map(|(_, o)| o.clone()).collect();
            let outcome = match self.write_part(&first, part_ops).await {
                Ok(Sent::Answer(answer, _)) => expect_done(answer),
                // The shard split under the write before any attempt could apply it: send its
                // ops again, by the new shards.
                Ok(Sent::Spans) if tokio::time::Instant::now() < deadline => {
                    ops.extend(part);
                    ops.sort_by_key(|(i, _)| *i);
                    continue;
                }
                Ok(Sent::Spans) => Err(ClientError::Timeout {
                    timeout_ms: self.cfg.request_timeout_ms,
                    last: "the write's shard kept splitting under it".into(),
                }),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => out.extend(part.into_iter().map(|(i, _)| (i, Ok(())))),
                Err(e) => out.extend(part.into_iter().chain(ops.drain(..)).map(|(i, _)| (i, Err(e.clone())))),
            }
        }
        out
    }

    /// Sends `ops` (all in the shard holding `first` when the caller looked) as one write
    /// under one request id: every attempt carries the same ops. `Sent::Spans` when they no
    /// longer fit one shard and no attempt may have applied them.
    async fn write_part(&self, first: &[u8], ops: Vec<BatchOp>) -> Result<Sent, ClientError> {
        let slot = self.slots.take().await;
        let id = Some(slot.id());
        let make = |s: &ShardMeta| {
            ops.iter().all(|o| s.contains(o.key())).then(|| Request::Batch { route: route(s), ops: ops.clone(), id })
        };
        self.routed_with_shard(first, true, make).await
    }

    /// Up to `max_keys` pairs of `[start, end)` in key order, across shards. Each shard's
    /// part is linearizable; the whole is not one snapshot.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        max_keys: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        check_key(start)?;
        let end = end.map(<[u8]>::to_vec).unwrap_or_else(|| vec![presage_shardmgr::SYSTEM_KEY_PREFIX]);
        let mut out = Vec::new();
        let mut from = start.to_vec();
        while out.len() < max_keys && from < end {
            let page = (max_keys - out.len()).min(self.cfg.max_scan_page_keys as usize) as u32;
            let (first, e) = (from.clone(), end.clone());
            let max_bytes = self.cfg.max_scan_page_bytes;
            let make = |s: &ShardMeta| {
                Some(Request::Scan {
                    route: route(s),
                    start: first.clone(),
                    end: Some(e.clone()),
                    max_keys: page,
                    max_bytes,
                })
            };
            let (resp, shard) = match self.routed_with_shard(&from, false, make).await? {
                Sent::Answer(resp, shard) => (resp, shard),
                Sent::Spans => return Err(spans_error()),
            };
            let Response::Pairs { pairs, more, resume_after } = resp else { return Err(unexpected(&resp)) };
            let last = resume_after.or_else(|| pairs.last().map(|(k, _)| k.clone()));
            out.extend(pairs);
            from = match (more, last) {
                (true, Some(mut k)) => {
                    k.push(0);
                    k
                }
                // This shard is done: go on from its end.
                _ => match shard.end {
                    Some(e) => e,
                    None => break,
                },
            };
        }
        out.truncate(max_keys);
        Ok(out)
    }

    /// Sends a request about one key (it always fits the shard holding the key).
    async fn routed(
        &self,
        key: &[u8],
        write: bool,
        make: impl Fn(&ShardMeta) -> Request,
    ) -> Result<Response, ClientError> {
        match self.routed_with_shard(key, write, |s| Some(make(s))).await? {
            Sent::Answer(r, _) => Ok(r),
            Sent::Spans => Err(spans_error()),
        }
    }

    /// Sends `make(shard)` to the leader of the shard holding `key`, retrying until the
    /// deadline; `make` gives `None` when the request no longer fits the shard. `write`: the
    /// request is a write (with a request id), so an attempt that may have applied makes a
    /// later failure `OutcomeUnknown`.
    async fn routed_with_shard(
        &self,
        key: &[u8],
        write: bool,
        make: impl Fn(&ShardMeta) -> Option<Request>,
    ) -> Result<Sent, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms);
        let mut backoff = Duration::from_millis(self.cfg.backoff_ms);
        let mut avoid = Vec::new();
        let mut immediate = 0;
        let mut last = String::new();
        let mut maybe_applied = false;
        loop {
            let shard = self.cache().directory.get_shard(key).cloned();
            let next = match shard {
                None => match self.refresh(key).await {
                    // The manager may not know the range yet (a split-off half not reported):
                    // back off before asking again.
                    Ok(()) if self.cache().directory.get_shard(key).is_none() => {
                        Next::retry("the directory has no shard for the key yet")
                    }
                    Ok(()) => continue,
                    Err(e) => Next::retry(e),
                },
                Some(shard) => match make(&shard).map(|r| self.prioritized(r)).map(|mut r| {
                    if TASK_REPLICA_READS.try_with(|r| *r).unwrap_or(self.cfg.replica_reads) {
                        r.allow_replica_read();
                    }
                    r
                }) {
                    None if write && maybe_applied => {
                        return Err(ClientError::OutcomeUnknown(format!(
                            "shard {} split while the write's outcome was unknown ({last})",
                            shard.id
                        )))
                    }
                    None => return Ok(Sent::Spans),
                    Some(request) => match self.attempt(&shard, request, &mut avoid).await {
                        Next::Answer(r) => return Ok(Sent::Answer(r, shard)),
                        other => other,
                    },
                },
            };
            let at_least = match next {
                Next::Answer(_) => unreachable!("returned above"),
                Next::Fail(e) => return Err(e),
                Next::Retry { why, at_once, maybe_applied: maybe, pause_ms } => {
                    last = why;
                    maybe_applied |= maybe;
                    if at_once && immediate < MAX_IMMEDIATE_RETRIES {
                        immediate += 1;
                        continue;
                    }
                    Duration::from_millis(pause_ms)
                }
            };
            immediate = 0;
            let pause =
                jittered(&mut *self.jitter.lock().unwrap_or_else(PoisonError::into_inner), backoff).max(at_least);
            if tokio::time::Instant::now() + pause >= deadline {
                let timeout_ms = self.cfg.request_timeout_ms;
                return Err(if write && maybe_applied {
                    ClientError::OutcomeUnknown(format!("no outcome within {timeout_ms} ms; last error: {last}"))
                } else {
                    ClientError::Timeout { timeout_ms, last }
                });
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(self.cfg.max_backoff_ms));
        }
    }

    /// `request` at the task's priority, else the configured one.
    fn prioritized(&self, mut request: Request) -> Request {
        request.set_priority(TASK_PRIORITY.try_with(|p| *p).unwrap_or(self.cfg.priority));
        request
    }

    /// One attempt at the shard's leader, or at a voter (which forwards) when the leader is
    /// unknown; nodes in `avoid` did not answer during this request and are tried last.
    async fn attempt(&self, shard: &ShardMeta, request: Request, avoid: &mut Vec<NodeId>) -> Next {
        let voters = shard.replicas.iter().filter(|r| r.role == Role::Voter).map(|r| r.node);
        let picked = request.route().is_some_and(|r| r.replica_read).then(|| self.pick_replica(shard, avoid)).flatten();
        let candidates: Vec<NodeId> =
            picked.into_iter().chain(shard.leader).chain(voters).filter(|n| !avoid.contains(n)).collect();
        let now = tokio::time::Instant::now();
        let answering = {
            let cache = self.cache();
            candidates.iter().copied().find(|n| !cache.is_silent(*n, now))
        };
        let Some(target) = answering.or(candidates.first().copied()) else {
            // Every replica failed to answer: ask the shard manager afresh.
            avoid.clear();
            self.cache().directory.remove(shard.id);
            return Next::retry(format!("no replica of shard {} answered", shard.id));
        };
        let answer =
            tokio::time::timeout(Duration::from_millis(self.cfg.attempt_timeout_ms), self.rpc.call(target, request))
                .await;
        // A follower forwarded the request: route the shard to the leader that answered.
        let mut answered_by = target;
        let answer = match answer {
            Ok(Ok(Response::Redirected { leader, reply })) => {
                self.cache().directory.set_leader(shard.id, Some(leader));
                answered_by = leader;
                Ok(Ok(*reply))
            }
            other => other,
        };
        // A replica read a follower could not serve (it knows no leader, lags behind a split,
        // its round went unanswered): the next replica at once, the cached route kept.
        if picked == Some(target) && shard.leader != Some(target) {
            if let Some(next) = self.declined_by_follower(&answer, target, avoid) {
                return next;
            }
        }
        let mut cache = self.cache();
        let now = tokio::time::Instant::now();
        let silent_until = now + Duration::from_millis(self.cfg.silent_node_ms);
        match &answer {
            Ok(Ok(_)) => drop(cache.silent.remove(&target)),
            // Whatever the request, this node is tried last for a while, and the shard's
            // leader is looked for afresh (a voter forwards, or says who leads).
            Ok(Err(_)) | Err(_) => cache.shun(target, shard.id, now, silent_until),
        }
        match answer {
            Ok(Ok(Response::Error(e))) => match e {
                ProtoError::NotLeader { leader, .. } => {
                    cache.directory.set_leader(shard.id, leader);
                    // A hint of another node is the new route: go there at once.
                    let hinted = leader.is_some_and(|l| l != target);
                    if !hinted {
                        cache.directory.remove(shard.id);
                    }
                    Next::Retry { why: e.to_string(), at_once: hinted, maybe_applied: false, pause_ms: 0 }
                }
                ProtoError::EpochNotMatch { ref current, .. } => {
                    for s in current {
                        cache.directory.update(s.clone());
                    }
                    // Newer descriptors came with the answer: route by them at once.
                    let stale = cache.directory.get(shard.id).is_some_and(|s| s.epoch == shard.epoch);
                    if stale {
                        cache.directory.remove(shard.id);
                    }
                    Next::Retry {
                        why: e.to_string(),
                        at_once: !stale && !current.is_empty(),
                        maybe_applied: false,
                        pause_ms: 0,
                    }
                }
                ProtoError::ShardNotFound { .. } => {
                    cache.directory.remove(shard.id);
                    Next::retry(e.to_string())
                }
                ProtoError::Retry(_) => Next::retry(e.to_string()),
                ProtoError::Overloaded { retry_after_ms, .. } => Next::Retry {
                    why: e.to_string(),
                    at_once: false,
                    maybe_applied: false,
                    pause_ms: retry_after_ms.min(self.cfg.max_backoff_ms),
                },
                ProtoError::Unavailable(_) => {
                    // Nothing was done: another replica now, and this node last for a while.
                    cache.shun(answered_by, shard.id, now, silent_until);
                    avoid.push(answered_by);
                    Next::Retry { why: e.to_string(), at_once: true, maybe_applied: false, pause_ms: 0 }
                }
                // A write's retries carry its request id: it applies once.
                ProtoError::OutcomeUnknown { .. } => Next::unknown(e.to_string()),
                ProtoError::Superseded(_) => Next::Fail(ClientError::OutcomeUnknown(e.to_string())),
                other if !other.is_definite() => Next::unknown(other.to_string()),
                other => Next::Fail(ClientError::Refused(other)),
            },
            Ok(Ok(answer)) => Next::Answer(answer),
            Ok(Err(RpcError::Unreachable(n))) => {
                cache.directory.set_leader(shard.id, None);
                avoid.push(n);
                Next::retry(format!("node {n} unreachable"))
            }
            Ok(Err(e @ RpcError::Lost(_))) => {
                avoid.push(target);
                Next::unknown(e.to_string())
            }
            Err(_) => {
                cache.directory.set_leader(shard.id, None);
                avoid.push(target);
                Next::unknown(format!("no answer from node {target} in time"))
            }
        }
    }

    /// The cluster's nodes, groups, operators and counts (asked of the seeds and known
    /// nodes in turn; any node forwards to the shard manager).
    pub async fn cluster_info(&self) -> Result<crate::proto::ClusterInfo, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            for to in self.targets() {
                let answer = tokio::time::timeout(
                    Duration::from_millis(self.cfg.attempt_timeout_ms),
                    self.rpc.call(to, Request::ClusterInfo),
                )
                .await;
                match answer {
                    Ok(Ok(Response::ClusterInfo(info))) => {
                        self.rpc.learn(&info.nodes);
                        return Ok(*info);
                    }
                    Ok(Ok(other)) => last = format!("node {to}: {other:?}"),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("node {to}: no answer in time"),
                }
            }
            tokio::time::sleep(Duration::from_millis(self.cfg.max_backoff_ms)).await;
        }
        Err(ClientError::Timeout { timeout_ms: self.cfg.request_timeout_ms, last })
    }

    /// Seeds first, then every other node known.
    fn targets(&self) -> Vec<NodeId> {
        let mut targets: Vec<NodeId> = self.seeds.clone();
        targets.extend(self.cache().nodes.keys().copied().filter(|n| !self.seeds.contains(n)));
        targets
    }

    /// Fetches directory entries from `key` on, asking the seeds and known nodes in turn
    /// (any node forwards to the shard manager).
    pub async fn refresh(&self, key: &[u8]) -> Result<(), String> {
        let mut targets = self.targets();
        let mut last = String::from("no node to ask");
        let mut i = 0;
        while i < targets.len() {
            let to = targets[i];
            i += 1;
            let request = Request::Routes { key: key.to_vec(), max_shards: self.cfg.max_routes_per_refresh };
            let answer =
                tokio::time::timeout(Duration::from_millis(self.cfg.attempt_timeout_ms), self.rpc.call(to, request))
                    .await;
            match answer {
                Ok(Ok(Response::Routes { shards, nodes, read_weights })) => {
                    self.rpc.learn(&nodes);
                    let mut cache = self.cache();
                    // As many as the answer's frame (bounded) carried.
                    cache.read_weights = read_weights.into_iter().collect();
                    for n in nodes {
                        cache.nodes.insert(n.id, n);
                    }
                    for s in shards {
                        cache.directory.update(s);
                    }
                    return Ok(());
                }
                Ok(Ok(Response::Error(ProtoError::NotManager { leader: Some(l) })))
                    if !targets[i..].contains(&l) && targets.len() < MAX_REFRESH_ASKS =>
                {
                    targets.insert(i, l);
                    last = format!("node {to} does not run the shard manager");
                }
                Ok(Ok(other)) => last = format!("node {to}: {other:?}"),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("node {to}: no answer in time"),
            }
        }
        Err(last)
    }
}

/// The values a group of `get_many` read: (index of the key, value).
type GroupValues = Result<Vec<(usize, Option<Vec<u8>>)>, ClientError>;

fn route(s: &ShardMeta) -> Route {
    Route { shard: s.id, epoch: s.epoch, priority: Priority::Normal, replica_read: false }
}

fn expect_done(r: Response) -> Result<(), ClientError> {
    match r {
        Response::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// A request about one key found its key outside the shard holding it: a bug.
fn spans_error() -> ClientError {
    ClientError::Refused(ProtoError::Internal("a one-shard request no longer fits its shard".into()))
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Refused(ProtoError::Internal(format!("unexpected answer {r:?}")))
}

mod check;
mod config;
mod replica;
#[cfg(test)]
mod tests;
