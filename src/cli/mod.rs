//! The `execbox` command line. The only place that turns typed errors into reports (`anyhow`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sandboxed exec supervisor for AI agents.
#[derive(Parser)]
#[command(name = "execbox", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run one command in a fresh sandbox after checking it against the policy.
    Run,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Run => ExitCode::SUCCESS,
    }
}
