//! `execbox serve` over real Unix sockets: the daemon is started from each test with a temp
//! config; clients are curl (what an agent would use) and a tiny raw HTTP client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::harness::*;

pub(super) struct Daemon {
    pub(super) dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    pub(super) fn start(extra: &str) -> Daemon {
        Daemon::start_with(&format!("[allow]\nuids = [{}]\n", my_uid()), extra)
    }

    /// `allow` is the whole [allow] table; `extra` is appended (more tables).
    pub(super) fn start_with(allow: &str, extra: &str) -> Daemon {
        let profiles = fixture("open.toml").parent().unwrap().to_path_buf();
        Daemon::start_profile(allow, &profiles, "open", extra)
    }

    /// A daemon whose sessions get `profile` from `profiles` (the tests mostly use the
    /// allow-all fixture so they exercise the daemon, not the policy).
    pub(super) fn start_profile(
        allow: &str,
        profiles: &std::path::Path,
        profile: &str,
        extra: &str,
    ) -> Daemon {
        Daemon::start_wrapped(allow, profiles, profile, extra, &[])
    }

    /// A daemon whose job cgroups go below `cgroup_parent` (a test's own, so that the stale
    /// sweeps of jobs in parallel tests do not reach them).
    pub(super) fn start_in_cgroup(cgroup_parent: &Path, extra: &str) -> Daemon {
        let profiles = fixture("open.toml").parent().unwrap().to_path_buf();
        let allow = format!("[allow]\nuids = [{}]\n", my_uid());
        Daemon::start_full(&allow, &profiles, "open", extra, &[], Some(cgroup_parent))
    }

    /// Like `start_profile`, with the daemon started through `wrapper` (e.g. `prlimit …`).
    pub(super) fn start_wrapped(
        allow: &str,
        profiles: &std::path::Path,
        profile: &str,
        extra: &str,
        wrapper: &[&str],
    ) -> Daemon {
        Daemon::start_full(allow, profiles, profile, extra, wrapper, None)
    }

    /// Like `start_wrapped`, with job cgroups below `cgroup_parent` (default:
    /// `EXECBOX_CGROUP_PARENT`, else the root).
    fn start_full(
        allow: &str,
        profiles: &std::path::Path,
        profile: &str,
        extra: &str,
        wrapper: &[&str],
        cgroup_parent: Option<&Path>,
    ) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("execbox-daemon-")
            .tempdir()
            .unwrap();
        let cgroup = cgroup_parent
            .map(|p| p.display().to_string())
            .or_else(|| std::env::var("EXECBOX_CGROUP_PARENT").ok())
            .map(|c| format!("cgroup_parent = {c:?}\n"))
            .unwrap_or_default();
        // Every daemon writes an audit log; a test that sets its own [audit] keeps it.
        let audit = if extra.contains("[audit]") {
            String::new()
        } else {
            format!("[audit]\npath = \"{}/audit.jsonl\"\n", dir.path().display())
        };
        let config = format!(
            "{allow}\n[sockets]\nagent = \"{d}/agent.sock\"\noperator = \"{d}/operator.sock\"\n\
             [paths]\nstate_dir = \"{d}/state\"\nprofiles_dir = {profiles:?}\ndefault_profile = {profile:?}\n{cgroup}\n\
             {audit}{extra}\n",
            d = dir.path().display(),
        );
        std::fs::write(dir.path().join("execbox.toml"), &config).unwrap();
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.push(EXECBOX.as_str());
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .args(["serve", "--config"])
            .arg(dir.path().join("execbox.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            dir,
            child: Some(child),
        };
        // Generous: the daemon's start checks create namespaces in probe children, and while a
        // concurrent test (the thousand-job load test) tears down its network namespaces the
        // kernel's rtnl/pernet locks make that take seconds (seen in CI's unprivileged pass).
        // A daemon that already exited will never listen: that is said at once, with its log.
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(d.agent()).is_err() {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("daemon exited ({status}) before listening: {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    pub(super) fn agent(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    pub(super) fn operator(&self) -> PathBuf {
        self.dir.path().join("operator.sock")
    }
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(super) fn session(&self) -> (String, String) {
        let (status, v) = self.json("POST", "/v1/sessions", None, None);
        assert_eq!(status, 201, "{v}");
        (
            v["session"].as_str().unwrap().into(),
            v["token"].as_str().unwrap().into(),
        )
    }

    pub(super) fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let (status, _, body) = http(
            &self.agent(),
            method,
            path,
            token,
            text.as_deref().map(|t| ("application/json", t.as_bytes())),
        );
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `POST /v1/exec` and the parsed event stream.
    pub(super) fn exec(&self, token: &str, body: Value) -> (u16, Vec<Value>) {
        exec_on(&self.agent(), token, body)
    }

    pub(super) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `POST /v1/exec` on `agent` and the parsed event stream (or the error body, when not 200).
pub(super) fn exec_on(agent: &Path, token: &str, body: Value) -> (u16, Vec<Value>) {
    let (status, _, raw) = http(
        agent,
        "POST",
        "/v1/exec",
        Some(token),
        Some(("application/json", body.to_string().as_bytes())),
    );
    if status != 200 {
        return (
            status,
            vec![serde_json::from_slice(&raw).unwrap_or(Value::Null)],
        );
    }
    let events = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    (status, events)
}

pub(super) fn my_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

/// One HTTP/1.1 request with `Connection: close`; returns status, raw head and de-chunked body.
pub(super) fn http(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Vec<u8>) {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, data) = body.unwrap_or(("", b""));
    if !ctype.is_empty() {
        head.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", data.len()));
    s.write_all(head.as_bytes()).unwrap();
    // A refused body may be answered (and the connection closed) before it is all sent.
    let _ = s.write_all(data);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", text(&raw)));
    let head = text(&raw[..split]);
    let mut rest = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u16>()
        .unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = dechunk(&rest);
    }
    (status, head, rest)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(text(&b[..eol]).trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

pub(super) fn output(events: &[Value], stream: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["event"] == stream)
        .flat_map(|e| B64.decode(e["data_b64"].as_str().unwrap()).unwrap())
        .collect()
}

pub(super) fn exit_of(events: &[Value]) -> &Value {
    let last = events.last().expect("no events");
    assert_eq!(last["event"], "exit", "last event is the exit: {events:?}");
    last
}

pub(super) fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed")
}

// ---- end to end --------------------------------------------------------------------------------

#[test]
fn the_harness_says_at_once_when_the_daemon_exits_before_listening() {
    // An unknown key: the daemon refuses its config and exits; the harness must not wait out
    // its 60 s start budget.
    let t = Instant::now();
    let e =
        std::panic::catch_unwind(|| Daemon::start("[no_such_table]\nx = 1\n").pid()).unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("daemon exited"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn curl_end_to_end_session_exec_stream_exit() {
    let d = Daemon::start("");
    let sock = d.agent().display().to_string();
    let o = curl(&["--unix-socket", &sock, "-X", "POST", "http://x/v1/sessions"]);
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = s["token"].as_str().unwrap();
    assert!(
        token.len() > 43 + 3,
        "a 256-bit secret after the session id"
    );
    assert!(s["expires_at"].as_u64().unwrap() > 0);

    let body = json!({"argv": ["/bin/sh", "-c", "echo out; echo err >&2; printf '%s' \"$GREETING\"; exit 3"],
                      "env": {"GREETING": "hello"}});
    let o = curl(&[
        "--unix-socket",
        &sock,
        "-N",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        "http://x/v1/exec",
    ]);
    let events: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "accepted", "{kinds:?}");
    assert_eq!(kinds[1], "started", "{kinds:?}");
    assert_eq!(text(&output(&events, "stdout")), "out\nhello");
    assert_eq!(text(&output(&events, "stderr")), "err\n");
    let exit = exit_of(&events);
    assert_eq!(exit["code"], 3);
    assert_eq!(exit["reason"], "exited");
    assert!(exit["usage"]["wall_ms"].is_u64(), "{exit}");

    // The job is listed for its session, and the operator's metrics counted it.
    let job = events[0]["job"].as_str().unwrap();
    let o = curl(&[
        "--unix-socket",
        &sock,
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://x/v1/jobs/{job}"),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "finished");
    assert_eq!(v["exit"]["code"], 3);
    let o = curl(&[
        "--unix-socket",
        &d.operator().display().to_string(),
        "http://x/metrics",
    ]);
    let m = text(&o.stdout);
    assert!(m.contains("execbox_jobs_finished_total 1"), "{m}");
    // Issue 22 item 12: how long jobs ran and waited, as histograms.
    for line in [
        "# TYPE execbox_job_duration_seconds histogram",
        "execbox_job_duration_seconds_count 1",
        "execbox_job_duration_seconds_bucket{le=\"+Inf\"} 1",
        "# TYPE execbox_job_queue_seconds histogram",
        "execbox_job_queue_seconds_count{approval=\"none\"} 1",
        "execbox_job_queue_seconds_count{approval=\"waited\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
    }
}

#[test]
fn sockets_have_their_modes_and_unknown_routes_are_404() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start("");
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(d.agent()), 0o660);
    assert_eq!(mode(d.operator()), 0o600);
    let (status, v) = d.json("GET", "/v1/nothing", None, None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // Operator routes are not on the agent socket.
    let (status, _) = d.json("GET", "/metrics", None, None);
    assert_eq!(status, 404);
}

#[test]
fn policy_refusal_is_an_exit_event_with_the_rule() {
    // The shipped default profile, with its real rules.
    let policies = source_path("policies");
    let d = Daemon::start_profile(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &policies,
        "default",
        "[approvals]\nexpiry = \"1s\"\n",
    );
    let (_, token) = d.session();
    // Deny: the rule is named, nothing runs.
    let (status, events) = d.exec(&token, json!({"command": "sudo id"}));
    assert_eq!(status, 200);
    let exit = exit_of(&events);
    assert_eq!(exit["reason"], "refused");
    assert_eq!(exit["code"], 125);
    assert_eq!(exit["error"], "refused_by_policy");
    assert!(
        exit["rule"].as_str().is_some_and(|r| !r.is_empty()),
        "{exit}"
    );
    assert!(output(&events, "stdout").is_empty());
    // Approve: a human must decide; nobody does here, so it expires (tests/suite/approvals.rs
    // covers the decisions).
    let (_, events) = d.exec(&token, json!({"command": "x=id; $x"}));
    assert!(
        events.iter().any(|e| e["event"] == "pending_approval"),
        "{events:?}"
    );
    let exit = exit_of(&events);
    assert_eq!(exit["code"], 125);
    assert_eq!(exit["error"], "approval_expired");
    // Positive control: an allowed command runs.
    let (_, events) = d.exec(&token, json!({"command": "echo hi"}));
    assert_eq!(exit_of(&events)["code"], 0);
    assert_eq!(output(&events, "stdout"), b"hi\n");
}

// ---- who may connect ---------------------------------------------------------------------------

#[test]
fn a_uid_outside_the_allowlist_is_refused() {
    if !root_only("a_uid_outside_the_allowlist_is_refused") {
        return;
    }
    // Socket group = nogroup so uid 65534 can reach the socket: what refuses it must be the
    // SO_PEERCRED allowlist, not the file mode.
    let d = Daemon::start_with("[allow]\nuids = [0]\n", "");
    Command::new("chgrp")
        .arg("65534")
        .arg(d.agent())
        .status()
        .unwrap();
    Command::new("chmod")
        .arg("a+x")
        .arg(d.dir.path())
        .status()
        .unwrap();
    let run_as_nobody = |path: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "-X",
                "POST",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(d.agent())
            .arg(format!("http://x{path}"))
            .output()
            .unwrap()
    };
    let o = run_as_nobody("/v1/sessions");
    let out = text(&o.stdout);
    assert!(
        out.ends_with("\n403"),
        "refused with 403: {out} {}",
        text(&o.stderr)
    );
    assert!(out.contains("forbidden_peer"), "{out}");
    // Positive control: root (in the allowlist) gets a session, and the daemon logged the refusal.
    assert_eq!(d.json("POST", "/v1/sessions", None, None).0, 201);
    assert!(d.log().contains("peer refused"), "{}", d.log());
}

#[test]
fn an_empty_allowlist_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sockets]\nagent = \"{0}/a.sock\"\noperator = \"{0}/o.sock\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let err = serve_refuses(&cfg);
    assert!(err.contains("key `allow`") && err.contains("fix:"), "{err}");
    assert!(!dir.path().join("a.sock").exists());
}

// ---- session isolation -------------------------------------------------------------------------

#[test]
fn sessions_cannot_see_each_others_jobs_but_parents_see_childrens() {
    let d = Daemon::start("");
    let (a_id, a) = d.session();
    let (_, b) = d.session();
    let (_, ea) = d.exec(
        &a,
        json!({"argv": ["/bin/sh", "-c", "echo secret > mine.txt; pwd"]}),
    );
    let job_a = ea[0]["job"].as_str().unwrap().to_string();
    let ws_a = text(&output(&ea, "stdout")).trim().to_string();

    // B: not in the list, and 404 (not 403) for read and cancel.
    let (_, list) = d.json("GET", "/v1/jobs", Some(&b), None);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(
        d.json("GET", &format!("/v1/jobs/{job_a}"), Some(&b), None)
            .0,
        404
    );
    assert_eq!(
        d.json("DELETE", &format!("/v1/jobs/{job_a}"), Some(&b), None)
            .0,
        404
    );
    assert_eq!(
        d.json("GET", "/v1/jobs/j_doesnotexist", Some(&b), None).0,
        404
    );
    // B's sandbox cannot see A's workspace.
    let (_, eb) = d.exec(
        &b,
        json!({"argv": ["/bin/cat", format!("{ws_a}/mine.txt")]}),
    );
    assert_ne!(exit_of(&eb)["code"], 0, "B read A's file: {eb:?}");
    // Positive control: A can.
    let (_, ea2) = d.exec(
        &a,
        json!({"argv": ["/bin/cat", format!("{ws_a}/mine.txt")]}),
    );
    assert_eq!(text(&output(&ea2, "stdout")), "secret\n");

    // A child of A (a subagent): its jobs are visible to A, A's are not visible to it.
    let (status, child) = d.json("POST", "/v1/sessions", Some(&a), None);
    assert_eq!(status, 201);
    assert_eq!(child["spawned_by"].as_str(), Some(a_id.as_str()));
    let c = child["token"].as_str().unwrap();
    let (_, ec) = d.exec(c, json!({"argv": ["/bin/true"]}));
    let job_c = ec[0]["job"].as_str().unwrap();
    let (_, list) = d.json("GET", "/v1/jobs", Some(&a), None);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&job_c) && ids.contains(&job_a.as_str()),
        "{ids:?}"
    );
    assert_eq!(
        d.json("GET", &format!("/v1/jobs/{job_c}"), Some(&a), None)
            .0,
        200
    );
    assert_eq!(
        d.json("GET", &format!("/v1/jobs/{job_a}"), Some(c), None).0,
        404
    );
    assert_eq!(
        d.json("GET", &format!("/v1/jobs/{job_c}"), Some(&b), None)
            .0,
        404
    );
}

// ---- bad input ---------------------------------------------------------------------------------

#[test]
fn bad_requests_get_4xx_and_the_daemon_keeps_serving() {
    let d = Daemon::start(
        "[limits]\nmax_body = \"4KiB\"\nbad_token_limit = 3\nbad_token_lockout = \"300ms\"\n",
    );
    let (_, token) = d.session();
    let exec = |ctype: &str, body: &[u8], tok: &str| {
        let (status, _, b) = http(
            &d.agent(),
            "POST",
            "/v1/exec",
            Some(tok),
            Some((ctype, body)),
        );
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        (
            status,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    };
    let j = "application/json";
    assert_eq!(
        exec(j, b"{\"argv\": [", &token),
        (400, "bad_request".into())
    );
    assert_eq!(
        exec(j, br#"{"argv": ["/bin/true"], "sudo": true}"#, &token),
        (400, "unknown_field".into())
    );
    assert_eq!(
        exec(
            j,
            br#"{"argv": ["/bin/true"], "limits": {"memroy": 1}}"#,
            &token
        ),
        (400, "unknown_field".into())
    );
    let big = format!("{{\"argv\": [\"/bin/echo\", \"{}\"]}}", "a".repeat(8192));
    assert_eq!(
        exec(j, big.as_bytes(), &token),
        (413, "payload_too_large".into())
    );
    assert_eq!(
        exec("text/plain", br#"{"argv": ["/bin/true"]}"#, &token),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        exec(j, br#"{"argv": []}"#, &token),
        (400, "bad_request".into())
    );
    assert_eq!(
        exec(j, br#"{"argv": ["/bin/true"], "cwd": "../.."}"#, &token),
        (400, "bad_request".into())
    );
    assert_eq!(
        exec(j, br#"{"argv": ["/bin/true"], "timeout": "100d"}"#, &token),
        (400, "bad_request".into())
    );
    assert_eq!(
        exec(
            j,
            br#"{"argv": ["/bin/true"], "limits": {"memory": "100GiB"}}"#,
            &token
        ),
        (400, "bad_request".into())
    );

    // Bad tokens: 401, then a lockout of the peer uid (429), which ends.
    let (sid, secret) = token.split_once('.').unwrap();
    let wrong = format!("{sid}.{}", "A".repeat(secret.len()));
    for _ in 0..3 {
        assert_eq!(exec(j, br#"{"argv": ["/bin/true"]}"#, &wrong).0, 401);
    }
    assert_eq!(
        exec(j, br#"{"argv": ["/bin/true"]}"#, &token),
        (429, "locked_out".into())
    );
    std::thread::sleep(Duration::from_millis(400));

    // The daemon still serves a normal request.
    let (status, events) = d.exec(&token, json!({"argv": ["/bin/echo", "still here"]}));
    assert_eq!(status, 200);
    assert_eq!(text(&output(&events, "stdout")), "still here\n");
    assert_eq!(exit_of(&events)["code"], 0);
}

// ---- load --------------------------------------------------------------------------------------

#[test]
fn a_low_descriptor_limit_does_not_fail_concurrent_jobs() {
    // A login's soft RLIMIT_NOFILE (often 1024; 128 here) is far below what max_jobs running
    // jobs need in the daemon (several pipes each): the daemon raises its soft limit to the hard
    // one at start. Without that, some of these jobs failed with HTTP 500 (EMFILE).
    let profiles = fixture("open.toml").parent().unwrap().to_path_buf();
    let d = Daemon::start_wrapped(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &profiles,
        "open",
        "[limits]\nmax_jobs = 64\nmax_jobs_per_session = 64\npeer_rate = 100000\nsession_rate = 100000\n",
        &["/usr/bin/prlimit", "--nofile=128:"],
    );
    let (_, token) = d.session();
    let handles: Vec<_> = (0..48)
        .map(|_| {
            let sock = d.agent();
            let token = token.clone();
            std::thread::spawn(move || {
                let body = json!({"argv": ["/bin/sh", "-c", "sleep 1; echo ok"]});
                exec_on(&sock, &token, body)
            })
        })
        .collect();
    for h in handles {
        let (status, events) = h.join().unwrap();
        assert_eq!(status, 200, "{events:?}");
        assert_eq!(exit_of(&events)["code"], 0, "{events:?}");
    }
}

#[test]
fn concurrent_jobs_all_complete_with_every_byte_accounted_for() {
    let n: usize = std::env::var("EXECBOX_DAEMON_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let d = Daemon::start(&format!(
        "[limits]\nmax_jobs = {n}\nmax_jobs_per_session = {n}\npeer_rate = 100000\nsession_rate = 100000\n"
    ));
    let (_, token) = d.session();
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let sock = d.agent();
            let token = token.clone();
            std::thread::spawn(move || {
                // Each job writes 20 000 lines naming itself to stdout, and one line to stderr.
                let body = json!({"argv": ["/bin/sh", "-c", format!("i=0; while [ $i -lt 2000 ]; do echo job-{i}-$i; i=$((i+1)); done; echo done-{i} >&2")]});
                let (status, _, raw) = http(&sock, "POST", "/v1/exec", Some(&token), Some(("application/json", body.to_string().as_bytes())));
                assert_eq!(status, 200);
                let events: Vec<Value> = raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
                (i, events)
            })
        })
        .collect();
    for h in handles {
        let (i, events) = h.join().unwrap();
        let expected: String = (0..2000).map(|k| format!("job-{i}-{k}\n")).collect();
        let got = output(&events, "stdout");
        assert_eq!(got.len(), expected.len(), "job {i}: byte count");
        assert!(got == expected.as_bytes(), "job {i}: content");
        assert_eq!(text(&output(&events, "stderr")), format!("done-{i}\n"));
        let exit = exit_of(&events);
        assert_eq!(exit["code"], 0, "job {i}: {exit}");
        assert_eq!(exit["stdout_bytes"], expected.len() as u64);
    }
    eprintln!("{n} concurrent jobs in {:?}", started.elapsed());
}

// ---- life cycle --------------------------------------------------------------------------------

/// Job cgroup directories whose name contains `needle`, in every cgroup hierarchy.
pub(super) fn cgroups_named(needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &str, depth: usize, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name().to_string_lossy().contains(needle) {
                    out.push(e.path());
                }
                walk(&e.path(), needle, depth - 1, out);
            }
        }
    }
    let mut out = vec![];
    walk(Path::new("/sys/fs/cgroup"), needle, 5, &mut out);
    out
}

#[test]
fn sigterm_finishes_short_jobs_and_kills_long_ones_leaving_nothing_behind() {
    // The grace period is generous and the short job is seen running before SIGTERM: on a
    // loaded machine a job spawned last may start late, and a 1 s grace made this flaky.
    let mut d = Daemon::start("[limits]\nshutdown_grace = \"8s\"\n");
    let (_, token) = d.session();
    let sock = d.agent();
    let spawn_job = |argv: Value| {
        let sock = sock.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            let (_, _, raw) = http(
                &sock,
                "POST",
                "/v1/exec",
                Some(&token),
                Some((
                    "application/json",
                    json!({"argv": argv}).to_string().as_bytes(),
                )),
            );
            raw.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let long: Vec<_> = (0..3)
        .map(|_| spawn_job(json!(["/bin/sleep", "4321.5"])))
        .collect();
    let short = spawn_job(json!(["/bin/sh", "-c", "sleep 2.71828; echo finished"]));
    // Wait until every job runs, the short one included.
    let deadline = Instant::now() + Duration::from_secs(30);
    while host_processes_with("4321.5").len() < 3 || host_processes_with("2.71828").is_empty() {
        assert!(Instant::now() < deadline, "jobs did not start: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let status = d.terminate();
    assert!(status.success(), "daemon exit: {status:?}\n{}", d.log());
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "shutdown took {:?}",
        t.elapsed()
    );

    let short = short.join().unwrap();
    assert_eq!(
        text(&output(&short, "stdout")),
        "finished\n",
        "a job within the grace period completes"
    );
    assert_eq!(exit_of(&short)["code"], 0);
    for h in long {
        let events = h.join().unwrap();
        let exit = exit_of(&events);
        assert_eq!(exit["reason"], "cancelled", "{exit}");
        let job = events[0]["job"].as_str().unwrap();
        assert!(
            cgroups_named(job).is_empty(),
            "job cgroup left: {:?}",
            cgroups_named(job)
        );
    }
    assert!(
        host_processes_with("4321.5").is_empty(),
        "sandboxed processes survived: {:?}",
        host_processes_with("4321.5")
    );
    assert!(
        !d.agent().exists() && !d.operator().exists(),
        "socket files removed"
    );
    assert!(d.log().contains("grace period over"), "{}", d.log());
}

#[test]
fn a_client_that_disconnects_kills_its_job_and_cancel_works() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    // Disconnect mid-stream.
    let mut s = UnixStream::connect(d.agent()).unwrap();
    let body = json!({"argv": ["/bin/sleep", "4322.5"]}).to_string();
    write!(s, "POST /v1/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while host_processes_with("4322.5").is_empty() {
        assert!(Instant::now() < deadline, "job did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    while !host_processes_with("4322.5").is_empty() {
        assert!(Instant::now() < deadline, "job survived its client");
        std::thread::sleep(Duration::from_millis(20));
    }

    // DELETE /v1/jobs/{id} from the job's own session.
    let sock = d.agent();
    let t2 = token.clone();
    let h = std::thread::spawn(move || {
        let (_, _, raw) = http(
            &sock,
            "POST",
            "/v1/exec",
            Some(&t2),
            Some((
                "application/json",
                json!({"argv": ["/bin/sleep", "4323.5"]})
                    .to_string()
                    .as_bytes(),
            )),
        );
        raw.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    });
    while host_processes_with("4323.5").is_empty() {
        assert!(Instant::now() < deadline, "job did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, list) = d.json("GET", "/v1/jobs", Some(&token), None);
    let running = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["state"] == "running")
        .unwrap()["job"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = d.json("DELETE", &format!("/v1/jobs/{running}"), Some(&token), None);
    assert_eq!(status, 202);
    let events = h.join().unwrap();
    assert_eq!(exit_of(&events)["reason"], "cancelled");
    assert!(host_processes_with("4323.5").is_empty());
}

// ---- execbox run --socket ----------------------------------------------------------------------

#[test]
fn run_through_the_daemon_has_the_same_output_and_exit_codes() {
    let d = Daemon::start("");
    let ws = Ws::new();
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["/bin/sh", "-c", "echo out; echo err >&2; exit 7"]),
        (&["--timeout", "300ms"], &["/bin/sleep", "5"]),
        (&[], &["/nonexistent/program"]),
        // ≈ 2 MB: many output events, lines split across HTTP chunks.
        (&[], &["/bin/sh", "-c", "seq 1 300000; seq 1 1000 >&2"]),
    ];
    for (extra, argv) in cases {
        let local = run_in(ws.path(), extra, argv);
        let remote = Command::new(&*EXECBOX)
            .arg("run")
            .arg("--socket")
            .arg(d.agent())
            .args(*extra)
            .arg("--")
            .args(*argv)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            remote.status.code(),
            local.status.code(),
            "{argv:?}: {}",
            text(&remote.stderr)
        );
        assert_eq!(remote.stdout, local.stdout, "{argv:?}");
    }
    // stdin goes to the command; EXECBOX_SOCKET works like --socket.
    let mut c = Command::new(&*EXECBOX)
        .args(["run", "--", "/bin/cat"])
        .env("EXECBOX_SOCKET", d.agent())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"piped in\n").unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "piped in\n");
    assert!(o.status.success());
    let _ = d.pid();
}

/// Logs (issue 22 item 6): no colour codes when stderr is not a terminal (journald, files),
/// and `[log] json = true` writes fields as JSON values — a number for `code`, a plain string
/// for `argv` — not Rust `Debug` text (`Some(Number(0))`, `["/bin/true"]`).
#[test]
fn logs_are_plain_off_a_terminal_and_json_fields_are_json_values() {
    let wait_for = |d: &Daemon, what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = d.log();
            if log.contains(what) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {what:?} in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let d = Daemon::start("");
    let (_, token) = d.session();
    let (status, _) = d.exec(&token, json!({"argv": ["/bin/true"]}));
    assert_eq!(status, 200);
    let log = wait_for(&d, "job ended");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");

    let d = Daemon::start("[log]\njson = true\n");
    let (_, token) = d.session();
    let (status, _) = d.exec(&token, json!({"argv": ["/bin/echo", "two words"]}));
    assert_eq!(status, 200);
    let log = wait_for(&d, "job ended");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    let line = |msg: &str| -> Value {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{log}"))
    };
    let ended = line("job ended");
    assert_eq!(ended["fields"]["code"], json!(0), "{ended}");
    assert_eq!(ended["fields"]["reason"], json!("exited"), "{ended}");
    let started = line("job started");
    assert_eq!(
        started["fields"]["argv"],
        json!("/bin/echo 'two words'"),
        "{started}"
    );
    let created = line("session created");
    assert!(created["fields"]["pid"].is_number(), "{created}");
    assert!(created["fields"].get("spawned_by").is_none(), "{created}");
}
