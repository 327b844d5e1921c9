//! Issue 15 items 2, 3, 11, 12, 17: everything in a request that decides what runs — stdin a
//! program reads as its code, the request's environment, the working directory, the run
//! terms — is judged, shown to the operator, bound into the approval hash and audited, by the
//! daemon and by `execbox run` alike. Each attack sits next to a positive control.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::approvals::{daemon, decide, exec_async, exit_of, next_pending, stdout_of, was_pending};
use super::harness::*;

const WIPE: &str = "rm -rf ./*; echo wiped";

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// The audit records of type `kind`.
fn records(d: &super::daemon::Daemon, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(d.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == kind)
        .collect()
}

#[test]
fn stdin_a_program_runs_as_its_code_is_judged_shown_and_audited() {
    let d = daemon("");
    let (_, token) = d.session();
    let (_, ev) = d.exec(&token, json!({"command": "echo keep > marker"}));
    assert_eq!(exit_of(&ev)["code"], 0, "{ev:?}");
    // The attack: the denied script as stdin of a shell, in every spelling.
    for body in [
        json!({"argv": ["/bin/bash"], "stdin_b64": b64(WIPE)}),
        json!({"argv": ["sh", "-s"], "stdin_b64": b64(WIPE)}),
        json!({"argv": ["bash", "/dev/stdin"], "stdin_b64": b64(WIPE)}),
        json!({"command": "bash", "stdin_b64": b64(WIPE)}),
        json!({"command": "source /dev/stdin", "stdin_b64": b64(WIPE)}),
    ] {
        let (_, ev) = d.exec(&token, body.clone());
        let exit = exit_of(&ev);
        assert_eq!(exit["error"], "refused_by_policy", "{body}: {ev:?}");
        assert!(stdout_of(&ev).is_empty(), "{body}");
    }
    let (_, ev) = d.exec(&token, json!({"command": "cat marker"}));
    assert_eq!(stdout_of(&ev), b"keep\n", "the workspace survived");
    // Positive control: harmless stdin code runs, and data on stdin stays data.
    let (_, ev) = d.exec(
        &token,
        json!({"argv": ["/bin/bash"], "stdin_b64": b64("echo hi")}),
    );
    assert_eq!(stdout_of(&ev), b"hi\n", "{ev:?}");
    let (_, ev) = d.exec(&token, json!({"argv": ["cat"], "stdin_b64": b64(WIPE)}));
    assert_eq!(stdout_of(&ev), WIPE.as_bytes(), "{ev:?}");

    // Code for another language fails closed; the operator sees it and its readers.
    let t = exec_async(
        &d,
        &token,
        json!({"argv": ["python3", "-"], "stdin_b64": b64("print('from stdin')")}),
    );
    let a = next_pending(&d, &[]);
    assert_eq!(a["stdin"]["excerpt"], "print('from stdin')", "{a}");
    assert_eq!(a["stdin"]["code_for"][0], "python3 -", "{a}");
    assert_eq!(a["stdin"]["bytes"], 19);
    assert!(a["fail_closed"].to_string().contains("stdin-code"), "{a}");
    assert_eq!(decide(&d, &a, "deny", "once").0, 200);
    let (_, ev) = t.join().unwrap();
    assert_eq!(exit_of(&ev)["error"], "approval_denied");

    // The audit says what ran: stdin digest and excerpt, environment, resolved cwd, terms.
    let reqs = records(&d, "exec_request");
    let wiped = reqs
        .iter()
        .find(|r| r["stdin"]["excerpt"] == WIPE)
        .unwrap_or_else(|| panic!("{reqs:?}"));
    assert_eq!(wiped["stdin"]["sha256"].as_str().unwrap().len(), 64);
    assert!(
        wiped["stdin"]["code_for"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(
        wiped["env"]["vars"]["PATH"],
        "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    );
    assert!(
        wiped["cwd"].as_str().is_some_and(|c| c.starts_with('/')),
        "{wiped}"
    );
    assert!(wiped["terms"]["wall_time_ms"].as_u64().is_some(), "{wiped}");
    let data = reqs.iter().find(|r| r["argv"][0] == "cat").unwrap();
    assert_eq!(data["stdin"]["code_for"], json!([]), "{data}");
}

#[test]
fn request_env_is_judged_like_inline_assignments_and_shown_with_values() {
    let d = daemon("");
    let (_, token) = d.session();
    // Code in a variable is judged as the command it is.
    let (_, ev) = d.exec(
        &token,
        json!({"argv": ["git", "--version"], "env": {"GIT_SSH_COMMAND": "rm -rf ./*"}}),
    );
    assert_eq!(exit_of(&ev)["error"], "refused_by_policy", "{ev:?}");
    // Variables that inject code, or point PATH at the workspace, need an operator, who sees
    // the values.
    let mut seen = Vec::new();
    for (k, v) in [
        ("BASH_ENV", "/tmp/x.sh"),
        ("LD_PRELOAD", "/tmp/x.so"),
        ("PATH", "bin:/usr/bin:/bin"),
        ("NODE_OPTIONS", "--require /tmp/x.js"),
    ] {
        let t = exec_async(&d, &token, json!({"argv": ["true"], "env": {k: v}}));
        let a = next_pending(&d, &seen);
        seen.push(a["approval_id"].as_str().unwrap().to_string());
        assert_eq!(a["env"]["vars"][k], v, "{a}");
        assert_eq!(a["env"]["requested"], json!([k]), "{a}");
        assert_eq!(decide(&d, &a, "deny", "once").0, 200);
        let (_, ev) = t.join().unwrap();
        assert_eq!(exit_of(&ev)["error"], "approval_denied", "{k}");
    }
    // Positive control: ordinary variables run without a question.
    let (_, ev) = d.exec(
        &token,
        json!({"argv": ["sh", "-c", "echo $RUST_LOG"], "env": {"RUST_LOG": "debug", "NODE_OPTIONS": "--max-old-space-size=64"}}),
    );
    assert!(!was_pending(&ev), "{ev:?}");
    assert_eq!(stdout_of(&ev), b"debug\n");
}

/// Issue 15 item 11: a session grant covers only the same run terms.
#[test]
fn a_session_grant_is_bound_to_timeout_limits_on_disconnect_and_envelope() {
    let d = daemon("");
    let (_, token) = d.session();
    let base = json!({"command": "x=echo; $x terms", "timeout": 5, "limits": {"memory": "64MiB", "pids": 32}, "on_disconnect": "kill"});
    let t = exec_async(&d, &token, base.clone());
    let a = next_pending(&d, &[]);
    assert_eq!(a["terms"]["wall_time_ms"], 5000, "{a}");
    assert_eq!(a["terms"]["memory"], 64 << 20, "{a}");
    assert_eq!(a["terms"]["on_disconnect"], "kill", "{a}");
    assert_eq!(decide(&d, &a, "approve", "session").0, 200);
    assert_eq!(stdout_of(&t.join().unwrap().1), b"terms\n");
    // Positive control: the same request again runs on the grant.
    let (_, ev) = d.exec(&token, base.clone());
    assert!(!was_pending(&ev), "{ev:?}");
    assert_eq!(stdout_of(&ev), b"terms\n");
    // Any wider term is a new question.
    let mut seen = vec![a["approval_id"].as_str().unwrap().to_string()];
    for (key, value) in [
        ("timeout", json!(300)),
        ("limits", json!({"memory": "64MiB"})),
        ("on_disconnect", json!("detach")),
        ("envelope", json!(true)),
    ] {
        let mut wider = base.clone();
        wider[key] = value;
        let t = exec_async(&d, &token, wider);
        let b = next_pending(&d, &seen);
        seen.push(b["approval_id"].as_str().unwrap().to_string());
        assert_ne!(b["hash"], a["hash"], "{key}");
        assert_eq!(decide(&d, &b, "deny", "once").0, 200);
        assert_eq!(
            exit_of(&t.join().unwrap().1)["error"],
            "approval_denied",
            "{key}"
        );
    }
}

/// Issue 15 item 12: a cwd through a symlink out of the workspace is refused; the resolved
/// cwd is what the operator sees.
#[test]
fn cwd_is_resolved_beneath_the_workspace_and_shown() {
    let d = daemon("");
    let (_, token) = d.session();
    // A job plants the link out of the workspace (`ln` is judged by its destination, which is
    // inside the workspace, so this runs without an approval).
    let (_, ev) = d.exec(
        &token,
        json!({"command": "ln -s /usr scratch && mkdir -p sub/dir"}),
    );
    assert_eq!(exit_of(&ev)["code"], 0, "{ev:?}");
    let seen: Vec<String> = vec![];
    for cwd in ["scratch", "scratch/bin"] {
        let (status, body) = d.exec(&token, json!({"argv": ["pwd"], "cwd": cwd}));
        assert_eq!(status, 400, "{cwd}: {body:?}");
        assert!(format!("{body:?}").contains("symlink"), "{body:?}");
    }
    // Positive control: a real directory.
    let (_, ev) = d.exec(&token, json!({"argv": ["pwd"], "cwd": "sub/dir"}));
    let out = String::from_utf8(stdout_of(&ev)).unwrap();
    assert!(out.trim_end().ends_with("/sub/dir"), "{out}");
    let t = exec_async(
        &d,
        &token,
        json!({"command": "x=pwd; $x", "cwd": "sub/dir"}),
    );
    let a = next_pending(&d, &seen);
    assert!(a["cwd"].as_str().unwrap().ends_with("/sub/dir"), "{a}");
    assert_eq!(decide(&d, &a, "deny", "once").0, 200);
    t.join().unwrap();
}

/// `execbox run` judges the same way: stdin read as code, `--env`.
#[test]
fn run_judges_stdin_code_and_env_like_the_daemon() {
    let ws = Ws::new();
    std::fs::write(ws.path().join("marker"), "keep").unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(&*EXECBOX)
            .arg("run")
            .arg("--workspace")
            .arg(ws.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    for args in [
        &["--", "/bin/bash"][..],
        &["--", "sh", "-s"],
        &["-c", "bash"],
        &["-c", "source /dev/stdin"],
    ] {
        let o = run(args, WIPE);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("refused by policy"),
            "{}",
            text(&o.stderr)
        );
    }
    assert!(ws.path().join("marker").exists());
    // Other languages need an operator (none here: refused).
    let o = run(&["--", "python3"], "print(1)");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("approval"), "{}", text(&o.stderr));
    let o = run(&["--env", "BASH_ENV=/tmp/x", "--", "true"], "");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    // Positive controls: harmless stdin code, data on stdin, ordinary variables.
    assert_eq!(ok(&run(&["--", "/bin/bash"], "echo hi")), "hi\n");
    assert_eq!(ok(&run(&["--", "cat"], WIPE)), WIPE);
    assert_eq!(
        ok(&run(&["--env", "K=v", "--", "sh", "-c", "echo $K"], "")),
        "v\n"
    );
    assert!(ws.path().join("marker").exists());
}
