//! Landlock as the second filesystem layer: rules that mirror the mount view, abstract Unix
//! sockets and signals scoped to the sandbox.
//!
//! TCP rules (ABI 4) are not used: the job's own network namespace is the network fence, and
//! everything a TCP bind or connect can reach in it belongs to the job (its `lo`, and in
//! `network = "allowlist"` the supervisor's capture listeners, which check every connection).
//! Refusing them only broke a test suite's local server (`docs/network.md`, "Which layer does
//! what").
//!
//! This module only *plans* (access masks per ABI); `child.rs` applies the plan after
//! `pivot_root`, because a landlocked process can no longer change its mounts.

use std::path::PathBuf;

use super::SetupError;
use super::plan::{LandlockPlan, LandlockRule, cpath};
use crate::profile::Degradation;

/// Filesystem access rights (`LANDLOCK_ACCESS_FS_*`).
pub struct Access;

impl Access {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    /// ABI 2.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3.
    pub const TRUNCATE: u64 = 1 << 14;
    /// ABI 5.
    pub const IOCTL_DEV: u64 = 1 << 15;

    /// Rights that apply to a file (the others only make sense on directories).
    pub const FILE_RIGHTS: u64 =
        Self::EXECUTE | Self::WRITE_FILE | Self::READ_FILE | Self::TRUNCATE | Self::IOCTL_DEV;

    /// `ls /` on the tmpfs root.
    pub const LIST: u64 = Self::READ_DIR;
    pub const READ_FILE_ONLY: u64 = Self::READ_FILE;
    pub const READ_DIR_FILES: u64 = Self::READ_FILE | Self::READ_DIR;
    pub const READ_EXEC_DIR: u64 = Self::EXECUTE | Self::READ_FILE | Self::READ_DIR;
    /// Everything but creating device nodes.
    pub const READ_WRITE_DIR: u64 = Self::EXECUTE
        | Self::WRITE_FILE
        | Self::READ_FILE
        | Self::READ_DIR
        | Self::REMOVE_DIR
        | Self::REMOVE_FILE
        | Self::MAKE_DIR
        | Self::MAKE_REG
        | Self::MAKE_SOCK
        | Self::MAKE_FIFO
        | Self::MAKE_SYM
        | Self::REFER
        | Self::TRUNCATE;
    pub const READ_WRITE_FILE: u64 = Self::WRITE_FILE | Self::READ_FILE | Self::TRUNCATE;
    /// The minimal /dev: read and write the nodes (`> /dev/null` truncates), ioctl on them.
    pub const DEVICES: u64 =
        Self::READ_FILE | Self::WRITE_FILE | Self::READ_DIR | Self::TRUNCATE | Self::IOCTL_DEV;

    /// All filesystem rights a kernel with this ABI knows.
    pub fn handled_fs(abi: u32) -> u64 {
        let mut all = (1 << 13) - 1;
        if abi >= 2 {
            all |= Self::REFER;
        }
        if abi >= 3 {
            all |= Self::TRUNCATE;
        }
        if abi >= 5 {
            all |= Self::IOCTL_DEV;
        }
        all
    }
}

pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
pub const SCOPE_SIGNAL: u64 = 1 << 1;

/// Plans the ruleset for `abi`. Scoping needs ABI 6: below, the plan fails unless the profile
/// allows that named degradation, which is then recorded. No TCP access is handled (see the
/// module comment), so `landlock-net` is never needed.
pub fn plan(
    abi: u32,
    rules: &[(PathBuf, u64)],
    allowed: &[Degradation],
    degraded: &mut Vec<Degradation>,
) -> Result<LandlockPlan, SetupError> {
    let handled_fs = Access::handled_fs(abi);
    let handled_net = 0;
    let scoped = if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else if allowed.contains(&Degradation::LandlockScope) {
        degraded.push(Degradation::LandlockScope);
        0
    } else {
        return Err(SetupError::Unsupported {
            layer: "landlock scoping",
            detail: format!(
                "kernel landlock ABI is {abi}, signal and abstract-socket scoping need 6"
            ),
            degradation: Degradation::LandlockScope,
        });
    };
    let rules = rules
        .iter()
        .map(|(p, access)| {
            Ok(LandlockRule {
                path: cpath(p)
                    .map_err(|_| SetupError::Prepare(format!("bad path {}", p.display())))?,
                access: access & handled_fs,
            })
        })
        .collect::<Result<_, SetupError>>()?;
    Ok(LandlockPlan {
        abi,
        handled_fs,
        handled_net,
        scoped,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_never_exceed_what_the_abi_handles() {
        assert_eq!(Access::handled_fs(1), (1 << 13) - 1);
        assert_eq!(Access::handled_fs(7) & Access::IOCTL_DEV, Access::IOCTL_DEV);
        let p = plan(
            1,
            &[("/x".into(), Access::READ_WRITE_DIR)],
            &[Degradation::LandlockScope],
            &mut vec![],
        )
        .unwrap();
        assert_eq!(p.rules[0].access & !Access::handled_fs(1), 0);
    }

    #[test]
    fn tcp_is_left_to_the_network_namespace() {
        // The namespace fences the network; landlock TCP rules would only break loopback.
        for abi in [4, 6, 7] {
            let p = plan(abi, &[], &[Degradation::LandlockScope], &mut vec![]).unwrap();
            assert_eq!(p.handled_net, 0);
        }
    }

    #[test]
    fn old_abi_fails_closed_unless_the_degradation_is_allowed() {
        let mut d = vec![];
        assert!(plan(3, &[], &[], &mut d).is_err());
        let p = plan(3, &[], &[Degradation::LandlockScope], &mut d).unwrap();
        assert_eq!((p.handled_net, p.scoped), (0, 0));
        assert_eq!(d, vec![Degradation::LandlockScope]);
        let p = plan(7, &[], &[], &mut vec![]).unwrap();
        assert_eq!(p.scoped, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL);
    }

    #[test]
    fn the_default_profile_runs_on_debian_12_and_a_require_refuses() {
        // Debian 12's 6.1 has ABI 2, Ubuntu 22.04's 5.15 and RHEL 9's 5.14 have ABI 1.
        let mut p = crate::profile::Profile::embedded_default().unwrap().sandbox;
        for abi in [1, 2, 5] {
            let mut d = vec![];
            let plan = plan(abi, &[], &p.degradable(), &mut d).unwrap();
            assert_eq!(plan.scoped, 0);
            assert_eq!(d, vec![Degradation::LandlockScope], "reported at ABI {abi}");
        }
        let mut d = vec![];
        plan(6, &[], &p.degradable(), &mut d).unwrap();
        assert!(d.is_empty());
        p.require = vec![Degradation::LandlockScope];
        let e = plan(2, &[], &p.degradable(), &mut vec![]).unwrap_err();
        assert!(e.to_string().contains("sandbox.require"), "{e}");
    }

    #[test]
    fn device_creation_is_never_granted() {
        for a in [
            Access::READ_WRITE_DIR,
            Access::DEVICES,
            Access::READ_EXEC_DIR,
        ] {
            assert_eq!(a & (Access::MAKE_CHAR | Access::MAKE_BLOCK), 0);
        }
    }
}
