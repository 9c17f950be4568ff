//! Predictive failure analysis (design.md §5): telemetry features, detectors, the failure
//! model and typed early warnings.
//!
//! Pure, like the shard manager's policies: no I/O, no clock reads of its own. Built by the
//! failure-analysis issue; empty until then, so that the workspace has the layout of
//! design.md §2 from the start.
