//! `presage-bench`: the benchmark harness; its code is the `presage-bench` crate
//! (`tools/bench`).

fn main() -> anyhow::Result<()> {
    presage_bench::cli::main()
}
