//! Typed early warnings and their lifecycle.
//!
//! A warning names a node, a kind and its evidence: the signals that are out of line, their
//! value, their own baseline and how far they stand from their peers. The [`WarningBoard`]
//! raises a warning when evidence of its kind appears, keeps its evidence current while it
//! lasts, and clears it after `clear_after_samples` samples without evidence; every raise
//! and clear is an event in a bounded, sequence-numbered stream that readers page through.
//!
//! `WarningKind` (`DiskDegradation`, `DiskErrors`, `NetworkDegradation`, `CpuOverload`,
//! `MemoryPressure`), `Warning` with `Evidence`, `WarningBoard` (raise on evidence, clear after 30
//! quiet samples, bounded sequence-numbered event stream).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::telemetry::Signal;
pub use crate::telemetry::WarningKind;

/// One signal out of line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The signal (its name ends with its unit).
    pub signal: Signal,
    /// Its recent level, in the signal's unit.
    pub value: f64,
    /// Its own long-run baseline, in the signal's unit.
    pub baseline: f64,
    /// How many of its own deviations it stands from the baseline.
    pub z: f64,
    /// Its level over the median of its peers' (None without peers).
    pub peer_ratio: Option<f64>,
    /// What found it: `cusum`, `level` or `errors`.
    pub detector: String,
}

/// A raised warning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// The node.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// The kind.
    pub kind: WarningKind,
    /// When it was raised, ms since the Unix epoch.
    pub raised_at_ms: u64,
    /// When its evidence was last seen.
    pub last_seen_ms: u64,
    /// The evidence, strongest first.
    pub evidence: Vec<Evidence>,
}

/// A change in the set of warnings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningEvent {
    /// Position in the stream, from 1.
    pub seq: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Raised or cleared.
    pub action: WarningAction,
    /// The warning (its evidence as of the event).
    pub warning: Warning,
}

/// What happened to a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningAction {
    /// It was raised.
    Raised,
    /// Its evidence went away.
    Cleared,
}

/// The answer to a warnings query: what is active, and what happened since the reader's
/// last sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningsAnswer {
    /// Warnings raised and not yet cleared.
    pub active: Vec<Warning>,
    /// Events after the asked sequence number, oldest first.
    pub events: Vec<WarningEvent>,
    /// The sequence number the next event will get (ask after `next_seq - 1` next time).
    pub next_seq: u64,
}

/// Active warnings and the event stream.
#[derive(Clone, Debug)]
pub struct WarningBoard {
    clear_after_samples: u32,
    max_events: usize,
    active: BTreeMap<(u64, WarningKind), (Warning, u32)>,
    events: VecDeque<WarningEvent>,
    next_seq: u64,
}

impl WarningBoard {
    /// A board that clears a warning after `clear_after_samples` quiet samples and keeps the
    /// last `max_events` events.
    pub fn new(clear_after_samples: u32, max_events: usize) -> WarningBoard {
        assert!(max_events > 0);
        WarningBoard { clear_after_samples, max_events, active: BTreeMap::new(), events: VecDeque::new(), next_seq: 1 }
    }

    /// Update `node` with the evidence of one sample at `at_ms`.
    pub fn observe(&mut self, node: u64, region: &str, at_ms: u64, evidence: Vec<Evidence>) {
        let mut by_kind: BTreeMap<WarningKind, Vec<Evidence>> = BTreeMap::new();
        let causes: Vec<WarningKind> =
            evidence.iter().filter(|e| !e.signal.is_consequence()).map(|e| e.signal.warning_kind()).collect();
        let network_only =
            causes.contains(&WarningKind::NetworkDegradation) && !causes.contains(&WarningKind::DiskDegradation);
        for e in evidence {
            let kind = match e.signal.warning_kind() {
                WarningKind::DiskDegradation if e.signal.is_consequence() && network_only => {
                    WarningKind::NetworkDegradation
                }
                kind => kind,
            };
            by_kind.entry(kind).or_default().push(e);
        }
        for list in by_kind.values_mut() {
            list.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
        }
        for kind in WarningKind::ALL {
            let key = (node, kind);
            match (by_kind.remove(&kind), self.active.get_mut(&key)) {
                (Some(ev), Some((w, quiet))) => {
                    w.evidence = ev;
                    w.last_seen_ms = at_ms;
                    *quiet = 0;
                }
                (Some(ev), None) => {
                    let w = Warning {
                        node,
                        region: region.to_string(),
                        kind,
                        raised_at_ms: at_ms,
                        last_seen_ms: at_ms,
                        evidence: ev,
                    };
                    self.push(at_ms, WarningAction::Raised, w.clone());
                    self.active.insert(key, (w, 0));
                }
                (None, Some((_, quiet))) => {
                    *quiet += 1;
                    if *quiet >= self.clear_after_samples {
                        if let Some((w, _)) = self.active.remove(&key) {
                            self.push(at_ms, WarningAction::Cleared, w);
                        }
                    }
                }
                (None, None) => {}
            }
        }
    }

    /// Drop a node's warnings without events (it left the cluster).
    pub fn forget(&mut self, node: u64) {
        self.active.retain(|(n, _), _| *n != node);
    }

    fn push(&mut self, at_ms: u64, action: WarningAction, warning: Warning) {
        if self.events.len() == self.max_events {
            self.events.pop_front();
        }
        self.events.push_back(WarningEvent { seq: self.next_seq, at_ms, action, warning });
        self.next_seq += 1;
    }

    /// Is a warning of `kind` about `node` active?
    pub fn is_active(&self, node: u64, kind: WarningKind) -> bool {
        self.active.contains_key(&(node, kind))
    }

    /// Active warnings, by node then kind.
    pub fn active(&self) -> Vec<Warning> {
        self.active.values().map(|(w, _)| w.clone()).collect()
    }

    /// The oldest of `node`'s active warnings: since when the node has been warned about.
    pub fn oldest_active(&self, node: u64) -> Option<&Warning> {
        self.active
            .range((node, WarningKind::ALL[0])..=(node, WarningKind::ALL[WarningKind::ALL.len() - 1]))
            .map(|(_, (w, _))| w)
            .min_by_key(|w| w.raised_at_ms)
    }

    /// Events after `after_seq` (0 = from the oldest kept), at most `limit`.
    pub fn events_after(&self, after_seq: u64, limit: usize) -> Vec<WarningEvent> {
        self.events.iter().filter(|e| e.seq > after_seq).take(limit).cloned().collect()
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(signal: Signal, z: f64) -> Evidence {
        Evidence { signal, value: 10.0, baseline: 1.0, z, peer_ratio: Some(10.0), detector: "cusum".into() }
    }

    #[test]
    fn raise_keep_and_clear_after_quiet_samples() {
        let mut b = WarningBoard::new(3, 100);
        b.observe(1, "r1", 1_000, vec![ev(Signal::DiskAwaitMs, 5.0), ev(Signal::EngineSyncMeanMs, 9.0)]);
        let active = b.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].kind, WarningKind::DiskDegradation);
        assert_eq!(active[0].evidence[0].signal, Signal::EngineSyncMeanMs, "strongest first");
        b.observe(1, "r1", 2_000, vec![ev(Signal::PeerRttMinMs, 7.0)]);
        assert_eq!(b.active().len(), 2, "a network warning beside the disk one");
        for t in 3..=5 {
            b.observe(1, "r1", t * 1_000, vec![]);
        }
        assert!(b.active().is_empty());
        let events = b.events_after(0, 10);
        let actions: Vec<(WarningKind, WarningAction)> = events.iter().map(|e| (e.warning.kind, e.action)).collect();
        assert_eq!(
            actions,
            [
                (WarningKind::DiskDegradation, WarningAction::Raised),
                (WarningKind::NetworkDegradation, WarningAction::Raised),
                (WarningKind::DiskDegradation, WarningAction::Cleared),
                (WarningKind::NetworkDegradation, WarningAction::Cleared),
            ]
        );
        assert_eq!(b.events_after(2, 10).len(), 2);
        assert_eq!(b.events_after(0, 1).len(), 1);
    }

    /// Proposal latency and apply lag are consequences: with slow links they make a network
    /// warning, with a slow disk (or with no cause in sight) a disk one.
    #[test]
    fn consequences_join_the_kind_their_causes_point_to() {
        let mut b = WarningBoard::new(3, 100);
        b.observe(1, "r1", 1_000, vec![ev(Signal::ProposalMeanMs, 9.0), ev(Signal::PeerRttMinMs, 7.0)]);
        let kinds: Vec<WarningKind> = b.active().iter().map(|w| w.kind).collect();
        assert_eq!(kinds, [WarningKind::NetworkDegradation], "slow links, no disk evidence");
        let mut b = WarningBoard::new(3, 100);
        let both = vec![ev(Signal::ApplyLagEntries, 9.0), ev(Signal::PeerRttMinMs, 7.0), ev(Signal::DiskAwaitMs, 5.0)];
        b.observe(1, "r1", 1_000, both);
        let disk = b.active().into_iter().find(|w| w.kind == WarningKind::DiskDegradation).expect("disk warning");
        assert_eq!(disk.evidence.len(), 2, "the lag joins the disk's evidence: {:?}", disk.evidence);
        let mut b = WarningBoard::new(3, 100);
        b.observe(1, "r1", 1_000, vec![ev(Signal::ProposalMeanMs, 9.0)]);
        assert_eq!(b.active()[0].kind, WarningKind::DiskDegradation, "no cause in sight: the disk");
        assert!(WarningKind::NetworkDegradation.slows_leaders() && !WarningKind::CpuOverload.slows_leaders());
    }

    #[test]
    fn the_event_stream_is_bounded() {
        let mut b = WarningBoard::new(1, 4);
        for t in 0..10 {
            b.observe(1, "r", t * 2, vec![ev(Signal::CpuBusyPct, 5.0)]);
            b.observe(1, "r", t * 2 + 1, vec![]);
        }
        let events = b.events_after(0, 100);
        assert_eq!(events.len(), 4);
        assert_eq!(events[3].seq, 20);
        assert_eq!(b.next_seq(), 21);
    }
}
