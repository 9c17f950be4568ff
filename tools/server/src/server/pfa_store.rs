//! What the failure analysis keeps in the meta shard, under its own prefix `\xffp/` (the
//! manager's records under `\xffm/` are read whole at every manager start; these are read in
//! part, when needed):
//!
//! | key | value |
//! |---|---|
//! | `\xffp/h/{node:016x}/{slot:08x}` | a [`MinuteSummary`] (JSON); `slot` = minute number modulo `history-minutes`, so each node's history is a bounded ring |
//! | `\xffp/e/{slot:08x}` | an episode: a recording in `pfa-record` CSV (failed nodes labelled), zstd-compressed; `slot` = episode number modulo `max-episodes`, a bounded ring |
//! | `\xffp/f/{node:016x}/{at_ms:016x}` | a failure of `node` the manager observed (declared down); `{}` |
//! | `\xffp/model/node` | the retrained node model (JSON) |
//! | `\xffp/state` | [`PersistedPfa`]: the episode counter and the schedule |
//!
//! These records are written after the manager's own, in batches of at most
//! [`MAX_PFA_BATCH_BYTES`] (an episode alone); a failed write is logged and does not stop the
//! manager (the records are advisory: a lost minute or episode is not a lost decision).
//!
//! Also here: the manager-start routine (restore the detectors from the history, take a
//! stored model) and the retraining task.

use std::sync::Arc;

use presage_engine::{Engine, KeyRange};
use presage_pfa::aggregate::MinuteSummary;
use presage_pfa::model::FailureModel;
use presage_pfa::node_model::Recording;
use presage_pfa::retrain::{self, RetrainConfig};
use presage_replication::ShardStatus;
use presage_shardmgr::{MetaWrite, NodeId, META_SHARD_ID};
use serde::{Deserialize, Serialize};

use super::error::ServerError;
use super::meta_io::{persist, scan_meta};
use super::{lock, Inner};

/// First key of the failure analysis's records.
pub const PFA_PREFIX: &[u8] = b"\xffp/";
/// Most bytes a decompressed episode may have.
pub const MAX_EPISODE_CSV_BYTES: usize = 64 << 20;
/// Most bytes of records one history or episode read takes from the meta shard.
pub const MAX_READ_BYTES: usize = 256 << 20;
/// Most minutes one history answer carries (about 2.5 KB each: within a client frame).
pub const MAX_HISTORY_ANSWER_MINUTES: u32 = 2_880;
/// Most bytes of failure-analysis records in one write to the meta shard.
pub const MAX_PFA_BATCH_BYTES: usize = 512 << 10;
/// The shipped recording the node model was trained on; retraining starts from it.
const BASE_RECORDING_CSV: &str = include_str!("../../../../pfa/data/telemetry/recorded-mixed-seed1.csv");

fn key(parts: &[&[u8]]) -> Vec<u8> {
    [&[PFA_PREFIX], parts].concat().concat()
}

/// Key of slot `slot` of `node`'s history ring.
pub fn history_slot_key(node: NodeId, slot: u64) -> Vec<u8> {
    key(&[format!("h/{node:016x}/{slot:08x}").as_bytes()])
}

/// Key of `m` in its node's history ring of `history_minutes` slots.
pub fn history_key(m: &MinuteSummary, history_minutes: u64) -> Vec<u8> {
    history_slot_key(m.node, (m.minute_ms / 60_000) % history_minutes.max(1))
}

/// Key of episode slot `slot`.
pub fn episode_key(slot: u64) -> Vec<u8> {
    key(&[format!("e/{slot:08x}").as_bytes()])
}

/// Key of the failure analysis's own state.
pub fn state_key() -> Vec<u8> {
    key(&[b"state"])
}

/// Key of a failure of `node` observed at `at_ms` (its value is `{}`).
pub fn failure_key(node: NodeId, at_ms: u64) -> Vec<u8> {
    key(&[format!("f/{node:016x}/{at_ms:016x}").as_bytes()])
}

/// What the failure analysis keeps about itself in the meta shard (`\xffp/state`), so that
/// its schedule survives a manager fail-over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedPfa {
    /// Episodes written so far; the next goes to slot `episode_seq % max-episodes`.
    pub episode_seq: u64,
    /// When the next retraining is due, ms.
    pub next_retrain_ms: Option<u64>,
    /// When the last healthy episode was kept, ms.
    pub last_healthy_episode_ms: Option<u64>,
}

/// Key of the retrained node model.
pub fn model_key() -> Vec<u8> {
    key(&[b"model/node"])
}

fn range(from: Vec<u8>, to: Vec<u8>) -> Result<KeyRange, ServerError> {
    Ok(KeyRange::new(from, Some(to))?)
}

/// An episode as stored: CSV, zstd-compressed, at most `max_bytes`.
pub fn encode_episode(episode: &Recording, max_bytes: usize) -> Result<Vec<u8>, ServerError> {
    let mut csv = Vec::new();
    episode.write_csv(&mut csv).map_err(|e| ServerError::record("episode", e))?;
    let bytes = zstd::bulk::compress(&csv, 3).map_err(|e| ServerError::record("episode", e))?;
    if bytes.len() > max_bytes {
        let why = format!("{} bytes compressed, more than max-episode-bytes ({max_bytes})", bytes.len());
        return Err(ServerError::record("episode", why));
    }
    Ok(bytes)
}

/// A stored episode read back.
pub fn decode_episode(name: &str, bytes: &[u8]) -> Result<Recording, ServerError> {
    let csv = zstd::bulk::decompress(bytes, MAX_EPISODE_CSV_BYTES).map_err(|e| ServerError::record(name, e))?;
    Ok(Recording::from_csv(vec![(name.to_string(), csv.as_slice())])?)
}

fn meta_epoch(status: Option<ShardStatus>) -> Result<presage_replication::Epoch, ServerError> {
    Ok(status.ok_or(ServerError::NoMetaReplica)?.descriptor.epoch())
}

/// The history of `node` between `from_ms` and `to_ms` (minute starts), oldest first.
pub(crate) async fn history<E: Engine>(
    inner: &Inner<E>,
    node: NodeId,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<MinuteSummary>, ServerError> {
    let history_minutes = lock(&inner.pfa).config().history_minutes.max(1);
    let epoch = meta_epoch(inner.node.status(META_SHARD_ID).await?)?;
    let prefix = format!("h/{node:016x}/");
    let slot_key = |slot: u64| key(&[prefix.as_bytes(), format!("{slot:08x}").as_bytes()]);
    // The ring's slots for [from, to]: one range, or two when it wraps.
    let minutes = (to_ms / 60_000).saturating_sub(from_ms / 60_000) + 1;
    let ranges = if minutes >= history_minutes {
        vec![(0, history_minutes)]
    } else {
        let (a, b) = ((from_ms / 60_000) % history_minutes, (to_ms / 60_000) % history_minutes);
        if a <= b {
            vec![(a, b + 1)]
        } else {
            vec![(a, history_minutes), (0, b + 1)]
        }
    };
    let mut out = Vec::new();
    for (a, b) in ranges {
        for (k, v) in scan_meta(inner, epoch, range(slot_key(a), slot_key(b))?, MAX_READ_BYTES).await? {
            let m: MinuteSummary = serde_json::from_slice(&v)
                .map_err(|e| ServerError::record(format!("history record {}", String::from_utf8_lossy(&k)), e))?;
            if m.node == node && (from_ms..=to_ms).contains(&m.minute_ms) {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| m.minute_ms);
    Ok(out)
}

/// Run when this node's shard manager starts: the detectors resume from the history of
/// `nodes`, the schedule from the stored state, and a retrained model a predecessor stored
/// is served; `down` are the nodes already down (their failures were counted).
pub(crate) async fn on_manager_start<E: Engine>(
    inner: &Inner<E>,
    nodes: &[NodeId],
    down: &std::collections::BTreeSet<NodeId>,
    now_ms: u64,
) {
    let restore_ms = lock(&inner.pfa).config().restore_minutes * 60_000;
    let mut all = Vec::new();
    for &node in nodes {
        match history(inner, node, now_ms.saturating_sub(restore_ms), now_ms).await {
            Ok(h) => all.extend(h),
            Err(e) => tracing::warn!(node, error = %e, "failure-analysis history not read; its detectors warm up"),
        }
    }
    let stored = match read_model(inner).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "stored node model not read; serving the loaded one");
            None
        }
    };
    let mut failures = match read_failures(inner).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "observed failures not read; the failure-history prior starts from none");
            Vec::new()
        }
    };
    // Failures older than the prior's window no longer count: their records go.
    let window_ms = (presage_pfa::prior::WINDOW_DAYS * 86_400_000.0) as u64;
    let (old, kept): (Vec<_>, Vec<_>) = failures.into_iter().partition(|(_, at)| at.saturating_add(window_ms) < now_ms);
    failures = kept;
    if !old.is_empty() {
        let deletes = old.iter().map(|(n, at)| MetaWrite { key: failure_key(*n, *at), value: None }).collect();
        let _order = inner.meta_writes.lock().await;
        if let Err(e) = persist(inner, deletes).await {
            tracing::debug!(error = %e, "old failure records not deleted yet");
        }
    }
    let state = match read_one(inner, state_key()).await {
        Ok(v) => v.and_then(|v| match serde_json::from_slice::<PersistedPfa>(&v) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable failure-analysis state; its schedule starts over");
                None
            }
        }),
        Err(e) => {
            tracing::warn!(error = %e, "failure-analysis state not read; its schedule starts over");
            None
        }
    };
    let mut pfa = lock(&inner.pfa);
    pfa.on_manager_start(&all, state, down, now_ms);
    pfa.restore_failures(failures);
    if let Some(m) = stored {
        if pfa.node_model().is_none_or(|cur| m.version > cur.version) {
            tracing::info!(version = m.version, "serving the retrained node model from the meta shard");
            pfa.set_node_model(m);
        }
    }
    tracing::info!(minutes = all.len(), nodes = nodes.len(), "failure-analysis history restored");
}

/// Every observed failure kept: `(node, at_ms)`.
async fn read_failures<E: Engine>(inner: &Inner<E>) -> Result<Vec<(NodeId, u64)>, ServerError> {
    let epoch = meta_epoch(inner.node.status(META_SHARD_ID).await?)?;
    let pairs = scan_meta(inner, epoch, range(key(&[b"f/"]), key(&[b"f0"]))?, MAX_READ_BYTES).await?;
    let mut out = Vec::with_capacity(pairs.len());
    for (k, _) in pairs {
        let rest = k.strip_prefix(key(&[b"f/"]).as_slice()).unwrap_or_default();
        let text = String::from_utf8_lossy(rest);
        let parsed = text
            .split_once('/')
            .and_then(|(n, t)| Some((u64::from_str_radix(n, 16).ok()?, u64::from_str_radix(t, 16).ok()?)));
        match parsed {
            Some(f) => out.push(f),
            None => tracing::warn!(key = %String::from_utf8_lossy(&k), "unreadable failure record skipped"),
        }
    }
    Ok(out)
}

/// The value at `k`, if any.
async fn read_one<E: Engine>(inner: &Inner<E>, k: Vec<u8>) -> Result<Option<Vec<u8>>, ServerError> {
    let epoch = meta_epoch(inner.node.status(META_SHARD_ID).await?)?;
    let mut end = k.clone();
    end.push(0);
    let pairs = scan_meta(inner, epoch, range(k.clone(), end)?, MAX_READ_BYTES).await?;
    Ok(pairs.into_iter().find(|(key, _)| *key == k).map(|(_, v)| v))
}

async fn read_model<E: Engine>(inner: &Inner<E>) -> Result<Option<FailureModel>, ServerError> {
    match read_one(inner, model_key()).await? {
        None => Ok(None),
        Some(v) => {
            let text = std::str::from_utf8(&v).map_err(|e| ServerError::record("stored node model", e))?;
            FailureModel::from_json(text).map(Some).map_err(|e| ServerError::record("stored node model", e))
        }
    }
}

/// Writes the failure analysis's records in order, in batches of at most
/// [`MAX_PFA_BATCH_BYTES`] (a larger record alone). The caller holds `meta_writes`.
pub(crate) async fn persist_records<E: Engine>(inner: &Inner<E>, writes: Vec<MetaWrite>) -> Result<(), ServerError> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for w in writes {
        let size = w.key.len() + w.value.as_ref().map_or(0, Vec::len);
        if !batch.is_empty() && bytes + size > MAX_PFA_BATCH_BYTES {
            persist(inner, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        bytes += size;
        batch.push(w);
    }
    persist(inner, batch).await
}

/// The retraining task of manager tenure `generation`: read the episodes, retrain off the
/// async threads, and, if adopted and the tenure and served model are still the ones it
/// started from, store and serve the model.
pub(crate) async fn retrain<E: Engine>(inner: Arc<Inner<E>>, generation: u64, now_ms: u64) {
    let report = match retrain_once(&inner, generation, now_ms).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::info!(reason = %e, "node model not retrained");
            None
        }
    };
    lock(&inner.pfa).retrain_done(generation, report);
}

async fn retrain_once<E: Engine>(
    inner: &Arc<Inner<E>>,
    generation: u64,
    now_ms: u64,
) -> Result<retrain::RetrainReport, ServerError> {
    let (min_failures, current) = {
        let pfa = lock(&inner.pfa);
        let current = pfa.node_model().map(FailureModel::to_json).transpose()?;
        (pfa.config().min_failures_to_retrain, current)
    };
    let epoch = meta_epoch(inner.node.status(META_SHARD_ID).await?)?;
    let pairs = scan_meta(inner, epoch, range(key(&[b"e/"]), key(&[b"e0"]))?, MAX_READ_BYTES).await?;
    let (report, model) = tokio::task::spawn_blocking(move || {
        let mut episodes = Vec::new();
        for (k, v) in &pairs {
            let name = String::from_utf8_lossy(k).into_owned();
            match decode_episode(&name, v) {
                Ok(e) => episodes.push(e),
                Err(e) => tracing::warn!(episode = %name, error = %e, "unreadable episode skipped"),
            }
        }
        let base = Recording::from_csv(vec![("shipped recording".to_string(), BASE_RECORDING_CSV.as_bytes())])?;
        let current = current.as_deref().map(FailureModel::from_json).transpose()?;
        let horizon_secs = current.as_ref().map_or(RetrainConfig::default().horizon_secs, |m| m.horizon_secs);
        let cfg = RetrainConfig { min_failures, horizon_secs, ..RetrainConfig::default() };
        let current_version = current.as_ref().map(|m| m.version);
        retrain::retrain(&base, &episodes, current.as_ref(), &cfg, now_ms)
            .map(|(r, m)| (r, m.map(|m| (m, current_version))))
            .map_err(ServerError::from)
    })
    .await??;
    tracing::info!(
        episodes = report.episodes,
        failures = report.failures,
        candidate_pr_auc = report.candidate_pr_auc,
        current_pr_auc = ?report.current_pr_auc,
        adopted = report.adopted,
        version = report.version,
        "node model retrained"
    );
    if let Some((model, trained_against)) = model {
        let json = model.to_json()?;
        let _order = inner.meta_writes.lock().await;
        let still = {
            let pfa = lock(&inner.pfa);
            pfa.generation() == generation
                && lock(&inner.manager).is_some()
                && pfa.node_model().map(|m| m.version) == trained_against
        };
        if !still {
            return Err(ServerError::Meta(
                "the manager or its model changed while retraining; the candidate is dropped".into(),
            ));
        }
        persist(inner, vec![MetaWrite { key: model_key(), value: Some(json.into_bytes()) }]).await?;
        lock(&inner.pfa).set_node_model(model);
    }
    Ok(report)
}
