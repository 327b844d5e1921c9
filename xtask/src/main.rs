//! Project automation (`cargo xtask …`), matklad's pattern: plain Rust, no make.
//!
//! - `ci`: everything CI checks. If it passes locally, `.ci/run` passes.
//! - `fuzz`: the cargo-fuzz targets and the schemathesis API run (docs/fuzzing.md).
//! - `bench`: the published latency/throughput comparison (see docs/benchmarks.md).
//! - `load`: the fault and load tests at a larger scale (see docs/reliability.md).
//! - `dist`: man pages and shell completions rendered from the clap definitions.
//! - `policy-report`: the policy's per-class figures on the coverage corpus.
//! - `deb`: the Debian package (`[package.metadata.deb]` in Cargo.toml, built with dpkg-deb).

mod bench;
mod bench_net;
mod ci;
mod daemon;
mod fuzz;
mod install_smoke;
mod load;
mod package;
mod policy_report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("load") => load::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("dist") => package::dist().map(drop),
        Some("deb") => package::deb().map(drop),
        Some("deb-test") => install_smoke::run(),
        Some("policy-report") => policy_report::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  ci      fmt, clippy, tests as root and as an unprivileged user (what .ci/run runs)\n  \
                 bench   execbox vs bwrap vs unshare vs bare latency, and stdout throughput\n  \
                 load    fault and load tests at scale (--jobs N, --rounds N, --race-rounds N, --release)\n  \
                 fuzz    cargo-fuzz targets (--target NAME|all, --secs N) or schemathesis (--api)\n  \
                 dist    man pages and shell completions into target/dist/\n  \
                 deb     the Debian package into target/debian/ (release build + dist + dpkg-deb)\n  \
                 deb-test  build, install, doctor, smoke-test and purge the package (root; part of ci)\n  \
                 policy-report  per-class recall and false flags on tests/corpus/coverage.tsv"
            );
            bail!("no task given")
        }
    }
}

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command in the project root, failing with its name when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let status = cmd
        .current_dir(project_root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}
