//! cgroup v2 backend: one directory per job in the unified hierarchy.
//!
//! Owns: detection of a usable cgroup2 mount, enabling `memory pids cpu` in the parent's
//! `cgroup.subtree_control` (first moving the supervisor into the [`SUPERVISOR_LEAF`] when the
//! parent holds processes: the "no internal processes" rule), the v2 limit files, and
//! `cgroup.kill`.
//!
//! Must never: move any process but this one (and this one only out of the parent it is
//! creating jobs in), or enable a controller the parent does not offer in
//! `cgroup.controllers`.
//!
//! Not verified on a real kernel in CI (the CI host is hybrid, its cgroup2 has no memory or
//! pids): these paths run against the fake tree of `fs::fake`.

use std::path::{Path, PathBuf};

use super::fs::{self, read_file};
use super::{
    CPU_PERIOD_US, CgroupError, JobCgroup, JobKind, JobSpec, LimitEvents, Mount, OwnCgroup,
    SUPERVISOR_LEAF, Usage,
};

/// Controllers a job needs; detection and creation refuse without them.
const REQUIRED: [&str; 2] = ["memory", "pids"];
/// Controllers enabled for jobs when offered.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

#[derive(Debug, Clone)]
pub(crate) struct V2 {
    /// The cgroup2 mount on disk: the base of a `--cgroup-parent`.
    mount: PathBuf,
    /// This process's cgroup at detection time: the parent when none is given.
    own: PathBuf,
}

/// The controllers listed in a `cgroup.controllers` or `cgroup.subtree_control` file.
fn controllers(file: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(read_file(file)?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn offers_required(dir: &Path) -> bool {
    controllers(&dir.join("cgroup.controllers"))
        .is_ok_and(|c| REQUIRED.iter().all(|r| c.iter().any(|x| x == r)))
}

impl V2 {
    /// A cgroup2 mount whose root or this process's cgroup offers memory and pids; otherwise
    /// why not.
    pub(crate) fn detect(
        mounts: &[Mount],
        own: &[OwnCgroup],
        prefix: &Path,
    ) -> Result<(V2, Vec<String>), String> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or("no cgroup2 mount in mountinfo")?;
        let own_path = own
            .iter()
            .find(|c| c.hierarchy_id == 0 && c.controllers.is_empty())
            .map_or("/", |c| c.path.as_str());
        let root = mount.on_disk(prefix);
        let own_dir = mount.dir_of(prefix, own_path);
        let v2 = V2 {
            mount: root.clone(),
            own: own_dir.clone(),
        };
        if offers_required(&own_dir) {
            Ok((v2, Vec::new()))
        } else if offers_required(&root) {
            let warning = format!(
                "this process's cgroup {} does not offer memory and pids: jobs need a delegated \
                 --cgroup-parent",
                own_dir.display()
            );
            Ok((v2, vec![warning]))
        } else {
            Err(format!(
                "cgroup2 at {} offers no memory and pids in cgroup.controllers (here or in {})",
                root.display(),
                own_dir.display()
            ))
        }
    }

    pub(crate) fn description(&self) -> String {
        format!(
            "cgroup v2 at {}; jobs go under {} unless a parent is given",
            self.mount.display(),
            self.own.display()
        )
    }

    /// The directory jobs are created in.
    pub(crate) fn base(&self, parent: Option<&Path>) -> PathBuf {
        parent.map_or_else(|| self.own.clone(), |p| self.mount.join(p))
    }

    pub(crate) fn create(&self, job: &mut JobCgroup, spec: &JobSpec) -> Result<(), CgroupError> {
        let base = self.base(spec.parent);
        let offered = controllers(&base.join("cgroup.controllers"))?;
        let offers = |c: &str| offered.iter().any(|o| o == c);
        if let Some(missing) = REQUIRED.iter().find(|c| !offers(c)) {
            return Err(CgroupError::MissingController {
                path: base,
                controller: (*missing).to_owned(),
            });
        }
        if spec.cpu_quota.is_some() && !offers("cpu") {
            job.warnings.push(format!(
                "cpu not offered in {}: cpu limit not applied",
                base.display()
            ));
        }
        self.enable_controllers(job, &base, &offers)?;

        let dir = base.join(spec.name);
        job.mkdir(&dir)?;
        job.kind = JobKind::V2(Job { dir: dir.clone() });

        if let Some(bytes) = spec.limits.memory {
            fs::write_limit(dir.join("memory.max"), &bytes.to_string())?;
        }
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            fs::write_limit(swap, "0")?;
        } else {
            job.warnings.push(format!(
                "{} absent (no swap accounting): swap not limited",
                swap.display()
            ));
        }
        // On OOM kill the whole job, not one process of it: a half-killed job lies.
        fs::write_limit(dir.join("memory.oom.group"), "1")?;
        if let Some(pids) = spec.limits.pids {
            fs::write_limit(dir.join("pids.max"), &pids.to_string())?;
        }
        if let (Some(quota), true) = (spec.cpu_quota, offers("cpu")) {
            fs::write_limit(dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        Ok(())
    }

    /// Enables the wanted controllers for `base`'s children. A cgroup with processes cannot
    /// enable controllers for its children, so this process first moves into a leaf.
    fn enable_controllers(
        &self,
        job: &JobCgroup,
        base: &Path,
        offers: &dyn Fn(&str) -> bool,
    ) -> Result<(), CgroupError> {
        let subtree = base.join("cgroup.subtree_control");
        let enabled = controllers(&subtree)?;
        let missing: Vec<String> = WANTED
            .iter()
            .filter(|c| offers(c) && !enabled.iter().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let pid = std::process::id();
        // Only our own presence can be fixed here; anyone else's makes the write below fail
        // with EBUSY, and the error names the file.
        if fs::procs(&base.join("cgroup.procs"))?.contains(&(pid as i32)) {
            let leaf = base.join(SUPERVISOR_LEAF);
            match job.ops.mkdir(&leaf) {
                Err(CgroupError::CreateDir { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
            let file = leaf.join("cgroup.procs");
            fs::write_file(&file, &pid.to_string())
                .map_err(|source| CgroupError::MoveSupervisor { file, pid, source })?;
        }
        // One write: the kernel applies the whole list or none of it.
        let value = missing.join(" ");
        fs::write_file(&subtree, &value).map_err(|source| CgroupError::EnableController {
            file: subtree,
            controller: value,
            source,
        })
    }

    /// A handle on an existing job directory (stale-cgroup sweep).
    pub(crate) fn open_existing(&self, job: &mut JobCgroup, parent: Option<&Path>, name: &str) {
        let dir = self.base(parent).join(name);
        if dir.is_dir() {
            job.dirs.push(dir.clone());
        }
        job.kind = JobKind::V2(Job { dir });
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    dir: PathBuf,
}

impl Job {
    pub(crate) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        fs::attach_pid(&self.dir.join("cgroup.procs"), pid)
    }

    pub(crate) fn events(&self) -> LimitEvents {
        LimitEvents {
            oom_kills: fs::read_keyed(&self.dir.join("memory.events"), "oom_kill"),
            pids_max_hits: fs::read_keyed(&self.dir.join("pids.events"), "max"),
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        let cpu_stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok();
        Usage {
            // memory.peak exists from Linux 5.19.
            memory_peak_bytes: fs::read_u64(&self.dir.join("memory.peak")),
            cpu_usec: cpu_stat.and_then(|s| fs::keyed_value(&s, "usage_usec")),
        }
    }

    /// `freeze`: before Linux 5.14, hold the job still while signalling (see
    /// [`super::JobCgroup::kill_without_freezing`] for when not to).
    pub(crate) fn kill(&self, freeze: bool) -> Result<(), CgroupError> {
        let file = self.dir.join("cgroup.kill");
        if file.exists() {
            // Linux 5.14+: the kernel SIGKILLs every process, including ones forking meanwhile.
            return fs::write_file(&file, "1")
                .map_err(|source| CgroupError::KillWrite { file, source });
        }
        if !freeze {
            return fs::kill_until_empty(&[self.dir.join("cgroup.procs")], None);
        }
        let freeze_file = self.dir.join("cgroup.freeze");
        let freeze = |on: bool| {
            fs::write_file(&freeze_file, if on { "1" } else { "0" }).map_err(|source| {
                CgroupError::Freeze {
                    file: freeze_file.clone(),
                    action: if on { "freeze" } else { "thaw" },
                    source,
                }
            })
        };
        fs::kill_until_empty(&[self.dir.join("cgroup.procs")], Some(&freeze))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{read_to_string, write};

    use super::*;
    use crate::sandbox::cgroup::fs::fake::{self, Faults};
    use crate::sandbox::cgroup::{CgroupLimits, Hierarchy};

    /// Files every fake cgroup has; new cgroups copy them (empty) from their parent.
    const IFACE: [&str; 11] = [
        "cgroup.kill",
        "cgroup.freeze",
        "memory.max",
        "memory.swap.max",
        "memory.oom.group",
        "memory.events",
        "memory.peak",
        "pids.max",
        "pids.events",
        "cpu.max",
        "cpu.stat",
    ];
    const SERVICE: &str = "sys/fs/cgroup/system.slice/execbox.service";

    struct Fake {
        tmp: tempfile::TempDir,
        hierarchy: Hierarchy,
    }

    impl Fake {
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
        fn read(&self, rel: &str) -> String {
            read_to_string(self.path(rel)).unwrap()
        }
    }

    /// A pure-v2 host with systemd delegation: the supervisor runs in `execbox.service`, whose
    /// `cgroup.procs` and `cgroup.subtree_control` the test chooses.
    fn fake_v2(service_procs: &str, service_subtree: &str, faults: Faults) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let with_iface = |extra: &[(&'static str, &'static str)]| {
            let mut files: Vec<(&str, &str)> = IFACE.iter().map(|f| (*f, "")).collect();
            files.extend_from_slice(extra);
            files
        };
        let root = tmp.path().join("sys/fs/cgroup");
        fake::cgroup(
            &root,
            &with_iface(&[
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("cgroup.subtree_control", "cpu memory pids\n"),
                ("cgroup.procs", ""),
            ]),
        );
        fake::cgroup(
            &root.join("system.slice"),
            &with_iface(&[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("cgroup.subtree_control", "cpu memory pids\n"),
                ("cgroup.procs", ""),
            ]),
        );
        let service = tmp.path().join(SERVICE);
        fake::cgroup(
            &service,
            &with_iface(&[("cgroup.controllers", "cpu memory pids\n")]),
        );
        write(service.join("cgroup.procs"), service_procs).unwrap();
        write(service.join("cgroup.subtree_control"), service_subtree).unwrap();
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/system.slice/execbox.service\n";
        let hierarchy = Hierarchy::detect_from(mountinfo, own, tmp.path())
            .unwrap()
            .with_fake_kernel(faults);
        Fake { tmp, hierarchy }
    }

    fn limits() -> CgroupLimits {
        CgroupLimits {
            memory: Some(1 << 30),
            pids: Some(512),
            cpu: Some(1.5),
        }
    }

    #[test]
    fn detection_prefers_v2_when_the_own_cgroup_offers_memory_and_pids() {
        let f = fake_v2("", "", Faults::default());
        assert_eq!(f.hierarchy.version(), 2);
        assert!(f.hierarchy.warnings().is_empty());
        assert!(f.hierarchy.description().contains("execbox.service"));
    }

    #[test]
    fn detection_accepts_a_root_offering_controllers_with_a_warning_about_delegation() {
        let f = fake_v2("", "", Faults::default());
        write(f.path(SERVICE).join("cgroup.controllers"), "cpu\n").unwrap();
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::detect_from(
            mountinfo,
            "0::/system.slice/execbox.service\n",
            f.tmp.path(),
        )
        .unwrap();
        assert_eq!(h.version(), 2);
        assert!(
            h.warnings()[0].contains("--cgroup-parent"),
            "{:?}",
            h.warnings()
        );
    }

    #[test]
    fn the_supervisor_moves_into_a_leaf_before_enabling_controllers_in_a_busy_parent() {
        let f = fake_v2(&format!("{}\n", std::process::id()), "", Faults::default());
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        let leaf_procs = f.read(&format!("{SERVICE}/{SUPERVISOR_LEAF}/cgroup.procs"));
        assert_eq!(leaf_procs, std::process::id().to_string());
        assert_eq!(
            f.read(&format!("{SERVICE}/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(job.paths(), [f.path(SERVICE).join("job-1")]);
    }

    #[test]
    fn an_empty_parent_gets_controllers_enabled_without_moving_anyone() {
        let f = fake_v2("", "", Faults::default());
        let _job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        assert!(!f.path(SERVICE).join(SUPERVISOR_LEAF).exists());
        assert_eq!(
            f.read(&format!("{SERVICE}/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
    }

    #[test]
    fn a_parent_busy_with_other_processes_does_not_pull_the_supervisor_in() {
        let f = fake_v2("4242\n", "", Faults::default());
        let _job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        assert!(!f.path(SERVICE).join(SUPERVISOR_LEAF).exists());
    }

    #[test]
    fn controllers_already_enabled_are_left_alone() {
        let f = fake_v2("4242\n", "cpu memory pids\n", Faults::default());
        let _job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        assert!(!f.path(SERVICE).join(SUPERVISOR_LEAF).exists());
        assert_eq!(
            f.read(&format!("{SERVICE}/cgroup.subtree_control")),
            "cpu memory pids\n"
        );
    }

    #[test]
    fn limit_files_get_exact_values() {
        let f = fake_v2("", "", Faults::default());
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        let file = |name: &str| f.read(&format!("{SERVICE}/job-1/{name}"));
        assert_eq!(file("memory.max"), "1073741824");
        assert_eq!(file("memory.swap.max"), "0");
        assert_eq!(file("memory.oom.group"), "1");
        assert_eq!(file("pids.max"), "512");
        assert_eq!(file("cpu.max"), "150000 100000");
        assert!(job.warnings().is_empty(), "{:?}", job.warnings());
    }

    #[test]
    fn absent_limits_leave_the_kernel_defaults() {
        let f = fake_v2("", "", Faults::default());
        let _job = f
            .hierarchy
            .create_job(None, "job-1", &CgroupLimits::default())
            .unwrap();
        let file = |name: &str| f.read(&format!("{SERVICE}/job-1/{name}"));
        assert_eq!(file("memory.max"), "");
        assert_eq!(file("pids.max"), "");
        assert_eq!(file("cpu.max"), "");
        assert_eq!(file("memory.swap.max"), "0");
    }

    #[test]
    fn a_cpu_limit_without_the_cpu_controller_is_skipped_with_a_warning() {
        let f = fake_v2("", "", Faults::default());
        write(f.path(SERVICE).join("cgroup.controllers"), "memory pids\n").unwrap();
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        assert_eq!(f.read(&format!("{SERVICE}/job-1/cpu.max")), "");
        assert!(job.warnings()[0].contains("cpu limit not applied"));
        assert_eq!(
            f.read(&format!("{SERVICE}/cgroup.subtree_control")),
            "+memory +pids"
        );
    }

    #[test]
    fn a_parent_without_pids_is_refused_by_name() {
        let f = fake_v2("", "", Faults::default());
        write(f.path(SERVICE).join("cgroup.controllers"), "memory\n").unwrap();
        let err = f
            .hierarchy
            .create_job(None, "job-1", &limits())
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingController { ref controller, ref path }
                if controller == "pids" && path == &f.path(SERVICE)),
            "{err:?}"
        );
        assert!(!f.path(SERVICE).join("job-1").exists());
    }

    #[test]
    fn a_failed_limit_write_removes_the_half_made_cgroup() {
        let faults = Faults {
            file_as_dir: Some("pids.max"),
        };
        let f = fake_v2("", "", faults);
        let err = f
            .hierarchy
            .create_job(None, "job-1", &limits())
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::WriteLimit { ref file, ref value, .. }
                if file.ends_with("job-1/pids.max") && value == "512"),
            "{err:?}"
        );
        assert!(!f.path(SERVICE).join("job-1").exists());
    }

    #[test]
    fn an_existing_directory_is_never_reused_as_a_job() {
        let f = fake_v2("", "", Faults::default());
        std::fs::create_dir(f.path(SERVICE).join("job-1")).unwrap();
        let err = f
            .hierarchy
            .create_job(None, "job-1", &limits())
            .unwrap_err();
        assert!(matches!(err, CgroupError::CreateDir { .. }), "{err:?}");
        // Not ours: left in place.
        assert!(f.path(SERVICE).join("job-1").exists());
    }

    #[test]
    fn a_delegated_parent_is_relative_to_the_mount_root_and_cannot_escape_it() {
        let f = fake_v2("", "", Faults::default());
        let job = f
            .hierarchy
            .create_job(Some(Path::new("/system.slice")), "job-1", &limits())
            .unwrap();
        assert_eq!(job.paths(), [f.path("sys/fs/cgroup/system.slice/job-1")]);
        for escape in ["../../etc", "system.slice/../../.."] {
            let err = f
                .hierarchy
                .create_job(Some(Path::new(escape)), "job-2", &limits())
                .unwrap_err();
            assert!(matches!(err, CgroupError::InvalidParent { .. }), "{err:?}");
        }
        let err = f
            .hierarchy
            .create_job(None, "../job", &limits())
            .unwrap_err();
        assert!(matches!(err, CgroupError::InvalidName { .. }), "{err:?}");
    }

    #[test]
    fn attach_writes_the_pid_and_kill_writes_1_to_cgroup_kill() {
        let f = fake_v2("", "", Faults::default());
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        job.attach(4242).unwrap();
        assert_eq!(f.read(&format!("{SERVICE}/job-1/cgroup.procs")), "4242");
        job.kill().unwrap();
        assert_eq!(f.read(&format!("{SERVICE}/job-1/cgroup.kill")), "1");
    }

    #[test]
    fn events_and_usage_are_read_from_the_job_files() {
        let f = fake_v2("", "", Faults::default());
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        let dir = f.path(SERVICE).join("job-1");
        write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        write(dir.join("pids.events"), "max 7\n").unwrap();
        write(dir.join("memory.peak"), "8388608\n").unwrap();
        write(
            dir.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        assert_eq!(
            job.events(),
            LimitEvents {
                oom_kills: 1,
                pids_max_hits: 7
            }
        );
        assert_eq!(
            job.usage(),
            Usage {
                memory_peak_bytes: Some(8 << 20),
                cpu_usec: Some(1500)
            }
        );
    }

    #[test]
    fn remove_and_drop_delete_the_job_directory() {
        let f = fake_v2("", "", Faults::default());
        let job = f.hierarchy.create_job(None, "job-1", &limits()).unwrap();
        job.remove().unwrap();
        assert!(!f.path(SERVICE).join("job-1").exists());
        drop(f.hierarchy.create_job(None, "job-2", &limits()).unwrap());
        assert!(!f.path(SERVICE).join("job-2").exists());
    }

    #[test]
    fn stale_jobs_with_the_prefix_are_removed_and_everything_else_kept() {
        let f = fake_v2(&format!("{}\n", std::process::id()), "", Faults::default());
        let a = f
            .hierarchy
            .create_job(None, "execbox-a", &limits())
            .unwrap();
        let b = f
            .hierarchy
            .create_job(None, "execbox-b", &limits())
            .unwrap();
        let other = f.hierarchy.create_job(None, "other", &limits()).unwrap();
        // A crash: the handles are never dropped.
        std::mem::forget((a, b, other));
        let mut removed = f.hierarchy.remove_stale(None, "execbox-");
        removed.sort();
        assert_eq!(
            removed,
            [
                f.path(SERVICE).join("execbox-a"),
                f.path(SERVICE).join("execbox-b")
            ]
        );
        assert!(f.path(SERVICE).join("other").exists());
        assert!(f.path(SERVICE).join(SUPERVISOR_LEAF).exists());
        // The stale jobs were killed through cgroup.kill before removal.
        assert!(!f.path(SERVICE).join("execbox-a").exists());
    }
}
