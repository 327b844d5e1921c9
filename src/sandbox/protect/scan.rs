//! The bounded walk that finds every git directory in the workspace and records the state of
//! its code-bearing entries. Runs on the host (as root under the daemon) over a tree a job may
//! have shaped, so it never follows a symlink ([`super::fsx`]), holds one directory fd at a
//! time, and stops after `max_entries` directory entries or below `max_depth`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::fsx::{self, Kind, State};
use crate::sandbox::sys::Errno;

/// How far the walk goes (profile keys `sandbox.protect_scan_depth` and
/// `sandbox.protect_scan_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    pub max_depth: usize,
    pub max_entries: usize,
}

/// Files at the top of a git directory that make git run code or read code-bearing config.
pub const CODE_FILES: &[&str] = &["config", "config.worktree", "commondir"];
/// Directories at the top of a git directory whose content is code (`hooks`) or names code
/// (`info/attributes` selects filter and diff drivers).
pub const CODE_DIRS: &[&str] = &["hooks", "info"];

/// Where a gitfile (`.git` as a file: `gitdir: PATH`) points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A workspace-relative directory.
    Beneath(PathBuf),
    /// Outside the workspace (or a path through `..` above it).
    Outside,
    /// Not a `gitdir:` line.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitFile {
    pub state: State,
    pub target: Target,
}

/// One git directory: the states of its code-bearing entries, by workspace-relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitDir {
    pub code: BTreeMap<PathBuf, State>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Scan {
    pub gitdirs: BTreeMap<PathBuf, GitDir>,
    pub gitfiles: BTreeMap<PathBuf, GitFile>,
    /// `.git` entries that are symlinks.
    pub git_symlinks: Vec<PathBuf>,
    /// Work-tree files that steer git (`.gitmodules`; `.gitattributes` by its driver lines).
    pub worktree_files: BTreeMap<PathBuf, State>,
    /// The walk stopped at `max_entries` (deeper or later entries were not seen).
    pub truncated: bool,
    pub entries: usize,
}

struct Walker<'a> {
    root: BorrowedFd<'a>,
    limits: ScanLimits,
    scan: Scan,
    buf: Vec<u8>,
}

/// Names the walk looks at besides directories (most entries are other files: dropped unread).
fn interesting(name: &[u8], kind: Option<Kind>) -> bool {
    kind != Some(Kind::File)
        || matches!(
            name,
            b".git" | b".gitattributes" | b".gitmodules" | b"HEAD" | b"config" | b"commondir"
        )
        || name.starts_with(b"config.")
        || name == b"attributes"
}

/// Walks the workspace `ws` (canonical; its root is opened refusing a symlink).
pub fn scan(ws: &Path, limits: ScanLimits) -> Result<Scan, Errno> {
    let root = fsx::open_root(ws)?;
    let mut w = Walker {
        root: root.as_fd(),
        limits,
        scan: Scan::default(),
        buf: vec![0u8; 32 << 10],
    };
    w.walk(ws)?;
    Ok(w.scan)
}

impl Walker<'_> {
    fn budget(&self) -> usize {
        self.limits.max_entries.saturating_sub(self.scan.entries)
    }

    /// Lists a directory within the entry budget; marks the scan truncated when cut. With
    /// `all`, every entry; otherwise directories and the names git cares about.
    fn list_some(&mut self, fd: BorrowedFd<'_>, all: bool) -> Vec<(Vec<u8>, Kind)> {
        let budget = self.budget();
        let (entries, seen, cut) =
            match fsx::list(fd, &mut self.buf, budget, |n, k| all || interesting(n, k)) {
                Ok(x) => x,
                Err(_) => return Vec::new(),
            };
        self.scan.entries += seen;
        if cut {
            self.scan.truncated = true;
        }
        entries
            .into_iter()
            .filter_map(|(n, k)| {
                let k = match k {
                    Some(k) => k,
                    None => fsx::kind_at(fd, &n).ok()?,
                };
                Some((n, k))
            })
            .collect()
    }

    /// Every entry of a directory (inside git directories: hooks are any name).
    fn list(&mut self, fd: BorrowedFd<'_>) -> Vec<(Vec<u8>, Kind)> {
        self.list_some(fd, true)
    }

    fn walk(&mut self, ws: &Path) -> Result<(), Errno> {
        // Breadth-first (shallow repositories are found before the budget runs out), with
        // paths, not fds: one directory open at a time however wide the tree.
        let mut queue = std::collections::VecDeque::from([(PathBuf::new(), 0usize)]);
        let mut first = true;
        while let Some((rel, depth)) = queue.pop_front() {
            if self.scan.truncated {
                break;
            }
            let fd = match fsx::open_dir_path(self.root, &rel) {
                Ok(fd) => fd,
                // The root must open; a subdirectory swapped for a symlink meanwhile is skipped.
                Err(e) if first => return Err(e),
                Err(_) => continue,
            };
            first = false;
            let entries = self.list_some(fd.as_fd(), false);
            if looks_bare(&entries) {
                self.gitdir(&rel, &fd, entries, depth);
                continue;
            }
            for (name, kind) in entries {
                if kind == Kind::File
                    && !matches!(
                        name.as_slice(),
                        b".git" | b".gitattributes" | b".gitmodules"
                    )
                {
                    continue;
                }
                let path = rel.join(os(&name));
                match (name.as_slice(), kind) {
                    (b".git", Kind::Dir) => {
                        if let Ok(g) = fsx::open_subdir(fd.as_fd(), &name) {
                            let entries = self.list(g.as_fd());
                            self.gitdir(&path, &g, entries, depth + 1);
                        }
                    }
                    (b".git", Kind::File) => self.gitfile(ws, &rel, &fd, path),
                    (b".git", Kind::Symlink) => self.scan.git_symlinks.push(path),
                    (b".gitattributes", Kind::File) => {
                        if let Ok(text) = fsx::read_small(fd.as_fd(), &name, 1 << 20) {
                            self.scan
                                .worktree_files
                                .insert(path, driver_lines_state(&text));
                        }
                    }
                    (b".gitmodules", Kind::File) => {
                        if let Ok(s) = fsx::state_at(fd.as_fd(), &name, Some(kind)) {
                            self.scan.worktree_files.insert(path, s);
                        }
                    }
                    (_, Kind::Dir) if depth < self.limits.max_depth => {
                        queue.push_back((path, depth + 1));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Records the git directory `rel` (already listed) and the git directories inside it
    /// (`modules/…` of submodules, `worktrees/*` of linked work trees).
    fn gitdir(&mut self, rel: &Path, fd: &OwnedFd, entries: Vec<(Vec<u8>, Kind)>, depth: usize) {
        if self.scan.gitdirs.contains_key(rel) {
            return;
        }
        let mut g = GitDir::default();
        let mut nested = Vec::new();
        for (name, kind) in entries {
            let Ok(n) = std::str::from_utf8(&name) else {
                continue;
            };
            let path = rel.join(n);
            if CODE_FILES.contains(&n) {
                if let Ok(s) = fsx::state_at(fd.as_fd(), &name, Some(kind)) {
                    g.code.insert(path, s);
                }
            } else if CODE_DIRS.contains(&n) {
                g.code.insert(path.clone(), state_of_kind(kind));
                if kind != Kind::Dir {
                    continue;
                }
                let Ok(d) = fsx::open_subdir(fd.as_fd(), &name) else {
                    continue;
                };
                for (child, ck) in self.list(d.as_fd()) {
                    let keep = if n == "hooks" {
                        !child.ends_with(b".sample")
                    } else {
                        child == b"attributes"
                    };
                    if keep && let Ok(s) = fsx::state_at(d.as_fd(), &child, Some(ck)) {
                        g.code.insert(path.join(os(&child)), s);
                    }
                }
            } else if (n == "modules" || n == "worktrees") && kind == Kind::Dir {
                nested.push(path);
            }
        }
        self.scan.gitdirs.insert(rel.to_path_buf(), g);
        // Submodule git directories may be nested (`modules/a/b` for a submodule named `a/b`,
        // and a submodule's own `modules/`): a directory holding `HEAD` is one.
        let mut stack: Vec<(PathBuf, usize)> = nested.into_iter().map(|p| (p, depth + 1)).collect();
        while let Some((p, d)) = stack.pop() {
            if self.scan.truncated || d > self.limits.max_depth + 4 {
                continue;
            }
            let Ok(sub) = fsx::open_dir_path(self.root, &p) else {
                continue;
            };
            let entries = self.list(sub.as_fd());
            for (name, kind) in entries {
                if kind != Kind::Dir {
                    continue;
                }
                let child = p.join(os(&name));
                let Ok(cfd) = fsx::open_subdir(sub.as_fd(), &name) else {
                    continue;
                };
                let centries = self.list(cfd.as_fd());
                if centries
                    .iter()
                    .any(|(n, _)| n == b"HEAD" || n == b"commondir")
                {
                    self.gitdir(&child, &cfd, centries, d + 1);
                } else {
                    stack.push((child, d + 1));
                }
            }
        }
    }

    fn gitfile(&mut self, ws: &Path, dir_rel: &Path, dir: &OwnedFd, path: PathBuf) {
        let Ok(text) = fsx::read_small(dir.as_fd(), b".git", 4096) else {
            return;
        };
        let state = fsx::state_at(dir.as_fd(), b".git", Some(Kind::File)).unwrap_or(State::Other);
        let target = gitfile_target(ws, dir_rel, &text);
        if let Target::Beneath(t) = &target
            && !self.scan.gitdirs.contains_key(t)
            && let Ok(fd) = fsx::open_dir_path(self.root, t)
        {
            let entries = self.list(fd.as_fd());
            let depth = t.components().count();
            self.gitdir(&t.clone(), &fd, entries, depth);
        }
        self.scan.gitfiles.insert(path, GitFile { state, target });
    }
}

fn os(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}

fn state_of_kind(k: Kind) -> State {
    match k {
        Kind::Dir => State::Dir,
        Kind::Symlink => State::Symlink,
        Kind::File | Kind::Other => State::Other,
    }
}

/// A directory that git would take for a bare repository: `HEAD`, `objects/` and `refs/`.
fn looks_bare(entries: &[(Vec<u8>, Kind)]) -> bool {
    let has = |n: &[u8], k: Kind| entries.iter().any(|(m, mk)| m == n && *mk == k);
    has(b"HEAD", Kind::File) && has(b"objects", Kind::Dir) && has(b"refs", Kind::Dir)
}

/// The lines of a `.gitattributes` that select drivers (`filter`, `diff`, `merge`), hashed:
/// other edits to the file are ordinary project work.
fn driver_lines_state(text: &[u8]) -> State {
    let mut h = Sha256::new();
    for line in text.split(|b| *b == b'\n') {
        let s = String::from_utf8_lossy(line);
        if s.split_whitespace().skip(1).any(|a| {
            ["filter", "diff", "merge"]
                .iter()
                .any(|d| a.trim_start_matches(['-', '!']).starts_with(d))
        }) {
            h.update(line);
            h.update(b"\n");
        }
    }
    State::File {
        sha256: h.finalize().into(),
        exec: false,
    }
}

/// Resolves a gitfile's `gitdir: PATH` lexically against the workspace (`dir_rel` holds the
/// gitfile). Symlinks are not followed: a target through one is whatever the walk finds there.
pub fn gitfile_target(ws: &Path, dir_rel: &Path, text: &[u8]) -> Target {
    let Ok(s) = std::str::from_utf8(text) else {
        return Target::Invalid;
    };
    let Some(p) = s.lines().next().and_then(|l| l.strip_prefix("gitdir:")) else {
        return Target::Invalid;
    };
    let p = Path::new(p.trim());
    if p.as_os_str().is_empty() {
        return Target::Invalid;
    }
    let (base, rest) = if p.is_absolute() {
        match p.strip_prefix(ws) {
            Ok(r) => (PathBuf::new(), r.to_path_buf()),
            Err(_) => return Target::Outside,
        }
    } else {
        (dir_rel.to_path_buf(), p.to_path_buf())
    };
    let mut out = base;
    for c in rest.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Target::Outside;
                }
            }
            Component::RootDir | Component::Prefix(_) => return Target::Outside,
        }
    }
    Target::Beneath(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const LIMITS: ScanLimits = ScanLimits {
        max_depth: 8,
        max_entries: 10_000,
    };

    fn repo(dir: &Path) {
        std::fs::create_dir_all(dir.join("hooks")).unwrap();
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::create_dir_all(dir.join("info")).unwrap();
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(dir.join("config"), "[core]\n").unwrap();
        std::fs::write(dir.join("hooks/pre-commit.sample"), "#!/bin/sh\n").unwrap();
    }

    #[test]
    fn finds_top_level_nested_modules_gitfiles_and_bare_repositories() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path();
        repo(&ws.join(".git"));
        repo(&ws.join("sub/.git"));
        repo(&ws.join(".git/modules/lib/a"));
        std::fs::create_dir_all(ws.join("lib/a")).unwrap();
        std::fs::write(ws.join("lib/a/.git"), "gitdir: ../../.git/modules/lib/a\n").unwrap();
        std::fs::write(ws.join("outside-link-file"), "x").unwrap();
        std::fs::create_dir_all(ws.join("w")).unwrap();
        std::fs::write(ws.join("w/.git"), "gitdir: /elsewhere/.git/worktrees/w\n").unwrap();
        repo(&ws.join("bare.git"));
        std::fs::write(ws.join(".git/hooks/pre-push"), "#!/bin/sh\n").unwrap();
        let s = scan(ws, LIMITS).unwrap();
        let dirs: Vec<_> = s.gitdirs.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(dirs, [".git", ".git/modules/lib/a", "bare.git", "sub/.git"]);
        let top = &s.gitdirs[Path::new(".git")];
        assert!(top.code.contains_key(Path::new(".git/config")));
        assert!(top.code.contains_key(Path::new(".git/hooks/pre-push")));
        assert!(
            !top.code
                .contains_key(Path::new(".git/hooks/pre-commit.sample"))
        );
        assert_eq!(
            s.gitfiles[Path::new("lib/a/.git")].target,
            Target::Beneath(".git/modules/lib/a".into())
        );
        assert_eq!(s.gitfiles[Path::new("w/.git")].target, Target::Outside);
        assert!(!s.truncated);
    }

    #[test]
    fn never_follows_a_git_symlink_and_reports_it() {
        let t = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        repo(&host.path().join("repo"));
        symlink(host.path().join("repo"), t.path().join(".git")).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        symlink(host.path(), t.path().join("d/link")).unwrap();
        let s = scan(t.path(), LIMITS).unwrap();
        assert_eq!(s.git_symlinks, [PathBuf::from(".git")]);
        assert!(s.gitdirs.is_empty());
    }

    #[test]
    fn the_walk_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::create_dir(t.path().join(format!("d{i}"))).unwrap();
        }
        repo(&t.path().join("a/b/c/d/.git"));
        let s = scan(
            t.path(),
            ScanLimits {
                max_depth: 8,
                max_entries: 10,
            },
        )
        .unwrap();
        assert!(s.truncated);
        let s = scan(
            t.path(),
            ScanLimits {
                max_depth: 2,
                max_entries: 10_000,
            },
        )
        .unwrap();
        assert!(s.gitdirs.is_empty(), "a/b/c/d is below depth 2");
    }

    #[test]
    fn gitfile_targets_resolve_lexically_beneath_the_workspace() {
        let ws = Path::new("/w");
        let t = |d: &str, s: &str| gitfile_target(ws, Path::new(d), s.as_bytes());
        assert_eq!(
            t("a", "gitdir: ../.git/modules/a\n"),
            Target::Beneath(".git/modules/a".into())
        );
        assert_eq!(t("", "gitdir: /w/x/.git"), Target::Beneath("x/.git".into()));
        assert_eq!(t("", "gitdir: ../../etc"), Target::Outside);
        assert_eq!(t("", "gitdir: /etc"), Target::Outside);
        assert_eq!(t("", "nonsense"), Target::Invalid);
    }

    #[test]
    fn gitattributes_changes_count_only_on_driver_lines() {
        let a = driver_lines_state(b"*.txt text\n*.bin filter=lfs\n");
        let b = driver_lines_state(b"*.md text\n*.bin filter=lfs\n");
        let c = driver_lines_state(b"*.txt text\n*.bin filter=evil\n");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
