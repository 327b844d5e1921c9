//! Pairing codes through a real daemon: the operator issues with `execbox pair` on the
//! operator socket, the agent redeems with curl on the agent socket. Time is moved with the
//! daemon's test clock (`EXECBOX_TEST_CLOCK_FILE`, debug builds only) instead of waiting.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::{Daemon, curl, exit_of, http, my_uid};
use super::harness::*;

/// The daemon's clock offset, in seconds, written to the file it reads.
struct Clock {
    _dir: tempfile::TempDir,
    file: PathBuf,
    offset: u64,
}

impl Clock {
    fn advance(&mut self, secs: u64) {
        self.offset += secs;
        std::fs::write(&self.file, self.offset.to_string()).unwrap();
    }
}

/// A daemon with the test clock, debug logging (so a leaked code would show) and `extra`.
fn daemon(extra: &str) -> (Daemon, Clock) {
    let dir = tempfile::Builder::new()
        .prefix("execbox-clock-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("offset");
    std::fs::write(&file, "0").unwrap();
    let clock_env = format!("EXECBOX_TEST_CLOCK_FILE={}", file.display());
    let d = Daemon::start_wrapped(
        &format!("[allow]\nuids = [{}]\n", my_uid()),
        fixture("open.toml").parent().unwrap(),
        "open",
        extra,
        &["env", &clock_env, "EXECBOX_LOG=debug"],
    );
    let clock = Clock {
        _dir: dir,
        file,
        offset: 0,
    };
    (d, clock)
}

fn pair(d: &Daemon, args: &[&str]) -> Output {
    Command::new(&*EXECBOX)
        .arg("pair")
        .args(args)
        .env("EXECBOX_OPERATOR_SOCKET", d.operator())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `execbox pair --json ARGS` → the daemon's reply (code, code_id, …).
fn issue(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&pair(d, &all))).unwrap()
}

/// `POST /v1/sessions {"pairing_code": code}` → status, body, and the raw head.
fn redeem(d: &Daemon, code: &str) -> (u16, Value, String) {
    let body = json!({ "pairing_code": code }).to_string();
    let (status, head, raw) = http(
        &d.agent(),
        "POST",
        "/v1/sessions",
        None,
        Some(("application/json", body.as_bytes())),
    );
    (
        status,
        serde_json::from_slice(&raw).unwrap_or(Value::Null),
        head,
    )
}

fn metric(d: &Daemon, name: &str) -> u64 {
    let (status, _, raw) = http(&d.operator(), "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let text = text(&raw);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("execbox_{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
        .parse()
        .unwrap()
}

fn audit_records(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (failures and alerts are recorded in the background) until `n` records satisfy `f`.
#[track_caller]
fn await_records(d: &Daemon, n: usize, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = audit_records(d).into_iter().filter(&f).collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "only {} matching audit records: {:?}",
            found.len(),
            audit_records(d)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

const WRONG: &str = "2222-3333-4444-5555";

#[test]
fn an_operator_pairs_an_agent_in_one_command_and_curl_redeems_it_once() {
    let (d, _clock) = daemon("[sessions]\nrequire_pairing = true\n");
    let ws = Ws::new();
    let ws_path = std::fs::canonicalize(ws.path()).unwrap();
    // One command for the operator: the code, its id and how the agent redeems it.
    let o = pair(
        &d,
        &[
            "--workspace",
            ws_path.to_str().unwrap(),
            "--label",
            "bot one",
            "--ttl",
            "5m",
        ],
    );
    let out = ok(&o);
    let code = out
        .lines()
        .find_map(|l| l.strip_prefix("pairing code: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let code_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("id "))
        .unwrap()
        .trim()
        .to_string();
    assert!(out.contains("curl --unix-socket"), "{out}");
    assert!(out.contains(&d.agent().display().to_string()), "{out}");
    assert!(ok(&pair(&d, &["list"])).contains(&code_id));
    assert!(
        !ok(&pair(&d, &["list"])).contains(&code),
        "list never shows a code"
    );

    // The agent: plain curl, the code as typed by a human (lower case, no dashes).
    let typed = code.replace('-', "").to_ascii_lowercase();
    let sock = d.agent().display().to_string();
    let body = json!({ "pairing_code": typed }).to_string();
    let redeem_with_curl = || {
        let o = curl(&[
            "--unix-socket",
            &sock,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code}",
            "http://localhost/v1/sessions",
        ]);
        let t = text(&o.stdout);
        let (json, status) = t.rsplit_once('\n').unwrap();
        (
            status.parse::<u16>().unwrap(),
            serde_json::from_str::<Value>(json).unwrap(),
        )
    };
    let (status, s) = redeem_with_curl();
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["code_id"], code_id.as_str());
    assert_eq!(s["profile"], "open");
    assert_eq!(s["workspace"], ws_path.to_str().unwrap());
    let (session, token) = (
        s["session"].as_str().unwrap().to_string(),
        s["token"].as_str().unwrap().to_string(),
    );
    // The session works, in the operator's directory.
    let (_, events) = d.exec(&token, json!({"command": "echo paired > proof"}));
    assert_eq!(events.last().unwrap()["code"], 0, "{events:?}");
    assert_eq!(
        std::fs::read_to_string(ws_path.join("proof")).unwrap(),
        "paired\n"
    );

    // Single use: the same code again fails.
    let (status, v) = redeem_with_curl();
    assert_eq!(status, 403, "{v}");
    assert_eq!(error_code(&v), "pairing_failed");

    // require_pairing: no root session without a code; a child session still works.
    let (status, v) = d.json("POST", "/v1/sessions", None, None);
    assert_eq!((status, error_code(&v)), (403, "pairing_required"), "{v}");
    let (status, child) = d.json("POST", "/v1/sessions", Some(&token), None);
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["spawned_by"], session.as_str());
    assert_eq!(child["profile"], "open");
    let (status, v) = d.json(
        "POST",
        "/v1/sessions",
        Some(&token),
        Some(&json!({"pairing_code": code})),
    );
    assert_eq!(status, 400, "a child does not redeem codes: {v}");

    // Ending the session leaves the operator's directory alone.
    let (status, v) = d.json(
        "DELETE",
        &format!("/v1/sessions/{session}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert!(ws_path.join("proof").is_file());
    assert!(!ok(&pair(&d, &["list"])).contains(&code_id));
    assert_eq!(metric(&d, "pairing_codes_issued_total"), 1);
    assert_eq!(metric(&d, "pairing_redeemed_total"), 1);
    assert_eq!(metric(&d, "pairing_failures_total"), 1);

    // The code id is on the record; the code itself is nowhere in the log or the audit file.
    let issued = await_records(&d, 1, |r| r["type"] == "pairing_issued");
    assert_eq!(issued[0]["code_id"], code_id.as_str());
    assert_eq!(issued[0]["label"], "bot one");
    assert_eq!(issued[0]["operator_uid"], my_uid());
    let redeemed = await_records(&d, 1, |r| r["type"] == "pairing_redeemed");
    assert_eq!(redeemed[0]["session"], session.as_str());
    await_records(&d, 1, |r| r["type"] == "pairing_failed");
    let log = d.log();
    let audit = std::fs::read_to_string(d.dir.path().join("audit.jsonl")).unwrap();
    assert!(
        log.contains(&code_id),
        "the log names the code by id: {log}"
    );
    let canonical = code.replace('-', "");
    for spelling in [&code, &canonical, &typed] {
        assert!(!log.contains(spelling.as_str()), "code in the daemon log");
        assert!(!audit.contains(spelling.as_str()), "code in the audit log");
    }
    // Nor any 8-symbol run of it (no truncated or partial copy either).
    for w in canonical.as_bytes().windows(8) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(
            !audit.contains(w) && !log.contains(w),
            "part of the code: {w}"
        );
    }
}

#[test]
fn a_code_binds_its_profile_and_expired_or_revoked_codes_fail() {
    let (d, mut clock) = daemon("");
    let short = issue(&d, &["--ttl", "60s"]);
    let other = issue(&d, &["--profile", "artifacts", "--ttl", "10m"]);
    assert_eq!(other["profile"], "artifacts");
    clock.advance(61);
    let (status, v, _) = redeem(&d, short["code"].as_str().unwrap());
    assert_eq!((status, error_code(&v)), (403, "pairing_failed"), "{v}");
    // Positive control, after the backoff the failure started.
    clock.advance(2);
    let (status, v, _) = redeem(&d, other["code"].as_str().unwrap());
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["profile"], "artifacts",
        "the operator's profile, not the default"
    );

    // Revoked: the code stops working.
    let c = issue(&d, &[]);
    let id = c["code_id"].as_str().unwrap();
    assert!(ok(&pair(&d, &["revoke", id])).contains("revoked"));
    clock.advance(2);
    let (status, v, _) = redeem(&d, c["code"].as_str().unwrap());
    assert_eq!((status, error_code(&v)), (403, "pairing_failed"), "{v}");
    let o = pair(&d, &["revoke", id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("not revoked"),
        "{}",
        text(&o.stderr)
    );

    let failed = await_records(&d, 2, |r| r["type"] == "pairing_failed");
    assert_eq!(
        failed[0]["code_id"], short["code_id"],
        "an expired code is named by id"
    );
    assert_eq!(failed[0]["reason"], "expired code");
    assert!(failed[1]["code_id"].is_null(), "a revoked code is unknown");
    let revoked = await_records(&d, 1, |r| r["type"] == "pairing_revoked");
    assert_eq!(revoked[0]["code_id"], id);
    assert_eq!(revoked[0]["operator_uid"], my_uid());
    let o = Command::new(&*EXECBOX)
        .args(["audit", "verify", "--log"])
        .arg(d.dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn the_sixth_guess_within_the_window_is_refused_even_with_the_right_code() {
    let (d, mut clock) = daemon("");
    let c = issue(&d, &["--ttl", "2h"]);
    let code = c["code"].as_str().unwrap();
    let (status, _, _) = redeem(&d, WRONG);
    assert_eq!(status, 403);
    // Backoff: right after a failure even the right code is refused unread (and not counted).
    let (status, v, head) = redeem(&d, code);
    assert_eq!((status, error_code(&v)), (429, "pairing_locked_out"), "{v}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    for _ in 2..=5 {
        clock.advance(20);
        let (status, v, _) = redeem(&d, WRONG);
        assert_eq!((status, error_code(&v)), (403, "pairing_failed"), "{v}");
    }
    assert_eq!(metric(&d, "pairing_failures_total"), 5);
    // The sixth attempt within the hour: refused, though the code is right.
    clock.advance(20);
    let (status, v, head) = redeem(&d, code);
    assert_eq!((status, error_code(&v)), (429, "pairing_locked_out"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("too many"),
        "{v}"
    );
    // Until the first failure, 100 s ago, leaves the hour.
    let retry: u64 = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    assert!((3400..=3500).contains(&retry), "{head}");
    clock.advance(30 * 60);
    let (status, _, _) = redeem(&d, code);
    assert_eq!(status, 429, "still inside the window");
    assert_eq!(
        metric(&d, "pairing_failures_total"),
        5,
        "refusals are not failures"
    );
    // Once the window has passed: the same code works.
    clock.advance(30 * 60);
    let (status, v, _) = redeem(&d, code);
    assert_eq!(status, 201, "{v}");
    assert_eq!(metric(&d, "pairing_alerts_total"), 0);
    let failed = await_records(&d, 5, |r| r["type"] == "pairing_failed");
    // Appended off the request path, yet in order (`record_detached` queues for one writer).
    let counts: Vec<u64> = failed
        .iter()
        .map(|r| r["failures"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    assert!(failed.iter().all(|r| r["peer_uid"] == my_uid()));
}

#[test]
fn guessing_past_the_alert_threshold_invalidates_every_outstanding_code_and_alerts() {
    let (d, mut clock) = daemon("[pairing]\nalert_after = 3\n");
    let a = issue(&d, &["--ttl", "1h"]);
    let b = issue(&d, &["--profile", "artifacts", "--ttl", "1h"]);
    for _ in 0..3 {
        let (status, _, _) = redeem(&d, WRONG);
        assert_eq!(status, 403);
        clock.advance(20);
    }
    assert_eq!(metric(&d, "pairing_alerts_total"), 1);
    let list: Value = serde_json::from_str(&ok(&pair(&d, &["list", "--json"]))).unwrap();
    assert_eq!(list["codes"], json!([]), "every outstanding code is gone");
    let (status, v, _) = redeem(&d, a["code"].as_str().unwrap());
    assert_eq!((status, error_code(&v)), (403, "pairing_failed"), "{v}");
    let alert = await_records(&d, 1, |r| r["type"] == "alert");
    assert_eq!(alert[0]["kind"], "pairing_guessing");
    let detail = alert[0]["detail"].as_str().unwrap();
    for c in [&a, &b] {
        assert!(detail.contains(c["code_id"].as_str().unwrap()), "{detail}");
    }
    let revoked = await_records(&d, 2, |r| r["type"] == "pairing_revoked");
    assert!(revoked.iter().all(|r| r["operator_uid"].is_null()));
    // Positive control: a code issued after the alert works (after this uid's backoff).
    let fresh = issue(&d, &[]);
    clock.advance(60);
    let (status, v, _) = redeem(&d, fresh["code"].as_str().unwrap());
    assert_eq!(status, 201, "{v}");
}

#[test]
fn the_workspace_is_checked_at_issue_and_again_at_redemption() {
    let (d, mut clock) = daemon("");
    let ws = Ws::new();
    let file = ws.path().join("f");
    std::fs::write(&file, "").unwrap();
    let bad: [(&Path, &str); 4] = [
        (Path::new("relative/dir"), "absolute"),
        (&ws.path().join("nope"), "No such file"),
        (&file, "not a directory"),
        (&d.dir.path().join("state"), "overlaps"),
    ];
    for (path, why) in bad {
        let o = pair(&d, &["--workspace", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", path.display());
        assert!(text(&o.stderr).contains(why), "{}", text(&o.stderr));
    }
    let list: Value = serde_json::from_str(&ok(&pair(&d, &["list", "--json"]))).unwrap();
    assert_eq!(list["codes"], json!([]), "nothing was issued");

    // Gone by the time the agent redeems: refused, and the code stays good.
    let dir = ws.path().join("agent");
    std::fs::create_dir(&dir).unwrap();
    let c = issue(&d, &["--workspace", dir.to_str().unwrap()]);
    std::fs::remove_dir(&dir).unwrap();
    let code = c["code"].as_str().unwrap();
    let (status, v, _) = redeem(&d, code);
    assert_eq!(
        (status, error_code(&v)),
        (409, "pairing_workspace_missing"),
        "{v}"
    );
    std::fs::create_dir(&dir).unwrap();
    clock.advance(1);
    let (status, v, _) = redeem(&d, code);
    assert_eq!(status, 201, "{v}");
    assert_eq!(metric(&d, "pairing_failures_total"), 0);
}

/// Host uid of the process whose command line contains `marker`, waiting for it to appear.
fn host_uid_of(marker: &str) -> u32 {
    // Generous, like the daemon's start: a namespace created while another test's many
    // namespaces are torn down waits for the kernel's locks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(line) = host_processes_with(marker).first() {
            let pid = line.split(':').next().unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            return uid.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{marker} never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sessions_paired_to_root_owned_workspaces_run_as_different_host_uids() {
    if !root_only("sessions_paired_to_root_owned_workspaces_run_as_different_host_uids") {
        return;
    }
    let (d, _clock) = daemon("");
    let (a, b) = (Ws::new(), Ws::new());
    let tokens: Vec<String> = [&a, &b]
        .iter()
        .map(|ws| {
            let code = issue(&d, &["--workspace", &ws.path().display().to_string()]);
            let (status, v, _) = redeem(&d, code["code"].as_str().unwrap());
            assert_eq!(status, 201, "{v}");
            v["token"].as_str().unwrap().to_string()
        })
        .collect();
    // Each session's sandbox holds a distinct, non-root host uid, even though both
    // workspaces are root's (shown to the sandbox through an idmapped mount).
    let uids: Vec<u32> = std::thread::scope(|s| {
        let jobs: Vec<_> = tokens
            .iter()
            .zip(["2.101", "2.202"])
            .map(|(t, secs)| {
                let d = &d;
                s.spawn(move || d.exec(t, json!({"argv": ["/bin/sleep", secs]})))
            })
            .collect();
        let uids = ["sleep 2.101", "sleep 2.202"].map(host_uid_of).to_vec();
        for j in jobs {
            let (status, events) = j.join().unwrap();
            assert_eq!((status, &exit_of(&events)["code"]), (200, &json!(0)));
        }
        uids
    });
    assert!(uids.iter().all(|u| *u != 0), "{uids:?}");
    assert_ne!(uids[0], uids[1], "two sessions' sandboxes share a host uid");
}

/// Issue 22 item 3: `execbox run --socket` against the packaged config (require_pairing)
/// failed with `pairing_required`: it had no way to pass a code or a token.
#[test]
fn run_through_the_daemon_with_a_pairing_code_then_a_saved_token() {
    let (d, _clock) = daemon("[sessions]\nrequire_pairing = true\n");
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(&*EXECBOX);
        c.arg("run")
            .arg("--socket")
            .arg(d.agent())
            .args(args)
            .env_remove("EXECBOX_TOKEN")
            .env_remove("EXECBOX_PAIRING_CODE")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // The failure as reported, with the way out named.
    let o = run(&["--", "/bin/true"], &[]);
    assert_ne!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(
        err.contains("pairing_required") && err.contains("--pairing-code"),
        "{err}"
    );

    // Redeem once, keep the token (a new 0600 file), and the session.
    let code = issue(&d, &["--label", "run-cli"])["code"]
        .as_str()
        .unwrap()
        .to_string();
    let tf = token_file.to_str().unwrap();
    let o = run(
        &[
            "--pairing-code",
            &code,
            "--token-file",
            tf,
            "--",
            "/bin/sh",
            "-c",
            "echo kept > marker; echo one",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "one\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(!text(&o.stderr).contains(&token) && !text(&o.stdout).contains(&token));
    // The same session (its workspace) from the file, and from EXECBOX_TOKEN.
    let o = run(&["--token-file", tf, "--", "/bin/cat", "marker"], &[]);
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "kept\n".into()),
        "{}",
        text(&o.stderr)
    );
    let o = run(&["--", "/bin/cat", "marker"], &[("EXECBOX_TOKEN", &token)]);
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "kept\n".into()),
        "{}",
        text(&o.stderr)
    );
    // The code was used up; an existing token file is not overwritten by a new pairing.
    let o = run(&["--pairing-code", &code, "--", "/bin/true"], &[]);
    assert!(
        text(&o.stderr).contains("pairing_failed"),
        "{}",
        text(&o.stderr)
    );
    let o = run(
        &[
            "--pairing-code",
            &code,
            "--token-file",
            tf,
            "--",
            "/bin/true",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );
    // A token file others can read is refused, naming the fix; a bad token is unauthorized.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["--token-file", tf, "--", "/bin/true"], &[]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("chmod 600"), "{}", text(&o.stderr));
    let o = run(&["--", "/bin/true"], &[("EXECBOX_TOKEN", "s_nope.nope")]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("unauthorized"),
        "{}",
        text(&o.stderr)
    );
}

/// Issue 15 item 7 / issue 22 item 12 through the CLI: `execbox sessions` shows the lineage
/// with its pairing label, and `execbox sessions end ROOT` ends all of it, killing its job.
#[test]
fn an_operator_lists_and_ends_a_lineage_with_the_cli() {
    let (d, _clock) = daemon("[sessions]\nrequire_pairing = true\n");
    let code = issue(&d, &["--label", "lineage-bot"])["code"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, root, _) = redeem(&d, &code);
    assert_eq!(status, 201, "{root}");
    let rtoken = root["token"].as_str().unwrap().to_string();
    let (status, child) = d.json("POST", "/v1/sessions", Some(&rtoken), None);
    assert_eq!(status, 201, "{child}");
    let ctoken = child["token"].as_str().unwrap().to_string();
    // Another lineage, which must survive.
    let other_code = issue(&d, &[])["code"].as_str().unwrap().to_string();
    let (_, other, _) = redeem(&d, &other_code);
    let otoken = other["token"].as_str().unwrap().to_string();
    // A job that would run for a minute in the child.
    let agent = d.agent();
    let t = {
        let ctoken = ctoken.clone();
        std::thread::spawn(move || {
            super::daemon::exec_on(&agent, &ctoken, json!({"argv": ["/bin/sleep", "60"]}))
        })
    };
    let sessions = |args: &[&str]| {
        Command::new(&*EXECBOX)
            .arg("sessions")
            .args(args)
            .env("EXECBOX_OPERATOR_SOCKET", d.operator())
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let l = ok(&sessions(&[]));
        if l.contains("1/0/0/1") || Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (rid, cid) = (
        root["session"].as_str().unwrap(),
        child["session"].as_str().unwrap(),
    );
    let row = |id: &str| {
        listing
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in\n{listing}"))
            .to_string()
    };
    assert!(
        row(rid).starts_with(rid) && row(rid).contains("\"lineage-bot\""),
        "{listing}"
    );
    assert!(
        row(cid).starts_with(&format!("  {cid}")),
        "the child is below its root:\n{listing}"
    );
    assert!(
        row(cid).contains("1/0/0/1") && row(cid).contains("\"lineage-bot\""),
        "{listing}"
    );
    let json_list: Value = serde_json::from_str(&ok(&sessions(&["list", "--json"]))).unwrap();
    assert_eq!(json_list["sessions"].as_array().unwrap().len(), 3);

    let ended = ok(&sessions(&["end", rid]));
    assert!(
        ended.contains("2 session(s), 1 running job(s) killed"),
        "{ended}"
    );
    let (status, events) = t.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(exit_of(&events)["code"], 137, "{events:?}");
    for tok in [&rtoken, &ctoken] {
        assert_eq!(d.json("GET", "/v1/jobs", Some(tok), None).0, 401);
    }
    assert_eq!(d.json("GET", "/v1/jobs", Some(&otoken), None).0, 200);
    let o = sessions(&["end", rid]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not_found"), "{}", text(&o.stderr));
}
