//! The `execbox` command line. The only place that turns typed errors into reports.

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod audit;
pub mod policy;

use audit::AuditCommand;
use policy::PolicyCommand;

/// Sandboxed exec supervisor for AI agents.
///
/// Every command is checked against a structural policy, then run in a fresh sandbox: new
/// namespaces, a read-only minimal root with only the workspace writable, landlock, seccomp,
/// no capabilities, a per-job cgroup and a wall-clock limit.
#[derive(Parser)]
#[command(name = "execbox", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Check one command against the policy and run it in a fresh sandbox (no daemon needed)
    Run(run::RunArgs),
    /// Check, explain and lint command policies without running anything
    Policy {
        #[command(subcommand)]
        cmd: PolicyCommand,
    },
    /// Verify the hash chain of the audit log, or print its records
    Audit {
        #[command(subcommand)]
        cmd: AuditCommand,
    },
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EXECBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Usage errors are bad input: one line naming the problem, exit 125 (as `docker run`).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("execbox: {first}; see `execbox --help`");
            return ExitCode::from(125);
        }
        Err(e) => e.exit(),
    };
    match cli.command {
        Commands::Run(args) => run::run(args),
        Commands::Policy { cmd } => policy::run(cmd),
        Commands::Audit { cmd } => audit::run(cmd),
    }
}
