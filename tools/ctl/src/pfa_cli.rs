//! `presage-ctl pfa train` and `pfa eval`: train the drive failure model on Backblaze SMART
//! files and evaluate it beside the Backblaze rule. The reading and writing of files is here;
//! everything else is `presage_pfa::disk`.

use std::path::{Path, PathBuf};

use presage_pfa::disk::{self, DiskEvaluation, DiskTrainConfig};
use presage_pfa::model::FailureModel;
use presage_pfa::scores::Metrics;
use presage_pfa::smart::SmartDataset;

use crate::{table, CtlError};

/// Largest CSV or model file read, bytes.
pub const MAX_INPUT_FILE_BYTES: u64 = 2 << 30;

fn open(path: &Path) -> Result<std::fs::File, CtlError> {
    let file_err = |e: std::io::Error| CtlError::File { path: path.display().to_string(), reason: e.to_string() };
    let f = std::fs::File::open(path).map_err(file_err)?;
    let len = f.metadata().map_err(file_err)?.len();
    if len > MAX_INPUT_FILE_BYTES {
        return Err(CtlError::File {
            path: path.display().to_string(),
            reason: format!("{len} bytes is over {MAX_INPUT_FILE_BYTES}"),
        });
    }
    Ok(f)
}

/// Opens every file, named by its path, for a parser.
fn sources(paths: &[PathBuf]) -> Result<Vec<(String, std::io::BufReader<std::fs::File>)>, CtlError> {
    paths.iter().map(|p| Ok((p.display().to_string(), std::io::BufReader::new(open(p)?)))).collect()
}

/// Parse Backblaze CSV files into one data set.
pub fn load_backblaze(paths: &[PathBuf]) -> Result<SmartDataset, CtlError> {
    Ok(SmartDataset::from_csv(sources(paths)?)?)
}

/// Read a model file.
pub fn load_model(path: &Path) -> Result<FailureModel, CtlError> {
    let text = std::io::read_to_string(open(path)?)
        .map_err(|e| CtlError::File { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(FailureModel::from_json(&text)?)
}

/// Writes `model` to `out`; with `json`, its description as one JSON line.
fn save(model: &FailureModel, out: &Path, json: bool) -> Result<Option<String>, CtlError> {
    std::fs::write(out, model.to_json()?)
        .map_err(|e| CtlError::File { path: out.display().to_string(), reason: e.to_string() })?;
    Ok(json.then(|| {
        let v = serde_json::json!({
            "model": out.display().to_string(),
            "kind": model.kind,
            "version": model.version,
            "horizon_secs": model.horizon_secs,
            "features": model.features.len(),
            "threshold": model.threshold,
            "trained_on": model.trained_on,
            "validation": model.validation,
        });
        format!("{v}\n")
    }))
}

/// `pfa train`: train, write the model to `out`, and describe it.
pub fn train(csv: &[PathBuf], cfg: &DiskTrainConfig, out: &Path, json: bool) -> Result<String, CtlError> {
    let ds = load_backblaze(csv)?;
    let sources = csv
        .iter()
        .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
        .collect();
    let model = disk::train(&ds, sources, cfg)?;
    if let Some(json) = save(&model, out, json)? {
        return Ok(json);
    }
    let s = &model.trained_on;
    let mut text = format!(
        "trained {} ({} trees, {} features, horizon {} days) on {} rows of {} drives ({} failed)\n\
         validated on {} drives ({} failed); threshold {:.4}; {} drives held out for `pfa eval`\n",
        out.display(),
        s.trees,
        model.features.len(),
        cfg.horizon_days,
        s.train_rows,
        s.train_units,
        s.train_failed_units,
        s.validation_units,
        s.validation_failed_units,
        model.threshold,
        ds.drives.len() - model.seen_units.len(),
    );
    if let Some(v) = &model.validation {
        text.push_str("validation:\n");
        text.push_str(&metrics_table(&[("model", v)]));
    }
    Ok(text)
}

/// `pfa eval`: for a drive model, the model and the Backblaze rule on the drives of `csv`
/// the model has not seen; for a node model, the recording's unseen part.
pub fn eval(model: &Path, csv: &Path, json: bool) -> Result<String, CtlError> {
    let m = load_model(model)?;
    if m.kind == presage_pfa::model::ModelKind::NodeTelemetry {
        return eval_node(&m, csv, json);
    }
    let ds = load_backblaze(&[csv.to_path_buf()])?;
    let e = disk::evaluate(&m, &ds)?;
    if json {
        return serde_json::to_string(&e).map(|s| s + "\n").map_err(|e| CtlError::Decode(e.to_string()));
    }
    Ok(eval_text(&e))
}

fn eval_text(e: &DiskEvaluation) -> String {
    let mut text = format!(
        "{} drives ({} failed) evaluated; {} drives the model trained or validated on skipped; threshold {:.4}\n",
        e.model.drives, e.model.failed_drives, e.skipped_seen_drives, e.threshold
    );
    if !e.missing_features.is_empty() {
        text.push_str(&format!(
            "{} of the model's features are not in this file (missing values): {}\n",
            e.missing_features.len(),
            e.missing_features.join(", ")
        ));
    }
    text.push_str(&metrics_table(&[("model", &e.model), ("backblaze rule", &e.baseline_rule)]));
    text
}

fn metrics_table(cols: &[(&str, &Metrics)]) -> String {
    let mut header = vec!["metric"];
    header.extend(cols.iter().map(|(n, _)| *n));
    let f = |v: f64| format!("{v:.3}");
    type Getter = Box<dyn Fn(&Metrics) -> String>;
    let rows: Vec<(&str, Getter)> = vec![
        ("precision", Box::new(move |m: &Metrics| f(m.precision))),
        ("recall", Box::new(move |m: &Metrics| f(m.recall))),
        ("f1", Box::new(move |m: &Metrics| f(m.f1))),
        ("fpr", Box::new(move |m: &Metrics| f(m.fpr))),
        ("pr_auc", Box::new(move |m: &Metrics| f(m.pr_auc))),
        ("roc_auc", Box::new(move |m: &Metrics| f(m.roc_auc))),
        ("recall_at_fpr_1pct", Box::new(move |m: &Metrics| f(m.recall_at_fpr_1pct))),
        (
            "mean_lead_time_days",
            Box::new(|m: &Metrics| m.mean_lead_time_days.map_or_else(|| "-".to_string(), |d| format!("{d:.2}"))),
        ),
        ("drives", Box::new(|m: &Metrics| m.drives.to_string())),
        ("failed_drives", Box::new(|m: &Metrics| m.failed_drives.to_string())),
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, get)| {
            let mut r = vec![name.to_string()];
            r.extend(cols.iter().map(|(_, m)| get(m)));
            r
        })
        .collect();
    table(&header, &body)
}

/// Parse `presage pfa-record` CSV files.
pub fn load_recording(paths: &[PathBuf]) -> Result<presage_pfa::node_model::Recording, CtlError> {
    Ok(presage_pfa::node_model::Recording::from_csv(sources(paths)?)?)
}

/// `pfa train --format telemetry`: the node model.
pub fn train_node(
    csv: &[PathBuf],
    cfg: &presage_pfa::node_model::NodeTrainConfig,
    out: &Path,
    json: bool,
) -> Result<String, CtlError> {
    let rec = load_recording(csv)?;
    let sources = csv
        .iter()
        .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
        .collect();
    let model = presage_pfa::node_model::train(&rec, sources, cfg)?;
    if let Some(json) = save(&model, out, json)? {
        return Ok(json);
    }
    let s = &model.trained_on;
    let mut text = format!(
        "trained {} ({} trees, {} features, horizon {} s) on {} samples ({} positive) of {} nodes; \
         validated on {} samples ({} positive); threshold {:.4}\n",
        out.display(),
        s.trees,
        model.features.len(),
        model.horizon_secs,
        s.train_rows,
        s.train_failed_units,
        s.train_units,
        s.validation_units,
        s.validation_failed_units,
        model.threshold,
    );
    if let Some(v) = &model.validation {
        text.push_str("validation (per sample):\n");
        text.push_str(&metrics_table(&[("model", v)]));
    }
    Ok(text)
}

fn eval_node(m: &FailureModel, csv: &Path, json: bool) -> Result<String, CtlError> {
    let rec = load_recording(&[csv.to_path_buf()])?;
    let e = presage_pfa::node_model::evaluate(m, &rec)?;
    if json {
        return serde_json::to_string(&e).map(|s| s + "\n").map_err(|e| CtlError::Decode(e.to_string()));
    }
    let mut text = format!(
        "{} samples evaluated ({} skipped: the model trained or validated on them); threshold {:.4}\n",
        e.evaluated_samples, e.skipped_seen_samples, m.threshold
    );
    text.push_str(&metrics_table(&[("per sample", &e.samples)]));
    let rows: Vec<Vec<String>> = e
        .failures
        .iter()
        .map(|f| {
            vec![
                f.node.to_string(),
                f.failure_at_ms.to_string(),
                if f.fault.is_empty() { "-".into() } else { f.fault.clone() },
                match (f.lead_secs, f.sudden) {
                    (Some(l), _) => format!("{l:.0} s"),
                    (None, true) => "sudden (no precursor)".into(),
                    (None, false) => "missed".into(),
                },
                f.injected_latency_ms_at_alarm.map_or_else(|| "-".into(), |l| format!("{l:.0} ms")),
                match (f.warning_lead_secs, &f.first_warning) {
                    (Some(l), Some(k)) => format!("{l:.0} s ({k})"),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &["NODE", "FAILED_AT_MS", "FAULT", "RISK>=0.5 LEAD", "INJECTED AT ALARM", "WARNING LEAD"],
        &rows,
    ));
    text.push_str(&format!(
        "\nmean lead time {}; on healthy nodes ({:.2} node-hours): {} false alarms (risk crossing 0.5), {} early warnings\n",
        e.mean_lead_time_secs.map_or_else(|| "-".into(), |l| format!("{l:.0} s")),
        e.healthy_node_hours,
        e.false_alarms,
        e.false_warnings
    ));
    if !e.false_warning_list.is_empty() {
        let rows: Vec<Vec<String>> = e
            .false_warning_list
            .iter()
            .map(|w| vec![w.node.to_string(), w.raised_at_ms.to_string(), w.kind.to_string(), crate::evidence_text(w)])
            .collect();
        text.push_str(&table(&["NODE", "RAISED_AT_MS", "KIND", "EVIDENCE"], &rows));
    }
    Ok(text)
}

/// `pfa prior --lanl FILE --out FILE`: failure-history priors from LANL failure records.
pub fn prior(lanl: &Path, out: &Path, json: bool) -> Result<String, CtlError> {
    let name = lanl.file_name().map_or_else(|| lanl.display().to_string(), |n| n.to_string_lossy().into_owned());
    let prior = presage_pfa::prior::FailurePrior::from_lanl_csv(&name, std::io::BufReader::new(open(lanl)?))?;
    let text = serde_json::to_string_pretty(&prior).map_err(|e| CtlError::Decode(e.to_string()))?;
    std::fs::write(out, format!("{text}\n"))
        .map_err(|e| CtlError::File { path: out.display().to_string(), reason: e.to_string() })?;
    if json {
        return Ok(format!("{text}\n"));
    }
    let rows: Vec<Vec<String>> = prior
        .states
        .iter()
        .map(|s| {
            vec![
                format!("{}+", s.min_failures),
                format!("{:.0}", s.node_days),
                s.failures.to_string(),
                format!("{:.5}", s.failures_per_node_day),
                format!("{:.2e}", prior.probability(s.min_failures, 120)),
            ]
        })
        .collect();
    Ok(format!(
        "{} failure events on {} nodes of {} systems; wrote {}\n{}",
        prior.events,
        prior.failed_nodes,
        prior.systems,
        out.display(),
        crate::table(&["FAILURES IN 30 D", "NODE-DAYS", "FAILURES", "PER NODE-DAY", "P(120 S)"], &rows)
    ))
}

/// `presage-ctl pfa report`: per day, warnings and mitigations by outcome; the warnings and
/// mitigations themselves, newest first; each kind's eagerness.
pub fn report_text(r: &presage_shardmgr::PfaReport) -> String {
    use presage_shardmgr::feedback::WarningOutcome;
    let days: Vec<Vec<String>> = r
        .days
        .iter()
        .map(|d| {
            vec![
                crate::time_text(d.day_ms)[..10].to_string(),
                d.warnings_preceding_failure.to_string(),
                d.false_alarms.to_string(),
                d.warnings_open.to_string(),
                d.mitigations_helped.to_string(),
                d.mitigations_not_helped.to_string(),
                d.mitigations_neutral.to_string(),
                d.mitigations_pending.to_string(),
            ]
        })
        .collect();
    let mut out = format!("warnings preceding a failure within {} s, by day\n", r.horizon_ms / 1_000);
    out += &crate::table(
        &["DAY", "PRECEDED FAILURE", "FALSE", "OPEN", "MITIGATIONS HELPED", "DID NOT", "NEUTRAL", "PENDING"],
        &days,
    );
    let warnings: Vec<Vec<String>> = r
        .warnings
        .iter()
        .map(|w| {
            let outcome = match w.outcome {
                WarningOutcome::PrecededFailure => "preceded failure",
                WarningOutcome::FalseAlarm => "false alarm",
                WarningOutcome::Open => "open",
            };
            vec![w.node.to_string(), w.kind.clone(), crate::time_text(w.raised_ms), outcome.to_string()]
        })
        .collect();
    out += "\nwarnings\n";
    out += &crate::table(&["NODE", "KIND", "RAISED", "OUTCOME"], &warnings);
    let mitigations: Vec<Vec<String>> = r
        .mitigations
        .iter()
        .map(|m| {
            let after = m
                .after
                .map_or("-".to_string(), |a| format!("{:.2} / {:.1} / {:.0}", a.p99_ms, a.errors_per_sec, a.qps));
            vec![
                m.id.to_string(),
                format!("{:?}", m.kind),
                m.evidence.clone(),
                m.node.map_or("-".into(), |n| n.to_string()),
                crate::time_text(m.started_ms),
                format!("{:.2} / {:.1} / {:.0}", m.before.p99_ms, m.before.errors_per_sec, m.before.qps),
                after,
                match (m.judged_ms, m.helped) {
                    (Some(_), Some(true)) => "helped".into(),
                    (Some(_), Some(false)) => "did not".into(),
                    (Some(_), None) => "neutral".into(),
                    (None, _) => "pending".into(),
                },
            ]
        })
        .collect();
    out += "\nmitigations (p99 ms / errors/s / requests/s)\n";
    out += &crate::table(&["ID", "KIND", "EVIDENCE", "NODE", "STARTED", "BEFORE", "AFTER", "RESULT"], &mitigations);
    let eager: Vec<Vec<String>> = r
        .eagerness
        .iter()
        .map(|e| vec![format!("{:?}", e.kind), e.evidence.clone(), format!("{:.3}", e.eagerness)])
        .collect();
    out += "\neagerness\n";
    out += &crate::table(&["KIND", "EVIDENCE", "EAGERNESS"], &eager);
    out
}
