//! The failing-node story's watcher: a thread that polls warnings, risk, migrations and
//! leaders every [`WATCH_INTERVAL`](super::WATCH_INTERVAL) until told to stop, narrates what
//! changed about the failing nodes, and keeps what the figures need (replicas held, since when
//! each leads nothing, when each was first warned about).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use presage_ctl::AdminEndpoint;
use presage_shardmgr::NodeId;

use super::WATCH_INTERVAL;

/// What the watcher keeps up to date for the story, per failing node (in the story's order).
pub(super) struct Watched {
    /// Replicas each holds (-1: not seen yet).
    pub(super) held: Vec<std::sync::atomic::AtomicI64>,
    /// Since when each leads no shard (`None`: it leads some).
    pub(super) leads_none_since: Mutex<Vec<Option<Instant>>>,
}

impl Watched {
    pub(super) fn new(nodes: usize) -> Watched {
        Watched {
            held: (0..nodes).map(|_| std::sync::atomic::AtomicI64::new(-1)).collect(),
            leads_none_since: Mutex::new(vec![None; nodes]),
        }
    }
}

/// What the watcher last told about one failing node.
#[derive(Default)]
struct Told {
    first_warning: Option<Instant>,
    warned_kinds: Vec<String>,
    leads: Option<usize>,
    holds: Option<usize>,
    risk: f64,
}

/// Polls warnings, risk, migrations and leaders until `stop`, sending what changed about the
/// `failing` nodes; returns when each was first warned about.
pub(super) fn watch(
    admins: &[AdminEndpoint],
    failing: &[NodeId],
    stop: &AtomicBool,
    seen: &Watched,
    tx: &std::sync::mpsc::Sender<String>,
) -> Vec<Option<Instant>> {
    let mut told: Vec<Told> = failing.iter().map(|_| Told::default()).collect();
    let mut stages: BTreeMap<u64, String> = BTreeMap::new();
    let mut leaderless_before: Option<usize> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_INTERVAL);
        for a in admins.iter().map(AdminEndpoint::client) {
            let Ok(w) = a.get::<serde_json::Value>("/v1/warnings?after=0&limit=100") else { continue };
            let risk = a.get::<serde_json::Value>("/v1/risk").ok();
            let migrations = a.get::<serde_json::Value>("/v1/migrations").ok();
            for (i, &node) in failing.iter().enumerate() {
                let t = &mut told[i];
                for x in w["active"].as_array().into_iter().flatten().filter(|x| x["node"] == node) {
                    let kind = x["kind"].as_str().unwrap_or("?").to_string();
                    if !t.warned_kinds.contains(&kind) {
                        t.first_warning.get_or_insert_with(Instant::now);
                        let _ = tx.send(format!("early warning: {kind} on node {node}"));
                        t.warned_kinds.push(kind);
                    }
                }
                let p = risk
                    .as_ref()
                    .and_then(|r| r["nodes"].as_array()?.iter().find(|n| n["node"] == node)?["probability"].as_f64());
                // Said at each tenth crossed upwards.
                if let Some(p) = p.filter(|p| (p * 10.0).floor() > (t.risk * 10.0).floor() && *p >= 0.3) {
                    let _ = tx.send(format!("node {node}'s failure probability reaches {p:.2}"));
                    t.risk = p;
                }
                for x in migrations.as_ref().and_then(|m| m.as_array()).into_iter().flatten() {
                    if x["node"] != node {
                        continue;
                    }
                    let (Some(id), Some(stage)) = (x["id"].as_u64(), x["stage"].as_str()) else { continue };
                    if stages.get(&id).map(String::as_str) != Some(stage) {
                        let target =
                            x["target"].as_u64().map_or("no target yet".to_string(), |t| format!("to node {t}"));
                        let cause = x["cause"].as_str().unwrap_or("?");
                        let _ = tx.send(format!("migration {id} of node {node} ({cause}, {target}): {stage}"));
                        stages.insert(id, stage.to_string());
                    }
                }
            }
            if let Ok(rows) = a.shards(None, None, None) {
                for (i, &node) in failing.iter().enumerate() {
                    let t = &mut told[i];
                    let leads = rows.iter().filter(|r| r.shard.leader == Some(node)).count();
                    let holds = rows.iter().filter(|r| r.shard.replica(node).is_some()).count();
                    seen.held[i].store(i64::try_from(holds).unwrap_or(i64::MAX), Ordering::Relaxed);
                    {
                        let mut since = seen.leads_none_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        since[i] = if leads == 0 { Some(since[i].unwrap_or_else(Instant::now)) } else { None };
                    }
                    if t.leads.is_some_and(|b| b != leads) {
                        let _ = tx.send(format!("node {node} leads {leads} shard(s)"));
                    }
                    if t.holds.is_some_and(|b| b != holds) {
                        let _ = tx.send(format!("node {node} holds {holds} replica(s)"));
                    }
                    (t.leads, t.holds) = (Some(leads), Some(holds));
                }
                let leaderless = rows.iter().filter(|r| r.shard.leader.is_none()).count();
                if leaderless_before.is_some_and(|b| b != leaderless) {
                    let _ = tx.send(format!("{leaderless} shard(s) without a known leader"));
                }
                leaderless_before = Some(leaderless);
            }
            break;
        }
    }
    told.iter().map(|t| t.first_warning).collect()
}
