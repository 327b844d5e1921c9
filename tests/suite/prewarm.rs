//! Parts of a sandbox the daemon's spawner builds ahead (`sandbox::warm`): each job still gets
//! its own, never one another job had, and they work like ones made on the spot.

use serde_json::json;

use super::daemon::{Daemon, exit_of, output};
use super::harness::*;

/// Network namespace of a daemon job, its loopback probed (UDP to itself on 127.0.0.1), and
/// whether the job's own user namespace owns it (false: built ahead by the spawner, as root).
fn job_netns(d: &Daemon, token: &str) -> (String, bool) {
    // NS_GET_USERNS: the user namespace that owns a namespace; EPERM when that one is outside
    // the caller's (the initial one, for a namespace host root built).
    let probe = "import fcntl, os, socket\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('127.0.0.1', 0)); s.sendto(b'x', s.getsockname())\n\
                 assert s.recv(1) == b'x'\n\
                 try:\n\
                 \x20   owner = fcntl.ioctl(os.open('/proc/self/ns/net', os.O_RDONLY), 0xb701)\n\
                 \x20   own = os.fstat(owner).st_ino == os.stat('/proc/self/ns/user').st_ino\n\
                 except PermissionError:\n\
                 \x20   own = False\n\
                 print(os.readlink('/proc/self/ns/net'), own, flush=True)\n\
                 import time; time.sleep(1)";
    let (status, events) = d.exec(token, json!({"argv": ["/usr/bin/python3", "-c", probe]}));
    assert_eq!(status, 200);
    let exit = exit_of(&events);
    assert_eq!(
        exit["code"],
        0,
        "{exit} {}",
        text(&output(&events, "stderr"))
    );
    let out = text(&output(&events, "stdout"));
    let (ns, own) = out.trim().split_once(' ').expect("probe output");
    (ns.to_string(), own == "True")
}

#[test]
fn every_daemon_job_gets_a_network_namespace_no_other_job_had() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    let host = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    // Namespace numbers are recycled once a namespace is freed, so sameness is only
    // meaningful among jobs alive together: more at once than the spawner keeps ready, twice
    // (the second round after it refilled).
    // The spawner builds ahead only after a quiet moment (8 ms without a request): give it
    // time, which a loaded CI machine stretches.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    for round in 0..2 {
        let probed: Vec<(String, bool)> = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..5).map(|_| s.spawn(|| job_netns(&d, &token))).collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        let seen: Vec<String> = probed.iter().map(|(ns, _)| ns.clone()).collect();
        // As root the spawner had some ready (built by host root: not owned by the job's user
        // namespace); unprivileged it cannot build them and every job makes its own.
        let ahead = probed.iter().filter(|(_, own)| !own).count();
        if is_root() {
            assert!(
                ahead > 0,
                "round {round}: no job got a namespace built ahead"
            );
        } else {
            assert_eq!(ahead, 0, "an unprivileged spawner handed out a namespace");
        }
        for (i, ns) in seen.iter().enumerate() {
            assert!(ns.starts_with("net:["), "{ns}");
            assert_ne!(*ns, host, "a job ran in the host's network namespace");
            assert!(
                !seen[..i].contains(ns),
                "round {round}: two live jobs shared {ns}: {seen:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(1000));
    }
}

/// Python that allocates and touches `mib` MiB, then exits 0.
fn allocate(mib: u64) -> serde_json::Value {
    json!({"argv": ["/usr/bin/python3", "-c", format!("b = b'x' * ({mib} << 20); print(len(b))")]})
}

#[test]
fn a_job_cgroup_built_ahead_has_the_jobs_own_limits() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    // The spawner builds cgroups with the last job's limits; a job asking for other limits
    // must never run in one of those. 96 MiB fits in 256 MiB and not in 64 MiB.
    for (limit, fits) in [
        (256u64, true),
        (64, false),
        (64, false),
        (256, true),
        (256, true),
    ] {
        let mut body = allocate(96);
        body["limits"] = json!({"memory": limit << 20});
        let (status, events) = d.exec(&token, body);
        assert_eq!(status, 200);
        let exit = exit_of(&events);
        if fits {
            assert_eq!(exit["code"], 0, "{limit} MiB: {exit}");
        } else {
            assert_eq!(exit["reason"], "oom", "{limit} MiB: {exit}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_job_cgroup_built_ahead_is_named_after_its_job_and_removed_with_it() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    for _ in 0..3 {
        let running = std::thread::scope(|s| {
            let job = s.spawn(|| d.exec(&token, json!({"argv": ["/bin/sleep", "1"]})));
            // Find the running job's id, then its cgroup by that id.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let id = loop {
                let (_, v) = d.json("GET", "/v1/jobs", Some(&token), None);
                let running = v["jobs"].as_array().and_then(|jobs| {
                    jobs.iter()
                        .find(|j| j["state"] == "running")
                        .and_then(|j| j["job"].as_str().map(String::from))
                });
                if let Some(id) = running {
                    break id;
                }
                assert!(std::time::Instant::now() < deadline, "no running job: {v}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            // Polled while the job lasts: on a loaded machine the supervisor may take its
            // cgroup (and rename it) well after the job is listed as running.
            let mut dirs = super::daemon::cgroups_named(&id);
            while dirs.is_empty() && !job.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(20));
                dirs = super::daemon::cgroups_named(&id);
            }
            let (status, events) = job.join().unwrap();
            assert_eq!((status, &exit_of(&events)["code"]), (200, &json!(0)));
            (id, dirs)
        });
        let (id, dirs) = running;
        assert!(!dirs.is_empty(), "job {id} ran in no cgroup named after it");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let left = super::daemon::cgroups_named(&id);
        assert!(left.is_empty(), "job cgroup left behind: {left:?}");
    }
}

#[test]
fn an_idle_daemon_keeps_only_a_few_parts_ready() {
    let d = Daemon::start("");
    let (_, token) = d.session();
    let (status, _) = d.exec(&token, json!({"argv": ["/bin/true"]}));
    assert_eq!(status, 200);
    // The spawner is the daemon's child; cgroups built ahead carry its pid.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.pid()))
        .unwrap_or_default();
    let spawner = children
        .split_whitespace()
        .next()
        .expect("no spawner")
        .to_string();
    // Idle for several of the spawner's 1 s poll rounds.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let ready = super::daemon::cgroups_named(&format!("-{spawner}-warm"));
    // One directory per v1 hierarchy per ready cgroup; none at all where cgroups are not
    // built ahead (v2). Two ready at most: 5 hierarchies × 2.
    assert!(ready.len() <= 10, "{} ready: {ready:?}", ready.len());
}
