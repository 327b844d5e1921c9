//! Per-job cgroups: cgroup v2 first-class, v1 as fallback, behind one interface.
//!
//! Owns: detecting the host's cgroup layout ([`Hierarchy`]), creating one cgroup per job with
//! memory (no swap), pids and cpu limits, attaching the job's processes, reading what the
//! limits did ([`LimitEvents`], [`Usage`]), killing everything in a job's cgroup and removing
//! it, and sweeping stale job cgroups left by a crashed supervisor.
//!
//! Must never: create a cgroup outside the chosen parent (parents with `..` or that escape the
//! hierarchy are refused), leave a half-configured cgroup behind when creation fails, reuse an
//! existing directory as a job's cgroup, signal this process or pid 1, or block without a
//! bound. It does not decide policy: whether running without cgroups is acceptable is the
//! caller's choice (`Degradation::Cgroup`).
//!
//! Not guaranteed: limits bound only what the kernel accounts to the cgroup (kernel memory on
//! old v1 kernels, page cache written back later); on v1 without `memory.memsw.*` swap is
//! discouraged (`memory.swappiness = 0`) but not forbidden, and [`JobCgroup::warnings`] says
//! so. See `docs/cgroups.md`.

mod fs;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use fs::DirOps;

/// The leaf the supervisor moves itself into on v2 so its parent may enable controllers
/// ("no internal processes" rule). Never a job, never swept by [`Hierarchy::remove_stale`].
pub const SUPERVISOR_LEAF: &str = "execbox-supervisor";

/// The limits to apply to one job's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Bytes of memory; swap is never added on top.
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (0.5 = half a core), enforced per 100 ms period.
    pub cpu: Option<f64>,
}

/// What the limits did during the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitEvents {
    /// Processes the OOM killer killed because of the memory limit.
    pub oom_kills: u64,
    /// Forks refused because the pids limit was reached.
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
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid cgroup parent {parent}: {reason}")]
    InvalidParent {
        parent: PathBuf,
        reason: &'static str,
    },
    #[error("invalid {what} limit: {reason}")]
    InvalidLimit {
        what: &'static str,
        reason: &'static str,
    },
    #[error(
        "controller {controller} is not offered in {path} (delegate it, or enable it in the parent's cgroup.subtree_control)"
    )]
    MissingController { path: PathBuf, controller: String },
    #[error("cannot move the supervisor (pid {pid}) into {file}")]
    MoveSupervisor {
        file: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable controller {controller} in {file}")]
    EnableController {
        file: PathBuf,
        controller: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create cgroup {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {file}")]
    WriteLimit {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach pid {pid} via {file}: {source}")]
    Attach {
        file: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} the cgroup via {file}")]
    Freeze {
        file: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot kill the cgroup via {file}")]
    KillWrite {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send SIGKILL to pid {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("{remaining} processes still in {path} after SIGKILL")]
    KillTimeout { path: PathBuf, remaining: usize },
    #[error("cannot rename cgroup {path}")]
    Rename {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// The errno of the failed call, when one failed (shown as `errno` in setup-failure reports).
    pub fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Attach { source, .. }
            | CgroupError::MoveSupervisor { source, .. }
            | CgroupError::EnableController { source, .. }
            | CgroupError::CreateDir { source, .. }
            | CgroupError::WriteLimit { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The detected cgroup layout of this host.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    backend: Backend,
    warnings: Vec<String>,
    ops: DirOps,
}

#[derive(Debug, Clone)]
enum Backend {
    V1(v1::V1),
    V2(v2::V2),
}

impl Hierarchy {
    /// Detects v2 (preferred) or v1 from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let mountinfo = fs::read_file(Path::new("/proc/self/mountinfo"))?;
        let cgroup = fs::read_file(Path::new("/proc/self/cgroup"))?;
        Hierarchy::detect_from(&mountinfo, &cgroup, Path::new("/"))
    }

    /// Detection from the given texts of `/proc/self/mountinfo` and `/proc/self/cgroup`, with
    /// every mount point taken below `sysfs_prefix` (`/` on a real host, a tempdir in tests).
    ///
    /// Order: cgroup2 whose root or this process's cgroup offers both `memory` and `pids` in
    /// `cgroup.controllers`; else v1 with `memory` and `pids` hierarchies (cpu, cpuacct and
    /// freezer used when mounted); else [`CgroupError::Unavailable`] naming what was missing.
    pub fn detect_from(
        mountinfo: &str,
        proc_self_cgroup: &str,
        sysfs_prefix: &Path,
    ) -> Result<Hierarchy, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let own = parse_proc_cgroup(proc_self_cgroup);
        let v2_reason = match v2::V2::detect(&mounts, &own, sysfs_prefix) {
            Ok((v2, warnings)) => return Ok(Hierarchy::new(Backend::V2(v2), warnings)),
            Err(reason) => reason,
        };
        let v1_reason = match v1::V1::detect(&mounts, &own, sysfs_prefix) {
            Ok((v1, warnings)) => return Ok(Hierarchy::new(Backend::V1(v1), warnings)),
            Err(reason) => reason,
        };
        Err(CgroupError::Unavailable(format!(
            "looked for cgroup v2 with memory and pids, then cgroup v1 memory and pids \
             hierarchies: {v2_reason}; {v1_reason}"
        )))
    }

    fn new(backend: Backend, warnings: Vec<String>) -> Hierarchy {
        Hierarchy {
            backend,
            warnings,
            ops: DirOps::Kernel,
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self.backend {
            Backend::V1(_) => 1,
            Backend::V2(_) => 2,
        }
    }

    /// One line for `doctor`: the version and where each controller lives.
    pub fn description(&self) -> String {
        match &self.backend {
            Backend::V1(v1) => v1.description(),
            Backend::V2(v2) => v2.description(),
        }
    }

    /// What detection found missing but could work without (e.g. no cpu controller: cpu
    /// limits are skipped).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Creates `name` below `parent` (or below this process's own cgroup when `None`) and
    /// applies `limits`. `parent` is relative to each v1 controller's mount point or to the v2
    /// mount root (a leading `/` means that root), and may not contain `..`.
    pub fn create_job(
        &self,
        parent: Option<&Path>,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<JobCgroup, CgroupError> {
        validate_name(name)?;
        let parent = parent.map(clean_parent).transpose()?;
        let cpu_quota = limits.cpu.map(cpu_quota_us).transpose()?;
        let spec = JobSpec {
            parent: parent.as_deref(),
            name,
            limits,
            cpu_quota,
        };
        let mut job = JobCgroup::empty(self.ops, self.warnings_for(limits));
        // On any error below, `job` is dropped and removes every directory it created.
        match &self.backend {
            Backend::V1(v1) => v1.create(&mut job, &spec)?,
            Backend::V2(v2) => v2.create(&mut job, &spec)?,
        }
        Ok(job)
    }

    fn warnings_for(&self, limits: &CgroupLimits) -> Vec<String> {
        let cpu_missing = match &self.backend {
            Backend::V1(v1) => !v1.has_cpu(),
            Backend::V2(_) => false, // decided per parent in v2::create
        };
        if limits.cpu.is_some() && cpu_missing {
            vec!["cpu controller not mounted: cpu limit not applied".to_owned()]
        } else {
            Vec::new()
        }
    }

    /// Kills and removes leftover job cgroups named `<prefix>*` below `parent` (a previous
    /// supervisor's, after a crash); returns the directories removed. Best effort: a directory
    /// that cannot be emptied or removed is left and not returned.
    pub fn remove_stale(&self, parent: Option<&Path>, prefix: &str) -> Vec<PathBuf> {
        self.remove_stale_where(parent, prefix, |_| true)
    }

    /// Like [`Hierarchy::remove_stale`], for the names `is_stale` accepts (e.g. jobs whose
    /// supervisor pid, encoded in the name, is gone).
    pub fn remove_stale_where(
        &self,
        parent: Option<&Path>,
        prefix: &str,
        is_stale: impl Fn(&str) -> bool,
    ) -> Vec<PathBuf> {
        if validate_name(prefix).is_err() {
            return Vec::new();
        }
        let Ok(parent) = parent.map(clean_parent).transpose() else {
            return Vec::new();
        };
        let bases = match &self.backend {
            Backend::V1(v1) => v1.bases(parent.as_deref()),
            Backend::V2(v2) => vec![v2.base(parent.as_deref())],
        };
        let mut names = BTreeSet::new();
        for base in &bases {
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix)
                    && name != SUPERVISOR_LEAF
                    && is_stale(&name)
                    && entry.file_type().is_ok_and(|t| t.is_dir())
                {
                    names.insert(name);
                }
            }
        }
        let mut removed = Vec::new();
        for name in names {
            let mut job = JobCgroup::empty(self.ops, Vec::new());
            match &self.backend {
                Backend::V1(v1) => v1.open_existing(&mut job, parent.as_deref(), &name),
                Backend::V2(v2) => v2.open_existing(&mut job, parent.as_deref(), &name),
            }
            let dirs = job.dirs.clone();
            // A kill timeout still lets the removal try; rmdir then reports what is stuck.
            let _ = job.kill();
            if job.remove().is_ok() {
                removed.extend(dirs);
            }
        }
        removed
    }

    /// A hierarchy whose directories are made by the fake kernel of [`fs::fake`].
    #[cfg(test)]
    fn with_fake_kernel(mut self, faults: fs::fake::Faults) -> Hierarchy {
        self.ops = DirOps::Fake(faults);
        self
    }
}

/// A validated `create_job` request, as the backends receive it.
#[derive(Debug, Clone, Copy)]
struct JobSpec<'a> {
    /// Already cleaned by [`clean_parent`]: plain components only.
    parent: Option<&'a Path>,
    /// Already checked by [`validate_name`].
    name: &'a str,
    limits: &'a CgroupLimits,
    /// From [`cpu_quota_us`].
    cpu_quota: Option<u64>,
}

/// One job's cgroup (one directory per v1 hierarchy, or one v2 directory); removed on drop.
#[derive(Debug)]
pub struct JobCgroup {
    kind: JobKind,
    /// Directories this handle owns, in creation order; removed in reverse.
    dirs: Vec<PathBuf>,
    ops: DirOps,
    warnings: Vec<String>,
}

#[derive(Debug)]
enum JobKind {
    /// Not yet created (only inside `create_job`).
    Empty,
    V1(v1::Job),
    V2(v2::Job),
}

impl JobCgroup {
    fn empty(ops: DirOps, warnings: Vec<String>) -> JobCgroup {
        JobCgroup {
            kind: JobKind::Empty,
            dirs: Vec::new(),
            ops,
            warnings,
        }
    }

    /// Creates `dir` and takes ownership of it (it will be removed with this handle).
    fn mkdir(&mut self, dir: &Path) -> Result<(), CgroupError> {
        self.ops.mkdir(dir)?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    /// The job's cgroup directories, in creation order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Limits that could not be applied exactly as asked (e.g. swap not limitable on v1).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Moves process `pid` (all its threads) into the job's cgroup: `cgroup.procs` of every
    /// v1 controller directory, or of the one v2 directory.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.kind {
            JobKind::Empty => Ok(()),
            JobKind::V1(job) => job.attach(pid),
            JobKind::V2(job) => job.attach(pid),
        }
    }

    /// OOM kills and pids-limit hits so far. Unreadable counters read as 0.
    pub fn events(&self) -> LimitEvents {
        match &self.kind {
            JobKind::Empty => LimitEvents::default(),
            JobKind::V1(job) => job.events(),
            JobKind::V2(job) => job.events(),
        }
    }

    /// Peak memory and cpu time, where the kernel reports them.
    pub fn usage(&self) -> Usage {
        match &self.kind {
            JobKind::Empty => Usage::default(),
            JobKind::V1(job) => job.usage(),
            JobKind::V2(job) => job.usage(),
        }
    }

    /// SIGKILLs every process in the job. v2: `cgroup.kill` (the kernel kills atomically,
    /// including processes forking meanwhile); v1: freeze when a freezer is mounted, SIGKILL
    /// each pid in `cgroup.procs`, thaw, repeat until empty (bounded).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.kill_with(true)
    }

    /// Like [`JobCgroup::kill`], never freezing: for a job whose sandbox pid 1 was SIGKILLed
    /// first (the kernel then kills its whole pid namespace, where no process can fork any
    /// more, so there is no fork race to hold still). A killer that dies half-way (the job's
    /// supervisor, killed with its daemon) must not leave the job frozen with its SIGKILLs
    /// pending: a frozen v1 task never acts on them.
    pub fn kill_without_freezing(&self) -> Result<(), CgroupError> {
        self.kill_with(false)
    }

    fn kill_with(&self, freeze: bool) -> Result<(), CgroupError> {
        match &self.kind {
            JobKind::Empty => Ok(()),
            JobKind::V1(job) => job.kill(freeze),
            JobKind::V2(job) => job.kill(freeze),
        }
    }

    /// Removes every directory of the job, retrying briefly on EBUSY while killed processes
    /// finish exiting. Call [`JobCgroup::kill`] first if anything may still run.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let dirs = std::mem::take(&mut self.dirs);
        self.ops.rmdir_all(&dirs)
    }

    /// Renames the job's directories to `name`, in place (cgroup v1: a job built ahead takes
    /// its job's name, so it can be found by it). All or nothing. cgroup v2 has no rename.
    pub fn rename(&mut self, name: &str) -> Result<(), CgroupError> {
        validate_name(name)?;
        let JobKind::V1(job) = &self.kind else {
            return Err(CgroupError::Unavailable(
                "cgroup v2 directories cannot be renamed".into(),
            ));
        };
        let renamed = job.renamed(name);
        let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
        for old in &self.dirs {
            let new = old.with_file_name(name);
            if let Err(source) = std::fs::rename(old, &new) {
                for (o, n) in done.iter().rev() {
                    let _ = std::fs::rename(n, o);
                }
                return Err(CgroupError::Rename {
                    path: old.clone(),
                    source,
                });
            }
            done.push((old.clone(), new));
        }
        self.dirs = done.into_iter().map(|(_, new)| new).collect();
        self.kind = JobKind::V1(renamed);
        Ok(())
    }

    /// Lets go of the directories without removing them: for the parent's copy after a fork
    /// handed this job to a child, which now owns (and removes) them.
    pub fn disown(mut self) {
        self.dirs.clear();
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        if let Err(e) = self.ops.rmdir_all(&dirs) {
            tracing::warn!(error = %e, "job cgroup left behind");
        }
    }
}

/// A job name is one path component.
fn validate_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "not a directory name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.contains('\n') {
        "contains a newline"
    } else {
        return Ok(());
    };
    Err(CgroupError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Turns a user-given parent into a relative path of plain components: a leading `/` means the
/// hierarchy's root, `.` is dropped, `..` is refused (it could climb out of the delegated
/// subtree or the mount).
fn clean_parent(parent: &Path) -> Result<PathBuf, CgroupError> {
    let mut clean = PathBuf::new();
    for component in parent.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => clean.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidParent {
                    parent: parent.to_owned(),
                    reason: "contains '..'",
                });
            }
        }
    }
    Ok(clean)
}

/// The CFS period used for every cpu limit, in µs.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// Quota in µs per [`CPU_PERIOD_US`] for `cores` cores, at least the kernel's 1 ms minimum.
fn cpu_quota_us(cores: f64) -> Result<u64, CgroupError> {
    if !cores.is_finite() || cores <= 0.0 {
        return Err(CgroupError::InvalidLimit {
            what: "cpu",
            reason: "must be a positive number of cores",
        });
    }
    if cores > 65_536.0 {
        return Err(CgroupError::InvalidLimit {
            what: "cpu",
            reason: "more than 65536 cores",
        });
    }
    let quota = (cores * CPU_PERIOD_US as f64).round() as u64;
    Ok(quota.max(CPU_MIN_QUOTA_US))
}

/// One line of `/proc/self/mountinfo`, the fields cgroup detection needs.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    /// The path inside the filesystem that is mounted (`/` unless a subtree is bind-mounted).
    root: String,
    mount_point: PathBuf,
    fstype: String,
    /// Superblock options; for cgroup v1 these name the controllers (`rw,memory`).
    super_options: Vec<String>,
}

impl Mount {
    fn has_option(&self, option: &str) -> bool {
        self.super_options.iter().any(|o| o == option)
    }

    /// Where the cgroup at hierarchy path `cgroup_path` lives on disk, below `prefix`.
    fn dir_of(&self, prefix: &Path, cgroup_path: &str) -> PathBuf {
        let relative = cgroup_path
            .strip_prefix(self.root.as_str())
            .unwrap_or(cgroup_path);
        let mut dir = self.on_disk(prefix);
        dir.extend(Path::new(relative).components().filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        }));
        dir
    }

    fn on_disk(&self, prefix: &Path) -> PathBuf {
        prefix.join(
            self.mount_point
                .strip_prefix("/")
                .unwrap_or(&self.mount_point),
        )
    }
}

/// Parses mountinfo lines: `id parent maj:min root mount-point options [optional…] - fstype
/// source super-options`. Malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(Mount {
                root: unescape_octal(left.get(3)?),
                mount_point: PathBuf::from(unescape_octal(left.get(4)?)),
                fstype: fstype.to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq)]
struct OwnCgroup {
    hierarchy_id: u32,
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(OwnCgroup {
                hierarchy_id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_attach_keeps_its_errno() {
        let e = CgroupError::Attach {
            file: "/sys/fs/cgroup/x/cgroup.procs".into(),
            pid: 7,
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(e.to_string().contains("os error 13"), "{e}");
        let s = crate::sandbox::SetupError::Cgroup(e);
        assert_eq!(s.errno(), Some(libc::EACCES));
        assert!(s.to_string().contains("os error 13"), "{s}");
    }

    /// This machine's layout: v1 controllers, cgroup2 at `unified` without memory/pids.
    pub(super) const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    pub(super) const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn mountinfo_lines_give_root_mount_point_type_and_controllers() {
        let mounts = parse_mountinfo(
            "32 31 0:29 /sub /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
             99 1 0:1 / /mnt/with\\040space rw - ext4 /dev/x rw\n\
             garbage\n",
        );
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].root, "/sub");
        assert_eq!(
            mounts[0].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[0].fstype, "cgroup");
        assert!(mounts[0].has_option("cpuacct") && mounts[0].has_option("cpu"));
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn proc_self_cgroup_lines_give_controllers_and_path() {
        let own = parse_proc_cgroup(HYBRID_CGROUP);
        assert_eq!(own.len(), 7);
        assert_eq!(own[3].controllers, vec!["memory"]);
        assert_eq!(own[3].path, "/process_api/abc");
        assert_eq!(own[6].hierarchy_id, 0);
        assert!(own[6].controllers.is_empty());
    }

    #[test]
    fn a_bind_mounted_subtree_is_stripped_from_the_own_path() {
        let mount =
            &parse_mountinfo("1 1 0:1 /ctr /sys/fs/cgroup/memory rw - cgroup c rw,memory")[0];
        assert_eq!(
            mount.dir_of(Path::new("/p"), "/ctr/job"),
            Path::new("/p/sys/fs/cgroup/memory/job")
        );
    }

    #[test]
    fn names_must_be_one_path_component() {
        for bad in ["", ".", "..", "a/b", "/a", "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name("execbox-job-1").unwrap();
    }

    #[test]
    fn parents_with_dotdot_are_rejected_and_absolute_parents_stay_inside_the_root() {
        assert!(matches!(
            clean_parent(Path::new("execbox/../../etc")),
            Err(CgroupError::InvalidParent { .. })
        ));
        assert!(clean_parent(Path::new("/..")).is_err());
        assert_eq!(
            clean_parent(Path::new("/sys/fs")).unwrap(),
            Path::new("sys/fs")
        );
        assert_eq!(
            clean_parent(Path::new("./a/./b")).unwrap(),
            Path::new("a/b")
        );
    }

    #[test]
    fn cpu_quota_is_cores_times_the_period_with_the_kernel_minimum() {
        assert_eq!(cpu_quota_us(0.5).unwrap(), 50_000);
        assert_eq!(cpu_quota_us(2.0).unwrap(), 200_000);
        assert_eq!(cpu_quota_us(1.234_567).unwrap(), 123_457);
        assert_eq!(cpu_quota_us(0.000_1).unwrap(), 1_000);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(cpu_quota_us(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn detection_is_unavailable_when_neither_version_has_memory_and_pids() {
        let tmp = tempfile::tempdir().unwrap();
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                         35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        fs::fake::cgroup(
            &tmp.path().join("sys/fs/cgroup/unified"),
            &[("cgroup.controllers", "cpu io\n")],
        );
        let err = Hierarchy::detect_from(mountinfo, "4:memory:/\n0::/\n", tmp.path()).unwrap_err();
        let CgroupError::Unavailable(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("memory"), "{msg}");
        assert!(msg.contains("pids"), "{msg}");
        let err = Hierarchy::detect_from("", "", tmp.path()).unwrap_err();
        assert!(matches!(err, CgroupError::Unavailable(_)));
    }

    #[test]
    fn detection_falls_back_to_v1_on_a_hybrid_host() {
        let tmp = tempfile::tempdir().unwrap();
        fs::fake::cgroup(
            &tmp.path().join("sys/fs/cgroup/unified"),
            &[("cgroup.controllers", ""), ("cgroup.procs", "1\n")],
        );
        let h = Hierarchy::detect_from(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp.path()).unwrap();
        assert_eq!(h.version(), 1);
        let d = h.description();
        assert!(d.contains("memory/process_api/abc"), "{d}");
        assert!(h.warnings().is_empty(), "{:?}", h.warnings());
    }
}
