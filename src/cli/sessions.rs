//! `execbox sessions [list] [--json]` and `execbox sessions end SESSION-ID`: the live sessions
//! over the operator socket (the same client as `execbox approvals`). See `docs/pairing.md`
//! ("Sessions").
//!
//! Strings from the daemon (labels, paths) are printed through [`escape`]: a pairing label is
//! an operator's text, but a workspace name may come from anywhere.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::approvals::{Conn, get_json, s, url_segment};
use super::remote::{error_text, request};
use crate::audit::tail::escape;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    #[command(subcommand)]
    cmd: Option<SessionsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

/// List live sessions (the default when no subcommand is given).
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print the daemon's {"sessions": [...]} as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List live sessions as trees (each root with its child sessions below it)
    #[command(after_help = "\
Columns: session id, owner uid, profile, jobs (running, finished, refused of requested),
token expiry, pairing label, workspace.

Examples:
  execbox sessions list
  execbox sessions list --json | jq '.sessions[] | select(.jobs.running > 0)'")]
    List(ListArgs),
    /// End a session and every session below it (a root: its whole lineage): running jobs are
    /// killed, pending approvals refused, session grants forgotten; recorded as session_end
    #[command(after_help = "\
Example:
  execbox sessions end s_Jx3…      # prints how many sessions ended and jobs were killed

The agent's token stops working at once. Its workspace is removed unless it is an operator's
directory chosen at pairing (`execbox pair --workspace`).")]
    End {
        /// The session's id (from `execbox sessions list`)
        session: String,
        /// Print the daemon's reply as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run(args: SessionsArgs) -> ExitCode {
    let r = match args.cmd {
        None => list(&args.list.conn.socket, args.list.json),
        Some(SessionsCommand::List(a)) => list(&a.conn.socket, a.json),
        Some(SessionsCommand::End {
            session,
            json,
            conn,
        }) => end(&conn.socket, &session, json),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("execbox sessions: {}", escape(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

fn list(socket: &Path, json: bool) -> Result<ExitCode> {
    let v = get_json(socket, "/v1/sessions")?;
    if json {
        println!(
            "{}",
            crate::audit::tail::json_safe(v.to_string().as_bytes())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["sessions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no live sessions");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&list, crate::server::state::unix_now()));
    Ok(ExitCode::SUCCESS)
}

/// The sessions as trees: roots (and sessions whose parent is gone) first, oldest first, each
/// child indented below its parent.
fn render(list: &[Value], now: u64) -> String {
    let ids: Vec<&str> = list.iter().filter_map(|x| x["session"].as_str()).collect();
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut tops = vec![];
    for x in list {
        match x["spawned_by"].as_str() {
            Some(p) if ids.contains(&p) => children.entry(p).or_default().push(x),
            _ => tops.push(x),
        }
    }
    let mut out = String::from(
        "SESSION                    UID    PROFILE   JOBS run/fin/ref/all  EXPIRES   LABEL / WORKSPACE\n",
    );
    // Iterative, bounded by the number of sessions (parents exist before their children).
    let mut stack: Vec<(&Value, usize)> = tops.into_iter().rev().map(|x| (x, 0)).collect();
    let mut left = list.len();
    while let Some((x, depth)) = stack.pop() {
        if left == 0 {
            break;
        }
        left -= 1;
        let j = &x["jobs"];
        let n = |k: &str| j[k].as_u64().unwrap_or(0);
        let exp = x["expires_at"].as_u64().unwrap_or(0);
        let expires = if exp <= now {
            "expired".to_string()
        } else {
            let l = exp - now;
            if l >= 3600 {
                format!("{}h{:02}m", l / 3600, (l % 3600) / 60)
            } else {
                format!("{}m{:02}s", l / 60, l % 60)
            }
        };
        let id = format!("{}{}", "  ".repeat(depth.min(8)), s(&x["session"]));
        let jobs = format!(
            "{}/{}/{}/{}",
            n("running"),
            n("finished"),
            n("refused"),
            n("requested")
        );
        let label = x["label"]
            .as_str()
            .map(|l| format!("\"{}\" ", escape(l)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{id:<26} {:<6} {:<9} {jobs:<21} {expires:<9} {label}{}\n",
            s(&x["owner_uid"]),
            s(&x["profile"]),
            s(&x["workspace"]),
        ));
        if let Some(kids) = x["session"].as_str().and_then(|i| children.get(i)) {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

fn end(socket: &Path, id: &str, json: bool) -> Result<ExitCode> {
    let reply = request(
        socket,
        "DELETE",
        &format!("/v1/sessions/{}", url_segment(id)),
        None,
        None,
    )?;
    let status = reply.status;
    let raw = reply.body()?;
    if status != 200 {
        bail!("not ended: {}", error_text(&raw));
    }
    let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    if json {
        println!(
            "{}",
            crate::audit::tail::json_safe(v.to_string().as_bytes())
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "ended {} ({} session(s), {} running job(s) killed)",
        escape(id),
        v["ended_sessions"].as_u64().unwrap_or(0),
        v["jobs_cancelled"].as_u64().unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_listed_below_their_parent_and_labels_are_escaped() {
        let mk = |id: &str, parent: Option<&str>, label: Option<&str>| {
            serde_json::json!({
                "session": id, "spawned_by": parent, "owner_uid": 1000, "profile": "default",
                "label": label, "workspace": "/w", "expires_at": 1000 + 90,
                "jobs": {"requested": 3, "running": 1, "finished": 1, "refused": 1},
            })
        };
        let list = vec![
            mk("s_a", None, Some("bot\u{1b}[2J")),
            mk("s_b", None, None),
            mk("s_a1", Some("s_a"), Some("bot")),
            mk("s_a11", Some("s_a1"), None),
        ];
        let text = render(&list, 1000);
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert!(rows[0].starts_with("s_a "), "{text}");
        assert!(rows[1].starts_with("  s_a1 "), "{text}");
        assert!(rows[2].starts_with("    s_a11 "), "{text}");
        assert!(rows[3].starts_with("s_b "), "{text}");
        assert!(
            rows[0].contains("1/1/1/3") && rows[0].contains("1m30s"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
