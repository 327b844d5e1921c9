//! The daemon's side of `/v1/files`: files in and out of the caller's session workspace.
//! The file work is [`crate::files`] (strictly beneath the workspace); here are the routes,
//! the caps (`[files]`), streaming in both directions and the audit records.
//!
//! Must never: buffer a whole file (uploads and downloads go through a small channel to a
//! blocking task), give a name to an upload before its `file_write` record is durable, write
//! into a workspace shared read-only, or touch any workspace but the caller's session's.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::Server;
use super::api::{ApiError, Body, ChannelBody, Peer, ok_json};
use crate::audit::Event;
use crate::files::{Fences, FileError, RelPath, Workspace};

/// The route prefix; what follows it is the workspace-relative path.
pub const PREFIX: &str = "/v1/files/";

fn refused(e: FileError) -> ApiError {
    let status = match &e {
        FileError::BadPath(_) => StatusCode::BAD_REQUEST,
        FileError::NotFound => StatusCode::NOT_FOUND,
        FileError::Symlink
        | FileError::HardLink
        | FileError::NotRegular
        | FileError::Hidden(_)
        | FileError::Protected(_)
        | FileError::GitDir(_) => StatusCode::FORBIDDEN,
        FileError::IsDirectory
        | FileError::NotDirectory
        | FileError::NotEmpty
        | FileError::Changed => StatusCode::CONFLICT,
        FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FileError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("internal error: {e}"),
    )
}

/// The caller's session and its opened workspace.
struct Target {
    session: String,
    ws: Workspace,
    read_only: bool,
}

async fn target(
    srv: &Arc<Server>,
    peer: Peer,
    req: &Request<hyper::body::Incoming>,
) -> Result<Target, ApiError> {
    let session = srv.authenticate(peer, req.headers())?;
    let (path, fences, read_only) = {
        let st = srv.state();
        let s = st.sessions.get(&session).ok_or_else(ApiError::not_found)?;
        let sandbox = &srv
            .config
            .profiles
            .get(&s.profile)
            .ok_or_else(|| internal("the session's profile is gone"))?
            .sandbox;
        let fences = Fences {
            hidden: sandbox.hidden.clone(),
            protected: sandbox.protected.clone(),
        };
        (s.workspace.clone(), fences, s.workspace_read_only)
    };
    let chown = srv.am_root;
    let ws = tokio::task::spawn_blocking(move || Workspace::open(&path, fences, chown))
        .await
        .map_err(internal)?
        .map_err(refused)?;
    Ok(Target {
        session,
        ws,
        read_only,
    })
}

fn read_only_refusal() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "read_only",
        "this session was given its parent's workspace read-only; write through the parent session",
    )
}

fn rel(raw: &str) -> Result<RelPath, ApiError> {
    let p = RelPath::parse(raw).map_err(refused)?;
    if p.is_root() {
        return Err(refused(FileError::BadPath(
            "empty; name a file beneath the workspace (list it with GET /v1/files?dir=)".into(),
        )));
    }
    Ok(p)
}

fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `PUT /v1/files/{path}`: the body becomes the file (parents made as needed).
pub async fn put(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    raw: &str,
) -> Result<Response<Body>, ApiError> {
    let t = target(srv, peer, &req).await?;
    if t.read_only {
        return Err(read_only_refusal());
    }
    let path = rel(raw)?;
    let max = srv.config.files.max_file_bytes;
    let mode = match query_param(req.uri().query(), "mode") {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m & !0o777 == 0)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "mode {m:?} is not an octal permission such as 644 or 755 (no setuid, setgid or sticky bits)"
                ))
            })?,
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(refused(FileError::TooLarge { max }));
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let (ws, p) = (t.ws, path.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut up = ws.create(&p, mode, max)?;
        while let Some(chunk) = rx.blocking_recv() {
            up.write(&chunk)?;
        }
        up.sync()?;
        Ok::<_, FileError>(up)
    });
    let mut body = req.into_body();
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data()
                    && tx.send(data).await.is_err()
                {
                    // The writer stopped (its error is below).
                    break;
                }
            }
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let up = writer.await.map_err(internal)?.map_err(refused)?;
    if let Some(e) = broken {
        // The upload is dropped: its file is removed; nothing takes the name.
        drop(up);
        return Err(ApiError::bad(format!(
            "the request body ended early ({e}); nothing was written"
        )));
    }
    let (size, sha256) = (up.size(), up.sha256());
    let shown = path.display();
    srv.record(Event::FileWrite {
        session: t.session.clone(),
        path: shown.clone(),
        size,
        sha256: sha256.clone(),
    })
    .await?;
    tokio::task::spawn_blocking(move || up.commit())
        .await
        .map_err(internal)?
        .map_err(refused)?;
    tracing::info!(session = %t.session, path = %shown, size, "file written");
    Ok(ok_json(
        StatusCode::CREATED,
        serde_json::json!({"path": shown, "size": size, "sha256": sha256}),
    ))
}

/// `GET /v1/files/{path}`: the file's bytes, streamed.
pub async fn get(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    raw: &str,
) -> Result<Response<Body>, ApiError> {
    let t = target(srv, peer, &req).await?;
    let path = rel(raw)?;
    let (ws, p) = (t.ws, path.clone());
    let (file, size) = tokio::task::spawn_blocking(move || ws.open_read(&p))
        .await
        .map_err(internal)?
        .map_err(refused)?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let (srv2, session, display) = (srv.clone(), t.session, path.display());
    tokio::task::spawn_blocking(move || {
        let sha = stream_file(file, size, tx);
        srv2.record_detached(Event::FileRead {
            session,
            path: display,
            size,
            sha256: sha,
        });
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(r)
}

/// Sends exactly `size` bytes (the size when opened; a file that grows is cut there, one that
/// shrinks ends the response early) and returns their SHA-256 if all were sent.
fn stream_file(file: std::fs::File, size: u64, tx: mpsc::Sender<Bytes>) -> Option<String> {
    use std::io::Read;
    let mut r = file.take(size);
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; 256 << 10];
        match r.read(&mut buf) {
            Ok(0) => break,
            Err(_) => return None,
            Ok(n) => {
                buf.truncate(n);
                hash.update(&buf);
                sent += n as u64;
                if tx.blocking_send(Bytes::from(buf)).is_err() {
                    return None;
                }
            }
        }
    }
    (sent == size).then(|| hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `DELETE /v1/files/{path}`: removes a file, symlink (not its target) or empty directory.
pub async fn delete(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
    raw: &str,
) -> Result<Response<Body>, ApiError> {
    let t = target(srv, peer, &req).await?;
    if t.read_only {
        return Err(read_only_refusal());
    }
    let path = rel(raw)?;
    let ws = Arc::new(t.ws);
    let (w, p) = (ws.clone(), path.clone());
    let kind = tokio::task::spawn_blocking(move || w.check_remove(&p))
        .await
        .map_err(internal)?
        .map_err(refused)?;
    srv.record(Event::FileDelete {
        session: t.session.clone(),
        path: path.display(),
        kind: kind.to_string(),
    })
    .await?;
    let p = path.clone();
    tokio::task::spawn_blocking(move || ws.remove(&p))
        .await
        .map_err(internal)?
        .map_err(refused)?;
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({"path": path.display(), "type": kind}),
    ))
}

/// `GET /v1/files?dir=PATH`: the entries of a directory (the workspace when `dir` is empty).
pub async fn list(
    srv: &Arc<Server>,
    peer: Peer,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let t = target(srv, peer, &req).await?;
    let dir =
        RelPath::parse(query_param(req.uri().query(), "dir").unwrap_or("")).map_err(refused)?;
    let max = srv.config.files.max_list_entries;
    let (ws, d) = (t.ws, dir.clone());
    let (entries, truncated) = tokio::task::spawn_blocking(move || ws.list(&d, max))
        .await
        .map_err(internal)?
        .map_err(refused)?;
    Ok(ok_json(
        StatusCode::OK,
        serde_json::json!({"dir": dir.display(), "entries": entries, "truncated": truncated}),
    ))
}
