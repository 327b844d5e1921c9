//! The daemon's capability drop (`docs/security.md`, "Privilege"): as root, the API process and
//! the spawner (and each supervisor it forks) keep exactly the capabilities the document lists
//! for them, in every set including the bounding set; unprivileged, there is nothing to drop and
//! the daemon still works.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use execbox::server::privilege;
use serde_json::json;

use super::daemon::{Daemon, exit_of, output};
use super::harness::*;

/// The capabilities `docs/security.md` lists for `process` ("API process", "spawner"): the
/// `| \`CAP_…\` |` rows of the table under the heading that names it.
fn documented(process: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(source_path("docs/security.md")).unwrap();
    let mut in_section = false;
    let mut caps = BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            in_section = line.starts_with("### ") && line.contains(process);
            continue;
        }
        if in_section && let Some(rest) = line.strip_prefix("| `CAP_") {
            let name = rest.split('`').next().unwrap();
            caps.insert(format!("CAP_{name}"));
        }
    }
    assert!(
        !caps.is_empty(),
        "no table for {process} in docs/security.md"
    );
    caps
}

/// (CapInh, CapPrm, CapEff, CapBnd, CapAmb) of `pid` as capability names.
fn sets_of(pid: u32) -> [BTreeSet<String>; 5] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(|key| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .trim();
        let mask = u64::from_str_radix(hex, 16).unwrap();
        privilege::names(mask)
            .into_iter()
            .map(String::from)
            .collect()
    })
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn core_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_string();
    line.split_whitespace().nth(4).unwrap().to_string()
}

#[track_caller]
fn assert_keeps(pid: u32, who: &str, want: &BTreeSet<String>) {
    let [inh, prm, eff, bnd, amb] = sets_of(pid);
    assert_eq!(&eff, want, "{who} (pid {pid}): CapEff");
    assert_eq!(&prm, want, "{who} (pid {pid}): CapPrm");
    assert_eq!(&bnd, want, "{who} (pid {pid}): CapBnd");
    assert!(inh.is_empty(), "{who} (pid {pid}): CapInh {inh:?}");
    assert!(amb.is_empty(), "{who} (pid {pid}): CapAmb {amb:?}");
}

/// Waits until `path` is gone (the daemon removes workspaces off the request path).
fn wait_gone(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn the_code_keeps_exactly_what_the_security_doc_lists() {
    let names = |caps: &[u32]| -> BTreeSet<String> {
        privilege::names(privilege::mask(caps))
            .into_iter()
            .map(String::from)
            .collect()
    };
    assert_eq!(names(privilege::API), documented("API process"));
    assert_eq!(names(privilege::SPAWNER), documented("spawner"));
}

#[test]
fn daemon_processes_keep_only_the_documented_capabilities_and_jobs_still_run() {
    let d = Daemon::start("");
    let api = d.pid();
    let spawner = *children(api)
        .first()
        .unwrap_or_else(|| panic!("no spawner under the daemon: {}", d.log()));
    // Core dumps are off in both (they hold tokens' hashes, requests and the jobs' pipes).
    assert_eq!(core_limit(api), "0", "API process RLIMIT_CORE");
    assert_eq!(core_limit(spawner), "0", "spawner RLIMIT_CORE");

    let (status, s) = d.json("POST", "/v1/sessions", None, None);
    assert_eq!(status, 201, "{s}");
    let token = s["token"].as_str().unwrap().to_string();
    let workspace = std::path::PathBuf::from(s["workspace"].as_str().unwrap());

    // A running job: its supervisor (a fork of the spawner) has the spawner's sets.
    let agent = d.agent();
    let t = token.clone();
    let long = std::thread::spawn(move || {
        super::daemon::exec_on(&agent, &t, json!({"argv": ["/bin/sleep", "4331.5"]}))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let supervisor = loop {
        if let Some(p) = children(spawner).first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "no supervisor: {}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    };

    if is_root() {
        assert_keeps(api, "API process", &documented("API process"));
        assert_keeps(spawner, "spawner", &documented("spawner"));
        assert_keeps(supervisor, "supervisor", &documented("spawner"));
    } else {
        // Unprivileged: nothing to drop (and no CAP_SETPCAP to shrink the bounding set with).
        for pid in [api, spawner, supervisor] {
            let [_, prm, eff, _, amb] = sets_of(pid);
            assert!(
                eff.is_empty() && prm.is_empty() && amb.is_empty(),
                "pid {pid}"
            );
        }
    }
    let (status, _) = d.json(
        "DELETE",
        &format!(
            "/v1/jobs/{}",
            d.json("GET", "/v1/jobs", Some(&token), None).1["jobs"][0]["job"]
                .as_str()
                .unwrap()
        ),
        Some(&token),
        None,
    );
    assert_eq!(status, 202);
    assert_eq!(exit_of(&long.join().unwrap().1)["reason"], "cancelled");

    // Positive control: with the reduced sets a job runs, writes into its workspace (a sticky
    // directory and a private one, which only CAP_FOWNER and CAP_DAC_OVERRIDE let the daemon
    // remove), and the daemon removes the workspace when the session ends.
    let (_, ev) = d.exec(
        &token,
        json!({"argv": ["/bin/sh", "-c",
            "mkdir -m 1777 sticky && mkdir -m 0700 sticky/private && echo x > sticky/private/f && echo ran"]}),
    );
    assert_eq!(text(&output(&ev, "stdout")), "ran\n", "{ev:?}\n{}", d.log());
    assert_eq!(exit_of(&ev)["code"], 0);
    assert!(workspace.join("sticky/private/f").exists() || !is_root());
    let sid = s["session"].as_str().unwrap();
    let (status, _) = d.json("DELETE", &format!("/v1/sessions/{sid}"), Some(&token), None);
    assert_eq!(status, 200);
    assert!(
        wait_gone(&workspace),
        "the daemon could not remove the session's workspace: {:?}",
        std::fs::read_dir(&workspace).map(|r| r.count())
    );
}
