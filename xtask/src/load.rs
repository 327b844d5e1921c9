//! `cargo xtask load`: the fault and load tests of `tests/suite/{faults,load}.rs` at a larger
//! scale than CI runs them, printing the timing and memory numbers the load test reports.
//!
//! Options: `--jobs N` concurrent jobs per round (default 2000), `--rounds N` load rounds
//! (default 3), `--race-rounds N` rounds of the cgroup-removal race test (default 100),
//! `--release` (test an optimised build).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run_cmd;

pub fn run(args: &[String]) -> Result<()> {
    let (mut jobs, mut rounds, mut race_rounds, mut release) = (2000usize, 3usize, 100usize, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{what} N"))?
                .parse()
                .with_context(|| format!("{what} takes a number"))
        };
        match a.as_str() {
            "--jobs" => jobs = num("--jobs")?,
            "--rounds" => rounds = num("--rounds")?,
            "--race-rounds" => race_rounds = num("--race-rounds")?,
            "--release" => release = true,
            other => bail!(
                "unknown option {other}; options: --jobs N, --rounds N, --race-rounds N, --release"
            ),
        }
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--test", "all"]);
    if release {
        cmd.arg("--release");
    }
    // One test at a time: the numbers are the load test's own, not its neighbours'.
    cmd.args([
        "--",
        "suite::faults",
        "suite::load",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("EXECBOX_LOAD_JOBS", jobs.to_string())
    .env("EXECBOX_LOAD_ROUNDS", rounds.to_string())
    .env("EXECBOX_FAULT_ROUNDS", race_rounds.to_string())
    .env("EXECBOX_REQUIRE_ALL", "1");
    run_cmd(&mut cmd)
}
