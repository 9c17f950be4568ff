//! Presage's programs. The binaries in `src/bin` are thin: `presage-ctl` and `presage-bench`
//! call their crates (`tools/ctl`, `tools/bench`); `presage` parses its arguments and calls
//! the node server (`tools/server`), the playground (`tools/playground`), the security tools
//! (`tools/security`) and these modules:
//!
//! - [`demo`]: `presage demo`, the cluster demo `make demo` runs.
//! - [`walkthrough`]: `presage walkthrough`, the storage engine step by step.

pub mod demo;
pub mod walkthrough;
