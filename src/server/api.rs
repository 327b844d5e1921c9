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
use super::approvals::{Canonical, Grant, Kind, NewPending, Outcome, Scope, TakeError};
use super::artifacts::JobArtifacts;
use super::auth;
use super::guard::OutputGuard;
use super::spawner::{JobFds, JobRequest, SupervisorEvent, WireLimits};
use super::state::{Job, JobState, Metrics, Session};
use crate::audit::{Approval, Event};
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
    (Socket::Agent, "GET", "/v1/jobs/{id}/output"),
    (Socket::Agent, "GET", "/v1/artifacts/{file_id}"),
    (Socket::Operator, "GET", "/v1/sessions"),
    (Socket::Operator, "GET", "/v1/approvals"),
    (Socket::Operator, "POST", "/v1/approvals/{id}"),
    (Socket::Operator, "GET", "/v1/audit"),
    (Socket::Operator, "GET", "/metrics"),
    (Socket::Operator, "POST", "/v1/pairing"),
    (Socket::Operator, "GET", "/v1/pairing"),
    (Socket::Operator, "DELETE", "/v1/pairing/{id}"),
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
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
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
        if let Some(a) = &self.allow
            && let Ok(v) = HeaderValue::from_str(a)
        {
            r.headers_mut().insert(header::ALLOW, v);
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

pub(super) fn ok_json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
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
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "sessions", id]) => match method {
            Method::DELETE => {
                let id = id.to_string();
                delete_session(srv, peer, req, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "exec"]) => match method {
            Method::POST => exec(srv, peer, req).await,
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "jobs"]) => match method {
            Method::GET => {
                let caller = srv.authenticate(peer, req.headers())?;
                let jobs = srv.state().jobs_for(&caller);
                Ok(ok_json(StatusCode::OK, serde_json::json!({"jobs": jobs})))
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "jobs", id]) => {
            let caller = srv.authenticate(peer, req.headers())?;
            match method {
                Method::GET => {
                    let mut view = {
                        let st = srv.state();
                        st.job_for(&caller, id)
                            .ok_or_else(ApiError::not_found)?
                            .view()
                    };
                    if let Some(o) = view.as_object_mut() {
                        o.insert("retained_output".into(), srv.retained.describe(id));
                    }
                    Ok(ok_json(StatusCode::OK, view))
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
                _ => Err(wrong_method(socket, &segs)),
            }
        }
        (Socket::Agent, ["v1", "jobs", id, "output"]) => match method {
            Method::GET => {
                let caller = srv.authenticate(peer, req.headers())?;
                retained_output(srv, &caller, id, req.uri().query())
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "artifacts", id]) => match method {
            Method::GET => {
                let id = id.to_string();
                super::artifacts::get(srv, peer, req, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
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
        (Socket::Operator, ["v1", "approvals"]) if method == Method::GET => {
            list_approvals(srv, req.uri().query()).await
        }
        (Socket::Operator, ["v1", "approvals", id]) => match method {
            Method::POST => {
                let id = id.to_string();
                let body = read_required(srv, req).await?;
                decide(srv, peer, &id, body).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "pairing"]) => match method {
            Method::POST => {
                let body = read_required(srv, req).await?;
                super::pairing::routes::issue(srv, peer, body).await
            }
            Method::GET => super::pairing::routes::list(srv),
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "pairing", id]) => match method {
            Method::DELETE => {
                let id = id.to_string();
                super::pairing::routes::revoke(srv, peer, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "audit"]) if method == Method::GET => {
            audit_since(srv, req.uri().query()).await
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
        _ => Err(wrong_method(socket, &segs)),
    }
}

/// `405` with `Allow` naming the methods [`ROUTES`] has for this path on this socket (RFC
/// 9110), or `404` when the path is no route here.
fn wrong_method(socket: Socket, segs: &[&str]) -> ApiError {
    let allow: Vec<&str> = ROUTES
        .iter()
        .filter(|(s, _, pattern)| {
            let p: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
            *s == socket
                && p.len() == segs.len()
                && p.iter()
                    .zip(segs)
                    .all(|(a, b)| a.starts_with('{') || a == b)
        })
        .map(|(_, m, _)| *m)
        .collect();
    if allow.is_empty() {
        return ApiError::not_found();
    }
    ApiError {
        allow: Some(allow.join(", ")),
        ..method_not_allowed()
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path; see docs/openapi.yaml",
    )
}

/// `GET /v1/jobs/{id}/output[?cursor=N]`: the output retained for a job that ran with
/// `on_disconnect = "detach"`, from event `cursor` on, then an `output_end` trailer (where to
/// resume, whether the job ended, what the limits dropped). Same scope rule as every job route.
fn retained_output(
    srv: &Server,
    caller: &str,
    job: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let cursor = match query_param(query, "cursor") {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            ApiError::bad("cursor must be a number (the `next_cursor` of an earlier reply)")
        })?,
    };
    if srv.state().job_for(caller, job).is_none() {
        return Err(ApiError::not_found());
    }
    let page = srv.retained.read(job, cursor).map_err(|e| match e {
        super::retain::ReadError::Expired => ApiError::new(
            StatusCode::GONE,
            "output_expired",
            "the job's retained output was dropped after detach.retention",
        ),
        super::retain::ReadError::NotRetained => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no output is retained for this job: only jobs started with \"on_disconnect\": \"detach\" keep it",
        ),
    })?;
    let mut body = Vec::new();
    for l in &page.lines {
        body.extend_from_slice(l);
    }
    body.extend_from_slice(&ndjson(page.trailer));
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
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
    // Every request body is an object; serde would also read a struct from an array
    // (`[null]` as `{"profile": null}`), which the spec does not allow (found by schemathesis).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad(
            "invalid JSON: the body must be a JSON object",
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

/// A JSON body that must be present.
pub(super) async fn read_required<T: for<'de> Deserialize<'de>>(
    srv: &Server,
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    read_json(srv, req, false)
        .await?
        .ok_or_else(|| ApiError::bad("empty body"))
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
    /// An operator's one-time code (`execbox pair`): the session gets the profile and
    /// workspace the operator chose. Never logged.
    pairing_code: Option<String>,
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
    if let Some(code) = body.pairing_code {
        if parent.is_some() || body.profile.is_some() {
            return Err(ApiError::bad(
                "a pairing code creates a root session with the profile the operator chose: send it alone, without a token or a profile",
            ));
        }
        return super::pairing::routes::redeem(srv, peer, code).await;
    }
    if parent.is_none() && srv.config.sessions.require_pairing {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "pairing_required",
            "this daemon creates root sessions only from an operator's pairing code (sessions.require_pairing); fix: ask the operator for one (`execbox pair`) and send {\"pairing_code\": \"…\"}; child sessions need the parent's token",
        ));
    }
    let wanted = body
        .profile
        .clone()
        .unwrap_or_else(|| srv.config.default_profile.clone());
    // A high-risk profile binds only with an operator's approval; the request waits for it.
    let approved = parent.is_none()
        && srv.config.approval_profiles.contains(&wanted)
        && srv.config.profiles.contains_key(&wanted);
    if approved {
        approve_profile_bind(srv, peer, &wanted).await?;
    }
    let created = srv.create_session(peer, parent.as_deref(), body.profile, approved)?;
    let id = created["session"].as_str().unwrap_or_default().to_string();
    let recorded = srv
        .record(Event::SessionCreate {
            session: id.clone(),
            parent: parent.clone(),
            profile: created["profile"].as_str().unwrap_or_default().into(),
            peer_uid: peer.uid,
        })
        .await;
    if let Err(e) = recorded {
        // Nobody has the token yet: the unrecorded session never existed.
        let ws = srv.state().remove_session(&id).map(|s| s.workspace);
        if let Some(ws) = ws {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(ws)).await;
        }
        return Err(e);
    }
    Ok(ok_json(StatusCode::CREATED, created))
}

/// Withdraws a profile-bind approval whose request went away (the handler future dropped).
struct WithdrawOnDrop<'a> {
    srv: &'a Arc<Server>,
    id: String,
    /// Cleared once the request was decided or ended otherwise.
    armed: bool,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && self.srv.approvals.remove(&self.id).is_some() {
            self.srv.record_detached(Event::ApprovalWithdrawn(Approval {
                approval_id: self.id.clone(),
                job: String::new(),
                operator_uid: None,
                scope: None,
                reason: Some("the client disconnected before a decision".into()),
            }));
        }
    }
}

/// Asks an operator to let a session bind `profile`; returns once approved.
async fn approve_profile_bind(
    srv: &Arc<Server>,
    peer: Peer,
    profile: &str,
) -> Result<(), ApiError> {
    let id = auth::new_id("a_").map_err(internal)?;
    let profile_sha256 = srv
        .config
        .profile_sha256
        .get(profile)
        .cloned()
        .unwrap_or_default();
    let hash = Canonical {
        v: 1,
        kind: Kind::SessionProfile,
        session: None,
        peer_uid: Some(peer.uid),
        profile,
        profile_sha256: &profile_sha256,
        command: None,
        argv: &[],
        cwd: None,
        env: Vec::new(),
        stdin_sha256: None,
    }
    .hash();
    let expiry = srv.config.approvals.expiry;
    let expires_at = super::state::unix_now() + expiry.as_secs();
    let reason = format!("profile {profile:?} is listed in paths.approval_profiles");
    let view = serde_json::json!({
        "session": null, "parent_session": null, "peer_uid": peer.uid, "profile": profile,
        "command": null, "argv": [], "cwd": null, "env_keys": [], "parsed": [], "fired": null,
        "fail_closed": [], "rule": "approval_profiles", "reason": reason, "job": null,
    });
    let expires = Instant::now() + expiry;
    let rx = srv
        .approvals
        .add(
            id.clone(),
            NewPending {
                kind: Kind::SessionProfile,
                group: format!("uid:{}", peer.uid),
                session: None,
                job: None,
                hash,
                view,
                expires,
                expires_at,
            },
            srv.config.approvals.max_pending_per_session,
        )
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending",
                "this uid already has approvals.max_pending_per_session profile binds waiting",
            )
        })?;
    let mut guard = WithdrawOnDrop {
        srv,
        id: id.clone(),
        armed: true,
    };
    let approval = |reason: &str| Approval {
        approval_id: id.clone(),
        job: String::new(),
        operator_uid: None,
        scope: None,
        reason: Some(reason.into()),
    };
    srv.record(Event::ApprovalRequested(approval(&reason)))
        .await?;
    srv.approvals.publish(&id);
    tracing::info!(approval = %id, uid = peer.uid, profile, "session waits for an operator to approve its profile");
    let mut rx = rx;
    let waited = tokio::select! {
        r = tokio::time::timeout_at(expires.into(), &mut rx) => r,
        // The guard withdraws the request (and records it) as this returns.
        _ = srv.shutdown.cancelled() => return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the daemon is stopping; the request for approval was withdrawn",
        )),
    };
    let decided = match waited {
        Ok(r) => r.ok(),
        Err(_) => {
            if srv.approvals.remove(&id).is_some() {
                guard.armed = false;
                let _ = srv
                    .record(Event::ApprovalExpired(approval(
                        "no operator decided before the request expired",
                    )))
                    .await;
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "approval_expired",
                    format!("no operator approved profile {profile:?} in time (approvals.expiry)"),
                ));
            }
            // A decision is being recorded right now.
            tokio::time::timeout(Duration::from_secs(10), &mut rx)
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    guard.armed = false;
    match decided {
        Some(Outcome::Approved { .. }) => Ok(()),
        Some(Outcome::Denied { reason, .. }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "approval_denied",
            format!(
                "an operator denied binding profile {profile:?}{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "approval_expired",
            "the approval request ended without a decision",
        )),
    }
}

/// Query parameter `key` of `query`.
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `GET /v1/approvals[?after=SEQ][&wait=30s]`: the waiting requests; with `wait`, a long
/// poll that answers as soon as one with `seq > after` exists (or empty when time is up).
async fn list_approvals(
    srv: &Arc<Server>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let after = match query_param(query, "after") {
        None => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            ApiError::bad("after must be a sequence number (the `seq` of an approval)")
        })?,
    };
    let wait = match query_param(query, "wait") {
        None => Duration::ZERO,
        Some(w) => {
            let d = match w.parse::<u64>() {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => parse_duration(w).map_err(|m| ApiError::bad(format!("wait: {m}")))?,
            };
            d.min(Duration::from_secs(300))
        }
    };
    let deadline = Instant::now() + wait;
    let mut changed = srv.approvals.subscribe();
    loop {
        let list = srv.approvals.list(after);
        if !list.is_empty() || Instant::now() >= deadline {
            let last = list.last().and_then(|v| v["seq"].as_u64()).unwrap_or(after);
            return Ok(ok_json(
                StatusCode::OK,
                serde_json::json!({"approvals": list, "last_seq": last}),
            ));
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), changed.changed()) => {
                if !matches!(r, Ok(Ok(()))) {
                    tokio::time::sleep_until(deadline.into()).await;
                }
            }
            _ = srv.shutdown.cancelled() => return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the daemon is stopping",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    scope: Option<Scope>,
    hash: Option<String>,
    reason: Option<String>,
}

/// `POST /v1/approvals/{id}`: an operator's decision, bound to the hash it was shown. The
/// decision is on the record before the waiting request learns of it.
async fn decide(
    srv: &Arc<Server>,
    peer: Peer,
    id: &str,
    body: DecisionBody,
) -> Result<Response<Body>, ApiError> {
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ApiError::bad("decision must be \"approve\" or \"deny\"")),
    };
    if approve && body.hash.is_none() {
        return Err(ApiError::bad(
            "an approval must carry the request's `hash` as shown by GET /v1/approvals",
        ));
    }
    let scope = body.scope.unwrap_or(Scope::Once);
    let p = srv
        .approvals
        .take(id, body.hash.as_deref())
        .map_err(|e| match e {
            TakeError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such pending approval (decided, expired or withdrawn)",
            ),
            TakeError::HashMismatch => ApiError::new(
                StatusCode::CONFLICT,
                "approval_hash_mismatch",
                "the hash is not the request's: it is not what you were shown; list the approvals again",
            ),
        })?;
    if approve && scope == Scope::Session && p.kind != Kind::Exec {
        srv.approvals.put_back(p);
        return Err(ApiError::bad(
            "scope session applies to commands only; a profile bind is approved once",
        ));
    }
    let record = Approval {
        approval_id: p.id.clone(),
        job: p.job.clone().unwrap_or_default(),
        operator_uid: Some(peer.uid),
        scope: approve.then(|| scope.as_str().to_string()),
        reason: body.reason.clone(),
    };
    let event = if approve {
        Event::ApprovalGranted(record)
    } else {
        Event::ApprovalDenied(record)
    };
    if let Err(e) = srv.record(event).await {
        srv.approvals.put_back(p);
        return Err(e);
    }
    if approve
        && scope == Scope::Session
        && let Some(s) = &p.session
    {
        srv.approvals.grant_session(
            s,
            &p.hash,
            Grant {
                approval_id: p.id.clone(),
                operator_uid: peer.uid,
            },
        );
    }
    let outcome = if approve {
        Outcome::Approved {
            scope,
            operator_uid: peer.uid,
            hash: p.hash.clone(),
        }
    } else {
        Outcome::Denied {
            operator_uid: peer.uid,
            reason: body.reason,
        }
    };
    tracing::info!(approval = %p.id, uid = peer.uid, approve, scope = scope.as_str(), "operator decision");
    let id = p.id.clone();
    let delivered = p.decide(outcome);
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({
            "approval_id": id,
            "decision": if approve { "approve" } else { "deny" },
            "scope": approve.then(|| scope.as_str()),
            "delivered": delivered,
        }),
    ))
}

/// `GET /v1/audit?since=SEQ`: the stored records after `since`, as JSON lines.
async fn audit_since(srv: &Arc<Server>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let since = match query_param(query, "since") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ApiError::bad("since must be a sequence number"))?,
    };
    let path = srv.config.audit.path.clone();
    let lines =
        tokio::task::spawn_blocking(move || crate::audit::tail::records_since(&path, since))
            .await
            .map_err(internal)?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    format!("cannot read the audit log: {}", crate::cli::chain(&e)),
                )
            })?;
    let mut body = String::new();
    for l in lines {
        body.push_str(&l);
        body.push('\n');
    }
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
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
        srv.approvals.end_sessions(&doomed);
        srv.retained.end_sessions(&doomed);
        let mut workspaces = vec![];
        for s in &doomed {
            if let Some(sess) = st.remove_session(s)
                && !sess.keep_workspace
            {
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
    /// JSON has one number type: `1e6` and `1000000.0` are the integer 1000000 to JSON Schema
    /// (and to many clients' encoders). Found by schemathesis.
    Number(f64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, key: &str) -> Result<u64, ApiError> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Number(f) => whole(*f)
                .ok_or_else(|| ApiError::bad(format!("{key}: {f} is not a whole number of bytes"))),
            SizeValue::Text(t) => parse_size(t).map_err(|m| ApiError::bad(format!("{key}: {m}"))),
        }
    }
}

/// `f` as a u64 when it is a non-negative whole number in range.
fn whole(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
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
    /// A number (see [`SizeValue::Number`]); checked to be whole where it is used.
    pids: Option<f64>,
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
    /// What the client's disconnect does to the job (default: `[detach] default`).
    on_disconnect: Option<OnDisconnect>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnDisconnect {
    /// The job is killed (its whole cgroup).
    Kill,
    /// The job goes on; its output is retained for `GET /v1/jobs/{id}/output`.
    Detach,
}

/// The PATH inside the sandbox (`execbox run` uses the same).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

fn ndjson(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// One `stdout`/`stderr` event line (`stream` is one of the two names), written directly:
/// base64 never needs JSON escaping, and running megabytes of it through the serializer's
/// escape scan was the daemon's largest cost at high output rates (`perf`:
/// `format_escaped_str`, then the scalar base64 encoder).
fn output_event(stream: &str, data: &[u8]) -> Bytes {
    const MID: &[u8] = b"\",\"data_b64\":\"";
    const END: &[u8] = b"\"}\n";
    let encoded = base64_simd::STANDARD.encoded_length(data.len());
    let mut line = Vec::with_capacity(10 + stream.len() + MID.len() + encoded + END.len());
    line.extend_from_slice(b"{\"event\":\"");
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(MID);
    // SIMD base64: several GB/s where the scalar engine managed about one.
    base64_simd::STANDARD.encode_append(data, &mut line);
    line.extend_from_slice(END);
    Bytes::from(line)
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
    let body: ExecBody = read_required(srv, req).await?;
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
        let p = whole(p).ok_or_else(|| ApiError::bad("limits.pids must be a whole number"))?;
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
    let explained = profile.policy.explain(command, &ctx);
    let decision = explained.decision.clone();
    let envelope = match body.envelope {
        true => Some((
            super::guard::new_nonce().map_err(internal)?,
            limits.output_bytes as usize,
        )),
        false => None,
    };
    let guard = OutputGuard::new(profile.output, envelope);
    let job_id = auth::new_id("j_").map_err(internal)?;
    let parse_summary = serde_json::json!({
        "commands": explained.commands.iter().map(|c| &c.command).collect::<Vec<_>>(),
        "fail_closed": explained.fail_closed.iter().map(|f| format!("{}: {}", f.code, f.detail)).collect::<Vec<_>>(),
    });
    // The request and its verdict are on the record before anything acts on them.
    srv.record_all(vec![
        Event::ExecRequest {
            session: caller.clone(),
            job: job_id.clone(),
            command: shell.clone(),
            argv: shell.is_none().then(|| argv.clone()),
            parse_summary,
        },
        Event::Verdict {
            job: job_id.clone(),
            verdict: decision.verdict.as_str().into(),
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
        },
    ])
    .await?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let accepted = ndjson(serde_json::json!({"event": "accepted", "job": job_id}));
    let profile_sha256 = srv
        .config
        .profile_sha256
        .get(&profile_name)
        .cloned()
        .unwrap_or_default();
    let job = Prepared {
        guard,
        artifacts: profile.artifacts.clone(),
        job_id,
        session: caller,
        profile_name,
        profile_sha256,
        argv,
        shell,
        workspace,
        cwd,
        env,
        limits,
        sandbox_id,
        stdin,
        detach: match body.on_disconnect {
            Some(o) => o == OnDisconnect::Detach,
            None => srv.config.detach.default_detach,
        },
        allow_degraded: profile
            .sandbox
            .allow_degraded
            .iter()
            .map(|d| d.name().to_string())
            .collect(),
    };

    match decision.verdict {
        Verdict::Allow => {}
        Verdict::Deny => {
            let message = format!("refused by policy: {}", decision.reason);
            let exit = refused_exit(
                &job.job_id,
                "refused_by_policy",
                decision.rule.as_deref(),
                &message,
            );
            Metrics::inc(&srv.metrics.jobs_refused);
            {
                let mut st = srv.state();
                st.jobs.insert(
                    job.job_id.clone(),
                    Job::new(
                        &job.job_id,
                        &job.session,
                        &job.argv,
                        JobState::Refused,
                        None,
                    ),
                );
                let keep = srv.config.limits.finished_jobs_kept;
                st.finish(&job.job_id, JobState::Refused, exit.clone(), keep);
            }
            tracing::info!(job = %job.job_id, session = %job.session, rule = ?decision.rule, "job refused by policy");
            let _ = tx.try_send(accepted);
            let _ = tx.try_send(ndjson(exit));
            return Ok(stream_response(rx));
        }
        Verdict::Approve => {
            let hash = job.canonical().hash();
            match srv.approvals.session_grant(&job.session, &hash) {
                // This exact request was approved for this session before: no new question.
                Some(g) => {
                    srv.record(Event::ApprovalGranted(Approval {
                        approval_id: g.approval_id,
                        job: job.job_id.clone(),
                        operator_uid: Some(g.operator_uid),
                        scope: Some(Scope::Session.as_str().into()),
                        reason: Some("the same request was approved for this session".into()),
                    }))
                    .await?;
                }
                None => {
                    return pend(srv, peer, job, &explained, hash, tx, rx, accepted).await;
                }
            }
        }
    }
    launch(srv, job, &tx, Some(accepted)).await?;
    Ok(stream_response(rx))
}

/// A validated exec request, everything needed to run it (now, or after an approval).
struct Prepared {
    job_id: String,
    session: String,
    profile_name: String,
    profile_sha256: String,
    argv: Vec<String>,
    shell: Option<String>,
    workspace: PathBuf,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    limits: crate::profile::Limits,
    sandbox_id: u32,
    stdin: Option<Vec<u8>>,
    /// `on_disconnect = "detach"`: the job outlives its client and its output is retained.
    detach: bool,
    allow_degraded: Vec<String>,
    /// The output guard for this job's streams (issue 6).
    guard: OutputGuard,
    /// Where the job's artifacts are collected from, if the profile declares them.
    artifacts: Option<crate::profile::ArtifactsProfile>,
}

impl Prepared {
    /// The canonical request an approval is bound to (see `approvals::Canonical`).
    fn canonical(&self) -> Canonical<'_> {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.sort();
        Canonical {
            v: 1,
            kind: Kind::Exec,
            session: Some(&self.session),
            peer_uid: None,
            profile: &self.profile_name,
            profile_sha256: &self.profile_sha256,
            command: self.shell.as_deref(),
            argv: &self.argv,
            cwd: Some(
                self.cwd
                    .as_ref()
                    .unwrap_or(&self.workspace)
                    .to_string_lossy()
                    .into_owned(),
            ),
            env,
            stdin_sha256: self.stdin.as_deref().map(crate::config::sha256_hex),
        }
    }
}

fn refused_exit(job: &str, code: &str, rule: Option<&str>, message: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "exit", "job": job, "code": 125, "signal": null,
        "reason": "refused", "error": code, "rule": rule, "message": message,
    })
}

/// Queues an approve verdict for an operator and answers with a stream that shows
/// `pending_approval` and then whatever the decision leads to.
#[allow(clippy::too_many_arguments)]
async fn pend(
    srv: &Arc<Server>,
    peer: Peer,
    job: Prepared,
    explained: &crate::policy::Explanation,
    hash: String,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    accepted: Bytes,
) -> Result<Response<Body>, ApiError> {
    let decision = &explained.decision;
    let approval_id = auth::new_id("a_").map_err(internal)?;
    let expiry = srv.config.approvals.expiry;
    let expires_at = super::state::unix_now() + expiry.as_secs();
    let parent = srv
        .state()
        .sessions
        .get(&job.session)
        .and_then(|s| s.spawned_by.clone());
    // The simple command that decided, when one did (a fail-closed analysis names none).
    let fired = decision
        .command
        .as_ref()
        .and_then(|c| explained.commands.iter().position(|e| &e.command == c));
    let mut env_keys: Vec<&str> = job.env.iter().map(|(k, _)| k.as_str()).collect();
    env_keys.sort();
    let view = serde_json::json!({
        "job": job.job_id,
        "session": job.session,
        "parent_session": parent,
        "peer_uid": peer.uid,
        "profile": job.profile_name,
        "command": job.shell,
        "argv": job.argv,
        "cwd": job.cwd.as_ref().unwrap_or(&job.workspace),
        "env_keys": env_keys,
        "parsed": explained.commands.iter().map(|c| serde_json::json!({
            "command": c.command, "verdict": c.verdict, "matched": c.matched, "via": c.via,
        })).collect::<Vec<_>>(),
        "fired": fired,
        "fail_closed": explained.fail_closed.iter().map(|f| serde_json::json!({"code": f.code, "detail": f.detail})).collect::<Vec<_>>(),
        "rule": decision.rule,
        "reason": decision.reason,
    });
    let Some(outcome) = srv.approvals.add(
        approval_id.clone(),
        NewPending {
            kind: Kind::Exec,
            group: job.session.clone(),
            session: Some(job.session.clone()),
            job: Some(job.job_id.clone()),
            hash: hash.clone(),
            view,
            expires: Instant::now() + expiry,
            expires_at,
        },
        srv.config.approvals.max_pending_per_session,
    ) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pending",
            format!(
                "this session already has {} requests waiting for an operator (approvals.max_pending_per_session); wait for a decision",
                srv.config.approvals.max_pending_per_session
            ),
        ));
    };
    let requested = srv
        .record(Event::ApprovalRequested(Approval {
            approval_id: approval_id.clone(),
            job: job.job_id.clone(),
            operator_uid: None,
            scope: None,
            reason: Some(decision.reason.clone()),
        }))
        .await;
    if let Err(e) = requested {
        srv.approvals.remove(&approval_id);
        return Err(e);
    }
    srv.approvals.publish(&approval_id);
    srv.state().jobs.insert(
        job.job_id.clone(),
        Job::new(
            &job.job_id,
            &job.session,
            &job.argv,
            JobState::PendingApproval,
            None,
        ),
    );
    tracing::info!(job = %job.job_id, session = %job.session, approval = %approval_id, rule = ?decision.rule, "waiting for an operator's approval");
    let _ = tx.try_send(accepted);
    let _ = tx.try_send(ndjson(serde_json::json!({
        "event": "pending_approval", "job": job.job_id, "approval_id": approval_id,
        "rule": decision.rule, "reason": decision.reason, "expires_at": expires_at,
        "hash": hash,
    })));
    let waiter = Waiter {
        srv: srv.clone(),
        approval_id,
        hash,
        expires: Instant::now() + expiry,
        job,
        tx,
    };
    srv.jobs.spawn(waiter.run(outcome));
    Ok(stream_response(rx))
}

/// Waits for the operator, the clock, the client or shutdown — whichever takes the pending
/// request first decides — then runs the job or ends the stream with a refusal.
struct Waiter {
    srv: Arc<Server>,
    approval_id: String,
    hash: String,
    expires: Instant,
    job: Prepared,
    tx: mpsc::Sender<Bytes>,
}

impl Waiter {
    async fn run(self, mut outcome: tokio::sync::oneshot::Receiver<Outcome>) {
        let mut deadline = self.expires;
        let (mut gone, mut stopping) = (false, false);
        let decided = loop {
            tokio::select! {
                r = &mut outcome => break r.ok(),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.srv.approvals.remove(&self.approval_id).is_some() {
                        self.give_up("approval_expired", Event::ApprovalExpired, "no operator decided before the request expired (approvals.expiry)").await;
                        return;
                    }
                    // An operator's decision is being recorded right now: wait for it.
                    deadline = Instant::now() + Duration::from_secs(1);
                }
                _ = self.tx.closed(), if !gone => {
                    gone = true;
                    if self.srv.approvals.remove(&self.approval_id).is_some() {
                        self.give_up("approval_withdrawn", Event::ApprovalWithdrawn, "the client disconnected before a decision").await;
                        return;
                    }
                }
                _ = self.srv.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    if self.srv.approvals.remove(&self.approval_id).is_some() {
                        self.give_up("approval_withdrawn", Event::ApprovalWithdrawn, "the daemon is stopping").await;
                        return;
                    }
                }
            }
        };
        let Some(decided) = decided else {
            // The pending entry was dropped without a decision: its session ended.
            self.give_up(
                "approval_withdrawn",
                Event::ApprovalWithdrawn,
                "the session ended before a decision",
            )
            .await;
            return;
        };
        let keep = self.srv.config.limits.finished_jobs_kept;
        let job_id = self.job.job_id.clone();
        let refuse = |code: &str, message: &str| {
            let exit = refused_exit(&job_id, code, None, message);
            Metrics::inc(&self.srv.metrics.jobs_refused);
            self.srv
                .state()
                .finish(&job_id, JobState::Refused, exit.clone(), keep);
            let _ = self.tx.try_send(ndjson(exit));
        };
        match decided {
            Outcome::Denied { reason, .. } => refuse(
                "approval_denied",
                &format!(
                    "an operator denied the request{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
            Outcome::Approved { hash, .. } => {
                // Re-check at execution: what runs must be, byte for byte, what was approved.
                let now = self.job.canonical().hash();
                if now != hash || now != self.hash {
                    refuse(
                        "approval_mismatch",
                        "the request differs from the one approved",
                    );
                    return;
                }
                if let Err(e) = launch(&self.srv, self.job, &self.tx, None).await {
                    refuse(e.code, &e.message);
                }
            }
        }
    }

    /// Ends a request nobody decided: on the record (best effort: nothing runs either way).
    async fn give_up(&self, code: &str, event: fn(Approval) -> Event, message: &str) {
        let _ = self
            .srv
            .record(event(Approval {
                approval_id: self.approval_id.clone(),
                job: self.job.job_id.clone(),
                operator_uid: None,
                scope: None,
                reason: Some(message.into()),
            }))
            .await;
        let exit = refused_exit(&self.job.job_id, code, None, message);
        Metrics::inc(&self.srv.metrics.jobs_refused);
        let keep = self.srv.config.limits.finished_jobs_kept;
        self.srv
            .state()
            .finish(&self.job.job_id, JobState::Refused, exit.clone(), keep);
        tracing::info!(job = %self.job.job_id, approval = %self.approval_id, code, "approval ended without a decision");
        let _ = self.tx.try_send(ndjson(exit));
    }
}

/// Admits and starts a job whose verdict (or approval) allows it: concurrency limits, the
/// `job_start` record (durable before the spawner sees the job), then the relay. `accepted`
/// is sent first when the stream has not shown it yet.
async fn launch(
    srv: &Arc<Server>,
    job: Prepared,
    tx: &mpsc::Sender<Bytes>,
    accepted: Option<Bytes>,
) -> Result<(), ApiError> {
    let Prepared {
        job_id,
        session: caller,
        profile_name,
        argv,
        workspace,
        cwd,
        env,
        limits,
        sandbox_id,
        stdin,
        allow_degraded,
        guard,
        artifacts,
        detach,
        ..
    } = job;
    // Pipes: output and result come back to us; cancel and stdin go to the job.
    let pipe = || std::io::pipe().map_err(job_io);
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
    let wire_limits = WireLimits::from(limits);
    let mut limits_record = serde_json::to_value(wire_limits).unwrap_or_default();
    if let Some(o) = limits_record.as_object_mut() {
        o.insert("allow_degraded".into(), allow_degraded.into());
    }
    let started = srv
        .record(Event::JobStart {
            job: job_id.clone(),
            limits: limits_record,
            degraded: Vec::new(),
            namespaces: ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"]
                .map(String::from)
                .to_vec(),
            cgroup_version: srv.cgroup_version,
        })
        .await;
    if let Err(e) = started {
        let exit = refused_exit(&job_id, e.code, None, &e.message);
        let keep = srv.config.limits.finished_jobs_kept;
        srv.state().finish(&job_id, JobState::Refused, exit, keep);
        return Err(e);
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
        limits: wire_limits,
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
        srv.record_detached(Event::JobExit {
            job: job_id.clone(),
            code: Some(126),
            reason: "setup_failed".into(),
            usage: serde_json::Value::Null,
        });
        if let Some(a) = accepted {
            let _ = tx.try_send(a);
        }
        let _ = tx.try_send(ndjson(exit));
        return Ok(());
    }
    Metrics::inc(&srv.metrics.jobs_started);
    tracing::info!(job = %job_id, session = %caller, argv = ?argv, "job started");
    if let Some(a) = accepted {
        let _ = tx.try_send(a);
    }

    if let (Some(data), Some(w)) = (stdin, stdin_w) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let owned: std::os::fd::OwnedFd = w.into();
            if let Ok(mut s) = tokio::net::unix::pipe::Sender::from_owned_fd(owned) {
                let _ = s.write_all(&data).await;
            }
        });
    }
    if detach {
        srv.retained.start(&job_id, &caller);
    }
    let relay = Relay {
        srv: srv.clone(),
        detach: detach.then(|| caller.clone()),
        job: job_id,
        tx: tx.clone(),
        cancel: cancel_w,
        guard,
        artifacts: artifacts.map(|cfg| JobArtifacts {
            session: caller.clone(),
            workspace: workspace.clone(),
            cfg,
        }),
    };
    srv.jobs
        .spawn(relay.run(out_r.into(), err_r.into(), res_r.into()));
    Ok(())
}

/// An I/O failure while setting up a job: running out of descriptors is a capacity limit
/// (retry later, or raise the limit), not an internal error.
fn job_io(e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            "the daemon has no file descriptors left for another job; retry when one ends, or raise its RLIMIT_NOFILE (LimitNOFILE=) or lower limits.max_jobs",
        ),
        _ => internal(e),
    }
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
    /// `Some(session)`: the job outlives its client (`on_disconnect = "detach"`) and every
    /// event is retained (`server::retain`).
    detach: Option<String>,
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
        let mut supervised = false;
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
                                    supervised = true;
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
                    self.client_left();
                }
            }
        }
        for stream in ["stdout", "stderr"] {
            let tail = self.guard.flush(stream);
            if !tail.is_empty() {
                let n = tail.len() as u64;
                self.emit_line(&mut client_gone, output_event(stream, &tail), n)
                    .await;
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
            // The supervisor died after it took the job (the spawner or it was killed): the
            // sandbox died with it (parent-death signal), so the job was killed, not failed.
            _ if supervised => {
                Metrics::inc(&self.srv.metrics.jobs_lost);
                serde_json::json!({"event": "exit", "job": self.job, "code": 137, "signal": null,
                    "reason": "lost", "message": "the job's supervisor died without a report; the job was killed with it"})
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
        // On the record before the client hears of the end (the job already ran: a failed
        // write is logged, there is nothing left to refuse).
        let mut usage = exit.get("usage").cloned().unwrap_or_default();
        if let Some(o) = usage.as_object_mut() {
            for k in [
                "degraded",
                "stdout_bytes",
                "stderr_bytes",
                "stdout_truncated",
                "stderr_truncated",
            ] {
                if let Some(v) = exit.get(k) {
                    o.insert(k.into(), v.clone());
                }
            }
        }
        let _ = self
            .srv
            .record(Event::JobExit {
                job: self.job.clone(),
                code: exit.get("code").and_then(|c| c.as_i64()).map(|c| c as i32),
                reason: exit
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("unknown")
                    .into(),
                usage,
            })
            .await;
        // GET /v1/jobs/{id} keeps the exit event without the (large) envelope.
        let mut kept = exit.clone();
        if let Some(o) = kept.as_object_mut() {
            o.remove("envelope");
        }
        if self.detach.is_some() {
            // Always kept (small without the envelope): the retained stream ends with it.
            self.srv
                .retained
                .push(&self.job, ndjson(kept.clone()), 0, true);
            self.srv.retained.ended(&self.job);
            let srv = self.srv.clone();
            tokio::spawn(async move {
                tokio::time::sleep(srv.retained.retention()).await;
                srv.retained.expire_due();
            });
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
        let n = data.len() as u64;
        self.emit_line(gone, output_event(stream, &data), n).await;
    }

    async fn emit(&self, gone: &mut bool, v: serde_json::Value) {
        self.emit_line(gone, ndjson(v), 0).await;
    }

    /// Sends one event to the client (while it is there) and, for a detached-mode job, keeps
    /// it; `output_bytes` is the stdout/stderr payload it carries (counted if it is dropped).
    async fn emit_line(&self, gone: &mut bool, line: Bytes, output_bytes: u64) {
        if self.detach.is_some() {
            self.srv
                .retained
                .push(&self.job, line.clone(), output_bytes, false);
        }
        if *gone {
            return;
        }
        if self.tx.send(line).await.is_err() {
            *gone = true;
            self.client_left();
        }
    }

    /// The client went away mid-stream: kill the job, or (detach) let it run on, on the record.
    fn client_left(&self) {
        let Some(session) = &self.detach else {
            tracing::info!(job = %self.job, "client disconnected; killing the job");
            cancel_job(&self.cancel, true);
            return;
        };
        tracing::info!(job = %self.job, session = %session, "client disconnected; the job goes on (on_disconnect = detach)");
        self.srv.retained.detached(&self.job);
        self.srv.record_detached(Event::JobDetached {
            job: self.job.clone(),
            session: session.clone(),
        });
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

    #[test]
    fn output_events_are_the_json_a_serializer_would_write() {
        for len in [0usize, 1, 2, 3, 4, 5, 64 << 10] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            for stream in ["stdout", "stderr"] {
                let line = output_event(stream, &data);
                assert!(line.ends_with(b"\n"));
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"event": stream, "data_b64": B64.encode(&data)})
                );
            }
        }
    }

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
        for src in [
            include_str!("api.rs"),
            include_str!("mod.rs"),
            include_str!("record.rs"),
            include_str!("pairing/routes.rs"),
        ] {
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
