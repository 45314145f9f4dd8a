//! `hbit`: BitNet v2 — ternary weights, native 4-bit activations, H-BitLinear — from training
//! to a fast CPU engine. This binary is the one entry point; each job is a subcommand.

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hbit",
    version,
    about = "BitNet v2 in Rust: 1.58-bit weights, native 4-bit activations, H-BitLinear"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure speed: kernels against the machine's memory bandwidth and a dense f32 baseline.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { what } => bench::run(what),
    }
}
