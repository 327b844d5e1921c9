//! Issue 15's daemon abuse cases, scaled down to seconds: descriptor exhaustion by slow
//! bodies, connection caps per uid, and the refusal log flood. Each attack sits beside a
//! positive control showing the same daemon still serves what it should.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::daemon::{Daemon, http, my_uid};
use super::harness::*;

/// A connection that sent its headers and one byte of a 1000-byte body, then stalls.
fn slow_body(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    let head = "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n{";
    // The daemon may already have refused and closed it: that is an answer, read below.
    let _ = s.write_all(head.as_bytes());
    s
}

/// The status of the reply on `s`, if one arrives within `wait`.
fn status_within(s: &mut UnixStream, wait: Duration) -> Option<(u16, String)> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let t = text(&raw);
    let code = t.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, t))
}

/// What has arrived on `s` so far, without waiting: `Some` once the reply is complete (the
/// daemon closed the connection).
fn reply_now(s: &mut UnixStream) -> Option<(u16, String)> {
    s.set_nonblocking(true).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    if !closed && raw.is_empty() {
        return None;
    }
    let t = text(&raw);
    Some((t.split_whitespace().nth(1)?.parse().ok()?, t))
}

/// `POST /v1/sessions` until it answers 201 (connection places are given back when the
/// daemon has finished with a closed connection, a moment after the client saw it close).
fn session_eventually(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = UnixStream::connect(d.agent()).unwrap();
        let _ = s.write_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        let got = status_within(&mut s, Duration::from_secs(10));
        if matches!(got, Some((201, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agents were never served again: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(d: &Daemon, name: &str) -> u64 {
    let (status, _, body) = http(&d.operator(), "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    text(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("execbox_{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn slow_bodies_cannot_take_every_descriptor_and_the_operator_socket_answers() {
    // The attack (issue 15 item 6): connections that trickle a body hold a descriptor each
    // until the daemon has none left; then the operator CLI and other agents time out. Scaled
    // down: the daemon gets 256 descriptors and 120 such connections are opened.
    let profiles = fixture("open.toml").parent().unwrap().to_path_buf();
    let d = Daemon::start_wrapped(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &profiles,
        "open",
        "[limits]\nmax_jobs = 4\nmax_connections = 1000\nmax_connections_per_uid = 1000\n\
         body_timeout = \"5s\"\n",
        &["/usr/bin/prlimit", "--nofile=256:256"],
    );
    // 256 descriptors - (128 + 6 × 4 jobs + 32 operator places) = 72 agent connections.
    assert!(
        d.log().contains("lowered"),
        "the caps were fitted: {}",
        d.log()
    );
    // The start probe's connection may still be counted: wait until none is.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&d, "connections_open{socket=\"agent\"}") != 0 {
        assert!(Instant::now() < deadline, "an agent connection stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = Instant::now();
    let held: Vec<UnixStream> = (0..120).map(|_| slow_body(&d.agent())).collect();
    // The ones over the cap are answered at once with 429 and closed; the rest wait.
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    let mut waiting = Vec::new();
    for mut s in held {
        match reply_now(&mut s) {
            Some((429, t)) => {
                assert!(t.contains("too_many_connections"), "{t}");
                refused += 1;
            }
            Some(other) => panic!("unexpected reply while the body is unsent: {other:?}"),
            None => waiting.push(s),
        }
    }
    assert_eq!(waiting.len(), 72, "admitted up to the fitted cap");
    assert_eq!(refused, 120 - 72);
    // Positive control, while every agent place is taken: the operator socket answers, and
    // a new agent connection gets a prompt 429 instead of hanging.
    assert_eq!(metric(&d, "connections_refused_total"), 48, "{}", d.log());
    // (Not `http()`: the daemon may answer and close before the request is written, and
    // writing then fails with EPIPE; the answer is still there to read.)
    let mut late = slow_body(&d.agent());
    let (status, t) = status_within(&mut late, Duration::from_secs(10)).expect("an answer");
    assert_eq!(status, 429, "{t}");
    // The body timeout closes the trickling connections (408), freeing their places.
    for mut s in waiting {
        let left = Duration::from_secs(30).saturating_sub(opened.elapsed());
        let (code, t) = status_within(&mut s, left).expect("closed by limits.body_timeout");
        assert_eq!(code, 408, "{t}");
        assert!(t.contains("body_timeout"), "{t}");
    }
    session_eventually(&d);
    // The refusals did not flood the log: at most one line per second of the test.
    let lines = d.log().matches("connection refused").count() as u64;
    assert!(
        lines <= opened.elapsed().as_secs() + 2,
        "{lines} lines in {:?}",
        opened.elapsed()
    );
}

#[test]
fn one_uid_cannot_hold_more_than_its_connections_and_other_uids_still_get_in() {
    let other = is_root();
    let allow = if other {
        format!("[allow]\nuids = [{}, 65534]\n", my_uid())
    } else {
        format!("[allow]\nuids = [{}]\n", my_uid())
    };
    let d = Daemon::start_with(
        &allow,
        "[limits]\nmax_connections = 16\nmax_connections_per_uid = 4\n",
    );
    let held: Vec<UnixStream> = (0..4).map(|_| slow_body(&d.agent())).collect();
    // Give the daemon the time to accept them (they are counted at accept).
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let mut s = slow_body(&d.agent());
        match status_within(&mut s, Duration::from_millis(500)) {
            Some((429, t)) => {
                assert!(t.contains("too_many_connections_for_uid"), "{t}");
                break s;
            }
            _ => assert!(Instant::now() < deadline, "the fifth was never refused"),
        }
    };
    drop(s.shutdown(std::net::Shutdown::Both));
    // Controls: the operator socket answers; another uid gets a session (root pass only:
    // it needs setpriv to be that uid).
    assert!(metric(&d, "connections_refused_total") >= 1);
    if other {
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
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}"])
            .arg("--unix-socket")
            .arg(d.agent())
            .arg("http://x/v1/sessions")
            .output()
            .unwrap();
        let out = text(&o.stdout);
        assert!(out.ends_with("\n201"), "{out} {}", text(&o.stderr));
    }
    // Closing them gives their places back.
    drop(held);
    session_eventually(&d);
}

#[test]
fn refused_peers_do_not_flood_the_log() {
    if !root_only("refused_peers_do_not_flood_the_log") {
        return;
    }
    // Issue 15 item 9: one warning per refused connection (94 MB in 25 s). Scaled down: 300
    // connections of uid 65534, which reaches the socket but is not allowed.
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
    let t = Instant::now();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n"])
        .arg("--unix-socket")
        .arg(d.agent())
        .arg("http://x/v1/jobs?n=[1-300]")
        .output()
        .unwrap();
    let took = t.elapsed();
    let codes = text(&o.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "403").count(),
        300,
        "{codes} {}",
        text(&o.stderr)
    );
    assert_eq!(metric(&d, "peers_refused_total"), 300);
    let log = d.log();
    let lines = log.matches("peer refused").count() as u64;
    // Positive control: the first refusal is logged at once.
    assert!(lines >= 1, "{log}");
    assert!(
        lines <= took.as_secs() + 2,
        "{lines} refusal lines in {took:?}: {log}"
    );
    // Nothing is lost: a later line counts what was folded into it.
    std::thread::sleep(Duration::from_millis(1100));
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["curl", "-s", "-o", "/dev/null"])
        .arg("--unix-socket")
        .arg(d.agent())
        .arg("http://x/v1/jobs")
        .output()
        .unwrap();
    assert!(o.status.success());
    let log = d.log();
    let folded: u64 = log
        .lines()
        .filter(|l| l.contains("peer refused"))
        .filter_map(|l| {
            let i = l.find("allowlist (")? + "allowlist (".len();
            l[i..].split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    let lines = log.matches("peer refused").count() as u64;
    assert_eq!(folded + lines, 301, "{log}");
}

/// Every audit file of the log at `log` (archive, rotated, live), total bytes.
fn audit_bytes(log: &Path) -> u64 {
    execbox::audit::log_files(log)
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn huge_requests_cannot_rotate_the_audit_trail_away() {
    // Issue 15 item 4: 1 MiB requests made the daemon write 575 MB of audit in 5 s and the
    // rotation deleted the oldest records; `verify` still said ok. Scaled down: 200 KiB
    // commands against 16 KiB files, keep = 1, fields of 1 KiB, 4 KiB/s of audit per session.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("audit.jsonl");
    let mut d = Daemon::start_profile(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &source_path("policies"),
        "default",
        &format!(
            "[limits]\npeer_rate = 100000\nsession_rate = 100000\n\
             [audit]\npath = {log:?}\nmax_bytes = \"16KiB\"\nkeep = 1\nmax_field_bytes = \"1KiB\"\n\
             session_rate = \"4KiB\"\nuid_rate = \"8KiB\"\n"
        ),
    );
    let (_, token) = d.session();
    let exec = |arg: &str| {
        let body = json!({"argv": ["rm", "-rf", "/", arg]});
        super::daemon::exec_on(&d.agent(), &token, body)
    };
    // Control: a small request is judged (denied: rm -rf /) and recorded.
    let (status, events) = exec("x");
    assert_eq!(status, 200, "{events:?}");
    assert_eq!(events.last().unwrap()["error"], "refused_by_policy");
    // The attack: a command too large to analyse fails closed to approve; the agent
    // withdraws it as soon as it is pending, and sends the next.
    let big = format!("echo {}", "A".repeat(200 << 10));
    // Until the session's volume runs out (about 8 requests), then 2 s more of refusals.
    let t = Instant::now();
    let (mut judged, mut limited) = (0u64, 0u64);
    let mut until = t + Duration::from_secs(120);
    while Instant::now() < until {
        match exec_and_withdraw(&d.agent(), &token, &big) {
            (200, _) => judged += 1,
            (429, body) => {
                assert!(body.contains("audit_rate_limited"), "{body}");
                if limited == 0 {
                    until = Instant::now() + Duration::from_secs(2);
                }
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let took = t.elapsed().as_secs_f64();
    assert!(
        judged >= 1 && limited >= 1,
        "judged {judged}, limited {limited}"
    );
    // Bounded: the session's burst (10 s × 4 KiB/s) plus its rate for the time taken plus
    // one request's overdraft and the records around them — not 200 KiB per request.
    let bytes = audit_bytes(&log);
    let bound = (40 + 4 * (took.ceil() as u64 + 1) + 64) << 10;
    assert!(
        bytes < bound,
        "{bytes} bytes of audit > {bound} ({judged} judged)"
    );
    let all: String = execbox::audit::log_files(&log)
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let line = all
        .lines()
        .find(|l| l.contains("\"exec_request\"") && l.contains("sha256"))
        .expect("a bounded exec_request");
    assert!(line.len() < 8 << 10, "{}", line.len());
    assert!(
        all.contains("audit_rate_limited"),
        "the refusals are on the record"
    );
    // The session is served again once its volume drained.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = exec("x");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Stopped, so that no rotation runs while the files are listed and checked.
    d.terminate();
    // Rotation archived the oldest file instead of deleting it: the whole chain verifies.
    let archive = execbox::audit::archive_dir(&log);
    let mut archived: Vec<_> = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    archived.sort();
    assert!(!archived.is_empty());
    let verify = |extra: &[&str]| {
        Command::new(&*EXECBOX)
            .args(["audit", "verify", "--log"])
            .arg(&log)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text_of(&o));
    assert!(text(&o.stdout).contains("(seq 1..="), "{}", text_of(&o));
    // Someone removes the oldest file: verify fails at the anchor, unless told it was
    // archived deliberately.
    std::fs::remove_file(&archived[0]).unwrap();
    let o = verify(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text_of(&o));
    assert!(
        text(&o.stderr).contains("not at its anchor"),
        "{}",
        text_of(&o)
    );
    assert_eq!(verify(&["--archived"]).status.code(), Some(0));
}

/// `POST /v1/exec` of `command`; disconnects as soon as the request is pending an approval.
/// Returns the status and what was read.
fn exec_and_withdraw(sock: &Path, token: &str, command: &str) -> (u16, String) {
    let body = json!({"command": command}).to_string();
    let mut s = UnixStream::connect(sock).unwrap();
    let head = format!(
        "POST /v1/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let t = text(&raw);
        if t.contains("pending_approval") || t.contains("\"exit\"") {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let t = text(&raw);
    let code = t
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, t)
}

fn text_of(o: &std::process::Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

#[test]
fn withdrawn_huge_requests_leave_only_excerpts_in_the_job_records() {
    // Issue 15 item 5: every refused or withdrawn job kept its argv (up to 1 MiB) among its
    // session's finished jobs, and GET /v1/jobs rendered them all (RSS 14 MB → 2 GB). Scaled
    // down: 20 requests of 200 KiB, withdrawn as soon as they are pending.
    let d = Daemon::start_profile(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        &source_path("policies"),
        "default",
        "[limits]\npeer_rate = 100000\nsession_rate = 100000\n",
    );
    let (_, token) = d.session();
    let big = format!("echo {}", "A".repeat(200 << 10));
    for _ in 0..20 {
        let (status, body) = exec_and_withdraw(&d.agent(), &token, &big);
        assert_eq!(status, 200, "{body}");
    }
    // Control: an ordinary request's record keeps its argv whole.
    let (status, events) = super::daemon::exec_on(&d.agent(), &token, json!({"argv": ["true"]}));
    assert_eq!(status, 200, "{events:?}");
    let (status, _, raw) = http(&d.agent(), "GET", "/v1/jobs", Some(&token), None);
    assert_eq!(status, 200);
    assert!(raw.len() < 21 * 8192, "GET /v1/jobs is {} bytes", raw.len());
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 21, "{v}");
    let cut: Vec<_> = jobs
        .iter()
        .filter(|j| !j["argv_omitted"].is_null())
        .collect();
    assert_eq!(cut.len(), 20);
    let whole: Vec<String> = vec!["/bin/bash".into(), "-c".into(), big.clone()];
    for j in cut {
        let kept: usize = j["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().len())
            .sum();
        assert!(kept <= 4096, "{kept}");
        assert_eq!(j["argv_omitted"]["bytes"], big.len() + 11);
        assert_eq!(
            j["argv_omitted"]["sha256"],
            execbox::config::sha256_hex(&serde_json::to_vec(&whole).unwrap())
        );
    }
    let plain = jobs.iter().find(|j| j["argv"] == json!(["true"])).unwrap();
    assert!(plain["argv_omitted"].is_null(), "{plain}");
}
