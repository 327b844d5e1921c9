//! Parts of a sandbox the daemon's spawner builds ahead (`sandbox::warm`): each job still gets
//! its own, never one another job had, and they work like ones made on the spot.

use serde_json::json;

use super::daemon::{Daemon, exit_of, output};
use super::harness::*;

/// Network namespace of a daemon job, its loopback probed (UDP to itself on 127.0.0.1).
fn job_netns(d: &Daemon, token: &str) -> String {
    let probe = "import os, socket\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('127.0.0.1', 0)); s.sendto(b'x', s.getsockname())\n\
                 assert s.recv(1) == b'x'\n\
                 print(os.readlink('/proc/self/ns/net'), flush=True)\n\
                 import time; time.sleep(1)";
    let (status, events) = d.exec(token, json!({"argv": ["/usr/bin/python3", "-c", probe]}));
    assert_eq!(status, 200);
    let exit = exit_of(&events);
    assert_eq!(exit["code"], 0, "{exit} {}", text(&output(&events, "stderr")));
    text(&output(&events, "stdout")).trim().to_string()
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
    for round in 0..2 {
        let seen: Vec<String> = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..5).map(|_| s.spawn(|| job_netns(&d, &token))).collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for (i, ns) in seen.iter().enumerate() {
            assert!(ns.starts_with("net:["), "{ns}");
            assert_ne!(*ns, host, "a job ran in the host's network namespace");
            assert!(
                !seen[..i].contains(ns),
                "round {round}: two live jobs shared {ns}: {seen:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
