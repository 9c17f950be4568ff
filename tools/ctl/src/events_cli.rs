//! `presage-ctl events`: declare, list and cancel known events (maintenance windows of a node
//! or region, load spikes on a key range; `presage_shardmgr::events`). Declaring and
//! cancelling take the admin credential; listing, any caller that may read the cluster.
//!
//! Times are `now`, `+DURATION` from now (`+90s`, `+15m`, `+2h`), an RFC 3339 UTC time
//! (`2026-12-24T02:00:00Z`), or Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use presage_shardmgr::{AdminCommand, EventKind, EventView, MaintenanceScope, NewEvent};

use crate::CtlError;

/// `presage-ctl events ...`.
#[derive(Subcommand)]
pub enum EventsCommand {
    /// Declare an event.
    Add {
        /// What kind of event.
        #[command(subcommand)]
        what: AddCommand,
    },
    /// Every known event: its window, lead time, phase and nodes.
    List,
    /// Cancel an event that has not finished: its nodes lead again, spares are released.
    Cancel {
        /// The event.
        id: u64,
    },
}

/// The kinds of event.
#[derive(Subcommand)]
pub enum AddCommand {
    /// A maintenance window: the node (or every node of the region) is drained of its
    /// leaderships before the window, and a spare takes its replicas where its group would
    /// otherwise lose its quorum; while down in the window it is not treated as failed.
    Maintenance {
        /// The node.
        #[arg(long, conflicts_with = "region", required_unless_present = "region")]
        node: Option<u64>,
        /// Every node of this region.
        #[arg(long)]
        region: Option<String>,
        /// When.
        #[command(flatten)]
        window: WindowArgs,
    },
    /// A known load spike on [START_KEY, END_KEY): the range is split (at its bounds, then in
    /// halves) and its leaderships spread before the spike, and not merged during it.
    Spike {
        /// First key (text, `\\xNN` escapes, or `0x` and hex digits).
        #[arg(long)]
        start_key: String,
        /// End key, exclusive (the end of the keyspace if absent).
        #[arg(long)]
        end_key: Option<String>,
        /// Shards the range should span.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        /// When.
        #[command(flatten)]
        window: WindowArgs,
    },
}

/// When an event happens.
#[derive(Args)]
pub struct WindowArgs {
    /// When it starts (`now`, `+15m`, RFC 3339, or Unix ms).
    #[arg(long)]
    start: String,
    /// When it ends (same forms); or give --duration.
    #[arg(long, conflicts_with = "duration", required_unless_present = "duration")]
    end: Option<String>,
    /// How long it lasts (`90s`, `2h`).
    #[arg(long)]
    duration: Option<String>,
    /// How long before the start the cluster prepares (default: the manager's
    /// `event-lead-ms`, 15 minutes).
    #[arg(long)]
    lead: Option<String>,
    /// Why, for people.
    #[arg(long, default_value = "")]
    note: String,
}

/// Now, Unix ms.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(text: &str) -> Result<u64, CtlError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| CtlError::Decode(format!("`{text}` is not a duration like 90s or 15m: {e}")))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a time (module doc) relative to `now_ms`.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, CtlError> {
    let t = text.trim();
    if t == "now" {
        return Ok(now_ms);
    }
    if let Some(rest) = t.strip_prefix('+') {
        return Ok(now_ms.saturating_add(duration_ms(rest)?));
    }
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
        CtlError::Decode(format!("`{text}` is not a time: use now, +15m, 2026-12-24T02:00:00Z or Unix ms ({e})"))
    })?;
    let since = at.duration_since(UNIX_EPOCH).map_err(|_| CtlError::Decode(format!("`{text}` is before 1970")))?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

impl WindowArgs {
    fn declare(self, what: EventKind, now_ms: u64) -> Result<NewEvent, CtlError> {
        let start_ms = parse_time(&self.start, now_ms)?;
        let end_ms = match (&self.end, &self.duration) {
            (Some(end), _) => parse_time(end, now_ms)?,
            (None, Some(d)) => start_ms.saturating_add(duration_ms(d)?),
            (None, None) => return Err(CtlError::Decode("give --end or --duration".into())),
        };
        let lead_ms = self.lead.as_deref().map(duration_ms).transpose()?;
        Ok(NewEvent { what, start_ms, end_ms, lead_ms, note: self.note })
    }
}

/// The admin command a `presage-ctl events add|cancel` asks for; `None` for `list`.
pub fn command(what: EventsCommand) -> Result<Option<AdminCommand>, CtlError> {
    let now = now_ms();
    let event = match what {
        EventsCommand::List => return Ok(None),
        EventsCommand::Cancel { id } => return Ok(Some(AdminCommand::CancelEvent { id })),
        EventsCommand::Add { what: AddCommand::Maintenance { node, region, window } } => {
            let scope = match (node, region) {
                (Some(node), _) => MaintenanceScope::Node { node },
                (None, Some(region)) => MaintenanceScope::Region { region },
                (None, None) => return Err(CtlError::Decode("give --node or --region".into())),
            };
            window.declare(EventKind::Maintenance { scope }, now)?
        }
        EventsCommand::Add { what: AddCommand::Spike { start_key, end_key, shards, window } } => {
            let start_key = crate::parse_key(&start_key)?;
            let end_key = end_key.as_deref().map(crate::parse_key).transpose()?;
            window.declare(EventKind::Spike { start_key, end_key, shards }, now)?
        }
    };
    Ok(Some(AdminCommand::AddEvent { event }))
}

/// `presage-ctl events list` as a table.
pub fn table(events: &[EventView]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|v| {
            let e = &v.event;
            let what = match &e.what {
                EventKind::Maintenance { scope: MaintenanceScope::Node { node } } => format!("maintenance node {node}"),
                EventKind::Maintenance { scope: MaintenanceScope::Region { region } } => {
                    format!("maintenance region {region}")
                }
                EventKind::Spike { start_key, end_key, shards } => format!(
                    "spike {}..{} ({shards} shards)",
                    crate::show_key(Some(start_key), true),
                    crate::show_key(end_key.as_deref(), false)
                ),
            };
            let nodes = v.nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            vec![
                e.id.to_string(),
                what,
                crate::time_text(e.start_ms),
                crate::time_text(e.end_ms),
                format!("{}s", e.lead_ms / 1000),
                format!("{:?}", v.phase).to_lowercase(),
                if nodes.is_empty() { "-".into() } else { nodes },
                e.note.clone(),
            ]
        })
        .collect();
    crate::table(&["ID", "WHAT", "START", "END", "LEAD", "PHASE", "NODES", "NOTE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form_and_bad_ones_say_why() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("now", now).ok(), Some(now));
        assert_eq!(parse_time("+15m", now).ok(), Some(now + 900_000));
        assert_eq!(parse_time("1234", now).ok(), Some(1234));
        assert_eq!(parse_time("2026-12-24T02:00:00Z", now).ok(), Some(1_798_077_600_000));
        let bad = parse_time("tomorrow", now).expect_err("not a time");
        assert!(bad.to_string().contains("not a time"), "{bad}");
        assert!(parse_time("+soon", now).is_err());
    }
}
