//! Known events (seeds 001 and 002): what operators tell the cluster ahead of time, so that it
//! acts before the event instead of reacting to it (`presage-ctl events`, the admin API).
//!
//! Two kinds, each a window `[start_ms, end_ms)` on the manager's clock (Unix ms) with a lead
//! time `lead_ms` before it:
//!
//! - **Maintenance** of a node or of a whole region: treated as a certain failure of every
//!   node in it. From `start - lead` the nodes lead nothing (their leaderships move to the
//!   other voters a few per round and none is given back); where a group would lose its
//!   majority with them gone (another member down, held, or in a window of its own), one of
//!   them at a time moves its replicas to a spare (a `Maintenance` migration, released when
//!   the window closes) until the group has a majority outside the windows again; a spare in
//!   a window is never chosen. While the window is open, and for `maintenance-grace-ms` after
//!   it, a node of it that is down is not a failure: nothing is copied to replace it and the failure analysis
//!   does not learn from it. After the window the balancer gives the nodes leaderships again.
//! - **Spike** of load on a key range: from `start - lead` the range is split at its bounds
//!   and then in halves (at the leader's middle key) until it spans `shards` shards, its
//!   shards are not merged until the spike ends, and their leaderships are spread over the
//!   group's voters.
//!
//! An event's [`EventPhase`] is a function of the time (and of a cancellation), so a manager
//! that takes over acts exactly as its predecessor would have: nothing but the declaration
//! and a cancellation is persisted (`\xffm/e/{id}`).

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// Most events kept (scheduled, running and finished): a declaration past it is refused
/// until old ones are pruned (finished events beyond [`MAX_FINISHED_EVENTS`] are).
pub const MAX_EVENTS: usize = 256;
/// Finished (closed or cancelled) events kept for `presage-ctl events list`.
pub const MAX_FINISHED_EVENTS: usize = 64;
/// Longest window an event may declare: 7 days, in ms.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Longest lead time: 1 day, in ms.
pub const MAX_LEAD_MS: u64 = 24 * 3_600_000;
/// Most shards a spike asks its range to span.
pub const MAX_SPIKE_SHARDS: u32 = 64;
/// Most bytes of an operator's note.
pub const MAX_NOTE_BYTES: usize = 512;
/// Most bytes of a spike's bound key.
pub const MAX_EVENT_KEY_BYTES: usize = 4_096;
/// Furthest ahead an event may start: a year, in ms.
pub const MAX_AHEAD_MS: u64 = 365 * 86_400_000;

/// What a maintenance window takes down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scope")]
pub enum MaintenanceScope {
    /// One node.
    Node {
        /// The node.
        node: NodeId,
    },
    /// Every node of a region.
    Region {
        /// The region's name.
        region: String,
    },
}

/// What is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum EventKind {
    /// Nodes taken down on purpose (module docs).
    Maintenance {
        /// Which nodes.
        #[serde(flatten)]
        scope: MaintenanceScope,
    },
    /// A known surge of load on `[start_key, end_key)` (module docs).
    Spike {
        /// The range's first key.
        #[serde(with = "serde_bytes")]
        start_key: Vec<u8>,
        /// The range's end (exclusive); `None`: the end of the keyspace.
        #[serde(default, with = "serde_bytes")]
        end_key: Option<Vec<u8>>,
        /// Shards the range should span before the spike.
        shards: u32,
    },
}

/// An operator's declaration, as the admin API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What is expected.
    pub what: EventKind,
    /// When it begins, Unix ms.
    pub start_ms: u64,
    /// When it ends, Unix ms (after `start_ms`).
    pub end_ms: u64,
    /// How long before `start_ms` the cluster prepares, ms (`None`: `event-lead-ms`).
    #[serde(default)]
    pub lead_ms: Option<u64>,
    /// Why, for people.
    #[serde(default)]
    pub note: String,
}

/// A declared event (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownEvent {
    /// Its id (from the cluster's id allocator).
    pub id: u64,
    /// What is expected.
    pub what: EventKind,
    /// When it begins, Unix ms.
    pub start_ms: u64,
    /// When it ends, Unix ms.
    pub end_ms: u64,
    /// How long before `start_ms` the cluster prepares, ms.
    pub lead_ms: u64,
    /// Why, for people.
    pub note: String,
    /// When it was declared.
    pub created_ms: u64,
    /// When an operator cancelled it.
    pub cancelled_ms: Option<u64>,
}

/// Where an event is, at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventPhase {
    /// Before its lead time: nothing done yet.
    Scheduled,
    /// Within the lead time: the cluster is getting ready.
    Preparing,
    /// The window is open.
    Open,
    /// The window closed.
    Closed,
    /// Cancelled by an operator before it closed.
    Cancelled,
}

impl EventPhase {
    /// Preparing or open: the event shapes the cluster now.
    pub fn is_active(self) -> bool {
        matches!(self, EventPhase::Preparing | EventPhase::Open)
    }

    /// Closed or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(self, EventPhase::Closed | EventPhase::Cancelled)
    }
}

/// An event with its phase, as `presage-ctl events list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// The event.
    #[serde(flatten)]
    pub event: KnownEvent,
    /// Its phase when the view was made.
    pub phase: EventPhase,
    /// The nodes a maintenance window covers now (its node, or its region's nodes).
    #[serde(default)]
    pub nodes: Vec<NodeId>,
}

impl KnownEvent {
    /// When the cluster starts preparing, Unix ms.
    pub fn prepare_ms(&self) -> u64 {
        self.start_ms.saturating_sub(self.lead_ms)
    }

    /// Its phase at `now_ms`.
    pub fn phase(&self, now_ms: u64) -> EventPhase {
        if self.cancelled_ms.is_some() {
            EventPhase::Cancelled
        } else if now_ms >= self.end_ms {
            EventPhase::Closed
        } else if now_ms >= self.start_ms {
            EventPhase::Open
        } else if now_ms >= self.prepare_ms() {
            EventPhase::Preparing
        } else {
            EventPhase::Scheduled
        }
    }

    /// Does this event excuse a down node at `now_ms` (its maintenance window is open, or
    /// closed less than `grace_ms` ago)? A node that fails during the lead time has failed.
    pub fn excuses_down(&self, now_ms: u64, grace_ms: u64) -> bool {
        matches!(self.what, EventKind::Maintenance { .. })
            && self.cancelled_ms.is_none()
            && now_ms >= self.start_ms
            && now_ms < self.end_ms.saturating_add(grace_ms)
    }

    /// The spike's range, if it is one.
    pub fn spike_range(&self) -> Option<SpikeRange<'_>> {
        match &self.what {
            EventKind::Spike { start_key, end_key, shards } => {
                Some(SpikeRange { start: start_key, end: end_key.as_deref(), shards: *shards })
            }
            EventKind::Maintenance { .. } => None,
        }
    }
}

/// A spike's key range and the shards it should span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpikeRange<'a> {
    /// First key.
    pub start: &'a [u8],
    /// End (exclusive); `None`: the end of the keyspace.
    pub end: Option<&'a [u8]>,
    /// Shards wanted.
    pub shards: u32,
}

impl NewEvent {
    /// Checks the declaration on its own (the manager checks it against the cluster):
    /// a window after `now_ms`'s past, bounded in length, lead and note.
    pub fn validate(&self, now_ms: u64, default_lead_ms: u64) -> Result<u64, String> {
        if self.end_ms <= self.start_ms {
            return Err("the event must end after it starts".into());
        }
        if self.end_ms <= now_ms {
            return Err("the event ends in the past".into());
        }
        if self.end_ms - self.start_ms > MAX_WINDOW_MS {
            return Err(format!("an event lasts at most {} hours", MAX_WINDOW_MS / 3_600_000));
        }
        let lead_ms = self.lead_ms.unwrap_or(default_lead_ms);
        if lead_ms > MAX_LEAD_MS {
            return Err(format!("the lead time is at most {} hours", MAX_LEAD_MS / 3_600_000));
        }
        if self.note.len() > MAX_NOTE_BYTES {
            return Err(format!("the note is at most {MAX_NOTE_BYTES} bytes"));
        }
        if self.start_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(format!("an event starts at most {} days ahead", MAX_AHEAD_MS / 86_400_000));
        }
        if let EventKind::Spike { start_key, end_key, shards } = &self.what {
            if start_key.len() > MAX_EVENT_KEY_BYTES || end_key.as_ref().is_some_and(|e| e.len() > MAX_EVENT_KEY_BYTES)
            {
                return Err(format!("a spike's keys are at most {MAX_EVENT_KEY_BYTES} bytes"));
            }
            if end_key.as_ref().is_some_and(|e| e <= start_key) {
                return Err("the spike's end key must come after its start key".into());
            }
            if crate::model::is_system_key(start_key) {
                return Err("the spike's range must not start in the system key space".into());
            }
            if !(1..=MAX_SPIKE_SHARDS).contains(shards) {
                return Err(format!("a spike asks for 1 to {MAX_SPIKE_SHARDS} shards"));
            }
        }
        if let EventKind::Maintenance { scope: MaintenanceScope::Region { region } } = &self.what {
            if region.is_empty() {
                return Err("the region's name is empty".into());
            }
        }
        Ok(lead_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(start_ms: u64, end_ms: u64, lead_ms: u64) -> KnownEvent {
        KnownEvent {
            id: 7,
            what: EventKind::Maintenance { scope: MaintenanceScope::Node { node: 3 } },
            start_ms,
            end_ms,
            lead_ms,
            note: String::new(),
            created_ms: 0,
            cancelled_ms: None,
        }
    }

    #[test]
    fn the_phase_follows_the_clock_and_a_cancellation_ends_it() {
        let mut e = event(10_000, 20_000, 4_000);
        let phases: Vec<EventPhase> = [0, 5_999, 6_000, 9_999, 10_000, 19_999, 20_000].map(|t| e.phase(t)).to_vec();
        use EventPhase::*;
        assert_eq!(phases, [Scheduled, Scheduled, Preparing, Preparing, Open, Open, Closed]);
        assert!(e.excuses_down(10_000, 1_000) && e.excuses_down(20_999, 1_000));
        assert!(!e.excuses_down(9_999, 1_000) && !e.excuses_down(21_000, 1_000), "not in the lead time");
        e.cancelled_ms = Some(12_000);
        assert_eq!(e.phase(15_000), Cancelled);
        assert!(!e.excuses_down(15_000, 1_000), "a cancelled window excuses nothing");
    }

    #[test]
    fn declarations_are_checked() {
        let ok = NewEvent {
            what: EventKind::Spike { start_key: b"a".to_vec(), end_key: Some(b"b".to_vec()), shards: 4 },
            start_ms: 10_000,
            end_ms: 20_000,
            lead_ms: None,
            note: "sale".into(),
        };
        assert_eq!(ok.validate(0, 500), Ok(500));
        let bad = [
            NewEvent { end_ms: 10_000, ..ok.clone() },
            NewEvent { start_ms: 1, end_ms: 2, ..ok.clone() },
            NewEvent { end_ms: 10_000 + MAX_WINDOW_MS + 1, ..ok.clone() },
            NewEvent { lead_ms: Some(MAX_LEAD_MS + 1), ..ok.clone() },
            NewEvent { note: "x".repeat(MAX_NOTE_BYTES + 1), ..ok.clone() },
            NewEvent {
                what: EventKind::Spike { start_key: b"b".to_vec(), end_key: Some(b"a".to_vec()), shards: 4 },
                ..ok.clone()
            },
            NewEvent { what: EventKind::Spike { start_key: b"a".to_vec(), end_key: None, shards: 0 }, ..ok.clone() },
            NewEvent { what: EventKind::Spike { start_key: b"\xff".to_vec(), end_key: None, shards: 2 }, ..ok.clone() },
            NewEvent {
                what: EventKind::Maintenance { scope: MaintenanceScope::Region { region: String::new() } },
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate(5_000, 500).is_err(), "{b:?}");
        }
    }

    #[test]
    fn a_view_round_trips_as_json() {
        let view = EventView { event: event(1, 2, 0), phase: EventPhase::Open, nodes: vec![3] };
        let json = serde_json::to_string(&view).expect("encode");
        assert!(json.contains("\"kind\":\"maintenance\"") && json.contains("\"scope\":\"node\""), "{json}");
        let back: EventView = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, view);
    }
}
