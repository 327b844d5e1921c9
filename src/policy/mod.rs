//! The structural command policy: parse a command with a real shell parser (brush-parser),
//! resolve every simple command that would run — through lists, pipelines, substitutions,
//! wrappers and nested shells — and match rules against that structure to give a verdict.
//!
//! Owns: the command model ([`model`]), shell text → model ([`parse`]), wrapper and nested-code
//! unwrapping ([`unwrap`]), rules ([`rules`]) and argument predicates ([`predicates`]).
//! Must never: run or expand anything, touch the filesystem, or answer `allow` for input it
//! could not fully analyse (non-literal programs, parse errors, size/nesting/time limits).
//! Not guaranteed: what a program does with its own data (a Python script's `shutil.rmtree`),
//! symlinks, aliases defined outside the input. The sandbox is the second layer for those.

pub mod corpus;
pub mod env;
pub(crate) mod exec;
pub mod model;
pub mod parse;
pub mod predicates;
pub mod request;
pub mod rules;
pub mod stdin;
pub mod unwrap;

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use model::{Analysis, FailClosed, SimpleCommand, Word};
pub use request::Request;
pub use rules::{RawExamples, RawRule, Rule};
pub use stdin::StdinFacts;

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

impl Default for Verdict {
    /// The fail-closed verdict.
    fn default() -> Self {
        Verdict::Approve
    }
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

impl Context {
    /// The context rule examples are checked in: workspace `/workspace`, home `/home/agent`.
    pub fn examples() -> Context {
        Context {
            workspace: PathBuf::from("/workspace"),
            home: Some(PathBuf::from("/home/agent")),
        }
    }
}

/// The outcome of checking one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The id of the rule that decided, or `None` when the profile default applied or the
    /// analysis failed closed.
    pub rule: Option<String>,
    pub reason: String,
    /// The simple command that decided, as a display line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The fail-closed code when the analysis gave up (`non-literal-program`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_closed: Option<&'static str>,
}

/// Why a rule set could not be compiled. Every message names the rule index, id and key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "rule {} ({:?}): key `{}`: {}; fix: {}",
        .0.index, .0.id, .0.key, .0.message, .0.fix
    )]
    Rule(Box<RuleKeyError>),
    #[error(
        "rule {index} ({id:?}): key `id`: duplicate of rule {first}; fix: give every rule a unique id"
    )]
    DuplicateId {
        index: usize,
        id: String,
        first: usize,
    },
    #[error(
        "rule {} ({:?}): key `examples.{}`: {:?} {}; fix: correct the rule or the example",
        .0.index, .0.id, .0.key, .0.example, .0.problem
    )]
    Example(Box<ExampleError>),
}

/// A key of one rule that does not validate.
#[derive(Debug)]
pub struct RuleKeyError {
    pub index: usize,
    pub id: String,
    pub key: &'static str,
    pub message: String,
    pub fix: String,
}

/// A rule example that does not behave as declared.
#[derive(Debug)]
pub struct ExampleError {
    pub index: usize,
    pub id: String,
    /// `match` or `not_match`.
    pub key: &'static str,
    pub example: String,
    pub problem: String,
}

impl PolicyError {
    /// The rule index and key the error is about, for line lookups in `policy lint`.
    pub fn location(&self) -> (usize, String) {
        match self {
            PolicyError::Rule(e) => (e.index, e.key.to_string()),
            PolicyError::DuplicateId { index, .. } => (*index, "id".into()),
            PolicyError::Example(e) => (e.index, format!("examples.{}", e.key)),
        }
    }
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Verdict,
    rules: Vec<Rule>,
}

/// One simple command and what the rules said about it, for `policy explain`.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedCommand {
    pub command: String,
    pub program: String,
    pub argv: Vec<String>,
    /// Wrappers and nested shells passed through to reach it, outermost first.
    pub via: Vec<String>,
    pub stdin_from: Vec<String>,
    pub stdout_to: Vec<String>,
    /// Ids of every rule that matched.
    pub matched: Vec<String>,
    pub verdict: Verdict,
}

/// The full account of one check, for `policy explain`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub commands: Vec<ExplainedCommand>,
    pub fail_closed: Vec<FailClosed>,
    pub decision: Decision,
    /// The job's stdin, when the request gave one ([`Policy::explain_request`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinFacts>,
}

impl Policy {
    /// Compiles the rules and checks every rule's examples.
    pub fn compile(default: Verdict, raw: Vec<RawRule>) -> Result<Policy, PolicyError> {
        let policy = Policy::compile_unchecked(default, raw)?;
        policy.check_examples()?;
        Ok(policy)
    }

    /// Compiles the rules without running their examples: only for text whose examples are
    /// verified elsewhere (the embedded default, checked by `cargo test`).
    pub fn compile_unchecked(default: Verdict, raw: Vec<RawRule>) -> Result<Policy, PolicyError> {
        let mut rules = Vec::with_capacity(raw.len());
        let mut ids: Vec<(String, usize)> = Vec::new();
        for (index, r) in raw.into_iter().enumerate() {
            let id = r.id.clone();
            if let Some((_, first)) = ids.iter().find(|(i, _)| *i == id) {
                return Err(PolicyError::DuplicateId {
                    index,
                    id,
                    first: *first,
                });
            }
            ids.push((id.clone(), index));
            let rule = Rule::compile(r).map_err(|e| {
                PolicyError::Rule(Box::new(RuleKeyError {
                    index,
                    id,
                    key: e.key,
                    message: e.message,
                    fix: e.fix,
                }))
            })?;
            rules.push(rule);
        }
        Ok(Policy { default, rules })
    }

    /// Every rule's `examples.match` must make that rule fire; `not_match` must not.
    fn check_examples(&self) -> Result<(), PolicyError> {
        let ctx = predicates::Paths::new(&Context::examples());
        for (index, rule) in self.rules.iter().enumerate() {
            let cases = rule
                .examples
                .matches
                .iter()
                .map(|e| ("match", e, true))
                .chain(
                    rule.examples
                        .not_match
                        .iter()
                        .map(|e| ("not_match", e, false)),
                );
            for (key, example, expected) in cases {
                let analysis = analyse(Command::Shell(example));
                let hit = analysis
                    .commands
                    .iter()
                    .any(|c| rule.matches(&rules::Facts::new(c), &ctx));
                if hit != expected {
                    let problem = if expected {
                        let parsed: Vec<String> = analysis
                            .commands
                            .iter()
                            .map(SimpleCommand::display)
                            .collect();
                        format!("does not match (parsed as: {})", parsed.join("; "))
                    } else {
                        "matches but should not".to_string()
                    };
                    return Err(PolicyError::Example(Box::new(ExampleError {
                        index,
                        id: rule.id.clone(),
                        key,
                        example: example.clone(),
                        problem,
                    })));
                }
            }
        }
        Ok(())
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_verdict(&self) -> Verdict {
        self.default
    }

    pub fn check(&self, command: Command<'_>, ctx: &Context) -> Decision {
        self.decide(analyse(command), ctx, None).0
    }

    /// Checks a command and keeps every step of the reasoning.
    pub fn explain(&self, command: Command<'_>, ctx: &Context) -> Explanation {
        let mut commands = Vec::new();
        let (decision, fail_closed) = self.decide(analyse(command), ctx, Some(&mut commands));
        Explanation {
            commands,
            fail_closed,
            decision,
            stdin: None,
        }
    }

    /// Checks a whole request — command, the requester's environment, working directory and
    /// stdin (`request.rs`) — and keeps every step of the reasoning. What `POST /v1/exec` and
    /// `execbox run` use.
    pub fn explain_request(&self, req: &Request<'_>, ctx: &Context) -> Explanation {
        let (analysis, stdin) = request::analyse(req);
        let mut commands = Vec::new();
        let (decision, fail_closed) = self.decide(analysis, ctx, Some(&mut commands));
        Explanation {
            commands,
            fail_closed,
            decision,
            stdin,
        }
    }

    /// The strictest verdict over every simple command; with `explain`, also the per-command
    /// account (built only when asked: `check` is on the hot path).
    fn decide(
        &self,
        analysis: Analysis,
        ctx: &Context,
        mut explain: Option<&mut Vec<ExplainedCommand>>,
    ) -> (Decision, Vec<FailClosed>) {
        let paths = predicates::Paths::new(ctx);
        // (verdict, deciding rule, command index) of the strictest command so far.
        let mut best: Option<(Verdict, Option<&Rule>, usize)> = None;
        for (i, cmd) in analysis.commands.iter().enumerate() {
            let facts = rules::Facts::new(cmd);
            let mut strongest: Option<&Rule> = None;
            let mut matched = Vec::new();
            for r in &self.rules {
                if r.matches(&facts, &paths) {
                    if strongest.is_none_or(|s| r.verdict > s.verdict) {
                        strongest = Some(r);
                    }
                    if explain.is_some() {
                        matched.push(r.id.clone());
                    }
                }
            }
            let verdict = strongest.map_or(self.default, |r| r.verdict);
            if best.is_none_or(|(v, _, _)| verdict > v) {
                best = Some((verdict, strongest, i));
            }
            if let Some(out) = explain.as_deref_mut() {
                out.push(ExplainedCommand {
                    command: cmd.display(),
                    program: cmd.program.clone(),
                    argv: std::iter::once(cmd.program_path.clone())
                        .chain(cmd.args.iter().map(|a| a.text.clone()))
                        .collect(),
                    via: cmd.via.clone(),
                    stdin_from: cmd.stdin_from.clone(),
                    stdout_to: cmd.stdout_to.clone(),
                    matched,
                    verdict,
                });
            }
        }
        let mut decision = match best {
            Some((verdict, rule, i)) => Decision {
                verdict,
                rule: rule.map(|r| r.id.clone()),
                reason: rule.map_or_else(
                    || "no rule matched; the profile default applies".to_string(),
                    |r| r.reason.clone(),
                ),
                command: Some(analysis.commands[i].display()),
                fail_closed: None,
            },
            None => Decision {
                verdict: Verdict::Allow,
                rule: None,
                reason: "nothing would run".into(),
                command: None,
                fail_closed: None,
            },
        };
        if let Some(f) = analysis.fail_closed.first()
            && decision.verdict < Verdict::Approve
        {
            decision = Decision {
                verdict: Verdict::Approve,
                rule: None,
                reason: format!("fail closed ({}): {}", f.code, f.detail),
                command: None,
                fail_closed: Some(f.code),
            };
        }
        (decision, analysis.fail_closed)
    }
}

/// Builds the command model of an input (no rules involved).
pub fn analyse(command: Command<'_>) -> Analysis {
    let mut analysis = match command {
        Command::Shell(s) => parse::analyse_shell(s),
        Command::Argv(a) => parse::analyse_argv(a),
    };
    mark_downloads(&mut analysis.commands);
    analysis
}

/// Marks commands that run a file an earlier network command wrote (`curl -o x.sh …; sh x.sh`).
fn mark_downloads(commands: &mut [SimpleCommand]) {
    let mut downloaded: HashSet<String> = HashSet::new();
    for cmd in commands.iter_mut() {
        let name = |t: &str| model::basename(t).to_string();
        let runs = downloaded.contains(&name(&cmd.program_path))
            || (rules::in_class(rules::SHELL_CLASS, &cmd.program)
                || rules::in_class(rules::INTERPRETER_CLASS, &cmd.program))
                && cmd
                    .args
                    .iter()
                    .find(|a| !a.text.starts_with('-'))
                    .is_some_and(|a| downloaded.contains(&name(&a.text)));
        cmd.runs_download |= runs;
        if rules::in_class(rules::NETWORK_CLASS, &cmd.program) {
            let mut args = cmd.args.iter().peekable();
            while let Some(a) = args.next() {
                let t = a.text.as_str();
                let cluster_o = t.starts_with('-')
                    && !t.starts_with("--")
                    && (t.ends_with('o') || t.ends_with('O'));
                if cluster_o || matches!(t, "--output" | "--output-document") {
                    if let Some(v) = args.peek() {
                        downloaded.insert(name(&v.text));
                    }
                } else if let Some(v) = t
                    .strip_prefix("--output=")
                    .or_else(|| t.strip_prefix("--output-document="))
                {
                    downloaded.insert(name(v));
                }
            }
            for r in &cmd.redirects {
                if let model::Redirect::Write(w) = r {
                    downloaded.insert(name(&w.text));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
