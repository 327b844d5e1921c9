//! Operator routes: the live sessions (`GET /v1/sessions`, `DELETE /v1/sessions/{id}`), `/metrics`, the pending approvals (`GET /v1/approvals`, a long poll), an operator's
//! decision (`POST /v1/approvals/{id}`) and the audit tail (`GET /v1/audit`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::Server;
use super::api::{ApiError, Body, Peer, internal, ok_json, query_param};
use super::approvals::{Grant, Kind, Outcome, Scope, TakeError};
use super::lifecycle::EndedBy;
use crate::audit::{Approval, Event};
use crate::units::parse_duration;

/// `GET /v1/sessions` (operator socket): every live session, oldest first.
pub fn list_sessions(srv: &Server) -> Response<Body> {
    ok_json(StatusCode::OK, srv.sessions_view())
}

/// `DELETE /v1/sessions/{id}` on the operator socket: ends the session and its descendants
/// (name a root to end its whole lineage), recorded as `session_end` by `operator`.
pub fn end_session(srv: &Server, peer: Peer, id: &str) -> Result<Response<Body>, ApiError> {
    let ended = srv
        .end_session(id, EndedBy::Operator(peer.uid))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such live session"))?;
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({
            "session": id,
            "ended_sessions": ended.sessions.len(),
            "ended": ended.sessions,
            "jobs_cancelled": ended.jobs_cancelled,
        }),
    ))
}

/// `GET /metrics`: the Prometheus text exposition.
pub fn metrics(srv: &Server) -> Response<Body> {
    let (active, sessions) = {
        let st = srv.state();
        (st.running, st.sessions.len())
    };
    let mut text = srv.metrics.render(active, sessions);
    let (agent, operator) = srv.conns.open();
    text.push_str(
        "# HELP execbox_connections_open Connections open now, by socket.\n\
         # TYPE execbox_connections_open gauge\n",
    );
    text.push_str(&format!(
        "execbox_connections_open{{socket=\"agent\"}} {agent}\n\
         execbox_connections_open{{socket=\"operator\"}} {operator}\n"
    ));
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// `GET /v1/approvals[?after=SEQ][&wait=30s]`: the waiting requests; with `wait`, a long
/// poll that answers as soon as one with `seq > after` exists (or empty when time is up).
pub(super) async fn list_approvals(
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
pub(super) struct DecisionBody {
    decision: String,
    #[serde(default)]
    scope: Option<Scope>,
    hash: Option<String>,
    reason: Option<String>,
}

/// `POST /v1/approvals/{id}`: an operator's decision, bound to the hash it was shown. The
/// decision is on the record before the waiting request learns of it.
pub(super) async fn decide(
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
pub(super) async fn audit_since(
    srv: &Arc<Server>,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
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
