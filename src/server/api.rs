//! The HTTP API: routes, request parsing, authentication and authorisation per request, and the
//! NDJSON event stream of `POST /v1/exec`. Spec: `docs/openapi.yaml` (a test keeps [`ROUTES`]
//! and the spec's paths in step).
//!
//! Must never: reveal whether an id outside the caller's scope exists (always 404), echo a
//! token, or let a request's failure affect other callers (every error is a 4xx/5xx reply).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::Server;
use super::artifacts::JobArtifacts;
use super::auth;
use super::guard::OutputGuard;
use super::spawner::{JobFds, JobRequest, SupervisorEvent, WireLimits};
use super::state::{Job, JobState, Metrics, Session};
use crate::policy::{Command, Context, Verdict};
use crate::units::{parse_duration, parse_size};

pub type Body = BoxBody<Bytes, Infallible>;

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Agent,
    Operator,
}

/// Every route: (socket, method, path as in `docs/openapi.yaml`).
pub const ROUTES: &[(Socket, &str, &str)] = &[
    (Socket::Agent, "POST", "/v1/sessions"),
    (Socket::Agent, "DELETE", "/v1/sessions/{id}"),
    (Socket::Agent, "POST", "/v1/exec"),
    (Socket::Agent, "GET", "/v1/jobs"),
    (Socket::Agent, "GET", "/v1/jobs/{id}"),
    (Socket::Agent, "DELETE", "/v1/jobs/{id}"),
    (Socket::Agent, "GET", "/v1/artifacts/{file_id}"),
    (Socket::Operator, "GET", "/v1/sessions"),
    (Socket::Operator, "GET", "/metrics"),
];

/// The identity of the connection's peer (SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// An error reply: HTTP status plus a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(super) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
    fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn rate_limited(code: &'static str, message: &str, wait: Duration) -> ApiError {
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, self.body());
        if let Some(w) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&w.as_secs().max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ok_json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    json_response(status, v.to_string())
}

/// The raw reply written to a refused peer before anything is read from it.
pub fn forbidden_peer_reply(uid: u32) -> Vec<u8> {
    let body = ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_peer",
        format!(
            "uid {uid} is not allowed on this socket; fix: add it to [allow] in the daemon's config"
        ),
    )
    .body();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Entry point for every request.
pub async fn handle(
    srv: Arc<Server>,
    socket: Socket,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let r = route(&srv, socket, peer, req).await;
    let resp = r.unwrap_or_else(|e| {
        tracing::info!(%method, %path, uid = peer.uid, code = e.code, status = e.status.as_u16(), "request refused");
        e.into_response()
    });
    Ok(resp)
}

async fn route(
    srv: &Arc<Server>,
    socket: Socket,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Per-peer rate limit, before anything else costs us work.
    if !srv.peer_rate_ok(peer.uid) {
        Metrics::inc(&srv.metrics.rate_limited);
        return Err(ApiError::rate_limited(
            "rate_limited",
            "too many requests from this uid; slow down",
            Duration::from_secs(1),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (socket, segs.as_slice()) {
        (Socket::Agent, ["v1", "sessions"]) => match method {
            Method::POST => create_session(srv, peer, req).await,
            _ => Err(method_not_allowed()),
        },
        (Socket::Agent, ["v1", "sessions", id]) => match method {
            Method::DELETE => {
                let id = id.to_string();
                delete_session(srv, peer, req, &id).await
            }
            _ => Err(method_not_allowed()),
        },
        (Socket::Agent, ["v1", "exec"]) => match method {
            Method::POST => exec(srv, peer, req).await,
            _ => Err(method_not_allowed()),
        },
        (Socket::Agent, ["v1", "jobs"]) => match method {
            Method::GET => {
                let caller = srv.authenticate(peer, req.headers())?;
                let jobs = srv.state().jobs_for(&caller);
                Ok(ok_json(StatusCode::OK, serde_json::json!({"jobs": jobs})))
            }
            _ => Err(method_not_allowed()),
        },
        (Socket::Agent, ["v1", "jobs", id]) => {
            let caller = srv.authenticate(peer, req.headers())?;
            match method {
                Method::GET => {
                    let st = srv.state();
                    let job = st.job_for(&caller, id).ok_or_else(ApiError::not_found)?;
                    Ok(ok_json(StatusCode::OK, job.view()))
                }
                Method::DELETE => {
                    let cancel = {
                        let st = srv.state();
                        let job = st.job_for(&caller, id).ok_or_else(ApiError::not_found)?;
                        job.cancel.clone()
                    };
                    let Some(cancel) = cancel else {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "not_running",
                            "the job has already ended",
                        ));
                    };
                    // Two bytes: the supervisor kills the job's whole cgroup at once.
                    cancel_job(&cancel, true);
                    Ok(ok_json(
                        StatusCode::ACCEPTED,
                        serde_json::json!({"job": id, "state": "cancelling"}),
                    ))
                }
                _ => Err(method_not_allowed()),
            }
        }
        (Socket::Agent, ["v1", "artifacts", id]) => match method {
            Method::GET => {
                let id = id.to_string();
                super::artifacts::get(srv, peer, req, &id).await
            }
            _ => Err(method_not_allowed()),
        },
        (Socket::Operator, ["v1", "sessions"]) if method == Method::GET => {
            let st = srv.state();
            let mut list: Vec<&Session> = st.sessions.values().collect();
            list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            let v: Vec<_> = list
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "session": s.id,
                        "spawned_by": s.spawned_by,
                        "owner_uid": s.owner_uid,
                        "profile": s.profile,
                        "workspace": s.workspace,
                        "created_at": s.created_at,
                        "expires_at": s.expires_at,
                        "running_jobs": s.running,
                    })
                })
                .collect();
            Ok(ok_json(StatusCode::OK, serde_json::json!({"sessions": v})))
        }
        (Socket::Operator, ["metrics"]) if method == Method::GET => {
            let (active, sessions) = {
                let st = srv.state();
                (st.running, st.sessions.len())
            };
            let mut r =
                Response::new(Full::new(Bytes::from(srv.metrics.render(active, sessions))).boxed());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        _ => Err(ApiError::not_found()),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path; see docs/openapi.yaml",
    )
}

/// Writes cancel requests into a job's cancel pipe (non-blocking: the pipe has room for far
/// more than two bytes, and a full pipe already means "cancel").
pub fn cancel_job(fd: &std::os::fd::OwnedFd, kill: bool) {
    use std::os::fd::AsRawFd;
    let bytes: &[u8] = if kill { b"KK" } else { b"T" };
    let _ = crate::sandbox::sys::write_all(fd.as_raw_fd(), bytes);
}

/// Reads a JSON body: content type, size limit, and strict parsing.
async fn read_json<T: for<'de> Deserialize<'de>>(
    srv: &Server,
    req: Request<hyper::body::Incoming>,
    empty_ok: bool,
) -> Result<Option<T>, ApiError> {
    let max = srv.config.limits.max_body;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > max
    {
        return Err(too_large(max));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max)
            } else {
                ApiError::bad(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if body.is_empty() && empty_ok {
        return Ok(None);
    }
    if ctype.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON; fix: send Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        let m = e.to_string();
        if m.contains("unknown field") {
            ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", m)
        } else {
            ApiError::bad(format!("invalid JSON: {m}"))
        }
    })
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over {max} bytes (limits.max_body)"),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    profile: Option<String>,
}

async fn create_session(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    // With a token: a child session of the caller (a subagent).
    let parent = match req.headers().get(header::AUTHORIZATION) {
        Some(_) => Some(srv.authenticate(peer, req.headers())?),
        None => None,
    };
    let body: SessionBody = read_json(srv, req, true).await?.unwrap_or_default();
    let created = srv.create_session(peer, parent.as_deref(), body.profile)?;
    Ok(ok_json(StatusCode::CREATED, created))
}

async fn delete_session(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let caller = srv.authenticate(peer, req.headers())?;
    let ended = {
        let mut st = srv.state();
        if !st.sessions.contains_key(id) || !st.within(id, &caller) {
            return Err(ApiError::not_found());
        }
        // The session and every descendant end; their running jobs are killed.
        let doomed: Vec<String> = st
            .sessions
            .keys()
            .filter(|s| st.within(s, id))
            .cloned()
            .collect();
        for j in st.jobs.values() {
            if doomed.contains(&j.session)
                && let Some(c) = &j.cancel
            {
                cancel_job(c, true);
            }
        }
        let mut workspaces = vec![];
        for s in &doomed {
            if let Some(sess) = st.sessions.remove(s) {
                workspaces.push(sess.workspace);
            }
        }
        workspaces
    };
    let n = ended.len();
    tokio::task::spawn_blocking(move || {
        for ws in ended {
            // The jobs are being killed; a straggler's files are removed on the next pass.
            let _ = std::fs::remove_dir_all(&ws);
        }
    });
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({"session": id, "ended_sessions": n}),
    ))
}

/// A size as a number of bytes or a string such as "256MiB".
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, key: &str) -> Result<u64, ApiError> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(t) => parse_size(t).map_err(|m| ApiError::bad(format!("{key}: {m}"))),
        }
    }
}

/// A duration as seconds or a string such as "30s".
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExecLimits {
    memory: Option<SizeValue>,
    pids: Option<u64>,
    cpu: Option<f64>,
    output: Option<SizeValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    argv: Option<Vec<String>>,
    command: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stdin_b64: Option<String>,
    timeout: Option<DurationValue>,
    #[serde(default)]
    limits: ExecLimits,
    /// Also return the combined output in the `exit` event between nonce markers.
    #[serde(default)]
    envelope: bool,
}

/// The PATH inside the sandbox (`execbox run` uses the same).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

fn ndjson(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A response body fed by a channel; dropped when the client goes away.
pub(super) struct ChannelBody(pub(super) mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

async fn exec(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let caller = srv.authenticate(peer, req.headers())?;
    if srv.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the daemon is stopping; retry against the next instance",
        ));
    }
    let body: ExecBody = read_json(srv, req, false)
        .await?
        .ok_or_else(|| ApiError::bad("empty body"))?;
    let (profile_name, workspace, sandbox_id) = {
        let st = srv.state();
        let s = st.sessions.get(&caller).ok_or_else(|| {
            ApiError::unauthorized("the session has ended; fix: create a new one")
        })?;
        (s.profile.clone(), s.workspace.clone(), s.sandbox_id)
    };
    let profile = srv
        .config
        .profiles
        .get(&profile_name)
        .ok_or_else(|| ApiError::bad("the session's profile no longer exists"))?;

    let (argv, shell) = match (body.argv, body.command) {
        (Some(a), None) if !a.is_empty() => (a, None),
        (None, Some(c)) if !c.is_empty() => {
            (vec!["/bin/bash".into(), "-c".into(), c.clone()], Some(c))
        }
        _ => {
            return Err(ApiError::bad(
                "give exactly one of `argv` (non-empty array) or `command` (shell string)",
            ));
        }
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::bad("argv contains a NUL byte"));
    }
    let cwd = match &body.cwd {
        None => None,
        Some(c) => Some(inside(&workspace, c)?),
    };
    let env = environment(&body.env)?;
    let mut limits = profile.limits;
    if let Some(t) = &body.timeout {
        let d = match t {
            DurationValue::Seconds(s) if s.is_finite() && *s > 0.0 => {
                Duration::from_secs_f64(s.min(1e9))
            }
            DurationValue::Seconds(_) => return Err(ApiError::bad("timeout must be positive")),
            DurationValue::Text(s) => {
                parse_duration(s).map_err(|m| ApiError::bad(format!("timeout: {m}")))?
            }
        };
        if d.is_zero() || d > limits.wall_time {
            return Err(ApiError::bad(format!(
                "timeout must be above 0 and at most the profile's {} ms",
                limits.wall_time.as_millis()
            )));
        }
        limits.wall_time = d;
    }
    let tighter = |key: &str, asked: u64, have: Option<u64>| -> Result<u64, ApiError> {
        match have {
            Some(h) if asked > h => Err(ApiError::bad(format!(
                "limits.{key} {asked} is above the profile's {h}; only tighter limits may be asked"
            ))),
            _ if asked == 0 => Err(ApiError::bad(format!("limits.{key} must be positive"))),
            _ => Ok(asked),
        }
    };
    if let Some(m) = &body.limits.memory {
        let m = tighter("memory", m.bytes("limits.memory")?, limits.memory)?;
        if m < 4 << 20 {
            return Err(ApiError::bad("limits.memory is below 4MiB"));
        }
        limits.memory = Some(m);
    }
    if let Some(p) = body.limits.pids {
        limits.pids = Some(tighter("pids", p, limits.pids)?);
    }
    if let Some(o) = &body.limits.output {
        limits.output_bytes = tighter(
            "output",
            o.bytes("limits.output")?,
            Some(limits.output_bytes),
        )?;
    }
    if let Some(c) = body.limits.cpu {
        if !(c.is_finite() && c > 0.0) || limits.cpu.is_some_and(|have| c > have) {
            return Err(ApiError::bad(
                "limits.cpu must be positive and at most the profile's",
            ));
        }
        limits.cpu = Some(c);
    }
    let stdin = match &body.stdin_b64 {
        None => None,
        Some(s) => Some(
            B64.decode(s)
                .map_err(|e| ApiError::bad(format!("stdin_b64 is not base64: {e}")))?,
        ),
    };

    // The verdict, before anything is created.
    let ctx = Context {
        workspace: workspace.clone(),
        home: None,
    };
    let command = match &shell {
        Some(s) => Command::Shell(s),
        None => Command::Argv(&argv),
    };
    let decision = profile.policy.check(command, &ctx);
    let envelope = match body.envelope {
        true => Some((
            super::guard::new_nonce().map_err(internal)?,
            limits.output_bytes as usize,
        )),
        false => None,
    };
    let guard = OutputGuard::new(profile.output, envelope);
    let job_id = auth::new_id("j_").map_err(internal)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let accepted = ndjson(serde_json::json!({"event": "accepted", "job": job_id}));

    if decision.verdict != Verdict::Allow {
        let (code, message) = if decision.verdict == Verdict::Deny {
            (
                "refused_by_policy",
                format!("refused by policy: {}", decision.reason),
            )
        } else {
            (
                "approval_required",
                format!(
                    "needs an operator's approval ({}); the approval flow is not available in this version, so the command is refused",
                    decision.reason
                ),
            )
        };
        let exit = serde_json::json!({
            "event": "exit", "job": job_id, "code": 125, "signal": null,
            "reason": "refused", "error": code, "rule": decision.rule, "message": message,
        });
        Metrics::inc(&srv.metrics.jobs_refused);
        {
            let mut st = srv.state();
            st.jobs.insert(
                job_id.clone(),
                Job::new(&job_id, &caller, &argv, JobState::Refused, None),
            );
            let keep = srv.config.limits.finished_jobs_kept;
            st.finish(&job_id, JobState::Refused, exit.clone(), keep);
        }
        tracing::info!(job = %job_id, session = %caller, verdict = decision.verdict.as_str(), rule = ?decision.rule, "job refused");
        let _ = tx.try_send(accepted);
        let _ = tx.try_send(ndjson(exit));
        return Ok(stream_response(rx));
    }

    // Pipes: output and result come back to us; cancel and stdin go to the job.
    let pipe = || std::io::pipe().map_err(internal);
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (res_r, res_w) = pipe()?;
    let (cancel_r, cancel_w) = pipe()?;
    let (stdin_r, stdin_w) = match &stdin {
        Some(_) => {
            let (r, w) = pipe()?;
            (Some(r.into()), Some(w))
        }
        None => (None, None),
    };
    let cancel_w: Arc<std::os::fd::OwnedFd> = Arc::new(cancel_w.into());
    let _ = crate::sandbox::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&*cancel_w));

    // Admission: global and per-session concurrency.
    {
        let mut st = srv.state();
        if st.running >= srv.config.limits.max_jobs {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_jobs",
                format!(
                    "{} jobs are running (limits.max_jobs); retry when one ends",
                    st.running
                ),
            ));
        }
        let per = srv.config.limits.max_jobs_per_session;
        let s = st
            .sessions
            .get_mut(&caller)
            .ok_or_else(|| ApiError::unauthorized("the session has ended"))?;
        if s.running >= per {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_jobs",
                format!("this session already runs {per} jobs (limits.max_jobs_per_session)"),
            ));
        }
        s.running += 1;
        st.running += 1;
        st.jobs.insert(
            job_id.clone(),
            Job::new(
                &job_id,
                &caller,
                &argv,
                JobState::Running,
                Some(cancel_w.clone()),
            ),
        );
    }

    // Bigger pipes: fewer wake-ups per byte (best effort).
    for w in [&out_w, &err_w] {
        let _ = crate::sandbox::sys::set_pipe_size(std::os::fd::AsFd::as_fd(w), 1 << 20);
    }
    let request = JobRequest {
        job_id: job_id.clone(),
        argv: argv.clone(),
        workspace: workspace.clone(),
        cwd,
        env,
        profile: profile_name,
        limits: WireLimits::from(limits),
        sandbox_id,
        has_stdin: stdin.is_some(),
    };
    let fds = JobFds {
        stdout: out_w.into(),
        stderr: err_w.into(),
        result: res_w.into(),
        cancel: cancel_r.into(),
        stdin: stdin_r,
    };
    let s2 = srv.clone();
    let submitted = tokio::task::spawn_blocking(move || s2.spawner.submit(&request, &fds))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = submitted {
        let exit = serde_json::json!({"event": "exit", "job": job_id, "code": 126, "signal": null,
            "reason": "setup_failed", "error": {"step": "spawner", "errno": null, "message": e}});
        let keep = srv.config.limits.finished_jobs_kept;
        srv.state()
            .finish(&job_id, JobState::Finished, exit.clone(), keep);
        tracing::error!(job = %job_id, error = %e, "the spawner did not take the job");
        let _ = tx.try_send(accepted);
        let _ = tx.try_send(ndjson(exit));
        return Ok(stream_response(rx));
    }
    Metrics::inc(&srv.metrics.jobs_started);
    tracing::info!(job = %job_id, session = %caller, uid = peer.uid, argv = ?argv, "job started");
    let _ = tx.try_send(accepted);

    if let (Some(data), Some(w)) = (stdin, stdin_w) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let owned: std::os::fd::OwnedFd = w.into();
            if let Ok(mut s) = tokio::net::unix::pipe::Sender::from_owned_fd(owned) {
                let _ = s.write_all(&data).await;
            }
        });
    }
    let relay = Relay {
        srv: srv.clone(),
        job: job_id,
        tx,
        cancel: cancel_w,
        guard,
        artifacts: profile.artifacts.clone().map(|cfg| JobArtifacts {
            session: caller.clone(),
            workspace: workspace.clone(),
            cfg,
        }),
    };
    srv.jobs
        .spawn(relay.run(out_r.into(), err_r.into(), res_r.into()));
    Ok(stream_response(rx))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("internal error: {e}"),
    )
}

/// `cwd` must name a directory inside the workspace (relative to it, or absolute under it),
/// without `..`.
fn inside(workspace: &Path, cwd: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(cwd);
    if p.components().any(|c| matches!(c, Component::ParentDir)) || cwd.contains('\0') {
        return Err(ApiError::bad("cwd must not contain `..`"));
    }
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace.join(p)
    };
    if !full.starts_with(workspace) {
        return Err(ApiError::bad(format!(
            "cwd must be inside the session's workspace {}",
            workspace.display()
        )));
    }
    Ok(full)
}

/// The clean environment: PATH, HOME, LANG, TERM, then the request's variables.
fn environment(extra: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
    ];
    for (k, v) in extra {
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid || v.contains('\0') {
            return Err(ApiError::bad(format!(
                "env {k:?} is not a valid variable name (letters, digits and _) or its value has a NUL"
            )));
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    Ok(env)
}

/// Turns one job's pipes into NDJSON events, records the end, and kills the job if the client
/// goes away.
struct Relay {
    srv: Arc<Server>,
    job: String,
    tx: mpsc::Sender<Bytes>,
    cancel: Arc<std::os::fd::OwnedFd>,
    guard: OutputGuard,
    artifacts: Option<JobArtifacts>,
}

impl Relay {
    async fn run(
        mut self,
        out: std::os::fd::OwnedFd,
        err: std::os::fd::OwnedFd,
        res: std::os::fd::OwnedFd,
    ) {
        use tokio::net::unix::pipe::Receiver;
        let open = |fd| Receiver::from_owned_fd(fd).ok();
        let mut out = open(out);
        let mut err = open(err);
        let mut res = open(res);
        let mut obuf = vec![0u8; 64 << 10];
        let mut ebuf = vec![0u8; 64 << 10];
        let mut rbuf = Vec::new();
        let mut result: Option<SupervisorEvent> = None;
        let mut client_gone = false;
        let started = Instant::now();
        while out.is_some() || err.is_some() || res.is_some() {
            let mut rchunk = [0u8; 4096];
            tokio::select! {
                n = read_opt(&mut out, &mut obuf) => match n {
                    Some(n) if n > 0 => self.send(&mut client_gone, "stdout", &obuf[..n]).await,
                    _ => out = None,
                },
                n = read_opt(&mut err, &mut ebuf) => match n {
                    Some(n) if n > 0 => self.send(&mut client_gone, "stderr", &ebuf[..n]).await,
                    _ => err = None,
                },
                n = read_opt(&mut res, &mut rchunk) => match n {
                    Some(n) if n > 0 => {
                        rbuf.extend_from_slice(&rchunk[..n]);
                        while let Some(pos) = rbuf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = rbuf.drain(..=pos).collect();
                            match serde_json::from_slice::<SupervisorEvent>(&line) {
                                Ok(SupervisorEvent::Started { .. }) => {
                                    self.emit(&mut client_gone, serde_json::json!({"event": "started", "job": self.job})).await;
                                }
                                Ok(ev) => result = Some(ev),
                                Err(e) => tracing::warn!(job = %self.job, error = %e, "bad supervisor line"),
                            }
                        }
                    }
                    _ => res = None,
                },
                _ = self.tx.closed(), if !client_gone => {
                    client_gone = true;
                    tracing::info!(job = %self.job, "client disconnected; killing the job");
                    cancel_job(&self.cancel, true);
                }
            }
        }
        for stream in ["stdout", "stderr"] {
            let tail = self.guard.flush(stream);
            if !tail.is_empty() {
                let ev = serde_json::json!({"event": stream, "data_b64": B64.encode(&tail)});
                self.emit(&mut client_gone, ev).await;
            }
        }
        let keep = self.srv.config.limits.finished_jobs_kept;
        let ran = matches!(result, Some(SupervisorEvent::Finished(_)));
        let mut exit = match result {
            Some(SupervisorEvent::Finished(w)) => {
                Metrics::inc(&self.srv.metrics.jobs_finished);
                let mut v = serde_json::to_value(&w).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "exit".into());
                    o.insert("job".into(), self.job.clone().into());
                }
                v
            }
            Some(SupervisorEvent::SetupError {
                step,
                errno,
                message,
            }) => {
                Metrics::inc(&self.srv.metrics.setup_failures);
                serde_json::json!({"event": "exit", "job": self.job, "code": 126, "signal": null,
                    "reason": "setup_failed", "error": {"step": step, "errno": errno, "message": message}})
            }
            _ => {
                Metrics::inc(&self.srv.metrics.setup_failures);
                serde_json::json!({"event": "exit", "job": self.job, "code": 126, "signal": null,
                    "reason": "setup_failed", "error": {"step": "supervisor", "errno": null,
                    "message": "the job's supervisor ended without a report"}})
            }
        };
        if let (true, Some(a)) = (ran, self.artifacts.take()) {
            super::artifacts::attach(&self.srv, &self.job, a, &mut exit).await;
        }
        let guard = std::mem::replace(&mut self.guard, OutputGuard::new(Default::default(), None));
        guard.finish(&mut exit);
        tracing::info!(job = %self.job, code = ?exit.get("code"), reason = ?exit.get("reason"), elapsed_ms = started.elapsed().as_millis() as u64, "job ended");
        // GET /v1/jobs/{id} keeps the exit event without the (large) envelope.
        let mut kept = exit.clone();
        if let Some(o) = kept.as_object_mut() {
            o.remove("envelope");
        }
        self.srv
            .state()
            .finish(&self.job, JobState::Finished, kept, keep);
        if !client_gone {
            let _ = self.tx.send(ndjson(exit)).await;
        }
    }

    async fn send(&mut self, gone: &mut bool, stream: &str, data: &[u8]) {
        let data = self.guard.chunk(stream, data);
        if data.is_empty() {
            return;
        }
        self.emit(
            gone,
            serde_json::json!({"event": stream, "data_b64": B64.encode(data)}),
        )
        .await;
    }

    async fn emit(&self, gone: &mut bool, v: serde_json::Value) {
        if *gone {
            return;
        }
        if self.tx.send(ndjson(v)).await.is_err() {
            *gone = true;
            tracing::info!(job = %self.job, "client disconnected; killing the job");
            cancel_job(&self.cancel, true);
        }
    }
}

/// Reads from an optional pipe; pends forever when there is none (so `select!` skips it).
async fn read_opt(
    r: &mut Option<tokio::net::unix::pipe::Receiver>,
    buf: &mut [u8],
) -> Option<usize> {
    match r {
        Some(r) => r.read(buf).await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path, socket) of every operation in `docs/openapi.yaml`, by a line scan of its
    /// `paths:` section (2-space path keys, 4-space method keys, 6-space `x-socket`).
    fn spec_routes() -> Vec<(String, String, String)> {
        let spec = include_str!("../../docs/openapi.yaml");
        let mut out = vec![];
        let (mut in_paths, mut path, mut method) = (false, String::new(), String::new());
        for line in spec.lines() {
            if !line.starts_with(' ') {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = format!("/{}", p.trim_end_matches(':'));
            } else if let Some(m) = line.strip_prefix("    ").filter(|m| !m.starts_with(' ')) {
                method = m.trim_end_matches(':').to_ascii_uppercase();
            } else if let Some(s) = line.strip_prefix("      x-socket: ") {
                out.push((method.clone(), path.clone(), s.trim().to_string()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn routes_match_the_openapi_spec() {
        let mut code: Vec<(String, String, String)> = ROUTES
            .iter()
            .map(|(s, m, p)| {
                let socket = match s {
                    Socket::Agent => "agent",
                    Socket::Operator => "operator",
                };
                (m.to_string(), p.to_string(), socket.to_string())
            })
            .collect();
        code.sort();
        assert_eq!(code, spec_routes(), "docs/openapi.yaml and ROUTES differ");
    }

    /// Every `ApiError::new(StatusCode::X, "code", …)` code in the server is listed in the
    /// spec's `ErrorCode` enum.
    #[test]
    fn every_error_code_in_the_code_is_in_the_spec() {
        let spec = include_str!("../../docs/openapi.yaml");
        let enum_start = spec.find("ErrorCode:").unwrap();
        let enum_text = &spec[enum_start..enum_start + spec[enum_start..].find("Error:").unwrap()];
        let mut seen = 0;
        for src in [include_str!("api.rs"), include_str!("mod.rs")] {
            let src = src.split("#[cfg(test)]").next().unwrap();
            for (i, _) in src.match_indices("StatusCode::") {
                let rest = &src[i..];
                let Some(comma) = rest.find(',') else {
                    continue;
                };
                let after = rest[comma + 1..].trim_start();
                if let Some(lit) = after.strip_prefix('"') {
                    let code = &lit[..lit.find('"').unwrap()];
                    if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        seen += 1;
                        assert!(
                            enum_text.contains(code),
                            "error code {code} is not in ErrorCode in docs/openapi.yaml"
                        );
                    }
                }
            }
        }
        assert!(seen >= 10, "the scan found only {seen} codes");
    }

    #[test]
    fn cwd_stays_inside_the_workspace() {
        let ws = Path::new("/srv/ws/s_1");
        assert_eq!(inside(ws, "sub").unwrap(), Path::new("/srv/ws/s_1/sub"));
        assert_eq!(
            inside(ws, "/srv/ws/s_1/a").unwrap(),
            Path::new("/srv/ws/s_1/a")
        );
        assert!(inside(ws, "../s_2").is_err());
        assert!(inside(ws, "/srv/ws/s_2").is_err());
        assert!(inside(ws, "/etc").is_err());
    }
}
