//! Reads and writes of the meta shard for the shard manager's runtime and the failure
//! analysis's records: linearizable scans, page by page and bounded in bytes, and ordered
//! batched writes (the callers hold `meta_writes` to keep records in the order produced).

use std::time::Duration;

use presage_engine::{Engine, KeyRange};
use presage_replication::{Op, ReadRequest, ReadResponse};
use presage_shardmgr::{MetaWrite, META_SHARD_ID};

use super::error::ServerError;
use super::Inner;

/// Pairs per page when reading the meta shard.
const META_SCAN_PAGE_KEYS: usize = 1_024;
/// Bytes per page when reading the meta shard.
const META_SCAN_PAGE_BYTES: usize = 4 << 20;

/// Reads `range` of the meta shard (linearizable), page by page, up to `max_bytes` of keys
/// and values (more is an error).
pub(crate) async fn scan_meta<E: Engine>(
    inner: &Inner<E>,
    epoch: presage_replication::Epoch,
    mut range: KeyRange,
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ServerError> {
    let mut pairs = Vec::new();
    let mut bytes = 0usize;
    loop {
        let read =
            ReadRequest::Scan { range: range.clone(), max_keys: META_SCAN_PAGE_KEYS, max_bytes: META_SCAN_PAGE_BYTES };
        let answer = inner.node.read(META_SHARD_ID, epoch, read).await?;
        let ReadResponse::Pairs { pairs: page, more, resume_after } = answer else {
            return Err(ServerError::Meta("a scan answered a value".into()));
        };
        let last = resume_after.or_else(|| page.last().map(|(k, _)| k.clone()));
        bytes += page.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if bytes > max_bytes {
            return Err(ServerError::Meta(format!("the scan holds more than {max_bytes} bytes")));
        }
        pairs.extend(page);
        match (more, last) {
            (true, Some(k)) => {
                range = range.after(&k).ok_or_else(|| ServerError::Meta("a scan went past its end".into()))?
            }
            _ => return Ok(pairs),
        }
    }
}

/// Writes `writes` to the meta shard in order, in batches of `max-meta-batch-records`.
/// The caller holds `meta_writes`.
pub(crate) async fn persist<E: Engine>(inner: &Inner<E>, writes: Vec<MetaWrite>) -> Result<(), ServerError> {
    if writes.is_empty() {
        return Ok(());
    }
    let status = inner.node.status(META_SHARD_ID).await?;
    let epoch = status.ok_or(ServerError::NoMetaReplica)?.descriptor.epoch();
    for chunk in writes.chunks(inner.cfg.max_meta_batch_records) {
        let ops = chunk
            .iter()
            .map(|w| match &w.value {
                Some(v) => Op::put(w.key.clone(), v.clone()),
                None => Op::delete(w.key.clone()),
            })
            .collect();
        let timeout = Duration::from_millis(inner.cfg.request_timeout_ms);
        match tokio::time::timeout(timeout, inner.node.write(META_SHARD_ID, epoch, ops)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ServerError::MetaTimeout),
        }
    }
    Ok(())
}
