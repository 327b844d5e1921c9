//! `execbox doctor`: what works on this host, what does not, and the exact fix.
//!
//! Owns the [`Check`] model and the list of checks, grouped by area: [`kernel`] (user
//! namespaces and their distro restrictions, every namespace type, landlock, seccomp, `/proc`
//! mounts, pidfd/clone3, idmapped mounts), [`cgroups`] (layout, a writable job parent,
//! `favordynmods`), [`config`] (the daemon's config and profiles), [`files`] (modes of the
//! state dir, config, sockets and audit log) and [`git`] (host git settings for agent
//! workspaces). `execbox serve` runs the same list at start and
//! refuses to start on a [`Status::Fail`].
//!
//! Must never: change anything unless asked (`--fix`), and then only what is safe to repair
//! (modes, missing directories), each change reported. A check that cannot tell (a probe that
//! cannot run here) says so as a warning, never as a pass.
//!
//! Probes that fork (namespaces, `/proc`, idmapped mounts) need a single-threaded process: the
//! CLI is one, and the daemon runs the checks before its spawner and runtime exist.

pub mod cgroups;
pub mod config;
pub mod files;
pub mod git;
pub mod kernel;

use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// How a check ended. Ordered: the worst status decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Advice: performance, not security or function (`cgroup.favordynmods`). Exit 0 unless
    /// `--strict`, so `doctor && systemctl start execbox` works on a healthy host.
    Info,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One finding: a stable id, what was checked, what was seen, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub title: String,
    pub status: Status,
    /// What was observed (values read, errno of a probe), so a report can be checked by hand.
    pub evidence: String,
    /// The exact command or edit that repairs a warning or failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(id: &'static str, title: impl Into<String>, evidence: impl Into<String>) -> Check {
        Check {
            id,
            title: title.into(),
            status: Status::Ok,
            evidence: evidence.into(),
            fix: None,
        }
    }

    /// Advice that does not affect security or whether jobs run (exit 0; see [`Status::Info`]).
    pub fn info(
        id: &'static str,
        title: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(Status::Info, id, title, evidence, fix)
    }

    pub fn warn(
        id: &'static str,
        title: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(Status::Warn, id, title, evidence, fix)
    }

    pub fn fail(
        id: &'static str,
        title: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(Status::Fail, id, title, evidence, fix)
    }

    fn with_fix(
        status: Status,
        id: &'static str,
        title: impl Into<String>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status,
            fix: Some(fix.into()),
            ..Check::ok(id, title, evidence)
        }
    }
}

/// Who runs the checks, which decides what they may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `execbox doctor`; `fix` repairs modes and missing directories.
    Cli { fix: bool },
    /// `execbox serve` at start: never changes anything (the daemon makes its own dirs).
    Daemon,
}

/// The config the checks run against.
#[derive(Clone, Copy)]
pub enum Loaded<'a> {
    /// None was found and none was asked for: config and file checks are skipped.
    Missing,
    Invalid(&'a crate::config::ConfigError),
    Valid(&'a Config),
}

impl<'a> From<&'a Result<Config, crate::config::ConfigError>> for Loaded<'a> {
    fn from(r: &'a Result<Config, crate::config::ConfigError>) -> Loaded<'a> {
        match r {
            Ok(c) => Loaded::Valid(c),
            Err(e) => Loaded::Invalid(e),
        }
    }
}

/// What the checks run against.
pub struct Context<'a> {
    pub config: Loaded<'a>,
    /// The config file's path, for its mode check.
    pub config_path: Option<&'a Path>,
    pub mode: Mode,
    pub euid: u32,
}

impl Context<'_> {
    pub fn fixing(&self) -> bool {
        matches!(self.mode, Mode::Cli { fix: true })
    }

    pub fn loaded(&self) -> Option<&Config> {
        match self.config {
            Loaded::Valid(c) => Some(c),
            _ => None,
        }
    }
}

/// Repairs done by `--fix`, in order, as lines for the operator.
#[derive(Debug, Default)]
pub struct Changes(pub Vec<String>);

impl Changes {
    pub fn push(&mut self, line: String) {
        self.0.push(line);
    }
}

/// Runs every check, in report order. Repairs go to `changes` when the context asks for them.
pub fn run(cx: &Context, changes: &mut Changes) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(kernel::checks(cx));
    out.extend(cgroups::checks(cx));
    out.extend(config::checks(cx));
    out.extend(files::checks(cx, changes));
    out.extend(git::checks(cx));
    out
}

/// The worst status of a report (`Ok` for an empty one).
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

/// The exit code `execbox doctor` uses: 0 all ok (advice included), 1 warnings, 2 failures;
/// with `strict`, advice counts as a warning.
pub fn exit_code(checks: &[Check], strict: bool) -> u8 {
    match worst(checks) {
        Status::Ok => 0,
        Status::Info => u8::from(strict),
        Status::Warn => 1,
        Status::Fail => 2,
    }
}

/// The human report: one line per check, the fix indented below it.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!(
            "[{:>4}] {:<22} {}: {}\n",
            c.status.label(),
            c.id,
            c.title,
            c.evidence
        ));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("{:>29} {fix}\n", "fix:"));
        }
    }
    let count = |st: Status| checks.iter().filter(|c| c.status == st).count();
    let (i, w, f) = (
        count(Status::Info),
        count(Status::Warn),
        count(Status::Fail),
    );
    s.push_str(&format!(
        "{} checks: {} ok, {i} advice, {w} warnings, {f} failures\n",
        checks.len(),
        count(Status::Ok)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_the_worst_status() {
        let ok = Check::ok("a", "a", "fine");
        let warn = Check::warn("b", "b", "meh", "do x");
        let fail = Check::fail("c", "c", "bad", "do y");
        let info = Check::info("d", "d", "slow", "do z");
        assert_eq!(exit_code(&[], false), 0);
        assert_eq!(exit_code(std::slice::from_ref(&ok), false), 0);
        assert_eq!(exit_code(&[ok.clone(), warn.clone()], false), 1);
        assert_eq!(
            exit_code(&[fail.clone(), ok.clone(), warn.clone()], false),
            2
        );
        // Advice (performance) does not fail `doctor && systemctl start` (issue 22 item 5)…
        assert_eq!(exit_code(&[ok.clone(), info.clone()], false), 0);
        // …unless --strict asks for the old behaviour.
        assert_eq!(exit_code(&[ok.clone(), info.clone()], true), 1);
        assert_eq!(exit_code(&[info.clone(), warn.clone()], false), 1);
        assert_eq!(exit_code(&[info, fail], true), 2);
    }

    #[test]
    fn json_shape_is_stable() {
        let v = serde_json::to_value(Check::warn("x.y", "T", "E", "F")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "x.y", "title": "T", "status": "warn", "evidence": "E", "fix": "F"})
        );
    }

    #[test]
    fn render_shows_each_fix_under_its_check() {
        let r = render(&[
            Check::ok("a", "A", "fine"),
            Check::fail("b", "B", "bad", "run z"),
            Check::info("c", "C", "slow", "tune y"),
        ]);
        assert!(r.contains("[  ok] a"), "{r}");
        assert!(r.contains("[FAIL] b"), "{r}");
        assert!(r.contains("fix: run z"), "{r}");
        assert!(r.contains("[info] c"), "{r}");
        assert!(
            r.contains("3 checks: 1 ok, 1 advice, 0 warnings, 1 failures"),
            "{r}"
        );
    }
}
