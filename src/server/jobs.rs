//! The job routes: `GET /v1/jobs`, `GET|DELETE /v1/jobs/{id}`, the retained output of a
//! detached job (`GET /v1/jobs/{id}/output`), and the cancel pipe every job has.

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use bytes::Bytes;

use super::Server;
use super::api::{ApiError, Body, ndjson, ok_json, query_param};

/// `GET /v1/jobs/{id}/output[?cursor=N]`: the output retained for a job that ran with
/// `on_disconnect = "detach"`, from event `cursor` on, then an `output_end` trailer (where to
/// resume, whether the job ended, what the limits dropped). Same scope rule as every job route.
pub(super) fn retained_output(
    srv: &Server,
    caller: &str,
    job: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let cursor = match query_param(query, "cursor") {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            ApiError::bad("cursor must be a number (the `next_cursor` of an earlier reply)")
        })?,
    };
    if srv.state().job_for(caller, job).is_none() {
        return Err(ApiError::not_found());
    }
    let page = srv.retained.read(job, cursor).map_err(|e| match e {
        super::retain::ReadError::Expired => ApiError::new(
            StatusCode::GONE,
            "output_expired",
            "the job's retained output was dropped after detach.retention",
        ),
        super::retain::ReadError::NotRetained => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no output is retained for this job: only jobs started with \"on_disconnect\": \"detach\" keep it",
        ),
    })?;
    let mut body = Vec::new();
    for l in &page.lines {
        body.extend_from_slice(l);
    }
    body.extend_from_slice(&ndjson(page.trailer));
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(r)
}

/// Writes cancel requests into a job's cancel pipe (non-blocking: the pipe has room for far
/// more than two bytes, and a full pipe already means "cancel").
pub fn cancel_job(fd: &std::os::fd::OwnedFd, kill: bool) {
    use std::os::fd::AsRawFd;
    let bytes: &[u8] = if kill { b"KK" } else { b"T" };
    let _ = crate::sandbox::sys::write_all(fd.as_raw_fd(), bytes);
}

/// `GET /v1/jobs`: the jobs of the caller's session and its descendants.
pub fn list(srv: &Server, caller: &str) -> Response<Body> {
    let jobs = srv.state().jobs_for(caller);
    ok_json(StatusCode::OK, serde_json::json!({"jobs": jobs}))
}

/// `GET /v1/jobs/{id}`: one job's state, with what is retained of its output.
pub fn get(srv: &Server, caller: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let mut view = {
        let st = srv.state();
        st.job_for(caller, id)
            .ok_or_else(ApiError::not_found)?
            .view()
    };
    if let Some(o) = view.as_object_mut() {
        o.insert("retained_output".into(), srv.retained.describe(id));
    }
    Ok(ok_json(StatusCode::OK, view))
}

/// `DELETE /v1/jobs/{id}`: kill a running job.
pub fn cancel(srv: &Server, caller: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let cancel = {
        let st = srv.state();
        let job = st.job_for(caller, id).ok_or_else(ApiError::not_found)?;
        job.cancel.clone()
    };
    let Some(cancel) = cancel else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            "the job has already ended",
        ));
    };
    // Two bytes: the supervisor kills the job's whole cgroup at once.
    cancel_job(&cancel, true);
    Ok(ok_json(
        StatusCode::ACCEPTED,
        serde_json::json!({"job": id, "state": "cancelling"}),
    ))
}
