//! `execbox serve --config FILE`: load and validate the configuration, then hand over to
//! [`crate::server::serve`] (which must start before any thread exists).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Config;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  execbox serve --config /etc/execbox/execbox.toml
  curl --unix-socket /run/execbox/agent.sock -X POST http://x/v1/sessions

Logs go to stderr (EXECBOX_LOG=debug for more; [log] json = true for JSON lines).
SIGTERM or SIGINT: stop accepting, let running jobs finish for limits.shutdown_grace, then kill
them. If the spawner process dies, running jobs die with it and the daemon exits with status 1
for the service manager to restart it; each start removes job cgroups a killed daemon left
(docs/reliability.md). See packaging/execbox.toml for every key and docs/openapi.yaml for the
API.")]
pub struct ServeArgs {
    /// The daemon's configuration file (TOML)
    #[arg(long, value_name = "FILE", default_value = "/etc/execbox/execbox.toml")]
    config: PathBuf,
}

pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            super::init_tracing(false, "info");
            eprintln!("execbox serve: {}", super::chain(&e));
            return ExitCode::from(2);
        }
    };
    super::init_tracing(config.log_json, "info");
    match crate::server::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", super::chain(&e));
            eprintln!("execbox serve: {}", super::chain(&e));
            ExitCode::from(1)
        }
    }
}
