//! The spawner: a single-threaded process forked by `execbox serve` before the tokio runtime
//! exists, and the per-job supervisors it forks. This is how a multithreaded daemon runs
//! [`sandbox::run`], which clones and must only be called from a single-threaded process.
//!
//! Protocol (daemon → spawner, one Unix stream socket): a 4-byte little-endian length, then that
//! many bytes of JSON ([`JobRequest`]); the job's descriptors travel with the first byte
//! (SCM_RIGHTS) in the order of [`JobFds`]. The spawner forks a supervisor per request and
//! closes its copies. The supervisor runs the job with its output spliced into the passed
//! stdout/stderr pipes, watches the cancel pipe (a byte, or EOF when the daemon is gone, is a
//! cancel request; two mean kill), and writes [`SupervisorEvent`] lines to the result pipe.
//!
//! Must never: create a thread, hold another job's descriptors while forking, or outlive the
//! daemon (both set `PR_SET_PDEATHSIG`; the sandbox's pid 1 dies with its supervisor).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::profile::{Limits, SandboxProfile};
use crate::sandbox::cgroup::{CgroupLimits, Hierarchy};
use crate::sandbox::{self, JobSpec, OutputSink, Stream, sys};

/// What the daemon asks the spawner to run: the [`JobSpec`] fields, with the sandbox view named
/// by profile (the spawner holds the profiles it was forked with).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub job_id: String,
    pub argv: Vec<String>,
    pub workspace: PathBuf,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub profile: String,
    pub limits: WireLimits,
    pub sandbox_id: u32,
    pub has_stdin: bool,
    /// The session has its parent's workspace read-only.
    #[serde(default)]
    pub workspace_read_only: bool,
}

/// [`Limits`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WireLimits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpu: Option<f64>,
    pub wall_time_ms: u64,
    pub nofile: u64,
    pub output_bytes: u64,
}

impl From<Limits> for WireLimits {
    fn from(l: Limits) -> WireLimits {
        WireLimits {
            memory: l.memory,
            pids: l.pids,
            cpu: l.cpu,
            wall_time_ms: l.wall_time.as_millis() as u64,
            nofile: l.nofile,
            output_bytes: l.output_bytes,
        }
    }
}

impl From<WireLimits> for Limits {
    fn from(l: WireLimits) -> Limits {
        Limits {
            memory: l.memory,
            pids: l.pids,
            cpu: l.cpu,
            wall_time: Duration::from_millis(l.wall_time_ms),
            nofile: l.nofile,
            output_bytes: l.output_bytes,
        }
    }
}

/// One line the supervisor writes on the result pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SupervisorEvent {
    /// The supervisor exists and is about to build the sandbox.
    Started { pid: i32 },
    /// The job ran; how it ended.
    Finished(Box<WireExit>),
    /// Nothing ran: the sandbox could not be built (stable `{step, errno, message}`).
    SetupError {
        step: String,
        errno: Option<i32>,
        message: String,
    },
}

/// How a job ended, in the API's terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireExit {
    /// execbox's exit code (the command's own, 124, 137, 128+signal).
    pub code: i32,
    pub signal: Option<i32>,
    /// `exited`, `timeout`, `oom`, `pids` or `cancelled`.
    pub reason: String,
    pub message: String,
    pub usage: WireUsage,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: u64,
    pub stderr_truncated: u64,
    pub degraded: Vec<String>,
    /// What the host-side protection guarded and quarantined (`sandbox::protect`).
    pub protection: sandbox::protect::ProtectionReport,
    /// DNS answers and connections of a `network = "allowlist"` job (`crate::net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::NetReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireUsage {
    pub wall_ms: u64,
    pub cpu_ms: Option<u64>,
    pub max_rss: Option<u64>,
    pub oom_kills: u64,
    pub pids_max_hits: u64,
}

impl WireExit {
    pub fn from_outcome(o: &sandbox::Outcome) -> WireExit {
        let (reason, signal) = match o.ending {
            sandbox::Ending::Exited { .. } if o.limits.pids_max_hits > 0 && o.exit_code != 0 => {
                ("pids", None)
            }
            sandbox::Ending::Exited { .. } => ("exited", None),
            sandbox::Ending::Signaled { signal } => ("exited", Some(signal)),
            sandbox::Ending::Timeout => ("timeout", None),
            sandbox::Ending::OutOfMemory => ("oom", None),
            sandbox::Ending::Killed => ("cancelled", None),
        };
        WireExit {
            code: o.exit_code,
            signal,
            reason: reason.into(),
            message: o.reason.clone(),
            usage: WireUsage {
                wall_ms: o.duration_ms,
                cpu_ms: o.usage.cpu_usec.map(|u| u / 1000),
                max_rss: o.usage.memory_peak_bytes,
                oom_kills: o.limits.oom_kills,
                pids_max_hits: o.limits.pids_max_hits,
            },
            stdout_bytes: o.stdout_bytes,
            stderr_bytes: o.stderr_bytes,
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            degraded: o.degraded.iter().map(|d| d.name().to_string()).collect(),
            protection: o.protection.clone(),
            network: o.network.clone(),
        }
    }
}

/// The descriptors of one job, in wire order.
pub struct JobFds {
    /// Write end of the pipe the daemon reads the command's stdout from.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Write end of the pipe carrying [`SupervisorEvent`] lines.
    pub result: OwnedFd,
    /// Read end of the cancel pipe (a byte = cancel, EOF = the daemon is gone).
    pub cancel: OwnedFd,
    /// The command's stdin (read end), when [`JobRequest::has_stdin`].
    pub stdin: Option<OwnedFd>,
}

/// What the spawner knows from the daemon's start: the profiles and where job cgroups go.
pub struct SpawnerContext {
    pub profiles: Vec<(String, SandboxProfile)>,
    pub cgroup_parent: Option<PathBuf>,
    /// As root: the capabilities the spawner (and every supervisor) keeps; it drops the rest
    /// before it reads a request (`server::privilege`).
    pub keep_caps: Option<&'static [u32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot create the spawner socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot fork the spawner: {0}")]
    Fork(String),
    #[error("cannot send the job to the spawner")]
    Send(#[source] std::io::Error),
    #[error("cannot encode the job request")]
    Encode(#[source] serde_json::Error),
    #[error("the spawner could not drop its capabilities (its log line says why)")]
    Privilege,
}

/// The daemon's handle on the spawner.
pub struct Spawner {
    sock: Mutex<UnixStream>,
    pub pid: libc::pid_t,
}

impl Spawner {
    /// Forks the spawner. Call before any thread exists (the fork refuses otherwise).
    pub fn start(ctx: SpawnerContext) -> Result<Spawner, SpawnerError> {
        let (ours, theirs) = UnixStream::pair().map_err(SpawnerError::Socket)?;
        let parent = sys::getpid();
        let ours_raw = ours.as_raw_fd();
        let cap_last = super::privilege::cap_last();
        let pid = sys::fork_single_threaded(|| {
            // The daemon's end is not ours to hold: EOF must reach us when the daemon closes it.
            sys::close(ours_raw);
            // No core dumps (the daemon sets its own after this fork): supervisors hold jobs'
            // requests and pipes. Jobs set their own RLIMIT_CORE 0 as well.
            let _ = sys::setrlimit(libc::RLIMIT_CORE, 0);
            // Jobs create files group-readable whatever the daemon was started with, so a
            // session's owner (its workspace's group, `docs/sessions.md`) can read them.
            sys::umask(0o022);
            // Keep only what jobs need before touching any request; tell the daemon either way.
            if let Some(keep) = ctx.keep_caps
                && let Err(e) = super::privilege::keep_only(keep, cap_last)
            {
                tracing::error!(error = %e, "spawner: refusing to run with more capabilities than it needs");
                let _ = (&theirs).write_all(b"E");
                sys::exit(1);
            }
            let _ = (&theirs).write_all(b"R");
            spawner_main(&theirs, parent, &ctx)
        })
        .map_err(|e| SpawnerError::Fork(e.describe()))?;
        drop(theirs);
        let mut ready = [0u8; 1];
        if !matches!(std::io::Read::read(&mut &ours, &mut ready), Ok(1)) || ready[0] != b'R' {
            let _ = sys::waitpid(pid);
            return Err(SpawnerError::Privilege);
        }
        Ok(Spawner {
            sock: Mutex::new(ours),
            pid,
        })
    }

    /// A spawner that takes no job: its socket's other end is closed, so every
    /// [`Spawner::submit`] fails (EPIPE) and the job ends as `setup_failed` at step `spawner`.
    /// Nothing is forked. For driving the real router in-process (tests, `fuzz/`), where a
    /// request that passes policy must not run anything.
    pub fn disconnected() -> Result<Spawner, SpawnerError> {
        let (ours, theirs) = UnixStream::pair().map_err(SpawnerError::Socket)?;
        drop(theirs);
        Ok(Spawner {
            sock: Mutex::new(ours),
            // No process: `shutdown` must not wait for or signal anything.
            pid: 0,
        })
    }

    /// Hands one job to the spawner (blocking: call from a blocking context). The caller closes
    /// its copies of the passed descriptors afterwards.
    pub fn submit(&self, req: &JobRequest, fds: &JobFds) -> Result<(), SpawnerError> {
        let json = serde_json::to_vec(req).map_err(SpawnerError::Encode)?;
        let mut msg = Vec::with_capacity(4 + json.len());
        msg.extend_from_slice(&(json.len() as u32).to_le_bytes());
        msg.extend_from_slice(&json);
        let mut list: Vec<BorrowedFd<'_>> = vec![
            fds.stdout.as_fd(),
            fds.stderr.as_fd(),
            fds.result.as_fd(),
            fds.cancel.as_fd(),
        ];
        if let Some(s) = &fds.stdin {
            list.push(s.as_fd());
        }
        // One writer at a time keeps messages whole; the fds ride on the first sendmsg.
        let mut sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let sent = sys::send_with_fds(sock.as_fd(), &msg, &list)
            .map_err(|e| SpawnerError::Send(std::io::Error::from_raw_os_error(e.0)))?;
        sock.write_all(&msg[sent..]).map_err(SpawnerError::Send)
    }

    /// Closes the request socket: the spawner exits once it sees EOF (running supervisors go on
    /// until their jobs end or their cancel pipes close).
    pub fn shutdown(self) {
        let _ = self
            .sock
            .into_inner()
            .map(|s| s.shutdown(std::net::Shutdown::Both));
        if self.pid <= 0 {
            // `disconnected`: pid 0 would mean "our process group" to kill(2).
            return;
        }
        for _ in 0..50 {
            if matches!(sys::waitpid_nohang(self.pid), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = sys::kill(self.pid, libc::SIGKILL);
        let _ = sys::waitpid_nohang(self.pid);
    }
}

/// The spawner's loop. Single-threaded by construction: it is a fork of a process that had one
/// thread, and it never starts one.
fn spawner_main(sock: &UnixStream, parent: libc::pid_t, ctx: &SpawnerContext) -> ! {
    // Die with the daemon; if it is already gone, leave now (PDEATHSIG would never fire).
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0);
    if sys::getppid() != parent {
        sys::exit(0);
    }
    // Terminal and service-manager signals are the daemon's to handle (graceful shutdown); the
    // sandbox's pid 1 resets its mask.
    let _ = sys::block_signals(&sys::sigset(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]));
    // Nothing inherited but stdio and our socket (listening sockets from socket activation
    // must not be held by job processes).
    let keep = sock.as_raw_fd() as u32;
    if keep > 3 {
        let _ = sys::close_range(3, keep - 1, 0);
    }
    let _ = sys::close_range(keep + 1, u32::MAX, 0);
    tracing::debug!(pid = sys::getpid(), "spawner ready");
    let mut pool = WarmPool::new(ctx);

    loop {
        let mut pfd = [libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // Parts to build: build one once no request came for REFILL_AFTER_MS, so the building
        // (it takes the kernel's cgroup and network locks) does not slow the job just sent
        // off, and never ahead of a waiting request.
        let timeout = if pool.wants_more() {
            REFILL_AFTER_MS
        } else {
            1000
        };
        let ready = sys::poll(&mut pfd, timeout).unwrap_or(0);
        reap();
        if ready == 0 {
            pool.build_one();
            continue;
        }
        match receive(sock) {
            Ok(Some((req, fds))) => {
                let (mut warm, stale) = pool.take(&req.limits);
                let pid =
                    sys::fork_single_threaded(|| supervise(req.clone(), fds, ctx, warm.take()));
                drop(stale);
                match (pid, warm) {
                    // The supervisor has its own copy now: ours only holds descriptors.
                    (Ok(_), Some(w)) => w.disown(),
                    (Err(e), w) => {
                        drop(w);
                        tracing::error!(error = %e.describe(), job = %req.job_id, "cannot fork a job supervisor");
                    }
                    (Ok(_), None) => {}
                }
                // Our copies of the job's fds were moved into the closure and are dropped here.
            }
            Ok(None) => {
                drop(pool);
                sys::exit(0)
            }
            Err(e) => {
                tracing::error!(error = %e, "bad spawner request; spawner exits");
                drop(pool);
                sys::exit(1);
            }
        }
    }
}

/// Sandbox parts built ahead, between requests (see [`sandbox::warm`]): a network namespace
/// (about half a millisecond of a job's start) and, on cgroup v1, the job cgroup (a directory
/// and limits in each of up to five hierarchies; renamed to its job's name when taken). Each
/// goes to exactly one job. Only where the spawner can build them: a network namespace it can
/// hand over needs root; a cgroup needs root or a delegated parent. Jobs build whatever is
/// missing themselves, as without the pool.
struct WarmPool {
    ready: Vec<sandbox::warm::Prewarmed>,
    /// The spawner's own network namespace, to return to; `None`: no namespaces ahead.
    home: Option<OwnedFd>,
    /// cgroup v1 hierarchy and parent; `None`: no cgroups ahead.
    cgroups: Option<(Hierarchy, Option<PathBuf>)>,
    /// Limits the next cgroups are built with: the last job's (most jobs of a daemon share
    /// their profile's); a job with other limits gets a new cgroup.
    limits: CgroupLimits,
    built: u64,
}

/// Quiet time before the spawner builds a part: a job's own start (clone, id maps, cgroup
/// attach, mounts) takes a few milliseconds and contends for the same kernel locks.
const REFILL_AFTER_MS: i32 = 8;

/// How many are kept ready: enough for a burst of two, cheap to hold (an idle namespace with
/// only `lo`, empty cgroup directories).
const WARM_TARGET: usize = 2;

fn cgroup_limits(l: &WireLimits) -> CgroupLimits {
    CgroupLimits {
        memory: l.memory,
        pids: l.pids,
        cpu: l.cpu,
    }
}

impl WarmPool {
    fn new(ctx: &SpawnerContext) -> WarmPool {
        let root = sys::geteuid() == 0;
        let home = root
            .then(|| std::fs::File::open("/proc/thread-self/ns/net").ok())
            .flatten()
            .map(OwnedFd::from);
        let cgroups = Hierarchy::detect()
            .ok()
            .filter(|h| h.version() == 1 && (root || ctx.cgroup_parent.is_some()))
            .map(|h| (h, ctx.cgroup_parent.clone()));
        WarmPool {
            ready: Vec::new(),
            home,
            cgroups,
            limits: CgroupLimits::default(),
            built: 0,
        }
    }

    fn wants_more(&self) -> bool {
        (self.home.is_some() || self.cgroups.is_some()) && self.ready.len() < WARM_TARGET
    }

    fn build_one(&mut self) {
        if !self.wants_more() {
            return;
        }
        let mut warm = sandbox::warm::Prewarmed::default();
        if let Some(home) = &self.home {
            match sandbox::warm::Prewarmed::network(home.as_fd()) {
                Ok(ns) => warm.netns = Some(ns),
                Err(e) => {
                    tracing::warn!(error = %e, "network namespaces are not built ahead");
                    self.home = None;
                    if matches!(e, sandbox::warm::NetnsError::Return(_)) {
                        // Still in the wrong namespace: stop rather than hand it out.
                        sys::exit(1);
                    }
                }
            }
        }
        if let Some((h, parent)) = &self.cgroups {
            self.built += 1;
            let name =
                sandbox::job_cgroup_name(sys::getpid() as u32, &format!("warm{}", self.built));
            match sandbox::warm::Prewarmed::cgroup(h, parent.as_deref(), &name, &self.limits) {
                Ok(cg) => warm.cgroup = Some(cg),
                Err(e) => {
                    tracing::warn!(error = %e, "job cgroups are not built ahead");
                    self.cgroups = None;
                }
            }
        }
        if warm.netns.is_some() || warm.cgroup.is_some() {
            self.ready.push(warm);
        }
    }

    /// One ready entry for a job with `limits`, and a cgroup built for other limits, for the
    /// caller to drop once the job is on its way.
    fn take(
        &mut self,
        limits: &WireLimits,
    ) -> (
        Option<sandbox::warm::Prewarmed>,
        Option<sandbox::warm::WarmCgroup>,
    ) {
        let wanted = cgroup_limits(limits);
        self.limits = wanted;
        let Some(mut warm) = self.ready.pop() else {
            return (None, None);
        };
        let stale = warm.cgroup.take_if(|c| c.limits != wanted);
        (Some(warm), stale)
    }
}

fn reap() {
    while let Ok(Some(_)) = sys::waitpid_nohang(-1) {}
}

/// Reads one request; `Ok(None)` on EOF.
fn receive(sock: &UnixStream) -> Result<Option<(JobRequest, JobFds)>, String> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = sys::recv_with_fds(sock.as_fd(), &mut header[got..], &mut fds)
            .map_err(|e| format!("recvmsg: {}", e.describe()))?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err("truncated header".into())
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > 64 << 20 {
        return Err(format!("request of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = sys::read(sock.as_raw_fd(), &mut body[got..])
            .map_err(|e| format!("read: {}", e.describe()))?;
        if n == 0 {
            return Err("truncated request".into());
        }
        got += n;
    }
    let req: JobRequest = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let expected = 4 + usize::from(req.has_stdin);
    if fds.len() != expected {
        return Err(format!("{} fds, expected {expected}", fds.len()));
    }
    let mut it = fds.into_iter();
    let mut next = || it.next().ok_or_else(|| "missing fd".to_string());
    let jf = JobFds {
        stdout: next()?,
        stderr: next()?,
        result: next()?,
        cancel: next()?,
        stdin: if req.has_stdin { Some(next()?) } else { None },
    };
    Ok(Some((req, jf)))
}

/// Splices the job's output into the daemon's pipes.
struct PipeSink {
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl OutputSink for PipeSink {
    fn splice_target(&self, stream: Stream) -> Option<BorrowedFd<'_>> {
        Some(match stream {
            Stream::Stdout => self.stdout.as_fd(),
            Stream::Stderr => self.stderr.as_fd(),
        })
    }
    fn chunk(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        let fd = match stream {
            Stream::Stdout => self.stdout.as_raw_fd(),
            Stream::Stderr => self.stderr.as_raw_fd(),
        };
        sys::write_all(fd, data).map_err(|e| std::io::Error::from_raw_os_error(e.0))
    }
}

/// One job's supervisor: runs it and reports. Single-threaded (a fork of the spawner).
fn supervise(
    req: JobRequest,
    fds: JobFds,
    ctx: &SpawnerContext,
    prewarmed: Option<sandbox::warm::Prewarmed>,
) -> std::convert::Infallible {
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0);
    let mut result = std::fs::File::from(fds.result);
    let mut emit = |ev: &SupervisorEvent| {
        if let Ok(mut line) = serde_json::to_vec(ev) {
            line.push(b'\n');
            let _ = result.write_all(&line);
        }
    };
    let pid = sys::getpid();
    emit(&SupervisorEvent::Started { pid });

    let Some((_, sandbox_profile)) = ctx.profiles.iter().find(|(n, _)| *n == req.profile) else {
        emit(&SupervisorEvent::SetupError {
            step: "prepare".into(),
            errno: None,
            message: format!("unknown profile {:?}", req.profile),
        });
        sys::exit(0);
    };
    let spec = JobSpec {
        argv: req.argv,
        workspace: req.workspace,
        cwd: req.cwd,
        env: req.env,
        sandbox: crate::profile::SandboxProfile {
            workspace_read_only: req.workspace_read_only,
            ..sandbox_profile.clone()
        },
        limits: req.limits.into(),
        cgroup_parent: ctx.cgroup_parent.clone(),
        sandbox_id: req.sandbox_id,
        stdin: fds.stdin,
        // The stale sweep of `execbox run` applies: a job is stale once this process is gone.
        job_name: sandbox::job_cgroup_name(pid as u32, &req.job_id),
        prewarmed,
    };
    let cancel = fds.cancel;
    let _ = sys::set_nonblocking(cancel.as_fd());
    let cancel_raw = cancel.as_raw_fd();
    // One byte per call, so two queued bytes are two requests (term, then kill); EOF means the
    // daemon is gone, which is a request every time it is polled.
    let mut drain = || {
        let mut b = [0u8; 1];
        !matches!(sys::read(cancel_raw, &mut b), Err(sys::Errno(libc::EAGAIN)))
    };
    let mut sink = PipeSink {
        stdout: fds.stdout,
        stderr: fds.stderr,
    };
    let ev = match sandbox::run(spec, &mut sink, Some((cancel.as_fd(), &mut drain))) {
        Ok(outcome) => SupervisorEvent::Finished(Box::new(WireExit::from_outcome(&outcome))),
        Err(e) => SupervisorEvent::SetupError {
            step: e.step().to_string(),
            errno: e.errno(),
            message: e.to_string(),
        },
    };
    // Close the output pipes before the final event so the daemon sees EOF right after it.
    drop(sink);
    emit(&ev);
    sys::exit(0)
}
