//! Presage's programs. The binaries in `src/bin` are thin: argument parsing lives there, the
//! work lives in these modules so that tests can drive it.
//!
//! - [`demo`]: `presage demo`, the walkthrough `make demo` runs.
//! - [`engine_bench`]: `presage-bench engine`, storage-engine figures with side-by-side baselines.
//! - [`datagen`]: deterministic keys and values shared by both.

pub mod datagen;
pub mod demo;
pub mod engine_bench;
