//! Starting an allowed job: admission (concurrency limits), the `job_start` record, the pipes,
//! the hand-over to the spawner, then the [`Relay`](super::relay::Relay).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::mpsc;

use super::relay::Relay;
use super::{Prepared, refused_exit};
use crate::audit::Event;
use crate::server::Server;
use crate::server::api::{ApiError, internal, ndjson};
use crate::server::artifacts::JobArtifacts;
use crate::server::spawner::{JobFds, JobRequest, WireLimits};
use crate::server::state::{Job, JobState, Metrics};

/// Admits and starts a job whose verdict (or approval) allows it: concurrency limits, the
/// `job_start` record (durable before the spawner sees the job), then the relay. `accepted`
/// is sent first when the stream has not shown it yet.
pub(super) async fn launch(
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
        workspace_read_only,
        stdin,
        allow_degraded,
        guard,
        artifacts,
        detach,
        received,
        waited,
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
        st.add_job(Job::new(
            &job_id,
            &caller,
            &argv,
            JobState::Running,
            Some(cancel_w.clone()),
        ));
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
        workspace_read_only,
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
            protection: None,
            network: None,
        });
        if let Some(a) = accepted {
            let _ = tx.try_send(a);
        }
        let _ = tx.try_send(ndjson(exit));
        return Ok(());
    }
    Metrics::inc(&srv.metrics.jobs_started);
    tracing::info!(job = %job_id, session = %caller, argv = %crate::cli::approvals::shell_words(&argv), "job started");
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
        received,
        waited,
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
pub(super) fn job_io(e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_jobs",
            "the daemon has no file descriptors left for another job; retry when one ends, or raise its RLIMIT_NOFILE (LimitNOFILE=) or lower limits.max_jobs",
        ),
        _ => internal(e),
    }
}
