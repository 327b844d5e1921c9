//! `execbox audit verify|tail`: check the audit log's hash chain and read its records.
//! Exit codes of `verify`: 0 the chain holds, 1 it is broken (first broken link on stderr),
//! 125 a file could not be read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::{self, AuditError, Report};

/// Exit code when a file cannot be read (as for usage errors).
const EXIT_UNREADABLE: u8 = 125;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check that no record was edited, deleted, inserted or reordered.
    ///
    /// Every record holds the SHA-256 of the line before it and a sequence number, so any
    /// change to a stored line breaks the next link. Prints the first broken link (sequence
    /// number, file, line, kind) on stderr and exits 1; exits 0 when the chain holds and 125
    /// when a file cannot be read.
    ///
    /// The chain cannot show records cut from the end, nor a chain rewritten by someone who can
    /// write the files: compare the printed last hash with a copy kept elsewhere (docs/audit.md).
    #[command(after_help = "\
Examples:
  execbox audit verify                      the default log and its rotated files
  execbox audit verify --log /srv/audit.jsonl
  execbox audit verify audit.jsonl.2 audit.jsonl.1 audit.jsonl   (oldest first)")]
    Verify {
        /// The live log; its archived files (LOG.archive/) and rotated siblings (LOG.N … LOG.1)
        /// are checked first, oldest first.
        /// Used when no FILES are given.
        #[arg(
            long,
            value_name = "LOG",
            env = "EXECBOX_AUDIT_LOG",
            default_value = audit::DEFAULT_PATH
        )]
        log: PathBuf,
        /// Print the report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Accept a chain that starts after seq 1: the earlier files were archived elsewhere
        /// deliberately. Without it such a chain is broken (records 1.. are missing).
        #[arg(long)]
        archived: bool,
        /// Files to check as one chain, oldest first (exactly these, no siblings added).
        #[arg(value_name = "FILES")]
        files: Vec<PathBuf>,
    },
    /// Print records, one line each: seq, time, type and key fields.
    ///
    /// Control characters in records (a command with ANSI escapes, say) are shown escaped
    /// (`\x1b`), never sent to the terminal. Does not check the chain: use `verify` for that.
    #[command(after_help = "\
Examples:
  execbox audit tail                        the last 10 records of the default log
  execbox audit tail -f                     then keep printing new ones (follows rotation)
  execbox audit tail --json -n 0 FILE | jq  every record of FILE as JSON")]
    Tail {
        /// Keep printing records as they are appended, across rotations.
        #[arg(short, long)]
        follow: bool,
        /// Print each record as a JSON line (the same JSON value as stored; control and
        /// format characters written as \uXXXX escapes).
        #[arg(long)]
        json: bool,
        /// How many of the last records to print first; 0 prints all.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
        lines: usize,
        /// The log to read.
        #[arg(
            value_name = "FILE",
            env = "EXECBOX_AUDIT_LOG",
            default_value = audit::DEFAULT_PATH
        )]
        file: PathBuf,
    },
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify {
            log,
            json,
            archived,
            files,
        } => {
            let files = if files.is_empty() {
                match audit::log_files(&log) {
                    Ok(f) if f.is_empty() => {
                        eprintln!(
                            "execbox audit verify: no audit log at {} (and no rotated files); pass --log or FILES",
                            log.display()
                        );
                        return ExitCode::from(EXIT_UNREADABLE);
                    }
                    Ok(f) => f,
                    Err(e) => return unreadable(&e),
                }
            } else {
                files
            };
            let start = if archived {
                audit::verify::Start::Archived
            } else {
                audit::verify::Start::Anchor
            };
            match audit::verify::verify_from(&files, start) {
                Ok(r) => report(&r, json),
                Err(e) => unreadable(&e),
            }
        }
        AuditCommand::Tail {
            follow,
            json,
            lines,
            file,
        } => {
            // With 0, "all": the ring holds everything.
            let last = if lines == 0 { usize::MAX } else { lines };
            match audit::tail::tail(&file, last, follow, json, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => unreadable(&e),
            }
        }
    }
}

fn unreadable(e: &AuditError) -> ExitCode {
    eprintln!("execbox audit: {}", chain_of(e));
    ExitCode::from(EXIT_UNREADABLE)
}

/// The error and its causes on one line, as `anyhow`'s `{:#}` would.
fn chain_of(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn report(r: &Report, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    }
    if let Some(b) = &r.broken {
        eprintln!("execbox audit verify: {b}");
        eprintln!(
            "  {} records before it link correctly; nothing after it is vouched for",
            r.records
        );
        return ExitCode::from(1);
    }
    if !json {
        let range = match (r.first_seq, r.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no records".into(),
        };
        println!(
            "ok: {} records ({range}) in {} file(s)",
            r.records,
            r.files.len()
        );
        if let Some(a) = r.first_seq.filter(|&a| a > 1) {
            println!("  starts at seq {a}: records before it were rotated away (or removed)");
        }
        if let (Some(seq), Some(h)) = (r.last_seq, r.last_hash) {
            println!(
                "  last record: seq {seq} sha256 {h} (compare with an off-host copy: records cut from the end leave no broken link)"
            );
        }
    }
    ExitCode::SUCCESS
}
