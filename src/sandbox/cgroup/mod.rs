//! Per-job cgroups: cgroup v2 first-class, v1 as fallback, behind one interface.
//! PLACEHOLDER: the interface only; the implementation lands in its own change.

use std::path::{Path, PathBuf};

/// The limits to apply to one job's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpu: Option<f64>,
}

/// What the limits did during the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitEvents {
    pub oom_kills: u64,
    pub pids_max_hits: u64,
}

/// Resource usage read at the end of a job, where the controller reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
}

/// The detected cgroup layout of this host.
#[derive(Debug, Clone)]
pub struct Hierarchy {}

impl Hierarchy {
    /// Detects v2 (preferred) or v1 from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        Err(CgroupError::Unavailable("not implemented".into()))
    }

    pub fn version(&self) -> u8 {
        2
    }

    /// Creates `name` below `parent` (or below this process's own cgroup when `None`) and
    /// applies `limits`.
    pub fn create_job(
        &self,
        _parent: Option<&Path>,
        _name: &str,
        _limits: &CgroupLimits,
    ) -> Result<JobCgroup, CgroupError> {
        Err(CgroupError::Unavailable("not implemented".into()))
    }
}

/// One job's cgroup; removed on drop.
#[derive(Debug)]
pub struct JobCgroup {
    pub paths: Vec<PathBuf>,
}

impl JobCgroup {
    pub fn attach(&self, _pid: i32) -> Result<(), CgroupError> {
        Ok(())
    }
    pub fn events(&self) -> LimitEvents {
        LimitEvents::default()
    }
    pub fn usage(&self) -> Usage {
        Usage::default()
    }
    pub fn kill(&self) -> Result<(), CgroupError> {
        Ok(())
    }
    pub fn remove(self) -> Result<(), CgroupError> {
        Ok(())
    }
}
