//! `presage-ctl`: the operator CLI; its code is the `presage-ctl` crate (`tools/ctl`).

fn main() -> std::process::ExitCode {
    presage_ctl::cli::main()
}
