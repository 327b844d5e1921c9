//! Session routes: `POST /v1/sessions` (root, child or paired; a high-risk profile binds only
//! after an operator approves it) and `DELETE /v1/sessions/{id}` (the session and every
//! descendant end, their jobs are killed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, header};

use super::Server;
use super::api::{ApiError, Body, Peer, internal, ok_json, read_json};
use super::approvals::{Canonical, Kind, NewPending, Outcome};
use super::auth;
use super::lifecycle::EndedBy;
use crate::audit::{Approval, Event};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionBody {
    profile: Option<String>,
    /// An operator's one-time code (`execbox pair`): the session gets the profile and
    /// workspace the operator chose. Never logged.
    pairing_code: Option<String>,
    /// A child session's workspace: its own (default), or its parent's, shared read-only or
    /// read-write (`docs/sessions.md`).
    workspace: Option<WorkspaceChoice>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum WorkspaceChoice {
    Own,
    ParentRo,
    ParentRw,
}

pub(super) async fn create_session(
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
        if parent.is_some() || body.profile.is_some() || body.workspace.is_some() {
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
    let share = match body.workspace {
        None | Some(WorkspaceChoice::Own) => None,
        Some(WorkspaceChoice::ParentRo) => Some(true),
        Some(WorkspaceChoice::ParentRw) => Some(false),
    };
    let created = srv.create_session(peer, parent.as_deref(), body.profile, approved, share)?;
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
        let ws = srv
            .state()
            .remove_session(&id)
            .filter(|s| !s.keep_workspace)
            .map(|s| s.workspace);
        if let Some(ws) = ws {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(ws)).await;
        }
        return Err(e);
    }
    Ok(ok_json(StatusCode::CREATED, created))
}

/// Withdraws a profile-bind approval whose request went away (the handler future dropped).
pub(super) struct WithdrawOnDrop<'a> {
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
pub(super) async fn approve_profile_bind(
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
        v: super::approvals::CANONICAL_VERSION,
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
        terms: None,
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

pub(super) async fn delete_session(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let caller = srv.authenticate(peer, req.headers())?;
    {
        let st = srv.state();
        if !st.sessions.contains_key(id) || !st.within(id, &caller) {
            return Err(ApiError::not_found());
        }
    }
    // The session and every descendant end; their running jobs are killed.
    let ended = srv
        .end_session(id, EndedBy::Agent(peer.uid))
        .ok_or_else(ApiError::not_found)?;
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({
            "session": id,
            "ended_sessions": ended.sessions.len(),
            "jobs_cancelled": ended.jobs_cancelled,
        }),
    ))
}
