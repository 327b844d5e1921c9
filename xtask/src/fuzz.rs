//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/` (libFuzzer), and with `--api` the
//! schemathesis run against a live daemon (`tests/api_fuzz/run.sh`). See docs/fuzzing.md.
//!
//! Installs nothing: without cargo-fuzz it says how to get it. The toolchain here is stable,
//! and cargo-fuzz passes nightly-only flags (`-Zsanitizer`, `-Cpasses=sancov-module`), so every
//! cargo-fuzz call runs with `RUSTC_BOOTSTRAP=1`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{project_root, run_cmd};

/// Seconds per target in `cargo xtask ci`.
pub const CI_SECS: u64 = 20;
/// Seconds per target by default (long runs: `--secs`).
const DEFAULT_SECS: u64 = 60;
/// schemathesis examples per API operation in the deterministic run (`cargo xtask ci` and
/// `--api` without `--secs`): about 90 s for both sockets.
pub const API_EXAMPLES: u64 = 100;

/// How cargo-fuzz is told to build: AddressSanitizer (cargo-fuzz's default) works with
/// `RUSTC_BOOTSTRAP=1` on this toolchain, so it stays on: a memory error in a dependency's
/// unsafe code is reported, not silently survived.
const SANITIZER: &str = "address";

pub fn run(args: &[String]) -> Result<()> {
    let mut target = "all".to_string();
    let mut secs = None;
    let mut api = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--target" => target = it.next().context("--target needs a NAME or all")?.clone(),
            "--secs" => {
                let v = it.next().context("--secs needs a number")?;
                secs = Some(v.parse().with_context(|| format!("--secs {v:?}"))?);
            }
            "--api" => api = true,
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if api {
        return api_fuzz(secs);
    }
    let secs = secs.unwrap_or(DEFAULT_SECS);
    let targets = match target.as_str() {
        "all" => targets()?,
        t => {
            let all = targets()?;
            if !all.iter().any(|x| x == t) {
                bail!("no fuzz target {t:?}; targets: {}", all.join(", "));
            }
            vec![t.to_string()]
        }
    };
    run_targets(&targets, secs)
}

const USAGE: &str = "usage: cargo xtask fuzz [--target NAME|all] [--secs N] [--api]\n\n  \
    --target  one cargo-fuzz target (fuzz/fuzz_targets/NAME.rs) or all (default)\n  \
    --secs    seconds per target (default 60; CI runs 20)\n  \
    --api     schemathesis against a live daemon instead: deterministic (fixed seed and\n              \
              cases, what CI runs), or with --secs N an exploration of N s per socket with a\n              \
              random seed (printed; replay with API_FUZZ_SEED)";

/// Every target, short, one after the other: what `cargo xtask ci` runs.
pub fn ci() -> Result<()> {
    run_targets(&targets()?, CI_SECS)
}

fn run_targets(targets: &[String], secs: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz = project_root().join("fuzz");
    // One build for all targets (they share the instrumented execbox library).
    run_cmd(&mut cargo_fuzz(&["build", "--sanitizer", SANITIZER]))?;
    for t in targets {
        let corpus = fuzz.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).with_context(|| format!("{}", corpus.display()))?;
        let seeds = fuzz.join("seeds").join(t);
        let mut cmd = cargo_fuzz(&["run", "--sanitizer", SANITIZER, t]);
        cmd.arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        // A hang is an input that takes over 10 s; 2 GiB of RSS is a leak or a blow-up. Both
        // fail like a crash; the input is saved under fuzz/artifacts/<target>/.
        cmd.args([
            "--",
            &format!("-max_total_time={secs}"),
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        if let Err(e) = run_cmd(&mut cmd) {
            bail!(
                "fuzz target {t} failed: {e:#}\nthe input is in {}; reproduce with \
                 `RUSTC_BOOTSTRAP=1 cargo fuzz run {t} <file>` in fuzz/, then add a regression \
                 test (docs/fuzzing.md)",
                fuzz.join("artifacts").join(t).display()
            );
        }
    }
    Ok(())
}

/// The targets cargo-fuzz knows (the `[[bin]]`s of fuzz/Cargo.toml).
fn targets() -> Result<Vec<String>> {
    ensure_cargo_fuzz()?;
    let out = cargo_fuzz(&["list"]).output().context("cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        bail!("cargo fuzz list found no target in fuzz/");
    }
    Ok(list)
}

fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("fuzz")
        .args(args)
        .current_dir(project_root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn ensure_cargo_fuzz() -> Result<()> {
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        bail!(
            "cargo-fuzz is not installed (this task installs nothing by itself); \
             install it with `cargo install cargo-fuzz --locked` (.ci/run does this in CI)"
        );
    }
    Ok(())
}

/// schemathesis against `docs/openapi.yaml` and a live `execbox serve` (tests/api_fuzz/):
/// deterministic (the same cases on every machine) without `secs`, an exploration of `secs`
/// per socket with a random seed with it.
pub fn api_fuzz(secs: Option<u64>) -> Result<()> {
    let script = project_root().join("tests/api_fuzz/run.sh");
    if !Path::new(&script).is_file() {
        bail!("{} is missing", script.display());
    }
    run_cmd(Command::new("cargo").args(["build", "--bin", "execbox"]))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .env("EXECBOX_BIN", project_root().join("target/debug/execbox"))
        .env("API_FUZZ_EXAMPLES", API_EXAMPLES.to_string())
        .env_remove("API_FUZZ_SECS");
    if let Some(secs) = secs {
        cmd.env("API_FUZZ_SECS", secs.to_string());
    }
    run_cmd(&mut cmd)
}
