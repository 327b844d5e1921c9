//! Kernel features the sandbox is built from: user namespaces (and the sysctls and AppArmor
//! setting that restrict them), every namespace type, landlock, seccomp, a fresh `/proc`,
//! pidfd/clone3 and idmapped mounts.
//!
//! The decisions are pure functions of values read from the host (`userns_check`,
//! `landlock_check`, `seccomp_check`), unit-tested with made-up values; the probes that must
//! really try (namespaces, `/proc`, idmap) fork a child, because what they try is irreversible
//! for the process that tries it. Must never leave a mount or a namespace behind in this
//! process.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{Check, Context};
use crate::profile::{Degradation, Profile};
use crate::sandbox::sys::{self, Errno};

/// Where sysctls live; tests point the readers at a temp dir instead.
pub const PROC_SYS: &str = "/proc/sys";

pub fn checks(cx: &Context) -> Vec<Check> {
    let sysctls = UsernsSysctls::read(Path::new(PROC_SYS));
    let profiles: Vec<(String, Vec<Degradation>)> = match cx.loaded() {
        Some(c) => c
            .profiles
            .iter()
            .map(|(n, p)| (n.clone(), p.sandbox.degradable()))
            .collect(),
        // Without a config, `execbox run` uses the embedded default profile.
        None => Profile::embedded_default()
            .map(|p| vec![("default".to_string(), p.sandbox.degradable())])
            .unwrap_or_default(),
    };
    vec![
        userns_check(&sysctls, cx.euid),
        namespaces_check(),
        landlock_check(sys::landlock_abi(), &profiles),
        seccomp_check(
            std::fs::read_to_string(Path::new(PROC_SYS).join("kernel/seccomp/actions_avail")).ok(),
            std::fs::read_to_string("/proc/self/status")
                .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:"))),
        ),
        proc_check(),
        pidfd_check(),
        clone3_check(sys::clone3_probe()),
        idmap_check(cx),
    ]
}

// ---------------------------------------------------------------------------------------------
// User namespaces: sysctls and AppArmor
// ---------------------------------------------------------------------------------------------

/// The knobs distributions use to restrict user namespaces (`None`: the kernel has no such
/// sysctl).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsernsSysctls {
    /// Debian's patch: 0 refuses user namespaces to unprivileged processes.
    pub unprivileged_userns_clone: Option<u64>,
    /// 0 refuses user namespaces to everyone, root included.
    pub max_user_namespaces: Option<u64>,
    /// Ubuntu ≥ 23.10: 1 confines unprivileged user namespaces unless an AppArmor profile
    /// grants `userns`.
    pub apparmor_restrict: Option<u64>,
}

impl UsernsSysctls {
    pub fn read(proc_sys: &Path) -> UsernsSysctls {
        let read = |rel: &str| {
            std::fs::read_to_string(proc_sys.join(rel))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        UsernsSysctls {
            unprivileged_userns_clone: read("kernel/unprivileged_userns_clone"),
            max_user_namespaces: read("user/max_user_namespaces"),
            apparmor_restrict: read("kernel/apparmor_restrict_unprivileged_userns"),
        }
    }
}

/// The AppArmor profile that lets an unprivileged execbox create user namespaces on Ubuntu
/// 24.04 while keeping the restriction for everything else.
pub const APPARMOR_FIX: &str = "Ubuntu 24.04: allow user namespaces for execbox only: \
    printf 'abi <abi/4.0>,\\ninclude <tunables/global>\\nprofile execbox /usr/bin/execbox flags=(unconfined) {\\n  userns,\\n}\\n' \
    > /etc/apparmor.d/execbox && apparmor_parser -r /etc/apparmor.d/execbox \
    (or, for every program: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 and the same line in /etc/sysctl.d/90-execbox.conf; \
    or run the daemon as root, as the packaged service does)";

pub fn userns_check(s: &UsernsSysctls, euid: u32) -> Check {
    const ID: &str = "kernel.userns";
    const TITLE: &str = "user namespaces allowed";
    let show = |v: Option<u64>| v.map_or("absent".to_string(), |v| v.to_string());
    let who = if euid == 0 {
        "running as root (the restrictions on unprivileged user namespaces do not apply)".into()
    } else {
        format!("running as uid {euid} (rootless: unprivileged user namespaces are required)")
    };
    let evidence = format!(
        "{who}; kernel.unprivileged_userns_clone={}, user.max_user_namespaces={}, \
         kernel.apparmor_restrict_unprivileged_userns={}",
        show(s.unprivileged_userns_clone),
        show(s.max_user_namespaces),
        show(s.apparmor_restrict)
    );
    if s.max_user_namespaces == Some(0) {
        return Check::fail(
            ID,
            TITLE,
            format!(
                "{evidence}: user.max_user_namespaces=0 refuses them to every process, root included"
            ),
            "sysctl -w user.max_user_namespaces=15000 and put `user.max_user_namespaces = 15000` in /etc/sysctl.d/90-execbox.conf",
        );
    }
    if euid != 0 {
        if s.unprivileged_userns_clone == Some(0) {
            return Check::fail(
                ID,
                TITLE,
                evidence,
                "sysctl -w kernel.unprivileged_userns_clone=1 and put `kernel.unprivileged_userns_clone = 1` in /etc/sysctl.d/90-execbox.conf (or run the daemon as root)",
            );
        }
        if s.apparmor_restrict == Some(1) {
            return Check::fail(ID, TITLE, evidence, APPARMOR_FIX);
        }
    }
    Check::ok(ID, TITLE, evidence)
}

// ---------------------------------------------------------------------------------------------
// Probes in a forked child
// ---------------------------------------------------------------------------------------------

/// What a probe child reports: `(step, errno)`, step 0 = success.
type Record = (u32, i32);

fn report(fd: RawFd, (step, errno): Record) {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&step.to_ne_bytes());
    b[4..].copy_from_slice(&errno.to_ne_bytes());
    let _ = sys::write_all(fd, &b);
}

/// Why a probe gave no answer.
#[derive(Debug)]
enum ProbeError {
    /// This process has threads (or fork failed): the probe was not run.
    Fork(Errno),
    /// The child died without reporting.
    NoReport,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Fork(Errno(libc::EDEADLK)) => {
                write!(f, "not probed: this process has threads and must not fork")
            }
            ProbeError::Fork(e) => write!(f, "not probed: fork failed: {}", e.describe()),
            ProbeError::NoReport => write!(f, "the probe child died without reporting"),
        }
    }
}

/// Runs `f` in a forked child (this process must be single-threaded); its `Err((step, errno))`
/// or success comes back over a pipe. `f` gets the pipe's write end so that a grandchild can
/// report first (the first record read is the answer).
fn in_child(f: impl FnOnce(RawFd) -> Result<(), Record>) -> Result<Record, ProbeError> {
    let (mut r, w) = std::io::pipe().map_err(|_| ProbeError::NoReport)?;
    let w: OwnedFd = w.into();
    let wfd = w.as_raw_fd();
    let pid = sys::fork_single_threaded(|| {
        let rec = match f(wfd) {
            Ok(()) => (0, 0),
            Err(rec) => rec,
        };
        report(wfd, rec);
        sys::exit(0)
    })
    .map_err(ProbeError::Fork)?;
    drop(w);
    let mut b = [0u8; 8];
    let got = r.read_exact(&mut b);
    // Wait for the child even when it reported, so no zombie is left.
    let _ = sys::waitpid(pid);
    got.map_err(|_| ProbeError::NoReport)?;
    let step = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let errno = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    Ok((step, errno))
}

/// The namespace types the sandbox creates, each with its flag (`docs/ARCHITECTURE.md`).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("user", 0),
    ("mnt", libc::CLONE_NEWNS),
    ("pid", libc::CLONE_NEWPID),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// Every namespace type, created the way the sandbox does: together with a new user
/// namespace (so the answer is the same for root and rootless).
fn namespaces_check() -> Check {
    const ID: &str = "kernel.namespaces";
    const TITLE: &str = "every namespace type creatable";
    let mut made = Vec::new();
    let mut failed = Vec::new();
    for (name, flag) in NAMESPACES {
        match in_child(|_| sys::unshare(libc::CLONE_NEWUSER | flag).map_err(|e| (1, e.0))) {
            Ok((0, _)) => made.push(*name),
            Ok((_, errno)) => failed.push(format!("{name}: {}", Errno(errno).describe())),
            Err(e) => {
                return Check::warn(
                    ID,
                    TITLE,
                    e.to_string(),
                    "run `execbox doctor` from a shell (a single-threaded process)",
                );
            }
        }
    }
    if failed.is_empty() {
        Check::ok(ID, TITLE, format!("created {}", made.join(", ")))
    } else {
        Check::fail(
            ID,
            TITLE,
            format!(
                "created [{}]; refused: {}",
                made.join(", "),
                failed.join("; ")
            ),
            "see kernel.userns above for the sysctl or AppArmor fix; inside a container, the runtime's \
             seccomp profile or missing privileges refuse unshare(2): run execbox on the host or in a \
             privileged container",
        )
    }
}

/// A fresh procfs in a new user+pid+mount namespace, mounted over `/proc` as the sandbox's
/// pid 1 does. A container that masks parts of `/proc` makes the kernel refuse this.
fn proc_check() -> Check {
    const ID: &str = "kernel.proc";
    const TITLE: &str = "fresh /proc mountable";
    let res = in_child(|w| {
        sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS)
            .map_err(|e| (1, e.0))?;
        // The new pid namespace starts with the next child; it mounts and reports itself.
        let pid = sys::fork(|| {
            let rec = sys::new_detached_mount(c"proc", 0)
                .map_err(|e| (2, e.0))
                .and_then(|fd| {
                    let r = sys::move_mount_fd(fd, c"/proc").map_err(|e| (3, e.0));
                    sys::close(fd);
                    r
                });
            report(w, rec.err().unwrap_or((0, 0)));
            sys::exit(0)
        })
        .map_err(|e| (4, e.0))?;
        sys::waitpid(pid).map(drop).map_err(|e| (5, e.0))
    });
    let step_name = |s| match s {
        1 => "unshare(user+pid+mnt)",
        2 => "fsopen/fsmount proc",
        3 => "move_mount onto /proc",
        4 => "fork into the pid namespace",
        _ => "wait",
    };
    match res {
        Ok((0, _)) => Check::ok(
            ID,
            TITLE,
            "mounted a new procfs in a user+pid+mount namespace",
        ),
        Ok((step, errno)) => Check::fail(
            ID,
            TITLE,
            format!("{} failed: {}", step_name(step), Errno(errno).describe()),
            "a container that masks /proc (read-only or overmounted /proc/sys, /proc/kcore…) refuses new proc mounts: \
             run execbox on the host, or give the container an unmasked /proc (e.g. podman --security-opt unmask=/proc/*)",
        ),
        Err(e) => Check::warn(
            ID,
            TITLE,
            e.to_string(),
            "run `execbox doctor` from a shell",
        ),
    }
}

fn pidfd_check() -> Check {
    const ID: &str = "kernel.pidfd";
    const TITLE: &str = "pidfd_open available";
    match sys::pidfd_open(sys::getpid()) {
        Ok(_) => Check::ok(ID, TITLE, "pidfd_open(self) returned a pidfd"),
        Err(e) => Check::fail(
            ID,
            TITLE,
            format!("pidfd_open: {}", e.describe()),
            "execbox waits for and kills jobs through pidfds: use Linux ≥ 5.4 (or allow pidfd_open in the container's seccomp profile)",
        ),
    }
}

pub fn clone3_check(probe: Errno) -> Check {
    const ID: &str = "kernel.clone3";
    const TITLE: &str = "clone3 available";
    match probe.0 {
        libc::ENOSYS => Check::warn(
            ID,
            TITLE,
            "clone3 returned ENOSYS (kernel < 5.3, or filtered by a container's seccomp profile)",
            "not needed today (jobs are created with clone); spawning directly into a cgroup v2 (CLONE_INTO_CGROUP) will need Linux ≥ 5.7",
        ),
        libc::EINVAL | libc::E2BIG | libc::EFAULT => Check::ok(
            ID,
            TITLE,
            format!(
                "clone3(NULL, 0) answered {} (the call exists)",
                probe.describe()
            ),
        ),
        _ => Check::warn(
            ID,
            TITLE,
            format!("clone3(NULL, 0) answered {}", probe.describe()),
            "unexpected answer: check the container's seccomp profile",
        ),
    }
}

/// Idmapped mounts (root only): a throwaway user namespace mapping `0 → 65534`, and
/// `open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` on the filesystem of the workspaces. The
/// detached mount is never attached and disappears with its fd.
fn idmap_check(cx: &Context) -> Check {
    const ID: &str = "kernel.idmap";
    const TITLE: &str = "idmapped mounts";
    if cx.euid != 0 {
        return Check::ok(
            ID,
            TITLE,
            "n/a: unprivileged, workspaces are shown with an identity mapping",
        );
    }
    let target = cx
        .loaded()
        .map(|c| vec![c.workspace_root.clone(), c.state_dir.clone()])
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    match probe_idmap(&target) {
        Ok(()) => Check::ok(
            ID,
            TITLE,
            format!(
                "open_tree + mount_setattr(MOUNT_ATTR_IDMAP) on {}",
                target.display()
            ),
        ),
        Err(e) => Check::warn(
            ID,
            TITLE,
            format!("{} on {}", e, target.display()),
            "`execbox run` as root in a root-owned workspace needs idmapped mounts (Linux ≥ 5.12 and a filesystem that \
             supports them: ext4, xfs, btrfs, tmpfs ≥ 6.3); put the workspaces on such a filesystem. Daemon sessions \
             (workspaces owned by their sandbox uid) do not need them",
        ),
    }
}

fn probe_idmap(target: &Path) -> Result<(), String> {
    let target_c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| "path contains a NUL byte".to_string())?;
    let pipe = || std::io::pipe().map_err(|e| format!("pipe: {e}"));
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let ready_w: OwnedFd = ready_w.into();
    let go_r: OwnedFd = go_r.into();
    let go_w: OwnedFd = go_w.into();
    let (ready_fd, go_rfd, go_wfd) = (ready_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
    let pid = sys::fork_single_threaded(|| {
        // Our copy of the write end would keep the read below from ever seeing EOF.
        sys::close(go_wfd);
        let ok = sys::unshare(libc::CLONE_NEWUSER).is_ok();
        let _ = sys::write_all(ready_fd, &[ok as u8]);
        // Hold the namespace until the parent is done (EOF when it closes its end).
        let mut b = [0u8; 1];
        let _ = sys::read(go_rfd, &mut b);
        sys::exit(0)
    })
    .map_err(|e| ProbeError::Fork(e).to_string())?;
    drop(ready_w);
    drop(go_r);
    let result = (|| {
        let mut b = [0u8; 1];
        ready_r
            .read_exact(&mut b)
            .map_err(|_| "the probe child died".to_string())?;
        if b[0] != 1 {
            return Err("unshare(CLONE_NEWUSER) refused".into());
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        for map in ["uid_map", "gid_map"] {
            std::fs::write(proc_dir.join(map), "0 65534 1\n")
                .map_err(|e| format!("write {map}: {e}"))?;
        }
        let userns = std::fs::File::open(proc_dir.join("ns/user"))
            .map_err(|e| format!("open the user namespace: {e}"))?;
        let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
        let tree = sys::open_tree(&target_c, flags)
            .map(sys::owned)
            .map_err(|e| format!("open_tree: {}", e.describe()))?;
        sys::mount_setattr_fd(
            tree.as_raw_fd(),
            false,
            libc::MOUNT_ATTR_IDMAP,
            0,
            Some(userns.as_raw_fd()),
        )
        .map_err(|e| format!("mount_setattr(MOUNT_ATTR_IDMAP): {}", e.describe()))
    })();
    drop(go_w);
    let _ = sys::waitpid(pid);
    result
}

// ---------------------------------------------------------------------------------------------
// Landlock and seccomp
// ---------------------------------------------------------------------------------------------

/// What a landlock ABI lacks, as the named degradations a profile would have to allow.
pub fn landlock_missing(abi: Result<u32, Errno>) -> Vec<Degradation> {
    match abi {
        Err(_) | Ok(0) => vec![Degradation::Landlock],
        Ok(1..=5) => vec![Degradation::LandlockScope],
        Ok(_) => vec![],
    }
}

/// ABI ≥ 6 is complete. Below, the jobs of every profile that may not run without the missing
/// layers fail closed (exit 126): a failure if any profile is in that case, else a warning
/// naming the degradation its jobs report. `profiles` pairs each name with what it may run
/// without ([`crate::profile::SandboxProfile::degradable`]: second layers unless required,
/// and what `allow_degraded` names).
pub fn landlock_check(abi: Result<u32, Errno>, profiles: &[(String, Vec<Degradation>)]) -> Check {
    const ID: &str = "kernel.landlock";
    const TITLE: &str = "landlock ABI ≥ 6";
    let shown = match abi {
        Ok(v) => format!("landlock ABI {v}"),
        Err(Errno(libc::EOPNOTSUPP)) => "landlock disabled at boot (EOPNOTSUPP)".into(),
        Err(Errno(libc::ENOSYS)) => "landlock not built into this kernel (ENOSYS)".into(),
        Err(e) => format!("landlock unavailable: {}", e.describe()),
    };
    let missing = landlock_missing(abi);
    if missing.is_empty() {
        return Check::ok(ID, TITLE, format!("{shown}: filesystem and scoping rules"));
    }
    let names: Vec<&str> = missing.iter().map(|d| d.name()).collect();
    let what = match missing[0] {
        Degradation::Landlock => "no landlock at all",
        _ => {
            "no signal/abstract-socket scoping (ABI 6); a second layer behind the job's pid and \
             network namespaces"
        }
    };
    let strict: Vec<&str> = profiles
        .iter()
        .filter(|(_, allowed)| missing.iter().any(|d| !allowed.contains(d)))
        .map(|(n, _)| n.as_str())
        .collect();
    let evidence = format!("{shown}: {what}; degradation names: {}", names.join(", "));
    let quoted = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let fix = if missing.iter().all(|d| d.is_second_layer()) {
        format!(
            "use Linux ≥ 6.12 with landlock enabled (lsm=…,landlock on the kernel command line), or \
             remove {quoted} from [sandbox] require in the profile(s) that list it"
        )
    } else {
        format!(
            "use Linux ≥ 6.12 with landlock enabled (lsm=…,landlock on the kernel command line), or \
             accept the weaker sandbox in a profile: [sandbox] allow_degraded = [{quoted}]"
        )
    };
    if strict.is_empty() {
        Check::warn(
            ID,
            TITLE,
            format!(
                "{evidence} (every profile runs without them; each job reports them as degraded)"
            ),
            fix,
        )
    } else {
        Check::fail(
            ID,
            TITLE,
            format!(
                "{evidence}; jobs of profile(s) {} would fail (exit 126)",
                strict.join(", ")
            ),
            fix,
        )
    }
}

/// The filter actions the compiled filters use (`seccomp/*.json`, `build.rs`).
const SECCOMP_ACTIONS: &[&str] = &["allow", "errno", "kill_process"];

pub fn seccomp_check(actions_avail: Option<String>, status_has_seccomp: bool) -> Check {
    const ID: &str = "kernel.seccomp";
    const TITLE: &str = "seccomp filters";
    match actions_avail {
        Some(a) => {
            let have: Vec<&str> = a.split_whitespace().collect();
            let missing: Vec<&str> = SECCOMP_ACTIONS
                .iter()
                .copied()
                .filter(|x| !have.contains(x))
                .collect();
            if missing.is_empty() {
                Check::ok(ID, TITLE, format!("actions_avail: {}", have.join(" ")))
            } else {
                Check::fail(
                    ID,
                    TITLE,
                    format!(
                        "actions_avail: {} (missing {})",
                        have.join(" "),
                        missing.join(", ")
                    ),
                    "use a kernel with CONFIG_SECCOMP_FILTER and SECCOMP_RET_KILL_PROCESS (Linux ≥ 4.14)",
                )
            }
        }
        None if status_has_seccomp => Check::warn(
            ID,
            TITLE,
            "/proc/sys/kernel/seccomp/actions_avail unreadable, but /proc/self/status has a Seccomp field",
            "make /proc/sys readable to execbox (a container may hide it)",
        ),
        None => Check::fail(
            ID,
            TITLE,
            "no seccomp support (no actions_avail, no Seccomp field in /proc/self/status)",
            "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn sysctls(dir: &Path, files: &[(&str, &str)]) -> UsernsSysctls {
        for (rel, v) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        UsernsSysctls::read(dir)
    }

    #[test]
    fn ubuntu_apparmor_restriction_fails_rootless_and_names_the_profile_fix() {
        let d = tempfile::tempdir().unwrap();
        let s = sysctls(
            d.path(),
            &[
                ("kernel/apparmor_restrict_unprivileged_userns", "1"),
                ("user/max_user_namespaces", "63000"),
            ],
        );
        assert_eq!(s.apparmor_restrict, Some(1));
        assert_eq!(s.unprivileged_userns_clone, None);
        let c = userns_check(&s, 1000);
        assert_eq!(c.status, Status::Fail);
        let fix = c.fix.unwrap();
        assert!(fix.contains("Ubuntu 24.04"), "{fix}");
        assert!(fix.contains("userns,"), "{fix}");
        assert!(fix.contains("apparmor_parser -r"), "{fix}");
        // Root creates the namespaces itself: not affected.
        assert_eq!(userns_check(&s, 0).status, Status::Ok);
        assert!(userns_check(&s, 0).evidence.contains("running as root"));
    }

    #[test]
    fn debian_unprivileged_userns_clone_zero_fails_rootless_only() {
        let d = tempfile::tempdir().unwrap();
        let s = sysctls(d.path(), &[("kernel/unprivileged_userns_clone", "0")]);
        let c = userns_check(&s, 1000);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.fix
                .unwrap()
                .contains("kernel.unprivileged_userns_clone=1")
        );
        assert_eq!(userns_check(&s, 0).status, Status::Ok);
    }

    #[test]
    fn max_user_namespaces_zero_fails_even_root() {
        let s = UsernsSysctls {
            max_user_namespaces: Some(0),
            ..Default::default()
        };
        let c = userns_check(&s, 0);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("user.max_user_namespaces"));
    }

    #[test]
    fn absent_sysctls_are_shown_as_absent() {
        let d = tempfile::tempdir().unwrap();
        let c = userns_check(&UsernsSysctls::read(d.path()), 1000);
        assert_eq!(c.status, Status::Ok);
        assert!(c.evidence.contains("unprivileged_userns_clone=absent"));
    }

    #[test]
    fn landlock_abi_six_and_up_is_complete() {
        for abi in [6, 7, 9] {
            assert_eq!(landlock_check(Ok(abi), &[]).status, Status::Ok);
        }
    }

    #[test]
    fn landlock_below_six_names_the_degradations_and_fails_strict_profiles() {
        let strict = vec![("default".to_string(), vec![])];
        let c = landlock_check(Ok(5), &strict);
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("landlock-scope"), "{}", c.evidence);
        assert!(c.evidence.contains("default"), "{}", c.evidence);

        let lenient = vec![("old-kernel".to_string(), vec![Degradation::LandlockScope])];
        let c = landlock_check(Ok(3), &lenient);
        assert_eq!(c.status, Status::Warn);
        assert!(c.evidence.contains("landlock-scope"), "{}", c.evidence);
        assert!(!c.evidence.contains("landlock-net"), "{}", c.evidence);

        let c = landlock_check(Err(Errno(libc::EOPNOTSUPP)), &lenient);
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("disabled at boot"));
        assert!(c.fix.unwrap().contains("\"landlock\""));
    }

    #[test]
    fn the_embedded_default_runs_without_scoping_and_a_require_fails_again() {
        let mut p = Profile::embedded_default().unwrap().sandbox;
        let c = landlock_check(Ok(2), &[("default".into(), p.degradable())]);
        assert_eq!(c.status, Status::Warn, "{}", c.evidence);
        assert!(
            c.evidence.contains("reports them as degraded"),
            "{}",
            c.evidence
        );
        p.require = vec![Degradation::LandlockScope];
        let c = landlock_check(Ok(2), &[("strict".into(), p.degradable())]);
        assert_eq!(c.status, Status::Fail, "{}", c.evidence);
        assert!(c.fix.unwrap().contains("require"));
        // No landlock at all is not a second layer: the default fails closed.
        let p = Profile::embedded_default().unwrap().sandbox;
        let c = landlock_check(
            Err(Errno(libc::ENOSYS)),
            &[("default".into(), p.degradable())],
        );
        assert_eq!(c.status, Status::Fail, "{}", c.evidence);
    }

    #[test]
    fn seccomp_needs_the_actions_the_filters_use() {
        let all = "kill_process kill_thread trap errno user_notif trace log allow";
        assert_eq!(seccomp_check(Some(all.into()), true).status, Status::Ok);
        let c = seccomp_check(Some("kill_thread errno allow".into()), true);
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("missing kill_process"));
        assert_eq!(seccomp_check(None, true).status, Status::Warn);
        assert_eq!(seccomp_check(None, false).status, Status::Fail);
    }

    #[test]
    fn clone3_enosys_is_a_warning() {
        assert_eq!(clone3_check(Errno(libc::EINVAL)).status, Status::Ok);
        assert_eq!(clone3_check(Errno(libc::ENOSYS)).status, Status::Warn);
    }

    #[test]
    fn clone3_probe_on_this_kernel_finds_the_call() {
        // Linux ≥ 5.3 everywhere we run (CI: 6.x).
        assert_eq!(sys::clone3_probe(), Errno(libc::EINVAL));
    }
}
