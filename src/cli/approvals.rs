//! `execbox approvals list|watch|approve|deny`: the operator's side of approvals, over the
//! operator socket (never the agent socket: the agent must not be able to approve itself).
//!
//! Everything shown comes from the agent (command text, env names, cwd), so every string is
//! printed through [`escape`]: control, C1 and bidi/format characters become visible escapes
//! and a command cannot drive the operator's terminal. A decision always sends back the hash of
//! the request that was displayed; the daemon refuses it if the request is not that one.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::remote::{error_text, request};
use crate::audit::tail::escape;

/// Where the operator socket is.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon's operator socket
    #[arg(
        long,
        value_name = "PATH",
        env = "EXECBOX_OPERATOR_SOCKET",
        default_value = "/run/execbox/operator.sock"
    )]
    pub(super) socket: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ScopeArg {
    /// This request only, exactly once
    Once,
    /// This exact request (same command, cwd, env, stdin, profile) again in this session
    Session,
}

impl ScopeArg {
    fn as_str(self) -> &'static str {
        match self {
            ScopeArg::Once => "once",
            ScopeArg::Session => "session",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List the requests waiting for an operator
    #[command(after_help = "\
Examples:
  execbox approvals list
  execbox approvals list --json | jq -r '.approvals[].approval_id'")]
    List {
        /// Print {\"approvals\": [...]} as JSON (every field, including the hash)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sit at a prompt: show each request as it arrives and decide
    #[command(after_help = "\
For each request you see the command (shell-quoted; control characters shown escaped), the
simple commands the policy parsed out of it with the one that fired marked ▶, the rule and
reason, the session and its parent, the agent's uid, cwd and environment names. Answer:

  a            approve this request once
  s            approve this exact request for the rest of its session (the same command,
               cwd, environment, stdin and profile; never other commands or sessions)
  d [reason]   deny, optionally saying why (the agent sees the reason)
  n            leave it pending (another operator may decide; it expires otherwise)

Every decision is bound to the hash of the request shown and recorded in the audit log
before it takes effect. Ctrl-D or Ctrl-C stops watching.")]
    Watch {
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve one request (shows it and asks unless --yes)
    #[command(after_help = "\
Examples:
  execbox approvals approve a_3f2c…                  # shows the request, asks 'yes'
  execbox approvals approve a_3f2c… --scope session --yes")]
    Approve {
        /// The approval id (from list or watch)
        id: String,
        #[arg(long, value_enum, default_value = "once")]
        scope: ScopeArg,
        /// Do not ask: approve what the daemon shows now (still bound to its hash)
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deny one request
    #[command(after_help = "\
Example:
  execbox approvals deny a_3f2c… --reason 'use the package manager instead'")]
    Deny {
        /// The approval id (from list or watch)
        id: String,
        /// Why, shown to the agent and recorded in the audit log
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run(cmd: ApprovalsCommand) -> ExitCode {
    let r = match cmd {
        ApprovalsCommand::List { json, conn } => list(&conn.socket, json),
        ApprovalsCommand::Watch { conn } => watch(&conn.socket),
        ApprovalsCommand::Approve {
            id,
            scope,
            yes,
            conn,
        } => approve(&conn.socket, &id, scope, yes),
        ApprovalsCommand::Deny { id, reason, conn } => deny(&conn.socket, &id, reason),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("execbox approvals: {}", escape(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

pub(super) fn get_json(socket: &Path, path: &str) -> Result<Value> {
    let reply = request(socket, "GET", path, None, None)?;
    let status = reply.status;
    let body = reply.body()?;
    if status != 200 {
        bail!("the daemon refused: {}", error_text(&body));
    }
    serde_json::from_slice(&body).context("the daemon's reply is not JSON")
}

/// Posts a decision; `Ok(Err(message))` when the daemon refused it (e.g. no longer pending).
fn post_decision(
    socket: &Path,
    id: &str,
    decision: &str,
    scope: Option<ScopeArg>,
    hash: Option<&str>,
    reason: Option<&str>,
) -> Result<std::result::Result<Value, String>> {
    let body = serde_json::json!({
        "decision": decision,
        "scope": scope.map(ScopeArg::as_str),
        "hash": hash,
        "reason": reason,
    });
    let reply = request(
        socket,
        "POST",
        &format!("/v1/approvals/{}", url_segment(id)),
        None,
        Some(&body.to_string()),
    )?;
    let status = reply.status;
    let body = reply.body()?;
    if status != 200 {
        return Ok(Err(error_text(&body)));
    }
    Ok(Ok(serde_json::from_slice(&body)?))
}

/// An id as a path segment: ids are `a_` + hex; anything else is percent-encoded.
pub(super) fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn find(socket: &Path, id: &str) -> Result<Value> {
    let v = get_json(socket, "/v1/approvals")?;
    v["approvals"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["approval_id"] == id).cloned())
        .with_context(|| {
            format!(
                "no pending approval {}: decided, expired or withdrawn (see `execbox approvals list`)",
                escape(id)
            )
        })
}

fn list(socket: &Path, json: bool) -> Result<ExitCode> {
    let v = get_json(socket, "/v1/approvals")?;
    if json {
        println!(
            "{}",
            crate::audit::tail::json_safe(
                serde_json::json!({"approvals": v["approvals"]})
                    .to_string()
                    .as_bytes()
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    let items = v["approvals"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no approvals pending");
    }
    for a in &items {
        println!(
            "{}  {}  uid {}  {}  {}",
            s(&a["approval_id"]),
            a["session"]
                .as_str()
                .map(escape)
                .unwrap_or_else(|| "(new session)".into()),
            a["peer_uid"],
            a["rule"]
                .as_str()
                .map(escape)
                .unwrap_or_else(|| "(fail closed)".into()),
            command_line(a),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn watch(socket: &Path) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    println!(
        "watching {} for approval requests (Ctrl-D to stop)",
        escape(&socket.display().to_string())
    );
    let mut after = 0u64;
    loop {
        let v = match get_json(socket, &format!("/v1/approvals?after={after}&wait=30")) {
            Ok(v) => v,
            Err(e) => {
                // A restarting daemon: say so and keep watching.
                eprintln!("execbox approvals: {}; retrying", escape(&format!("{e:#}")));
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        for a in v["approvals"].as_array().cloned().unwrap_or_default() {
            after = after.max(a["seq"].as_u64().unwrap_or(after));
            print!("{}", render(&a));
            loop {
                print!(
                    "[a]pprove once / approve for [s]ession / [d]eny [reason] / [n]ext (leave pending): "
                );
                std::io::stdout().flush()?;
                let mut line = String::new();
                if input.read_line(&mut line)? == 0 {
                    println!();
                    return Ok(ExitCode::SUCCESS);
                }
                let line = line.trim();
                let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
                let id = a["approval_id"].as_str().unwrap_or_default();
                let hash = a["hash"].as_str();
                let result = match word {
                    "a" | "approve" => {
                        post_decision(socket, id, "approve", Some(ScopeArg::Once), hash, None)?
                    }
                    "s" | "session" => {
                        post_decision(socket, id, "approve", Some(ScopeArg::Session), hash, None)?
                    }
                    "d" | "deny" => {
                        let reason = rest.trim();
                        let reason = (!reason.is_empty()).then_some(reason);
                        post_decision(socket, id, "deny", None, hash, reason)?
                    }
                    "n" | "next" | "" => {
                        println!("left pending");
                        break;
                    }
                    _ => {
                        println!("answer a, s, d [reason] or n");
                        continue;
                    }
                };
                match result {
                    Ok(r) => println!(
                        "{} {}",
                        s(&r["decision"]),
                        r["scope"]
                            .as_str()
                            .map(|x| format!("({x})"))
                            .unwrap_or_default()
                    ),
                    Err(e) => println!("not decided: {}", escape(&e)),
                }
                break;
            }
        }
    }
}

fn approve(socket: &Path, id: &str, scope: ScopeArg, yes: bool) -> Result<ExitCode> {
    let a = find(socket, id)?;
    print!("{}", render(&a));
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not a terminal: pass --yes to approve without a question");
        }
        print!("Approve ({})? Type 'yes': ", scope.as_str());
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "yes" {
            println!("not approved");
            return Ok(ExitCode::from(1));
        }
    }
    match post_decision(socket, id, "approve", Some(scope), a["hash"].as_str(), None)? {
        Ok(_) => {
            println!("approved ({})", scope.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("not approved: {e}"),
    }
}

fn deny(socket: &Path, id: &str, reason: Option<String>) -> Result<ExitCode> {
    let a = find(socket, id)?;
    match post_decision(
        socket,
        id,
        "deny",
        None,
        a["hash"].as_str(),
        reason.as_deref(),
    )? {
        Ok(_) => {
            println!("denied");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("not denied: {e}"),
    }
}

/// A JSON string made safe to print (anything else: its JSON text, escaped).
pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(x) => escape(x),
        Value::Null => "-".into(),
        other => escape(&other.to_string()),
    }
}

/// `argv` as one line of POSIX-quoted words, with control characters escaped: how logs show
/// an argv (a plain string, not Rust's `Debug` of a vector).
pub(crate) fn shell_words(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    words
        .join(" ")
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// POSIX shell quoting, so the operator sees word boundaries exactly.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command as one visible line: the shell string quoted as one word for `bash -c`, or the
/// argv quoted word by word.
fn command_line(a: &Value) -> String {
    let text = match a["command"].as_str() {
        Some(c) => format!("bash -c {}", shell_quote(c)),
        None => a["argv"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|w| shell_quote(w.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
    };
    if text.is_empty() {
        format!(
            "(bind profile {})",
            a["profile"].as_str().map(escape).unwrap_or_default()
        )
    } else {
        escape(&text)
    }
}

/// The full account of one request, every agent-controlled string escaped.
fn render(a: &Value) -> String {
    let now = crate::server::state::unix_now();
    let left = a["expires_at"].as_u64().unwrap_or(now).saturating_sub(now);
    let mut out = format!(
        "\n── approval {} ({}) · expires in {}m{:02}s\n",
        s(&a["approval_id"]),
        s(&a["kind"]),
        left / 60,
        left % 60
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<9} {v}\n"));
    line("command", command_line(a));
    let fired = a["fired"].as_u64();
    let parsed = a["parsed"].as_array().cloned().unwrap_or_default();
    for (i, p) in parsed.iter().enumerate() {
        let mark = if fired == Some(i as u64) { "▶" } else { " " };
        let label = if i == 0 { "parsed" } else { "" };
        line(
            label,
            format!(
                "{mark} {}   [{}]{}",
                s(&p["command"]),
                s(&p["verdict"]),
                if fired == Some(i as u64) {
                    "  ◀ fired"
                } else {
                    ""
                }
            ),
        );
    }
    for f in a["fail_closed"].as_array().cloned().unwrap_or_default() {
        line(
            "analysis",
            format!("▶ failed closed: {}: {}", s(&f["code"]), s(&f["detail"])),
        );
    }
    let failed_closed = a["fail_closed"].as_array().is_some_and(|f| !f.is_empty());
    line(
        "rule",
        a["rule"].as_str().map(escape).unwrap_or_else(|| {
            if failed_closed {
                "(none: the analysis failed closed)".into()
            } else {
                "(none: the profile's default verdict)".into()
            }
        }),
    );
    line("reason", s(&a["reason"]));
    line(
        "session",
        format!(
            "{} (parent: {})  profile {}",
            a["session"]
                .as_str()
                .map(escape)
                .unwrap_or_else(|| "(new session)".into()),
            a["parent_session"]
                .as_str()
                .map(escape)
                .unwrap_or_else(|| "none".into()),
            s(&a["profile"])
        ),
    );
    line("peer uid", s(&a["peer_uid"]));
    line("cwd", s(&a["cwd"]));
    if a["env"]["vars"].is_object() {
        render_env(&a["env"], &mut line);
    } else {
        let keys: Vec<String> = a["env_keys"]
            .as_array()
            .map(|v| v.iter().map(s).collect())
            .unwrap_or_default();
        line("env keys", keys.join(", "));
    }
    if a["stdin"].is_object() {
        render_stdin(&a["stdin"], &mut line);
    }
    if a["terms"].is_object() {
        line("terms", terms_line(&a["terms"]));
    }
    line("hash", s(&a["hash"]));
    out
}

/// Every variable with its value; the ones the request set are marked `*`.
fn render_env(env: &Value, line: &mut dyn FnMut(&str, String)) {
    let requested: Vec<&str> = env["requested"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut first = true;
    for (k, v) in env["vars"].as_object().into_iter().flatten() {
        let mark = if requested.contains(&k.as_str()) {
            "*"
        } else {
            " "
        };
        let cut = env["cut"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"].as_str() == Some(k)))
            .map(|c| format!(" … ({} bytes, sha256 {})", s(&c["bytes"]), s(&c["sha256"])))
            .unwrap_or_default();
        line(
            if first { "env" } else { "" },
            format!("{mark} {}={}{cut}", escape(k), s(v)),
        );
        first = false;
    }
    if env["omitted"].as_u64().is_some_and(|n| n > 0) {
        line(
            "",
            format!(
                "  … {} more variables (sha256 {})",
                s(&env["omitted"]),
                s(&env["sha256"])
            ),
        );
    }
    if !requested.is_empty() {
        line("", "  (* set by the request)".into());
    }
}

/// The job's stdin: what reads it as a program, its size, digest and an excerpt.
fn render_stdin(stdin: &Value, line: &mut dyn FnMut(&str, String)) {
    let readers: Vec<String> = stdin["code_for"]
        .as_array()
        .map(|v| v.iter().map(s).collect())
        .unwrap_or_default();
    let what = if readers.is_empty() {
        "data".to_string()
    } else {
        format!("▶ the program of: {}", readers.join("; "))
    };
    line(
        "stdin",
        format!(
            "{} bytes, sha256 {} — {what}",
            s(&stdin["bytes"]),
            s(&stdin["sha256"])
        ),
    );
    let excerpt = stdin["excerpt"].as_str().unwrap_or_default();
    for l in excerpt.split('\n').take(40) {
        line("", format!("│ {}", escape(l)));
    }
    let lines = excerpt.split('\n').count();
    let omitted = stdin["omitted"].as_u64().unwrap_or(0);
    if lines > 40 || omitted > 0 {
        line(
            "",
            format!(
                "│ … (excerpt: {} more lines shown, {omitted} bytes not shown)",
                lines.saturating_sub(40)
            ),
        );
    }
}

fn terms_line(t: &Value) -> String {
    let or_none = |v: &Value| {
        if v.is_null() {
            "unlimited".to_string()
        } else {
            s(v)
        }
    };
    format!(
        "wall time {} ms, memory {}, pids {}, cpu {}, output {} bytes, on disconnect {}, envelope {}",
        s(&t["wall_time_ms"]),
        or_none(&t["memory"]),
        or_none(&t["pids"]),
        or_none(&t["cpu"]),
        s(&t["output_bytes"]),
        s(&t["on_disconnect"]),
        s(&t["envelope"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 item 17: a plain default-verdict approve does not claim the analysis failed;
    /// env values, stdin and terms are shown, escaped.
    #[test]
    fn render_shows_env_values_stdin_terms_and_the_real_reason_for_no_rule() {
        let a = serde_json::json!({
            "approval_id": "a_1", "kind": "exec", "argv": ["git", "status"], "rule": null,
            "reason": "no rule matched; the profile default applies", "fail_closed": [],
            "env": {"vars": {"PATH": "/w/bin:/usr/bin", "HOME": "/tmp"}, "requested": ["PATH"],
                    "cut": [], "omitted": 0, "sha256": "ab"},
            "stdin": {"bytes": 12, "sha256": "cd", "excerpt": "rm -rf ./*\u{2060}", "omitted": 0,
                      "code_for": ["bash"]},
            "terms": {"wall_time_ms": 5000, "memory": null, "pids": 32, "cpu": null, "nofile": 1024,
                      "output_bytes": 1024, "on_disconnect": "detach", "envelope": true},
        });
        let r = render(&a);
        assert!(r.contains("(none: the profile's default verdict)"), "{r}");
        assert!(!r.contains("failed closed"), "{r}");
        assert!(r.contains("* PATH=/w/bin:/usr/bin"), "{r}");
        assert!(r.contains("HOME=/tmp"), "{r}");
        assert!(
            r.contains("the program of: bash") && r.contains("│ rm -rf ./*\\u{2060}"),
            "{r}"
        );
        assert!(
            r.contains("on disconnect detach") && r.contains("memory unlimited"),
            "{r}"
        );
        // With a fail-closed entry, the rule line says so.
        let mut b = a.clone();
        b["fail_closed"] = serde_json::json!([{"code": "stdin-code", "detail": "python3 …"}]);
        assert!(render(&b).contains("(none: the analysis failed closed)"));
    }

    #[test]
    fn quoting_keeps_word_boundaries_and_escapes_controls() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let a = serde_json::json!({"command": "echo \u{1b}[2J\u{9b}x", "argv": []});
        let shown = command_line(&a);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{9b}'),
            "{shown}"
        );
        assert!(shown.contains("\\x1b[2J"), "{shown}");
    }

    #[test]
    fn render_marks_the_command_that_fired() {
        let a = serde_json::json!({
            "approval_id": "a_1", "kind": "exec", "command": "ls; rm -rf x", "argv": [],
            "parsed": [{"command": "ls", "verdict": "allow"}, {"command": "rm -rf x", "verdict": "approve"}],
            "fired": 1, "fail_closed": [], "rule": "rm-recursive", "reason": "why",
            "session": "s_1", "parent_session": null, "peer_uid": 1000, "cwd": "/w",
            "env_keys": ["A\u{1b}"], "hash": "ab", "profile": "default", "expires_at": 0,
        });
        let r = render(&a);
        assert!(r.contains("▶ rm -rf x") && r.contains("◀ fired"), "{r}");
        assert!(!r.contains('\u{1b}'), "{r}");
        assert!(r.contains("A\\x1b"), "{r}");
    }
}
