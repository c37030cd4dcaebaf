//! The hub's load generator (temporary entry point: the HTTP modes are being added).
mod engine_bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// In-process engine benchmark.
    Engine(engine_bench::EngineArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Engine(args) => engine_bench::run(args),
    }
}
