//! File-level cgroupfs operations shared by the v1 and v2 backends: writing one value to one
//! interface file, reading flat-keyed files, listing `cgroup.procs`, removing a cgroup
//! directory with a short EBUSY retry, and the signal loop that empties a cgroup.
//!
//! Must never: create interface files (the kernel creates them; a missing file is an error),
//! signal this process itself or pid 1, or wait without a bound.
//!
//! Directory creation and removal go through [`DirOps`] so tests can run against a fake tree
//! in a tempdir that behaves like the kernel where it matters (new cgroups come populated,
//! `rmdir` refuses while processes remain).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CgroupError;

/// How long `remove` retries an `rmdir` that fails with EBUSY (processes still exiting).
pub(crate) const RMDIR_RETRY: Duration = Duration::from_millis(500);
/// How long `kill` keeps signalling until `cgroup.procs` is empty.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(5);

/// How cgroup directories are made and removed: by the kernel, or by a test's fake tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirOps {
    /// A real cgroupfs: `mkdir` populates the interface files, `rmdir` removes them.
    Kernel,
    /// A plain directory tree that imitates the kernel (see [`fake`]).
    #[cfg(test)]
    Fake(fake::Faults),
}

impl DirOps {
    /// Creates one cgroup directory; never creates missing ancestors (they would be cgroups
    /// nobody removes).
    pub(crate) fn mkdir(self, path: &Path) -> Result<(), CgroupError> {
        let made = match self {
            DirOps::Kernel => fs::create_dir(path),
            #[cfg(test)]
            DirOps::Fake(faults) => fake::mkdir(path, faults),
        };
        made.map_err(|source| CgroupError::CreateDir {
            path: path.to_owned(),
            source,
        })
    }

    fn rmdir_once(self, path: &Path) -> io::Result<()> {
        match self {
            DirOps::Kernel => fs::remove_dir(path),
            #[cfg(test)]
            DirOps::Fake(_) => fake::rmdir(path),
        }
    }

    /// Removes one cgroup directory. Absent counts as removed; EBUSY (the last processes are
    /// still exiting, or a racing attach) is retried for [`RMDIR_RETRY`].
    pub(crate) fn rmdir(self, path: &Path) -> Result<(), CgroupError> {
        let deadline = Instant::now() + RMDIR_RETRY;
        loop {
            match self.rmdir_once(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    sleep(POLL);
                }
                Err(source) => {
                    return Err(CgroupError::RemoveDir {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Removes `dirs` in reverse creation order, trying every one; returns the first error.
    pub(crate) fn rmdir_all(self, dirs: &[PathBuf]) -> Result<(), CgroupError> {
        let mut first = None;
        for dir in dirs.iter().rev() {
            if let Err(e) = self.rmdir(dir) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Writes `value` to an existing interface file in one `write(2)`, as cgroupfs expects
/// (`O_TRUNC` is ignored by cgroupfs and keeps the fake tree's files exact).
pub(crate) fn write_file(file: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(file)?;
    f.write_all(value.as_bytes())
}

/// Writes one limit; the error names the file and the value.
pub(crate) fn write_limit(file: PathBuf, value: &str) -> Result<(), CgroupError> {
    write_file(&file, value).map_err(|source| CgroupError::WriteLimit {
        file,
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Reads a single-number file (`memory.peak`, `cpuacct.usage`); `None` when absent or odd.
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` per line), as `memory.events`,
/// `pids.events`, `cpu.stat` and v1 `memory.oom_control` are.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Reads `key` from a flat-keyed file; 0 when the file or key is absent (no event seen).
pub(crate) fn read_keyed(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| keyed_value(&text, key))
        .unwrap_or(0)
}

/// The pids listed in a `cgroup.procs` file. Absent file (cgroup gone): none.
pub(crate) fn procs(procs_file: &Path) -> Result<Vec<i32>, CgroupError> {
    match fs::read_to_string(procs_file) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::ReadFile {
            path: procs_file.to_owned(),
            source,
        }),
    }
}

/// Writes `pid` to `procs_file`, moving that process (all its threads) into the cgroup.
pub(crate) fn attach_pid(procs_file: &Path, pid: i32) -> Result<(), CgroupError> {
    write_file(procs_file, &pid.to_string()).map_err(|source| CgroupError::Attach {
        file: procs_file.to_owned(),
        pid,
        source,
    })
}

/// SIGKILLs every process listed in `procs_files` until all are empty, for at most
/// [`KILL_TIMEOUT`]. `freeze`/`thaw` (v1 freezer, v2 `cgroup.freeze`) bracket each round when
/// given, so a fork bomb cannot outrun the signals.
pub(crate) fn kill_until_empty(
    procs_files: &[PathBuf],
    freezer: Option<&dyn Fn(bool) -> Result<(), CgroupError>>,
) -> Result<(), CgroupError> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let mut pids = Vec::new();
        for file in procs_files {
            pids.extend(procs(file)?);
        }
        pids.sort_unstable();
        pids.dedup();
        // Never signal ourselves or init, even if someone attached them to a job cgroup.
        pids.retain(|&p| p > 1 && p != me);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::KillTimeout {
                path: procs_files.first().cloned().unwrap_or_default(),
                remaining: pids.len(),
            });
        }
        if let Some(f) = freezer {
            f(true)?;
        }
        for &pid in &pids {
            // ESRCH: it exited between the read and the signal, which is what we want.
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    if let Some(f) = freezer {
                        let _ = f(false);
                    }
                    return Err(CgroupError::Signal {
                        pid,
                        source: io::Error::from(e),
                    });
                }
            }
        }
        // SIGKILL is acted on only once a frozen task runs again.
        if let Some(f) = freezer {
            f(false)?;
        }
        sleep(POLL);
    }
}

/// A fake cgroupfs in a tempdir for tests: `mkdir` fills the new directory with the parent's
/// interface files (empty) and `cgroup.controllers` from the parent's `cgroup.subtree_control`,
/// as the kernel does; `rmdir` refuses with EBUSY while `cgroup.procs` lists a process.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::io;
    use std::path::Path;

    /// Faults a test injects into newly created cgroups.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub(crate) struct Faults {
        /// Create this interface file as a directory, so writing it fails with EISDIR.
        pub(crate) file_as_dir: Option<&'static str>,
    }

    pub(crate) fn mkdir(path: &Path, faults: Faults) -> io::Result<()> {
        fs::create_dir(path)?;
        let parent = path.parent().expect("a cgroup has a parent");
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let content = match name.to_str() {
                Some("cgroup.controllers") => {
                    fs::read_to_string(parent.join("cgroup.subtree_control"))?
                }
                _ => String::new(),
            };
            if faults.file_as_dir.is_some_and(|f| name.to_str() == Some(f)) {
                fs::create_dir(path.join(&name))?;
            } else {
                fs::write(path.join(&name), content)?;
            }
        }
        Ok(())
    }

    pub(crate) fn rmdir(path: &Path) -> io::Result<()> {
        let procs = path.join("cgroup.procs");
        if fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().contains('.') {
                // A child cgroup: the kernel refuses too.
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        fs::remove_dir_all(path)
    }

    /// Creates a fake cgroup directory with the given interface files and contents.
    pub(crate) fn cgroup(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "oom"), None);
        assert_eq!(keyed_value("max 7\n", "max"), Some(7));
    }

    #[test]
    fn removing_an_absent_dir_counts_as_removed() {
        let tmp = tempfile::tempdir().unwrap();
        DirOps::Kernel.rmdir(&tmp.path().join("gone")).unwrap();
    }

    #[test]
    fn remove_gives_up_with_busy_when_processes_never_leave() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        fake::cgroup(&dir, &[("cgroup.procs", "4242\n")]);
        let started = Instant::now();
        let err = DirOps::Fake(fake::Faults::default())
            .rmdir(&dir)
            .unwrap_err();
        assert!(started.elapsed() >= RMDIR_RETRY);
        assert!(matches!(err, CgroupError::RemoveDir { ref path, .. } if path == &dir));
        assert!(dir.exists());
    }

    #[test]
    fn writes_never_create_missing_interface_files() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_limit(tmp.path().join("memory.max"), "1").unwrap_err();
        assert!(matches!(err, CgroupError::WriteLimit { ref value, .. } if value == "1"));
        assert!(!tmp.path().join("memory.max").exists());
    }
}
