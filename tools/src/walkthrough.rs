//! `presage walkthrough`: opens a RocksDB engine in a temporary folder and walks through what the
//! storage layer does - writes, scans, a snapshot, a range export, a corrupted chunk refused,
//! the import finished and verified by range checksum - printing each step.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use presage_engine::transfer::CHUNK_HEADER_BYTES;
use presage_engine::{
    escape, middle_key, range_checksum, Cf, Engine, ExportOptions, Exporter, FaultInjector, FaultyEngine,
    ImportOptions, Importer, KeyRange, MeteredEngine, Reader, RocksConfig, RocksEngine, ScanLimit, ScanOrder,
    TransferError, WriteBatch, WriteOptions,
};

use presage_bench::datagen::{key, ValueGen, ValueKind};

/// What the walkthrough does.
#[derive(Debug, Clone)]
pub struct WalkthroughOptions {
    /// Keys to write.
    pub keys: u64,
    /// Bytes per value.
    pub value_bytes: usize,
}

impl Default for WalkthroughOptions {
    fn default() -> Self {
        WalkthroughOptions { keys: 200_000, value_bytes: 200 }
    }
}

type NodeEngine = MeteredEngine<FaultyEngine<RocksEngine>>;

fn open(dir: &Path) -> Result<NodeEngine> {
    let rocks = RocksEngine::open(dir, &RocksConfig::default())
        .with_context(|| format!("opening RocksDB in {}", dir.display()))?;
    Ok(MeteredEngine::new(FaultyEngine::new(rocks, Arc::new(FaultInjector::new())))?)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the walkthrough, writing its narrative to `out`.
pub fn run(opts: &WalkthroughOptions, out: &mut dyn Write) -> Result<()> {
    if opts.keys < 1000 {
        bail!("the walkthrough needs at least 1000 keys, got {}", opts.keys);
    }
    let tmp =
        tempfile::Builder::new().prefix("presage-walkthrough").tempdir().context("creating a temporary folder")?;
    let src_dir = tmp.path().join("node-a");
    let dst_dir = tmp.path().join("node-b");
    let src = open(&src_dir)?;
    writeln!(out, "1. opened a RocksDB engine in {}", src_dir.display())?;

    let started = Instant::now();
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, 1);
    let mut batch = WriteBatch::new();
    for i in 0..opts.keys {
        batch.put(Cf::Data, key(i), values.value(i));
        if batch.len() == 1000 {
            src.write(&batch, WriteOptions::NO_SYNC)?;
            batch = WriteBatch::new();
        }
    }
    if !batch.is_empty() {
        src.write(&batch, WriteOptions::SYNC)?;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "2. wrote {} keys of {} bytes in batches of 1000: {:.2}s, {:.0} keys/s",
        opts.keys,
        opts.value_bytes,
        secs,
        opts.keys as f64 / secs
    )?;

    let lo = opts.keys / 4;
    let hi = opts.keys * 3 / 4;
    let range = KeyRange::new(key(lo), Some(key(hi)))?;
    let first = src.scan(Cf::Data, &range, ScanOrder::Forward, ScanLimit::new(3, 1 << 20))?;
    let last = src.scan(Cf::Data, &range, ScanOrder::Reverse, ScanLimit::new(3, 1 << 20))?;
    let show = |p: &presage_engine::ScanPage| p.pairs.iter().map(|(k, _)| escape(k)).collect::<Vec<_>>().join(", ");
    writeln!(out, "3. range {range}: first keys [{}], last keys [{}]", show(&first), show(&last))?;

    let snap = src.snapshot();
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, key(lo), b"overwritten after the snapshot".to_vec());
    src.write(&wb, WriteOptions::SYNC)?;
    let len = |v: Option<Vec<u8>>| v.map_or("nothing".to_string(), |v| format!("{} bytes", v.len()));
    let at_snap = len(snap.get(Cf::Data, &key(lo))?);
    let live = len(src.get(Cf::Data, &key(lo))?);
    writeln!(
        out,
        "4. snapshot taken, then {} overwritten: the snapshot reads {at_snap}, the live engine {live}",
        escape(&key(lo))
    )?;

    src.flush()?;
    let stats = src.approximate_stats(Cf::Data, &range)?;
    let mid = middle_key(&snap, Cf::Data, &range)?.map(|k| escape(&k)).unwrap_or_default();
    writeln!(
        out,
        "5. approximate size of the range: {:.1} MiB on disk, ~{} keys; middle key for a split: {mid}",
        mib(stats.size_bytes),
        stats.keys
    )?;

    let started = Instant::now();
    let exporter = Exporter::new(&snap, Cf::Data, range.clone(), ExportOptions::new(0xd3));
    let mut exporter = exporter;
    let mut frames = Vec::new();
    for frame in exporter.by_ref() {
        frames.push(frame?);
    }
    let source_sum = exporter.checksum();
    writeln!(
        out,
        "6. exported the range at the snapshot: {} chunks (1 MiB limit), {:.1} MiB raw -> {:.1} MiB compressed (ratio {:.2}) in {:.2}s; checksum {source_sum}",
        frames.len(),
        mib(exporter.raw_bytes),
        mib(exporter.wire_bytes),
        exporter.raw_bytes as f64 / exporter.wire_bytes as f64,
        started.elapsed().as_secs_f64()
    )?;

    let dst = open(&dst_dir)?;
    let mut importer = Importer::open(&dst, 1, Cf::Data, range.clone(), ImportOptions::default())?;
    let damaged_seq = frames.len() / 2;
    let mut damaged = frames[damaged_seq].to_vec();
    damaged[CHUNK_HEADER_BYTES + 100] ^= 0x40;
    let mut refused = None;
    for (seq, frame) in frames.iter().enumerate() {
        if seq == damaged_seq && refused.is_none() {
            match importer.push(&damaged) {
                Err(e @ TransferError::Corrupt { .. }) => refused = Some(e),
                Err(e) => bail!("the damaged chunk was refused for the wrong reason: {e}"),
                Ok(_) => bail!("a damaged chunk was accepted"),
            }
            let untouched = dst.get(Cf::Data, &key(lo + 1))?.is_none();
            writeln!(
                out,
                "7. chunk {damaged_seq} damaged in flight (one bit): refused with \"{}\"; target range still empty: {untouched}; resuming at chunk {}",
                refused.as_ref().map(ToString::to_string).unwrap_or_default(),
                importer.resume_point().next_seq
            )?;
        }
        importer.push(frame)?;
    }
    let started = Instant::now();
    let copy_sum = importer.finish()?;
    writeln!(out, "8. import finished (atomic switch of the staged range) in {:.2}s", started.elapsed().as_secs_f64())?;

    let verify = range_checksum(&dst, Cf::Data, &range)?;
    if verify != source_sum || copy_sum != source_sum {
        bail!("copy does not verify: source {source_sum}, copy {verify}");
    }
    writeln!(out, "9. range checksum of the copy matches the source: {verify}")?;

    let m = src.metrics_snapshot();
    let p99 = |l: &presage_engine::LatencySnapshot| {
        l.quantile_upper_bound(0.99).map_or("-".to_string(), |s| format!("{:.0}us", s * 1e6))
    };
    writeln!(
        out,
        "10. engine metrics on node-a: {} writes (p99 <= {}), {} synced writes (p99 <= {}), {} reads (p99 <= {}), {} errors, {} pending compaction bytes",
        m.write.count,
        p99(&m.write),
        m.sync.count,
        p99(&m.sync),
        m.read.count,
        p99(&m.read),
        m.read_errors + m.write_errors + m.sync_errors,
        m.storage.pending_compaction_bytes
    )?;
    drop(snap);
    writeln!(out, "done: removing {}", tmp.path().display())?;
    Ok(())
}
