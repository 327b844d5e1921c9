//! `cargo xtask ci`: formatting, lints, the whole test suite as root, short fuzz runs (the
//! cargo-fuzz targets and schemathesis against the API), then the sandbox suite
//! again as an unprivileged user with a delegated cgroup subtree (the two ways execbox runs),
//! then (as root) the package: build, install, doctor, a smoke test, purge.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{project_root, run_cmd};

/// The load tests run on their own, after the rest: tearing down a thousand jobs' network
/// namespaces holds the kernel's rtnl/pernet locks long enough that any namespace created
/// meanwhile waits for seconds (a daemon start was measured at 18 s), which made unrelated
/// tests running beside them time out.
const LOAD_TESTS: &str = "suite::load::";

/// The unprivileged user of the second pass, and the cgroup subtree delegated to it.
const CI_USER: &str = "execbox-ci";
const CI_CGROUP: &str = "execbox-ci";

pub fn run() -> Result<()> {
    run_cmd(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(
        Command::new("cargo")
            .args(["test", "--workspace", "--", "--skip", LOAD_TESTS])
            .env("EXECBOX_REQUIRE_ALL", "1"),
    )?;
    run_cmd(
        Command::new("cargo")
            .args(["test", "--test", "all", "--", LOAD_TESTS])
            .env("EXECBOX_REQUIRE_ALL", "1"),
    )?;
    // Short runs: a crash, a hang (>10 s) or an OOM fails CI (docs/fuzzing.md).
    crate::fuzz::ci()?;
    // Deterministic: the same cases on every machine (issue 22 item 0).
    crate::fuzz::api_fuzz(None)?;
    if is_root() {
        unprivileged_pass()?;
        crate::install_smoke::run()?;
    } else {
        eprintln!(
            "xtask ci: not root, so the root pass above was the unprivileged one, and the package is not installed"
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs the integration suite as `execbox-ci`, with job cgroups under a subtree it owns.
fn unprivileged_pass() -> Result<()> {
    ensure_user()?;
    let uid = String::from_utf8(Command::new("id").args(["-u", CI_USER]).output()?.stdout)?
        .trim()
        .to_string();
    delegate_cgroups(&uid)?;

    // Build the suite and find the test binary.
    let out = Command::new("cargo")
        .args(["test", "--test", "all", "--no-run", "--message-format=json"])
        .current_dir(project_root())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binary failed");
    }
    let mut test_bin = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains("\"name\":\"all\"") && line.contains("\"executable\":\"") {
            let exe = line
                .split("\"executable\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            test_bin = exe.map(PathBuf::from);
        }
    }
    let test_bin = test_bin.context("no test binary named `all` in cargo's output")?;

    // Copy what the user needs to a place it can reach (the checkout may be under /root).
    let stage = PathBuf::from(format!("/tmp/execbox-ci-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    let bin = project_root().join("target/debug/execbox");
    std::fs::copy(&bin, stage.join("execbox"))
        .with_context(|| format!("copy {}", bin.display()))?;
    std::fs::copy(&test_bin, stage.join("all"))?;
    // What the tests read from the source tree (harness::source_path).
    let source = stage.join("source");
    for rel in [
        "README.md",
        "policies",
        "tests/fixtures",
        "tests/probes",
        "tests/corpus",
        "docs",
        "src",
    ] {
        copy_tree(&project_root().join(rel), &source.join(rel))?;
    }
    run_cmd(Command::new("chmod").args(["-R", "a+rX"]).arg(&stage))?;

    let suite = |filter: &[&str]| {
        run_cmd(
            Command::new("runuser")
                .args(["-u", CI_USER, "--", "env", "-i"])
                .arg("PATH=/usr/local/bin:/usr/bin:/bin")
                .arg("HOME=/tmp")
                .arg("EXECBOX_REQUIRE_ALL=1")
                .arg(format!("EXECBOX_CGROUP_PARENT={CI_CGROUP}"))
                .arg(format!("EXECBOX_BIN={}", stage.join("execbox").display()))
                .arg(format!("EXECBOX_SOURCE_DIR={}", source.display()))
                .arg(stage.join("all"))
                .arg("--test-threads=2")
                .args(filter),
        )
    };
    let result = suite(&["--skip", LOAD_TESTS]).and_then(|()| suite(&[LOAD_TESTS]));
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// Copies a file or a directory tree (regular files only).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
    }
    Ok(())
}

fn ensure_user() -> Result<()> {
    if Command::new("id").arg(CI_USER).output()?.status.success() {
        return Ok(());
    }
    run_cmd(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        CI_USER,
    ]))
}

/// Creates `<mount>/execbox-ci` in every cgroup hierarchy and hands it to the user: what an
/// operator does to let an unprivileged user run execbox with limits (docs/cgroups.md).
fn delegate_cgroups(uid: &str) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut delegated = 0;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if !post.starts_with("cgroup") {
            continue;
        }
        let Some(mount) = pre.split_whitespace().nth(4) else {
            continue;
        };
        let dir = Path::new(mount).join(CI_CGROUP);
        if !dir.exists() && std::fs::create_dir(&dir).is_err() {
            continue;
        }
        run_cmd(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{uid}"))
                .arg(&dir),
        )?;
        delegated += 1;
    }
    if delegated == 0 {
        bail!("no cgroup hierarchy to delegate to {CI_USER}");
    }
    Ok(())
}
