//! Load: a thousand concurrent jobs through one daemon, from many client connections. Every
//! byte of every job's output must reach the client that ran it, and the daemon's memory must
//! stay bounded. `EXECBOX_LOAD_JOBS` / `EXECBOX_LOAD_ROUNDS` scale it (`cargo xtask load`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::{Daemon, exit_of, output};
use super::harness::*;
use super::sandbox::TestCgroupParent;

/// Lines of payload per stream and job (about 3 KiB each).
const LINES: usize = 64;

/// What job `i` writes on `stream`: every line names the job and the stream.
fn payload(i: usize, stream: &str) -> String {
    (0..LINES)
        .map(|k| format!("{stream}-{i}-{k}-abcdefghijklmnopqrstuvwxyz0123456789\n"))
        .collect()
}

/// The job: sleep 1–2 s (so all run at once), then the payload on both streams.
fn job_script(i: usize) -> String {
    format!(
        "sleep 1.{}; k=0; while [ $k -lt {LINES} ]; do \
         echo out-{i}-$k-abcdefghijklmnopqrstuvwxyz0123456789; \
         echo err-{i}-$k-abcdefghijklmnopqrstuvwxyz0123456789 >&2; k=$((k+1)); done",
        i % 10
    )
}

/// VmRSS of `pid` in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One `POST /v1/exec` over its own connection; the de-chunked NDJSON events.
fn exec_raw(sock: &Path, token: &str, body: &Value) -> Result<Vec<Value>, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    let body = body.to_string();
    write!(
        s,
        "POST /v1/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head: {:?}", text(&raw)))?;
    let head = text(&raw[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}\n{}", text(&raw[split + 4..])));
    }
    // Chunked: size line, data, CRLF.
    let mut body = Vec::new();
    let mut b = &raw[split + 4..];
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(text(&b[..eol]).trim(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        if n == 0 {
            break;
        }
        let end = eol + 2 + n;
        if b.len() < end + 2 {
            return Err("a chunk cut short".into());
        }
        body.extend_from_slice(&b[eol + 2..end]);
        b = &b[end + 2..];
    }
    body.split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| format!("event: {e}")))
        .collect()
}

/// The descriptors the test itself needs: one connection per job.
fn raise_own_nofile(need: u64) {
    let pid = std::process::id().to_string();
    let o = Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--raw",
            "--noheadings",
            "--output",
            "HARD",
        ])
        .output()
        .unwrap();
    let hard: u64 = text(&o.stdout).trim().parse().unwrap_or(0);
    if hard < need {
        missing(&format!(
            "RLIMIT_NOFILE hard limit {hard} < {need} for the load test"
        ));
        return;
    }
    let st = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_thousand_concurrent_jobs_deliver_every_byte_to_their_own_client_in_bounded_memory() {
    let n: usize = std::env::var("EXECBOX_LOAD_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::var("EXECBOX_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    raise_own_nofile(n as u64 + 512);
    let parent = TestCgroupParent::new();
    let d = Daemon::start_in_cgroup(
        &parent.relative,
        &format!(
            "[limits]\nmax_jobs = {n}\nmax_jobs_per_session = {n}\npeer_rate = 1000000\nsession_rate = 1000000\n"
        ),
    );
    let daemon = d.pid();
    let spawner = super::faults::children_of(daemon);
    assert_eq!(spawner.len(), 1, "{spawner:?}");
    let spawner = spawner[0];
    // Several agents (sessions), each with many connections.
    let tokens: Vec<String> = (0..8).map(|_| d.session().1).collect();
    std::thread::sleep(Duration::from_millis(200));
    let idle = (rss_kib(daemon), rss_kib(spawner));

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    peak.0 = peak.0.max(rss_kib(daemon));
                    peak.1 = peak.1.max(rss_kib(spawner));
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        let t = Instant::now();
        let clients: Vec<_> = (0..n)
            .map(|i| {
                let sock = d.agent();
                let token = tokens[i % tokens.len()].clone();
                std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || {
                        let body = json!({"argv": ["/bin/sh", "-c", job_script(i)]});
                        (i, exec_raw(&sock, &token, &body))
                    })
                    .unwrap()
            })
            .collect();
        let mut failures = vec![];
        for c in clients {
            let (i, result) = c.join().unwrap();
            let events = match result {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("job {i}: {e}"));
                    continue;
                }
            };
            let (out, err) = (output(&events, "stdout"), output(&events, "stderr"));
            // Content, not only length: another job's bytes would name another number.
            if out != payload(i, "out").as_bytes() || err != payload(i, "err").as_bytes() {
                failures.push(format!(
                    "job {i}: stdout {} bytes, stderr {} bytes, not its own payload: {:?}",
                    out.len(),
                    err.len(),
                    text(&out)
                        .lines()
                        .find(|l| !l.starts_with(&format!("out-{i}-")))
                ));
                continue;
            }
            let exit = exit_of(&events);
            if exit["code"] != 0 || exit["stdout_bytes"] != out.len() as u64 {
                failures.push(format!("job {i}: {exit}"));
            }
        }
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        eprintln!(
            "load round {round}: {n} concurrent jobs in {took:.1?}; RSS KiB daemon idle {} peak {}, spawner idle {} peak {}",
            idle.0, peak.0, idle.1, peak.1
        );
        assert!(
            failures.is_empty(),
            "{} of {n} jobs failed; first: {:#?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        // Generous: idle + 256 KiB per job + 64 MiB of allocator slack.
        let bound = |idle: u64| idle + 256 * n as u64 + (64 << 10);
        assert!(
            peak.0 <= bound(idle.0),
            "daemon RSS {} KiB > {} KiB",
            peak.0,
            bound(idle.0)
        );
        assert!(
            peak.1 <= bound(idle.1),
            "spawner RSS {} KiB > {} KiB",
            peak.1,
            bound(idle.1)
        );
        // Nothing left behind.
        assert_eq!(parent.jobs(), Vec::<String>::new(), "job cgroups left");
        let (_, v) = d.json("GET", "/v1/jobs", Some(&tokens[0]), None);
        let running = v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["state"] == "running")
            .count();
        assert_eq!(running, 0, "{v}");
    }
    // The spawner reaps exited supervisors at least once a second.
    let t = Instant::now();
    while !super::faults::children_of(spawner).is_empty() {
        let left: Vec<String> = super::faults::children_of(spawner)
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
            .collect();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "supervisors left: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = host_processes_with("abcdefghijklmnopqrstuvwxyz0123456789");
    assert!(left.is_empty(), "job processes left: {left:?}");
}
