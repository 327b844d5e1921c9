//! `execbox policy check|explain|lint`: the policy engine from the command line, without
//! running anything. Exit codes of `check`: 0 allow, 1 approve, 2 deny, 3 the policy or the
//! input could not be read.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::policy::{Command, Context, Decision, PolicyError, Verdict};
use crate::profile::{Profile, ProfileError};

/// Exit code when the policy file or the input cannot be used.
const EXIT_ERROR: u8 = 3;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the verdict for a shell string (exit 0 allow, 1 approve, 2 deny).
    Check {
        /// Policy file (default: the embedded default profile).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Print the decision as one JSON object.
        #[arg(long)]
        json: bool,
        /// Read JSON Lines `{"command": "…"}` (or `{"argv": […]}`) on stdin, write one JSON
        /// line per input in order.
        #[arg(long, conflicts_with_all = ["command", "shell"])]
        batch: bool,
        /// The shell string, as `bash -c` would run it (as with `execbox run -c`).
        #[arg(short = 'c', value_name = "STRING", conflicts_with = "command")]
        shell: Option<String>,
        /// The shell string, as `bash -c` would run it.
        #[arg(required_unless_present_any = ["batch", "shell"])]
        command: Option<String>,
    },
    /// Show the parsed simple commands, the unwrapping steps and the rule that decided.
    Explain {
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// The shell string, as `bash -c` would run it (as with `execbox run -c`).
        #[arg(short = 'c', value_name = "STRING", conflicts_with = "command")]
        shell: Option<String>,
        /// The shell string, as `bash -c` would run it.
        #[arg(required_unless_present = "shell")]
        command: Option<String>,
    },
    /// Validate a policy file: unknown keys, bad values, failing rule examples.
    Lint { file: PathBuf },
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    let result = match cmd {
        PolicyCommand::Check {
            policy,
            json,
            batch,
            shell,
            command,
        } => load(policy.as_deref()).and_then(|p| {
            if batch {
                batch_check(&p).map(|()| ExitCode::SUCCESS)
            } else {
                let command = shell.or(command).unwrap_or_default();
                Ok(check(&p, &command, json))
            }
        }),
        PolicyCommand::Explain {
            policy,
            json,
            shell,
            command,
        } => load(policy.as_deref()).and_then(|p| {
            let command = shell.or(command).unwrap_or_default();
            explain(&p, &command, json)
        }),
        PolicyCommand::Lint { file } => Ok(lint(&file)),
    };
    result.unwrap_or_else(|e| {
        eprintln!("execbox policy: {e:#}");
        ExitCode::from(EXIT_ERROR)
    })
}

fn load(path: Option<&Path>) -> anyhow::Result<Profile> {
    match path {
        Some(p) => Profile::load(p).with_context(|| format!("loading {}", p.display())),
        None => Profile::embedded_default().context("loading the embedded default profile"),
    }
}

/// The workspace is the current directory; home is `$HOME`.
fn context() -> Context {
    Context {
        workspace: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/nonexistent")),
        home: std::env::var_os("HOME").map(PathBuf::from),
    }
}

fn exit_for(v: Verdict) -> ExitCode {
    ExitCode::from(match v {
        Verdict::Allow => 0,
        Verdict::Approve => 1,
        Verdict::Deny => 2,
    })
}

/// The wire form of a decision: stable keys, `rule` null when no rule decided.
#[derive(Serialize)]
struct Output<'a> {
    verdict: &'static str,
    rule: Option<&'a str>,
    reason: &'a str,
}

impl<'a> From<&'a Decision> for Output<'a> {
    fn from(d: &'a Decision) -> Self {
        Output {
            verdict: d.verdict.as_str(),
            rule: d.rule.as_deref(),
            reason: &d.reason,
        }
    }
}

fn check(profile: &Profile, command: &str, json: bool) -> ExitCode {
    let d = profile.policy.check(Command::Shell(command), &context());
    if json {
        println!(
            "{}",
            serde_json::to_string(&Output::from(&d)).unwrap_or_default()
        );
    } else {
        let rule = d.rule.as_deref().unwrap_or("-");
        println!("{} ({rule}): {}", d.verdict.as_str(), d.reason);
    }
    exit_for(d.verdict)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchInput {
    command: Option<String>,
    argv: Option<Vec<String>>,
}

fn batch_check(profile: &Profile) -> anyhow::Result<()> {
    let ctx = context();
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let text = match serde_json::from_str::<BatchInput>(&line) {
            Ok(BatchInput {
                command: Some(c),
                argv: None,
            }) => serde_json::to_string(&Output::from(
                &profile.policy.check(Command::Shell(&c), &ctx),
            )),
            Ok(BatchInput {
                command: None,
                argv: Some(a),
            }) => serde_json::to_string(&Output::from(
                &profile.policy.check(Command::Argv(&a), &ctx),
            )),
            Ok(_) => serde_json::to_string(&serde_json::json!({
                "error": format!("line {}: give exactly one of \"command\" or \"argv\"", n + 1)
            })),
            Err(e) => serde_json::to_string(&serde_json::json!({
                "error": format!("line {}: {e}", n + 1)
            })),
        }?;
        writeln!(out, "{text}").context("writing stdout")?;
    }
    out.flush().context("writing stdout")?;
    Ok(())
}

fn explain(profile: &Profile, command: &str, json: bool) -> anyhow::Result<ExitCode> {
    let e = profile.policy.explain(Command::Shell(command), &context());
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(exit_for(e.decision.verdict));
    }
    println!("policy: {} ({})", profile.name, profile.source);
    if e.commands.is_empty() {
        println!("no simple commands");
    }
    for (i, c) in e.commands.iter().enumerate() {
        println!("{}. {}", i + 1, c.command);
        if !c.via.is_empty() {
            println!("   via: {}", c.via.join(" → "));
        }
        if !c.stdin_from.is_empty() {
            println!("   stdin from: {}", c.stdin_from.join(", "));
        }
        if !c.stdout_to.is_empty() {
            println!("   stdout to: {}", c.stdout_to.join(", "));
        }
        println!("   {}", matched_line(profile, &c.matched, c.verdict));
    }
    for f in &e.fail_closed {
        println!("fail closed ({}): {}", f.code, f.detail);
    }
    let d = &e.decision;
    println!(
        "decision: {} by {}: {}",
        d.verdict.as_str(),
        d.rule.as_deref().unwrap_or("-"),
        d.reason
    );
    Ok(exit_for(d.verdict))
}

/// The rules that matched one command, grouped under their own verdicts, strictest first:
/// `deny: a; approve: b`. The command's verdict is the first group's.
fn matched_line(profile: &Profile, matched: &[String], verdict: Verdict) -> String {
    if matched.is_empty() {
        return format!("{}: no rule (profile default)", verdict.as_str());
    }
    let rules = profile.policy.rules();
    let mut groups = Vec::new();
    for v in [Verdict::Deny, Verdict::Approve, Verdict::Allow] {
        let ids: Vec<&str> = matched
            .iter()
            .filter(|id| rules.iter().any(|r| &r.id == *id && r.verdict == v))
            .map(String::as_str)
            .collect();
        if !ids.is_empty() {
            groups.push(format!("{}: {}", v.as_str(), ids.join(", ")));
        }
    }
    groups.join("; ")
}

fn lint(file: &Path) -> ExitCode {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match Profile::parse(&text, &name) {
        Ok(p) => {
            let mut warnings = 0;
            for (i, r) in p.policy.rules().iter().enumerate() {
                if r.examples.matches.is_empty() {
                    let line = rule_line(&text, i, "id").unwrap_or(0);
                    println!(
                        "{name}:{line}: warning: rule {i} ({:?}): key `examples.match` is empty; \
                         fix: add a command the rule must match",
                        r.id
                    );
                    warnings += 1;
                }
            }
            println!(
                "{name}: ok: {} rules, default {}, {warnings} warnings",
                p.policy.rules().len(),
                p.policy.default_verdict().as_str()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let line = match &e {
                ProfileError::Rules { source, .. } => policy_error_line(&text, source),
                ProfileError::Invalid { key, .. } => key_line(&text, key),
                // toml's own message already carries the line and column.
                _ => None,
            };
            match line {
                Some(l) => eprintln!("{name}:{l}: {e}"),
                None => eprintln!("{e}"),
            }
            ExitCode::from(1)
        }
    }
}

fn policy_error_line(text: &str, e: &PolicyError) -> Option<usize> {
    let (index, key) = e.location();
    if let PolicyError::Example(ex) = e {
        let example = &ex.example;
        let start = rule_line(text, index, "id")?;
        let quoted = serde_json::to_string(example).ok()?;
        let found = text
            .lines()
            .enumerate()
            .skip(start)
            .find(|(_, l)| l.contains(&quoted) || l.contains(example.as_str()))
            .map(|(n, _)| n + 1);
        return found.or(Some(start));
    }
    rule_line(text, index, &key)
}

/// The 1-based line of `key` inside the `index`-th `[[rule]]` (or of its header).
fn rule_line(text: &str, index: usize, key: &str) -> Option<usize> {
    let mut seen = 0;
    let mut header = None;
    for (n, l) in text.lines().enumerate() {
        let t = l.trim();
        if t == "[[rule]]" {
            if header.is_some() {
                break;
            }
            if seen == index {
                header = Some(n + 1);
            }
            seen += 1;
            continue;
        }
        if header.is_some() && key_matches(t, key) {
            return Some(n + 1);
        }
    }
    header
}

/// The line of a dotted key such as `sandbox.network` or `limits.memory`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut in_table = table.is_empty();
    for (n, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(['[', ']']) == table;
            continue;
        }
        if in_table && key_matches(t, leaf) {
            return Some(n + 1);
        }
    }
    None
}

fn key_matches(line: &str, key: &str) -> bool {
    line.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "[profile]\nname = \"t\"\ndefault_verdict = \"allow\"\n\n\
        [[rule]]\nid = \"a\"\nreason = \"r\"\nverdict = \"deny\"\nprogram = [\"rm\"]\n\n\
        [[rule]]\nid = \"b\"\nreason = \"r\"\nverdict = \"deny\"\nprogram = [\"git\"]\n\
        args_any = [\"nope\"]\n";

    #[test]
    fn lint_points_at_the_line_of_the_bad_key() {
        let e = Profile::parse(RULES, "p.toml").unwrap_err();
        let ProfileError::Rules { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(policy_error_line(RULES, source), Some(16), "{e}");
        assert!(e.to_string().contains("args_any") && e.to_string().contains("fix:"));
    }

    #[test]
    fn lint_points_at_the_failing_example() {
        let text = RULES.replace(
            "args_any = [\"nope\"]\n",
            "examples.match = [\"git status\"]\nsubcommand = [\"push\"]\n",
        );
        let e = Profile::parse(&text, "p.toml").unwrap_err();
        let ProfileError::Rules { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(policy_error_line(&text, source), Some(16), "{e}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: PolicyCommand,
    }

    fn parse(args: &[&str]) -> Result<PolicyCommand, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("policy").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn explain_and_check_take_the_string_as_an_operand_or_after_dash_c() {
        for args in [
            &["explain", "-c", "git status"][..],
            &["explain", "git status"],
            &["check", "-c", "git status"],
            &["check", "git status"],
        ] {
            let cmd = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let (shell, command) = match cmd {
                PolicyCommand::Explain { shell, command, .. }
                | PolicyCommand::Check { shell, command, .. } => (shell, command),
                PolicyCommand::Lint { .. } => unreachable!(),
            };
            assert_eq!(shell.or(command).as_deref(), Some("git status"), "{args:?}");
        }
        assert!(parse(&["explain", "-c", "a", "b"]).is_err());
        assert!(parse(&["explain"]).is_err());
    }

    #[test]
    fn explain_lists_each_matched_rule_under_its_own_verdict() {
        let text = "[profile]\nname = \"t\"\ndefault_verdict = \"allow\"\n\
            [[rule]]\nid = \"d\"\nreason = \"r\"\nverdict = \"deny\"\nprogram = [\"rm\"]\n\
            [[rule]]\nid = \"a\"\nreason = \"r\"\nverdict = \"approve\"\nprogram = [\"rm\"]\n";
        let p = Profile::parse(text, "t.toml").unwrap();
        let line = matched_line(&p, &["d".into(), "a".into()], Verdict::Deny);
        assert_eq!(line, "deny: d; approve: a");
        let line = matched_line(&p, &["a".into()], Verdict::Approve);
        assert_eq!(line, "approve: a");
        assert_eq!(
            matched_line(&p, &[], Verdict::Allow),
            "allow: no rule (profile default)"
        );
    }

    #[test]
    fn sandbox_keys_are_found_in_their_table() {
        let text = "[profile]\nname = \"x\"\n[sandbox]\nnetwork = \"none\"\n";
        assert_eq!(key_line(text, "sandbox.network"), Some(4));
        assert_eq!(key_line(text, "limits.network"), None);
    }
}
