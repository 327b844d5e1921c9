//! The daemon's side of the audit log: appending a record off the runtime (the append blocks
//! for an fsync) and turning a failure into the `audit_unavailable` refusal.
//!
//! Rule: a caller acts on a decision only after [`Server::record`] returned `Ok` — the record
//! is then durable. When it fails the caller refuses (the daemon keeps serving; the next
//! append retries, so jobs run again once the cause is fixed). [`Server::record_detached`] is
//! for records of things that already happened (refused peers, bad tokens, a job's exit): a
//! failure there is logged, since there is nothing left to refuse.

use http::StatusCode;

use super::Server;
use super::api::ApiError;
use crate::audit::Event;

impl Server {
    /// Appends `event` and waits until it is durable.
    pub async fn record(&self, event: Event) -> Result<u64, ApiError> {
        self.record_all(vec![event]).await
    }

    /// Appends `events` as consecutive records with one sync, and waits until all are
    /// durable; all or nothing. Returns the first's sequence number.
    pub async fn record_all(&self, events: Vec<Event>) -> Result<u64, ApiError> {
        let audit = self.audit.clone();
        let kind = events.first().map(event_kind).unwrap_or("none");
        let r = tokio::task::spawn_blocking(move || audit.append_all(&events)).await;
        let e = match r {
            Ok(Ok(seq)) => return Ok(seq),
            Ok(Err(e)) => format!("{} ({})", crate::cli::chain(&e), e.code()),
            Err(join) => format!("the append task failed: {join}"),
        };
        crate::server::state::Metrics::inc(&self.metrics.audit_failures);
        tracing::error!(record = kind, error = %e, "audit record not written: refusing");
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            format!(
                "the audit log cannot be written, so nothing new is started (other requests are still served): {e}"
            ),
        ))
    }

    /// Appends `event` in the background; a failure is only logged. Call from the runtime.
    pub fn record_detached(&self, event: Event) {
        let audit = self.audit.clone();
        let kind = event_kind(&event);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = audit.append(&event) {
                tracing::error!(record = kind, error = %crate::cli::chain(&e), "audit record not written");
            }
        });
    }
}

fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::DaemonStart { .. } => "daemon_start",
        Event::DaemonStop {} => "daemon_stop",
        Event::Auth { .. } => "auth",
        Event::SessionCreate { .. } => "session_create",
        Event::ExecRequest { .. } => "exec_request",
        Event::Verdict { .. } => "verdict",
        Event::ApprovalRequested(_) => "approval_requested",
        Event::ApprovalGranted(_) => "approval_granted",
        Event::ApprovalDenied(_) => "approval_denied",
        Event::ApprovalExpired(_) => "approval_expired",
        Event::ApprovalWithdrawn(_) => "approval_withdrawn",
        Event::JobStart { .. } => "job_start",
        Event::JobDetached { .. } => "job_detached",
        Event::JobExit { .. } => "job_exit",
        Event::ConfigReload { .. } => "config_reload",
        Event::Alert { .. } => "alert",
        Event::PairingIssued { .. } => "pairing_issued",
        Event::PairingRedeemed { .. } => "pairing_redeemed",
        Event::PairingFailed { .. } => "pairing_failed",
        Event::PairingRevoked { .. } => "pairing_revoked",
    }
}
