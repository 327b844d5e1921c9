//! An exec request whose verdict is "approve": queued for an operator, and the [`Waiter`]
//! that runs it (or ends its stream with a refusal) once someone or something decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::sync::mpsc;

use super::launch::launch;
use super::{Prepared, refused_exit};
use crate::audit::{Approval, Event};
use crate::server::Server;
use crate::server::api::{ApiError, Body, Peer, internal, ndjson, stream_response};
use crate::server::approvals::{Kind, NewPending, Outcome};
use crate::server::auth;
use crate::server::state::{Job, JobState, Metrics};

/// Queues an approve verdict for an operator and answers with a stream that shows
/// `pending_approval` and then whatever the decision leads to.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pend(
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
    let expires_at = crate::server::state::unix_now() + expiry.as_secs();
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
        "env": super::shown::env(&job.env, &job.requested_env),
        "stdin": super::shown::stdin(explained.stdin.as_ref()),
        "terms": job.terms(),
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
    srv.state().add_job(Job::new(
        &job.job_id,
        &job.session,
        &job.argv,
        JobState::PendingApproval,
        None,
    ));
    tracing::info!(job = %job.job_id, session = %job.session, approval = %approval_id, rule = decision.rule.as_deref(), "waiting for an operator's approval");
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
pub(super) struct Waiter {
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
                let mut job = self.job;
                job.waited = true;
                if let Err(e) = launch(&self.srv, job, &self.tx, None).await {
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
