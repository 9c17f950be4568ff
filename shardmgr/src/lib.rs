//! Shard metadata, routing and the shard manager's policies (design.md §1-§4, §6).
//!
//! Policies here are pure: they take cluster state and return decisions, with no I/O and no
//! clock reads of their own. Built by the sharding and migration issues; empty until then, so
//! that the workspace has the layout of design.md §2 from the start.
