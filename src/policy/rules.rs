//! Rules: the raw `[[rule]]` table, its validation into a [`Rule`] that cannot be invalid, and
//! structural matching of one rule against one simple command.
//!
//! Every key present must hold (AND); within a list any entry may hold (OR), except
//! `all_flags`, where every group must be present.

use serde::Deserialize;

use std::cell::OnceCell;

use super::Verdict;
use super::model::{Redirect, SimpleCommand, Word};
use super::predicates::{PREDICATE_NAMES, Paths, Predicate, glob_match};

/// Facts about one command that several rules need, computed at most once.
pub struct Facts<'a> {
    cmd: &'a SimpleCommand,
    flags: OnceCell<Flags<'a>>,
    positionals: OnceCell<Vec<&'a str>>,
    stdin_is_code: OnceCell<bool>,
}

impl<'a> Facts<'a> {
    pub fn new(cmd: &'a SimpleCommand) -> Facts<'a> {
        Facts {
            cmd,
            flags: OnceCell::new(),
            positionals: OnceCell::new(),
            stdin_is_code: OnceCell::new(),
        }
    }
}

/// One `[[rule]]` table as written in a profile. See `docs/policy.md` for every key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    pub reason: String,
    pub verdict: Verdict,
    /// Program basenames (globs allowed: `mkfs*`), or classes `@shell`, `@interpreter`,
    /// `@network`.
    #[serde(default)]
    pub program: Vec<String>,
    /// Alternatives; each is one or more words after the options (`"stash clear"`).
    #[serde(default)]
    pub subcommand: Vec<String>,
    /// The rule does not hold when the positional words start with one of these (read-only
    /// subcommands: `status`, `list`), so an unknown subcommand stays flagged.
    #[serde(default)]
    pub not_subcommand: Vec<String>,
    /// Every group must be present; a group is `|`-separated spellings (`"-r|-R|--recursive"`).
    #[serde(default)]
    pub all_flags: Vec<String>,
    /// At least one of these flags.
    #[serde(default)]
    pub any_flag: Vec<String>,
    /// None of these flags (read-only or dry-run spellings: `-n`, `--dry-run`, `--help`).
    #[serde(default)]
    pub no_flag: Vec<String>,
    /// At least one argument satisfies one of these predicates.
    #[serde(default)]
    pub args_any: Vec<String>,
    /// No argument satisfies any of these predicates (`DELETE FROM t` without ` WHERE `).
    #[serde(default)]
    pub not_args_any: Vec<String>,
    /// At least one operand other than the last (the sources of `cp`/`scp`/`rsync`) satisfies
    /// one of these predicates.
    #[serde(default)]
    pub sources_any: Vec<String>,
    /// The last operand (the destination of `cp`/`ln`/`install`) satisfies one of these.
    #[serde(default)]
    pub target_any: Vec<String>,
    /// Options whose values `args_any`/`sources_any` do not look at (`-i key.pem`,
    /// `--cacert ca.pem`: a file used locally, not sent).
    #[serde(default)]
    pub skip_values_of: Vec<String>,
    /// At least one output redirection target satisfies one of these predicates.
    #[serde(default)]
    pub writes_any: Vec<String>,
    /// At least one input redirection (`<`, heredoc) satisfies one of these predicates.
    #[serde(default)]
    pub reads_any: Vec<String>,
    /// Something flowing in from an earlier pipeline stage satisfies one of these predicates.
    #[serde(default)]
    pub upstream_any: Vec<String>,
    /// A program of an earlier pipeline stage (names or classes).
    #[serde(default)]
    pub stdin_from: Vec<String>,
    /// A program that receives this command's output as input or code.
    #[serde(default)]
    pub stdout_to: Vec<String>,
    /// A program that runs this command's output as code through a substitution
    /// (`bash <(…)`, `sh -c "$(…)"`); a pipe is `stdout_to` only.
    #[serde(default)]
    pub substituted_into: Vec<String>,
    /// The program reads the code it runs from its standard input (`sh`, `bash -s`,
    /// `python3 -`, `source /dev/stdin`; not `python3 -m json.tool` or `node -e …`).
    #[serde(default)]
    pub stdin_is_code: Option<bool>,
    /// The command calls the function it is defined in (fork bombs).
    #[serde(default)]
    pub self_recursive: Option<bool>,
    /// The command runs a file an earlier command in the same input downloaded.
    #[serde(default)]
    pub runs_download: Option<bool>,
    #[serde(default)]
    pub examples: RawExamples,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExamples {
    #[serde(default, rename = "match")]
    pub matches: Vec<String>,
    #[serde(default)]
    pub not_match: Vec<String>,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub reason: String,
    pub verdict: Verdict,
    program: Vec<Name>,
    subcommand: Vec<Vec<String>>,
    not_subcommand: Vec<Vec<String>>,
    all_flags: Vec<Vec<Flag>>,
    any_flag: Vec<Flag>,
    no_flag: Vec<Flag>,
    args_any: Vec<Predicate>,
    not_args_any: Vec<Predicate>,
    sources_any: Vec<Predicate>,
    target_any: Vec<Predicate>,
    skip_values_of: Vec<String>,
    writes_any: Vec<Predicate>,
    reads_any: Vec<Predicate>,
    upstream_any: Vec<Predicate>,
    stdin_from: Vec<Name>,
    stdout_to: Vec<Name>,
    substituted_into: Vec<Name>,
    stdin_is_code: Option<bool>,
    self_recursive: Option<bool>,
    runs_download: Option<bool>,
    pub examples: RawExamples,
}

/// A validation failure of one key, before the rule's index and id are attached.
pub struct KeyError {
    pub key: &'static str,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Clone)]
enum Name {
    Class(&'static [&'static str]),
    Glob(String),
}

impl Name {
    fn parse(s: &str, key: &'static str) -> Result<Name, KeyError> {
        if let Some(class) = s.strip_prefix('@') {
            return match class {
                "shell" => Ok(Name::Class(SHELL_CLASS)),
                "interpreter" => Ok(Name::Class(INTERPRETER_CLASS)),
                "network" => Ok(Name::Class(NETWORK_CLASS)),
                _ => Err(KeyError {
                    key,
                    message: format!("unknown program class {s:?}"),
                    fix: "use @shell, @interpreter or @network".into(),
                }),
            };
        }
        if s.is_empty() || s.contains('/') {
            return Err(KeyError {
                key,
                message: format!("{s:?} is not a program basename"),
                fix: "write the basename (`rm`, not `/bin/rm`); any path matches".into(),
            });
        }
        Ok(Name::Glob(s.to_string()))
    }

    fn matches(&self, program: &str) -> bool {
        match self {
            Name::Class(set) => set.iter().any(|p| class_member(p, program)),
            Name::Glob(g) => glob_match(g, program),
        }
    }
}

/// Whether a program belongs to a class such as [`SHELL_CLASS`].
pub fn in_class(set: &[&str], program: &str) -> bool {
    set.iter().any(|p| class_member(p, program))
}

/// Versioned names count: `python3.12` is `python`.
fn class_member(entry: &str, program: &str) -> bool {
    program == entry
        || program
            .strip_prefix(entry)
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

pub const SHELL_CLASS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "yash", "busybox",
    "source", ".", "eval",
];
pub const INTERPRETER_CLASS: &[&str] = &[
    "python",
    "pypy",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "bun",
    "deno",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "Rscript",
    "osascript",
    "awk",
    "gawk",
    "mawk",
];
pub const NETWORK_CLASS: &[&str] = &[
    "curl", "wget", "nc", "ncat", "netcat", "socat", "telnet", "ssh", "scp", "sftp", "rsync",
    "ftp", "lftp", "tftp", "aria2c", "http", "https", "xh", "httpie", "fetch", "websocat",
];

/// A flag spelling: `-r` (short, inside any cluster), `--force` (long, any unique prefix,
/// `=value` ignored), `-delete` (an exact word, for find-style options).
#[derive(Debug, Clone, PartialEq)]
enum Flag {
    Short(char),
    Long(String),
    Word(String),
}

impl Flag {
    fn parse(s: &str, key: &'static str) -> Result<Flag, KeyError> {
        let bad = || KeyError {
            key,
            message: format!("{s:?} is not a flag"),
            fix: "write `-r`, `--recursive` or `-delete`; separate spellings with `|`".into(),
        };
        if let Some(long) = s.strip_prefix("--") {
            if long.is_empty() || long.contains('=') {
                return Err(bad());
            }
            return Ok(Flag::Long(long.to_string()));
        }
        let body = s.strip_prefix('-').ok_or_else(bad)?;
        let mut chars = body.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(Flag::Short(c)),
            (Some(_), Some(_)) => Ok(Flag::Word(s.to_string())),
            _ => Err(bad()),
        }
    }
}

/// The flags a command was given, split the way getopt would see them.
struct Flags<'a> {
    short: Vec<char>,
    long: Vec<&'a str>,
    words: Vec<&'a str>,
}

impl<'a> Flags<'a> {
    fn of(args: &'a [Word]) -> Flags<'a> {
        let mut f = Flags {
            short: Vec::new(),
            long: Vec::new(),
            words: Vec::new(),
        };
        for a in args {
            let t = a.text.as_str();
            if t == "--" {
                break;
            }
            if let Some(long) = t.strip_prefix("--") {
                f.long.push(long.split('=').next().unwrap_or(long));
            } else if let Some(body) = t.strip_prefix('-')
                && !body.is_empty()
            {
                f.words.push(t);
                f.short.extend(body.chars());
            }
        }
        f
    }

    fn has(&self, flag: &Flag) -> bool {
        match flag {
            Flag::Short(c) => self.short.contains(c),
            // getopt_long accepts any unambiguous prefix: `--rec` is `--recursive`.
            Flag::Long(l) => self.long.iter().any(|g| !g.is_empty() && l.starts_with(g)),
            Flag::Word(w) => self.words.contains(&w.as_str()),
        }
    }
}

/// Global options that take a value, per program, so `git -C dir push` finds `push`.
fn value_options(program: &str) -> &'static [&'static str] {
    match program {
        "git" => &[
            "-C",
            "-c",
            "--git-dir",
            "--work-tree",
            "--namespace",
            "--config-env",
        ],
        "kubectl" | "oc" => &[
            "-n",
            "--namespace",
            "--context",
            "--kubeconfig",
            "-s",
            "--server",
            "--cluster",
            "--user",
            "-l",
            "--selector",
            "-o",
            "--output",
        ],
        "helm" => &["-n", "--namespace", "--kube-context", "--kubeconfig"],
        "docker" | "podman" => &[
            "-H",
            "--host",
            "--context",
            "-c",
            "--config",
            "-l",
            "--log-level",
        ],
        "aws" => &[
            "--profile",
            "--region",
            "--output",
            "--endpoint-url",
            "--query",
        ],
        "gcloud" => &["--project", "--zone", "--region", "--format", "--account"],
        "systemctl" => &[
            "-H",
            "--host",
            "-M",
            "--machine",
            "-p",
            "--property",
            "-t",
            "--type",
        ],
        "psql" => &[
            "-h",
            "--host",
            "-p",
            "--port",
            "-U",
            "--username",
            "-d",
            "--dbname",
        ],
        "mysql" | "mysqladmin" | "mariadb" | "mariadb-admin" => &[
            "-h",
            "--host",
            "-P",
            "--port",
            "-u",
            "--user",
            "-D",
            "--database",
        ],
        _ => &[],
    }
}

fn positionals(cmd: &SimpleCommand) -> Vec<&str> {
    let values = value_options(&cmd.program);
    let mut out = Vec::new();
    let mut skip_next = false;
    let mut after_dashdash = false;
    for a in &cmd.args {
        let t = a.text.as_str();
        if skip_next {
            skip_next = false;
            continue;
        }
        if !after_dashdash && t == "--" {
            after_dashdash = true;
            continue;
        }
        if !after_dashdash && t.starts_with('-') && t.len() > 1 {
            skip_next = values.contains(&t);
            continue;
        }
        out.push(t);
    }
    out
}

/// The arguments a rule's `args_any` looks at: all, except the values of `skip` options
/// (`-i key.pem`, `--cacert=ca.pem`, `-ikey.pem`).
fn judged_args<'a>(args: &'a [Word], skip: &'a [String]) -> impl Iterator<Item = &'a Word> {
    let mut skip_next = false;
    let mut after_dashdash = false;
    args.iter().filter(move |a| {
        if std::mem::take(&mut skip_next) {
            return false;
        }
        let t = a.text.as_str();
        if after_dashdash || skip.is_empty() {
            return true;
        }
        if t == "--" {
            after_dashdash = true;
            return true;
        }
        for o in skip {
            if t == o {
                skip_next = true;
                return true;
            }
            let attached = if o.starts_with("--") {
                t.strip_prefix(o.as_str())
                    .is_some_and(|r| r.starts_with('='))
            } else {
                o.len() == 2 && t.starts_with(o.as_str()) && t.len() > 2
            };
            if attached {
                return false;
            }
        }
        true
    })
}

fn predicates(list: &[String], key: &'static str) -> Result<Vec<Predicate>, KeyError> {
    list.iter()
        .map(|s| {
            Predicate::parse(s).map_err(|message| KeyError {
                key,
                message,
                fix: format!("use one of: {}", PREDICATE_NAMES.join(", ")),
            })
        })
        .collect()
}

fn names(list: &[String], key: &'static str) -> Result<Vec<Name>, KeyError> {
    list.iter().map(|s| Name::parse(s, key)).collect()
}

impl Rule {
    pub fn compile(raw: RawRule) -> Result<Rule, KeyError> {
        if raw.id.trim().is_empty() || raw.id.contains(char::is_whitespace) {
            return Err(KeyError {
                key: "id",
                message: format!("{:?} is not a rule id", raw.id),
                fix: "use a short kebab-case id such as \"rm-root\"".into(),
            });
        }
        if raw.reason.trim().is_empty() {
            return Err(KeyError {
                key: "reason",
                message: "is empty".into(),
                fix: "say in one sentence why the command needs this verdict".into(),
            });
        }
        let all_flags = raw
            .all_flags
            .iter()
            .map(|g| {
                g.split('|')
                    .map(|f| Flag::parse(f.trim(), "all_flags"))
                    .collect()
            })
            .collect::<Result<Vec<Vec<Flag>>, KeyError>>()?;
        let any_flag = raw
            .any_flag
            .iter()
            .map(|f| Flag::parse(f, "any_flag"))
            .collect::<Result<Vec<Flag>, KeyError>>()?;
        let no_flag = raw
            .no_flag
            .iter()
            .map(|f| Flag::parse(f, "no_flag"))
            .collect::<Result<Vec<Flag>, KeyError>>()?;
        if let Some(bad) = raw.skip_values_of.iter().find(|o| !o.starts_with('-')) {
            return Err(KeyError {
                key: "skip_values_of",
                message: format!("{bad:?} is not an option"),
                fix: "write the option as given on the command line: `-i`, `--cacert`".into(),
            });
        }
        let subcommand = raw
            .subcommand
            .iter()
            .map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        let not_subcommand = raw
            .not_subcommand
            .iter()
            .map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>();
        for (key, list) in [
            ("subcommand", &subcommand),
            ("not_subcommand", &not_subcommand),
        ] {
            if list.iter().any(Vec::is_empty) {
                return Err(KeyError {
                    key,
                    message: "contains an empty entry".into(),
                    fix: "write words such as \"push\" or \"stash clear\"".into(),
                });
            }
        }
        let rule = Rule {
            program: names(&raw.program, "program")?,
            subcommand,
            not_subcommand,
            all_flags,
            any_flag,
            no_flag,
            args_any: predicates(&raw.args_any, "args_any")?,
            not_args_any: predicates(&raw.not_args_any, "not_args_any")?,
            sources_any: predicates(&raw.sources_any, "sources_any")?,
            target_any: predicates(&raw.target_any, "target_any")?,
            skip_values_of: raw.skip_values_of,
            writes_any: predicates(&raw.writes_any, "writes_any")?,
            reads_any: predicates(&raw.reads_any, "reads_any")?,
            upstream_any: predicates(&raw.upstream_any, "upstream_any")?,
            stdin_from: names(&raw.stdin_from, "stdin_from")?,
            stdout_to: names(&raw.stdout_to, "stdout_to")?,
            substituted_into: names(&raw.substituted_into, "substituted_into")?,
            stdin_is_code: raw.stdin_is_code,
            self_recursive: raw.self_recursive,
            runs_download: raw.runs_download,
            id: raw.id,
            reason: raw.reason,
            verdict: raw.verdict,
            examples: raw.examples,
        };
        if rule.program.is_empty()
            && rule.stdin_from.is_empty()
            && rule.stdout_to.is_empty()
            && rule.substituted_into.is_empty()
            && rule.writes_any.is_empty()
            && rule.reads_any.is_empty()
            && rule.self_recursive.is_none()
            && rule.runs_download.is_none()
        {
            return Err(KeyError {
                key: "program",
                message: "the rule would match every command".into(),
                fix: "name a program, or a pipeline/redirect condition; use the profile's \
                      default_verdict for everything else"
                    .into(),
            });
        }
        Ok(rule)
    }

    pub fn matches(&self, facts: &Facts<'_>, ctx: &Paths) -> bool {
        let cmd = facts.cmd;
        let cwd = cmd.cwd.as_deref();
        let test_any = |preds: &[Predicate], words: &mut dyn Iterator<Item = &Word>| {
            let mut hit = false;
            for w in words {
                hit |= preds.iter().any(|p| p.test(w, cwd, ctx));
            }
            hit
        };
        if !self.program.is_empty() && !self.program.iter().any(|n| n.matches(&cmd.program)) {
            return false;
        }
        if !self.subcommand.is_empty() || !self.not_subcommand.is_empty() {
            let pos = facts.positionals.get_or_init(|| positionals(cmd));
            let starts = |sub: &Vec<String>| {
                sub.len() <= pos.len() && sub.iter().zip(pos.iter()).all(|(a, b)| a == b)
            };
            if !self.subcommand.is_empty() && !self.subcommand.iter().any(starts) {
                return false;
            }
            if self.not_subcommand.iter().any(starts) {
                return false;
            }
        }
        if !self.all_flags.is_empty() || !self.any_flag.is_empty() || !self.no_flag.is_empty() {
            let flags = facts.flags.get_or_init(|| Flags::of(&cmd.args));
            if !self
                .all_flags
                .iter()
                .all(|g| g.iter().any(|f| flags.has(f)))
            {
                return false;
            }
            if !self.any_flag.is_empty() && !self.any_flag.iter().any(|f| flags.has(f)) {
                return false;
            }
            if self.no_flag.iter().any(|f| flags.has(f)) {
                return false;
            }
        }
        if !self.args_any.is_empty()
            && !test_any(
                &self.args_any,
                &mut judged_args(&cmd.args, &self.skip_values_of),
            )
        {
            return false;
        }
        if !self.not_args_any.is_empty() && test_any(&self.not_args_any, &mut cmd.args.iter()) {
            return false;
        }
        if !self.sources_any.is_empty() || !self.target_any.is_empty() {
            let operands: Vec<&Word> = judged_args(&cmd.args, &self.skip_values_of)
                .filter(|w| !w.text.starts_with('-') || w.text == "-")
                .collect();
            let sources = operands.len().saturating_sub(1);
            let target = operands.last().copied();
            if !self.target_any.is_empty() && !test_any(&self.target_any, &mut target.into_iter()) {
                return false;
            }
            if !self.sources_any.is_empty()
                && !test_any(&self.sources_any, &mut operands.into_iter().take(sources))
            {
                return false;
            }
        }
        if !self.writes_any.is_empty() {
            let mut writes = cmd.redirects.iter().filter_map(|r| match r {
                Redirect::Write(w) => Some(w),
                _ => None,
            });
            if !test_any(&self.writes_any, &mut writes) {
                return false;
            }
        }
        if !self.reads_any.is_empty() {
            let mut reads = cmd.redirects.iter().filter_map(|r| match r {
                Redirect::Read(w) | Redirect::Here(w) => Some(w),
                _ => None,
            });
            if !test_any(&self.reads_any, &mut reads) {
                return false;
            }
        }
        if !self.upstream_any.is_empty()
            && !test_any(&self.upstream_any, &mut cmd.upstream_inputs.iter())
        {
            return false;
        }
        if !self.stdin_from.is_empty()
            && !cmd
                .stdin_from
                .iter()
                .any(|p| self.stdin_from.iter().any(|n| n.matches(p)))
        {
            return false;
        }
        if !self.stdout_to.is_empty()
            && !cmd
                .stdout_to
                .iter()
                .any(|p| self.stdout_to.iter().any(|n| n.matches(p)))
        {
            return false;
        }
        if !self.substituted_into.is_empty()
            && !cmd
                .substituted_into
                .iter()
                .any(|p| self.substituted_into.iter().any(|n| n.matches(p)))
        {
            return false;
        }
        if let Some(v) = self.stdin_is_code
            && v != *facts
                .stdin_is_code
                .get_or_init(|| super::parse::stdin_is_code(cmd))
        {
            return false;
        }
        if self.self_recursive.is_some_and(|v| v != cmd.self_recursive) {
            return false;
        }
        if self.runs_download.is_some_and(|v| v != cmd.runs_download) {
            return false;
        }
        true
    }
}
