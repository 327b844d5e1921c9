//! Parts of a job's sandbox built before the job exists, off the request path: an empty job
//! cgroup and a network namespace with its loopback already up. The daemon's spawner keeps a
//! few ready between requests ([`crate::server::spawner`]); `execbox run` never uses them.
//!
//! Must never: hand one part to two jobs (each is moved into exactly one job, which destroys
//! it), or weaken a layer. The network namespace is made by host root and owned by the
//! initial user namespace, so the sandbox — root only in its own user namespace — has *less*
//! power over it than over one it created itself (it cannot reconfigure interfaces or
//! sysctls), and it is as empty as a fresh `CLONE_NEWNET` one: only `lo`.

use std::fs::File;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use super::cgroup::{CgroupLimits, Hierarchy, JobCgroup};
use super::sys;

/// An empty job cgroup created with `limits`.
#[derive(Debug)]
pub struct WarmCgroup {
    pub(crate) job: JobCgroup,
    pub(crate) version: u8,
    pub(crate) limits: CgroupLimits,
}

/// What was built ahead for one job. Either part may be missing (not root, no cgroup).
#[derive(Debug, Default)]
pub struct Prewarmed {
    pub(crate) cgroup: Option<WarmCgroup>,
    pub(crate) netns: Option<OwnedFd>,
}

impl Prewarmed {
    /// An empty job cgroup `name` below `parent`, limited by `limits`.
    pub fn cgroup(
        hierarchy: &Hierarchy,
        parent: Option<&Path>,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<WarmCgroup, super::cgroup::CgroupError> {
        let job = hierarchy.create_job(parent, name, limits)?;
        Ok(WarmCgroup {
            job,
            version: hierarchy.version(),
            limits: *limits,
        })
    }

    /// A new network namespace with `lo` up. The calling thread enters it to bring `lo` up
    /// and goes back to `home` (its own namespace, opened before); single-threaded callers
    /// only, and an error returning to `home` is reported as such so the caller stops.
    pub fn network(home: BorrowedFd<'_>) -> Result<OwnedFd, NetnsError> {
        sys::unshare(libc::CLONE_NEWNET).map_err(|e| NetnsError::Create(e.describe()))?;
        let ns = File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
        let up = sys::loopback_up();
        sys::setns(home, libc::CLONE_NEWNET).map_err(|e| NetnsError::Return(e.describe()))?;
        let ns = ns.map_err(|e| NetnsError::Create(format!("open the new namespace: {e}")))?;
        up.map_err(|e| NetnsError::Create(format!("bring lo up: {}", e.describe())))?;
        Ok(ns)
    }

    /// The parent's copy after a fork gave this value to a child: closes our descriptors and
    /// forgets the cgroup without removing it (the child owns it now).
    pub fn disown(self) {
        if let Some(c) = self.cgroup {
            c.job.disown();
        }
        drop(self.netns);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare a network namespace: {0}")]
    Create(String),
    #[error("cannot return to the spawner's own network namespace: {0}")]
    Return(String),
}
