//! Fault injection against the real daemon: SIGKILL of the daemon and of its spawner with jobs
//! running, a client killed mid-stream, jobs that close their output or ignore SIGTERM, process
//! storms, and cgroup removal racing with process exit. Each case asserts the safe outcome next
//! to a control showing the probe sees what it should (docs/reliability.md lists them).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::{Daemon, cgroups_named, exec_on, exit_of, output};
use super::harness::*;
use super::sandbox::TestCgroupParent;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
#[track_caller]
pub(super) fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `POST /v1/exec` on a thread; the stream's raw bytes, however the connection ends (a killed
/// daemon cuts it mid-chunk, which the parsing helpers would not accept).
fn exec_raw(sock: &Path, token: &str, body: Value) -> std::thread::JoinHandle<Vec<u8>> {
    let sock = sock.to_path_buf();
    let token = token.to_string();
    std::thread::spawn(move || {
        let mut s = UnixStream::connect(sock).unwrap();
        let body = body.to_string();
        write!(
            s,
            "POST /v1/exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        raw
    })
}

/// `POST /v1/exec` on a thread, with the parsed events.
fn exec_async(sock: &Path, token: &str, body: Value) -> std::thread::JoinHandle<(u16, Vec<Value>)> {
    let sock = sock.to_path_buf();
    let token = token.to_string();
    std::thread::spawn(move || exec_on(&sock, &token, body))
}

/// Ids of the session's running jobs.
fn running_jobs(d: &Daemon, token: &str) -> Vec<String> {
    let (_, list) = d.json("GET", "/v1/jobs", Some(token), None);
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "running")
        .map(|j| j["job"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts the stream's exit event has `code` and `reason`; returns it.
#[track_caller]
fn assert_ended<'a>(events: &'a [Value], code: i64, reason: &str) -> &'a Value {
    let exit = exit_of(events);
    assert_eq!(
        (exit["code"].as_i64(), exit["reason"].as_str()),
        (Some(code), Some(reason)),
        "{exit}"
    );
    exit
}

/// Pids whose parent is `ppid`.
pub(super) fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so parse after the last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        if after.split(' ').nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

fn kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

fn audit_verify(log: &Path) -> std::process::Output {
    Command::new(&*EXECBOX)
        .args(["audit", "verify", "--log"])
        .arg(log)
        .output()
        .unwrap()
}

/// Starts `n` jobs in a new session of `d` through `launch`, each with a foreground and a
/// background process carrying `marker`; returns the clients and the job ids once all run.
fn start_marked_jobs<T>(
    d: &Daemon,
    n: usize,
    marker: &str,
    launch: impl Fn(&Path, &str, Value) -> std::thread::JoinHandle<T>,
) -> (Vec<std::thread::JoinHandle<T>>, Vec<String>) {
    let (_, token) = d.session();
    let script = format!("sleep {marker} & sleep {marker}; :");
    let clients = (0..n)
        .map(|_| {
            launch(
                &d.agent(),
                &token,
                json!({"argv": ["/bin/sh", "-c", script]}),
            )
        })
        .collect();
    wait_until(Duration::from_secs(20), "jobs did not start", || {
        host_processes_with(marker).len() >= 2 * n
    });
    let jobs = running_jobs(d, &token);
    assert_eq!(jobs.len(), n, "{jobs:?}");
    (clients, jobs)
}

/// A second `execbox serve` on the config `d` was started with (after `d`'s process died);
/// stopped with SIGTERM on drop.
struct Restarted {
    child: Child,
    log: std::path::PathBuf,
}

impl Restarted {
    fn start(d: &Daemon) -> Restarted {
        let log = d.dir.path().join("log.restarted");
        let child = Command::new(&*EXECBOX)
            .args(["serve", "--config"])
            .arg(d.dir.path().join("execbox.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let r = Restarted { child, log };
        let t = Instant::now();
        while UnixStream::connect(d.agent()).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the daemon did not restart: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

// ---- the daemon killed -------------------------------------------------------------------------

#[test]
fn a_sigkilled_daemon_takes_its_sandboxes_along_and_the_next_start_sweeps_their_cgroups() {
    // Our own cgroup parent: `execbox run`s of parallel tests sweep stale jobs below theirs.
    let parent = TestCgroupParent::new();
    let d = Daemon::start_in_cgroup(&parent.relative, "");
    let (clients, jobs) = start_marked_jobs(&d, 3, "4331.5", exec_raw);
    // Control: the probe sees each job's cgroup while it runs.
    for j in &jobs {
        assert!(!cgroups_named(j).is_empty(), "no cgroup found for {j}");
    }

    let spawner = children_of(d.pid());
    let spares_of = |pids: &[u32]| -> Vec<String> {
        let mut c = parent.children();
        c.retain(|c| {
            pids.iter()
                .any(|p| c.contains(&format!("execbox-run-{p}.")) && c.contains("-warm"))
        });
        c
    };
    // (As root on cgroup v1 the spawner builds job cgroups ahead; elsewhere there are none.)
    let had_spares = spares_of(&spawner).len();
    // A crash gives nobody a chance to clean up. A supervisor that is scheduled before its
    // parent-death signal lands sees the daemon's end of its cancel pipe close and removes its
    // job's cgroup itself (seen under load), which would leave nothing for the sweep to prove:
    // so the supervisors are stopped first. They still die by the parent-death chain below.
    for p in spawner.iter().flat_map(|s| children_of(*s)) {
        kill(p, "STOP");
    }
    kill(d.pid(), "KILL");
    // No orphans: the spawner, the supervisors and each sandbox's pid 1 die by their
    // parent-death signal, and with pid 1 the kernel kills its whole pid namespace.
    wait_until(
        Duration::from_secs(5),
        "sandboxes outlived the daemon",
        || host_processes_with("4331.5").is_empty(),
    );
    for c in clients {
        let _ = c.join();
    }
    // Nothing could remove the (now empty) job cgroups: they are the next start's to sweep.
    for j in &jobs {
        assert!(
            !cgroups_named(j).is_empty(),
            "{j}'s cgroup vanished without a sweep: the assertion below would prove nothing"
        );
    }

    // The audit log as the SIGKILL left it verifies (every append is whole or absent).
    let log = d.dir.path().join("audit.jsonl");
    let o = audit_verify(&log);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // A SIGKILL in the middle of an append would leave a torn last line: verify must not call
    // that a good chain (it cannot tell a crash from a truncation), and says where it is.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(br#"{"seq":999999,"ts":"2026-01-01T00:00:00.000Z","type":"job_st"#)
        .unwrap();
    drop(f);
    let o = audit_verify(&log);
    assert_ne!(o.status.code(), Some(0), "a torn record verified");
    assert!(text(&o.stderr).contains("truncated"), "{}", text(&o.stderr));

    // The next start cuts the torn record off (on the record), sweeps the stale cgroups and
    // serves.
    let r = Restarted::start(&d);
    for j in &jobs {
        assert!(
            cgroups_named(j).is_empty(),
            "stale cgroup of {j} survived the restart: {:?}\n{}",
            cgroups_named(j),
            r.log()
        );
    }
    assert!(
        r.log().contains("removed a stale job cgroup"),
        "{}",
        r.log()
    );
    // The killed spawner's spares went the same way.
    assert_eq!(spares_of(&spawner), Vec::<String>::new(), "of {had_spares}");
    let (_, token) = d.session();
    let (_, events) = d.exec(&token, json!({"argv": ["/bin/echo", "alive"]}));
    assert_eq!(output(&events, "stdout"), b"alive\n");
    let o = audit_verify(&log);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let records = std::fs::read_to_string(&log).unwrap();
    assert!(records.contains("torn_record_removed"), "{records}");
}

#[test]
fn a_sigkilled_spawner_takes_the_sandboxes_along_and_the_daemon_stops_for_a_restart() {
    let parent = TestCgroupParent::new();
    let d = Daemon::start_in_cgroup(&parent.relative, "");
    let (clients, jobs) = start_marked_jobs(&d, 2, "4332.5", exec_async);
    // The spawner is the daemon's only child process.
    let spawner = children_of(d.pid());
    assert_eq!(spawner.len(), 1, "{spawner:?}");
    // Control: the supervisors are the spawner's children.
    assert_eq!(children_of(spawner[0]).len(), 2);

    kill(spawner[0], "KILL");
    wait_until(
        Duration::from_secs(5),
        "sandboxes outlived the spawner",
        || host_processes_with("4332.5").is_empty(),
    );
    // Each client hears that its job was lost, not a made-up exit code of the command.
    for c in clients {
        let (status, events) = c.join().unwrap();
        assert_eq!(status, 200);
        assert_ended(&events, 137, "lost");
    }
    // Without its spawner the daemon cannot run a job: it stops with a failure status (the
    // service manager restarts it), instead of answering every job with an error.
    let pid = d.pid();
    wait_until(Duration::from_secs(10), "the daemon kept running", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(true)
    });
    assert!(d.log().contains("spawner"), "{}", d.log());
    let r = Restarted::start(&d);
    for j in &jobs {
        assert!(cgroups_named(j).is_empty(), "{j}: {}", r.log());
    }
    let (_, token) = d.session();
    let (_, events) = d.exec(&token, json!({"argv": ["/bin/echo", "alive"]}));
    assert_eq!(output(&events, "stdout"), b"alive\n");
    let o = audit_verify(&d.dir.path().join("audit.jsonl"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

// ---- clients and jobs that misbehave -----------------------------------------------------------

#[test]
fn a_client_killed_mid_stream_loses_its_job_and_no_one_else_s() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    let other = exec_async(
        &d.agent(),
        &token,
        json!({"argv": ["/bin/sh", "-c", "sleep 1.5; echo other done"]}),
    );
    // A real client process (curl, as an agent would use), killed while its job streams.
    let body = json!({"argv": ["/bin/sh", "-c", "echo streaming; sleep 4333.5"]}).to_string();
    let mut curl = Command::new("curl")
        .args(["-sS", "-N", "--unix-socket"])
        .arg(d.agent())
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg("http://x/v1/exec")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "the job did not start", || {
        !host_processes_with("4333.5").is_empty()
    });
    let job = running_jobs(&d, &token)
        .into_iter()
        .find(|j| {
            let (_, v) = d.json("GET", &format!("/v1/jobs/{j}"), Some(&token), None);
            v["argv"].to_string().contains("4333.5")
        })
        .expect("the streaming job is listed");
    assert!(
        !cgroups_named(&job).is_empty(),
        "control: its cgroup exists"
    );

    curl.kill().unwrap();
    let _ = curl.wait();
    wait_until(
        Duration::from_secs(5),
        "the job outlived its client",
        || host_processes_with("4333.5").is_empty(),
    );
    wait_until(Duration::from_secs(5), "the job's cgroup stayed", || {
        cgroups_named(&job).is_empty()
    });
    // The supervisor removes the cgroup before it reports; the daemon then writes `job_exit`
    // (an fsync) and only then marks the job finished: allow for that on a loaded machine.
    let mut v = serde_json::Value::Null;
    wait_until(
        Duration::from_secs(5),
        "the job was never marked finished",
        || {
            v = d
                .json("GET", &format!("/v1/jobs/{job}"), Some(&token), None)
                .1;
            v["state"] == "finished"
        },
    );
    assert_eq!(v["exit"]["reason"], "cancelled", "{v}");
    // The other client's job, running alongside, was not touched.
    let (status, events) = other.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(output(&events, "stdout"), b"other done\n");
    assert_eq!(exit_of(&events)["code"], 0);
}

#[test]
fn a_job_that_closes_its_output_still_reports_how_it_ended() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    // Closed stdout and stderr, then a second of work and its own exit code: the stream stays
    // open until the exit, which carries that code.
    let (_, events) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c", "echo before; exec >&- 2>&-; sleep 1; exit 7"]}),
    );
    assert_eq!(output(&events, "stdout"), b"before\n");
    let exit = assert_ended(&events, 7, "exited");
    assert!(exit["usage"]["wall_ms"].as_u64().unwrap() >= 1000, "{exit}");

    // The same until the wall clock runs out: ended by the timeout, reported as one.
    let t = Instant::now();
    let (_, events) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c", "echo before; exec >&- 2>&-; sleep 4334.5"], "timeout": "1s"}),
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(output(&events, "stdout"), b"before\n");
    assert_ended(&events, 124, "timeout");
    assert!(host_processes_with("4334.5").is_empty());
}

#[test]
fn a_job_that_ignores_sigterm_is_still_ended_by_cancel_and_by_the_timeout() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    // Control: inside the sandbox the trap works, SIGTERM does not end the shell.
    let (_, events) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c", "trap '' TERM; kill -TERM $$; echo survived"]}),
    );
    assert_eq!(output(&events, "stdout"), b"survived\n");

    let stubborn = |marker: &str| json!({"argv": ["/bin/sh", "-c", format!("trap '' TERM; sleep {marker} & wait; wait; wait")]});
    // Cancel: SIGTERM first, then the cgroup kill, which cannot be ignored.
    let h = exec_async(&d.agent(), &token, stubborn("4335.5"));
    wait_until(Duration::from_secs(20), "the job did not start", || {
        !host_processes_with("4335.5").is_empty()
    });
    let job = running_jobs(&d, &token).pop().unwrap();
    let t = Instant::now();
    let (status, _) = d.json("DELETE", &format!("/v1/jobs/{job}"), Some(&token), None);
    assert_eq!(status, 202);
    let (_, events) = h.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t.elapsed()
    );
    assert_ended(&events, 137, "cancelled");
    assert!(host_processes_with("4335.5").is_empty());

    // Timeout: the same job, ended by the wall clock.
    let t = Instant::now();
    let mut body = stubborn("4336.5");
    body["timeout"] = json!("1s");
    let (_, events) = d.exec(&token, body);
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "timeout took {:?}",
        t.elapsed()
    );
    let exit = assert_ended(&events, 124, "timeout");
    let wall = exit["usage"]["wall_ms"].as_u64().unwrap();
    assert!((1000..5000).contains(&wall), "{exit}");
    assert!(host_processes_with("4336.5").is_empty());
}

#[test]
fn thousands_of_short_processes_complete_and_a_fork_bomb_ends_with_reason_pids() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    // 5000 processes one after another: never more than a few at once, so the pids limit
    // (512 in the test profile) is never hit and every one ran.
    let t = Instant::now();
    let (_, events) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c", "i=0; while [ $i -lt 5000 ]; do /bin/true; i=$((i+1)); done; echo $i"],
               "limits": {"pids": 32}}),
    );
    let took = t.elapsed();
    assert_eq!(output(&events, "stdout"), b"5000\n");
    let exit = assert_ended(&events, 0, "exited");
    assert_eq!(exit["usage"]["pids_max_hits"], 0, "{exit}");
    eprintln!("5000 processes in one job: {took:?}");

    // A fork bomb under the same limit: the shell's fork fails at the limit, the job ends,
    // and the reason names the limit. Nothing survives.
    let t = Instant::now();
    let (_, events) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c", "while :; do sleep 4337.5 & done"], "limits": {"pids": 32}}),
    );
    let exit = exit_of(&events);
    assert_eq!(exit["reason"], "pids", "{exit}");
    assert_ne!(exit["code"], 0, "{exit}");
    assert!(
        exit["usage"]["pids_max_hits"].as_u64().unwrap() > 0,
        "{exit}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(host_processes_with("4337.5").is_empty());
}

#[test]
fn cgroup_removal_racing_with_exiting_children_leaks_nothing_and_hangs_nothing() {
    let parent = TestCgroupParent::new();
    let d = Daemon::start_in_cgroup(
        &parent.relative,
        "[limits]\nmax_jobs = 64\nmax_jobs_per_session = 64\npeer_rate = 100000\nsession_rate = 100000\n",
    );
    let (_, token) = d.session();
    // Control: a running job's cgroup is seen below our parent.
    let h = exec_async(&d.agent(), &token, json!({"argv": ["/bin/sleep", "0.5"]}));
    wait_until(Duration::from_secs(10), "no job cgroup appeared", || {
        !parent.jobs().is_empty()
    });
    assert_eq!(exit_of(&h.join().unwrap().1)["code"], 0);

    // Each job's children double-fork (re-parented to the sandbox's pid 1) and exit around
    // the moment the command itself exits: before, during and after the cgroup teardown.
    let rounds: usize = std::env::var("EXECBOX_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let script = "for d in 0 0.001 0.005 0.01 0.02; do ( (sleep $d; :) & ); done; echo ok";
    for round in 0..rounds {
        let jobs: Vec<_> = (0..12)
            .map(|_| {
                exec_async(
                    &d.agent(),
                    &token,
                    json!({"argv": ["/bin/sh", "-c", script], "timeout": "20s"}),
                )
            })
            .collect();
        for j in jobs {
            let (status, events) = j.join().unwrap();
            assert_eq!(status, 200, "{events:?}");
            assert_eq!(
                output(&events, "stdout"),
                b"ok\n",
                "round {round}: {events:?}"
            );
            let exit = exit_of(&events);
            assert_eq!(exit["reason"], "exited", "round {round}: {exit}");
            assert!(
                exit["usage"]["wall_ms"].as_u64().unwrap() < 10_000,
                "hung: {exit}"
            );
        }
        assert_eq!(
            parent.jobs(),
            Vec::<String>::new(),
            "round {round}: leaked cgroups"
        );
    }
}
