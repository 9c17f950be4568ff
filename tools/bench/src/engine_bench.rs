//! `presage-bench engine`: storage-engine throughput, each figure next to its baseline from
//! the same run.
//!
//! | figure | baseline it is compared with |
//! |---|---|
//! | point writes, sync on | point writes, sync off |
//! | point reads (random keys) | - (reported as ops/s) |
//! | export MB/s (compressible, incompressible) | a plain range scan of the same data |
//! | import MB/s (stage + verify + atomic switch) | writing the same pairs with plain batches |
//!
//! Every dataset lives in a fresh RocksDB engine in a temporary folder.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use presage_engine::{
    for_each_pair, range_checksum, Cf, Engine, ExportOptions, Exporter, ImportOptions, Importer, KeyRange, Reader,
    RocksConfig, RocksEngine, WriteBatch, WriteOptions,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::datagen::{key, ValueGen, ValueKind};

/// Sizes of the engine benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineBenchOptions {
    /// Keys loaded and written without sync.
    pub keys: u64,
    /// Synced point writes (each waits for an fsync, so fewer).
    pub sync_writes: u64,
    /// Random point reads.
    pub reads: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for EngineBenchOptions {
    fn default() -> Self {
        EngineBenchOptions { keys: 200_000, sync_writes: 2_000, reads: 200_000, value_bytes: 256, seed: 1 }
    }
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Operations per second, for point operations.
    pub ops_per_sec: Option<f64>,
    /// Megabytes (10^6 bytes of keys+values) per second, for range operations.
    pub mb_per_sec: Option<f64>,
    /// The baseline figure's name.
    pub baseline: Option<String>,
    /// This figure divided by the baseline's.
    pub ratio_to_baseline: Option<f64>,
    /// Raw bytes / compressed bytes, for exports.
    pub compression_ratio: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineBenchReport {
    /// The options of the run.
    pub options: EngineBenchOptions,
    /// The figures, baselines first.
    pub figures: Vec<Figure>,
}

fn rate(n: f64, secs: f64) -> f64 {
    n / secs.max(1e-9)
}

fn open(dir: &Path) -> Result<RocksEngine> {
    RocksEngine::open(dir, &RocksConfig::default()).with_context(|| format!("opening RocksDB in {}", dir.display()))
}

fn point(name: &str, ops: f64, baseline: Option<(&str, f64)>) -> Figure {
    Figure {
        name: name.into(),
        ops_per_sec: Some(ops),
        mb_per_sec: None,
        baseline: baseline.map(|b| b.0.to_string()),
        ratio_to_baseline: baseline.map(|b| ops / b.1),
        compression_ratio: None,
    }
}

fn range_fig(name: &str, mbps: f64, baseline: Option<(&str, f64)>, compression: Option<f64>) -> Figure {
    Figure {
        name: name.into(),
        ops_per_sec: None,
        mb_per_sec: Some(mbps),
        baseline: baseline.map(|b| b.0.to_string()),
        ratio_to_baseline: baseline.map(|b| mbps / b.1),
        compression_ratio: compression,
    }
}

/// Runs every measurement in temporary folders under `work_dir`.
pub fn run(opts: &EngineBenchOptions, work_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<EngineBenchReport> {
    let mut figures = Vec::new();

    // Point writes, one pair per batch.
    progress("point writes, sync off");
    let dir = tempfile::tempdir_in(work_dir)?;
    let e = open(dir.path())?;
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed);
    let t = Instant::now();
    for i in 0..opts.keys {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, key(i), values.value(i));
        e.write(&wb, WriteOptions::NO_SYNC)?;
    }
    let nosync = rate(opts.keys as f64, t.elapsed().as_secs_f64());
    figures.push(point("put, sync off", nosync, None));

    progress("point writes, sync on");
    let t = Instant::now();
    for i in 0..opts.sync_writes {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, key(opts.keys + i), values.value(i));
        e.write(&wb, WriteOptions::SYNC)?;
    }
    let sync = rate(opts.sync_writes as f64, t.elapsed().as_secs_f64());
    figures.push(point("put, sync on", sync, Some(("put, sync off", nosync))));

    progress("point reads");
    e.flush()?;
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let t = Instant::now();
    let mut found = 0u64;
    for _ in 0..opts.reads {
        let i = rng.random_range(0..opts.keys);
        found += u64::from(e.get(Cf::Data, &key(i))?.is_some());
    }
    let reads = rate(opts.reads as f64, t.elapsed().as_secs_f64());
    anyhow::ensure!(found == opts.reads, "{} of {} reads missed", opts.reads - found, opts.reads);
    figures.push(point("get, random keys", reads, None));
    drop(e);
    drop(dir);

    for kind in [ValueKind::Compressible, ValueKind::Incompressible] {
        let label = match kind {
            ValueKind::Compressible => "compressible",
            ValueKind::Incompressible => "incompressible",
        };
        progress(&format!("export/import, {label} values"));
        figures.extend(transfer_figures(opts, work_dir, kind, label)?);
    }
    Ok(EngineBenchReport { options: opts.clone(), figures })
}

fn transfer_figures(opts: &EngineBenchOptions, work_dir: &Path, kind: ValueKind, label: &str) -> Result<Vec<Figure>> {
    let src_dir = tempfile::tempdir_in(work_dir)?;
    let src = open(src_dir.path())?;
    let mut values = ValueGen::new(kind, opts.value_bytes, opts.seed);
    let mut wb = WriteBatch::new();
    for i in 0..opts.keys {
        wb.put(Cf::Data, key(i), values.value(i));
        if wb.len() == 1000 {
            src.write(&wb, WriteOptions::NO_SYNC)?;
            wb = WriteBatch::new();
        }
    }
    src.write(&wb, WriteOptions::SYNC)?;
    src.flush()?;
    let range = KeyRange::all();
    let snap = src.snapshot();

    // Baseline: read every pair of the range.
    let t = Instant::now();
    let mut scanned = 0u64;
    for_each_pair(&snap, Cf::Data, &range, |k, v| {
        scanned += (k.len() + v.len()) as u64;
        Ok(())
    })?;
    let scan_mbps = rate(scanned as f64 / 1e6, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut exporter = Exporter::new(&snap, Cf::Data, range.clone(), ExportOptions::new(1));
    let mut frames = Vec::new();
    for f in exporter.by_ref() {
        frames.push(f?);
    }
    let export_mbps = rate(scanned as f64 / 1e6, t.elapsed().as_secs_f64());
    let compression = exporter.raw_bytes as f64 / exporter.wire_bytes as f64;

    // Baseline: write the same pairs with plain unsynced batches.
    let plain_dir = tempfile::tempdir_in(work_dir)?;
    let plain = open(plain_dir.path())?;
    let t = Instant::now();
    let mut wb = WriteBatch::new();
    for_each_pair(&snap, Cf::Data, &range, |k, v| {
        wb.put(Cf::Data, k.to_vec(), v.to_vec());
        if wb.size_bytes() >= 1 << 20 {
            plain.write(&wb, WriteOptions::NO_SYNC)?;
            wb = WriteBatch::new();
        }
        Ok(())
    })?;
    plain.write(&wb, WriteOptions::SYNC)?;
    let write_mbps = rate(scanned as f64 / 1e6, t.elapsed().as_secs_f64());

    let dst_dir = tempfile::tempdir_in(work_dir)?;
    let dst = open(dst_dir.path())?;
    let t = Instant::now();
    let mut imp = Importer::open(&dst, 1, Cf::Data, range.clone(), ImportOptions::default())?;
    for f in &frames {
        imp.push(f)?;
    }
    let sum = imp.finish()?;
    let import_mbps = rate(scanned as f64 / 1e6, t.elapsed().as_secs_f64());
    anyhow::ensure!(sum == range_checksum(&snap, Cf::Data, &range)?, "imported copy does not verify");

    let scan_name = format!("range scan, {label}");
    let write_name = format!("batched writes, {label}");
    Ok(vec![
        range_fig(&scan_name, scan_mbps, None, None),
        range_fig(&format!("export, {label}"), export_mbps, Some((&scan_name, scan_mbps)), Some(compression)),
        range_fig(&write_name, write_mbps, None, None),
        range_fig(&format!("import, {label}"), import_mbps, Some((&write_name, write_mbps)), None),
    ])
}

/// The report as an aligned text table.
pub fn render(report: &EngineBenchReport) -> String {
    let mut s = format!(
        "{:<32} {:>12} {:>9} {:>32} {:>7} {:>12}\n",
        "figure", "ops/s", "MB/s", "baseline", "ratio", "compression"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for f in &report.figures {
        s.push_str(&format!(
            "{:<32} {:>12} {:>9} {:>32} {:>7} {:>12}\n",
            f.name,
            opt(f.ops_per_sec, 0),
            opt(f.mb_per_sec, 1),
            f.baseline.as_deref().unwrap_or("-"),
            opt(f.ratio_to_baseline, 3),
            opt(f.compression_ratio, 2)
        ));
    }
    s
}
