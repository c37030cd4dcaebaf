//! `loadgen`: the hub's load generator.
//!
//! * `loadgen [http] ...` (the default): DFSP simulators and HTTP load against a hub, or an
//!   embedded one (`--embedded`).
//! * `loadgen engine ...`: the in-process engine benchmark.
mod engine_bench;

use clap::{Parser, Subcommand};
use loadgen::config::{cores, HttpArgs};

/// mimalloc: glibc malloc's arena locks were a top item in profiles of simulators and
/// clients exchanging tens of thousands of HTTP messages a second on 2 cores; with
/// mimalloc the same closed-loop run went from about 8k to 14-18k transfers/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for the position hub: DFSP simulators, realistic traffic, latency reports",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP load against a hub as its DFSPs (the default when no subcommand is given).
    Http(Box<HttpArgs>),
    /// In-process engine benchmark.
    Engine(engine_bench::EngineArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Engine(args)) => engine_bench::run(args),
        Some(Command::Http(args)) => run_http(*args),
        None => run_http(cli.http),
    }
}

fn run_http(args: HttpArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()?;
    let outcome = rt.block_on(loadgen::run::run(args))?;
    drop(rt);
    if outcome.exit_code != 0 {
        std::process::exit(outcome.exit_code);
    }
    Ok(())
}
