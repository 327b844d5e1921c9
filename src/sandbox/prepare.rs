//! Turns a [`JobSpec`] into a [`Plan`]: decides the identity mapping, lays out the mount view
//! and the landlock rules that mirror it, resolves the exec candidates and the seccomp filters.
//! Runs in the parent, before the clone; allocation and filesystem inspection are fine here.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::landlock::{self, Access};
use super::plan::{LandlockRule, MountOp, Plan, cpath, pointer_array};
use super::protect::{Guard, GuardKind};
use super::{JobSpec, SetupError, seccomp, sys};
use crate::profile::Degradation;

/// Host uid/gid the sandbox runs as when the workspace belongs to root: never host root itself.
pub const DEFAULT_SANDBOX_ID: u32 = 2_000_000_000;

/// How the sandbox's ids relate to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid_inside: u32,
    pub gid_inside: u32,
    pub uid_outside: u32,
    pub gid_outside: u32,
    /// The workspace is root-owned and shown through an idmapped mount (`0 → outside`).
    pub idmap_workspace: bool,
}

impl Identity {
    /// Root run: the workspace owner's ids when those are not root's; a root-owned workspace is
    /// shown through an idmapped mount to an unprivileged `sandbox_id`. Unprivileged run: our
    /// own ids, identity-mapped.
    pub fn decide(euid: u32, egid: u32, ws_uid: u32, ws_gid: u32, sandbox_id: u32) -> Identity {
        if euid != 0 {
            return Identity {
                uid_inside: euid,
                gid_inside: egid,
                uid_outside: euid,
                gid_outside: egid,
                idmap_workspace: false,
            };
        }
        if ws_uid != 0 {
            // A daemon session's workspace belongs to its sandbox uid, and its group may be the
            // session owner's (so the agent can read it): the sandbox still gets its own gid,
            // never the agent's.
            let gid = if ws_gid != 0 && ws_uid != sandbox_id {
                ws_gid
            } else {
                sandbox_id
            };
            return Identity {
                uid_inside: ws_uid,
                gid_inside: gid,
                uid_outside: ws_uid,
                gid_outside: gid,
                idmap_workspace: false,
            };
        }
        Identity {
            uid_inside: 0,
            gid_inside: 0,
            uid_outside: sandbox_id,
            gid_outside: sandbox_id,
            idmap_workspace: true,
        }
    }
}

/// Top-level host directories that can never be a workspace (or contain one's mount point
/// above them): binding them read-write would hand the host to the sandbox.
const FORBIDDEN_WORKSPACES: &[&str] = &[
    "/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev",
    "/proc", "/sys", "/run", "/var", "/root", "/home", "/tmp",
];

/// Checks the workspace: absolute, canonical, a directory, not a system directory.
pub fn check_workspace(ws: &Path) -> Result<std::fs::Metadata, SetupError> {
    let bad = |message: String, fix: &str| SetupError::Workspace {
        path: ws.to_path_buf(),
        message,
        fix: fix.to_string(),
    };
    let meta = std::fs::metadata(ws).map_err(|e| {
        bad(
            format!("cannot be read: {e}"),
            "pass an existing directory with --workspace",
        )
    })?;
    if !meta.is_dir() {
        return Err(bad(
            "is not a directory".into(),
            "pass a directory with --workspace",
        ));
    }
    if FORBIDDEN_WORKSPACES.iter().any(|f| ws == Path::new(f)) {
        return Err(bad(
            "is a system directory; mounting it read-write would expose the host".into(),
            "use a project directory such as /srv/agent/work",
        ));
    }
    Ok(meta)
}

/// Paths (inside the new root) that must exist as directories before `target` can be mounted.
fn ancestors_of(target: &Path, out: &mut BTreeSet<PathBuf>) {
    let mut p = PathBuf::from("/");
    let comps: Vec<_> = target.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        if let Component::Normal(n) = c {
            p.push(n);
            out.insert(p.clone());
        }
    }
}

fn c(p: &Path) -> Result<CString, SetupError> {
    cpath(p).map_err(|_| SetupError::Prepare(format!("path {} contains a NUL byte", p.display())))
}

/// What a read-only entry is on the host.
enum HostKind {
    Dir,
    File,
    Symlink(PathBuf),
}

fn host_kind(p: &Path) -> Option<HostKind> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if m.file_type().is_symlink() {
        return std::fs::read_link(p).ok().map(HostKind::Symlink);
    }
    if m.is_dir() {
        Some(HostKind::Dir)
    } else {
        Some(HostKind::File)
    }
}

/// Where the job's resolver configuration lives.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Device nodes bound into the minimal `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// Builds the plan. `stdio`, `report_fd` and `sync_fd` are the parent's fds the child inherits.
pub fn build(
    spec: &JobSpec,
    guards: &[Guard],
    identity: Identity,
    landlock_abi: Option<u32>,
    degraded: &mut Vec<Degradation>,
) -> Result<Plan, SetupError> {
    let ws = &spec.workspace;
    let mut mounts = Vec::new();
    let mut post = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut slots = 0usize;
    let mut next_slot = || {
        slots += 1;
        slots - 1
    };
    let ro = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let rw = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let mut ll_rules: Vec<(PathBuf, u64)> = vec![(PathBuf::from("/"), Access::LIST)];

    // System paths, read-only, at the same place. Symlinks (usrmerge) are recreated as links.
    let mut symlinks = Vec::new();
    for p in &spec.sandbox.read_only {
        // The supervisor's resolver replaces the host's in allowlist mode.
        if spec.sandbox.egress.is_some() && p == Path::new(RESOLV_CONF) {
            continue;
        }
        match host_kind(p) {
            None => continue,
            Some(HostKind::Symlink(target)) => symlinks.push((p.clone(), target)),
            Some(kind) => {
                let slot = next_slot();
                mounts.push(MountOp::CloneTree {
                    src: c(p)?,
                    slot,
                    attrs: ro,
                    display: p.clone(),
                });
                ancestors_of(p, &mut dirs);
                let is_dir = matches!(kind, HostKind::Dir);
                post.push((p.clone(), is_dir, slot));
                ll_rules.push((
                    p.clone(),
                    if is_dir {
                        Access::READ_EXEC_DIR
                    } else {
                        Access::READ_FILE_ONLY
                    },
                ));
            }
        }
    }
    // Extra read-write host paths.
    for p in &spec.sandbox.read_write {
        let meta = std::fs::metadata(p).map_err(|e| SetupError::Prepare(format!(
            "read-write path {} from the policy cannot be used: {e}; create it or remove it from sandbox.read_write",
            p.display()
        )))?;
        let slot = next_slot();
        mounts.push(MountOp::CloneTree {
            src: c(p)?,
            slot,
            attrs: rw,
            display: p.clone(),
        });
        ancestors_of(p, &mut dirs);
        post.push((p.clone(), meta.is_dir(), slot));
        ll_rules.push((
            p.clone(),
            if meta.is_dir() {
                Access::READ_WRITE_DIR
            } else {
                Access::READ_WRITE_FILE
            },
        ));
    }
    // Device nodes: keep them usable (no nodev), but never executable.
    let mut dev_slots = Vec::new();
    for name in DEV_NODES {
        let host = PathBuf::from("/dev").join(name);
        let slot = next_slot();
        mounts.push(MountOp::CloneTree {
            src: c(&host)?,
            slot,
            attrs: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
            display: host.clone(),
        });
        dev_slots.push((host, slot));
    }
    // The workspace: cloned here, or idmapped by the parent and received over the socket.
    // A session given its parent's workspace read-only sees it read-only, pins included.
    let ws_attrs = if spec.sandbox.workspace_read_only {
        ro
    } else {
        rw
    };
    let ws_slot = if identity.idmap_workspace {
        None
    } else {
        let slot = next_slot();
        mounts.push(MountOp::CloneTree {
            src: c(ws)?,
            slot,
            attrs: ws_attrs,
            display: ws.clone(),
        });
        Some(slot)
    };
    let proc_slot = next_slot();
    mounts.push(MountOp::NewProc { slot: proc_slot });
    mounts.push(MountOp::PivotIntoTmpfs {
        base: c(Path::new("/tmp"))?,
    });

    // --- After pivot_root: build the view in the empty tmpfs root. ---
    for d in &dirs {
        mounts.push(MountOp::Mkdir { path: c(d)? });
    }
    post.sort_by_key(|(p, _, _)| p.components().count());
    for (p, is_dir, slot) in post {
        mounts.push(if is_dir {
            MountOp::Mkdir { path: c(&p)? }
        } else {
            MountOp::Touch { path: c(&p)? }
        });
        mounts.push(MountOp::Attach {
            slot,
            target: c(&p)?,
            display: p,
        });
    }
    for (link, target) in symlinks {
        mounts.push(MountOp::Symlink {
            target: c(&target)?,
            path: c(&link)?,
        });
    }
    mounts.push(MountOp::Mkdir {
        path: c(Path::new("/proc"))?,
    });
    mounts.push(MountOp::Attach {
        slot: proc_slot,
        target: c(Path::new("/proc"))?,
        display: "/proc".into(),
    });
    // A read-only view of /proc/sys on top of the fresh /proc (defence in depth: writes there
    // already need host root, which the sandbox never has).
    mounts.push(MountOp::Rebind {
        src: c(Path::new("/proc/sys"))?,
        target: c(Path::new("/proc/sys"))?,
        attrs: ro,
        display: "/proc/sys".into(),
    });
    ll_rules.push((PathBuf::from("/proc"), Access::READ_DIR_FILES));

    mounts.push(MountOp::Mkdir {
        path: c(Path::new("/dev"))?,
    });
    mounts.push(MountOp::Tmpfs {
        target: c(Path::new("/dev"))?,
        data: CString::from(c"mode=0755,size=64k,nr_inodes=64"),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
    });
    for (host, slot) in dev_slots {
        mounts.push(MountOp::Touch { path: c(&host)? });
        mounts.push(MountOp::Attach {
            slot,
            target: c(&host)?,
            display: host,
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        mounts.push(MountOp::Symlink {
            target: CString::new(target).unwrap_or_default(),
            path: c(&Path::new("/dev").join(link))?,
        });
    }
    mounts.push(MountOp::Mkdir {
        path: c(Path::new("/dev/shm"))?,
    });
    mounts.push(MountOp::Tmpfs {
        target: c(Path::new("/dev/shm"))?,
        data: CString::from(c"mode=1777"),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    });
    mounts.push(MountOp::RemountReadOnly {
        target: c(Path::new("/dev"))?,
    });
    ll_rules.push((PathBuf::from("/dev"), Access::DEVICES));
    ll_rules.push((PathBuf::from("/dev/shm"), Access::READ_WRITE_DIR));

    mounts.push(MountOp::Mkdir {
        path: c(Path::new("/tmp"))?,
    });
    mounts.push(MountOp::Tmpfs {
        target: c(Path::new("/tmp"))?,
        data: CString::from(c"mode=1777"),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
    });
    ll_rules.push((PathBuf::from("/tmp"), Access::READ_WRITE_DIR));

    let mut ws_dirs = BTreeSet::new();
    ancestors_of(ws, &mut ws_dirs);
    for d in &ws_dirs {
        mounts.push(MountOp::Mkdir { path: c(d)? });
    }
    mounts.push(MountOp::Mkdir { path: c(ws)? });
    match ws_slot {
        Some(slot) => mounts.push(MountOp::Attach {
            slot,
            target: c(ws)?,
            display: ws.clone(),
        }),
        None => mounts.push(MountOp::AttachReceived {
            target: c(ws)?,
            display: ws.clone(),
        }),
    }
    ll_rules.push((
        ws.clone(),
        if spec.sandbox.workspace_read_only {
            Access::READ_EXEC_DIR
        } else {
            Access::READ_WRITE_DIR
        },
    ));

    // Guards from `protect` (parents first): git directories and the ancestors of protected
    // and hidden paths pinned in place, code-bearing entries read-only, hidden paths covered.
    for g in guards {
        let p = ws.join(&g.rel);
        mounts.push(match g.kind {
            GuardKind::Pin => MountOp::Rebind {
                src: c(&p)?,
                target: c(&p)?,
                attrs: ws_attrs,
                display: p,
            },
            GuardKind::ReadOnly => MountOp::Rebind {
                src: c(&p)?,
                target: c(&p)?,
                attrs: ro,
                display: p,
            },
            GuardKind::HideDir => MountOp::Tmpfs {
                target: c(&p)?,
                data: CString::from(c"mode=0000,size=4k,nr_inodes=1"),
                flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            },
            GuardKind::HideFile => MountOp::HideFile {
                target: c(&p)?,
                display: p,
            },
        });
    }
    // `network = "allowlist"`: the job's resolver is the supervisor (`crate::net`).
    let capture = match &spec.sandbox.egress {
        Some(egress) => {
            mounts.push(MountOp::Mkdir {
                path: c(Path::new("/etc"))?,
            });
            mounts.push(MountOp::WriteFile {
                path: c(Path::new(RESOLV_CONF))?,
                content: crate::net::RESOLV_CONF,
            });
            ll_rules.push((PathBuf::from(RESOLV_CONF), Access::READ_FILE_ONLY));
            crate::net::capture_sockets(egress)
        }
        None => Vec::new(),
    };
    mounts.push(MountOp::RemountReadOnly {
        target: c(Path::new("/"))?,
    });

    // Landlock, mirroring the mount view.
    let landlock = match landlock_abi {
        Some(abi) => Some(landlock::plan(
            abi,
            &ll_rules,
            &spec.sandbox.degradable(),
            degraded,
        )?),
        None => None,
    };

    // Exec: the program as given, or each PATH entry in order.
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/bin:/bin");
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SetupError::Prepare("empty command".into()))?;
    let exec_candidates: Vec<CString> = if program.contains('/') {
        vec![cstr(program)?]
    } else {
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| cstr(&format!("{}/{}", d.trim_end_matches('/'), program)))
            .collect::<Result<_, _>>()?
    };
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let seccomp = seccomp::filters(&spec.sandbox.seccomp)
        .ok_or_else(|| {
            SetupError::Prepare(format!(
                "unknown seccomp profile {:?}",
                spec.sandbox.seccomp
            ))
        })?
        .iter()
        .map(|f| f.program)
        .collect();
    let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    let cwd = spec.cwd.clone().unwrap_or_else(|| ws.clone());

    let argv_ptrs = pointer_array(&argv);
    let envp_ptrs = pointer_array(&envp);
    Ok(Plan {
        uid_inside: identity.uid_inside,
        gid_inside: identity.gid_inside,
        mounts,
        slots: vec![-1; slots],
        hostname: b"execbox",
        loopback_up: true,
        capture,
        cwd: c(&cwd)?,
        nofile: spec.limits.nofile,
        landlock,
        seccomp,
        cap_last,
        exec_candidates,
        argv,
        argv_ptrs,
        envp,
        envp_ptrs,
        stdio: [-1; 3],
        report_fd: -1,
        sync_fd: -1,
    })
}

fn cstr(s: &str) -> Result<CString, SetupError> {
    CString::new(s).map_err(|_| SetupError::Prepare(format!("{s:?} contains a NUL byte")))
}

/// Host ids of this process.
pub fn current_ids() -> (u32, u32) {
    (sys::geteuid(), sys::getegid())
}

/// The workspace owner's ids.
pub fn owner(meta: &std::fs::Metadata) -> (u32, u32) {
    (meta.uid(), meta.gid())
}

/// Landlock rules as planned, for tests and `--json`.
pub fn rule_paths(plan: &Plan) -> Vec<String> {
    plan.landlock
        .iter()
        .flat_map(|l| l.rules.iter())
        .map(|r: &LandlockRule| r.path.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_never_maps_to_host_root() {
        let id = Identity::decide(0, 0, 0, 0, DEFAULT_SANDBOX_ID);
        assert_eq!(
            (id.uid_outside, id.gid_outside),
            (DEFAULT_SANDBOX_ID, DEFAULT_SANDBOX_ID)
        );
        assert!(id.idmap_workspace);
        let id = Identity::decide(0, 0, 1000, 0, DEFAULT_SANDBOX_ID);
        assert_eq!((id.uid_outside, id.gid_outside), (1000, DEFAULT_SANDBOX_ID));
        assert!(!id.idmap_workspace);
        let id = Identity::decide(1000, 1000, 0, 0, DEFAULT_SANDBOX_ID);
        assert_eq!((id.uid_inside, id.uid_outside), (1000, 1000));
        // A daemon session's workspace: the sandbox uid, the owner's group; the sandbox gets
        // its own gid, not the owner's.
        let id = Identity::decide(0, 0, 2_000_000_001, 1000, 2_000_000_001);
        assert_eq!(
            (id.uid_outside, id.gid_outside),
            (2_000_000_001, 2_000_000_001)
        );
        let id = Identity::decide(0, 0, 1000, 1000, DEFAULT_SANDBOX_ID);
        assert_eq!((id.uid_outside, id.gid_outside), (1000, 1000));
    }

    #[test]
    fn system_directories_are_refused_as_workspaces() {
        for p in ["/", "/usr", "/etc", "/home", "/tmp"] {
            assert!(check_workspace(Path::new(p)).is_err(), "{p}");
        }
        let t = tempfile::tempdir().unwrap();
        assert!(check_workspace(t.path()).is_ok());
        assert!(check_workspace(&t.path().join("missing")).is_err());
    }

    #[test]
    fn ancestors_are_listed_parent_first() {
        let mut s = BTreeSet::new();
        ancestors_of(Path::new("/a/b/c"), &mut s);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![PathBuf::from("/a"), PathBuf::from("/a/b")]
        );
    }
}
