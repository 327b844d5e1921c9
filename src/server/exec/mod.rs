//! `POST /v1/exec`: validate the request, judge it, put request and verdict on the record,
//! then refuse, queue it for an operator (`approval`) or start it (`launch`); the job's
//! output becomes NDJSON events (`relay`).

mod approval;
mod launch;
mod relay;
mod request;
mod shown;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::Server;
use super::api::{ApiError, Body, Peer, internal, ndjson, read_required, stream_response};
use super::approvals::{CANONICAL_VERSION, Canonical, Kind, Scope, Terms};
use super::auth;
use super::guard::OutputGuard;
use super::state::{Job, JobState, Metrics};
use crate::audit::{Approval, Event};
use crate::policy::{Command, Context, Request as PolicyRequest, Verdict};
use crate::units::parse_duration;
use approval::pend;
use launch::launch;
pub(crate) use request::ExecBody;
pub use request::SANDBOX_PATH;
use request::{DurationValue, OnDisconnect, environment, resolve_cwd, whole};

pub(super) async fn exec(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let received = std::time::Instant::now();
    let caller = srv.authenticate(peer, req.headers())?;
    if srv.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the daemon is stopping; retry against the next instance",
        ));
    }
    let body: ExecBody = read_required(srv, req).await?;
    let (profile_name, workspace, sandbox_id, workspace_read_only) = {
        let st = srv.state();
        let s = st.sessions.get(&caller).ok_or_else(|| {
            ApiError::unauthorized("the session has ended; fix: create a new one")
        })?;
        (
            s.profile.clone(),
            s.workspace.clone(),
            s.sandbox_id,
            s.workspace_read_only,
        )
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
    // Resolved strictly beneath the workspace, no symlinks: what the operator sees is where
    // the job starts.
    let cwd = match &body.cwd {
        None => None,
        Some(c) => Some(resolve_cwd(&workspace, c)?),
    };
    let rel_cwd = cwd
        .as_ref()
        .and_then(|c| c.strip_prefix(&workspace).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let env = environment(&body.env)?;
    // The variables the request set are judged; the defaults the daemon adds are not.
    let requested_env: Vec<(String, String)> = body
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
    let explained = profile.policy.explain_request(
        &PolicyRequest {
            command,
            stdin: stdin.as_deref(),
            env: &requested_env,
            cwd: &rel_cwd,
        },
        &ctx,
    );
    let detach = match body.on_disconnect {
        Some(o) => o == OnDisconnect::Detach,
        None => srv.config.detach.default_detach,
    };
    let requested_names: Vec<String> = requested_env.iter().map(|(k, _)| k.clone()).collect();
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
    // The request and its verdict are on the record before anything acts on them; the
    // bytes count towards the session's and the uid's audit volume.
    srv.record_all_for(
        &caller,
        peer.uid,
        vec![
            Event::ExecRequest {
                session: caller.clone(),
                job: job_id.clone(),
                command: shell.clone(),
                argv: shell.is_none().then(|| argv.clone()),
                parse_summary,
                cwd: Some(
                    cwd.as_ref()
                        .unwrap_or(&workspace)
                        .to_string_lossy()
                        .into_owned(),
                ),
                env: Some(shown::env(&env, &requested_names)),
                stdin: Some(shown::stdin(explained.stdin.as_ref())),
                terms: serde_json::to_value(Terms::new(&limits, detach, body.envelope)).ok(),
            },
            Event::Verdict {
                job: job_id.clone(),
                verdict: decision.verdict.as_str().into(),
                rule: decision.rule.clone(),
                reason: decision.reason.clone(),
            },
        ],
    )
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
        received,
        waited: false,
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
        workspace_read_only,
        stdin,
        detach,
        envelope: body.envelope,
        requested_env: requested_names,
        // What the job may run without: named by the profile, and the second layers it does
        // not require (`docs/security.md`, "Degradations on older kernels").
        allow_degraded: profile
            .sandbox
            .degradable()
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
                st.add_job(Job::new(
                    &job.job_id,
                    &job.session,
                    &job.argv,
                    JobState::Refused,
                    None,
                ));
                let keep = srv.config.limits.finished_jobs_kept;
                st.finish(&job.job_id, JobState::Refused, exit.clone(), keep);
            }
            tracing::info!(job = %job.job_id, session = %job.session, rule = decision.rule.as_deref(), "job refused by policy");
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
    /// The session has its parent's workspace read-only.
    workspace_read_only: bool,
    stdin: Option<Vec<u8>>,
    /// `on_disconnect = "detach"`: the job outlives its client and its output is retained.
    detach: bool,
    /// The request asked for the output envelope in the exit event.
    envelope: bool,
    /// Names of the variables the request set (the rest are the daemon's defaults).
    requested_env: Vec<String>,
    allow_degraded: Vec<String>,
    /// The output guard for this job's streams (issue 6).
    guard: OutputGuard,
    /// Where the job's artifacts are collected from, if the profile declares them.
    artifacts: Option<crate::profile::ArtifactsProfile>,
    /// When the request arrived, and whether it waited for an operator (`/metrics` queue time).
    received: std::time::Instant,
    waited: bool,
}

impl Prepared {
    /// The terms the job runs under, as approved.
    fn terms(&self) -> Terms {
        Terms::new(&self.limits, self.detach, self.envelope)
    }

    /// The canonical request an approval is bound to (see `approvals::Canonical`).
    fn canonical(&self) -> Canonical<'_> {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.sort();
        Canonical {
            v: CANONICAL_VERSION,
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
            terms: Some(self.terms()),
        }
    }
}

fn refused_exit(job: &str, code: &str, rule: Option<&str>, message: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "exit", "job": job, "code": 125, "signal": null,
        "reason": "refused", "error": code, "rule": rule, "message": message,
    })
}
