//! The client's retry and routing rules against scripted nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use presage_shardmgr::{Epoch, ReplicaMeta};

use super::*;
use crate::rpc::RpcFuture;

/// Shard 1 over every key, on voters 1-3, led by node 1.
fn three_voters_led_by_1() -> ShardMeta {
    let replicas = (1..=3).map(|node| ReplicaMeta { node, role: Role::Voter }).collect();
    ShardMeta {
        id: 1,
        start: Vec::new(),
        end: None,
        epoch: Epoch::default(),
        replicas,
        leader: Some(1),
        merging_into: None,
    }
}

/// One shard on nodes 1-3, led by node 1, which never answers (its disk stalled); nodes
/// 2 and 3 answer every write and read (as a follower forwarding to the new leader would).
struct StalledLeader {
    calls_to_node_1: AtomicU64,
    /// The request id of every put sent, to any node.
    put_ids: Mutex<Vec<Option<crate::proto::RequestId>>>,
    /// Node 1 knows its loop is stalled and refuses at once (`Unavailable`) instead of
    /// never answering.
    refuses: bool,
}

impl Rpc for StalledLeader {
    fn call(&self, to: NodeId, request: Request) -> RpcFuture {
        if let Request::Put { id, .. } = &request {
            self.put_ids.lock().expect("lock").push(*id);
        }
        if to == 1 {
            self.calls_to_node_1.fetch_add(1, Ordering::Relaxed);
            if self.refuses {
                let refused = Response::Error(ProtoError::Unavailable("node 1: loop stalled".into()));
                return Box::pin(async move { Ok(refused) });
            }
            return Box::pin(std::future::pending());
        }
        let answer = match request {
            Request::Routes { .. } => {
                Response::Routes { shards: vec![three_voters_led_by_1()], nodes: Vec::new(), read_weights: Vec::new() }
            }
            Request::Put { .. } => Response::Done,
            Request::Get { .. } => Response::Value { value: Some(b"v".to_vec()) },
            other => Response::Error(ProtoError::Internal(format!("unexpected {other:?}"))),
        };
        Box::pin(async move { Ok(answer) })
    }
}

/// A write that timed out at a stalled leader (it may have applied there) is retried at
/// another replica under the same request id, so it applies once; the next requests go
/// to the other replicas at once instead of paying the attempt timeout again, until the
/// node's silence mark runs out.
#[tokio::test(start_paused = true)]
async fn a_node_that_timed_out_is_tried_last_by_later_requests() {
    let rpc = Arc::new(StalledLeader { calls_to_node_1: AtomicU64::new(0), put_ids: Mutex::default(), refuses: false });
    let cfg = ClientConfig { jitter_seed: Some(1), ..ClientConfig::default() };
    let (attempt_ms, backoff_ms, silent_ms) = (cfg.attempt_timeout_ms, cfg.backoff_ms, cfg.silent_node_ms);
    let client = Client::new(rpc.clone(), vec![2], cfg);
    let started = tokio::time::Instant::now();
    client.put(b"k", b"v").await.expect("retried at another replica");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(attempt_ms), "one attempt timeout: {took:?}");
    assert!(took <= Duration::from_millis(attempt_ms + backoff_ms), "and one backoff: {took:?}");
    let ids = rpc.put_ids.lock().expect("lock").clone();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0].is_some() && ids[0] == ids[1], "the retry carries the write's id: {ids:?}");
    let later = tokio::time::Instant::now();
    for _ in 0..10 {
        client.put(b"k", b"v").await.expect("put through another replica");
        assert_eq!(client.get(b"k").await.expect("get"), Some(b"v".to_vec()));
    }
    assert!(later.elapsed() < Duration::from_millis(10), "no timeout paid again: {:?}", later.elapsed());
    assert_eq!(rpc.calls_to_node_1.load(Ordering::Relaxed), 1, "the silent node was not asked again");
    let ids = rpc.put_ids.lock().expect("lock").clone();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 11, "each write has its own id, its attempts share it: {ids:?}");
    // Once the mark runs out, the leader the directory names is tried again.
    tokio::time::advance(Duration::from_millis(silent_ms)).await;
    client.cache().directory.set_leader(1, Some(1));
    let read = client.get(b"k").await.expect("a read retries elsewhere");
    assert_eq!(read, Some(b"v".to_vec()));
    assert_eq!(rpc.calls_to_node_1.load(Ordering::Relaxed), 2, "asked again after the mark ran out");
}

/// A node that refuses `Unavailable` (nothing done) sends the write to another replica at
/// once, and later requests try it last: no timeout is paid and no write is lost.
#[tokio::test(start_paused = true)]
async fn an_unavailable_node_is_left_at_once() {
    let rpc = Arc::new(StalledLeader { calls_to_node_1: AtomicU64::new(0), put_ids: Mutex::default(), refuses: true });
    let cfg = ClientConfig { jitter_seed: Some(1), ..ClientConfig::default() };
    let client = Client::new(rpc.clone(), vec![2], cfg);
    let started = tokio::time::Instant::now();
    for _ in 0..10 {
        client.put(b"k", b"v").await.expect("the write goes to another replica");
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff, no timeout");
    assert_eq!(rpc.calls_to_node_1.load(Ordering::Relaxed), 1, "the refusing node was asked once");
}

/// Three voters led by node 1; the manager weighs node 3 at 0 and node 2 at 0.5. Records
/// which node each read reached and whether it was a replica read.
struct Weighted {
    reads: Mutex<Vec<(NodeId, bool)>>,
    weights: Vec<(NodeId, f64)>,
    /// Followers answer reads `NotLeader` without a hint (they know no leader).
    followers_decline: bool,
}

impl Weighted {
    fn new(weights: Vec<(NodeId, f64)>, followers_decline: bool) -> Arc<Weighted> {
        Arc::new(Weighted { reads: Mutex::default(), weights, followers_decline })
    }
}

impl Rpc for Weighted {
    fn call(&self, to: NodeId, request: Request) -> RpcFuture {
        let answer = match request {
            Request::Routes { .. } => Response::Routes {
                shards: vec![three_voters_led_by_1()],
                nodes: Vec::new(),
                read_weights: self.weights.clone(),
            },
            Request::Get { route, .. } => {
                self.reads.lock().expect("lock").push((to, route.replica_read));
                if self.followers_decline && to != 1 {
                    Response::Error(ProtoError::NotLeader { shard: 1, leader: None })
                } else {
                    Response::Value { value: None }
                }
            }
            Request::Put { route, .. } => {
                assert!(!route.replica_read, "a write is never a replica read");
                Response::Done
            }
            other => Response::Error(ProtoError::Internal(format!("unexpected {other:?}"))),
        };
        Box::pin(async move { Ok(answer) })
    }
}

/// With replica reads on, reads spread over the voters by the manager's read weights (a node
/// weighed 0 gets none, one weighed 0.5 about half the leader's share); off, they all go to
/// the leader.
#[tokio::test(start_paused = true)]
async fn replica_reads_follow_the_read_weights() {
    for replica_reads in [true, false] {
        let rpc = Weighted::new(vec![(2, 0.5), (3, 0.0)], false);
        let cfg = ClientConfig { jitter_seed: Some(3), replica_reads, ..ClientConfig::default() };
        let client = Client::new(rpc.clone(), vec![1], cfg);
        client.put(b"k", b"v").await.expect("put");
        for _ in 0..600 {
            client.get(b"k").await.expect("get");
        }
        let reads = rpc.reads.lock().expect("lock").clone();
        let to = |n: NodeId| reads.iter().filter(|(t, _)| *t == n).count();
        assert!(reads.iter().all(|(_, r)| *r == replica_reads), "the flag follows the setting");
        if replica_reads {
            assert_eq!(to(3), 0, "a node weighed 0 gets no read");
            assert!((300..=500).contains(&to(1)) && (100..=300).contains(&to(2)), "{} {}", to(1), to(2));
        } else {
            assert_eq!(to(1), 600, "leader reads only");
        }
    }
}

/// Every voter weighing nothing sends replica reads to the leader; a follower that cannot
/// serve one (it knows no leader) sends the read on to the leader at once, and the client
/// keeps its route (the next reads still reach the followers first).
#[tokio::test(start_paused = true)]
async fn replica_reads_fall_back_to_the_leader() {
    let rpc = Weighted::new(vec![(1, 0.0), (2, 0.0), (3, f64::NAN)], false);
    let cfg = ClientConfig { jitter_seed: Some(5), replica_reads: true, ..ClientConfig::default() };
    let client = Client::new(rpc.clone(), vec![1], cfg);
    for _ in 0..20 {
        client.get(b"k").await.expect("get");
    }
    assert!(rpc.reads.lock().expect("lock").iter().all(|(to, _)| *to == 1), "all to the leader");

    let rpc = Weighted::new(Vec::new(), true);
    let cfg = ClientConfig { jitter_seed: Some(5), replica_reads: true, ..ClientConfig::default() };
    let client = Client::new(rpc.clone(), vec![1], cfg);
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(client.get(b"k").await.expect("answered by the leader"), None);
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff");
    let reads = rpc.reads.lock().expect("lock").clone();
    let to_followers = reads.iter().filter(|(to, _)| *to != 1).count();
    assert_eq!(reads.iter().filter(|(to, _)| *to == 1).count(), 50, "each read ends at the leader");
    assert!(to_followers > 20, "followers are still tried first: {to_followers}");
    assert_eq!(client.cached_routes()[0].leader, Some(1), "the route kept its leader");
}
