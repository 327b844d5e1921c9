//! Operator approvals through a real daemon and real sockets, with the shipped default profile
//! (`x=echo; $x …` has a non-literal program name, so its verdict is approve). The test process
//! is both the agent and the operator.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::daemon::{Daemon, exec_on, http, my_uid};
use super::harness::*;

pub(super) fn daemon(extra: &str) -> Daemon {
    Daemon::start_profile(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &source_path("policies"),
        "default",
        extra,
    )
}

/// `POST /v1/exec` on another thread (it blocks until an operator decides).
pub(super) fn exec_async(
    d: &Daemon,
    token: &str,
    body: Value,
) -> std::thread::JoinHandle<(u16, Vec<Value>)> {
    let agent = d.agent();
    let token = token.to_string();
    std::thread::spawn(move || exec_on(&agent, &token, body))
}

pub(super) fn operator(d: &Daemon, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, _, raw) = http(
        &d.operator(),
        method,
        path,
        None,
        text.as_deref().map(|t| ("application/json", t.as_bytes())),
    );
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// Waits until an approval other than those in `seen` is pending, and returns it.
pub(super) fn next_pending(d: &Daemon, seen: &[String]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = operator(d, "GET", "/v1/approvals", None);
        assert_eq!(status, 200, "{v}");
        if let Some(a) = v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| !seen.contains(&a["approval_id"].as_str().unwrap().to_string()))
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no approval arrived: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pending_count(d: &Daemon) -> usize {
    operator(d, "GET", "/v1/approvals", None).1["approvals"]
        .as_array()
        .unwrap()
        .len()
}

pub(super) fn decide(d: &Daemon, a: &Value, decision: &str, scope: &str) -> (u16, Value) {
    let id = a["approval_id"].as_str().unwrap();
    operator(
        d,
        "POST",
        &format!("/v1/approvals/{id}"),
        Some(
            &json!({"decision": decision, "scope": scope, "hash": a["hash"], "reason": "test says no"}),
        ),
    )
}

pub(super) fn exit_of(events: &[Value]) -> &Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == "exit")
        .unwrap_or_else(|| panic!("no exit event in {events:?}"))
}

pub(super) fn stdout_of(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["event"] == "stdout")
        .flat_map(|e| B64.decode(e["data_b64"].as_str().unwrap()).unwrap())
        .collect()
}

pub(super) fn was_pending(events: &[Value]) -> bool {
    events.iter().any(|e| e["event"] == "pending_approval")
}

#[test]
fn approve_once_runs_exactly_once_and_a_replay_needs_a_new_approval() {
    let d = daemon("");
    let (_, token) = d.session();
    let req = json!({"command": "x=echo; $x ran"});
    let t = exec_async(&d, &token, req.clone());
    let a = next_pending(&d, &[]);
    assert_eq!(a["kind"], "exec");
    assert_eq!(a["command"], "x=echo; $x ran");
    assert_eq!(a["peer_uid"], my_uid());
    let (status, r) = decide(&d, &a, "approve", "once");
    assert_eq!(status, 200, "{r}");
    let (status, events) = t.join().unwrap();
    assert_eq!(status, 200);
    assert!(was_pending(&events), "{events:?}");
    let pending = events
        .iter()
        .find(|e| e["event"] == "pending_approval")
        .unwrap();
    assert_eq!(pending["approval_id"], a["approval_id"]);
    assert!(pending["expires_at"].as_u64().unwrap() > 0);
    assert_eq!(exit_of(&events)["code"], 0, "{events:?}");
    assert_eq!(stdout_of(&events), b"ran\n");

    // The same decision cannot be used again.
    let (status, _) = decide(&d, &a, "approve", "once");
    assert_eq!(status, 404);
    // The identical request again: a new approval, and nothing runs without it.
    let t = exec_async(&d, &token, req);
    let b = next_pending(&d, &[a["approval_id"].as_str().unwrap().into()]);
    assert_ne!(b["approval_id"], a["approval_id"]);
    assert_eq!(b["hash"], a["hash"], "same request, same canonical hash");
    assert_eq!(decide(&d, &b, "deny", "once").0, 200);
    let (_, events) = t.join().unwrap();
    assert_eq!(exit_of(&events)["error"], "approval_denied");
    assert!(stdout_of(&events).is_empty());
}

#[test]
fn session_scope_covers_only_this_exact_request_in_this_session() {
    let d = daemon("");
    let (_, token) = d.session();
    let (_, other_token) = d.session();
    let base = json!({"command": "x=echo; $x same", "env": {"K": "1"}});
    let t = exec_async(&d, &token, base.clone());
    let a = next_pending(&d, &[]);
    assert_eq!(decide(&d, &a, "approve", "session").0, 200);
    let (_, events) = t.join().unwrap();
    assert_eq!(stdout_of(&events), b"same\n");

    // The exact request again in the same session: runs without asking.
    let (_, events) = d.exec(&token, base.clone());
    assert!(!was_pending(&events), "{events:?}");
    assert_eq!(stdout_of(&events), b"same\n");

    // One byte different (env value, cwd), another command, another session: each asks.
    // (The cwd is compared resolved: `"."` is the workspace itself, the same request.)
    let (_, events) = d.exec(&token, json!({"command": "mkdir -p sub"}));
    assert_eq!(exit_of(&events)["code"], 0, "{events:?}");
    let variants = [
        (
            &token,
            json!({"command": "x=echo; $x same", "env": {"K": "2"}}),
        ),
        (
            &token,
            json!({"command": "x=echo; $x same", "env": {"K": "1"}, "cwd": "sub"}),
        ),
        (
            &token,
            json!({"command": "x=echo; $x samE", "env": {"K": "1"}}),
        ),
        (&other_token, base.clone()),
    ];
    let mut seen = vec![a["approval_id"].as_str().unwrap().to_string()];
    for (tok, req) in variants {
        let t = exec_async(&d, tok, req.clone());
        let p = next_pending(&d, &seen);
        assert_ne!(p["hash"], a["hash"], "{req}");
        seen.push(p["approval_id"].as_str().unwrap().into());
        assert_eq!(decide(&d, &p, "deny", "once").0, 200);
        let (_, events) = t.join().unwrap();
        assert!(was_pending(&events), "{req}: {events:?}");
        assert_eq!(exit_of(&events)["error"], "approval_denied", "{req}");
        assert!(stdout_of(&events).is_empty(), "{req}");
    }
}

#[test]
fn deny_expiry_hash_mismatch_and_disconnect() {
    let d = daemon("[approvals]\nexpiry = \"2s\"\n");
    let (_, token) = d.session();
    // Approvals are not served on the agent socket.
    let (status, _) = d.json("GET", "/v1/approvals", Some(&token), None);
    assert_eq!(status, 404);

    // A decision with another hash is refused and the request stays pending; deny works.
    let t = exec_async(&d, &token, json!({"command": "x=echo; $x no"}));
    let a = next_pending(&d, &[]);
    let id = a["approval_id"].as_str().unwrap();
    let (status, v) = operator(
        &d,
        "POST",
        &format!("/v1/approvals/{id}"),
        Some(&json!({"decision": "approve", "hash": "0".repeat(64)})),
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "approval_hash_mismatch");
    assert_eq!(decide(&d, &a, "deny", "once").0, 200);
    let (_, events) = t.join().unwrap();
    let exit = exit_of(&events);
    assert_eq!(exit["reason"], "refused");
    assert_eq!(exit["code"], 125);
    assert_eq!(exit["error"], "approval_denied");
    assert!(
        exit["message"].as_str().unwrap().contains("test says no"),
        "{exit}"
    );

    // Nobody decides: expired after approvals.expiry.
    let started = Instant::now();
    let (_, events) = d.exec(&token, json!({"command": "x=echo; $x late"}));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(exit_of(&events)["error"], "approval_expired");
    assert!(stdout_of(&events).is_empty());

    // A client that disconnects while pending withdraws its request.
    let body = json!({"command": "x=echo; $x gone"}).to_string();
    let mut s = UnixStream::connect(d.agent()).unwrap();
    write!(
        s,
        "POST /v1/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&got).contains("pending_approval") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pending_count(&d), 1);
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(1);
    while pending_count(&d) != 0 {
        assert!(Instant::now() < deadline, "the request was not withdrawn");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_pending_queue_is_bounded_per_session() {
    let d = daemon("[approvals]\nmax_pending_per_session = 1\n");
    let (_, token) = d.session();
    let (_, other) = d.session();
    let t = exec_async(&d, &token, json!({"command": "x=echo; $x 1"}));
    let a = next_pending(&d, &[]);
    let (status, v) = d.exec(&token, json!({"command": "x=echo; $x 2"}));
    assert_eq!(status, 429, "{v:?}");
    assert_eq!(v[0]["error"]["code"], "too_many_pending");
    // Another session is not affected.
    let t2 = exec_async(&d, &other, json!({"command": "x=echo; $x 3"}));
    let b = next_pending(&d, &[a["approval_id"].as_str().unwrap().into()]);
    for p in [&a, &b] {
        assert_eq!(decide(&d, p, "deny", "once").0, 200);
    }
    t.join().unwrap();
    t2.join().unwrap();
}

#[test]
fn a_high_risk_profile_binds_only_with_an_operator_approval() {
    // `approval_profiles` lives in [paths], which the shared harness writes itself: this test
    // writes its own config.
    let dir = tempfile::Builder::new()
        .prefix("execbox-bind-")
        .tempdir()
        .unwrap();
    let cfg = format!(
        "[allow]\nuids = [{uid}]\n[sockets]\nagent = \"{d}/agent.sock\"\noperator = \"{d}/operator.sock\"\n\
         [paths]\nstate_dir = \"{d}/state\"\nprofiles_dir = {p:?}\ndefault_profile = \"default\"\n\
         approval_profiles = [\"dev\"]\n{cg}[audit]\npath = \"{d}/audit.jsonl\"\n",
        uid = my_uid(),
        d = dir.path().display(),
        p = source_path("policies"),
        cg = std::env::var("EXECBOX_CGROUP_PARENT")
            .map(|c| format!("cgroup_parent = {c:?}\n"))
            .unwrap_or_default(),
    );
    std::fs::write(dir.path().join("execbox.toml"), cfg).unwrap();
    let mut child = Command::new(&*EXECBOX)
        .args(["serve", "--config"])
        .arg(dir.path().join("execbox.toml"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = dir.path().join("agent.sock");
    let op = dir.path().join("operator.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&agent).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bind = |agent: PathBuf| {
        std::thread::spawn(move || {
            let body = json!({"profile": "dev"}).to_string();
            let (status, _, raw) = http(
                &agent,
                "POST",
                "/v1/sessions",
                None,
                Some(("application/json", body.as_bytes())),
            );
            (
                status,
                serde_json::from_slice::<Value>(&raw).unwrap_or(Value::Null),
            )
        })
    };
    let list = |op: &Path| -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, raw) = http(op, "GET", "/v1/approvals", None, None);
            let v: Value = serde_json::from_slice(&raw).unwrap();
            let a = v["approvals"].as_array().unwrap().clone();
            if !a.is_empty() {
                return a;
            }
            assert!(Instant::now() < deadline, "no bind approval arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let post = |op: &Path, a: &Value, decision: &str| {
        let body = json!({"decision": decision, "hash": a["hash"]}).to_string();
        let path = format!("/v1/approvals/{}", a["approval_id"].as_str().unwrap());
        http(
            op,
            "POST",
            &path,
            None,
            Some(("application/json", body.as_bytes())),
        )
        .0
    };
    // Denied: no session.
    let t = bind(agent.clone());
    let a = list(&op)[0].clone();
    assert_eq!(a["kind"], "session_profile");
    assert_eq!(a["profile"], "dev");
    assert_eq!(post(&op, &a, "deny"), 200);
    let (status, v) = t.join().unwrap();
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "approval_denied");
    // Approved: the session exists with the profile.
    let t = bind(agent.clone());
    let a = list(&op)[0].clone();
    assert_eq!(post(&op, &a, "approve"), 200);
    let (status, v) = t.join().unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["profile"], "dev");
    // The default profile needs nobody.
    let (status, _, _) = http(&agent, "POST", "/v1/sessions", None, None);
    assert_eq!(status, 201);
    let _ = child.kill();
    let _ = child.wait();
}

/// `execbox approvals watch` on a pseudo-terminal: answers `answer` at the first prompt and
/// returns everything the terminal showed once the decision was reported.
fn watch_on_a_terminal(operator_socket: &Path, answer: &str) -> String {
    let sock = operator_socket.to_str().unwrap();
    on_a_pty(
        &[EXECBOX.as_str(), "approvals", "watch", "--socket", sock],
        "[a]pprove once",
        answer,
        Some("approve ("),
    )
    .1
}

#[test]
fn watch_renders_escape_sequences_harmlessly_and_approves() {
    let d = daemon("");
    let (_, token) = d.session();
    // Would clear the screen and home the cursor if printed raw; a bidi override too.
    // Issue 15 item 15: and characters that show nothing (word joiner, a tag character, a
    // paragraph separator, U+061C, U+FFF9).
    let command =
        "x=echo; $x '\u{1b}[2J\u{1b}[H' \u{202e}txt.exe '\u{2060}\u{E0041}\u{2029}\u{61C}\u{FFF9}'";
    let t = exec_async(
        &d,
        &token,
        json!({"command": command, "env": {"SECRET_NAME": "v"}}),
    );
    let a = next_pending(&d, &[]);
    let shown = watch_on_a_terminal(&d.operator(), "a");
    assert!(
        !shown.contains([
            '\u{1b}',
            '\u{202e}',
            '\u{2060}',
            '\u{E0041}',
            '\u{2029}',
            '\u{61C}',
            '\u{FFF9}'
        ]),
        "raw control characters reached the terminal: {shown:?}"
    );
    assert!(shown.contains("\\u{2060}\\u{e0041}\\u{2029}"), "{shown}");
    assert!(shown.contains("\\x1b[2J"), "{shown}");
    assert!(shown.contains("\\u{202e}"), "{shown}");
    for part in [
        a["approval_id"].as_str().unwrap(),
        "non-literal-program",
        "SECRET_NAME",
        "peer uid",
        a["session"].as_str().unwrap(),
        a["hash"].as_str().unwrap(),
        "approve (once)",
    ] {
        assert!(shown.contains(part), "{part:?} not shown: {shown}");
    }
    let (_, events) = t.join().unwrap();
    assert_eq!(exit_of(&events)["code"], 0, "{events:?}");
    assert_eq!(
        stdout_of(&events),
        "\u{1b}[2J\u{1b}[H \u{202e}txt.exe \u{2060}\u{E0041}\u{2029}\u{61C}\u{FFF9}\n".as_bytes()
    );
}

#[test]
fn the_audit_log_of_a_run_verifies_and_records_one_job_in_order() {
    let mut d = daemon("");
    let (session, token) = d.session();
    let t = exec_async(&d, &token, json!({"command": "x=echo; $x audited"}));
    let a = next_pending(&d, &[]);
    assert_eq!(decide(&d, &a, "approve", "once").0, 200);
    let (_, events) = t.join().unwrap();
    let job = exit_of(&events)["job"].as_str().unwrap().to_string();
    // An allowed job and a refused token, for the other record types.
    let (_, events) = d.exec(&token, json!({"command": "echo plain"}));
    let plain = exit_of(&events)["job"].as_str().unwrap().to_string();
    let (status, _) = d.json("GET", "/v1/jobs", Some("s_x.bad"), None);
    assert_eq!(status, 401);
    // The operator socket serves the records too.
    let (status, _, raw) = http(&d.operator(), "GET", "/v1/audit?since=0", None, None);
    assert_eq!(status, 200);
    assert!(text(&raw).contains(&job));
    // Queue time is counted apart for the job that waited for an operator.
    let (_, _, raw) = http(&d.operator(), "GET", "/metrics", None, None);
    let m = text(&raw);
    for line in [
        "execbox_job_queue_seconds_count{approval=\"waited\"} 1",
        "execbox_job_queue_seconds_count{approval=\"none\"} 1",
        "execbox_job_duration_seconds_count 2",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
    }
    assert!(d.terminate().success());

    let log = d.dir.path().join("audit.jsonl");
    let o = Command::new(&*EXECBOX)
        .args(["audit", "verify", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    ok(&o);
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types = |job: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["job"] == job)
            .map(|r| r["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        types(&job),
        [
            "exec_request",
            "verdict",
            "approval_requested",
            "approval_granted",
            "job_start",
            "job_exit"
        ],
        "{records:?}"
    );
    assert_eq!(
        types(&plain),
        ["exec_request", "verdict", "job_start", "job_exit"]
    );
    let granted = records
        .iter()
        .find(|r| r["type"] == "approval_granted")
        .unwrap();
    assert_eq!(granted["operator_uid"], my_uid());
    assert_eq!(granted["scope"], "once");
    assert_eq!(records[0]["type"], "daemon_start");
    assert_eq!(records[0]["config_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(records.last().unwrap()["type"], "daemon_stop");
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "session_create" && r["session"] == session.as_str())
    );
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "auth" && r["ok"] == false)
    );
    let start = records.iter().find(|r| r["type"] == "job_start").unwrap();
    assert!(
        start["limits"]["wall_time_ms"].as_u64().is_some(),
        "{start}"
    );
    let exit = records
        .iter()
        .find(|r| r["type"] == "job_exit" && r["job"] == job.as_str())
        .unwrap();
    assert_eq!(exit["code"], 0);
    assert!(exit["usage"]["wall_ms"].as_u64().is_some(), "{exit}");
}

#[test]
fn a_full_audit_disk_refuses_jobs_and_the_daemon_keeps_answering() {
    if !root_only("a_full_audit_disk_refuses_jobs_and_the_daemon_keeps_answering") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("execbox-fullaudit-")
        .tempdir()
        .unwrap();
    let mnt = dir.path().join("log");
    let _mount = TinyTmpfs::mount(&mnt);
    let d = daemon(&format!(
        "[audit]\npath = \"{}/audit.jsonl\"\n",
        mnt.display()
    ));
    let (session, token) = d.session();
    let (_, events) = d.exec(&token, json!({"command": "echo before"}));
    assert_eq!(stdout_of(&events), b"before\n");

    // Fill the file system.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1k", "count=128"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // The log's last page may still have room for a record or two: run until the first
    // refusal (a few jobs at most), then every new job is refused.
    let ws = d.dir.path().join("state/workspaces").join(&session);
    let mut refused_at = None;
    for i in 0..20 {
        let (status, v) = d.exec(&token, json!({"command": format!("touch m{i}")}));
        if status == 503 {
            assert_eq!(v[0]["error"]["code"], "audit_unavailable", "{v:?}");
            refused_at = Some(i);
            break;
        }
    }
    let first = refused_at.expect("no job was refused on a full audit disk");
    for cmd in ["touch marker", "x=touch; $x marker"] {
        let (status, v) = d.exec(&token, json!({"command": cmd}));
        assert_eq!(status, 503, "{cmd}: {v:?}");
        assert_eq!(v[0]["error"]["code"], "audit_unavailable", "{v:?}");
    }
    assert!(!ws.join(format!("m{first}")).exists(), "a refused job ran");
    assert!(!ws.join("marker").exists(), "a refused job ran");
    assert_eq!(pending_count(&d), 0);
    // Still answering: the operator socket, the agent's job listing.
    let (status, v) = operator(&d, "GET", "/v1/sessions", None);
    assert_eq!(status, 200);
    let (status, v2) = d.json("GET", "/v1/jobs", Some(&token), None);
    assert_eq!(status, 200, "{v2}");
    assert!(v.to_string().contains(&session));
    let (status, _, body) = http(&d.operator(), "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        !text(&body).contains("execbox_audit_failures_total 0"),
        "{}",
        text(&body)
    );

    // Space again: jobs run again, the chain continues and verifies.
    std::fs::remove_file(&filler).unwrap();
    let (_, events) = d.exec(&token, json!({"command": "echo after"}));
    assert_eq!(stdout_of(&events), b"after\n");
    let o = Command::new(&*EXECBOX)
        .args(["audit", "verify", "--log"])
        .arg(mnt.join("audit.jsonl"))
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn ending_the_session_withdraws_its_pending_requests() {
    let d = daemon("");
    let (session, token) = d.session();
    let t = exec_async(&d, &token, json!({"command": "x=echo; $x never"}));
    let a = next_pending(&d, &[]);
    let (status, _) = d.json(
        "DELETE",
        &format!("/v1/sessions/{session}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let (_, events) = t.join().unwrap();
    assert_eq!(
        exit_of(&events)["error"],
        "approval_withdrawn",
        "{events:?}"
    );
    assert!(stdout_of(&events).is_empty());
    assert_eq!(pending_count(&d), 0);
    assert_eq!(decide(&d, &a, "approve", "once").0, 404);
}

#[test]
fn the_cli_lists_approves_only_with_yes_and_denies_with_a_reason() {
    let d = daemon("");
    let (_, token) = d.session();
    let cli = |args: &[&str]| {
        Command::new(&*EXECBOX)
            .arg("approvals")
            .args(args)
            .env("EXECBOX_OPERATOR_SOCKET", d.operator())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let req = json!({"command": "x=echo; $x cli"});
    let t = exec_async(&d, &token, req.clone());
    let a = next_pending(&d, &[]);
    let id = a["approval_id"].as_str().unwrap();
    let v: Value = serde_json::from_str(&ok(&cli(&["list", "--json"]))).unwrap();
    assert_eq!(v["approvals"][0]["approval_id"], id);
    assert_eq!(v["approvals"][0]["hash"], a["hash"]);
    assert!(ok(&cli(&["list"])).contains(id));
    // No terminal and no --yes: nothing is approved.
    let o = cli(&["approve", id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--yes"), "{}", text(&o.stderr));
    assert_eq!(pending_count(&d), 1);
    ok(&cli(&["deny", id, "--reason", "not today"]));
    let (_, events) = t.join().unwrap();
    let exit = exit_of(&events);
    assert_eq!(exit["error"], "approval_denied");
    assert!(
        exit["message"].as_str().unwrap().contains("not today"),
        "{exit}"
    );

    // approve --yes --scope session: runs, and the same request then runs unasked.
    let t = exec_async(&d, &token, req.clone());
    let b = next_pending(&d, &[id.into()]);
    let bid = b["approval_id"].as_str().unwrap();
    ok(&cli(&["approve", bid, "--scope", "session", "--yes"]));
    let (_, events) = t.join().unwrap();
    assert_eq!(stdout_of(&events), b"cli\n");
    let (_, events) = d.exec(&token, req);
    assert!(!was_pending(&events), "{events:?}");
    assert_eq!(stdout_of(&events), b"cli\n");
    // An id that is not pending: a clear failure.
    let o = cli(&["deny", bid]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no pending approval"),
        "{}",
        text(&o.stderr)
    );
}
