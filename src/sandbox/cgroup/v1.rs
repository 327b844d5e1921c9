//! cgroup v1 backend: one directory per job in each hierarchy it uses, all with the same
//! relative name. `memory` and `pids` are required; `cpu` (limit), `cpuacct` (usage) and
//! `freezer` (race-free kill) are used when mounted, and may share a hierarchy
//! (`cpu,cpuacct`), in which case they share the directory.
//!
//! Must never: write `memory.memsw.limit_in_bytes` before `memory.limit_in_bytes` (the kernel
//! requires memsw ≥ limit at every step), or leave a job frozen.

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::fs;
use super::{
    CPU_PERIOD_US, CgroupError, JobCgroup, JobKind, JobSpec, LimitEvents, Mount, OwnCgroup, Usage,
};

/// How long `kill` waits for the freezer to report `FROZEN` before signalling anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// One controller's hierarchy: where it is mounted and where this process's cgroup is.
#[derive(Debug, Clone)]
struct Controller {
    mount: PathBuf,
    own: PathBuf,
}

impl Controller {
    fn find(mounts: &[Mount], own: &[OwnCgroup], prefix: &Path, name: &str) -> Option<Self> {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.has_option(name))?;
        let own_path = own
            .iter()
            .find(|c| c.controllers.iter().any(|x| x == name))
            .map_or("/", |c| c.path.as_str());
        Some(Controller {
            mount: mount.on_disk(prefix),
            own: mount.dir_of(prefix, own_path),
        })
    }

    fn base(&self, parent: Option<&Path>) -> PathBuf {
        parent.map_or_else(|| self.own.clone(), |p| self.mount.join(p))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct V1 {
    memory: Controller,
    pids: Controller,
    cpu: Option<Controller>,
    cpuacct: Option<Controller>,
    freezer: Option<Controller>,
}

impl V1 {
    /// v1 `memory` and `pids` hierarchies; otherwise why not.
    pub(crate) fn detect(
        mounts: &[Mount],
        own: &[OwnCgroup],
        prefix: &Path,
    ) -> Result<(V1, Vec<String>), String> {
        let find = |name| Controller::find(mounts, own, prefix, name);
        let required = |name| {
            find(name).ok_or_else(|| format!("no cgroup v1 hierarchy with {name} in mountinfo"))
        };
        let v1 = V1 {
            memory: required("memory")?,
            pids: required("pids")?,
            cpu: find("cpu"),
            cpuacct: find("cpuacct"),
            freezer: find("freezer"),
        };
        let mut warnings = Vec::new();
        if v1.cpu.is_none() {
            warnings.push("cgroup v1 cpu controller not mounted: cpu limits are skipped".into());
        }
        if v1.cpuacct.is_none() {
            warnings.push("cgroup v1 cpuacct controller not mounted: no cpu usage".into());
        }
        if v1.freezer.is_none() {
            warnings.push(
                "cgroup v1 freezer not mounted: kill signals without freezing (a fork bomb may \
                 need several rounds)"
                    .into(),
            );
        }
        Ok((v1, warnings))
    }

    pub(crate) fn has_cpu(&self) -> bool {
        self.cpu.is_some()
    }

    pub(crate) fn description(&self) -> String {
        let mut parts = vec![
            format!("memory at {}", self.memory.own.display()),
            format!("pids at {}", self.pids.own.display()),
        ];
        for (name, ctl) in [
            ("cpu", &self.cpu),
            ("cpuacct", &self.cpuacct),
            ("freezer", &self.freezer),
        ] {
            parts.push(match ctl {
                Some(c) => format!("{name} at {}", c.own.display()),
                None => format!("no {name}"),
            });
        }
        format!("cgroup v1: {}", parts.join(", "))
    }

    /// The controllers in creation order: memory first, so a failure later has the most
    /// important directory to clean up already recorded.
    fn controllers(&self) -> [Option<&Controller>; 5] {
        [
            Some(&self.memory),
            Some(&self.pids),
            self.cpu.as_ref(),
            self.cpuacct.as_ref(),
            self.freezer.as_ref(),
        ]
    }

    /// The distinct directories jobs are created in, one per hierarchy.
    pub(crate) fn bases(&self, parent: Option<&Path>) -> Vec<PathBuf> {
        let mut bases: Vec<PathBuf> = Vec::new();
        for ctl in self.controllers().into_iter().flatten() {
            let base = ctl.base(parent);
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        bases
    }

    fn job_paths(&self, parent: Option<&Path>, name: &str) -> Job {
        let dir = |c: &Controller| c.base(parent).join(name);
        Job {
            memory: dir(&self.memory),
            pids: dir(&self.pids),
            cpu: self.cpu.as_ref().map(dir),
            cpuacct: self.cpuacct.as_ref().map(dir),
            freezer: self.freezer.as_ref().map(dir),
        }
    }

    pub(crate) fn create(&self, job: &mut JobCgroup, spec: &JobSpec) -> Result<(), CgroupError> {
        let paths = self.job_paths(spec.parent, spec.name);
        for dir in paths.distinct() {
            job.mkdir(&dir)?;
        }

        if let Some(bytes) = spec.limits.memory {
            let bytes = bytes.to_string();
            fs::write_limit(paths.memory.join("memory.limit_in_bytes"), &bytes)?;
            let memsw = paths.memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                // Memory plus swap capped at the memory limit: no swap on top.
                fs::write_limit(memsw, &bytes)?;
            } else {
                // No swap accounting (swapaccount=0): the best left is not to prefer swap.
                let _ = fs::write_file(&paths.memory.join("memory.swappiness"), "0");
                job.warnings.push(
                    "memory.memsw.limit_in_bytes absent (no swap accounting): swap not \
                     forbidden, only discouraged with memory.swappiness=0"
                        .into(),
                );
            }
        }
        if let Some(pids) = spec.limits.pids {
            fs::write_limit(paths.pids.join("pids.max"), &pids.to_string())?;
        }
        if let (Some(quota), Some(cpu)) = (spec.cpu_quota, &paths.cpu) {
            // Rewriting the period costs milliseconds in the kernel even when unchanged, and a
            // new cgroup already has the default: write it only when it differs.
            let period = cpu.join("cpu.cfs_period_us");
            let current = std::fs::read_to_string(&period).unwrap_or_default();
            if current.trim() != CPU_PERIOD_US.to_string() {
                fs::write_limit(period, &CPU_PERIOD_US.to_string())?;
            }
            fs::write_limit(cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        job.kind = JobKind::V1(paths);
        Ok(())
    }

    /// A handle on an existing job's directories (stale-cgroup sweep).
    pub(crate) fn open_existing(&self, job: &mut JobCgroup, parent: Option<&Path>, name: &str) {
        let paths = self.job_paths(parent, name);
        job.dirs = paths
            .distinct()
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        job.kind = JobKind::V1(paths);
    }
}

/// A v1 job's directory in each hierarchy.
#[derive(Debug)]
pub(crate) struct Job {
    memory: PathBuf,
    pids: PathBuf,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
}

impl Job {
    /// The same directories under another name.
    pub(crate) fn renamed(&self, name: &str) -> Job {
        let dir = |d: &PathBuf| d.with_file_name(name);
        Job {
            memory: dir(&self.memory),
            pids: dir(&self.pids),
            cpu: self.cpu.as_ref().map(dir),
            cpuacct: self.cpuacct.as_ref().map(dir),
            freezer: self.freezer.as_ref().map(dir),
        }
    }

    /// One entry per hierarchy (co-mounted controllers share a directory).
    fn distinct(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let all = [Some(&self.memory), Some(&self.pids)]
            .into_iter()
            .chain([&self.cpu, &self.cpuacct, &self.freezer].map(Option::as_ref));
        for dir in all.flatten() {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        dirs
    }

    pub(crate) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.distinct() {
            fs::attach_pid(&dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    pub(crate) fn events(&self) -> LimitEvents {
        LimitEvents {
            oom_kills: fs::read_keyed(&self.memory.join("memory.oom_control"), "oom_kill"),
            pids_max_hits: fs::read_keyed(&self.pids.join("pids.events"), "max"),
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            memory_peak_bytes: fs::read_u64(&self.memory.join("memory.max_usage_in_bytes")),
            cpu_usec: self
                .cpuacct
                .as_ref()
                .and_then(|d| fs::read_u64(&d.join("cpuacct.usage")))
                .map(|ns| ns / 1_000),
        }
    }

    /// `freeze`: hold the job still while signalling (beats a fork race; see
    /// [`super::JobCgroup::kill_without_freezing`] for when not to).
    pub(crate) fn kill(&self, freeze: bool) -> Result<(), CgroupError> {
        let procs: Vec<PathBuf> = self
            .distinct()
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        let Some(freezer) = self.freezer.as_ref().filter(|_| freeze) else {
            return fs::kill_until_empty(&procs, None);
        };
        let state = freezer.join("freezer.state");
        let freeze = |on: bool| set_freezer(&state, on);
        let result = fs::kill_until_empty(&procs, Some(&freeze));
        // Never leave the job frozen, whatever happened above.
        let thawed = set_freezer(&state, false);
        result.and(thawed)
    }
}

/// Writes `FROZEN`/`THAWED`; when freezing, waits briefly until the kernel reports `FROZEN`
/// (tasks in uninterruptible sleep can keep it at `FREEZING`; the signals go out anyway).
fn set_freezer(state: &Path, frozen: bool) -> Result<(), CgroupError> {
    let (value, action) = if frozen {
        ("FROZEN", "freeze")
    } else {
        ("THAWED", "thaw")
    };
    match fs::write_file(state, value) {
        Ok(()) => {}
        // The cgroup is already gone: nothing left to freeze or thaw.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Freeze {
                file: state.to_owned(),
                action,
                source,
            });
        }
    }
    let deadline = Instant::now() + FREEZE_WAIT;
    while frozen && Instant::now() < deadline {
        match std::fs::read_to_string(state) {
            Ok(s) if s.trim() == "FREEZING" => sleep(Duration::from_millis(1)),
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::{read_to_string, write};

    use super::*;
    use crate::sandbox::cgroup::fs::fake::{self, Faults};
    use crate::sandbox::cgroup::tests::{HYBRID_CGROUP, HYBRID_MOUNTINFO};
    use crate::sandbox::cgroup::{CgroupLimits, Hierarchy};

    /// This machine's hybrid layout as a fake tree (the v2 part offers nothing).
    fn fake_hybrid(faults: Faults) -> (tempfile::TempDir, Hierarchy) {
        let tmp = tempfile::tempdir().unwrap();
        let cg = tmp.path().join("sys/fs/cgroup");
        fake::cgroup(&cg.join("unified"), &[("cgroup.controllers", "")]);
        let procs = ("cgroup.procs", "");
        fake::cgroup(
            &cg.join("memory/process_api/abc"),
            &[
                procs,
                ("memory.limit_in_bytes", ""),
                ("memory.memsw.limit_in_bytes", ""),
                ("memory.oom_control", ""),
                ("memory.max_usage_in_bytes", ""),
            ],
        );
        fake::cgroup(
            &cg.join("pids"),
            &[procs, ("pids.max", ""), ("pids.events", "")],
        );
        fake::cgroup(
            &cg.join("cpu"),
            &[procs, ("cpu.cfs_period_us", ""), ("cpu.cfs_quota_us", "")],
        );
        fake::cgroup(&cg.join("cpuacct"), &[procs, ("cpuacct.usage", "")]);
        fake::cgroup(&cg.join("freezer"), &[procs, ("freezer.state", "")]);
        let h = Hierarchy::detect_from(HYBRID_MOUNTINFO, HYBRID_CGROUP, tmp.path())
            .unwrap()
            .with_fake_kernel(faults);
        (tmp, h)
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory: Some(64 << 20),
        pids: Some(32),
        cpu: Some(0.5),
    };

    #[test]
    fn a_fake_v1_job_gets_one_dir_per_hierarchy_with_limits_in_order() {
        let (tmp, h) = fake_hybrid(Faults::default());
        let job = h.create_job(None, "job-1", &LIMITS).unwrap();
        let cg = tmp.path().join("sys/fs/cgroup");
        let mem = cg.join("memory/process_api/abc/job-1");
        assert_eq!(
            job.paths(),
            [
                mem.clone(),
                cg.join("pids/job-1"),
                cg.join("cpu/job-1"),
                cg.join("cpuacct/job-1"),
                cg.join("freezer/job-1")
            ]
        );
        let read = |p: PathBuf| read_to_string(p).unwrap();
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "67108864");
        assert_eq!(read(cg.join("pids/job-1/pids.max")), "32");
        assert_eq!(read(cg.join("cpu/job-1/cpu.cfs_period_us")), "100000");
        assert_eq!(read(cg.join("cpu/job-1/cpu.cfs_quota_us")), "50000");
        write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        write(cg.join("pids/job-1/pids.events"), "max 3\n").unwrap();
        write(cg.join("cpuacct/job-1/cpuacct.usage"), "2500000\n").unwrap();
        write(mem.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        assert_eq!(
            job.events(),
            LimitEvents {
                oom_kills: 2,
                pids_max_hits: 3
            }
        );
        assert_eq!(
            job.usage(),
            Usage {
                memory_peak_bytes: Some(4096),
                cpu_usec: Some(2500)
            }
        );
        job.remove().unwrap();
        assert!(!mem.exists() && !cg.join("freezer/job-1").exists());
    }

    #[test]
    fn co_mounted_cpu_and_cpuacct_share_one_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let mountinfo = "\
1 0 0:1 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
2 0 0:2 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
3 0 0:3 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        let own = "3:cpu,cpuacct:/a\n2:pids:/\n1:memory:/\n";
        let h = Hierarchy::detect_from(mountinfo, own, tmp.path()).unwrap();
        assert_eq!(h.version(), 1);
        assert!(h.warnings()[0].contains("freezer"), "{:?}", h.warnings());
        let Backend::V1(v1) = &h.backend else {
            panic!()
        };
        let cg = tmp.path().join("sys/fs/cgroup");
        assert_eq!(
            v1.bases(None),
            [cg.join("memory"), cg.join("pids"), cg.join("cpu,cpuacct/a")]
        );
    }

    use crate::sandbox::cgroup::Backend;

    #[test]
    fn killing_without_freezing_never_touches_the_freezer() {
        // A supervisor killed between freeze and thaw would leave its job frozen, SIGKILLs
        // pending, forever: after pid 1 is dead the supervisor kills without the freezer.
        let (tmp, h) = fake_hybrid(Faults::default());
        let job = h.create_job(None, "job-f", &LIMITS).unwrap();
        // A freezer that cannot be written: any freeze fails loudly.
        let state = tmp.path().join("sys/fs/cgroup/freezer/job-f/freezer.state");
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let procs: Vec<PathBuf> = job.paths().iter().map(|d| d.join("cgroup.procs")).collect();
        for p in &procs {
            write(p, format!("{}\n", child.id())).unwrap();
        }
        // Control: the ordinary kill freezes first, and fails here.
        assert!(job.kill().is_err());
        // The fake kernel: the cgroup is empty once its process is dead.
        let emptied = std::thread::spawn(move || {
            child.wait().unwrap();
            for p in &procs {
                write(p, "").unwrap();
            }
        });
        job.kill_without_freezing().unwrap();
        emptied.join().unwrap();
        job.remove().unwrap();
    }

    #[test]
    fn a_failure_in_the_second_hierarchy_removes_the_first() {
        let (tmp, h) = fake_hybrid(Faults {
            file_as_dir: Some("pids.max"),
        });
        let err = h.create_job(None, "job-1", &LIMITS).unwrap_err();
        assert!(matches!(err, CgroupError::WriteLimit { .. }), "{err:?}");
        let cg = tmp.path().join("sys/fs/cgroup");
        for dir in ["memory/process_api/abc/job-1", "pids/job-1", "cpu/job-1"] {
            assert!(!cg.join(dir).exists(), "{dir} left behind");
        }
    }

    #[test]
    fn without_memsw_swappiness_is_zeroed_and_a_warning_recorded() {
        let (tmp, h) = fake_hybrid(Faults::default());
        let mem = tmp.path().join("sys/fs/cgroup/memory/process_api/abc");
        std::fs::remove_file(mem.join("memory.memsw.limit_in_bytes")).unwrap();
        write(mem.join("memory.swappiness"), "60").unwrap();
        let job = h.create_job(None, "job-1", &LIMITS).unwrap();
        assert_eq!(
            read_to_string(mem.join("job-1/memory.swappiness")).unwrap(),
            "0"
        );
        assert!(job.warnings()[0].contains("swap"), "{:?}", job.warnings());
    }

    // ---- Against this machine's real v1 hierarchy (root; CI runs as root). ----

    mod real {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::ExitStatusExt;
        use std::process::{Child, Command, Stdio};
        use std::sync::atomic::{AtomicU32, Ordering};

        use super::*;

        /// The host's v1 hierarchy, or `None` (skip) when this host or user cannot run the
        /// test; with `EXECBOX_REQUIRE_ALL=1` that is a failure instead.
        fn host_v1() -> Option<Hierarchy> {
            let why_not = match Hierarchy::detect() {
                Ok(h) if h.version() != 1 => Some(format!("host is {}", h.description())),
                Ok(_) if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) => {
                    Some("not root".to_owned())
                }
                Ok(h) => return Some(h),
                Err(e) => Some(e.to_string()),
            };
            let why_not = why_not.unwrap_or_default();
            assert!(
                std::env::var("EXECBOX_REQUIRE_ALL").as_deref() != Ok("1"),
                "real cgroup v1 test cannot run: {why_not}"
            );
            eprintln!("skipping real cgroup v1 test: {why_not}");
            None
        }

        fn unique(tag: &str) -> String {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            format!("execbox-test-{}-{n}-{tag}", std::process::id())
        }

        /// `sh -c script` that first waits for a line on stdin, so it can be attached before
        /// it does anything.
        fn gated(script: &str) -> Child {
            Command::new("sh")
                .arg("-c")
                .arg(format!("read _gate; {script}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        }

        fn open_gate(child: &mut Child) {
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }

        fn procs_of(dir: &Path) -> Vec<i32> {
            fs::procs(&dir.join("cgroup.procs")).unwrap()
        }

        #[test]
        fn a_real_v1_job_holds_its_limits_and_child_and_is_gone_after_kill_and_remove() {
            let Some(h) = host_v1() else { return };
            let job = h.create_job(None, &unique("life"), &LIMITS).unwrap();
            let JobKind::V1(paths) = &job.kind else {
                panic!()
            };
            let read = |p: PathBuf| read_to_string(p).unwrap().trim().to_owned();
            assert_eq!(read(paths.memory.join("memory.limit_in_bytes")), "67108864");
            let memsw = paths.memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                assert_eq!(read(memsw), "67108864");
            }
            assert_eq!(read(paths.pids.join("pids.max")), "32");
            if let Some(cpu) = &paths.cpu {
                assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
                assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
            }

            let mut child = Command::new("sleep").arg("30").spawn().unwrap();
            let pid = child.id() as i32;
            job.attach(pid).unwrap();
            for dir in job.paths() {
                assert_eq!(procs_of(dir), [pid], "{}", dir.display());
            }
            job.kill().unwrap();
            assert_eq!(child.wait().unwrap().signal(), Some(9));
            assert!(job.usage().memory_peak_bytes.is_some());
            let dirs = job.paths().to_vec();
            job.remove().unwrap();
            for dir in dirs {
                assert!(!dir.exists(), "{} left behind", dir.display());
            }
        }

        #[test]
        fn a_real_kill_empties_a_job_of_many_processes_with_and_without_the_freezer() {
            let Some(h) = host_v1() else { return };
            for use_freezer in [true, false] {
                let mut job = h.create_job(None, &unique("many"), &LIMITS).unwrap();
                if !use_freezer && let JobKind::V1(paths) = &mut job.kind {
                    paths.freezer = None;
                }
                let mut child = gated("for i in 1 2 3 4 5; do sleep 30 & done; wait");
                job.attach(child.id() as i32).unwrap();
                open_gate(&mut child);
                let memory = job.paths()[0].clone();
                let deadline = Instant::now() + Duration::from_secs(5);
                while procs_of(&memory).len() < 6 && Instant::now() < deadline {
                    sleep(Duration::from_millis(5));
                }
                assert_eq!(procs_of(&memory).len(), 6);
                job.kill().unwrap();
                assert!(job.paths().iter().all(|d| procs_of(d).is_empty()));
                assert_eq!(child.wait().unwrap().signal(), Some(9));
                job.remove().unwrap();
            }
        }

        #[test]
        fn a_real_fork_past_pids_max_is_counted() {
            let Some(h) = host_v1() else { return };
            let limits = CgroupLimits {
                pids: Some(3),
                ..CgroupLimits::default()
            };
            let job = h.create_job(None, &unique("pids"), &limits).unwrap();
            let mut child = gated("for i in 1 2 3 4 5 6; do sleep 5 & done; wait");
            job.attach(child.id() as i32).unwrap();
            open_gate(&mut child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while job.events().pids_max_hits == 0 && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
            assert!(job.events().pids_max_hits > 0, "{:?}", job.events());
            job.kill().unwrap();
            child.wait().unwrap();
            job.remove().unwrap();
        }

        #[test]
        fn a_real_memory_hog_is_oom_killed_and_counted() {
            let Some(h) = host_v1() else { return };
            let limits = CgroupLimits {
                memory: Some(32 << 20),
                ..CgroupLimits::default()
            };
            let job = h.create_job(None, &unique("oom"), &limits).unwrap();
            // The shell holds the whole command substitution in memory.
            let mut child = gated("x=$(head -c 400000000 /dev/zero | tr '\\0' x); echo ${#x}");
            job.attach(child.id() as i32).unwrap();
            open_gate(&mut child);
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(9), "{status:?}");
            assert!(job.events().oom_kills >= 1, "{:?}", job.events());
            job.kill().unwrap();
            job.remove().unwrap();
        }

        #[test]
        fn a_real_name_clash_in_the_second_hierarchy_leaves_nothing_in_the_first() {
            let Some(h) = host_v1() else { return };
            let name = unique("clash");
            let Backend::V1(v1) = &h.backend else {
                panic!()
            };
            let paths = v1.job_paths(None, &name);
            std::fs::create_dir(&paths.pids).unwrap();
            let err = h.create_job(None, &name, &LIMITS).unwrap_err();
            assert!(
                matches!(err, CgroupError::CreateDir { ref path, .. } if path == &paths.pids),
                "{err:?}"
            );
            assert!(!paths.memory.exists());
            // The clashing directory was not ours to remove.
            assert!(paths.pids.exists());
            std::fs::remove_dir(&paths.pids).unwrap();
        }

        #[test]
        fn real_stale_jobs_are_killed_and_removed_at_the_next_start() {
            let Some(h) = host_v1() else { return };
            let prefix = unique("stale-");
            let job = h.create_job(None, &format!("{prefix}a"), &LIMITS).unwrap();
            let mut child = Command::new("sleep").arg("30").spawn().unwrap();
            job.attach(child.id() as i32).unwrap();
            let dirs = job.paths().to_vec();
            // A crashed supervisor never drops its handles.
            std::mem::forget(job);
            let mut removed = h.remove_stale(None, &prefix);
            removed.sort();
            let mut expected = dirs.clone();
            expected.sort();
            assert_eq!(removed, expected);
            assert_eq!(child.wait().unwrap().signal(), Some(9));
            assert!(dirs.iter().all(|d| !d.exists()));
        }

        #[test]
        fn real_removal_racing_with_process_exit_succeeds() {
            let Some(h) = host_v1() else { return };
            for round in 0..20 {
                let job = h.create_job(None, &unique("race"), &LIMITS).unwrap();
                let mut child = gated("true");
                job.attach(child.id() as i32).unwrap();
                open_gate(&mut child);
                // Exit and removal race: rmdir's EBUSY retry must absorb the exiting task.
                if round % 2 == 0 {
                    job.kill().unwrap();
                }
                let dirs = job.paths().to_vec();
                let reaper = std::thread::spawn(move || child.wait());
                sleep(Duration::from_micros(200 * round));
                job.kill().unwrap();
                job.remove().unwrap();
                reaper.join().unwrap().unwrap();
                assert!(dirs.iter().all(|d| !d.exists()));
            }
        }
    }
}
