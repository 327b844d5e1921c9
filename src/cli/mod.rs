//! The `execbox` command line. The only place that turns typed errors into reports (`anyhow`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod policy;

use policy::PolicyCommand;

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
    /// Check, explain and lint command policies without running anything.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCommand,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Run => ExitCode::SUCCESS,
        Commands::Policy { cmd } => policy::run(cmd),
    }
}
