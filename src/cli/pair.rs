//! `execbox pair [--profile P] [--workspace DIR] [--ttl D] [--label T] [--json]`,
//! `execbox pair list`, `execbox pair revoke CODE-ID`: pairing codes over the operator socket
//! (the same client as `execbox approvals`). See `docs/pairing.md`.
//!
//! The code is printed once, by the issue command, and nowhere else; everything else names it
//! by its id. Strings from the daemon are printed through [`escape`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::approvals::{Conn, get_json, s, url_segment};
use super::remote::{error_text, request};
use crate::audit::tail::escape;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PairArgs {
    #[command(subcommand)]
    cmd: Option<PairCommand>,
    #[command(flatten)]
    issue: IssueArgs,
}

/// Issue a code (the default when no subcommand is given).
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The profile the agent's session gets (default: the daemon's paths.default_profile)
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// An existing directory (absolute path) the session works in instead of its own fresh
    /// one under workspace_root; it is not removed when the session ends
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// How long the code can be redeemed (e.g. 90s, 10m, 2h; at most pairing.max_ttl)
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    ttl: String,
    /// A note for `pair list` and the audit log (which agent this code is for)
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Print the daemon's reply as JSON (code, code_id, profile, workspace, expires_at)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
pub enum PairCommand {
    /// List outstanding codes (by id; codes themselves are never shown again)
    #[command(after_help = "\
Examples:
  execbox pair list
  execbox pair list --json | jq -r '.codes[].code_id'")]
    List {
        /// Print {"codes": [...]} as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke an outstanding code by its id, before anyone redeems it
    #[command(after_help = "\
Example:
  execbox pair revoke pc_Jx3…")]
    Revoke {
        /// The code's id (printed when it was issued, and by `pair list`), not the code
        code_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn run(args: PairArgs) -> ExitCode {
    let r = match args.cmd {
        None => issue(&args.issue),
        Some(PairCommand::List { json, conn }) => list(&conn.socket, json),
        Some(PairCommand::Revoke { code_id, conn }) => revoke(&conn.socket, &code_id),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("execbox pair: {}", escape(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

fn issue(a: &IssueArgs) -> Result<ExitCode> {
    let body = serde_json::json!({
        "profile": a.profile,
        "workspace": a.workspace,
        "ttl": a.ttl,
        "label": a.label,
    });
    let reply = request(
        &a.conn.socket,
        "POST",
        "/v1/pairing",
        None,
        Some(&body.to_string()),
    )?;
    let status = reply.status;
    let raw = reply.body()?;
    if status != 201 {
        bail!("the daemon refused: {}", error_text(&raw));
    }
    let v: Value = serde_json::from_slice(&raw).context("the daemon's reply is not JSON")?;
    if a.json {
        println!(
            "{}",
            crate::audit::tail::json_safe(v.to_string().as_bytes())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let code = s(&v["code"]);
    let left = v["expires_at"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(crate::server::state::unix_now());
    println!("pairing code: {code}");
    println!("  id         {}", s(&v["code_id"]));
    println!("  profile    {}", s(&v["profile"]));
    println!(
        "  workspace  {}",
        v["workspace"]
            .as_str()
            .map(escape)
            .unwrap_or_else(|| "(a fresh one under workspace_root)".into())
    );
    if v["label"].is_string() {
        println!("  label      {}", s(&v["label"]));
    }
    println!(
        "  expires    in {}m{:02}s, single use",
        left / 60,
        left % 60
    );
    println!(
        "\nGive the code to the agent once (it is not shown again). The agent redeems it with:\n  \
         curl --unix-socket {} -H 'Content-Type: application/json' \\\n       \
         -d '{{\"pairing_code\": \"{code}\"}}' http://localhost/v1/sessions",
        s(&v["agent_socket"])
    );
    Ok(ExitCode::SUCCESS)
}

fn list(socket: &Path, json: bool) -> Result<ExitCode> {
    let v = get_json(socket, "/v1/pairing")?;
    if json {
        println!(
            "{}",
            crate::audit::tail::json_safe(v.to_string().as_bytes())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let codes = v["codes"].as_array().cloned().unwrap_or_default();
    if codes.is_empty() {
        println!("no pairing codes outstanding");
    }
    let now = crate::server::state::unix_now();
    for c in &codes {
        let left = c["expires_at"].as_u64().unwrap_or(now).saturating_sub(now);
        println!(
            "{}  profile {}  workspace {}  expires in {}m{:02}s  {}",
            s(&c["code_id"]),
            s(&c["profile"]),
            s(&c["workspace"]),
            left / 60,
            left % 60,
            c["label"].as_str().map(escape).unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(socket: &Path, id: &str) -> Result<ExitCode> {
    let reply = request(
        socket,
        "DELETE",
        &format!("/v1/pairing/{}", url_segment(id)),
        None,
        None,
    )?;
    let status = reply.status;
    let raw = reply.body()?;
    if status != 200 {
        bail!("not revoked: {}", error_text(&raw));
    }
    println!("revoked {}", escape(id));
    Ok(ExitCode::SUCCESS)
}
