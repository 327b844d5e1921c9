//! The host-side invariant: **nothing a job writes is executed by the host unless the operator
//! asked for it.** The host runs git in agent workspaces, and git runs code named by files in a
//! git directory (`config`: `core.fsmonitor`, `core.hooksPath`, aliases, drivers, includes;
//! `hooks/*`; `commondir`/`config.worktree`, which redirect to other config; `info/attributes`,
//! which selects drivers). Two layers (`docs/threat-model.md`):
//!
//! 1. **Before the job** ([`prepare`]): a bounded walk ([`scan`]) finds every git directory in
//!    the workspace — `.git`, nested `sub/.git`, `.git/modules/*`, `.git/worktrees/*`, gitfile
//!    targets beneath the workspace, bare-looking directories — never following a symlink
//!    (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`). Each git
//!    directory becomes a mount point in the job's mount namespace (a mount point cannot be
//!    renamed, removed or replaced: `EBUSY`, so `mv .git .git_orig && mkdir .git` fails), and
//!    its code-bearing entries are bound read-only. Every ancestor of a `sandbox.hidden` or
//!    `sandbox.protected` path below the workspace is pinned the same way, so renaming a parent
//!    cannot carry a hidden file out from under its cover for the next job. A `.git` that is a
//!    symlink refuses the job (a broken workspace, reported as such).
//! 2. **After the job** ([`after`]): the same walk again; every code-bearing entry that is new
//!    or changed against the snapshot — a hook or `commondir` the job created, a repository the
//!    job made with `git init` and then gave a config that is not plain ([`gitconfig`]), a
//!    planted `.git` symlink, a gitfile pointing out of the workspace — is **quarantined**:
//!    renamed to `NAME.execbox-quarantine-<job>`, a name git never reads or runs. Changes to
//!    work-tree files that steer git (`.gitattributes` driver lines, `.gitmodules`) are
//!    reported. All of it goes into the `exit` event's `protection` field and the audit log.
//!
//! Must never: follow a workspace symlink on the host, read more than the walk's budget, or
//! delete anything (quarantine is a rename beside the original).

pub mod fsx;
pub mod gitconfig;
pub mod scan;

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::fsx::{Kind, State};
use self::scan::{Scan, ScanLimits, Target};
use super::SetupError;
use super::sys::Errno;
use crate::profile::SandboxProfile;

/// Inserted between a quarantined entry's name and the job stamp.
pub const QUARANTINE_MARK: &str = ".execbox-quarantine-";

/// Paths and findings listed in a report at most (the totals count all of them).
pub const MAX_LISTED: usize = 32;

/// How one path is guarded inside the job's mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardKind {
    /// Bound onto itself, writable: it cannot be renamed, removed or replaced.
    Pin,
    /// Bound onto itself read-only (and so pinned too).
    ReadOnly,
    /// An empty read-only tmpfs over a directory.
    HideDir,
    /// An empty read-only file over a file.
    HideFile,
}

/// One workspace-relative path and its guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub rel: PathBuf,
    pub kind: GuardKind,
}

/// The plan of layer 1 and the snapshot for layer 2.
#[derive(Debug, Default)]
pub struct Protection {
    pub before: Scan,
    /// Ordered parents first (a guard's ancestors come before it).
    pub guards: Vec<Guard>,
    pub limits: Option<ScanLimits>,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    GitConfig,
    GitHook,
    GitRedirect,
    GitAttributes,
    Gitfile,
    GitSymlink,
    Gitattributes,
    Gitmodules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Modified,
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Renamed to `quarantined_as`: git will neither read nor run it.
    Quarantined,
    /// Left in place and reported (work-tree files, removals).
    Reported,
    /// The rename failed: the host must not run git there before an operator looked.
    QuarantineFailed,
}

/// One code-bearing entry the job created, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Workspace-relative.
    pub path: String,
    pub kind: FindingKind,
    pub change: Change,
    pub action: Action,
    /// Workspace-relative new name when quarantined, else null.
    pub quarantined_as: Option<String>,
    pub detail: String,
}

/// The `exit` event's `protection` field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionReport {
    /// Git directories found (and guarded) when the job started.
    pub repositories: usize,
    /// Workspace-relative paths guarded by mounts in the job (first [`MAX_LISTED`]).
    pub protected: Vec<String>,
    pub protected_total: usize,
    /// A walk stopped at `sandbox.protect_scan_entries`: later entries were not examined.
    pub scan_truncated: bool,
    /// First [`MAX_LISTED`] findings.
    pub findings: Vec<Finding>,
    pub findings_total: usize,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Modified => "modified",
            Change::Removed => "removed",
        }
    }
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Quarantined => "quarantined",
            Action::Reported => "reported",
            Action::QuarantineFailed => "quarantine failed",
        }
    }
}

fn broken(ws: &Path, rel: &Path, what: &str, fix: &str) -> SetupError {
    SetupError::Workspace {
        path: ws.join(rel),
        message: format!(
            "{what}; execbox never follows workspace symlinks on the host (a planted one could make host git run or probe files elsewhere), so this workspace is not usable as it is"
        ),
        fix: fix.into(),
    }
}

/// Layer 1: scans the workspace and plans the guards. Refuses a workspace whose git layout
/// goes through a symlink.
pub fn prepare(ws: &Path, sandbox: &SandboxProfile) -> Result<Protection, SetupError> {
    let limits = ScanLimits {
        max_depth: sandbox.protect_scan_depth,
        max_entries: sandbox.protect_scan_entries,
    };
    let before = scan::scan(ws, limits).map_err(|e| SetupError::Workspace {
        path: ws.to_path_buf(),
        message: format!(
            "cannot be examined without following symlinks: {}",
            e.describe()
        ),
        fix: "pass the workspace's real path (no symlink), readable by execbox".into(),
    })?;
    if before.truncated {
        tracing::warn!(
            workspace = %ws.display(),
            entries = before.entries,
            "protect scan stopped at sandbox.protect_scan_entries; deeper git directories are not guarded"
        );
    }
    if let Some(link) = before.git_symlinks.first() {
        return Err(broken(
            ws,
            link,
            "is a symlink",
            "replace it with the repository directory or a gitfile (`gitdir: PATH`); if an agent planted it, rename it away and look at where it points",
        ));
    }
    let mut guards: Vec<Guard> = Vec::new();
    for (g, dir) in &before.gitdirs {
        if !g.as_os_str().is_empty() {
            guards.push(Guard {
                rel: g.clone(),
                kind: GuardKind::Pin,
            });
        }
        for (p, s) in &dir.code {
            // Top-level entries only: a read-only `hooks/` covers what is in it.
            if p.parent() != Some(g.as_path()) {
                continue;
            }
            if *s == State::Symlink {
                return Err(broken(
                    ws,
                    p,
                    "is a symlink inside a git directory",
                    "replace it with the file or directory it points to (for shared hooks, set core.hooksPath in the host's own git config instead)",
                ));
            }
            guards.push(Guard {
                rel: p.clone(),
                kind: GuardKind::ReadOnly,
            });
        }
    }
    for p in before.gitfiles.keys() {
        guards.push(Guard {
            rel: p.clone(),
            kind: GuardKind::ReadOnly,
        });
    }
    let root = fsx::open_root(ws).map_err(|e| SetupError::Workspace {
        path: ws.to_path_buf(),
        message: format!("cannot be opened: {}", e.describe()),
        fix: "pass the workspace's real path (no symlink)".into(),
    })?;
    let mut hidden_dirs = Vec::new();
    for (list, hide) in [(&sandbox.protected, false), (&sandbox.hidden, true)] {
        for rel in list {
            // A symlink on the way (or a missing path) is skipped: nothing is at that name on
            // the host side, and the sandbox's own view decides what the link shows.
            let kind = match fsx::kind_of_path(root.as_fd(), rel) {
                Ok(k @ (Kind::Dir | Kind::File)) => k,
                _ => continue,
            };
            let mut a = rel.parent();
            while let Some(p) = a.filter(|p| !p.as_os_str().is_empty()) {
                guards.push(Guard {
                    rel: p.to_path_buf(),
                    kind: GuardKind::Pin,
                });
                a = p.parent();
            }
            let kind = match (hide, kind) {
                (false, _) => GuardKind::ReadOnly,
                (true, Kind::Dir) => {
                    hidden_dirs.push(rel.clone());
                    GuardKind::HideDir
                }
                (true, _) => GuardKind::HideFile,
            };
            guards.push(Guard {
                rel: rel.clone(),
                kind,
            });
        }
    }
    Ok(Protection {
        before,
        guards: order(guards, &hidden_dirs),
        limits: Some(limits),
    })
}

/// One guard per path (the strongest), parents first; nothing beneath a hidden directory
/// (its cover is an empty tmpfs: there is nothing there to bind).
fn order(mut guards: Vec<Guard>, hidden_dirs: &[PathBuf]) -> Vec<Guard> {
    guards.retain(|g| {
        !hidden_dirs
            .iter()
            .any(|h| g.rel != *h && g.rel.starts_with(h))
    });
    guards.sort_by(|a, b| {
        (
            a.rel.components().count(),
            &a.rel,
            std::cmp::Reverse(a.kind),
        )
            .cmp(&(
                b.rel.components().count(),
                &b.rel,
                std::cmp::Reverse(b.kind),
            ))
    });
    let mut seen = BTreeSet::new();
    guards.retain(|g| seen.insert(g.rel.clone()));
    guards
}

/// Longest path shown in a report (the log has it whole): a job must not be able to make its
/// exit event, kept by the daemon, large with long names.
const MAX_SHOWN_PATH: usize = 256;

fn lossy(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.len() <= MAX_SHOWN_PATH {
        return s.into_owned();
    }
    let mut cut = MAX_SHOWN_PATH;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// Layer 2: the walk again after the job; quarantines what the job planted and reports.
/// `stamp` names the job in quarantine names.
pub fn after(ws: &Path, p: &Protection, stamp: &str) -> ProtectionReport {
    let mut report = ProtectionReport {
        repositories: p.before.gitdirs.len(),
        protected: p
            .guards
            .iter()
            .take(MAX_LISTED)
            .map(|g| lossy(&g.rel))
            .collect(),
        protected_total: p.guards.len(),
        scan_truncated: p.before.truncated,
        ..Default::default()
    };
    let Some(limits) = p.limits else {
        return report;
    };
    let mut findings = Vec::new();
    let now = match scan::scan(ws, limits) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(workspace = %ws.display(), error = %e.describe(), "protect: workspace not examined after the job");
            report.scan_truncated = true;
            return report;
        }
    };
    report.scan_truncated |= now.truncated;
    let Ok(root) = fsx::open_root(ws) else {
        report.scan_truncated = true;
        return report;
    };
    let q = |path: &Path, kind: FindingKind, change: Change, detail: String| {
        let (action, quarantined_as, detail) = match quarantine(root.as_fd(), path, stamp) {
            Ok(new) => (Action::Quarantined, Some(lossy(&new)), detail),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e.describe(), "protect: quarantine failed");
                (
                    Action::QuarantineFailed,
                    None,
                    format!("{detail} (rename failed: {})", e.describe()),
                )
            }
        };
        Finding {
            path: lossy(path),
            kind,
            change,
            action,
            quarantined_as,
            detail,
        }
    };
    for link in &now.git_symlinks {
        findings.push(q(
            link,
            FindingKind::GitSymlink,
            Change::Created,
            "a .git symlink: host git would use whatever it points to".into(),
        ));
    }
    for (path, gf) in &now.gitfiles {
        let change = match p.before.gitfiles.get(path) {
            Some(b) if b.state == gf.state => continue,
            Some(_) => Change::Modified,
            None => Change::Created,
        };
        match &gf.target {
            // A new gitfile into the workspace adds nothing: its target is judged as a git
            // directory (new or guarded) like any other.
            Target::Beneath(_) if change == Change::Created => {}
            Target::Beneath(t) => findings.push(Finding {
                path: lossy(path),
                kind: FindingKind::Gitfile,
                change,
                action: Action::Reported,
                quarantined_as: None,
                detail: format!(
                    "points to {} in the workspace (examined as a git directory)",
                    t.display()
                ),
            }),
            Target::Outside | Target::Invalid => findings.push(q(
                path,
                FindingKind::Gitfile,
                change,
                "a gitfile pointing out of the workspace (or unreadable): host git would use that directory's config and hooks".into(),
            )),
        }
    }
    // Entries of git directories the job did not write (a renamed parent moves them).
    let known: BTreeSet<(PathBuf, &State)> = p
        .before
        .gitdirs
        .iter()
        .flat_map(|(g, d)| {
            d.code
                .iter()
                .filter_map(move |(k, s)| Some((k.strip_prefix(g).ok()?.to_path_buf(), s)))
        })
        .collect();
    for (g, dir) in &now.gitdirs {
        let before = p.before.gitdirs.get(g);
        let mut keys: BTreeSet<&PathBuf> = dir.code.keys().collect();
        if let Some(b) = before {
            keys.extend(b.code.keys());
        }
        for k in keys {
            let old = before.and_then(|b| b.code.get(k));
            let new = dir.code.get(k);
            let inner = k.strip_prefix(g).unwrap_or(k);
            let kind = kind_of(inner);
            match (old, new) {
                (Some(a), Some(b)) if a == b => {}
                (Some(_), None) => findings.push(Finding {
                    path: lossy(k),
                    kind,
                    change: Change::Removed,
                    action: Action::Reported,
                    quarantined_as: None,
                    detail: "removed by the job".into(),
                }),
                (None, Some(State::Dir)) | (None, None) => {}
                (None, Some(s)) if before.is_none() => {
                    if known.contains(&(inner.to_path_buf(), s)) {
                        continue;
                    }
                    if inner == Path::new("commondir")
                        && is_worktree_of_parent(g, &p_read(root.as_fd(), k))
                    {
                        // `git worktree add`: `<G>/worktrees/<name>/commondir` is `../..`.
                        continue;
                    }
                    if inner == Path::new("config") && matches!(s, State::File { .. }) {
                        let text = p_read(root.as_fd(), k);
                        match gitconfig::not_plain(&text) {
                            None => continue,
                            Some(why) => findings.push(q(
                                k,
                                kind,
                                Change::Created,
                                format!(
                                    "config of a repository the job created is not plain: {why}"
                                ),
                            )),
                        }
                    } else {
                        findings.push(q(
                            k,
                            kind,
                            Change::Created,
                            "written by the job in a repository it created".into(),
                        ));
                    }
                }
                (old, Some(_)) => findings.push(q(
                    k,
                    kind,
                    if old.is_some() {
                        Change::Modified
                    } else {
                        Change::Created
                    },
                    "changed by the job in a git directory that was guarded".into(),
                )),
            }
        }
    }
    let mut keys: BTreeSet<&PathBuf> = now.worktree_files.keys().collect();
    keys.extend(p.before.worktree_files.keys());
    for k in keys {
        let (old, new) = (p.before.worktree_files.get(k), now.worktree_files.get(k));
        if old == new {
            continue;
        }
        let change = match (old, new) {
            (None, _) => Change::Created,
            (_, None) => Change::Removed,
            _ => Change::Modified,
        };
        let gitmodules = k.file_name().is_some_and(|n| n == ".gitmodules");
        findings.push(Finding {
            path: lossy(k),
            kind: if gitmodules {
                FindingKind::Gitmodules
            } else {
                FindingKind::Gitattributes
            },
            change,
            action: Action::Reported,
            quarantined_as: None,
            detail: if gitmodules {
                "submodule URLs changed: review before `git submodule update` on the host".into()
            } else {
                "filter/diff/merge driver lines changed: review before host git runs them".into()
            },
        });
    }
    for f in &findings {
        tracing::info!(path = %f.path, kind = ?f.kind, change = ?f.change, action = ?f.action, quarantined_as = f.quarantined_as.as_deref(), "protect: {}", f.detail);
    }
    for f in &mut findings {
        if f.detail.len() > 2 * MAX_SHOWN_PATH {
            f.detail = lossy(Path::new(&f.detail));
        }
    }
    report.findings_total = findings.len();
    findings.truncate(MAX_LISTED);
    report.findings = findings;
    report
}

/// `g` is `<G>/worktrees/<name>` and its `commondir` says `../..`: it points back to `G`.
fn is_worktree_of_parent(g: &Path, commondir: &[u8]) -> bool {
    let under_worktrees = g
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "worktrees");
    let text = String::from_utf8_lossy(commondir);
    under_worktrees && matches!(text.trim_end_matches(['\n', '\r']), "../.." | "../../")
}

fn kind_of(inner: &Path) -> FindingKind {
    match inner.to_str().unwrap_or("") {
        "config" => FindingKind::GitConfig,
        "config.worktree" | "commondir" => FindingKind::GitRedirect,
        "info" | "info/attributes" => FindingKind::GitAttributes,
        _ => FindingKind::GitHook,
    }
}

fn p_read(root: std::os::fd::BorrowedFd<'_>, rel: &Path) -> Vec<u8> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Vec::new();
    };
    use std::os::unix::ffi::OsStrExt;
    fsx::open_dir_path(root, parent)
        .and_then(|d| fsx::read_small(d.as_fd(), name.as_bytes(), 1 << 20))
        .unwrap_or_default()
}

fn quarantine(
    root: std::os::fd::BorrowedFd<'_>,
    rel: &Path,
    stamp: &str,
) -> Result<PathBuf, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Errno(libc::EINVAL));
    };
    let dir = fsx::open_dir_path(root, parent)?;
    let new = fsx::quarantine(dir.as_fd(), name.as_bytes(), stamp)?;
    Ok(parent.join(std::ffi::OsStr::from_bytes(&new)))
}

#[cfg(test)]
mod tests;
