//! The pairing routes: issue, list and revoke on the operator socket; redeem through
//! `POST /v1/sessions {"pairing_code"}` on the agent socket.
//!
//! Every issue, redemption, failure, revocation and alert is on the audit record, naming the
//! code by its id. A code reaches exactly one place: the operator's reply to the issue request.
//! Must never: log or record a code, or act before the record that authorises the act is
//! durable (issue, redeem, revoke go through [`Server::record`]; failures and alerts describe
//! what already happened and are recorded detached).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use serde::Deserialize;

use super::super::Server;
use super::super::api::{ApiError, Body, Peer, ok_json};
use super::super::auth;
use super::super::state::{Metrics, unix_now};
use super::{Outstanding, Redeem, code};
use crate::audit::Event;

/// `POST /v1/pairing`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    profile: Option<String>,
    workspace: Option<PathBuf>,
    /// A duration such as `10m` (default) or `2h`, at most `pairing.max_ttl`.
    ttl: Option<String>,
    label: Option<String>,
}

const DEFAULT_TTL: Duration = Duration::from_secs(600);
const MAX_LABEL: usize = 200;

/// The same reply for a wrong, expired, used or revoked code.
fn failed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "pairing_failed",
        "invalid, expired, used or revoked pairing code; fix: ask the operator for a new one (`execbox pair`); failed attempts are limited and audited",
    )
}

/// An operator's workspace: absolute, an existing directory (symlinks resolved), and not a
/// place whose sharing would break another boundary (`/`, the daemon's state, other
/// sessions' workspaces).
fn check_workspace(srv: &Server, ws: &Path) -> Result<PathBuf, String> {
    if !ws.is_absolute() {
        return Err(format!("{} is not an absolute path", ws.display()));
    }
    let real = std::fs::canonicalize(ws).map_err(|e| format!("{}: {e}", ws.display()))?;
    if !real.is_dir() {
        return Err(format!("{} is not a directory", ws.display()));
    }
    if real == Path::new("/") {
        return Err("/ cannot be a workspace".into());
    }
    let c = &srv.config;
    for (what, dir) in [
        ("the daemon's state_dir", &c.state_dir),
        (
            "workspace_root (sessions' own workspaces)",
            &c.workspace_root,
        ),
    ] {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if real.starts_with(&dir) || dir.starts_with(&real) {
            return Err(format!(
                "{} overlaps {what} {}",
                real.display(),
                dir.display()
            ));
        }
    }
    Ok(real)
}

/// `POST /v1/pairing`: a new code, shown once in the reply.
pub async fn issue(
    srv: &Arc<Server>,
    peer: Peer,
    body: IssueBody,
) -> Result<Response<Body>, ApiError> {
    let cfg = &srv.config;
    let profile = body.profile.unwrap_or_else(|| cfg.default_profile.clone());
    if !cfg.profiles.contains_key(&profile) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_profile",
            format!(
                "no profile {profile:?}; available: {}",
                cfg.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let ttl = match &body.ttl {
        None => DEFAULT_TTL,
        Some(t) => {
            crate::units::parse_duration(t).map_err(|m| ApiError::bad(format!("ttl: {m}")))?
        }
    };
    if ttl < Duration::from_secs(1) || ttl > cfg.pairing.max_ttl {
        return Err(ApiError::bad(format!(
            "ttl must be between 1s and pairing.max_ttl ({} s)",
            cfg.pairing.max_ttl.as_secs()
        )));
    }
    if let Some(l) = &body.label
        && (l.chars().count() > MAX_LABEL || l.chars().any(crate::audit::tail::dangerous))
    {
        return Err(ApiError::bad(format!(
            "label must be at most {MAX_LABEL} characters, without control characters"
        )));
    }
    let workspace = match &body.workspace {
        None => None,
        Some(w) => Some(check_workspace(srv, w).map_err(|m| {
            ApiError::bad(format!(
                "workspace: {m}; fix: name an existing directory by its absolute path"
            ))
        })?),
    };
    let internal = |e: auth::RngError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let id = auth::new_id("pc_").map_err(internal)?;
    let secret = code::generate().map_err(internal)?;
    let now = srv.pairing.now();
    let created_at = unix_now();
    let code = Outstanding {
        id: id.clone(),
        hash: code::hash(&code::normalize(&secret).unwrap_or_default()),
        profile: profile.clone(),
        workspace: workspace.clone(),
        label: body.label.clone(),
        issued_by: peer.uid,
        created_at,
        expires: now + ttl,
        expires_at: created_at + ttl.as_secs(),
    };
    let view = code.view();
    if !srv.pairing.lock().issue(code, now, cfg.pairing.max_codes) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_pairing_codes",
            "pairing.max_codes codes are outstanding; fix: revoke unused ones (`execbox pair list`, `execbox pair revoke ID`)",
        ));
    }
    let recorded = srv
        .record(Event::PairingIssued {
            code_id: id.clone(),
            profile: profile.clone(),
            workspace: workspace.as_ref().map(|w| w.display().to_string()),
            label: body.label,
            expires_at: created_at + ttl.as_secs(),
            operator_uid: peer.uid,
        })
        .await;
    if let Err(e) = recorded {
        // Nobody has seen the code: it never existed.
        srv.pairing.lock().take(&id);
        return Err(e);
    }
    Metrics::inc(&srv.metrics.pairing_issued);
    tracing::info!(code_id = %id, profile = %profile, uid = peer.uid, ttl_s = ttl.as_secs(), "pairing code issued");
    let mut reply = view;
    reply["code"] = secret.into();
    reply["agent_socket"] = cfg.agent_socket.display().to_string().into();
    Ok(ok_json(StatusCode::CREATED, reply))
}

/// `GET /v1/pairing`: the outstanding codes (ids, never codes).
pub fn list(srv: &Arc<Server>) -> Result<Response<Body>, ApiError> {
    let now = srv.pairing.now();
    let codes: Vec<_> = srv
        .pairing
        .lock()
        .list(now)
        .iter()
        .map(Outstanding::view)
        .collect();
    Ok(ok_json(StatusCode::OK, serde_json::json!({"codes": codes})))
}

/// `DELETE /v1/pairing/{id}`: the code stops working once the revocation is on the record.
pub async fn revoke(srv: &Arc<Server>, peer: Peer, id: &str) -> Result<Response<Body>, ApiError> {
    // Out of the registry first, so no redemption can race the record.
    let code = srv.pairing.lock().take(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such outstanding pairing code (redeemed, expired or revoked)",
        )
    })?;
    let recorded = srv
        .record(Event::PairingRevoked {
            code_id: code.id.clone(),
            operator_uid: Some(peer.uid),
            reason: "revoked by an operator".into(),
        })
        .await;
    if let Err(e) = recorded {
        srv.pairing.lock().put_back(code);
        return Err(e);
    }
    tracing::info!(code_id = %id, uid = peer.uid, "pairing code revoked");
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({"code_id": id, "revoked": true}),
    ))
}

/// `POST /v1/sessions {"pairing_code"}`: a root session bound to the code's profile and
/// workspace, or a refusal that is counted and recorded.
pub async fn redeem(
    srv: &Arc<Server>,
    peer: Peer,
    presented: String,
) -> Result<Response<Body>, ApiError> {
    let now = srv.pairing.now();
    let outcome = srv
        .pairing
        .lock()
        .redeem(peer.uid, &presented, now, &srv.config.pairing);
    drop(presented);
    let code = match outcome {
        Redeem::Redeemed(c) => c,
        Redeem::Refused { wait, locked } => {
            Metrics::inc(&srv.metrics.rate_limited);
            let why = if locked {
                format!(
                    "too many failed pairing attempts from uid {} (pairing.max_failures per pairing.failure_window)",
                    peer.uid
                )
            } else {
                format!("uid {} must wait after a failed pairing attempt", peer.uid)
            };
            // Coalesced per uid per second: a peer hammering while refused cannot flood the log.
            srv.record_auth_failure(peer, &format!("pairing code refused unread: {why}"));
            return Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "pairing_locked_out",
                    format!(
                        "{why}; the code was not checked; retry in {} s",
                        wait.as_secs().max(1)
                    ),
                )
            });
        }
        Redeem::Failed(f) => {
            Metrics::inc(&srv.metrics.pairing_failures);
            tracing::warn!(
                uid = peer.uid,
                failures = f.failures,
                "pairing code redemption failed"
            );
            srv.record_detached(Event::PairingFailed {
                code_id: f.expired_id.clone(),
                peer_uid: peer.uid,
                failures: f.failures,
                reason: if f.expired_id.is_some() {
                    "expired code".into()
                } else {
                    "no such outstanding code".into()
                },
            });
            if let Some(gone) = f.alert {
                alert(srv, peer, &gone);
            }
            return Err(failed());
        }
    };
    // The operator's directory may have gone since the code was issued: refuse, and keep the
    // code (the agent did nothing wrong; the operator can recreate the directory or revoke).
    if let Some(ws) = &code.workspace
        && !ws.is_dir()
    {
        let ws = ws.display().to_string();
        srv.record_detached(Event::PairingFailed {
            code_id: Some(code.id.clone()),
            peer_uid: peer.uid,
            failures: 0,
            reason: format!("workspace {ws} is missing"),
        });
        srv.pairing.lock().put_back(code);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pairing_workspace_missing",
            format!(
                "the workspace {ws} chosen for this code no longer exists; the code stays valid: ask the operator to recreate the directory"
            ),
        ));
    }
    let paired = crate::server::lifecycle::Paired {
        code_id: &code.id,
        label: code.label.as_deref(),
        workspace: code.workspace.as_deref(),
    };
    let created =
        match srv.create_session_in(peer, None, Some(code.profile.clone()), true, Some(paired)) {
            Ok(c) => c,
            Err(e) => {
                srv.pairing.lock().put_back(code);
                return Err(e);
            }
        };
    let session = created["session"].as_str().unwrap_or_default().to_string();
    let mut recorded = srv
        .record(Event::PairingRedeemed {
            code_id: code.id.clone(),
            session: session.clone(),
            profile: code.profile.clone(),
            peer_uid: peer.uid,
        })
        .await;
    if recorded.is_ok() {
        recorded = srv
            .record(Event::SessionCreate {
                session: session.clone(),
                parent: None,
                profile: code.profile.clone(),
                peer_uid: peer.uid,
            })
            .await;
    }
    if let Err(e) = recorded {
        // Nobody has the token: the session never existed, and the code is still good.
        let gone = srv.state().remove_session(&session);
        if let Some(s) = gone
            && !s.keep_workspace
        {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(s.workspace)).await;
        }
        srv.pairing.lock().put_back(code);
        return Err(e);
    }
    Metrics::inc(&srv.metrics.pairing_redeemed);
    tracing::info!(code_id = %code.id, session = %session, uid = peer.uid, profile = %code.profile, "pairing code redeemed");
    let mut reply = created;
    reply["code_id"] = code.id.into();
    Ok(ok_json(StatusCode::CREATED, reply))
}

/// Guessing reached `pairing.alert_after`: every outstanding code is already invalidated;
/// record the alert and one revocation per code.
fn alert(srv: &Arc<Server>, peer: Peer, gone: &[Outstanding]) {
    Metrics::inc(&srv.metrics.pairing_alerts);
    let ids: Vec<&str> = gone.iter().map(|c| c.id.as_str()).collect();
    let mut profiles: Vec<&str> = gone.iter().map(|c| c.profile.as_str()).collect();
    profiles.sort_unstable();
    profiles.dedup();
    let l = &srv.config.pairing;
    let detail = format!(
        "{} failed pairing redemptions within {} s (pairing.alert_after; the last from uid {}): invalidated every outstanding code: {:?} (profiles {:?})",
        l.alert_after,
        l.failure_window.as_secs(),
        peer.uid,
        ids,
        profiles
    );
    tracing::error!(codes = %ids.join(" "), uid = peer.uid, "pairing code guessing: every outstanding code invalidated");
    srv.record_detached(Event::Alert {
        kind: "pairing_guessing".into(),
        detail,
    });
    for c in gone {
        srv.record_detached(Event::PairingRevoked {
            code_id: c.id.clone(),
            operator_uid: None,
            reason: "invalidated: too many failed pairing redemptions".into(),
        });
    }
}
