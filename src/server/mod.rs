//! `execbox serve`: the supervisor daemon. Owns the two Unix sockets (agent, operator), peer
//! identification (SO_PEERCRED against the allowlist, default deny), sessions and tokens, the
//! life cycle (graceful SIGTERM, stale cgroup sweep) and the bridge to the [`spawner`].
//!
//! Must never: listen on TCP, accept a peer outside the allowlist, run sandbox code in this
//! (multithreaded) process, or leave a job running after it exits.
//!
//! Start order matters: config → `doctor` checks (refuse to start on a failure; they fork
//! probes, so they run while the process has one thread) → stale cgroup sweep → spawner fork (the process still has one
//! thread; it keeps only `privilege::SPAWNER`) → sockets → audit log → `PR_SET_DUMPABLE 0`, no
//! core dumps → keep only `privilege::API` (as root) → tokio runtime.

pub mod api;
pub mod approvals;
pub mod artifacts;
pub mod auth;
pub mod conns;
pub mod exec;
pub mod files;
pub mod guard;
pub mod histogram;
pub mod inproc;
mod jobs;
pub mod lifecycle;
pub mod listen;
mod operator;
pub mod pairing;
pub mod privilege;
mod record;
pub mod retain;
mod sessions;
pub mod spawner;
pub mod state;
pub mod volume;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::doctor::{self, Status};
use crate::sandbox::{self, sys};
use api::{ApiError, Peer};
use auth::{Lockout, RateLimiter};
use state::{Metrics, State};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Spawner(#[from] spawner::SpawnerError),
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    #[error("cannot create {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to start: {} check(s) failed ({}); fix them (each is logged with its fix) and see `execbox doctor`",
        .0.len(),
        .0.join(", ")
    )]
    Doctor(Vec<&'static str>),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot open the audit log ([audit] path); the daemon does not run unaudited")]
    Audit(#[source] crate::audit::AuditError),
    #[error("refusing to start with more capabilities than it needs")]
    Privilege(#[source] privilege::PrivilegeError),
    #[error(
        "refusing to start: a descriptor limit of {nofile} leaves no room for agent connections beside the {reserve} kept for jobs (limits.max_jobs), the operator socket (limits.operator_connections) and the daemon; fix: raise LimitNOFILE (ulimit -n), or lower those limits"
    )]
    Descriptors { nofile: u64, reserve: u64 },
    #[error(
        "the spawner (pid {0}) died, so no job can run; stopped with a failure status for the service manager to restart the daemon"
    )]
    SpawnerDied(libc::pid_t),
}

/// Everything the request handlers share.
pub struct Server {
    pub config: Config,
    pub spawner: spawner::Spawner,
    pub metrics: Metrics,
    state: Mutex<State>,
    guard: Mutex<Guard>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, refuse new jobs.
    pub shutdown: CancellationToken,
    /// Every running job's relay task (and every request waiting for an approval).
    pub jobs: TaskTracker,
    pub(crate) am_root: bool,
    /// The hash-chained audit log: every decision is recorded (durably) before it acts.
    pub audit: crate::audit::AuditHandle,
    pub approvals: approvals::Approvals,
    /// Recorded in `job_start`.
    pub cgroup_version: Option<u8>,
    /// Outstanding pairing codes and the guessing accounting (`docs/pairing.md`).
    pub pairing: pairing::Pairing,
    /// Output kept for jobs that run on after their client left (`on_disconnect = "detach"`).
    pub retained: retain::Store,
    /// Records of things that already happened, queued for one background writer.
    detached: Arc<Mutex<record::Detached>>,
    /// Open connections per socket and per peer uid (`limits.max_connections*`).
    pub conns: conns::Conns,
}

/// Abuse accounting (one lock, held for microseconds).
#[derive(Default)]
struct Guard {
    lockout: Lockout,
    peer_rate: RateLimiter<u32>,
    session_rate: RateLimiter<String>,
    /// Per uid: when its last auth failure was recorded, and how many were not since.
    auth_records: std::collections::HashMap<u32, (Instant, u64)>,
    /// Which refusals reach the daemon's log (one line per uid and kind per second).
    log: conns::Throttle,
    /// Audit bytes per session and per uid (`audit.session_rate`, `audit.uid_rate`).
    volume: volume::Volume,
    /// Which audit-volume refusals get an `alert` record (one per uid per minute).
    volume_alerts: MinuteThrottle,
}

struct MinuteThrottle(conns::Throttle);

impl Default for MinuteThrottle {
    fn default() -> Self {
        MinuteThrottle(conns::Throttle::new(Duration::from_secs(60)))
    }
}

impl Server {
    /// The handlers' shared state with nothing in it yet. `serve` passes the real spawner; the
    /// in-process tests and the HTTP fuzzer pass [`spawner::Spawner::disconnected`].
    pub fn new(
        config: Config,
        spawner: spawner::Spawner,
        audit: crate::audit::AuditHandle,
        cgroup_version: Option<u8>,
    ) -> Server {
        let retained = retain::Store::new(config.detach.clone());
        let conns = conns::Conns::new(conns::Caps {
            agent_total: config.limits.max_connections,
            per_uid: config.limits.max_connections_per_uid,
            operator_total: config.limits.operator_connections,
        });
        Server {
            conns,
            config,
            spawner,
            metrics: Metrics::default(),
            state: Mutex::new(State::default()),
            guard: Mutex::new(Guard::default()),
            shutdown: CancellationToken::new(),
            jobs: TaskTracker::new(),
            am_root: sys::geteuid() == 0,
            audit,
            approvals: approvals::Approvals::default(),
            cgroup_version,
            pairing: pairing::Pairing::new(pairing::clock::from_env()),
            retained,
            detached: Arc::default(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self) -> MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a refusal of `kind` for `uid` is logged now: `Some(n)` with the `n` refusals
    /// folded into this line since the last one, `None` when only counted (a peer hammering
    /// the socket must not fill the log: one line per uid and kind per second).
    pub fn log_refusal(&self, uid: u32, kind: &'static str) -> Option<u64> {
        self.guard().log.check(uid, kind, Instant::now())
    }

    /// `Ok` while `session` and `uid` may still cause audit records; else `429
    /// audit_rate_limited` with the wait, logged (throttled) and, once a minute per uid, an
    /// `alert` record saying how many requests were refused.
    pub fn audit_volume_admit(&self, session: &str, uid: u32) -> Result<(), ApiError> {
        let rates = (self.config.audit.session_rate, self.config.audit.uid_rate);
        let now = Instant::now();
        let wait = {
            let mut g = self.guard();
            match g.volume.admit(session, uid, rates, now) {
                Ok(()) => return Ok(()),
                Err(wait) => (wait, g.volume_alerts.0.check(uid, "audit_volume", now)),
            }
        };
        let (wait, alert) = wait;
        Metrics::inc(&self.metrics.rate_limited);
        if let Some(folded) = alert {
            self.record_detached(crate::audit::Event::Alert {
                kind: "audit_rate_limited".into(),
                detail: format!(
                    "uid {uid} (session {session}) is past audit.session_rate or audit.uid_rate; its requests are refused until the volume drains ({folded} more refusals of this uid since the last alert)"
                ),
            });
        }
        Err(ApiError {
            retry_after: Some(wait.max(Duration::from_secs(1))),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "audit_rate_limited",
                format!(
                    "this session or uid caused more audit records than audit.session_rate / audit.uid_rate allow; retry in {} ms (smaller requests help: a command's record grows with its size)",
                    wait.as_millis()
                ),
            )
        })
    }

    /// Charges `bytes` of audit records to `session` and `uid`.
    pub fn audit_volume_charge(&self, session: &str, uid: u32, bytes: u64) {
        let rates = (self.config.audit.session_rate, self.config.audit.uid_rate);
        self.guard()
            .volume
            .charge(session, uid, rates, bytes, Instant::now());
    }

    pub fn peer_rate_ok(&self, uid: u32) -> bool {
        let rate = self.config.limits.peer_rate;
        self.guard().peer_rate.allow(uid, rate, Instant::now())
    }

    /// The caller's session from `Authorization: Bearer <session>.<secret>`. Bad tokens count
    /// towards the peer uid's lockout; every failure looks the same to the caller.
    pub fn authenticate(&self, peer: Peer, headers: &HeaderMap) -> Result<String, ApiError> {
        let now = Instant::now();
        // Bound first: the guard's lock must not be held across record_auth_failure.
        let locked = self.guard().lockout.locked(peer.uid, now);
        if let Some(wait) = locked {
            Metrics::inc(&self.metrics.rate_limited);
            self.record_auth_failure(peer, "locked out after repeated bad tokens");
            return Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "locked_out",
                    format!(
                        "too many bad tokens from uid {}; retry in {} ms",
                        peer.uid,
                        wait.as_millis()
                    ),
                )
            });
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_bearer);
        let fail = |srv: &Server, counted: bool| {
            Metrics::inc(&srv.metrics.auth_failures);
            srv.record_auth_failure(peer, "missing, invalid or expired token");
            if counted {
                let l = &srv.config.limits;
                srv.guard()
                    .lockout
                    .failure(peer.uid, l.bad_token_limit, l.bad_token_lockout, now);
            }
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing, invalid or expired token; fix: send Authorization: Bearer <token from POST /v1/sessions>",
            )
        };
        let Some((session, secret)) = presented else {
            return Err(fail(
                self,
                headers.contains_key(http::header::AUTHORIZATION),
            ));
        };
        let ok = {
            let st = self.state();
            // Always hash and compare, found or not, so timing says nothing about ids.
            let (hash, owner, expires) = match st.sessions.get(session) {
                Some(s) => (s.token_hash, Some(s.owner_uid), s.expires),
                None => ([0u8; 32], None, now),
            };
            let good = auth::verify(secret, &hash);
            good && owner == Some(peer.uid) && expires > now
        };
        if !ok {
            return Err(fail(self, true));
        }
        self.guard().lockout.success(peer.uid);
        let rate = self.config.limits.session_rate;
        if !self
            .guard()
            .session_rate
            .allow(session.to_string(), rate, now)
        {
            Metrics::inc(&self.metrics.rate_limited);
            return Err(ApiError {
                retry_after: Some(Duration::from_secs(1)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests for this session; slow down",
                )
            });
        }
        Ok(session.to_string())
    }

    /// A refused peer or token, on the record (after the fact: the refusal needs no wait).
    /// At most one record per uid per second, the next one counting those left out: a peer
    /// hammering the socket must not flood the log and rotate older evidence away.
    pub fn record_auth_failure(&self, peer: Peer, reason: &str) {
        let now = Instant::now();
        let skipped = {
            let mut g = self.guard();
            match g.auth_records.get_mut(&peer.uid) {
                Some((last, n)) if now.duration_since(*last) < Duration::from_secs(1) => {
                    *n += 1;
                    return;
                }
                Some((last, n)) => {
                    *last = now;
                    std::mem::take(n)
                }
                None => {
                    g.auth_records.insert(peer.uid, (now, 0));
                    0
                }
            }
        };
        let reason = if skipped > 0 {
            format!("{reason} (and {skipped} earlier failures of this uid not recorded one by one)")
        } else {
            reason.to_string()
        };
        self.record_detached(crate::audit::Event::Auth {
            ok: false,
            peer_uid: Some(peer.uid),
            reason,
        });
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Call from a single-threaded process (the spawner is
/// forked here, before the runtime exists).
pub fn serve(mut config: Config) -> Result<(), ServeError> {
    let am_root = sys::geteuid() == 0;
    if config.allow.open {
        tracing::warn!(
            config = %config.file,
            "ALLOWLIST IS OPEN: every local user who can reach {} may run commands ([allow] open = true)",
            config.agent_socket.display()
        );
    }
    start_checks(&config)?;
    // Every running job holds several pipes here: a login's soft limit (often 1024) would run
    // out long before max_jobs. Jobs themselves get the profile's limits.nofile.
    let nofile = match sys::raise_nofile_to_hard() {
        Ok(n) => {
            tracing::debug!(nofile = n, "raised the descriptor limit to the hard limit");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e.describe(), "could not raise the descriptor limit");
            1024
        }
    };
    fit_connections(&mut config, nofile)?;
    warn_self_approval(&config);
    sweep_stale_cgroups(config.cgroup_parent.as_deref());
    make_dir(&config.state_dir, doctor::files::state_dir_mode(&config))?;

    make_dir(&config.workspace_root, 0o711)?;

    let ctx = spawner::SpawnerContext {
        profiles: config
            .profiles
            .iter()
            .map(|(n, p)| (n.clone(), p.sandbox.clone()))
            .collect(),
        cgroup_parent: config.cgroup_parent.clone(),
        keep_caps: am_root.then_some(privilege::SPAWNER),
    };
    let spawner = spawner::Spawner::start(ctx)?;
    let listeners = match listen::Listeners::open(&config) {
        Ok(l) => l,
        Err(e) => {
            spawner.shutdown();
            return Err(e.into());
        }
    };
    // After the spawner fork, so neither it nor any job inherits the log's fd. A daemon that
    // cannot record does not start.
    let audit = match open_audit(&config) {
        Ok(a) => a,
        Err(e) => {
            spawner.shutdown();
            return Err(e);
        }
    };
    let cgroup_version = sandbox::cgroup::Hierarchy::detect()
        .ok()
        .map(|h| h.version());
    // No core dumps, no ptrace by same-uid processes: the daemon holds tokens' hashes and
    // the jobs' pipes. (After the spawner fork: its children must stay dumpable to have their
    // id maps written by an unprivileged supervisor.)
    let _ = sys::setrlimit(libc::RLIMIT_CORE, 0);
    if am_root {
        let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0, 0);
        // Sockets bound, audit log open, cgroups swept, spawner forked: from here on this
        // process needs only what `privilege::API` lists. Still one thread, so it covers all.
        if let Err(e) = privilege::keep_only(privilege::API, privilege::cap_last()) {
            spawner.shutdown();
            return Err(ServeError::Privilege(e));
        }
        tracing::info!(
            api = %privilege::names(privilege::mask(privilege::API)).join(" "),
            spawner = %privilege::names(privilege::mask(privilege::SPAWNER)).join(" "),
            "dropped every other capability (effective, permitted, inheritable, ambient, bounding)"
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let srv = Arc::new(Server::new(config, spawner, audit, cgroup_version));
    let stop = rt.block_on(run(srv.clone(), listeners));
    drop(rt);
    match Arc::try_unwrap(srv) {
        Ok(s) => s.spawner.shutdown(),
        Err(s) => {
            let _ = sys::kill(s.spawner.pid, libc::SIGKILL);
        }
    }
    tracing::info!("stopped");
    match stop {
        Stop::Signal => Ok(()),
        Stop::SpawnerDied(pid) => Err(ServeError::SpawnerDied(pid)),
    }
}

/// Fits the connection caps into `nofile` descriptors beside the reserve for the daemon and
/// its jobs (`conns::descriptor_budget`): lowered and logged when they do not fit, a refusal
/// to start when not even one agent connection would.
fn fit_connections(config: &mut Config, nofile: u64) -> Result<(), ServeError> {
    let l = &mut config.limits;
    let want = conns::Caps {
        agent_total: l.max_connections,
        per_uid: l.max_connections_per_uid,
        operator_total: l.operator_connections,
    };
    let Some(got) = conns::descriptor_budget(want, l.max_jobs, nofile) else {
        return Err(ServeError::Descriptors {
            nofile,
            reserve: conns::FDS_BASE
                + conns::FDS_PER_JOB * l.max_jobs as u64
                + l.operator_connections as u64,
        });
    };
    if got != want {
        tracing::warn!(
            nofile,
            max_connections = got.agent_total,
            max_connections_per_uid = got.per_uid,
            configured = l.max_connections,
            "limits.max_connections does not fit the descriptor limit beside the reserve for jobs and the operator socket; lowered (raise LimitNOFILE, or lower limits.max_connections)"
        );
    }
    l.max_connections = got.agent_total;
    l.max_connections_per_uid = got.per_uid;
    Ok(())
}

/// Why [`run`] returned.
enum Stop {
    /// SIGTERM or SIGINT: a clean stop.
    Signal,
    /// The spawner is gone; the daemon could only answer every job with an error.
    SpawnerDied(libc::pid_t),
}

/// The `execbox doctor` checks, read-only: warnings are logged, failures are logged with their
/// fix and stop the start.
fn start_checks(config: &Config) -> Result<(), ServeError> {
    let cx = doctor::Context {
        config: doctor::Loaded::Valid(config),
        config_path: Some(std::path::Path::new(&config.file)),
        mode: doctor::Mode::Daemon,
        euid: sys::geteuid(),
    };
    let checks = doctor::run(&cx, &mut doctor::Changes::default());
    let mut failed = Vec::new();
    for c in &checks {
        let fix = c.fix.as_deref().unwrap_or("");
        match c.status {
            Status::Ok => tracing::debug!(check = c.id, "{}: {}", c.title, c.evidence),
            Status::Info => tracing::info!(check = c.id, fix, "{}: {}", c.title, c.evidence),
            Status::Warn => tracing::warn!(check = c.id, fix, "{}: {}", c.title, c.evidence),
            Status::Fail => {
                tracing::error!(check = c.id, fix, "{}: {}", c.title, c.evidence);
                failed.push(c.id);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ServeError::Doctor(failed))
    }
}

async fn run(srv: Arc<Server>, listeners: listen::Listeners) -> Stop {
    let conns = TaskTracker::new();
    let accept = listen::accept_loops(srv.clone(), listeners, conns.clone());
    tracing::info!(
        agent = %srv.config.agent_socket.display(),
        operator = %srv.config.operator_socket.display(),
        pid = std::process::id(),
        spawner = srv.spawner.pid,
        "serving"
    );
    let reaper = {
        let srv = srv.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                srv.reap_expired();
            }
        })
    };
    let stop = tokio::select! {
        _ = wait_for_signal() => Stop::Signal,
        pid = spawner_gone(srv.spawner.pid) => {
            tracing::error!(spawner = pid, "the spawner died (its jobs died with it); stopping");
            Stop::SpawnerDied(pid)
        }
    };
    tracing::info!("shutting down: no new connections or jobs");
    srv.shutdown.cancel();
    let _ = accept.await;
    reaper.abort();

    srv.jobs.close();
    let grace = srv.config.limits.shutdown_grace;
    if tokio::time::timeout(grace, srv.jobs.wait()).await.is_err() {
        let running: Vec<_> = {
            let st = srv.state();
            st.jobs
                .values()
                .filter_map(|j| j.cancel.clone().map(|c| (j.id.clone(), c)))
                .collect()
        };
        tracing::warn!(
            jobs = running.len(),
            grace_ms = grace.as_millis() as u64,
            "grace period over: killing the remaining jobs"
        );
        for (_, c) in &running {
            jobs::cancel_job(c, true);
        }
        if tokio::time::timeout(Duration::from_secs(10), srv.jobs.wait())
            .await
            .is_err()
        {
            tracing::error!(
                "jobs did not end 10 s after SIGKILL; exiting anyway (their supervisors die with the spawner)"
            );
        }
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    let active = srv.state().running;
    srv.metrics.jobs_finished.load(Ordering::Relaxed);
    tracing::info!(active, "all jobs ended");
    srv.flush_detached(Duration::from_secs(10)).await;
    if let Err(e) = srv.record(crate::audit::Event::DaemonStop {}).await {
        tracing::error!(error = %e.message, "daemon_stop not recorded");
    }
    stop
}

/// Resolves once the spawner process has exited (it is our child: reaping it here is what
/// notices). Polled: the spawner never exits on its own while the daemon runs.
async fn spawner_gone(pid: libc::pid_t) -> libc::pid_t {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !matches!(sys::waitpid_nohang(pid), Ok(None)) {
            return pid;
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Operators are identified by uid alone: an agent uid that is also an operator could approve
/// its own requests.
fn warn_self_approval(config: &Config) {
    let euid = sys::geteuid();
    let both: Vec<u32> = config
        .allow
        .uids
        .iter()
        .copied()
        .filter(|u| *u == 0 || *u == euid || config.operator_uids.contains(u))
        .collect();
    if !both.is_empty() {
        tracing::warn!(
            uids = %both.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
            "these agent uids may also use the operator socket, so they could approve their own requests; run agents as other users"
        );
    }
}

fn open_audit(config: &Config) -> Result<crate::audit::AuditHandle, ServeError> {
    let audit = crate::audit::AuditHandle::open(&config.audit.path, config.audit.rotation)
        .map_err(ServeError::Audit)?;
    audit
        .append(&crate::audit::Event::DaemonStart {
            config_sha256: config.config_sha256.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .map_err(ServeError::Audit)?;
    Ok(audit)
}

fn make_dir(path: &std::path::Path, mode: u32) -> Result<(), ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| ServeError::Dir {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Removes job cgroups left by a daemon (or `execbox run`) that was killed: a job is stale when
/// the supervisor pid in its name is gone or a zombie.
fn sweep_stale_cgroups(parent: Option<&std::path::Path>) {
    let Ok(h) = sandbox::cgroup::Hierarchy::detect() else {
        return;
    };
    for dir in h.remove_stale_where(parent, sandbox::RUN_JOB_PREFIX, sandbox::supervisor_gone) {
        tracing::info!(cgroup = %dir.display(), "removed a stale job cgroup");
    }
}
