//! The sandbox runtime: runs one command in fresh namespaces behind every layer.
//!
//! Must never: run code between fork and exec in a multithreaded process, allocate after the
//! fork, map host root into the sandbox, or start a command when a layer could not be applied
//! (unless the profile allows that named degradation, which is then reported).
//!
//! Flow: [`prepare`] builds a [`plan::Plan`] → [`spawn::run`] creates the cgroup and pipes,
//! clones the child ([`child::init_main`]), writes its id maps, attaches the cgroup, releases
//! it, and relays its output until it exits or the wall clock runs out.

pub mod cgroup;
mod child;
pub mod landlock;
pub mod plan;
pub mod prepare;
pub mod protect;
pub mod report;
pub mod seccomp;
mod spawn;
pub mod sys;
pub mod warm;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::profile::{Degradation, Limits, SandboxProfile};

pub use spawn::{RUN_JOB_PREFIX, job_cgroup_name, run, supervisor_gone};

/// Everything needed to run one command.
#[derive(Debug)]
pub struct JobSpec {
    /// The program and its arguments (for `-c`: `["/bin/bash", "-c", STRING]`).
    pub argv: Vec<String>,
    /// Absolute, canonical host path; mounted read-write at the same path.
    pub workspace: PathBuf,
    /// Working directory inside the sandbox (default: the workspace).
    pub cwd: Option<PathBuf>,
    /// The complete, clean environment of the command.
    pub env: Vec<(String, String)>,
    pub sandbox: SandboxProfile,
    pub limits: Limits,
    /// Delegated cgroup subtree to create job cgroups in (required when not root).
    pub cgroup_parent: Option<PathBuf>,
    /// Host uid/gid used when a root-run sandbox gets a root-owned workspace.
    pub sandbox_id: u32,
    /// Command's stdin; `None` means `/dev/null`.
    pub stdin: Option<OwnedFd>,
    /// A name for the job cgroup (unique per job).
    pub job_name: String,
    /// Parts built ahead by the daemon's spawner (see [`warm`]); `None` builds everything now.
    pub prewarmed: Option<warm::Prewarmed>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where the command's output goes, as it is produced.
pub trait OutputSink {
    /// An fd to `splice(2)` the stream into directly (the zero-copy fast path), if any.
    fn splice_target(&self, _stream: Stream) -> Option<BorrowedFd<'_>> {
        None
    }
    /// A chunk of output. An error means the reader is gone: the stream is closed on the
    /// command's side too (it gets EPIPE, as with a plain pipe).
    fn chunk(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()>;
}

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// The command exited with this code.
    Exited { code: i32 },
    /// The command was killed by this signal.
    Signaled { signal: i32 },
    /// The wall-clock limit ran out; the whole job was killed.
    Timeout,
    /// The memory limit was hit and the kernel killed the command.
    OutOfMemory,
    /// Killed from outside (cancelled, or killed by the supervisor).
    Killed,
}

/// The report of a finished job.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub ending: Ending,
    /// execbox's exit code for this ending (the command's own, 124, 137, 128+signal).
    pub exit_code: i32,
    pub reason: String,
    pub duration_ms: u64,
    pub limits: cgroup::LimitEvents,
    pub usage: cgroup::Usage,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: u64,
    pub stderr_truncated: u64,
    /// Layers that were missing and allowed by the profile.
    pub degraded: Vec<Degradation>,
    /// The cgroup version used (None when degraded away).
    pub cgroup_version: Option<u8>,
    /// What the host-side protection guarded and found after the job (`protect`).
    pub protection: protect::ProtectionReport,
    /// DNS answers and connections of a `network = "allowlist"` job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::NetReport>,
}

/// Why a job could not start. Nothing ran, and nothing was left behind.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("workspace {path}: {message}; fix: {fix}")]
    Workspace {
        path: PathBuf,
        message: String,
        fix: String,
    },
    #[error("{0}")]
    Prepare(String),
    #[error("{layer} unavailable: {detail}; fix: upgrade the kernel or {}", if degradation.is_second_layer() {
        format!("remove \"{}\" from sandbox.require (a second layer, see docs/security.md)", degradation.name())
    } else {
        format!("allow the degradation with sandbox.allow_degraded = [\"{}\"]", degradation.name())
    })]
    Unsupported {
        layer: &'static str,
        detail: String,
        degradation: Degradation,
    },
    #[error(
        "cgroup: {0}; fix: run as root, pass a delegated subtree with --cgroup-parent (EXECBOX_CGROUP_PARENT), or allow sandbox.allow_degraded = [\"cgroup\"]"
    )]
    Cgroup(#[source] cgroup::CgroupError),
    #[error("sandbox setup failed at step {step}{detail}: {errno_text}")]
    Step {
        step: &'static str,
        detail: String,
        errno: i32,
        errno_text: String,
    },
    #[error(
        "command not found in the sandbox: {program} ({errno_text}); fix: use a program under /usr or in the workspace, or bind its directory with sandbox.read_only"
    )]
    NotFound {
        program: String,
        errno: i32,
        errno_text: String,
    },
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    /// The stable step name for `--json` (`prepare` for errors before the clone).
    pub fn step(&self) -> &str {
        match self {
            SetupError::Step { step, .. } => step,
            SetupError::NotFound { .. } => "exec",
            SetupError::Workspace { .. } => "workspace",
            SetupError::Cgroup(_) => "cgroup",
            SetupError::Unsupported { .. } => "kernel-feature",
            SetupError::Prepare(_) | SetupError::Io { .. } => "prepare",
        }
    }

    pub fn errno(&self) -> Option<i32> {
        match self {
            SetupError::Step { errno, .. } | SetupError::NotFound { errno, .. } => Some(*errno),
            SetupError::Io { source, .. } => source.raw_os_error(),
            SetupError::Cgroup(c) => c.errno(),
            _ => None,
        }
    }
}

/// Upper bound of the wall-clock limit accepted from callers.
pub const MAX_WALL_TIME: Duration = Duration::from_secs(7 * 24 * 3600);
