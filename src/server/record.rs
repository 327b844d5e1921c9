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
        self.record_all_sized(events).await.map(|(seq, _)| seq)
    }

    /// Like [`Server::record_all`], for records an agent's request caused: admitted only
    /// while its session's and its uid's audit volume allow (`429 audit_rate_limited`
    /// otherwise, nothing written), and charged with the bytes written (`server::volume`).
    pub async fn record_all_for(
        &self,
        session: &str,
        uid: u32,
        events: Vec<Event>,
    ) -> Result<u64, ApiError> {
        self.audit_volume_admit(session, uid)?;
        let (seq, bytes) = self.record_all_sized(events).await?;
        self.audit_volume_charge(session, uid, bytes);
        Ok(seq)
    }

    async fn record_all_sized(&self, events: Vec<Event>) -> Result<(u64, u64), ApiError> {
        let audit = self.audit.clone();
        let kind = events.first().map(event_kind).unwrap_or("none");
        let r = tokio::task::spawn_blocking(move || audit.append_all_sized(&events)).await;
        let e = match r {
            Ok(Ok(written)) => return Ok(written),
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
    ///
    /// Records land in the order of these calls: they queue, and one blocking writer at a
    /// time drains the queue (a batch per write and sync). An append task per record let two
    /// close records — a peer's fourth and fifth pairing failures — land in either order.
    pub fn record_detached(&self, event: Event) {
        {
            let mut q = self.detached.lock().unwrap_or_else(|p| p.into_inner());
            q.pending.push_back(event);
            if q.writing {
                return;
            }
            q.writing = true;
        }
        let (audit, queue) = (self.audit.clone(), self.detached.clone());
        tokio::task::spawn_blocking(move || {
            // Should an append panic, the next call starts a new writer instead of queueing
            // behind one that is gone.
            let _reset = ResetOnPanic(&queue);
            loop {
                let batch: Vec<Event> = {
                    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    if q.pending.is_empty() {
                        q.writing = false;
                        return;
                    }
                    q.pending.drain(..).collect()
                };
                if let Err(e) = audit.append_all(&batch) {
                    let kinds: Vec<&str> = batch.iter().map(event_kind).collect();
                    tracing::error!(records = %kinds.join(" "), error = %crate::cli::chain(&e), "audit records not written");
                }
            }
        });
    }
}

impl Server {
    /// Waits (at most `within`) until every detached record made so far is written: the last
    /// record of a stopping daemon is `daemon_stop`, after the bad token a client sent just
    /// before (found as a flaky `the_audit_log_of_a_run…` test under load).
    pub async fn flush_detached(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let q = self.detached.lock().unwrap_or_else(|p| p.into_inner());
                if q.pending.is_empty() && !q.writing {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("detached audit records still queued at daemon_stop");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Records of things that already happened, waiting for the background writer.
#[derive(Default)]
pub struct Detached {
    pending: std::collections::VecDeque<Event>,
    /// A writer task is draining `pending`.
    writing: bool,
}

struct ResetOnPanic<'a>(&'a std::sync::Mutex<Detached>);

impl Drop for ResetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
        }
    }
}

fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::DaemonStart { .. } => "daemon_start",
        Event::DaemonStop {} => "daemon_stop",
        Event::Auth { .. } => "auth",
        Event::SessionCreate { .. } => "session_create",
        Event::SessionEnd { .. } => "session_end",
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
        Event::FileWrite { .. } => "file_write",
        Event::FileRead { .. } => "file_read",
        Event::FileDelete { .. } => "file_delete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon without sockets whose audit log is in a fresh directory, and a runtime for it.
    fn setup() -> (
        tempfile::TempDir,
        crate::server::Server,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[allow]\nuids = [4242]\n[paths]\nstate_dir = \"{d}\"\nworkspace_root = \"{d}/ws\"\n\
             [audit]\npath = \"{d}/audit/audit.jsonl\"\n",
            d = dir.path().display()
        );
        let srv = crate::server::inproc::disconnected_server(&toml, "record-test.toml").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        (dir, srv, rt)
    }

    #[test]
    fn detached_records_land_in_the_order_they_were_made() {
        let (dir, srv, rt) = setup();
        const N: u32 = 300;
        rt.block_on(async {
            for i in 1..=N {
                srv.record_detached(Event::PairingFailed {
                    code_id: None,
                    peer_uid: 4242,
                    failures: i,
                    reason: "test".into(),
                });
            }
        });
        let path = dir.path().join("audit/audit.jsonl");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let counts = loop {
            let counts: Vec<u64> = crate::audit::tail::records_since(&path, 0)
                .unwrap()
                .iter()
                .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
                .filter(|r| r["type"] == "pairing_failed")
                .map(|r| r["failures"].as_u64().unwrap())
                .collect();
            if counts.len() == N as usize || std::time::Instant::now() > deadline {
                break counts;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let expected: Vec<u64> = (1..=u64::from(N)).collect();
        assert_eq!(counts, expected);
    }

    /// `flush_detached` returns only once the queue is written, so the daemon's `daemon_stop`
    /// comes after every record made before it: all 300 are on disk the moment it returns
    /// (read at once, without the polling the test above needs), and a synchronous record
    /// appended next is the last line.
    #[test]
    fn flush_detached_waits_until_the_queue_is_written() {
        let (dir, srv, rt) = setup();
        let path = dir.path().join("audit/audit.jsonl");
        let failed = || {
            crate::audit::tail::records_since(&path, 0)
                .unwrap()
                .iter()
                .filter(|r| r.contains("pairing_failed"))
                .count()
        };
        rt.block_on(async {
            for i in 1..=300 {
                srv.record_detached(Event::PairingFailed {
                    code_id: None,
                    peer_uid: 4242,
                    failures: i,
                    reason: "test".into(),
                });
            }
            srv.flush_detached(std::time::Duration::from_secs(60)).await;
            assert_eq!(failed(), 300);
            srv.record(Event::DaemonStop {}).await.unwrap();
        });
        let records = crate::audit::tail::records_since(&path, 0).unwrap();
        let last: serde_json::Value = serde_json::from_str(records.last().unwrap()).unwrap();
        assert_eq!(last["type"], "daemon_stop");
        // A writer that never finishes: the flush gives up at its bound instead of hanging.
        srv.detached.lock().unwrap().writing = true;
        let t = std::time::Instant::now();
        rt.block_on(srv.flush_detached(std::time::Duration::from_millis(100)));
        assert!(t.elapsed() >= std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_writer_that_panics_lets_the_next_record_start_a_new_one() {
        let queue = std::sync::Mutex::new(Detached {
            writing: true,
            ..Default::default()
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _reset = ResetOnPanic(&queue);
            panic!("an append panicked");
        }));
        assert!(r.is_err());
        assert!(!queue.lock().unwrap().writing);
        // A writer that ends normally clears the flag itself, under the lock, not here.
        let queue = std::sync::Mutex::new(Detached {
            writing: true,
            ..Default::default()
        });
        drop(ResetOnPanic(&queue));
        assert!(queue.lock().unwrap().writing);
    }
}
