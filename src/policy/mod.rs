//! The structural command policy: parse a command with a real shell parser, resolve every simple
//! command that would run, and match rules against that structure to give a verdict.
//!
//! PLACEHOLDER: this is the interface the rest of execbox uses; the engine is being built in
//! its own change (issue 3). Until then it only matches the program name of argv mode and
//! asks for approval on every shell string it cannot yet analyse (fail closed).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A verdict, ordered from least to most strict (`Allow < Approve < Deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Approve,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }
}

/// One `[[rule]]` table as written in a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub reason: String,
    pub verdict: Verdict,
    #[serde(default)]
    pub program: Vec<String>,
}

/// What to judge: a shell string (run by `bash -c`) or an argv run directly.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    Shell(&'a str),
    Argv(&'a [String]),
}

/// Facts about where the command will run, used by argument predicates.
#[derive(Debug, Clone)]
pub struct Context {
    pub workspace: PathBuf,
    pub home: Option<PathBuf>,
}

/// The outcome of checking one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The id of the rule that decided, or `None` when the profile default applied.
    pub rule: Option<String>,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("rule {index} ({id:?}): {message}")]
    Rule {
        index: usize,
        id: String,
        message: String,
    },
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Verdict,
    rules: Vec<RawRule>,
}

impl Policy {
    pub fn compile(default: Verdict, rules: Vec<RawRule>) -> Result<Policy, PolicyError> {
        Ok(Policy { default, rules })
    }

    pub fn check(&self, command: Command<'_>, _ctx: &Context) -> Decision {
        let program = match command {
            Command::Argv(argv) => argv.first().map(|p| p.rsplit('/').next().unwrap_or(p)),
            Command::Shell(_) => {
                return Decision {
                    verdict: Verdict::Approve,
                    rule: None,
                    reason: "shell strings are not analysed yet".into(),
                };
            }
        };
        for r in &self.rules {
            if program.is_some_and(|p| r.program.iter().any(|q| q == p)) {
                return Decision {
                    verdict: r.verdict,
                    rule: Some(r.id.clone()),
                    reason: r.reason.clone(),
                };
            }
        }
        Decision {
            verdict: self.default,
            rule: None,
            reason: "no rule matched; the profile default applies".into(),
        }
    }
}
