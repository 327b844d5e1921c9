//! The network supervisor of one job: a thread of the job's supervisor process with a
//! single-threaded tokio runtime, serving the capture sockets the job's pid 1 handed over.
//! Started after the sandbox is cloned (the supervisor forks nothing after that) and stopped
//! when the job's pid 1 is gone; stopping drops every connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::allow::Egress;
use super::sniff::{Sniffed, sniff};
use super::{CaptureSocket, DNS_ADDR, NetEvent, NetReport, POOL_SIZE, Pool, Verdict};

/// The most of a client's first bytes held while deciding.
const SNIFF_MAX: usize = 16 << 10;
/// How long a client may take to send its first bytes on a port where TLS or HTTP is required.
const SNIFF_WAIT: Duration = Duration::from_secs(10);
/// On a port the entry names (opaque TCP allowed): a server-speaks-first protocol sends
/// nothing, so the relay stops waiting quickly.
const SNIFF_WAIT_OPAQUE: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const RELAY_BUF: usize = 256 << 10;

struct Shared {
    egress: Egress,
    pool: Mutex<Pool>,
    report: Mutex<NetReport>,
    active: AtomicUsize,
}

impl Shared {
    fn record(&self, ev: NetEvent) {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(ev);
    }
}

/// The running service; [`Running::stop`] ends it and returns what it saw.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<NetReport>>,
}

impl Running {
    pub fn stop(mut self) -> NetReport {
        self.halt()
    }

    fn halt(&mut self) -> NetReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => NetReport::default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts serving `sockets` (as [`super::capture_sockets`] listed them) for `egress`.
pub fn start(egress: Egress, sockets: Vec<(CaptureSocket, OwnedFd)>) -> std::io::Result<Running> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(4)
        .build()?;
    let shared = Arc::new(Shared {
        egress,
        pool: Mutex::new(Pool::new(POOL_SIZE)),
        report: Mutex::new(NetReport::default()),
        active: AtomicUsize::new(0),
    });
    // Register the sockets before the thread starts so an error is the caller's.
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    {
        let _guard = rt.enter();
        for (cs, fd) in sockets {
            if cs.tcp {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                tcp.push((cs, TcpListener::from_std(l)?));
            } else {
                let u = std::net::UdpSocket::from(fd);
                u.set_nonblocking(true)?;
                udp.push(UdpSocket::from_std(u)?);
            }
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("execbox-net".into())
        .spawn(move || {
            rt.block_on(async {
                for u in udp {
                    tokio::spawn(dns_udp(shared.clone(), u));
                }
                for (cs, l) in tcp {
                    if cs.addr == DNS_ADDR && cs.port == 53 {
                        tokio::spawn(dns_tcp(shared.clone(), l));
                    } else {
                        tokio::spawn(accept(shared.clone(), l));
                    }
                }
                let _ = stop_rx.await;
            });
            // Connections still open die with the job; a lookup still running on a blocking
            // thread is not waited for.
            rt.shutdown_background();
            std::mem::take(&mut *shared.report.lock().unwrap_or_else(PoisonError::into_inner))
        })?;
    Ok(Running {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn dns_udp(shared: Arc<Shared>, sock: UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let (reply, ev) = {
            let mut pool = shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
            super::dns::answer(&shared.egress, &mut pool, &buf[..n])
        };
        shared.record(ev);
        if let Some(r) = reply {
            let _ = sock.send_to(&r, peer).await;
        }
    }
}

async fn dns_tcp(shared: Arc<Shared>, l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let mut len = [0u8; 2];
                let read = async {
                    s.read_exact(&mut len).await?;
                    let n = u16::from_be_bytes(len) as usize;
                    s.read_exact(&mut buf[..n]).await.map(|_| n)
                };
                let Ok(Ok(n)) = tokio::time::timeout(SNIFF_WAIT, read).await else {
                    return;
                };
                let (reply, ev) = {
                    let mut pool = shared.pool.lock().unwrap_or_else(PoisonError::into_inner);
                    super::dns::answer(&shared.egress, &mut pool, &buf[..n])
                };
                shared.record(ev);
                let Some(r) = reply else { return };
                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                out.extend(r);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn accept(shared: Arc<Shared>, l: TcpListener) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            // EMFILE and the like: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(connection(shared.clone(), s));
    }
}

/// A decision to refuse: the reason, and whether to tell an HTTP client (421).
struct Refusal {
    reason: String,
    http: bool,
}

fn refuse(reason: String) -> Refusal {
    Refusal {
        reason,
        http: false,
    }
}

async fn connection(shared: Arc<Shared>, mut client: TcpStream) {
    let t0 = Instant::now();
    let Ok(SocketAddr::V4(local)) = client.local_addr() else {
        return;
    };
    let mut ev = NetEvent::connect(local.port());
    ev.synthetic = Some(local.ip().to_string());
    let max = shared.egress.max_connections;
    let open = shared.active.fetch_add(1, Ordering::SeqCst);
    let decided = if open >= max {
        Err(refuse(format!(
            "{max} connections are already open (network.max_connections)"
        )))
    } else {
        decide(&shared, &mut client, *local.ip(), local.port(), &mut ev).await
    };
    match decided {
        Ok((upstream, first)) => {
            ev.verdict = Verdict::Allowed;
            let (up, down) = relay(client, upstream, &first, shared.egress.idle_timeout).await;
            ev.bytes_up = up;
            ev.bytes_down = down;
        }
        Err(r) => {
            if r.http {
                let body = format!("execbox: {}\n", r.reason);
                let resp = format!(
                    "HTTP/1.1 421 Misdirected Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(resp.as_bytes()).await;
            }
            ev.reason = r.reason;
        }
    }
    shared.active.fetch_sub(1, Ordering::SeqCst);
    ev.duration_ms = t0.elapsed().as_millis() as u64;
    shared.record(ev);
}

/// Checks one connection; on success, the upstream connection and the client's first bytes.
async fn decide(
    shared: &Shared,
    client: &mut TcpStream,
    ip: Ipv4Addr,
    port: u16,
    ev: &mut NetEvent,
) -> Result<(TcpStream, Vec<u8>), Refusal> {
    let name = shared
        .pool
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .name_of(ip)
        .map(String::from)
        .ok_or_else(|| {
            refuse(format!(
                "{ip} was not handed out by the job's DNS (addresses are reached by allowed name only)"
            ))
        })?;
    ev.name = name.clone();
    let rule = shared.egress.rule_for(&name, port).ok_or_else(|| {
        refuse(format!(
            "{name}:{port} is not in network.allow (fix: add \"{name}:{port}\")"
        ))
    })?;
    ev.rule = Some(rule.text.clone());
    let opaque_ok = rule.port.is_some();

    // The client's first bytes: the name it really wants.
    let wait = if opaque_ok {
        SNIFF_WAIT_OPAQUE
    } else {
        SNIFF_WAIT
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut first = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    let seen = loop {
        let s = sniff(&first);
        if s != Sniffed::Incomplete || first.len() >= SNIFF_MAX {
            break s;
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(refuse("the client closed before sending anything".into()));
            }
            Ok(Ok(n)) => first.extend_from_slice(&chunk[..n]),
            Err(_) => break Sniffed::Incomplete,
        }
    };
    match seen {
        Sniffed::Tls(Some(sni)) if sni != name => {
            return Err(refuse(format!(
                "TLS server name {sni} is not {name}, the name this address stands for"
            )));
        }
        Sniffed::Tls(None) if !opaque_ok => {
            return Err(refuse(format!("TLS without a server name to {name}")));
        }
        Sniffed::Http { method, .. } if method == "CONNECT" => {
            return Err(Refusal {
                reason: "CONNECT: the relay is transparent, not a proxy".into(),
                http: true,
            });
        }
        Sniffed::Http { host, .. } if host.as_deref() != Some(name.as_str()) => {
            return Err(Refusal {
                reason: format!(
                    "HTTP Host {} is not {name}, the name this address stands for",
                    host.as_deref().unwrap_or("(none)")
                ),
                http: true,
            });
        }
        Sniffed::Garbled => return Err(refuse("malformed TLS or HTTP".into())),
        Sniffed::Opaque | Sniffed::Incomplete if !opaque_ok => {
            return Err(refuse(format!(
                "not TLS or HTTP: opaque TCP needs an entry naming the port (fix: allow \"{name}:{port}\")"
            )));
        }
        _ => {}
    }

    // Real resolution, only now and only for this allowed name; dial what was checked.
    let candidates: Vec<SocketAddr> = match shared.egress.hosts.get(&name) {
        Some(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        None => {
            let found = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((name.as_str(), port)),
            )
            .await
            .map_err(|_| refuse(format!("resolving {name} timed out")))?
            .map_err(|e| refuse(format!("cannot resolve {name}: {e}")))?
            .collect::<Vec<_>>();
            let mut ok = Vec::new();
            let mut why = None;
            for a in found {
                match super::ranges::forbidden(a.ip()) {
                    None => ok.push(a),
                    Some(w) => why = Some(format!("{name} resolves to {} ({w})", a.ip())),
                }
            }
            if ok.is_empty() {
                return Err(refuse(
                    why.unwrap_or_else(|| format!("{name} has no address")),
                ));
            }
            ok
        }
    };
    let mut last = String::new();
    for addr in candidates.into_iter().take(4) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                ev.upstream = Some(addr.to_string());
                let _ = s.set_nodelay(true);
                return Ok((s, first));
            }
            Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
            Err(_) => last = format!("connecting to {addr} timed out"),
        }
    }
    Err(refuse(last))
}

/// Copies both ways until both sides are done or nothing moved for `idle`. Returns the bytes
/// sent up (client → upstream, including `first`) and down.
async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    first: &[u8],
    idle: Duration,
) -> (u64, u64) {
    let t0 = Instant::now();
    let last = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    if upstream.write_all(first).await.is_err() {
        return (0, 0);
    }
    up.store(first.len() as u64, Ordering::Relaxed);
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let both = async { tokio::join!(pump(cr, uw, &up, &last, t0), pump(ur, cw, &down, &last, t0)) };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet = t0.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if quiet >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        _ = both => {}
        _ = watchdog => {}
    }
    (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    last: &AtomicU64,
    t0: Instant,
) {
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = w.shutdown().await;
}
