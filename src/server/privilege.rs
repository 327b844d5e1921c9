//! The capabilities each daemon process keeps when `execbox serve` runs as root, and the drop
//! that enforces it: everything else leaves the effective, permitted, inheritable, ambient
//! *and bounding* sets, so no later `execve` or setuid trick can bring it back.
//!
//! Two processes, two sets (`docs/security.md` explains each capability; an integration test
//! reads `/proc/PID/status` of a running daemon and compares it with that document):
//! - the tokio API process ([`API`]): after the sockets are bound, the audit log is open and the
//!   spawner is forked;
//! - the single-threaded spawner ([`SPAWNER`]), and so every job supervisor it forks: right
//!   after its fork, before it reads a request.
//!
//! Must never: run when the process is not root (there is nothing to drop and the bounding set
//! cannot be changed without `CAP_SETPCAP`), or leave a process running with a set other than
//! the one asked for (any failed step is an error; the caller refuses to start).

use crate::sandbox::sys;

/// Capability numbers (`linux/capability.h`), the ones named here.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_ADMIN: u32 = 21;
}

/// What the API process keeps: it creates, chowns and removes session workspaces the sandboxes
/// wrote into, and reads their artifacts.
pub const API: &[u32] = &[cap::CHOWN, cap::DAC_OVERRIDE, cap::FOWNER];

/// What the spawner and its supervisors keep: id maps for other host ids, job cgroups in a
/// tree that need not belong to uid 0, the idmapped mount of a root-owned workspace (an
/// operator's, from pairing), and the network namespaces built ahead (`sandbox::warm`:
/// create, bring `lo` up, enter). (Not `CAP_KILL`: every job process lives in a user
/// namespace the supervisor owns, which gives it every capability there.)
pub const SPAWNER: &[u32] = &[
    cap::DAC_OVERRIDE,
    cap::SETGID,
    cap::SETUID,
    cap::NET_ADMIN,
    cap::SYS_ADMIN,
];

/// Every capability name by number, as `capabilities(7)` spells it (for logs and tests).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop {} from the bounding set: {}; fix: start the daemon with CAP_SETPCAP (in systemd's CapabilityBoundingSet=), which it needs only for this step", NAMES.get(*.cap as usize).copied().unwrap_or("a capability"), .errno.describe())]
    BoundingDrop { cap: u32, errno: sys::Errno },
    #[error("cannot clear the ambient capability set: {}", .0.describe())]
    ClearAmbient(sys::Errno),
    #[error("cannot set the capability sets (capset): {}", .0.describe())]
    Capset(sys::Errno),
}

/// The bit mask of `caps`.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Highest capability number this kernel knows.
pub fn cap_last() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The calling process's permitted set (`CapPrm` in `/proc/self/status`).
pub fn permitted_now() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapPrm:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Leaves exactly `keep` in the effective and permitted sets and the bounding set, and nothing
/// in the inheritable and ambient sets. Call while the process has one thread (`capset`
/// changes the calling thread only; threads started later inherit it).
///
/// A capability of `keep` the process does not have (a container that withheld it) cannot be
/// kept: it is left out with a warning, and whatever needs it fails where it is used.
pub fn keep_only(keep: &[u32], cap_last: u32) -> Result<(), PrivilegeError> {
    let mut m = mask(keep);
    if let Some(have) = permitted_now()
        && m & !have != 0
    {
        tracing::warn!(
            missing = %names(m & !have).join(" "),
            "the daemon was started without capabilities it uses; what needs them will fail"
        );
        m &= have;
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the capset below takes
    // away (unless kept).
    for c in (0..=cap_last.min(63)).filter(|c| m & (1 << c) == 0) {
        sys::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0)
            .map_err(|errno| PrivilegeError::BoundingDrop { cap: c, errno })?;
    }
    sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(PrivilegeError::ClearAmbient)?;
    sys::set_capabilities(m, m, 0).map_err(PrivilegeError::Capset)
}

/// The names of the capabilities in `mask`, for logs.
pub fn names(mask: u64) -> Vec<&'static str> {
    (0..64u32)
        .filter(|c| mask & (1 << c) != 0)
        .map(|c| NAMES.get(c as usize).copied().unwrap_or("CAP_?"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_names() {
        for (n, name) in [
            (cap::CHOWN, "CAP_CHOWN"),
            (cap::DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
            (cap::FOWNER, "CAP_FOWNER"),
            (cap::SETGID, "CAP_SETGID"),
            (cap::SETUID, "CAP_SETUID"),
        ] {
            assert_eq!(NAMES[n as usize], name);
        }
        assert_eq!(NAMES.len(), 41);
    }

    #[test]
    fn masks_and_names_round_trip() {
        assert_eq!(mask(&[cap::CHOWN, cap::SETUID]), 1 | 1 << 7);
        assert_eq!(
            names(mask(API)),
            ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
        );
    }
}
