//! `execbox doctor [--json] [--fix] [--config FILE]`: runs [`crate::doctor`] and reports.
//! Exit 0 all ok (advice included), 1 warnings (or advice with `--strict`), 2 failures. Must
//! stay single-threaded: the kernel probes fork.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::config::Config;
use crate::doctor::{self, Changes, Context, Loaded, Mode};

/// Where the packaged config lives; used when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "/etc/execbox/execbox.toml";

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  execbox doctor
  execbox doctor --config /etc/execbox/execbox.toml --fix
  execbox doctor --json | jq '.[] | select(.status != \"ok\")'

Exit status: 0 every check ok or only advice (`info`: performance, e.g. cgroup.favordynmods),
1 warnings (security or function degraded; with --strict, advice too), 2 failures. So
`execbox doctor && systemctl start execbox` works on a healthy host. `execbox serve` runs the
same checks at start and refuses to start on a failure.")]
pub struct DoctorArgs {
    /// Print the checks as a JSON array on stdout
    #[arg(long)]
    json: bool,
    /// Repair what is safe to repair (modes, missing directories) and print each change
    #[arg(long)]
    fix: bool,
    /// Exit 1 on advice (`info`, performance only) too, not only on warnings
    #[arg(long)]
    strict: bool,
    /// The daemon's configuration file [default: /etc/execbox/execbox.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn doctor(args: DoctorArgs) -> ExitCode {
    let path = args.config.or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.into())
    });
    let loaded = path.as_deref().map(Config::load);
    let cx = Context {
        config: loaded.as_ref().map_or(Loaded::Missing, Loaded::from),
        config_path: path.as_deref(),
        mode: Mode::Cli { fix: args.fix },
        euid: crate::sandbox::sys::geteuid(),
    };
    let mut changes = Changes::default();
    let checks = doctor::run(&cx, &mut changes);
    for c in &changes.0 {
        // In JSON mode stdout is only the array; the changes go to stderr.
        if args.json {
            eprintln!("fixed: {c}");
        } else {
            println!("fixed: {c}");
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&checks) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("execbox doctor: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", doctor::render(&checks));
    }
    ExitCode::from(doctor::exit_code(&checks, args.strict))
}
