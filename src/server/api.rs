//! The HTTP API: routes, request parsing, error replies and the JSON/NDJSON response helpers.
//! Spec: `docs/openapi.yaml` (a test keeps [`ROUTES`] and the spec's paths in step). The
//! handlers live beside it: `sessions` (create/end, profile-bind approvals), `exec` (the
//! `POST /v1/exec` pipeline), `jobs` (listings, cancel, retained output), `operator`
//! (approvals, decisions, audit), `artifacts` and `pairing::routes`.
//!
//! Must never: reveal whether an id outside the caller's scope exists (always 404), echo a
//! token, or let a request's failure affect other callers (every error is a 4xx/5xx reply).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Server;
use super::state::Metrics;
use super::{exec, jobs, operator, sessions};

pub type Body = BoxBody<Bytes, Infallible>;

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Agent,
    Operator,
}

/// Every route: (socket, method, path as in `docs/openapi.yaml`).
pub const ROUTES: &[(Socket, &str, &str)] = &[
    (Socket::Agent, "POST", "/v1/sessions"),
    (Socket::Agent, "DELETE", "/v1/sessions/{id}"),
    (Socket::Agent, "POST", "/v1/exec"),
    (Socket::Agent, "GET", "/v1/jobs"),
    (Socket::Agent, "GET", "/v1/jobs/{id}"),
    (Socket::Agent, "DELETE", "/v1/jobs/{id}"),
    (Socket::Agent, "GET", "/v1/jobs/{id}/output"),
    (Socket::Agent, "GET", "/v1/artifacts/{file_id}"),
    (Socket::Agent, "GET", "/v1/files"),
    (Socket::Agent, "PUT", "/v1/files/{path}"),
    (Socket::Agent, "GET", "/v1/files/{path}"),
    (Socket::Agent, "DELETE", "/v1/files/{path}"),
    (Socket::Operator, "GET", "/v1/sessions"),
    // The same URL as the agent's; named differently in the spec (one DELETE per path).
    (Socket::Operator, "DELETE", "/v1/sessions/{session}"),
    (Socket::Operator, "GET", "/v1/approvals"),
    (Socket::Operator, "POST", "/v1/approvals/{id}"),
    (Socket::Operator, "GET", "/v1/audit"),
    (Socket::Operator, "GET", "/metrics"),
    (Socket::Operator, "POST", "/v1/pairing"),
    (Socket::Operator, "GET", "/v1/pairing"),
    (Socket::Operator, "DELETE", "/v1/pairing/{id}"),
];

/// The identity of the connection's peer (SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// An error reply: HTTP status plus a stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The `Allow` header of a 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(super) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
    pub(super) fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn rate_limited(code: &'static str, message: &str, wait: Duration) -> ApiError {
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, self.body());
        if let Some(w) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&w.as_secs().max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(a) = &self.allow
            && let Ok(v) = HeaderValue::from_str(a)
        {
            r.headers_mut().insert(header::ALLOW, v);
        }
        r
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) fn ok_json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    json_response(status, v.to_string())
}

/// The raw reply written to a refused peer before anything is read from it.
pub fn forbidden_peer_reply(uid: u32) -> Vec<u8> {
    let body = ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_peer",
        format!(
            "uid {uid} is not allowed on this socket; fix: add it to [allow] in the daemon's config"
        ),
    )
    .body();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Entry point for every request.
pub async fn handle(
    srv: Arc<Server>,
    socket: Socket,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let r = route(&srv, socket, peer, req).await;
    let resp = r.unwrap_or_else(|e| {
        // One line per uid and error code per second: refusals are what a flood produces.
        if let Some(folded) = srv.log_refusal(peer.uid, e.code) {
            tracing::info!(%method, %path, uid = peer.uid, code = e.code, status = e.status.as_u16(),
                folded, "request refused ({folded} more with this code from this uid since the last line)");
        }
        e.into_response()
    });
    Ok(resp)
}

async fn route(
    srv: &Arc<Server>,
    socket: Socket,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    // Per-peer rate limit, before anything else costs us work.
    if !srv.peer_rate_ok(peer.uid) {
        Metrics::inc(&srv.metrics.rate_limited);
        return Err(ApiError::rate_limited(
            "rate_limited",
            "too many requests from this uid; slow down",
            Duration::from_secs(1),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if socket == Socket::Agent
        && let Some(rest) = path.strip_prefix(super::files::PREFIX)
    {
        let rest = rest.to_string();
        return match method {
            Method::PUT => super::files::put(srv, peer, req, &rest).await,
            Method::GET => super::files::get(srv, peer, req, &rest).await,
            Method::DELETE => super::files::delete(srv, peer, req, &rest).await,
            _ => Err(ApiError {
                allow: Some("GET, PUT, DELETE".into()),
                ..method_not_allowed()
            }),
        };
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (socket, segs.as_slice()) {
        (Socket::Agent, ["v1", "files"]) => match method {
            Method::GET => super::files::list(srv, peer, req).await,
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "sessions"]) => match method {
            Method::POST => sessions::create_session(srv, peer, req).await,
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "sessions", id]) => match method {
            Method::DELETE => {
                let id = id.to_string();
                sessions::delete_session(srv, peer, req, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "exec"]) => match method {
            Method::POST => exec::exec(srv, peer, req).await,
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "jobs"]) => match method {
            Method::GET => {
                let caller = srv.authenticate(peer, req.headers())?;
                Ok(jobs::list(srv, &caller))
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "jobs", id]) => {
            let caller = srv.authenticate(peer, req.headers())?;
            match method {
                Method::GET => jobs::get(srv, &caller, id),
                Method::DELETE => jobs::cancel(srv, &caller, id),
                _ => Err(wrong_method(socket, &segs)),
            }
        }
        (Socket::Agent, ["v1", "jobs", id, "output"]) => match method {
            Method::GET => {
                let caller = srv.authenticate(peer, req.headers())?;
                jobs::retained_output(srv, &caller, id, req.uri().query())
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Agent, ["v1", "artifacts", id]) => match method {
            Method::GET => {
                let id = id.to_string();
                super::artifacts::get(srv, peer, req, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "sessions"]) if method == Method::GET => {
            Ok(operator::list_sessions(srv))
        }
        (Socket::Operator, ["v1", "sessions", id]) => match method {
            Method::DELETE => operator::end_session(srv, peer, id),
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "approvals"]) if method == Method::GET => {
            operator::list_approvals(srv, req.uri().query()).await
        }
        (Socket::Operator, ["v1", "approvals", id]) => match method {
            Method::POST => {
                let id = id.to_string();
                let body = read_required(srv, req).await?;
                operator::decide(srv, peer, &id, body).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "pairing"]) => match method {
            Method::POST => {
                let body = read_required(srv, req).await?;
                super::pairing::routes::issue(srv, peer, body).await
            }
            Method::GET => super::pairing::routes::list(srv),
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "pairing", id]) => match method {
            Method::DELETE => {
                let id = id.to_string();
                super::pairing::routes::revoke(srv, peer, &id).await
            }
            _ => Err(wrong_method(socket, &segs)),
        },
        (Socket::Operator, ["v1", "audit"]) if method == Method::GET => {
            operator::audit_since(srv, req.uri().query()).await
        }
        (Socket::Operator, ["metrics"]) if method == Method::GET => Ok(operator::metrics(srv)),
        _ => Err(wrong_method(socket, &segs)),
    }
}

/// `405` with `Allow` naming the methods [`ROUTES`] has for this path on this socket (RFC
/// 9110), or `404` when the path is no route here.
fn wrong_method(socket: Socket, segs: &[&str]) -> ApiError {
    let allow: Vec<&str> = ROUTES
        .iter()
        .filter(|(s, _, pattern)| {
            let p: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
            *s == socket
                && p.len() == segs.len()
                && p.iter()
                    .zip(segs)
                    .all(|(a, b)| a.starts_with('{') || a == b)
        })
        .map(|(_, m, _)| *m)
        .collect();
    if allow.is_empty() {
        return ApiError::not_found();
    }
    ApiError {
        allow: Some(allow.join(", ")),
        ..method_not_allowed()
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path; see docs/openapi.yaml",
    )
}

/// Reads a JSON body: content type, size limit, and strict parsing.
pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
    srv: &Server,
    req: Request<hyper::body::Incoming>,
    empty_ok: bool,
) -> Result<Option<T>, ApiError> {
    let max = srv.config.limits.max_body;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > max
    {
        return Err(too_large(max));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    // The whole body within limits.body_timeout: a client trickling one byte every few
    // seconds must not hold a connection (and a descriptor) for as long as it likes.
    let timeout = srv.config.limits.body_timeout;
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms (limits.body_timeout); fix: send the whole body at once",
                    timeout.as_millis()
                ),
            )
        })?;
    let body = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large(max)
            } else {
                ApiError::bad(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if body.is_empty() && empty_ok {
        return Ok(None);
    }
    if ctype.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON; fix: send Content-Type: application/json",
        ));
    }
    parse_body(&body).map(Some)
}

/// Parses a request body (a JSON object) strictly: what `docs/openapi.yaml` does not admit is
/// refused, including `null` for a field that the spec does not let be null (see [`no_null`];
/// a unit test walks the spec's request schemas through this function).
pub(super) fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    // Every request body is an object; serde would also read a struct from an array
    // (`[null]` as `{"profile": null}`), which the spec does not allow (found by schemathesis).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad(
            "invalid JSON: the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let m = e.to_string();
        if m.contains("unknown field") {
            ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", m)
        } else {
            ApiError::bad(format!("invalid JSON: {m}"))
        }
    })
}

/// `#[serde(default, deserialize_with = "no_null")]` on an optional field that the spec does
/// not let be `null`: absent is `None`, `null` is refused. (serde reads `null` into an
/// `Option` as absent; schemathesis found `"on_disconnect": null` accepted against the spec.)
pub(super) fn no_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom(
            "null is not allowed for this field; fix: leave the field out to get its default",
        )),
    }
}

/// A JSON body that must be present.
pub(super) async fn read_required<T: for<'de> Deserialize<'de>>(
    srv: &Server,
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    read_json(srv, req, false)
        .await?
        .ok_or_else(|| ApiError::bad("empty body"))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over {max} bytes (limits.max_body)"),
    )
}

/// Query parameter `key` of `query`.
pub(super) fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

pub(super) fn ndjson(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A response body fed by a channel; dropped when the client goes away.
pub(super) struct ChannelBody(pub(super) mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub(super) fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("internal error: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path, socket) of every operation in `docs/openapi.yaml`, by a line scan of its
    /// `paths:` section (2-space path keys, 4-space method keys, 6-space `x-socket`).
    fn spec_routes() -> Vec<(String, String, String)> {
        let spec = include_str!("../../docs/openapi.yaml");
        let mut out = vec![];
        let (mut in_paths, mut path, mut method) = (false, String::new(), String::new());
        for line in spec.lines() {
            if !line.starts_with(' ') {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = format!("/{}", p.trim_end_matches(':'));
            } else if let Some(m) = line.strip_prefix("    ").filter(|m| !m.starts_with(' ')) {
                method = m.trim_end_matches(':').to_ascii_uppercase();
            } else if let Some(s) = line.strip_prefix("      x-socket: ") {
                out.push((method.clone(), path.clone(), s.trim().to_string()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn routes_match_the_openapi_spec() {
        let mut code: Vec<(String, String, String)> = ROUTES
            .iter()
            .map(|(s, m, p)| {
                let socket = match s {
                    Socket::Agent => "agent",
                    Socket::Operator => "operator",
                };
                (m.to_string(), p.to_string(), socket.to_string())
            })
            .collect();
        code.sort();
        assert_eq!(code, spec_routes(), "docs/openapi.yaml and ROUTES differ");
    }

    /// Every `ApiError::new(StatusCode::X, "code", …)` code in the server is listed in the
    /// spec's `ErrorCode` enum.
    #[test]
    fn every_error_code_in_the_code_is_in_the_spec() {
        let spec = include_str!("../../docs/openapi.yaml");
        let enum_start = spec.find("ErrorCode:").unwrap();
        let enum_text = &spec[enum_start..enum_start + spec[enum_start..].find("Error:").unwrap()];
        let mut seen = 0;
        for src in [
            include_str!("api.rs"),
            include_str!("sessions.rs"),
            include_str!("lifecycle.rs"),
            include_str!("operator.rs"),
            include_str!("jobs.rs"),
            include_str!("exec/mod.rs"),
            include_str!("exec/approval.rs"),
            include_str!("exec/launch.rs"),
            include_str!("exec/request.rs"),
            include_str!("exec/relay.rs"),
            include_str!("mod.rs"),
            include_str!("record.rs"),
            include_str!("pairing/routes.rs"),
        ] {
            let src = src.split("#[cfg(test)]").next().unwrap();
            for (i, _) in src.match_indices("StatusCode::") {
                let rest = &src[i..];
                let Some(comma) = rest.find(',') else {
                    continue;
                };
                let after = rest[comma + 1..].trim_start();
                if let Some(lit) = after.strip_prefix('"') {
                    let code = &lit[..lit.find('"').unwrap()];
                    if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        seen += 1;
                        assert!(
                            enum_text.contains(code),
                            "error code {code} is not in ErrorCode in docs/openapi.yaml"
                        );
                    }
                }
            }
        }
        assert!(seen >= 10, "the scan found only {seen} codes");
    }

    /// The request schemas of `docs/openapi.yaml` and the server's parsers agree on `null`:
    /// for every property of every request body (nested objects too), `null` is accepted
    /// exactly when the spec admits it. Walks the spec, so a new field or schema is checked
    /// without touching this test (a schema without a parser here fails it).
    #[test]
    fn null_is_accepted_exactly_where_the_spec_admits_it() {
        use serde_json::{Value, json};
        let spec: Value = serde_norway::from_str(include_str!("../../docs/openapi.yaml")).unwrap();
        let schemas = &spec["components"]["schemas"];
        // Schema name -> the parser of its route, and a body with the required fields.
        fn parses<T: for<'de> Deserialize<'de>>(v: &Value) -> bool {
            parse_body::<T>(v.to_string().as_bytes()).is_ok()
        }
        type Parser = fn(&Value) -> bool;
        let parser = |name: &str| -> (Parser, Value) {
            match name {
                "SessionRequest" => (parses::<sessions::SessionBody>, json!({})),
                "ExecRequest" => (parses::<exec::ExecBody>, json!({"argv": ["true"]})),
                "DecisionRequest" => (
                    parses::<operator::DecisionBody>,
                    json!({"decision": "deny"}),
                ),
                "PairingRequest" => (
                    parses::<super::super::pairing::routes::IssueBody>,
                    json!({}),
                ),
                other => panic!("request schema {other} has no parser in this test; add it"),
            }
        };
        fn admits_null(s: &Value) -> bool {
            let ty = &s["type"];
            ty == "null"
                || ty.as_array().is_some_and(|t| t.iter().any(|t| t == "null"))
                || ["oneOf", "anyOf"].iter().any(|k| {
                    s[k].as_array()
                        .is_some_and(|alts| alts.iter().any(admits_null))
                })
        }
        // Every property at `path` (nested objects recursively): (path, admits null).
        fn fields(s: &Value, path: Vec<String>, out: &mut Vec<(Vec<String>, bool)>) {
            let Some(props) = s["properties"].as_object() else {
                return;
            };
            for (k, p) in props {
                let mut at = path.clone();
                at.push(k.clone());
                out.push((at.clone(), admits_null(p)));
                if p["type"] == "object" {
                    fields(p, at, out);
                }
            }
        }
        let mut names = vec![];
        for item in spec["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let r = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
                if let Some(r) = r.as_str() {
                    names.push(r.trim_start_matches("#/components/schemas/").to_string());
                }
            }
        }
        assert!(names.len() >= 4, "found only {names:?}");
        let mut checked = 0;
        for name in names {
            let (parses, base) = parser(&name);
            assert!(parses(&base), "{name}: the base body {base} must parse");
            assert!(!parses(&Value::Null), "{name}: a null body");
            let mut list = vec![];
            fields(&schemas[&name], vec![], &mut list);
            for (path, nullable) in list {
                let mut body = base.clone();
                let mut at = &mut body;
                for k in &path[..path.len() - 1] {
                    at = at
                        .as_object_mut()
                        .unwrap()
                        .entry(k.clone())
                        .or_insert(json!({}));
                }
                at[path.last().unwrap()] = Value::Null;
                assert_eq!(
                    parses(&body),
                    nullable,
                    "{name}.{}: the spec {} null, the server {} it (body {body})",
                    path.join("."),
                    if nullable { "admits" } else { "does not admit" },
                    if nullable { "refuses" } else { "accepts" },
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "checked only {checked} fields");
    }

    /// `PairingRequest.label`'s pattern in `docs/openapi.yaml` refuses exactly the characters
    /// the server refuses in a label (`audit::tail::dangerous`), for every code point: the
    /// fuzzer's "schema-valid request rejected" found U+00AD once the server's rule grew.
    #[test]
    fn the_label_pattern_is_the_servers_label_rule() {
        let spec: serde_json::Value =
            serde_norway::from_str(include_str!("../../docs/openapi.yaml")).unwrap();
        let pattern =
            spec["components"]["schemas"]["PairingRequest"]["properties"]["label"]["pattern"]
                .as_str()
                .unwrap()
                .to_string();
        let class = pattern
            .strip_prefix("^[^")
            .and_then(|p| p.strip_suffix("]*$"))
            .expect("the label pattern is ^[^…]*$");
        // The class's items: \xHH, \uHHHH or a literal character; `a-b` is a range.
        let mut chars = class.chars().peekable();
        let item = |chars: &mut std::iter::Peekable<std::str::Chars>| -> u32 {
            let c = chars.next().unwrap();
            if c != '\\' {
                return c as u32;
            }
            let n = match chars.next().unwrap() {
                'x' => 2,
                'u' => 4,
                e => panic!("unexpected escape \\{e} in the label pattern"),
            };
            let hex: String = (0..n).map(|_| chars.next().unwrap()).collect();
            u32::from_str_radix(&hex, 16).unwrap()
        };
        let mut ranges = vec![];
        while chars.peek().is_some() {
            let a = item(&mut chars);
            let b = if chars.peek() == Some(&'-') {
                chars.next();
                item(&mut chars)
            } else {
                a
            };
            ranges.push(a..=b);
        }
        let mut differ = vec![];
        for cp in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let refused_by_spec = ranges.iter().any(|r| r.contains(&cp));
            if refused_by_spec != crate::audit::tail::dangerous(c) {
                differ.push(format!("U+{cp:04X}"));
            }
        }
        assert!(
            differ.is_empty(),
            "docs/openapi.yaml PairingRequest.label and audit::tail::dangerous disagree on {} code points: {:?}",
            differ.len(),
            &differ[..differ.len().min(20)]
        );
    }
}
