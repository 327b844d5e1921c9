//! The two Unix sockets: binding them (or taking them from systemd socket activation), their
//! modes and group, and the accept loops that identify every peer with SO_PEERCRED before a
//! single byte of its request is read.
//!
//! Must never: accept a non-Unix socket (a TCP fd handed over by a misconfigured unit is
//! refused), or serve a peer the allowlist does not name.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use super::Server;
use super::api::{self, Peer, Socket};
use super::state::Metrics;
use crate::config::Config;
use crate::sandbox::sys;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {path}; fix: check the directory exists and is writable by the daemon")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is in use by a running daemon; fix: stop it first, or use another path")]
    InUse { path: PathBuf },
    #[error("cannot set the mode or owner of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket activation: {0}; fix: the unit must pass two Unix stream sockets named agent and operator (FileDescriptorName=)"
    )]
    Activation(String),
}

/// The bound (or inherited) sockets.
pub struct Listeners {
    agent: std::os::unix::net::UnixListener,
    operator: std::os::unix::net::UnixListener,
    /// Paths we created and remove at exit (none under socket activation).
    owned_paths: Vec<PathBuf>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for p in &self.owned_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Listeners {
    pub fn open(config: &Config) -> Result<Listeners, ListenError> {
        if let Some(l) = from_systemd()? {
            tracing::info!("using sockets passed by the service manager");
            return Ok(l);
        }
        let agent = bind(&config.agent_socket, config.agent_mode, config.agent_group)?;
        let operator = match bind(&config.operator_socket, 0o600, None) {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_file(&config.agent_socket);
                return Err(e);
            }
        };
        Ok(Listeners {
            agent,
            operator,
            owned_paths: vec![config.agent_socket.clone(), config.operator_socket.clone()],
        })
    }
}

fn bind(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, ListenError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        // A live daemon answers; a stale socket file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    // Created with no access for anyone, then opened up to exactly `mode`: no window in which
    // another user could connect.
    let old = sys::umask(0o777);
    let l = std::os::unix::net::UnixListener::bind(path);
    sys::umask(old);
    let l = l.map_err(|source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let perm = |source| ListenError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(perm)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(perm)?;
    Ok(l)
}

/// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` (sd_listen_fds(3)): fds 3… named agent/operator.
fn from_systemd() -> Result<Option<Listeners>, ListenError> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !pid_ok {
        return Ok(None);
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ListenError::Activation("LISTEN_FDS is missing or not a number".into()))?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_string)
        .collect();
    // SAFETY-relevant hygiene: children must not think the fds are theirs.
    // (std::env::remove_var is unsafe in edition 2024; the variables are harmless to keep
    // because LISTEN_PID names this process only.)
    let mut agent = None;
    let mut operator = None;
    for i in 0..n {
        let fd = sys::adopt_inherited_fd(3 + i)
            .map_err(|e| ListenError::Activation(format!("fd {}: {}", 3 + i, e.describe())))?;
        let l = std::os::unix::net::UnixListener::from(fd);
        // getsockname on a non-Unix socket fails here: TCP is refused.
        l.local_addr().map_err(|e| {
            ListenError::Activation(format!("fd {} is not a Unix socket: {e}", 3 + i))
        })?;
        match names.get(i as usize).map(String::as_str) {
            Some("agent") => agent = Some(l),
            Some("operator") => operator = Some(l),
            other => {
                return Err(ListenError::Activation(format!(
                    "fd {} has name {other:?}",
                    3 + i
                )));
            }
        }
    }
    match (agent, operator) {
        (Some(agent), Some(operator)) => Ok(Some(Listeners {
            agent,
            operator,
            owned_paths: vec![],
        })),
        _ => Err(ListenError::Activation(
            "both agent and operator must be passed".into(),
        )),
    }
}

/// Accepts on both sockets until shutdown; returns once both loops have stopped (the socket
/// files are removed then).
pub fn accept_loops(
    srv: Arc<Server>,
    listeners: Listeners,
    conns: TaskTracker,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut listeners = listeners;
        let take = |l: &std::os::unix::net::UnixListener| -> Option<UnixListener> {
            let l = l.try_clone().ok()?;
            l.set_nonblocking(true).ok()?;
            UnixListener::from_std(l).ok()
        };
        let (Some(agent), Some(operator)) = (take(&listeners.agent), take(&listeners.operator))
        else {
            tracing::error!("cannot register the sockets with the runtime");
            return;
        };
        let a = tokio::spawn(accept(srv.clone(), agent, Socket::Agent, conns.clone()));
        let o = tokio::spawn(accept(srv.clone(), operator, Socket::Operator, conns));
        let _ = tokio::join!(a, o);
        // Dropping the std listeners (and their clones above) closes the sockets.
        let paths = std::mem::take(&mut listeners.owned_paths);
        drop(listeners);
        for p in paths {
            let _ = std::fs::remove_file(p);
        }
    })
}

async fn accept(srv: Arc<Server>, listener: UnixListener, socket: Socket, conns: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = srv.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: log, breathe, go on (one bad moment must not stop
                // the daemon). The connection caps keep this from happening.
                tracing::warn!(error = %e, ?socket, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        };
        // Counted before a byte is read, allowed peer or not: one uid cannot hold every
        // descriptor, and agents never take the operator socket's places.
        let permit = match srv.conns.admit(socket, peer.uid) {
            Ok(p) => p,
            Err(r) => {
                refuse_connection(&srv, &stream, socket, peer, r);
                continue;
            }
        };
        let srv = srv.clone();
        conns.spawn(async move {
            let _permit = permit;
            connection(srv, stream, socket, peer).await
        });
    }
}

/// A connection over a cap: one non-blocking write of a 429, then closed (dropping `stream`).
/// Nothing waits on the peer; the log gets one line per uid per second.
fn refuse_connection(
    srv: &Server,
    stream: &tokio::net::UnixStream,
    socket: Socket,
    peer: Peer,
    r: super::conns::Refusal,
) {
    Metrics::inc(&srv.metrics.connections_refused);
    if let Some(folded) = srv.log_refusal(peer.uid, r.code()) {
        let (agent, operator) = srv.conns.open();
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            ?socket,
            code = r.code(),
            agent,
            operator,
            folded,
            "connection refused: over the connection limit ({folded} more from this uid since the last line)"
        );
    }
    let _ = stream.try_write(&super::conns::refusal_reply(r));
}

async fn connection(
    srv: Arc<Server>,
    mut stream: tokio::net::UnixStream,
    socket: Socket,
    peer: Peer,
) {
    let allowed = match socket {
        Socket::Agent => srv.config.allow.permits(peer.uid, peer.gid),
        Socket::Operator => {
            peer.uid == 0
                || peer.uid == sys::geteuid()
                || srv.config.operator_uids.contains(&peer.uid)
        }
    };
    if !allowed {
        Metrics::inc(&srv.metrics.peers_refused);
        srv.record_auth_failure(
            peer,
            &format!("peer not in the allowlist of the {socket:?} socket"),
        );
        if let Some(folded) = srv.log_refusal(peer.uid, "peer_refused") {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                ?socket,
                folded,
                "peer refused: not in the allowlist ({folded} more refusals of this uid since the last line)"
            );
        }
        // Read (and ignore) the request head first: a reply to a client that is still sending
        // looks to it like a failed connection (curl reports "couldn't connect"). Bounded in
        // size and time; nothing in it is interpreted.
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let _ = stream.write_all(&api::forbidden_peer_reply(peer.uid)).await;
        let _ = stream.shutdown().await;
        return;
    }
    if socket == Socket::Operator {
        // Operators decide approvals: who connected is on the record.
        srv.record_detached(crate::audit::Event::Auth {
            ok: true,
            peer_uid: Some(peer.uid),
            reason: "operator socket".into(),
        });
    }
    let svc = {
        let srv = srv.clone();
        hyper::service::service_fn(move |req| api::handle(srv.clone(), socket, peer, req))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(srv.config.limits.header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = srv.shutdown.cancelled() => {
            // Finish the response in flight (an exec stream runs until its job ends).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
