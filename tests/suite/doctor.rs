//! `execbox doctor` on this machine: it must report what the kernel and cgroup mounts really
//! are (read independently here from /proc), repair a state dir with `--fix`, and grade config
//! mistakes (open allowlist: warning; empty allowlist: failure, exit 2).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::harness::*;

/// A config in `dir` whose every path is inside it (workspaces outside the state dir, so the
/// state dir's expected mode is 0700).
fn config(dir: &Path, allow: &str) -> std::path::PathBuf {
    let cgroup = std::env::var("EXECBOX_CGROUP_PARENT")
        .map(|c| format!("cgroup_parent = {c:?}\n"))
        .unwrap_or_default();
    let d = dir.display();
    let text = format!(
        "{allow}\n[sockets]\nagent = \"{d}/agent.sock\"\noperator = \"{d}/operator.sock\"\n\
         [paths]\nstate_dir = \"{d}/state\"\nworkspace_root = \"{d}/ws\"\n{cgroup}\n[audit]\npath = \"{d}/log/audit.jsonl\"\n"
    );
    let path = dir.join("execbox.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

fn doctor(args: &[&str]) -> (i32, Vec<Value>, String) {
    let o = Command::new(&*EXECBOX)
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let checks: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o.stdout), text(&o.stderr)));
    (
        o.status.code().unwrap(),
        checks.as_array().unwrap().clone(),
        text(&o.stderr),
    )
}

fn find<'a>(checks: &'a [Value], id: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

#[test]
fn doctor_reports_this_machines_kernel_and_cgroups() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("[allow]\nuids = [{}]\n", uid()));
    let (code, checks, _) = doctor(&["--config", cfg.to_str().unwrap()]);
    assert!(code == 0 || code == 1, "exit {code}: {checks:#?}");

    // Landlock: ok exactly when the kernel's ABI (asked directly) is ≥ 6.
    let landlock = find(&checks, "kernel.landlock");
    let landlock_enabled = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|l| l.contains("landlock"))
        .unwrap_or(true);
    if landlock_enabled {
        assert_eq!(landlock["status"], "ok", "{landlock}");
        assert!(
            landlock["evidence"]
                .as_str()
                .unwrap()
                .contains("landlock ABI"),
            "{landlock}"
        );
    }
    for id in [
        "kernel.userns",
        "kernel.namespaces",
        "kernel.seccomp",
        "kernel.proc",
        "kernel.pidfd",
    ] {
        assert_eq!(find(&checks, id)["status"], "ok", "{:#}", find(&checks, id));
    }

    // The cgroup layout, read independently from mountinfo.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstype = |l: &str| {
        l.split_once(" - ")
            .and_then(|(_, p)| p.split_whitespace().next().map(str::to_string))
    };
    let v1_memory = mountinfo.lines().any(|l| {
        fstype(l).as_deref() == Some("cgroup")
            && l.split_whitespace().last().unwrap().contains("memory")
    });
    let has_v2 = mountinfo
        .lines()
        .any(|l| fstype(l).as_deref() == Some("cgroup2"));
    let layout = find(&checks, "cgroup.layout");
    let evidence = layout["evidence"].as_str().unwrap();
    if evidence.starts_with("cgroup v2") {
        assert!(has_v2, "{evidence}");
    } else if v1_memory && has_v2 {
        assert!(evidence.starts_with("hybrid"), "{evidence}");
    } else if v1_memory {
        assert!(evidence.starts_with("cgroup v1"), "{evidence}");
    }
    assert_eq!(find(&checks, "cgroup.writable")["status"], "ok");
    if !evidence.starts_with("cgroup v2") {
        let fav = find(&checks, "cgroup.favordynmods");
        let mounted_with = mountinfo
            .lines()
            .any(|l| fstype(l).as_deref() == Some("cgroup2") && l.contains("favordynmods"));
        assert_eq!(fav["status"] == "ok", mounted_with, "{fav}");
    }

    let idmap = find(&checks, "kernel.idmap");
    if is_root() {
        assert_eq!(idmap["status"], "ok", "{idmap}");
    } else {
        assert!(idmap["evidence"].as_str().unwrap().starts_with("n/a"));
    }
}

#[test]
fn fix_repairs_a_0755_state_dir_to_0700_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("[allow]\nuids = [{}]\n", uid()));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (_, checks, _) = doctor(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(find(&checks, "files.state_dir")["status"], "warn");

    let o = Command::new(&*EXECBOX)
        .args(["doctor", "--fix", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.contains(&format!("fixed: chmod 0700 {} (was 0755)", state.display())),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    // The missing audit log directory was created too.
    assert!(out.contains("fixed: mkdir -m 0700"), "{out}");
    assert!(dir.path().join("log").is_dir());
}

#[test]
fn open_allowlist_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[allow]\nopen = true\n");
    let (code, checks, _) = doctor(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(find(&checks, "config.allow")["status"], "warn");
    assert!(code >= 1, "exit {code}");
}

#[test]
fn empty_allowlist_is_a_failure_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[allow]\nuids = []\n");
    let (code, checks, _) = doctor(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    let c = find(&checks, "config.load");
    assert_eq!(c["status"], "fail");
    assert!(c["fix"].as_str().unwrap().contains("[allow] uids"), "{c}");
}

#[test]
fn serve_refuses_to_start_on_a_failed_check() {
    // A world-writable state dir is a failure: the daemon logs it with its fix and exits.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("[allow]\nuids = [{}]\n", uid()));
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = serve_refuses(&cfg);
    assert!(err.contains("files.state_dir"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    assert!(!dir.path().join("agent.sock").exists());
}
