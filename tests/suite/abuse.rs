//! Issue 15's daemon abuse cases, scaled down to seconds: descriptor exhaustion by slow
//! bodies, connection caps per uid, and the refusal log flood. Each attack sits beside a
//! positive control showing the same daemon still serves what it should.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let (status, _, body) = http(&d.agent(), "GET", "/v1/jobs", None, None);
    assert_eq!(status, 429, "{}", text(&body));
    // The body timeout closes the trickling connections (408), freeing their places.
    for mut s in waiting {
        let left = Duration::from_secs(30).saturating_sub(opened.elapsed());
        let (code, t) = status_within(&mut s, left).expect("closed by limits.body_timeout");
        assert_eq!(code, 408, "{t}");
        assert!(t.contains("body_timeout"), "{t}");
    }
    let (status, _, body) = http(&d.agent(), "POST", "/v1/sessions", None, None);
    assert_eq!(status, 201, "agents are served again: {}", text(&body));
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
    // Closing one gives its place back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = http(&d.agent(), "POST", "/v1/sessions", None, None);
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "places never came back: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
