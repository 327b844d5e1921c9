//! The cgroup checks: which layout (v1, v2, hybrid) and controllers, whether a job cgroup can
//! really be created where the daemon would create it, and on v1 whether cgroup2 is mounted
//! with `favordynmods` (without it each job start waits an RCU grace period, ~9 ms: see
//! `docs/ARCHITECTURE.md`, "Where time goes").
//!
//! Layout and mount options are decided from mountinfo text ([`layout_name`],
//! [`favordynmods_check`]) so tests can feed a made-up host. The writability probe creates and
//! removes one empty job cgroup through [`Hierarchy`], the same code path as a job; it never
//! leaves it behind.

use std::path::{Path, PathBuf};

use super::{Check, Context};
use crate::profile::Degradation;
use crate::sandbox::cgroup::{CgroupLimits, Hierarchy};

pub fn checks(cx: &Context) -> Vec<Check> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hierarchy = Hierarchy::detect();
    let parent = cx.loaded().and_then(|c| c.cgroup_parent.clone());
    // Whether the loaded profiles can run without a cgroup: then a missing one is a warning.
    let all_allow_degraded = cx.loaded().is_some_and(|c| {
        c.profiles
            .values()
            .all(|p| p.sandbox.allow_degraded.contains(&Degradation::Cgroup))
    });
    let mut out = Vec::new();
    match &hierarchy {
        Ok(h) => {
            let layout = layout_name(h.version(), &mountinfo);
            let mut evidence = format!("{layout}: {}", h.description());
            if h.warnings().is_empty() {
                out.push(Check::ok("cgroup.layout", "cgroup layout", evidence));
            } else {
                evidence.push_str(&format!("; {}", h.warnings().join("; ")));
                out.push(Check::warn(
                    "cgroup.layout",
                    "cgroup layout",
                    evidence,
                    "mount the missing controllers (docs/cgroups.md): without them those limits are not applied",
                ));
            }
            out.push(writable_check(h, parent.as_deref(), all_allow_degraded));
            if h.version() == 1 {
                out.push(favordynmods_check(&mountinfo));
            }
        }
        Err(e) => {
            let fix = "mount cgroup v2 with the memory and pids controllers (or v1 memory and pids hierarchies)";
            out.push(if all_allow_degraded {
                Check::warn(
                    "cgroup.layout",
                    "cgroup layout",
                    format!("{e}; every profile allows running without a cgroup"),
                    fix,
                )
            } else {
                Check::fail(
                    "cgroup.layout",
                    "cgroup layout",
                    format!("{e}; jobs fail unless their profile allows \"cgroup\""),
                    fix,
                )
            });
        }
    }
    out
}

/// "cgroup v2", "cgroup v1", or "hybrid (v1 controllers, cgroup2 without them)".
pub fn layout_name(version: u8, mountinfo: &str) -> &'static str {
    let has_cgroup2 = mounts_of_type(mountinfo, "cgroup2").next().is_some();
    match (version, has_cgroup2) {
        (2, _) => "cgroup v2",
        (_, true) => "hybrid (cgroup v1 controllers, cgroup2 mounted without them)",
        _ => "cgroup v1",
    }
}

/// (mount point, super options) of every mount of `fstype`.
fn mounts_of_type<'a>(
    mountinfo: &'a str,
    fstype: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    mountinfo.lines().filter_map(move |l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        (post.next()? == fstype).then_some(())?;
        let super_opts = post.nth(1).unwrap_or("");
        Some((pre.split_whitespace().nth(4)?, super_opts))
    })
}

/// v1 only: the cgroup2 mount's `favordynmods` option (a global switch of how cgroup migration
/// synchronises; set by any cgroup2 mount or CONFIG_CGROUP_FAVOR_DYNMODS).
pub fn favordynmods_check(mountinfo: &str) -> Check {
    const ID: &str = "cgroup.favordynmods";
    const TITLE: &str = "cgroup2 favordynmods (fast job starts on v1)";
    let mounts: Vec<(&str, &str)> = mounts_of_type(mountinfo, "cgroup2").collect();
    if let Some((at, _)) = mounts
        .iter()
        .find(|(_, o)| o.split(',').any(|o| o == "favordynmods"))
    {
        return Check::ok(
            ID,
            TITLE,
            format!("cgroup2 at {at} is mounted with favordynmods"),
        );
    }
    match mounts.first() {
        Some((at, opts)) => Check::info(
            ID,
            TITLE,
            format!(
                "cgroup2 at {at} has options {opts:?}: every job start waits for an RCU grace period (~9 ms)"
            ),
            format!(
                "mount -o remount,favordynmods {at} (persist it in /etc/fstab or the init system's cgroup mount), \
                 or build the kernel with CONFIG_CGROUP_FAVOR_DYNMODS=y"
            ),
        ),
        None => Check::info(
            ID,
            TITLE,
            "no cgroup2 mount: every job start waits for an RCU grace period (~9 ms)",
            "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 -o favordynmods none /sys/fs/cgroup/unified, \
             or build the kernel with CONFIG_CGROUP_FAVOR_DYNMODS=y",
        ),
    }
}

/// Creates and removes an empty job cgroup where jobs would go.
fn writable_check(h: &Hierarchy, parent: Option<&Path>, all_allow_degraded: bool) -> Check {
    const ID: &str = "cgroup.writable";
    const TITLE: &str = "job cgroups can be created";
    let place = match parent {
        Some(p) => format!("below the configured parent {}", p.display()),
        None => "below this process's own cgroup".to_string(),
    };
    let name = format!("execbox-doctor-{}", std::process::id());
    match h.create_job(parent, &name, &CgroupLimits::default()) {
        Ok(job) => {
            let dirs: Vec<PathBuf> = job.paths().to_vec();
            match job.remove() {
                Ok(()) => Check::ok(
                    ID,
                    TITLE,
                    format!(
                        "created and removed {} ({place})",
                        dirs.first()
                            .map(|d| d.display().to_string())
                            .unwrap_or_default()
                    ),
                ),
                Err(e) => Check::warn(
                    ID,
                    TITLE,
                    format!("created a test cgroup {place} but could not remove it: {e}"),
                    format!(
                        "rmdir {}",
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ),
            }
        }
        Err(e) => {
            let evidence = format!("cannot create a cgroup {place}: {}", crate::cli::chain(&e));
            let fix = "as root, delegate a subtree to the daemon's user and set paths.cgroup_parent \
                       (docs/cgroups.md, \"Delegation for unprivileged use\"); under systemd use Delegate=yes";
            if all_allow_degraded {
                Check::warn(
                    ID,
                    TITLE,
                    format!("{evidence}; every profile allows running without one"),
                    fix,
                )
            } else {
                Check::fail(ID, TITLE, evidence, fix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,favordynmods
";

    #[test]
    fn hybrid_is_named_as_such() {
        assert!(layout_name(1, HYBRID).starts_with("hybrid"));
        let pure_v1: String = HYBRID.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(layout_name(1, &pure_v1), "cgroup v1");
        assert_eq!(layout_name(2, HYBRID), "cgroup v2");
    }

    #[test]
    fn favordynmods_present_is_ok() {
        let c = favordynmods_check(HYBRID);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.evidence.contains("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn favordynmods_missing_names_the_remount() {
        let c = favordynmods_check(&HYBRID.replace("rw,favordynmods", "rw,nsdelegate"));
        // Performance advice, not a warning: doctor still exits 0 (issue 22 item 5).
        assert_eq!(c.status, Status::Info);
        assert_eq!(
            c.fix
                .as_deref()
                .map(|f| f.starts_with("mount -o remount,favordynmods /sys/fs/cgroup/unified")),
            Some(true),
            "{c:?}"
        );
        let pure_v1: String = HYBRID.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(favordynmods_check(&pure_v1).status, Status::Info);
    }
}
