//! The gradual shift of traffic off risky ranges (seed 004): a node leading ranges whose risk
//! comes from their leader ([`crate::range_risk`]: the node's own failure risk, or the
//! range's p99 or errors where it leads) is *demoted* - those leaderships move to the voter
//! with the lowest node risk, which is *promoted* - but never all at once.
//!
//! A shift starts when a node first leads such a range. Its weight grows linearly from 0 to 1
//! over `shift-period-ms`; at weight `w` at most `ceil(w * total)` of its demotable
//! leaderships have moved, `total` being the most it led at once during the shift. While the
//! shift runs the node is given no leadership by balancing (the demotion is not undone),
//! and a demoted range stays where it went for `leader-move-hold-ms`. The shift ends when the
//! node leads no demotable range; its record stays visible (`finished_ms`) for a period.
//!
//! Risks at or above `risk-warn` are left to proactive migration, which moves every
//! leadership off the node and evacuates it (`crate::manager::migrate`); a shift acts on
//! risks from `range-risk-shift` up, before that. Pure: time comes in as `now_ms`.

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// One node's shift, as the admin API shows it (`shifts` of `presage-ctl status --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    /// The node being demoted.
    pub node: NodeId,
    /// When it began (ms, manager clock).
    pub started_ms: u64,
    /// The most demotable leaderships the node held at once during the shift.
    pub total: usize,
    /// Leaderships moved off it so far.
    pub moved: usize,
    /// The weight of the traffic shifted away now, 0 to 1 (filled in for the view).
    pub weight: f64,
    /// When it ended (no demotable range left), if it did.
    pub finished_ms: Option<u64>,
}

impl Shift {
    /// A shift of `node` starting at `now_ms` over `total` demotable leaderships.
    pub fn start(node: NodeId, now_ms: u64, total: usize) -> Shift {
        Shift { node, started_ms: now_ms, total, moved: 0, weight: 0.0, finished_ms: None }
    }

    /// The share shifted at `now_ms`: 0 at the start, 1 after `period_ms`.
    pub fn weight_at(&self, now_ms: u64, period_ms: u64) -> f64 {
        if period_ms == 0 {
            return 1.0;
        }
        (now_ms.saturating_sub(self.started_ms) as f64 / period_ms as f64).min(1.0)
    }

    /// Leaderships that may have moved by `now_ms`.
    pub fn allowed(&self, now_ms: u64, period_ms: u64) -> usize {
        (self.weight_at(now_ms, period_ms) * self.total as f64).ceil() as usize
    }

    /// Moves that may start now.
    pub fn budget(&self, now_ms: u64, period_ms: u64) -> usize {
        self.allowed(now_ms, period_ms).saturating_sub(self.moved)
    }

    /// Notes that the node leads `demotable` ranges now (the total grows if it leads more
    /// than expected).
    pub fn observe(&mut self, demotable: usize) {
        self.total = self.total.max(self.moved + demotable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_moves_its_leaderships_over_the_period_never_at_once() {
        let mut s = Shift::start(3, 1_000, 10);
        let period = 100_000;
        assert_eq!(s.budget(1_000, period), 0, "nothing at the start");
        assert_eq!(s.budget(11_000, period), 1, "a tenth after a tenth of the period");
        s.moved = 1;
        assert_eq!(s.budget(11_000, period), 0);
        assert_eq!(s.allowed(51_000, period), 5);
        assert_eq!(s.allowed(500_000, period), 10, "all after the period");
        assert_eq!(s.weight_at(500_000, period), 1.0);
        s.observe(12);
        assert_eq!(s.total, 13, "one moved, twelve still led");
        assert_eq!(Shift::start(1, 0, 4).budget(0, 0), 4, "a zero period shifts at once");
    }
}
