//! The `execbox` command line. The only place that turns typed errors into reports.

mod doctor;
mod judge;
mod remote;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub mod approvals;
pub mod audit;
pub mod pair;
pub mod policy;
pub mod sessions;

use approvals::ApprovalsCommand;
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
    /// Decide what agents asked for: list, watch (interactive), approve, deny (operator socket)
    #[command(after_help = "\
A command whose policy verdict is `approve` waits in the daemon until an operator decides.
Decisions go over the operator socket only (--socket, EXECBOX_OPERATOR_SOCKET, default
/run/execbox/operator.sock) and are bound to the hash of the exact request shown.

  execbox approvals watch                      # sit at a prompt, decide as requests arrive
  execbox approvals list [--json]
  execbox approvals approve ID [--scope once|session] [--yes]
  execbox approvals deny ID [--reason TEXT]

See docs/approvals.md.")]
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCommand,
    },
    /// Issue a one-time pairing code that gives an agent its first session (operator socket)
    #[command(after_help = "\
The operator decides, per agent, which profile (and optionally which workspace) its session
gets, and hands it a one-time code. The agent redeems the code on the agent socket for a
session and token; with [sessions] require_pairing = true (the packaged default) that is the
only way to create a root session. Codes are 16 symbols from the OS RNG (no 0/O, 1/l/I),
single use, expiring (default 10 minutes), stored only as a hash; failed redemptions are
limited per uid, back off exponentially, and past pairing.alert_after invalidate every
outstanding code with an alert in the audit log.

  execbox pair --profile strict --label ci-bot      # prints the code once, and its id
  execbox pair --workspace /srv/agents/bot1 --ttl 2h --json
  execbox pair list [--json]                        # outstanding codes, by id
  execbox pair revoke CODE-ID

The agent:
  curl --unix-socket /run/execbox/agent.sock -H 'Content-Type: application/json' \\
       -d '{\"pairing_code\": \"XXXX-XXXX-XXXX-XXXX\"}' http://localhost/v1/sessions

Dashes and case do not matter. See docs/pairing.md.")]
    Pair(pair::PairArgs),
    /// List live sessions (label, profile, workspace, job counts) or end one with everything
    /// below it (operator socket)
    #[command(after_help = "\
A session is what an agent's token names: a profile, a workspace, its jobs. An agent may
start child sessions with its token; a child never outlives its root session, and quotas
bound how many one uid ([sessions] max_per_uid) and one lineage (max_per_lineage) hold.

  execbox sessions [list] [--json]       # every live session, children below their parent
  execbox sessions end SESSION-ID        # end it and its descendants; running jobs are killed

Over the operator socket (--socket, EXECBOX_OPERATOR_SOCKET, default
/run/execbox/operator.sock). See docs/pairing.md (Sessions).")]
    Sessions(sessions::SessionsArgs),
    /// Run the supervisor daemon: HTTP/1.1 + JSON over two Unix sockets (agent, operator)
    Serve(serve::ServeArgs),
    /// Check this host, the config and file permissions; say how to fix what is wrong
    Doctor(doctor::DoctorArgs),
}

/// The clap definition of the whole command line: what `cargo xtask dist` renders into the man
/// page and the shell completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Sets up logging on stderr; `EXECBOX_LOG` overrides the level.
pub(crate) fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXECBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only on a terminal: journald and log files get plain text (issue 22 item 6).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn main() -> ExitCode {
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
        Commands::Run(args) => {
            init_tracing(false, "warn");
            run::run(args)
        }
        Commands::Serve(args) => serve::serve(args),
        Commands::Policy { cmd } => policy::run(cmd),
        Commands::Audit { cmd } => audit::run(cmd),
        Commands::Doctor(args) => doctor::doctor(args),
        Commands::Approvals { cmd } => approvals::run(cmd),
        Commands::Pair(args) => pair::run(args),
        Commands::Sessions(args) => sessions::run(args),
    }
}
