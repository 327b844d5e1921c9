//! The real router driven in-process: raw HTTP/1.1 bytes in, raw response bytes out, through
//! the same hyper connection and [`api::handle`] a socket connection gets, over an in-memory
//! duplex pipe instead of a Unix socket. For unit tests and the HTTP fuzz target (`fuzz/`).
//!
//! Must never: open a socket or run a job. [`disconnected_server`] pairs the router with
//! [`Spawner::disconnected`], so a request that passes policy ends as `setup_failed` at step
//! `spawner` and nothing is forked. The peer is whatever the caller says (no SO_PEERCRED here:
//! the allowlist check of `listen` is not exercised).

use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Server;
use super::api::{self, Peer, Socket};
use super::spawner::{Spawner, SpawnerError};
use crate::audit::{AuditError, AuditHandle};
use crate::config::{Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum InprocError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Spawner(#[from] SpawnerError),
    #[error("cannot create {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A [`Server`] from config text, with its workspace root created, its audit log opened and a
/// spawner that runs nothing. The config's paths must point somewhere private to the caller.
pub fn disconnected_server(config_toml: &str, file: &str) -> Result<Server, InprocError> {
    let config = Config::parse(config_toml, file)?;
    make_private_dir(&config.workspace_root)?;
    if let Some(dir) = config.audit.path.parent() {
        make_private_dir(dir)?;
    }
    let audit = AuditHandle::open(&config.audit.path, config.audit.rotation)?;
    Ok(Server::new(config, Spawner::disconnected()?, audit, None))
}

fn make_private_dir(path: &Path) -> Result<(), InprocError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| InprocError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

/// What came back on one connection.
pub struct Exchange {
    /// The status of every response, in order (pipelined requests get one each).
    pub statuses: Vec<http::StatusCode>,
    /// Every byte the server wrote until it closed the connection.
    pub bytes: Vec<u8>,
}

/// Writes `request` (one or more pipelined HTTP/1.1 requests, or any bytes at all) to a fresh
/// connection as `peer` on `socket`, closes the client's write side, and collects the replies.
pub async fn exchange(srv: Arc<Server>, socket: Socket, peer: Peer, request: &[u8]) -> Exchange {
    let (client, server) = tokio::io::duplex(64 << 10);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let svc = {
        let (srv, statuses) = (srv.clone(), statuses.clone());
        hyper::service::service_fn(move |req| {
            let (srv, statuses) = (srv.clone(), statuses.clone());
            async move {
                let resp = api::handle(srv, socket, peer, req).await;
                if let Ok(r) = &resp {
                    statuses
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(r.status());
                }
                resp
            }
        })
    };
    // As in `listen::connection`, plus half-close: a socket client keeps its write side open
    // until it has read the reply; here the end of the request is signalled by closing it.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(srv.config.limits.header_timeout)
        .half_close(true)
        .serve_connection(TokioIo::new(server), svc);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let _ = wr.write_all(request).await;
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (_, _, bytes) = tokio::join!(conn, write, read);
    let statuses = std::mem::take(&mut *statuses.lock().unwrap_or_else(|p| p.into_inner()));
    Exchange { statuses, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Peer = Peer {
        uid: 4242,
        gid: 4242,
        pid: None,
    };

    fn server(dir: &Path) -> Arc<Server> {
        let toml = format!(
            "[allow]\nuids = [4242]\n[paths]\nstate_dir = \"{d}\"\nworkspace_root = \"{d}/ws\"\n\
             [audit]\npath = \"{d}/audit/audit.jsonl\"\n",
            d = dir.display()
        );
        Arc::new(disconnected_server(&toml, "inproc-test.toml").unwrap())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn post(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn body_json(reply: &Exchange) -> serde_json::Value {
        let text = String::from_utf8_lossy(&reply.bytes);
        let body = text.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body.trim()).unwrap()
    }

    #[test]
    fn an_allowed_exec_reaches_the_spawner_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        rt().block_on(async {
            let reply = exchange(
                srv.clone(),
                Socket::Agent,
                AGENT,
                &post("/v1/sessions", None, "{}"),
            )
            .await;
            assert_eq!(reply.statuses, [http::StatusCode::CREATED]);
            let token = body_json(&reply)["token"].as_str().unwrap().to_string();
            let reply = exchange(
                srv.clone(),
                Socket::Agent,
                AGENT,
                &post("/v1/exec", Some(&token), r#"{"command": "echo hi"}"#),
            )
            .await;
            let text = String::from_utf8_lossy(&reply.bytes);
            assert_eq!(reply.statuses, [http::StatusCode::OK], "{text}");
            // Policy allowed it; the disconnected spawner refused it: nothing ran.
            assert!(text.contains(r#""step":"spawner""#), "{text}");
            assert!(!text.contains(r#""event":"started""#), "{text}");
        });
    }

    /// Found by schemathesis (ST202/ST201): JSON numbers written with a fraction or exponent
    /// are integers when whole (JSON Schema's `integer`), and optional fields may be null.
    /// A fractional count is still refused.
    #[test]
    fn whole_floats_and_nulls_are_accepted_in_exec_fractions_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        rt().block_on(async {
            let reply = exchange(srv.clone(), Socket::Agent, AGENT, &post("/v1/sessions", None, r#"{"profile": null}"#)).await;
            assert_eq!(reply.statuses, [http::StatusCode::CREATED]);
            let token = body_json(&reply)["token"].as_str().unwrap().to_string();
            let exec = |body: &'static str| {
                let (srv, token) = (srv.clone(), token.clone());
                async move { exchange(srv, Socket::Agent, AGENT, &post("/v1/exec", Some(&token), body)).await }
            };
            let ok = exec(r#"{"command": "true", "timeout": null, "cwd": null, "argv": null, "limits": {"memory": 37534056.0, "output": 1e6, "pids": 132.0}}"#).await;
            assert_eq!(ok.statuses, [http::StatusCode::OK], "{}", String::from_utf8_lossy(&ok.bytes));
            // A struct must not be read from an array (serde's tuple form).
            let arr = exchange(srv.clone(), Socket::Agent, AGENT, &post("/v1/sessions", None, "[null]")).await;
            assert_eq!(arr.statuses, [http::StatusCode::BAD_REQUEST]);
            for bad in [
                r#"["true"]"#,
                r#"{"command": "true", "limits": {"pids": 1.5}}"#,
                r#"{"command": "true", "limits": {"memory": -1.0}}"#,
                r#"{"command": "true", "limits": {"output": 0.5}}"#,
            ] {
                let r = exec(bad).await;
                assert_eq!(r.statuses, [http::StatusCode::BAD_REQUEST], "{bad}");
            }
        });
    }

    /// Found by schemathesis (ST204): an undeclared method on an operator path answered 404,
    /// and 405s had no `Allow` header.
    #[test]
    fn a_wrong_method_is_405_with_allow_and_an_unknown_path_404() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        rt().block_on(async {
            for (socket, req, status, allow) in [
                (Socket::Operator, "TRACE /v1/sessions", 405, Some("GET")),
                (Socket::Operator, "PUT /v1/approvals/a_1", 405, Some("POST")),
                (Socket::Agent, "TRACE /v1/sessions", 405, Some("POST")),
                (Socket::Agent, "GET /v1/sessions/s_1", 405, Some("DELETE")),
                (Socket::Agent, "GET /v1/nothing", 404, None),
                (Socket::Agent, "GET /metrics", 404, None),
            ] {
                let raw = format!("{req} HTTP/1.1\r\nhost: x\r\n\r\n");
                let reply = exchange(srv.clone(), socket, AGENT, raw.as_bytes()).await;
                assert_eq!(reply.statuses, [status], "{req}");
                let text = String::from_utf8_lossy(&reply.bytes).to_ascii_lowercase();
                match allow {
                    Some(a) => assert!(
                        text.contains(&format!("allow: {}", a.to_ascii_lowercase())),
                        "{req}: {text}"
                    ),
                    None => assert!(!text.contains("allow:"), "{req}: {text}"),
                }
            }
        });
    }

    #[test]
    fn operator_routes_are_not_on_the_agent_socket() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        rt().block_on(async {
            let get = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n";
            let agent = exchange(srv.clone(), Socket::Agent, AGENT, get).await;
            assert_eq!(agent.statuses, [http::StatusCode::NOT_FOUND]);
            let op = exchange(srv.clone(), Socket::Operator, AGENT, get).await;
            assert_eq!(op.statuses, [http::StatusCode::OK]);
            // Pipelined requests get a reply each, in order.
            let two = [&get[..], &get[..]].concat();
            let both = exchange(srv.clone(), Socket::Operator, AGENT, &two).await;
            assert_eq!(both.statuses, [http::StatusCode::OK, http::StatusCode::OK]);
        });
    }
}
