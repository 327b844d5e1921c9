//! README.md's `curl` lines, run as written against a daemon, so the README cannot drift from
//! the API again (issue 22 item 1: the exec examples lacked `Content-Type` and got 415). Only
//! the socket path, the pairing code and the `$TOKEN`/`$JOB` variables a reader fills in are
//! supplied; each command runs under bash exactly as the README spells it.

use std::process::Command;

use serde_json::{Value, json};

use super::daemon::{Daemon, http};
use super::harness::*;

/// Every `curl …` command of README.md's `sh` blocks, continuation lines joined.
fn readme_curls() -> Vec<String> {
    let readme = std::fs::read_to_string(source_path("README.md")).unwrap();
    let (mut out, mut in_sh, mut cur) = (vec![], false, None::<String>);
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.push('\n');
            c.push_str(line);
        } else if line.starts_with("curl ") {
            cur = Some(line.to_string());
        }
        if !line.trim_end().ends_with('\\')
            && let Some(c) = cur.take()
        {
            out.push(c);
        }
    }
    out
}

fn lines(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn the_readmes_curl_lines_work_as_written() {
    let d = Daemon::start("[sessions]\nrequire_pairing = true\n");
    let (status, _, raw) = http(
        &d.operator(),
        "POST",
        "/v1/pairing",
        None,
        Some(("application/json", br#"{"label": "readme"}"#)),
    );
    assert_eq!(status, 201, "{}", text(&raw));
    let code = serde_json::from_slice::<Value>(&raw).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    let curls = readme_curls();
    assert!(curls.len() >= 4, "README.md has only {curls:?}");
    let (mut token, mut job) = (String::new(), String::new());
    let mut seen = (false, false, false, false);
    for c in &curls {
        for var in c.split('$').skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                ["TOKEN", "JOB"].contains(&name.as_str()),
                "README.md's curl line uses ${name}; teach this test where it comes from: {c}"
            );
        }
        let line = c
            .replace("/run/execbox/agent.sock", &d.agent().display().to_string())
            .replace("XXXX-XXXX-XXXX-XXXX", &code);
        let o = Command::new("bash")
            .args(["-c", &line])
            .env("TOKEN", &token)
            .env("JOB", &job)
            .output()
            .unwrap();
        let out = text(&o.stdout);
        assert!(o.status.success(), "{c}\n{}", text(&o.stderr));
        let events = lines(&out);
        assert!(!events.is_empty(), "{c}: no reply");
        assert!(
            events.iter().all(|e| e.get("error").is_none()),
            "{c}\nanswered {out}"
        );
        if c.contains("/v1/sessions") {
            token = events[0]["token"].as_str().expect("a token").to_string();
            seen.0 = true;
        } else if c.contains("/v1/exec") && c.contains("detach") {
            assert_eq!(events[0]["event"], "accepted", "{out}");
            job = events[0]["job"].as_str().unwrap().to_string();
            assert_eq!(events.last().unwrap()["event"], "exit", "{out}");
            seen.2 = true;
        } else if c.contains("/v1/exec") {
            let exit = events.last().unwrap();
            assert_eq!(exit["event"], "exit", "{out}");
            assert_eq!(exit["code"], 0, "{out}");
            assert!(out.contains(r#""event":"stdout""#), "{out}");
            seen.1 = true;
        } else if c.contains("/output") {
            assert_eq!(events.last().unwrap()["event"], "output_end", "{out}");
            assert_eq!(events.last().unwrap()["complete"], json!(true), "{out}");
            seen.3 = true;
        } else {
            panic!("README.md has a curl line this test does not know: {c}");
        }
    }
    assert_eq!(seen, (true, true, true, true), "{curls:?}");
}
