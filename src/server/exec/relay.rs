//! One running job's pipes turned into NDJSON events (`started`, `stdout`, `stderr`, `exit`),
//! its end on the record, and what the client's disconnect does to it (kill or detach).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::audit::Event;
use crate::server::Server;
use crate::server::api::ndjson;
use crate::server::artifacts::JobArtifacts;
use crate::server::guard::OutputGuard;
use crate::server::jobs::cancel_job;
use crate::server::spawner::SupervisorEvent;
use crate::server::state::{JobState, Metrics};

/// One `stdout`/`stderr` event line (`stream` is one of the two names), written directly:
/// base64 never needs JSON escaping, and running megabytes of it through the serializer's
/// escape scan was the daemon's largest cost at high output rates (`perf`:
/// `format_escaped_str`, then the scalar base64 encoder).
pub(super) fn output_event(stream: &str, data: &[u8]) -> Bytes {
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

/// Turns one job's pipes into NDJSON events, records the end, and kills the job if the client
/// goes away.
pub(super) struct Relay {
    pub(super) srv: Arc<Server>,
    /// `Some(session)`: the job outlives its client (`on_disconnect = "detach"`) and every
    /// event is retained (`server::retain`).
    pub(super) detach: Option<String>,
    pub(super) job: String,
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) cancel: Arc<std::os::fd::OwnedFd>,
    pub(super) guard: OutputGuard,
    pub(super) artifacts: Option<JobArtifacts>,
    /// When the exec request arrived, and whether it waited for an approval (`/metrics`).
    pub(super) received: Instant,
    pub(super) waited: bool,
}

impl Relay {
    pub(super) async fn run(
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
        let mut running_since: Option<Instant> = None;
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
                                    let now = Instant::now();
                                    self.srv.metrics.queue_wait[usize::from(self.waited)]
                                        .observe(now.duration_since(self.received));
                                    running_since = Some(now);
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
        if let Some(t) = running_since {
            self.srv.metrics.job_duration.observe(t.elapsed());
        }
        let keep = self.srv.config.limits.finished_jobs_kept;
        let ran = matches!(result, Some(SupervisorEvent::Finished(_)));
        let mut exit = match result {
            Some(SupervisorEvent::Finished(w)) => {
                Metrics::inc(&self.srv.metrics.jobs_finished);
                self.srv.metrics.count_degraded(&w.degraded);
                if let Some(net) = &w.network {
                    self.network_events(&mut client_gone, net).await;
                }
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
            crate::server::artifacts::attach(&self.srv, &self.job, a, &mut exit).await;
        }
        let guard = std::mem::replace(&mut self.guard, OutputGuard::new(Default::default(), None));
        guard.finish(&mut exit);
        tracing::info!(job = %self.job, code = exit.get("code").and_then(serde_json::Value::as_i64), reason = exit.get("reason").and_then(serde_json::Value::as_str), elapsed_ms = started.elapsed().as_millis() as u64, "job ended");
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
                protection: exit.get("protection").cloned(),
                network: exit.get("network").cloned(),
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

    /// An allowlist job's network record: counted in the metrics, and every refusal told to
    /// the agent as a `net_denied` event (before `exit`) with the rule and a hint.
    async fn network_events(&self, gone: &mut bool, net: &crate::net::NetReport) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.srv.metrics;
        m.net_allowed.fetch_add(net.connections_allowed, Relaxed);
        m.net_denied.fetch_add(net.connections_denied, Relaxed);
        m.net_dns_refused.fetch_add(net.dns_refused, Relaxed);
        for ev in net
            .events
            .iter()
            .filter(|e| e.verdict == crate::net::Verdict::Denied)
        {
            let hint = if ev.kind == "dns" {
                "the name is not in [network] allow of the profile; ask the operator to add it"
                    .to_string()
            } else {
                format!(
                    "allowed names are reached by name on the ports their entry names; {}",
                    "ask the operator to extend [network] allow if this host is needed"
                )
            };
            let v = serde_json::json!({"event": "net_denied", "job": self.job,
                "kind": ev.kind, "host": ev.name, "port": ev.port, "rule": ev.rule,
                "detail": ev.reason, "hint": hint});
            self.emit(gone, v).await;
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
pub(super) async fn read_opt(
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
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

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
}
