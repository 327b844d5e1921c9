//! The prepared plan: every path, string, pointer array and flag the child will need, built in
//! the parent *before* the clone so the child never allocates.
//!
//! The child walks [`Plan::mounts`] in order; a failure is reported as the op's index, and the
//! parent turns that index back into [`MountOp::describe`] for the error message.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One filesystem step of the child, in order.
#[derive(Debug)]
pub enum MountOp {
    /// Before pivot: detached copy of a host tree (`open_tree(OPEN_TREE_CLONE)`), with mount
    /// attributes set on the copy; the fd is kept in `slots[slot]`.
    CloneTree {
        src: CString,
        slot: usize,
        attrs: u64,
        display: PathBuf,
    },
    /// Before pivot: a detached fresh procfs for our pid namespace, kept in `slots[slot]`.
    /// (procfs can only be mounted while a full /proc is still visible.)
    NewProc {
        slot: usize,
    },
    /// The new root: tmpfs over `base`, then `pivot_root` into it and detach the old root.
    PivotIntoTmpfs {
        base: CString,
    },
    Mkdir {
        path: CString,
    },
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// After pivot: attach the detached mount in `slots[slot]` at `target`.
    Attach {
        slot: usize,
        target: CString,
        display: PathBuf,
    },
    /// After pivot: attach the idmapped workspace received from the parent.
    AttachReceived {
        target: CString,
        display: PathBuf,
    },
    /// After pivot: a tmpfs at `target`.
    Tmpfs {
        target: CString,
        data: CString,
        flags: libc::c_ulong,
    },
    /// After pivot: bind `src` (a path in the new root) onto `target` with `attrs`: a protected
    /// path onto itself read-only, or a git directory onto itself writable (a mount point
    /// cannot be renamed).
    Rebind {
        src: CString,
        target: CString,
        attrs: u64,
        display: PathBuf,
    },
    /// After pivot: cover a file with an empty read-only `/dev/null` bind.
    HideFile {
        target: CString,
        display: PathBuf,
    },
    /// After pivot: make one mount read-only (non-recursive remount).
    RemountReadOnly {
        target: CString,
    },
    /// After pivot: create a small file in the tmpfs root (`/etc/resolv.conf`).
    WriteFile {
        path: CString,
        content: &'static str,
    },
}

impl MountOp {
    /// A human description for error messages.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            MountOp::CloneTree { display, attrs, .. } => format!(
                "bind {} ({})",
                display.display(),
                if attrs & libc::MOUNT_ATTR_RDONLY != 0 {
                    "read-only"
                } else {
                    "read-write"
                }
            ),
            MountOp::NewProc { .. } => "mount a fresh /proc".into(),
            MountOp::PivotIntoTmpfs { .. } => "pivot_root into a fresh tmpfs root".into(),
            MountOp::Mkdir { path } => format!("mkdir {}", s(path)),
            MountOp::Touch { path } => format!("create mount point {}", s(path)),
            MountOp::Symlink { path, .. } => format!("symlink {}", s(path)),
            MountOp::Attach { display, .. } => format!("attach {}", display.display()),
            MountOp::AttachReceived { display, .. } => {
                format!("attach idmapped workspace {}", display.display())
            }
            MountOp::Tmpfs { target, .. } => format!("mount tmpfs on {}", s(target)),
            MountOp::Rebind { display, attrs, .. } if attrs & libc::MOUNT_ATTR_RDONLY != 0 => {
                format!("re-bind {} read-only", display.display())
            }
            MountOp::Rebind { display, .. } => {
                format!("pin {} in place (bind onto itself)", display.display())
            }
            MountOp::HideFile { display, .. } => format!("hide {}", display.display()),
            MountOp::RemountReadOnly { target } => format!("remount {} read-only", s(target)),
            MountOp::WriteFile { path, .. } => format!("write {}", s(path)),
        }
    }
}

/// One landlock path rule, on a path as seen *inside* the new root.
#[derive(Debug)]
pub struct LandlockRule {
    pub path: CString,
    pub access: u64,
}

/// Landlock configuration; `None` in [`Plan::landlock`] when degraded away.
#[derive(Debug)]
pub struct LandlockPlan {
    pub abi: u32,
    pub handled_fs: u64,
    pub handled_net: u64,
    pub scoped: u64,
    pub rules: Vec<LandlockRule>,
}

/// Everything the init and command processes need.
#[derive(Debug)]
pub struct Plan {
    /// Uid/gid of the sandbox *inside* its user namespace (what `setresuid` is given).
    pub uid_inside: u32,
    pub gid_inside: u32,
    pub mounts: Vec<MountOp>,
    /// Detached-mount fds, filled by the child (sized before the fork).
    pub slots: Vec<RawFd>,
    pub hostname: &'static [u8],
    /// Bring `lo` up inside (false when the network namespace came up-ready from
    /// [`super::warm`]; the sandbox could not configure that one anyway).
    pub loopback_up: bool,
    /// Sockets pid 1 creates in the job's network namespace and hands to the supervisor over
    /// the sync socket (`network = "allowlist"`; empty otherwise).
    pub capture: Vec<crate::net::CaptureSocket>,
    pub cwd: CString,
    pub nofile: u64,
    pub landlock: Option<LandlockPlan>,
    pub seccomp: Vec<&'static [libc::sock_filter]>,
    /// Highest capability number of this kernel (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last: u32,
    /// Paths to try for the program, in PATH order (one entry when argv[0] has a slash).
    pub exec_candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub envp: Vec<CString>,
    pub envp_ptrs: Vec<*const libc::c_char>,
    /// The parent's end-of-pipe fds to put on 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// Report pipe (write end) and sync socket (child end) as inherited.
    pub report_fd: RawFd,
    pub sync_fd: RawFd,
}

/// A path as a C string (paths with interior NULs cannot exist on Linux, but stay fallible).
pub fn cpath(p: &Path) -> Result<CString, std::ffi::NulError> {
    CString::new(p.as_os_str().as_bytes())
}

/// Null-terminated pointer array over `strings`, which must outlive its use.
pub fn pointer_array(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Fd numbers the child moves its channels to, so it can close everything else with one
/// `close_range`.
pub const CHILD_REPORT_FD: RawFd = 3;
pub const CHILD_SYNC_FD: RawFd = 4;
