//! The daemon's side of artifacts: registering a finished job's files (called by the exec
//! relay) and `GET /v1/artifacts/{file_id}`. The file work itself is [`crate::artifacts`].
//!
//! Must never: answer differently for an id that does not exist, has expired, or belongs to a
//! session outside the caller's scope (all 404 `not_found`), or put a host path in a reply.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::Server;
use super::api::{ApiError, Body, ChannelBody, Peer};
use super::state::State;
use crate::artifacts::{self, FetchError};
use crate::profile::ArtifactsProfile;

/// What the relay needs to register a job's artifacts when it ends.
pub struct JobArtifacts {
    pub session: String,
    pub workspace: PathBuf,
    pub cfg: ArtifactsProfile,
}

/// Collects and registers the job's artifacts and adds `artifacts` (and, when some entries were
/// refused, `artifacts_skipped` and `artifacts_skipped_total`) to its `exit` event.
pub async fn attach(srv: &Arc<Server>, job: &str, a: JobArtifacts, exit: &mut serde_json::Value) {
    let (ws, cfg) = (a.workspace.clone(), a.cfg.clone());
    let mut collected = tokio::task::spawn_blocking(move || artifacts::collect(&ws, &cfg))
        .await
        .unwrap_or_default();
    let listed = {
        let mut st = srv.state();
        let now = Instant::now();
        purge(&mut st, now);
        st.artifacts.register(
            &a.session,
            job,
            &a.workspace,
            &a.cfg,
            &mut collected,
            now,
            srv.config.sessions.max_artifacts,
        )
    };
    tracing::info!(
        job,
        registered = listed.len(),
        skipped = collected.skipped_total,
        "artifacts"
    );
    let Some(o) = exit.as_object_mut() else {
        return;
    };
    o.insert("artifacts".into(), serde_json::json!(listed));
    if collected.skipped_total > 0 {
        o.insert(
            "artifacts_skipped".into(),
            serde_json::json!(collected.skipped),
        );
        o.insert(
            "artifacts_skipped_total".into(),
            collected.skipped_total.into(),
        );
    }
}

/// Forgets expired ids and ids of ended sessions (under the state lock, so a lookup right
/// after cannot see one).
fn purge(st: &mut State, now: Instant) {
    let State {
        sessions,
        artifacts,
        ..
    } = st;
    artifacts.purge(now, |s| sessions.contains_key(s));
}

/// `GET /v1/artifacts/{file_id}`: the bytes, if the caller's session or a descendant owns it.
pub async fn get(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let caller = srv.authenticate(peer, req.headers())?;
    let not_found = ApiError::not_found;
    let entry = {
        let mut st = srv.state();
        let now = Instant::now();
        purge(&mut st, now);
        let e = st.artifacts.get(id, now).cloned().ok_or_else(not_found)?;
        if !st.within(&e.session, &caller) {
            return Err(not_found());
        }
        e
    };
    let opened = {
        let e = entry.clone();
        tokio::task::spawn_blocking(move || artifacts::open_registered(&e))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("internal error: {e}"),
                )
            })?
    };
    let file = match opened {
        Ok(f) => f,
        Err(FetchError::Gone) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "artifact_gone",
                "the artifact's file no longer exists",
            ));
        }
        Err(e @ FetchError::Changed(_)) => {
            tracing::warn!(file_id = id, session = %entry.session, error = %e, "artifact refused");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "artifact_changed",
                format!("{e}; it is not served"),
            ));
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let size = entry.size;
    {
        let (sha, id, session) = (entry.sha256.clone(), id.to_string(), entry.session.clone());
        tokio::task::spawn_blocking(move || {
            let sent = artifacts::serve_verified(file, size, &sha, |b| {
                tx.blocking_send(Bytes::from(b)).is_ok()
            });
            if let Err(e @ artifacts::ServeError::Mismatch) = sent {
                // The client gets fewer bytes than Content-Length: a failed download.
                tracing::warn!(file_id = %id, session = %session, error = %e, "artifact changed while served; cut short");
            }
        });
    }
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&entry.sha256) {
        h.insert("x-execbox-sha256", v);
    }
    Ok(r)
}
