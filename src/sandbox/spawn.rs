//! The parent side of one job: cgroup, pipes, clone, id maps, release, then relay output and
//! watch the wall clock until the sandbox's pid 1 exits. Cleans up on every path.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::cgroup::{CgroupLimits, Hierarchy, JobCgroup};
use super::plan::{MountOp, Plan};
use super::prepare::{self, Identity};
use super::protect;
use super::report::{RECORD_LEN, Record, Step};
use super::sys::{self, Errno, Exit};
use super::{Ending, JobSpec, Outcome, OutputSink, SetupError, Stream};
use crate::profile::Degradation;

const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// Bytes moved per splice/read call, and the size the output pipes are grown to: fewer
/// wake-ups of the relay per byte (1 MiB is the default fs.pipe-max-size).
const CHUNK: usize = 1 << 20;

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> SetupError {
    move |source| SetupError::Io { action, source }
}

/// Runs `spec` to completion, streaming output into `sink`. `cancel` is an fd that becomes
/// readable when the caller wants the job stopped (first time: SIGTERM to the command, second
/// time: SIGKILL); `on_cancel` drains it and says whether a cancel was really requested.
pub fn run(
    mut spec: JobSpec,
    sink: &mut dyn OutputSink,
    cancel: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> bool)>,
) -> Result<Outcome, SetupError> {
    let started = Instant::now();
    let mut degraded = Vec::new();
    let allowed = spec.sandbox.degradable();

    let ws_meta = prepare::check_workspace(&spec.workspace)?;
    let (euid, egid) = prepare::current_ids();
    let (ws_uid, ws_gid) = prepare::owner(&ws_meta);
    let identity = Identity::decide(euid, egid, ws_uid, ws_gid, spec.sandbox_id);

    let landlock_abi = match sys::landlock_abi() {
        Ok(abi) => Some(abi),
        Err(_) if allowed.contains(&Degradation::Landlock) => {
            degraded.push(Degradation::Landlock);
            None
        }
        Err(e) => {
            return Err(SetupError::Unsupported {
                layer: "landlock",
                detail: format!("landlock_create_ruleset: {}", e.describe()),
                degradation: Degradation::Landlock,
            });
        }
    };
    let protection = protect::prepare(&spec.workspace, &spec.sandbox)?;
    phase(started, "workspace scanned (protect)");
    let mut plan = prepare::build(
        &spec,
        &protection.guards,
        identity,
        landlock_abi,
        &mut degraded,
    )?;
    phase(started, "plan built");
    let prewarmed = spec.prewarmed.take().unwrap_or_default();

    // The job cgroup, before anything runs: the one built ahead when its limits are this
    // job's, else a new one.
    let warm_cgroup = prewarmed
        .cgroup
        .filter(|w| w.limits == cgroup_limits(&spec))
        .and_then(|mut w| match w.job.rename(&spec.job_name) {
            Ok(()) => Some((w.version, w.job)),
            Err(e) => {
                tracing::debug!(error = %e, "prepared job cgroup not used");
                None
            }
        });
    let created = match warm_cgroup {
        Some(cg) => Ok(cg),
        None => create_cgroup(&spec),
    };
    let cgroup = match created {
        Ok(cg) => Some(cg),
        Err(e) if allowed.contains(&Degradation::Cgroup) => {
            tracing::info!(error = %e, "running without a job cgroup (allowed by the profile)");
            degraded.push(Degradation::Cgroup);
            None
        }
        Err(e) => return Err(e),
    };
    phase(started, "job cgroup created");
    let cgroup_version = cgroup.as_ref().map(|(v, _)| *v);
    let cgroup = cgroup.map(|(_, job)| job);

    let result = launch(
        &mut spec,
        &mut plan,
        identity,
        prewarmed.netns,
        cgroup.as_ref(),
        sink,
        cancel,
        started,
    );
    // Every process of the job is gone once pid 1 is reaped; the cgroup can go.
    let (limits, usage) = match &cgroup {
        Some(cg) => (cg.events(), cg.usage()),
        None => Default::default(),
    };
    phase(started, "job ended");
    if let Some(cg) = cgroup
        && let Err(e) = cg.remove()
    {
        tracing::warn!(error = %e, "job cgroup not removed");
    }
    // Every process of the job is gone: what it left in the workspace can be judged.
    let protection = protect::after(&spec.workspace, &protection, &quarantine_stamp(&spec));
    phase(started, "workspace checked (protect)");
    let relay = result?;
    let mut outcome = finish(relay, limits, usage, degraded, cgroup_version, started);
    outcome.protection = protection;
    Ok(outcome)
}

/// The job's part of quarantine names: the unique suffix of its cgroup name.
fn quarantine_stamp(spec: &JobSpec) -> String {
    let suffix = spec
        .job_name
        .strip_prefix(RUN_JOB_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .map(|(_, s)| s)
        .unwrap_or(&spec.job_name);
    suffix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// A debug-level timing mark (`EXECBOX_LOG=execbox=debug`): where a job's start-up time goes.
fn phase(started: Instant, what: &'static str) {
    tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "{what}");
}

fn cgroup_limits(spec: &JobSpec) -> CgroupLimits {
    CgroupLimits {
        memory: spec.limits.memory,
        pids: spec.limits.pids,
        cpu: spec.limits.cpu,
    }
}

fn create_cgroup(spec: &JobSpec) -> Result<(u8, JobCgroup), SetupError> {
    let hierarchy = Hierarchy::detect().map_err(SetupError::Cgroup)?;
    if spec.cgroup_parent.is_none() && sys::geteuid() != 0 {
        return Err(SetupError::Cgroup(super::cgroup::CgroupError::Unavailable(
            "not root and no delegated --cgroup-parent given".into(),
        )));
    }
    sweep_stale(&hierarchy, spec.cgroup_parent.as_deref());
    let job = hierarchy
        .create_job(
            spec.cgroup_parent.as_deref(),
            &spec.job_name,
            &cgroup_limits(spec),
        )
        .map_err(SetupError::Cgroup)?;
    Ok((hierarchy.version(), job))
}

/// Prefix of the job cgroups execbox creates: `execbox-run-<owner>-<suffix>`, where the owner
/// is `<pid>.<start time>` of the process that supervises the job (see [`job_cgroup_name`]).
pub const RUN_JOB_PREFIX: &str = "execbox-run-";

/// The name of a job cgroup owned by process `pid`: its start time (clock ticks after boot,
/// `/proc/<pid>/stat` field 22) is part of the name, so that a later process that happens to
/// get the same pid is not taken for the owner by the stale sweep.
pub fn job_cgroup_name(pid: u32, suffix: &str) -> String {
    match start_time(pid) {
        Some(start) => format!("{RUN_JOB_PREFIX}{pid}.{start}-{suffix}"),
        None => format!("{RUN_JOB_PREFIX}{pid}-{suffix}"),
    }
}

/// `/proc/<pid>/stat`: the state letter and the start time.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S …`: fields after the last ')' (comm may hold one); start time is field 22,
    // the 20th after the comm.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Removes job cgroups left by an `execbox run` that was SIGKILLed (its sandbox died with it
/// through the parent-death signal, but nothing could remove the empty cgroup). A job is stale
/// when the supervisor in its name no longer exists.
fn sweep_stale(hierarchy: &Hierarchy, parent: Option<&std::path::Path>) {
    let removed = hierarchy.remove_stale_where(parent, RUN_JOB_PREFIX, supervisor_gone);
    for dir in removed {
        tracing::info!(cgroup = %dir.display(), "removed a stale job cgroup");
    }
}

/// Whether the supervisor that created the job cgroup `name` ([`job_cgroup_name`]) is gone:
/// no such process, only its zombie (a killed supervisor waits a moment to be reaped by
/// whoever inherited it; its sandbox already died with it), or a process that reused its pid
/// (another start time). Names without a start time (older versions) are judged by the pid.
pub fn supervisor_gone(name: &str) -> bool {
    let Some(owner) = name
        .strip_prefix(RUN_JOB_PREFIX)
        .and_then(|rest| rest.split('-').next())
    else {
        return false;
    };
    let (pid, start) = match owner.split_once('.') {
        Some((pid, start)) => (pid, start.parse::<u64>().ok()),
        None => (owner, None),
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match proc_stat(pid) {
        Some((state, now)) => matches!(state, 'Z' | 'X') || start.is_some_and(|s| s != now),
        None => true,
    }
}

/// What the relay observed.
struct Relay {
    init_exit: Exit,
    command_status: Option<i32>,
    timed_out: bool,
    cancelled: bool,
    /// A second cancel request force-killed the job.
    killed: bool,
    stdout: StreamState,
    stderr: StreamState,
    /// What the network supervisor saw (`network = "allowlist"`).
    network: Option<crate::net::NetReport>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SetupError> {
    let (r, w) = std::io::pipe().map_err(io("create a pipe"))?;
    Ok((OwnedFd::from(r), OwnedFd::from(w)))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    spec: &mut JobSpec,
    plan: &mut Plan,
    identity: Identity,
    netns: Option<OwnedFd>,
    cgroup: Option<&JobCgroup>,
    sink: &mut dyn OutputSink,
    cancel: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> bool)>,
    started: Instant,
) -> Result<Relay, SetupError> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    for p in [&out_r, &err_r] {
        // Best effort: a smaller pipe only costs throughput.
        let _ = sys::set_pipe_size(p.as_fd(), CHUNK as libc::c_int);
    }
    let (report_r, report_w) = pipe()?;
    let (sync_parent, sync_child) = UnixStream::pair().map_err(io("create a socket pair"))?;
    let devnull;
    let stdin_fd: RawFd = match &spec.stdin {
        Some(fd) => fd.as_raw_fd(),
        None => {
            devnull = File::open("/dev/null").map_err(io("open /dev/null"))?;
            devnull.as_raw_fd()
        }
    };
    plan.stdio = [stdin_fd, out_w.as_raw_fd(), err_w.as_raw_fd()];
    plan.report_fd = report_w.as_raw_fd();
    plan.sync_fd = sync_child.as_raw_fd();

    // A network namespace built ahead: this process enters it and the child inherits it
    // instead of creating one (the caller — a per-job supervisor — has no other use for its
    // own). If entering fails, the child gets a fresh one as usual.
    let mut namespaces = NAMESPACES;
    // An allowlist job's pid 1 creates the capture sockets, which needs a namespace owned by
    // its own user namespace (ports < 1024): a prepared one is not used.
    let netns = netns.filter(|_| plan.capture.is_empty());
    if let Some(ns) = netns {
        match sys::setns(ns.as_fd(), libc::CLONE_NEWNET) {
            Ok(()) => {
                namespaces &= !libc::CLONE_NEWNET;
                plan.loopback_up = false;
            }
            Err(e) => {
                tracing::debug!(error = %e.describe(), "prepared network namespace not entered")
            }
        }
    }
    let child = sys::clone_sandbox(namespaces, || super::child::init_main(plan)).map_err(|e| {
        let hint = if e.0 == libc::EDEADLK {
            " (the calling process has more than one thread)".to_string()
        } else {
            String::new()
        };
        step_error("clone", hint, e)
    })?;
    // The child has its copies; ours must go so EOF means "every writer is gone".
    drop((out_w, err_w, report_w, sync_child));
    spec.stdin = None;

    let kill_and_reap = |child: &sys::Child| {
        let _ = sys::pidfd_kill(child.pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::wait_pidfd(child.pidfd.as_fd());
    };
    phase(started, "cloned");
    if let Err(e) = release(&child, identity, cgroup, spec, &sync_parent) {
        kill_and_reap(&child);
        return Err(e);
    }

    let deadline = started + spec.limits.wall_time;
    phase(started, "released (id maps written, cgroup joined)");
    let net = match start_network(spec, plan, &child, &sync_parent, deadline) {
        Ok(net) => net,
        Err(e) => {
            kill_and_reap(&child);
            return Err(e);
        }
    };
    let relay = supervise(
        &child,
        out_r,
        err_r,
        report_r,
        sink,
        cancel,
        deadline,
        spec.limits.output_bytes,
        cgroup,
    );
    // The job's pid 1 is gone (or being killed): its network goes with it.
    let network = net.map(crate::net::Running::stop);
    match relay {
        Ok(Supervised::Ran(mut r)) => {
            r.network = network;
            Ok(r)
        }
        Ok(Supervised::SetupFailed { step, index, errno }) => {
            Err(setup_failure(plan, spec, step, index, errno))
        }
        Err(e) => {
            kill_and_reap(&child);
            Err(e)
        }
    }
}

/// `network = "allowlist"`: receives the capture sockets from the job's pid 1 and starts the
/// network supervisor on them. `None` when the job has no allowlist, or when pid 1 failed
/// before sending them (its failure record then says why).
fn start_network(
    spec: &JobSpec,
    plan: &Plan,
    child: &sys::Child,
    sync: &UnixStream,
    deadline: Instant,
) -> Result<Option<crate::net::Running>, SetupError> {
    let Some(egress) = spec.sandbox.egress.as_ref() else {
        return Ok(None);
    };
    let want = plan.capture.len();
    let mut fds = Vec::with_capacity(want);
    while fds.len() < want {
        let mut pfd = [
            libc::pollfd {
                fd: sync.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let ready = sys::poll(&mut pfd, left)
            .map_err(|e| step_error("network-capture-sockets", " (poll)".into(), e))?;
        if ready == 0 {
            return Err(step_error(
                "network-capture-sockets",
                " (the sandbox did not hand them over before the wall-clock limit)".into(),
                Errno(libc::ETIMEDOUT),
            ));
        }
        if pfd[0].revents == 0 {
            // pid 1 ended without sending them: supervise() reads its failure record.
            return Ok(None);
        }
        let mut byte = [0u8; 1];
        let n = sys::recv_with_fds(sync.as_fd(), &mut byte, &mut fds)
            .map_err(|e| step_error("network-capture-sockets", " (recvmsg)".into(), e))?;
        if n == 0 {
            return Ok(None);
        }
    }
    let sockets = plan.capture.iter().copied().zip(fds).collect();
    crate::net::start(egress.clone(), sockets)
        .map(Some)
        .map_err(io("start the network supervisor"))
}

fn step_error(step: &'static str, detail: String, e: Errno) -> SetupError {
    SetupError::Step {
        step,
        detail,
        errno: e.0,
        errno_text: e.describe(),
    }
}

/// Turns a child's failure record into a message naming the step (and mount or rule).
fn setup_failure(plan: &Plan, spec: &JobSpec, step: Step, index: u32, errno: i32) -> SetupError {
    let e = Errno(errno);
    let detail = match step {
        Step::Mount => plan
            .mounts
            .get(index as usize)
            .map(|m: &MountOp| format!(" ({})", m.describe()))
            .unwrap_or_default(),
        Step::LandlockRule => plan
            .landlock
            .as_ref()
            .and_then(|l| l.rules.get(index as usize))
            .map(|r| format!(" (rule for {})", r.path.to_string_lossy()))
            .unwrap_or_default(),
        Step::Seccomp => format!(" (filter {index} of profile {:?})", spec.sandbox.seccomp),
        Step::Exec => {
            return SetupError::NotFound {
                program: spec.argv.first().cloned().unwrap_or_default(),
                errno,
                errno_text: e.describe(),
            };
        }
        _ => String::new(),
    };
    step_error(step.name(), detail, e)
}

/// Writes the id maps, joins the cgroup, hands over the idmapped workspace if any, and lets
/// the child go.
fn release(
    child: &sys::Child,
    id: Identity,
    cgroup: Option<&JobCgroup>,
    spec: &JobSpec,
    sync: &UnixStream,
) -> Result<(), SetupError> {
    let proc_dir = format!("/proc/{}", child.pid);
    let write = |file: &str, text: String, step: &'static str| {
        std::fs::write(format!("{proc_dir}/{file}"), text).map_err(|e| SetupError::Step {
            step,
            detail: String::new(),
            errno: e.raw_os_error().unwrap_or(0),
            errno_text: e.to_string(),
        })
    };
    // One id each way, never host root (see prepare::Identity).
    write(
        "uid_map",
        format!("{} {} 1\n", id.uid_inside, id.uid_outside),
        "write-uid-map",
    )?;
    write("setgroups", "deny\n".into(), "write-setgroups")?;
    write(
        "gid_map",
        format!("{} {} 1\n", id.gid_inside, id.gid_outside),
        "write-gid-map",
    )?;
    if let Some(cg) = cgroup {
        cg.attach(child.pid).map_err(SetupError::Cgroup)?;
    }
    let idmapped = if id.idmap_workspace {
        Some(idmapped_workspace(spec, &proc_dir)?)
    } else {
        None
    };
    sys::send_byte_with_fd(sync.as_fd(), b'G', idmapped.as_ref().map(|f| f.as_fd()))
        .map_err(|e| step_error("release-child", String::new(), e))
}

/// A detached copy of the workspace whose ids are shifted through the child's user namespace
/// (`0 → sandbox id`): the root-owned workspace appears owned by the sandbox user, and what it
/// writes lands on disk as root's. Only host root can create this (CAP_SYS_ADMIN in the
/// initial namespace), which is why the parent does it.
fn idmapped_workspace(spec: &JobSpec, proc_dir: &str) -> Result<OwnedFd, SetupError> {
    let ws = super::plan::cpath(&spec.workspace)
        .map_err(|_| SetupError::Prepare("workspace path contains a NUL byte".into()))?;
    let userns =
        File::open(format!("{proc_dir}/ns/user")).map_err(io("open the child's user namespace"))?;
    let flags = (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint;
    let fd = sys::open_tree(&ws, flags)
        .map_err(|e| step_error("idmap-workspace", " (open_tree)".into(), e))?;
    let fd = sys::owned(fd);
    let read_only = if spec.sandbox.workspace_read_only {
        libc::MOUNT_ATTR_RDONLY
    } else {
        0
    };
    sys::mount_setattr_fd(
        fd.as_raw_fd(),
        false,
        libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | read_only,
        0,
        Some(userns.as_raw_fd()),
    )
    .map_err(|e| {
        step_error(
            "idmap-workspace",
            " (mount_setattr MOUNT_ATTR_IDMAP)".into(),
            e,
        )
    })?;
    Ok(fd)
}

/// Per-stream relay state.
#[derive(Default)]
struct StreamState {
    fd: Option<OwnedFd>,
    /// Bytes delivered to the sink.
    bytes: u64,
    /// Bytes dropped past the cap (or after the reader went away).
    truncated: u64,
    /// Splice is not possible into this sink fd: use read/write.
    no_splice: bool,
    /// The sink's fd was full at the last splice: wait for it to drain.
    output_blocked: bool,
}

enum Supervised {
    Ran(Relay),
    SetupFailed { step: Step, index: u32, errno: i32 },
}

/// Moves what is available on one stream, up to a bounded amount per wake-up. Returns false
/// at EOF.
fn pump(
    state: &mut StreamState,
    stream: Stream,
    sink: &mut dyn OutputSink,
    cap: u64,
    buf: &mut [u8],
) -> bool {
    let Some(fd) = state.fd.as_ref().map(|f| f.as_raw_fd()) else {
        return false;
    };
    for _ in 0..16 {
        let room = cap.saturating_sub(state.bytes);
        // Fast path: splice straight into the sink's fd while under the cap.
        if room > 0
            && !state.no_splice
            && let Some(out) = sink.splice_target(stream)
        {
            match sys::splice(fd, out.as_raw_fd(), CHUNK.min(room as usize)) {
                Ok(0) => return false,
                Ok(n) => {
                    state.bytes += n as u64;
                    continue;
                }
                Err(Errno(libc::EAGAIN)) => {
                    // Either the command's pipe is empty or the reader's is full. In the
                    // second case, wait for POLLOUT on the sink rather than spinning on input
                    // that stays readable.
                    state.output_blocked = !sys::writable_now(out.as_raw_fd());
                    return true;
                }
                Err(Errno(libc::EINVAL)) => state.no_splice = true,
                Err(_) => {
                    // The reader is gone (EPIPE): stop relaying; the command gets EPIPE too.
                    state.fd = None;
                    return false;
                }
            }
        }
        let n = match sys::read(fd, buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(Errno(libc::EAGAIN)) => return true,
            Err(_) => return false,
        };
        let keep = (n as u64).min(room) as usize;
        if keep > 0 && sink.chunk(stream, &buf[..keep]).is_err() {
            state.fd = None;
            return false;
        }
        state.bytes += keep as u64;
        state.truncated += (n - keep) as u64;
    }
    true
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    child: &sys::Child,
    out_r: OwnedFd,
    err_r: OwnedFd,
    report_r: OwnedFd,
    sink: &mut dyn OutputSink,
    mut cancel: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> bool)>,
    deadline: Instant,
    cap: u64,
    cgroup: Option<&JobCgroup>,
) -> Result<Supervised, SetupError> {
    for fd in [&out_r, &err_r, &report_r] {
        sys::set_nonblocking(fd.as_fd()).map_err(|e| step_error("relay", String::new(), e))?;
    }
    let mut out = StreamState {
        fd: Some(out_r),
        ..Default::default()
    };
    let mut err = StreamState {
        fd: Some(err_r),
        ..Default::default()
    };
    let mut report = Some(File::from(report_r));
    let mut report_buf = Vec::with_capacity(RECORD_LEN * 2);
    let mut buf = vec![0u8; CHUNK];
    let mut init_exit = None;
    let mut command_status = None;
    let mut failure = None;
    let mut timed_out = false;
    let mut cancels = 0;

    loop {
        // Once pid 1 is reaped every process of the job is gone: drain to EOF and stop.
        let draining = init_exit.is_some();
        if draining && out.fd.is_none() && err.fd.is_none() && report.is_none() {
            break;
        }
        let mut fds = Vec::with_capacity(5);
        // A stream whose reader is full waits for POLLOUT on the sink instead of POLLIN.
        let mut watch = |state: &StreamState, stream: Stream| {
            let fd = state.fd.as_ref()?.as_raw_fd();
            match sink.splice_target(stream).filter(|_| state.output_blocked) {
                Some(out) => {
                    fds.push(libc::pollfd {
                        fd: out.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                    Some(fds.len() - 1)
                }
                None => Some(push_fd(&mut fds, fd)),
            }
        };
        let i_out = watch(&out, Stream::Stdout);
        let i_err = watch(&err, Stream::Stderr);
        let mut push = |fd: RawFd| push_fd(&mut fds, fd);
        let i_rep = report.as_ref().map(|f| push(f.as_raw_fd()));
        let i_pid = (!draining).then(|| push(child.pidfd.as_raw_fd()));
        let i_cancel = cancel
            .as_ref()
            .filter(|_| !draining)
            .map(|(fd, _)| push(fd.as_raw_fd()));
        let timeout_ms = if draining || timed_out {
            1000
        } else {
            deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        };
        let ready = sys::poll(&mut fds, timeout_ms)
            .map_err(|e| step_error("relay", " (poll)".into(), e))?;
        let is_ready = |i: Option<usize>| i.is_some_and(|i| fds[i].revents != 0);

        if ready == 0 && !draining && !timed_out && Instant::now() >= deadline {
            timed_out = true;
            kill_job(child, cgroup);
            continue;
        }
        if is_ready(i_out) {
            out.output_blocked = false;
            if !pump(&mut out, Stream::Stdout, sink, cap, &mut buf) {
                out.fd = None;
            }
        }
        if is_ready(i_err) {
            err.output_blocked = false;
            if !pump(&mut err, Stream::Stderr, sink, cap, &mut buf) {
                err.fd = None;
            }
        }
        if is_ready(i_rep) {
            let mut chunk = [0u8; 256];
            match report.as_mut().map(|f| f.read(&mut chunk)) {
                Some(Ok(0)) | Some(Err(_)) => report = None,
                Some(Ok(n)) => report_buf.extend_from_slice(&chunk[..n]),
                None => {}
            }
            while report_buf.len() >= RECORD_LEN {
                let rec: [u8; RECORD_LEN] = report_buf[..RECORD_LEN]
                    .try_into()
                    .unwrap_or([0; RECORD_LEN]);
                report_buf.drain(..RECORD_LEN);
                match Record::decode(&rec) {
                    Some(Record::Failed { step, index, errno }) => {
                        failure.get_or_insert((step, index, errno));
                    }
                    Some(Record::Exited { status }) => {
                        tracing::debug!("command exit reported");
                        command_status = Some(status)
                    }
                    None => {}
                }
            }
        }
        if is_ready(i_cancel)
            && let Some((_, drain)) = cancel.as_mut()
            && drain()
        {
            cancels += 1;
            // First request: let the command clean up (pid 1 forwards SIGTERM); then force.
            if cancels == 1 {
                let _ = sys::pidfd_kill(child.pidfd.as_fd(), libc::SIGTERM);
            } else {
                kill_job(child, cgroup);
            }
        }
        if is_ready(i_pid) {
            tracing::debug!("pid 1 exited");
            init_exit = Some(
                sys::wait_pidfd(child.pidfd.as_fd())
                    .map_err(|e| step_error("wait", String::new(), e))?,
            );
        }
        // Nothing readable for a second after pid 1 was reaped: every writer is gone, so any
        // descriptor still open is one leaked outside the job (impossible by construction) and
        // waiting longer would hang. A stream waiting for a slow *reader* is different: after a
        // normal exit its bytes are the command's output and are all delivered (as `cat`
        // would); after a timeout or cancellation the job was stopped, and a reader that
        // never reads must not keep the supervisor alive past the limit.
        let stopped = timed_out || cancels > 0;
        let waiting_for_reader = out.output_blocked || err.output_blocked;
        if draining && ready == 0 && (stopped || !waiting_for_reader) {
            break;
        }
    }
    if let Some((step, index, errno)) = failure {
        return Ok(Supervised::SetupFailed { step, index, errno });
    }
    Ok(Supervised::Ran(Relay {
        init_exit: init_exit.unwrap_or(Exit::Signal(libc::SIGKILL)),
        command_status,
        timed_out,
        cancelled: cancels > 0,
        killed: cancels > 1,
        stdout: out,
        stderr: err,
        network: None,
    }))
}

fn push_fd(fds: &mut Vec<libc::pollfd>, fd: RawFd) -> usize {
    fds.push(libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    fds.len() - 1
}

/// Kills the whole job: pid 1 (the kernel then kills its namespace) and the cgroup.
fn kill_job(child: &sys::Child, cgroup: Option<&JobCgroup>) {
    let _ = sys::pidfd_kill(child.pidfd.as_fd(), libc::SIGKILL);
    if let Some(cg) = cgroup {
        // pid 1 is dying, and with it the namespace: no fork race, so no freezing (we may be
        // killed ourselves at any moment, and a frozen job would outlive us).
        let _ = cg.kill_without_freezing();
    }
}

fn finish(
    r: Relay,
    limits: super::cgroup::LimitEvents,
    usage: super::cgroup::Usage,
    degraded: Vec<Degradation>,
    cgroup_version: Option<u8>,
    started: Instant,
) -> Outcome {
    let command = r.command_status.map(Exit::from_wait_status);
    let (ending, exit_code, reason) = if r.timed_out {
        (
            Ending::Timeout,
            124,
            "wall-clock limit reached; the whole job was killed".to_string(),
        )
    } else if limits.oom_kills > 0 && !matches!(command, Some(Exit::Code(_))) {
        (
            Ending::OutOfMemory,
            137,
            "memory limit reached; the kernel killed the command".to_string(),
        )
    } else {
        match command {
            Some(Exit::Code(code)) => (
                Ending::Exited { code },
                code,
                format!("exited with status {code}"),
            ),
            // Killed on request: the SIGTERM of the first request may have reached the command
            // (and been reported) just before the kill; either way the job was cancelled.
            Some(Exit::Signal(_)) if r.killed => (Ending::Killed, 137, "cancelled".to_string()),
            Some(Exit::Signal(sig)) => (
                Ending::Signaled { signal: sig },
                128 + sig,
                format!("killed by signal {sig} ({})", signal_name(sig)),
            ),
            None if r.cancelled => (Ending::Killed, 137, "cancelled".to_string()),
            None => {
                let how = match r.init_exit {
                    Exit::Code(c) => format!("exit status {c}"),
                    Exit::Signal(s) => format!("signal {s}"),
                };
                (
                    Ending::Killed,
                    137,
                    format!("the sandbox ended before the command reported ({how})"),
                )
            }
        }
    };
    let mut reason = reason;
    if limits.pids_max_hits > 0 {
        reason.push_str(&format!(
            "; the process limit was hit {} times",
            limits.pids_max_hits
        ));
    }
    if r.stdout.truncated + r.stderr.truncated > 0 {
        reason.push_str(&format!(
            "; output truncated ({} stdout and {} stderr bytes dropped)",
            r.stdout.truncated, r.stderr.truncated
        ));
    }
    Outcome {
        ending,
        exit_code,
        reason,
        duration_ms: started.elapsed().as_millis() as u64,
        limits,
        usage,
        stdout_bytes: r.stdout.bytes,
        stderr_bytes: r.stderr.bytes,
        stdout_truncated: r.stdout.truncated,
        stderr_truncated: r.stderr.truncated,
        degraded,
        cgroup_version,
        protection: Default::default(),
        network: r.network,
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSYS => "SIGSYS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_stale_once_its_supervisor_is_gone_or_a_zombie() {
        let name = |pid: u32| job_cgroup_name(pid, "j_x");
        assert!(!supervisor_gone(&name(std::process::id())), "we are alive");
        // A child that exited and is not reaped yet: its sandbox died with it.
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let zombie = name(child.id());
        let t = Instant::now();
        while !supervisor_gone(&zombie) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "never a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(supervisor_gone(&zombie), "reaped");
        // Names we did not make are never stale.
        assert!(!supervisor_gone("execbox-run-x-1"));
        assert!(!supervisor_gone("other-1-2"));
    }

    #[test]
    fn a_process_that_reused_the_supervisors_pid_is_not_taken_for_it() {
        let me = std::process::id();
        let name = job_cgroup_name(me, "j_x");
        let start = start_time(me).unwrap();
        assert_eq!(name, format!("{RUN_JOB_PREFIX}{me}.{start}-j_x"));
        assert!(!supervisor_gone(&name), "we are alive");
        // Same pid, another start time: the owner is gone and the pid was reused.
        let reused = format!("{RUN_JOB_PREFIX}{me}.{}-j_x", start + 1);
        assert!(supervisor_gone(&reused));
        // A name from before start times were recorded is judged by the pid alone.
        assert!(!supervisor_gone(&format!("{RUN_JOB_PREFIX}{me}-j_x")));
    }
}
