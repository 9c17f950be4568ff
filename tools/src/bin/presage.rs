//! `presage`: the Presage node program. For now it runs the storage walkthrough
//! (`presage demo`); the node server and the local playground arrive with later issues.

use anyhow::Result;
use clap::{Parser, Subcommand};
use presage_tools::demo::{self, DemoOptions};

#[derive(Parser)]
#[command(name = "presage", version, about = "Presage: a replicated key-value database that sees failures coming")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk through the storage engine in a temporary folder: write, scan, snapshot, export,
    /// a corrupted chunk refused, import, verify.
    Demo {
        /// Keys to write (at least 1000).
        #[arg(long, default_value_t = DemoOptions::default().keys)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = DemoOptions::default().value_bytes)]
        value_bytes: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { keys, value_bytes } => {
            let mut out = std::io::stdout().lock();
            demo::run(&DemoOptions { keys, value_bytes }, &mut out)
        }
    }
}
