//! Shell text → the command model. brush-parser owns the grammar; this module walks its AST and
//! collects every simple command that would run, resolving words (quotes, escapes, `$'…'`,
//! tilde, brace expansion) and pipeline context.
//!
//! It must never guess: a construct it does not positively understand becomes a
//! [`FailClosed`] entry. Work is bounded before brush-parser sees the input (size and a nesting
//! pre-scan, because the parser recurses) and during the walk (a node budget and a CPU-time budget),
//! so pathological input is decided in milliseconds.

use std::time::Duration;

use brush_parser::ast;
use brush_parser::word::{
    BraceExpressionMember, BraceExpressionOrText, Parameter, ParameterExpr, TildeExpr, WordPiece,
    WordPieceWithSource,
};

use super::model::{Analysis, FailClosed, Redirect, SimpleCommand, Word, basename};

/// Inputs longer than this are not analysed.
pub const MAX_INPUT: usize = 64 * 1024;
/// Syntactic nesting (parentheses, braces, compound keywords) allowed before parsing.
pub const MAX_NESTING: usize = 64;
/// Nested shells (`bash -c`, `eval`, `$(…)`, wrappers) followed before giving up.
pub const MAX_DEPTH: usize = 12;
/// AST nodes and words visited per input.
const MAX_NODES: usize = 50_000;
/// Words a brace expansion may produce.
const MAX_BRACE_WORDS: usize = 256;
/// Tokens (words and operators, estimated before parsing) per input: keeps brush-parser's own
/// work, which cannot be interrupted, within a few milliseconds.
pub const MAX_TOKENS: usize = 1500;
/// Pipeline stages linked per pipeline (linking is quadratic in stages).
const MAX_STAGES: usize = 64;
/// CPU-time budget for one analysis (the thread's own CPU time, so a busy machine does not
/// turn ordinary commands into budget failures; `MAX_NODES` bounds the work as well).
const BUDGET: Duration = Duration::from_millis(50);

/// Programs that read shell code from their arguments or stdin.
pub const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "yash", "busybox",
    "source", ".", "eval",
];

/// The walk state for one input; `unwrap.rs` adds the wrapper and nested-shell logic.
pub(crate) struct Walker {
    pub(crate) out: Analysis,
    nodes: usize,
    /// The thread's CPU time when the analysis began.
    started: Duration,
    exhausted: bool,
    /// The working directory relative to the workspace, as far as the walk knows.
    pub(crate) cwd: Option<String>,
    /// Names of the functions whose bodies are being walked.
    functions: Vec<String>,
    /// What earlier commands of the same input set up (variables, aliases, renamed programs,
    /// files written from literals): `exec.rs`.
    pub(crate) state: super::exec::State,
    /// Inside a guess (an argv suffix of an unknown program, an option value that may be
    /// code): a parse error there is not the input's, so it does not fail closed.
    pub(crate) speculative: usize,
    /// Inside a subshell, a pipeline stage, a loop, a branch, a function body or the right
    /// side of `&&`/`||`: an assignment here may not happen, or may not persist.
    pub(crate) conditional: usize,
    /// Whether unknown programs' argv suffixes are judged (off while judging one: the outer
    /// command already enumerates every suffix).
    pub(crate) suffixes: bool,
}

/// Analyses a shell string as `bash -c` would run it.
pub fn analyse_shell(text: &str) -> Analysis {
    let mut w = Walker::new();
    w.shell(text, 0, &[]);
    w.finish()
}

/// Analyses an argv that is exec'd directly (no shell parsing of its words).
pub fn analyse_argv(argv: &[String]) -> Analysis {
    let mut w = Walker::new();
    w.argv(argv);
    w.finish()
}

impl Walker {
    /// Walks an argv exec'd directly, in the walk's working directory.
    pub(crate) fn argv(&mut self, argv: &[String]) {
        let total: usize = argv.iter().map(String::len).sum();
        if total > MAX_INPUT {
            self.fail(
                "input-too-large",
                format!("{total} bytes, limit {MAX_INPUT}"),
            );
        } else if let Some((first, rest)) = argv.split_first() {
            let program = Word::literal(first.clone());
            let args = rest.iter().cloned().map(Word::literal).collect();
            let mut cmd = SimpleCommand::from_argv(&program, args);
            cmd.cwd = self.cwd.clone();
            self.emit(cmd, 0);
        }
    }

    pub(crate) fn new() -> Walker {
        Walker {
            out: Analysis::default(),
            nodes: 0,
            started: crate::sandbox::sys::thread_cpu_time(),
            exhausted: false,
            cwd: Some(String::new()),
            functions: Vec::new(),
            state: Default::default(),
            speculative: 0,
            conditional: 0,
            suffixes: true,
        }
    }

    pub(crate) fn finish(self) -> Analysis {
        self.out
    }

    pub(crate) fn fail(&mut self, code: &'static str, detail: String) {
        if self.speculative > 0 && code == "parse-error" {
            return;
        }
        if self.out.fail_closed.len() < 32 {
            self.out.fail_closed.push(FailClosed { code, detail });
        }
    }

    /// Counts one unit of work; false once the budget is spent (reported once).
    pub(crate) fn tick(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES
            || (self.nodes.is_multiple_of(64)
                && crate::sandbox::sys::thread_cpu_time().saturating_sub(self.started) > BUDGET)
        {
            self.exhausted = true;
            self.fail(
                "budget-exceeded",
                format!("analysis stopped after {} steps", self.nodes),
            );
            return false;
        }
        true
    }

    /// Parses and walks shell text; returns the indices of its direct commands.
    pub(crate) fn shell(&mut self, text: &str, depth: usize, via: &[String]) -> Vec<usize> {
        if !self.tick() {
            return Vec::new();
        }
        if let Some((code, detail)) = over_limit(text, depth) {
            self.fail(code, detail);
            return Vec::new();
        }
        let options = parser_options();
        let mut parser = brush_parser::Parser::new(std::io::Cursor::new(text), &options);
        let program = match parser.parse_program() {
            Ok(p) => p,
            Err(e) => {
                self.fail("parse-error", e.to_string());
                return Vec::new();
            }
        };
        let mut direct = Vec::new();
        for cc in &program.complete_commands {
            direct.extend(self.compound_list(cc, depth, via));
        }
        direct
    }

    fn compound_list(
        &mut self,
        list: &ast::CompoundList,
        depth: usize,
        via: &[String],
    ) -> Vec<usize> {
        let mut direct = Vec::new();
        for item in &list.0 {
            direct.extend(self.and_or(&item.0, depth, via));
        }
        direct
    }

    fn and_or(&mut self, list: &ast::AndOrList, depth: usize, via: &[String]) -> Vec<usize> {
        let mut direct = self.pipeline(&list.first, depth, via);
        self.conditional += 1;
        for next in &list.additional {
            let (ast::AndOr::And(p) | ast::AndOr::Or(p)) = next;
            direct.extend(self.pipeline(p, depth, via));
        }
        self.conditional -= 1;
        direct
    }

    fn pipeline(&mut self, p: &ast::Pipeline, depth: usize, via: &[String]) -> Vec<usize> {
        if p.seq.len() == 1 {
            return self.command(&p.seq[0], depth, via);
        }
        // Every stage runs in its own subshell: a `cd` inside one does not persist.
        let saved = self.cwd.clone();
        let mut stages: Vec<Vec<usize>> = Vec::with_capacity(p.seq.len());
        self.conditional += 1;
        for c in &p.seq {
            stages.push(self.command(c, depth, via));
            self.cwd = saved.clone();
        }
        self.conditional -= 1;
        if stages.len() > MAX_STAGES {
            self.fail(
                "too-complex",
                format!("a pipeline of {} stages, limit {MAX_STAGES}", stages.len()),
            );
        } else {
            self.link_pipeline(&stages, depth, via);
        }
        stages.into_iter().flatten().collect()
    }

    /// Fills `stdin_from`, `upstream_inputs` and `stdout_to`, and analyses literal code piped
    /// into a shell (`echo 'rm -rf /' | sh`, `cat <<EOF | bash`).
    fn link_pipeline(&mut self, stages: &[Vec<usize>], depth: usize, via: &[String]) {
        let mut upstream: Vec<Word> = Vec::new();
        let mut earlier: Vec<String> = Vec::new();
        for (i, stage) in stages.iter().enumerate() {
            let programs = |s: &[usize], out: &Analysis| -> Vec<String> {
                s.iter().map(|&j| out.commands[j].program.clone()).collect()
            };
            // Every earlier stage, so `curl … | cat | sh` still shows `curl`.
            if i > 0 {
                earlier.extend(programs(&stages[i - 1], &self.out));
            }
            let prev = earlier.clone();
            let next = stages
                .get(i + 1)
                .map(|s| programs(s, &self.out))
                .unwrap_or_default();
            for &j in stage {
                let c = &mut self.out.commands[j];
                c.stdin_from.extend(prev.iter().cloned());
                c.upstream_inputs.extend(upstream.iter().cloned());
                c.stdout_to.extend(next.iter().cloned());
            }
            for &j in stage {
                let c = &self.out.commands[j];
                upstream.extend(c.args.iter().cloned());
                for r in &c.redirects {
                    if let Redirect::Read(w) | Redirect::Here(w) = r {
                        upstream.push(w.clone());
                    }
                }
            }
            // `echo / | xargs rm -rf`: the literal output becomes the arguments.
            let output = match i {
                0 => None,
                _ => stages[i - 1]
                    .iter()
                    .find_map(|&j| literal_output(&self.out.commands[j])),
            };
            if let Some(output) = &output {
                for &j in stage {
                    if self.out.commands[j].program == "tee" {
                        let files: Vec<Word> = self.out.commands[j].args.clone();
                        for f in files.iter().filter(|a| !a.text.starts_with('-')) {
                            self.state.write_file(f, Some(output));
                        }
                    }
                }
                for &j in stage {
                    let c = &mut self.out.commands[j];
                    let stdin_args = c
                        .args
                        .iter()
                        .position(|a| a.dynamic && a.text == super::unwrap::STDIN_ARGS);
                    if let Some(p) = stdin_args {
                        let words: Vec<Word> = output
                            .split_whitespace()
                            .take(64)
                            .map(Word::literal)
                            .collect();
                        c.args.splice(p..=p, words);
                    }
                }
            }
            if i > 0
                && stage.iter().any(|&j| {
                    let c = &self.out.commands[j];
                    reads_code_from_stdin(c)
                        || matches!(c.program.as_str(), "at" | "batch" | "source" | ".")
                            && stdin_is_code(c)
                })
            {
                match output {
                    Some(code) => {
                        let mut v = via.to_vec();
                        v.push("piped into a shell".into());
                        self.shell(&code, depth + 1, &v);
                    }
                    None => {
                        // The rules see `stdout_to`; there is nothing literal to analyse.
                    }
                }
            }
        }
    }

    fn command(&mut self, c: &ast::Command, depth: usize, via: &[String]) -> Vec<usize> {
        if !self.tick() {
            return Vec::new();
        }
        match c {
            ast::Command::Simple(s) => self.simple(s, depth, via),
            ast::Command::Compound(cc, redirects) => {
                let direct = self.compound(cc, depth, via);
                if let Some(r) = redirects {
                    let rs: Vec<Redirect> =
                        r.0.iter()
                            .filter_map(|r| self.redirect(r, depth, via, None))
                            .collect();
                    for &j in &direct {
                        self.out.commands[j].redirects.extend(rs.iter().cloned());
                    }
                }
                direct
            }
            // The body is analysed where it is defined: calling it runs the same commands.
            ast::Command::Function(f) => {
                self.functions.push(f.fname.value.clone());
                self.conditional += 1;
                let direct = self.compound(&f.body.0, depth, via);
                self.conditional -= 1;
                self.functions.pop();
                if let Some(r) = &f.body.1 {
                    for r in &r.0 {
                        self.redirect(r, depth, via, None);
                    }
                }
                direct
            }
            ast::Command::ExtendedTest(t, _) => {
                self.extended_test(&t.expr, depth, via);
                Vec::new()
            }
        }
    }

    fn extended_test(&mut self, e: &ast::ExtendedTestExpr, depth: usize, via: &[String]) {
        if !self.tick() {
            return;
        }
        match e {
            ast::ExtendedTestExpr::And(a, b) | ast::ExtendedTestExpr::Or(a, b) => {
                self.extended_test(a, depth, via);
                self.extended_test(b, depth, via);
            }
            ast::ExtendedTestExpr::Not(a) | ast::ExtendedTestExpr::Parenthesized(a) => {
                self.extended_test(a, depth, via)
            }
            ast::ExtendedTestExpr::UnaryTest(op, w) => {
                let words = self.words(&w.value, depth, via);
                // `[[ -v 'a[$(…)]' ]]` evaluates the subscript.
                if matches!(op, ast::UnaryPredicate::ShellVariableIsSetAndAssigned) {
                    for w in words {
                        self.arithmetic(&w.text, depth, via);
                    }
                }
            }
            ast::ExtendedTestExpr::BinaryTest(op, a, b) => {
                let a = self.words(&a.value, depth, via);
                let b = self.words(&b.value, depth, via);
                // `-eq`, `-lt` …: both sides are arithmetic expressions.
                use ast::BinaryPredicate as B;
                if matches!(
                    op,
                    B::ArithmeticEqualTo
                        | B::ArithmeticNotEqualTo
                        | B::ArithmeticLessThan
                        | B::ArithmeticLessThanOrEqualTo
                        | B::ArithmeticGreaterThan
                        | B::ArithmeticGreaterThanOrEqualTo
                ) {
                    for w in a.into_iter().chain(b) {
                        self.arithmetic(&w.text, depth, via);
                    }
                }
            }
        }
    }

    fn compound(&mut self, c: &ast::CompoundCommand, depth: usize, via: &[String]) -> Vec<usize> {
        // Only a `{ …; }` group runs its body once, in this shell.
        let branch = !matches!(c, ast::CompoundCommand::BraceGroup(_));
        self.conditional += usize::from(branch);
        let direct = self.compound_body(c, depth, via);
        self.conditional -= usize::from(branch);
        direct
    }

    fn compound_body(
        &mut self,
        c: &ast::CompoundCommand,
        depth: usize,
        via: &[String],
    ) -> Vec<usize> {
        use ast::CompoundCommand as C;
        match c {
            C::Arithmetic(a) => {
                self.arithmetic(&a.expr.value, depth, via);
                Vec::new()
            }
            C::ArithmeticForClause(f) => {
                for e in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    self.arithmetic(&e.value, depth, via);
                }
                self.compound_list(&f.body.list, depth, via)
            }
            C::BraceGroup(b) => self.compound_list(&b.list, depth, via),
            C::Subshell(s) => {
                let saved = self.cwd.clone();
                let direct = self.compound_list(&s.list, depth, via);
                self.cwd = saved;
                direct
            }
            C::ForClause(f) => {
                let mut first: Option<Word> = None;
                for w in f.values.iter().flatten() {
                    let ws = self.words(&w.value, depth, via);
                    if first.is_none() {
                        first = ws.into_iter().next();
                    }
                }
                self.state.assign(&f.variable_name, None);
                let _ = first;
                self.compound_list(&f.body.list, depth, via)
            }
            C::CaseClause(c) => {
                self.words(&c.value.value, depth, via);
                let mut direct = Vec::new();
                for item in &c.cases {
                    for p in &item.patterns {
                        self.words(&p.value, depth, via);
                    }
                    if let Some(cmd) = &item.cmd {
                        direct.extend(self.compound_list(cmd, depth, via));
                    }
                }
                direct
            }
            C::IfClause(i) => {
                let mut direct = self.compound_list(&i.condition, depth, via);
                direct.extend(self.compound_list(&i.then, depth, via));
                for e in i.elses.iter().flatten() {
                    if let Some(c) = &e.condition {
                        direct.extend(self.compound_list(c, depth, via));
                    }
                    direct.extend(self.compound_list(&e.body, depth, via));
                }
                direct
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                let mut direct = self.compound_list(&w.0, depth, via);
                direct.extend(self.compound_list(&w.1.list, depth, via));
                direct
            }
            C::Coprocess(c) => self.command(&c.body, depth, via),
        }
    }

    /// `$(( … ))` may hold command substitutions; anything else in it is arithmetic.
    pub(crate) fn arithmetic(&mut self, expr: &str, depth: usize, via: &[String]) {
        if expr.contains("$(") || expr.contains('`') {
            self.words(&format!("\"{}\"", expr.replace('"', "\\\"")), depth, via);
        }
    }

    fn simple(&mut self, s: &ast::SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let mut words: Vec<Word> = Vec::new();
        let mut redirects = Vec::new();
        let mut procsubs: Vec<Vec<usize>> = Vec::new();
        let mut assignments: Vec<(String, Word)> = Vec::new();
        let mut program_fail: Option<String> = None;
        let items = s
            .prefix
            .iter()
            .flat_map(|p| p.0.iter())
            .chain(s.suffix.iter().flat_map(|p| p.0.iter()));
        let mut seen_name = false;
        let mut name_item = s.word_or_name.as_ref();
        for (pos, item) in items.enumerate() {
            // The program name sits between prefix and suffix.
            let in_suffix = pos >= s.prefix.as_ref().map_or(0, |p| p.0.len());
            if in_suffix && !seen_name {
                seen_name = true;
                if let Some(w) = name_item.take() {
                    self.program_words(&w.value, depth, via, &mut words, &mut program_fail);
                }
            }
            match item {
                ast::CommandPrefixOrSuffixItem::IoRedirect(r) => {
                    let read_write = matches!(
                        r,
                        ast::IoRedirect::File(_, ast::IoFileRedirectKind::ReadAndWrite, _)
                    );
                    if let Some(r) = self.redirect(r, depth, via, Some(&mut procsubs)) {
                        // `1<> /dev/sda` opens the file for writing too.
                        if let (true, Redirect::Read(w)) = (read_write, &r) {
                            redirects.push(Redirect::Write(w.clone()));
                        }
                        redirects.push(r);
                    }
                }
                ast::CommandPrefixOrSuffixItem::Word(w) => {
                    words.extend(self.words(&w.value, depth, via));
                }
                ast::CommandPrefixOrSuffixItem::AssignmentWord(a, w) => {
                    let value = self.assignment(a, depth, via);
                    if words.is_empty() && !in_suffix {
                        if let Some(v) = value {
                            assignments.push((assignment_name(a), v));
                        }
                    } else {
                        // `declare x=…`, `export x=…`: an ordinary argument.
                        words.extend(self.words(&w.value, depth, via));
                    }
                }
                ast::CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub) => {
                    let (direct, word) = self.process_substitution(sub, depth, via);
                    procsubs.push(direct);
                    words.push(word);
                }
            }
        }
        if let Some(w) = name_item {
            self.program_words(&w.value, depth, via, &mut words, &mut program_fail);
        }
        for (name, value) in &assignments {
            self.code_env(name, value, depth, via);
        }
        if words.is_empty() {
            for (name, value) in &assignments {
                let value = (self.conditional == 0).then_some(value);
                self.state.assign(name, value);
                let Some(value) = value else { continue };
                // `x='a[$(…)]'` runs the substitution when `x` is used in arithmetic.
                if !value.dynamic && value.text.contains('[') {
                    self.arithmetic(&value.text, depth, via);
                }
            }
        }
        if let Some(detail) = program_fail {
            self.fail("non-literal-program", detail);
            // `x=rm; $x -rf /`, `c='rm -rf /'; $c`: also judge the command the known value
            // forms, split into words as an unquoted expansion would be.
            if let Some((program, args)) = words.split_first()
                && !program.dynamic
                && !program.glob
                && !program.text.is_empty()
            {
                let mut argv: Vec<Word> =
                    program.text.split_whitespace().map(Word::literal).collect();
                argv.extend(args.iter().cloned());
                let Some((program, args)) = argv.split_first() else {
                    return Vec::new();
                };
                let mut cmd = SimpleCommand::from_argv(program, args.to_vec());
                cmd.redirects = redirects;
                cmd.cwd = self.cwd.clone();
                cmd.via = via.to_vec();
                cmd.via.push("value of an expansion".into());
                return self.emit(cmd, depth + 1);
            }
            return Vec::new();
        }
        // A bare redirection (`> ~/.bashrc`, `1<> /dev/sda`) truncates or opens like `:` would.
        if words.is_empty() && !redirects.is_empty() {
            words.push(Word::literal(":"));
        }
        let Some((program, args)) = words.split_first() else {
            return Vec::new();
        };
        if program.text.is_empty() {
            return Vec::new();
        }
        // `c='rm -rf /'; $c`: an unquoted value is split into words (a quoted one with spaces
        // names no program, so splitting it only adds a guess).
        let mut direct = Vec::new();
        if program.text.contains([' ', '\t', '\n']) && program.text.len() < 4096 {
            let mut argv: Vec<Word> = program.text.split_whitespace().map(Word::literal).collect();
            argv.extend(args.iter().cloned());
            // A program word of only blanks splits into nothing.
            if let Some((first, rest)) = argv.split_first() {
                let mut split = SimpleCommand::from_argv(first, rest.to_vec());
                split.redirects = redirects.clone();
                split.cwd = self.cwd.clone();
                split.via = via.to_vec();
                split.via.push("word splitting".into());
                direct.extend(self.emit(split, depth + 1));
            }
        }
        let mut cmd = SimpleCommand::from_argv(program, args.to_vec());
        // What substitutions print flows into this command like a pipe would.
        for w in args {
            for &j in &w.from {
                let c = &self.out.commands[j];
                cmd.upstream_inputs.extend(c.args.iter().cloned());
                cmd.upstream_inputs
                    .extend(c.upstream_inputs.iter().cloned());
            }
        }
        cmd.redirects = redirects;
        cmd.cwd = self.cwd.clone();
        cmd.via = via.to_vec();
        cmd.self_recursive = self.functions.contains(&cmd.program_path);
        // A shell, `source` or an interpreter reading a process substitution runs its output as code.
        let runs_code = SHELLS.contains(&cmd.program.as_str())
            || super::rules::in_class(super::rules::INTERPRETER_CLASS, &cmd.program);
        if runs_code {
            for sub in &procsubs {
                for &j in sub {
                    let c = &mut self.out.commands[j];
                    c.stdout_to.push(cmd.program.clone());
                    c.substituted_into.push(cmd.program.clone());
                }
                // `bash <(echo 'rm -rf /')`: literal output run as code.
                let literal = sub
                    .iter()
                    .find_map(|&j| literal_output(&self.out.commands[j]));
                if let Some(code) = literal {
                    let mut v = via.to_vec();
                    v.push(format!("<(…) run by {}", cmd.program));
                    self.shell(&code, depth + 1, &v);
                }
            }
        }
        self.track_cd(&cmd);
        direct.extend(self.before_emit(&mut cmd, depth, via));
        direct.extend(self.emit(cmd, depth));
        direct
    }

    /// `<(…)`/`>(…)`: its commands run in a subshell; the command sees a `/dev/fd` path.
    fn process_substitution(
        &mut self,
        sub: &ast::SubshellCommand,
        depth: usize,
        via: &[String],
    ) -> (Vec<usize>, Word) {
        let saved = self.cwd.clone();
        let mut v = via.to_vec();
        v.push("<(…)".into());
        self.conditional += 1;
        let direct = self.compound_list(&sub.list, depth + 1, &v);
        self.conditional -= 1;
        self.cwd = saved;
        (direct, Word::opaque("/dev/fd/63"))
    }

    /// Resolves the program word; a name that is not a literal fails closed.
    fn program_words(
        &mut self,
        raw: &str,
        depth: usize,
        via: &[String],
        words: &mut Vec<Word>,
        fail: &mut Option<String>,
    ) {
        let resolved = self.words(raw, depth, via);
        match resolved.first() {
            Some(w) if w.dynamic || w.glob => {
                *fail = Some(format!("program name `{raw}` is not a literal"));
            }
            // `x=rm; $x …`: the value is known, but a program named through an expansion is
            // still approved by a human; the resolved command is judged too (below).
            Some(_) if has_expansion(raw) => {
                *fail = Some(format!("program name `{raw}` comes from an expansion"));
            }
            Some(_) if resolved.len() > 1 => {
                *fail = Some(format!("brace expansion `{raw}` forms the program name"));
            }
            Some(_) if raw.contains('{') && has_brace_expansion(raw) => {
                *fail = Some(format!("brace expansion `{raw}` forms the program name"));
            }
            _ => {}
        }
        if fail.is_some() {
            // Still analyse what the expansion would run: strictest verdict wins.
            if resolved.len() > 1 && resolved.iter().all(|w| !w.dynamic && !w.glob) {
                let cmd = SimpleCommand::from_argv(&resolved[0], resolved[1..].to_vec());
                self.emit(cmd, depth + 1);
            }
        }
        words.extend(resolved);
    }

    fn assignment(&mut self, a: &ast::Assignment, depth: usize, via: &[String]) -> Option<Word> {
        match &a.value {
            ast::AssignmentValue::Scalar(w) => self.words(&w.value, depth, via).into_iter().next(),
            ast::AssignmentValue::Array(items) => {
                for (k, v) in items {
                    if let Some(k) = k {
                        self.words(&k.value, depth, via);
                    }
                    self.words(&v.value, depth, via);
                }
                None
            }
        }
    }

    fn redirect(
        &mut self,
        r: &ast::IoRedirect,
        depth: usize,
        via: &[String],
        procsubs: Option<&mut Vec<Vec<usize>>>,
    ) -> Option<Redirect> {
        match r {
            ast::IoRedirect::File(_, kind, target) => {
                let word = match target {
                    ast::IoFileRedirectTarget::Filename(w)
                    | ast::IoFileRedirectTarget::Duplicate(w) => {
                        self.one_word(&w.value, depth, via)
                    }
                    ast::IoFileRedirectTarget::Fd(_) => return None,
                    ast::IoFileRedirectTarget::ProcessSubstitution(_, sub) => {
                        let (direct, word) = self.process_substitution(sub, depth, via);
                        if let Some(p) = procsubs {
                            p.push(direct);
                        }
                        word
                    }
                };
                use ast::IoFileRedirectKind as K;
                match kind {
                    K::Read | K::ReadAndWrite => Some(Redirect::Read(word)),
                    K::Write | K::Append | K::Clobber => Some(Redirect::Write(word)),
                    // `>& file` is `&> file`; `>&2` only duplicates a descriptor.
                    K::DuplicateInput | K::DuplicateOutput
                        if word.dynamic
                            || word.text.chars().all(|c| c.is_ascii_digit() || c == '-') =>
                    {
                        None
                    }
                    K::DuplicateInput => Some(Redirect::Read(word)),
                    K::DuplicateOutput => Some(Redirect::Write(word)),
                }
            }
            ast::IoRedirect::OutputAndError(w, _) => {
                Some(Redirect::Write(self.one_word(&w.value, depth, via)))
            }
            ast::IoRedirect::HereString(_, w) => {
                Some(Redirect::Here(self.one_word(&w.value, depth, via)))
            }
            ast::IoRedirect::HereDocument(_, h) => {
                let text = if h.requires_expansion {
                    match brush_parser::word::parse_heredoc(&h.doc.value, &parser_options()) {
                        // Heredoc text is not subject to pathname expansion.
                        Ok(pieces) => Word {
                            glob: false,
                            ..self.word_from(&pieces, depth, via)
                        },
                        Err(e) => {
                            self.fail("parse-error", e.to_string());
                            return None;
                        }
                    }
                } else {
                    Word::literal(h.doc.value.clone())
                };
                Some(Redirect::Here(text))
            }
        }
    }

    fn one_word(&mut self, raw: &str, depth: usize, via: &[String]) -> Word {
        let mut words = self.words(raw, depth, via);
        if words.len() == 1 {
            words.remove(0)
        } else {
            Word::opaque(raw)
        }
    }

    /// Resolves one raw word into the words the shell would pass (brace expansion may make
    /// several), analysing any substitutions in it.
    pub(crate) fn words(&mut self, raw: &str, depth: usize, via: &[String]) -> Vec<Word> {
        if !self.tick() {
            return vec![Word::opaque(raw)];
        }
        if raw.contains('{') && has_brace_expansion(raw) {
            match brace_expand(raw) {
                Some(expanded)
                    if expanded.len() > 1 || expanded.first().is_some_and(|e| e != raw) =>
                {
                    return expanded
                        .iter()
                        .map(|w| self.resolve(w, depth, via))
                        .collect();
                }
                Some(_) => {}
                None => {
                    return vec![Word {
                        text: raw.to_string(),
                        dynamic: true,
                        glob: true,
                        from: Vec::new(),
                    }];
                }
            }
        }
        vec![self.resolve(raw, depth, via)]
    }

    fn resolve(&mut self, raw: &str, depth: usize, via: &[String]) -> Word {
        // Most words have nothing to expand or unquote: skip the word parser.
        if !raw.contains(['$', '`', '\'', '"', '\\', '~', '*', '?', '[', '{']) {
            return Word::literal(raw);
        }
        let options = parser_options();
        match brush_parser::word::parse(raw, &options) {
            Ok(pieces) => self.word_from(&pieces, depth, via),
            Err(e) => {
                self.fail("parse-error", e.to_string());
                Word::opaque(raw)
            }
        }
    }

    fn word_from(&mut self, pieces: &[WordPieceWithSource], depth: usize, via: &[String]) -> Word {
        let mut st = WordState::default();
        self.pieces(pieces, false, &mut st, depth, via);
        Word {
            text: st.text,
            dynamic: st.dynamic,
            glob: st.glob,
            from: st.from,
        }
    }

    fn pieces(
        &mut self,
        pieces: &[WordPieceWithSource],
        quoted: bool,
        st: &mut WordState,
        depth: usize,
        via: &[String],
    ) {
        for p in pieces {
            if !self.tick() {
                st.dynamic = true;
                return;
            }
            match &p.piece {
                WordPiece::Text(t) => {
                    let class = t.find('[').is_some_and(|i| t[i + 1..].contains(']'));
                    if !quoted && (t.contains(['*', '?']) || class) {
                        st.glob = true;
                    }
                    st.text.push_str(t);
                }
                WordPiece::SingleQuotedText(t) => st.text.push_str(t),
                WordPiece::AnsiCQuotedText(t) => st.text.push_str(&decode_ansi_c(t)),
                WordPiece::DoubleQuotedSequence(inner)
                | WordPiece::GettextDoubleQuotedSequence(inner) => {
                    self.pieces(inner, true, st, depth, via)
                }
                WordPiece::TildeExpansion(t) => match t {
                    TildeExpr::Home => st.text.push('~'),
                    TildeExpr::UserHome(u) => {
                        st.text.push('~');
                        st.text.push_str(u);
                    }
                    TildeExpr::WorkingDir => st.text.push('.'),
                    _ => {
                        st.text.push_str("~-");
                        st.dynamic = true;
                    }
                },
                WordPiece::ParameterExpansion(e) => self.parameter(e, st, depth, via),
                WordPiece::CommandSubstitution(code)
                | WordPiece::BackquotedCommandSubstitution(code) => {
                    let code = match &p.piece {
                        WordPiece::BackquotedCommandSubstitution(_) => unescape_backquoted(code),
                        _ => code.clone(),
                    };
                    let saved = self.cwd.clone();
                    let mut v = via.to_vec();
                    v.push("$(…)".into());
                    self.conditional += 1;
                    let direct = self.shell(&code, depth + 1, &v);
                    self.conditional -= 1;
                    self.cwd = saved;
                    // `$(echo +main)`, `$(printf /)`: the output is literal.
                    let literal = match direct[..] {
                        [j] => literal_output(&self.out.commands[j]),
                        _ => None,
                    };
                    st.from.extend(direct);
                    match literal {
                        Some(out) => st.text.push_str(out.trim_end_matches('\n')),
                        None => {
                            st.text.push_str("$(…)");
                            st.dynamic = true;
                        }
                    }
                }
                WordPiece::EscapeSequence(s) => {
                    let rest = s.strip_prefix('\\').unwrap_or(s);
                    if rest == "\n" {
                        // Line continuation: the backslash-newline disappears.
                    } else if quoted && !matches!(rest, "$" | "`" | "\"" | "\\") {
                        st.text.push_str(s);
                    } else {
                        st.text.push_str(rest);
                    }
                }
                WordPiece::ArithmeticExpression(a) => {
                    self.arithmetic(&a.value, depth, via);
                    st.text.push_str("$((…))");
                    st.dynamic = true;
                }
            }
        }
    }

    fn parameter(&mut self, e: &ParameterExpr, st: &mut WordState, depth: usize, via: &[String]) {
        if let ParameterExpr::Parameter {
            parameter: Parameter::Named(name),
            indirect: false,
        } = e
        {
            match name.as_str() {
                "HOME" => return st.text.push('~'),
                "PWD" => return st.text.push('.'),
                _ => {}
            }
            // A value assigned earlier in the input, unconditionally and in this shell
            // (`D=/dev/sda; dd of=$D`).
            if let Some(v) = self.state.value(name) {
                st.text.push_str(&v);
                return;
            }
        }
        if let ParameterExpr::Transform {
            parameter: Parameter::Named(name),
            op: brush_parser::word::ParameterTransformOp::PromptExpand,
            ..
        } = e
        {
            // `${x@P}` expands `$(…)` in the value as a prompt would.
            match self.state.value(name) {
                Some(v) => self.arithmetic(&v, depth, via),
                None => self.fail(
                    "dynamic-code",
                    format!("${{{name}@P}} runs substitutions in a value not known here"),
                ),
            }
        }
        if let ParameterExpr::AssignDefaultValues {
            parameter: Parameter::Named(name),
            ..
        } = e
        {
            self.state.assign(name, None);
        }
        // Default, alternative and pattern words are themselves expanded: walk them for
        // substitutions.
        let nested: Vec<&String> = match e {
            ParameterExpr::UseDefaultValues {
                default_value: v, ..
            }
            | ParameterExpr::AssignDefaultValues {
                default_value: v, ..
            }
            | ParameterExpr::IndicateErrorIfNullOrUnset {
                error_message: v, ..
            }
            | ParameterExpr::UseAlternativeValue {
                alternative_value: v,
                ..
            }
            | ParameterExpr::RemoveSmallestSuffixPattern { pattern: v, .. }
            | ParameterExpr::RemoveLargestSuffixPattern { pattern: v, .. }
            | ParameterExpr::RemoveSmallestPrefixPattern { pattern: v, .. }
            | ParameterExpr::RemoveLargestPrefixPattern { pattern: v, .. }
            | ParameterExpr::UppercaseFirstChar { pattern: v, .. }
            | ParameterExpr::UppercasePattern { pattern: v, .. }
            | ParameterExpr::LowercaseFirstChar { pattern: v, .. }
            | ParameterExpr::LowercasePattern { pattern: v, .. } => v.iter().collect(),
            ParameterExpr::ReplaceSubstring {
                pattern,
                replacement,
                ..
            } => std::iter::once(pattern).chain(replacement.iter()).collect(),
            ParameterExpr::Substring { offset, length, .. } => {
                self.arithmetic(&offset.value, depth, via);
                if let Some(l) = length {
                    self.arithmetic(&l.value, depth, via);
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        for n in nested {
            if n.contains("$(") || n.contains('`') {
                self.words(&format!("\"{}\"", n.replace('"', "\\\"")), depth, via);
            }
        }
        st.text.push_str("$…");
        st.dynamic = true;
    }

    /// Follows `cd`/`pushd` so relative paths are judged against the right directory.
    fn track_cd(&mut self, cmd: &SimpleCommand) {
        if !matches!(cmd.program.as_str(), "cd" | "pushd" | "popd") {
            return;
        }
        let target = cmd
            .args
            .iter()
            .find(|a| !a.text.starts_with('-') || a.text == "-");
        self.cwd = match (cmd.program.as_str(), target, &self.cwd) {
            ("popd", _, _) => None,
            (_, None, _) => Some("~".into()),
            (_, Some(t), _) if t.dynamic || t.glob || t.text == "-" => None,
            (_, Some(t), _) if t.text.starts_with('/') || t.text.starts_with('~') => {
                Some(t.text.clone())
            }
            (_, Some(t), Some(c)) if c.is_empty() => Some(t.text.clone()),
            (_, Some(t), Some(c)) => Some(format!("{c}/{}", t.text)),
            (_, Some(_), None) => None,
        };
    }
}

#[derive(Default)]
struct WordState {
    text: String,
    dynamic: bool,
    glob: bool,
    from: Vec<usize>,
}

fn assignment_name(a: &ast::Assignment) -> String {
    match &a.name {
        ast::AssignmentName::VariableName(n) | ast::AssignmentName::ArrayElementName(n, _) => {
            n.clone()
        }
    }
}

pub(crate) fn parser_options() -> brush_parser::ParserOptions {
    brush_parser::ParserOptions::default()
}

/// Shells whose `-c`, script operand and stdin follow the POSIX shell's conventions.
pub const POSIX_LIKE_SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "oksh", "loksh", "pdksh", "lksh", "ash",
    "yash", "fish", "csh", "tcsh", "rbash", "posh", "bosh", "hush", "elvish", "xonsh",
];

/// Paths that name the process's own standard input (`stdin.rs` has the list).
pub(crate) fn is_stdin_path(t: &str) -> bool {
    t != "-" && super::stdin::names_stdin(&Word::literal(t))
}

/// True for a shell that would read its program from stdin (no `-c`, no script operand, or
/// `-s`, or a script operand naming stdin: `stdin.rs` has the grammar).
pub(crate) fn reads_code_from_stdin(c: &SimpleCommand) -> bool {
    super::stdin::reads(c) == super::stdin::Reads::Shell
}

/// Whether a command runs what arrives on its standard input as code: a shell reading its
/// program from stdin, `source /dev/stdin`, an interpreter with no script, code option or
/// module (`python3`, `python3 -`, `perl /dev/stdin`). `python3 -m json.tool`, `node -e …`,
/// `jq`, `awk '…'` read data. The grammar of each program is in `stdin.rs`; a script operand
/// only known at run time counts as code.
pub fn stdin_is_code(c: &SimpleCommand) -> bool {
    super::stdin::reads(c) != super::stdin::Reads::Data
}

/// The text a pipeline stage writes when it is plainly literal: `echo …`, `printf '…'`,
/// `cat` of a heredoc or here-string.
pub(crate) fn literal_output(c: &SimpleCommand) -> Option<String> {
    match c.program.as_str() {
        "echo" => {
            let args: Vec<&Word> = c
                .args
                .iter()
                .skip_while(|a| matches!(a.text.as_str(), "-n" | "-e" | "-E" | "-ne" | "-en"))
                .collect();
            if args.iter().any(|a| a.dynamic) {
                return None;
            }
            Some(
                args.iter()
                    .map(|a| a.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        "printf" => {
            let f = c.args.first()?;
            (!f.dynamic && c.args.len() == 1 && !f.text.contains('%'))
                .then(|| f.text.replace("\\n", "\n"))
        }
        "cat" if c.args.is_empty() => c.redirects.iter().find_map(|r| match r {
            Redirect::Here(w) if !w.dynamic => Some(w.text.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// The first limit an input exceeds, checked before brush-parser (which recurses and cannot be
/// interrupted) sees it.
fn over_limit(text: &str, depth: usize) -> Option<(&'static str, String)> {
    if depth > MAX_DEPTH {
        return Some((
            "nesting-too-deep",
            format!("more than {MAX_DEPTH} nested shells"),
        ));
    }
    if text.len() > MAX_INPUT {
        let detail = format!("{} bytes, limit {MAX_INPUT}", text.len());
        return Some(("input-too-large", detail));
    }
    let tokens = token_estimate(text);
    if tokens > MAX_TOKENS {
        return Some((
            "too-complex",
            format!("about {tokens} tokens, limit {MAX_TOKENS}"),
        ));
    }
    if let Some(digits) = oversized_fd_number(text) {
        return Some((
            "fd-number-too-large",
            format!("a redirection's descriptor number has {digits} digits"),
        ));
    }
    let nesting = nesting_estimate(text);
    (nesting > MAX_NESTING).then(|| {
        let detail = format!("syntactic nesting about {nesting}, limit {MAX_NESTING}");
        ("nesting-too-deep", detail)
    })
}

/// A word of only digits directly followed by `<` or `>` is a redirection's descriptor number;
/// brush-parser panics on one that does not fit an integer (found by the `policy` fuzz
/// target). No real descriptor has 10 digits, so such input fails closed before it reaches
/// the parser. Quoted text and digits inside a longer word (`nonce=000…>`) are not numbers.
fn oversized_fd_number(text: &str) -> Option<usize> {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut run: Option<usize> = None; // digits since a word start, if the word is all digits
    let mut at_word_start = true;
    for b in text.bytes() {
        if escaped {
            escaped = false;
            run = None;
            at_word_start = false;
            continue;
        }
        match b {
            b'\\' if !single => escaped = true,
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            _ if single || double => {}
            b'0'..=b'9' => {
                run = match run {
                    Some(n) => Some(n + 1),
                    None if at_word_start => Some(1),
                    None => None,
                };
                at_word_start = false;
                continue;
            }
            b'<' | b'>' => {
                if let Some(n) = run.filter(|n| *n >= 10) {
                    return Some(n);
                }
            }
            _ => {}
        }
        at_word_start = matches!(b, b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')')
            && !single
            && !double;
        run = None;
    }
    None
}

/// A cheap upper bound of the tokens brush-parser would produce: whitespace-separated runs plus
/// operator characters.
pub fn token_estimate(text: &str) -> usize {
    let mut count = 0;
    let mut in_word = false;
    for b in text.bytes() {
        match b {
            b' ' | b'\t' | b'\n' => in_word = false,
            b'|' | b';' | b'&' | b'(' | b')' | b'<' | b'>' => {
                count += 1;
                in_word = false;
            }
            _ if !in_word => {
                count += 1;
                in_word = true;
            }
            _ => {}
        }
    }
    count
}

/// A cheap upper bound of syntactic nesting, computed before brush-parser (which recurses)
/// sees the text. Quoting is ignored on purpose: it can only over-estimate.
pub fn nesting_estimate(text: &str) -> usize {
    let mut depth: usize = 0;
    let mut max: usize = 0;
    let mut word = String::new();
    let flush = |word: &mut String, depth: &mut usize, max: &mut usize| {
        match word.as_str() {
            "if" | "while" | "until" | "for" | "case" | "select" | "function" => {
                *depth += 1;
                *max = (*max).max(*depth);
            }
            "fi" | "done" | "esac" => *depth = depth.saturating_sub(1),
            _ => {}
        }
        word.clear();
    };
    for ch in text.chars() {
        match ch {
            '(' | '{' | '`' | '[' => {
                flush(&mut word, &mut depth, &mut max);
                depth += 1;
                max = max.max(depth);
            }
            ')' | '}' | ']' => {
                flush(&mut word, &mut depth, &mut max);
                depth = depth.saturating_sub(1);
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                if word.len() < 16 {
                    word.push(c);
                }
            }
            _ => flush(&mut word, &mut depth, &mut max),
        }
    }
    flush(&mut word, &mut depth, &mut max);
    // Backquotes open and close with the same character; the count above treats each one as
    // an opener, which over-estimates by design.
    max
}

/// Whether a raw word contains a parameter, command or arithmetic expansion (not `$'…'` or
/// `$"…"` quoting).
fn has_expansion(raw: &str) -> bool {
    raw.contains('`')
        || raw
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'$' && !matches!(w[1], b'\'' | b'"'))
}

fn has_brace_expansion(raw: &str) -> bool {
    let Some(open) = raw.find('{') else {
        return false;
    };
    raw[open..].contains('}') && (raw[open..].contains(',') || raw[open..].contains(".."))
}

/// Expands brace expressions like bash does; `None` when the result would be too large.
fn brace_expand(raw: &str) -> Option<Vec<String>> {
    let options = parser_options();
    let parsed = match brush_parser::word::parse_brace_expansions(raw, &options) {
        Ok(Some(p)) => p,
        _ => return Some(vec![raw.to_string()]),
    };
    expand_members(&parsed)
}

fn expand_members(items: &[BraceExpressionOrText]) -> Option<Vec<String>> {
    let mut acc = vec![String::new()];
    for item in items {
        let alternatives: Vec<String> = match item {
            BraceExpressionOrText::Text(t) => vec![t.clone()],
            BraceExpressionOrText::Expr(members) => {
                let mut alts = Vec::new();
                for m in members {
                    match m {
                        BraceExpressionMember::Child(c) => alts.extend(expand_members(c)?),
                        BraceExpressionMember::NumberSequence {
                            start,
                            end,
                            increment,
                        } => {
                            let step = increment.unsigned_abs().max(1);
                            let count = start.abs_diff(*end) / step + 1;
                            if count > MAX_BRACE_WORDS as u64 {
                                return None;
                            }
                            let mut v = *start;
                            for _ in 0..count {
                                alts.push(v.to_string());
                                v = if start <= end {
                                    v + step as i64
                                } else {
                                    v - step as i64
                                };
                            }
                        }
                        BraceExpressionMember::CharSequence { start, end, .. } => {
                            let (a, b) = (*start as u32, *end as u32);
                            if a.abs_diff(b) as usize > MAX_BRACE_WORDS {
                                return None;
                            }
                            let range: Vec<u32> = if a <= b {
                                (a..=b).collect()
                            } else {
                                (b..=a).rev().collect()
                            };
                            alts.extend(
                                range
                                    .into_iter()
                                    .filter_map(char::from_u32)
                                    .map(String::from),
                            );
                        }
                    }
                }
                alts
            }
        };
        if acc.len() * alternatives.len() > MAX_BRACE_WORDS {
            return None;
        }
        acc = acc
            .iter()
            .flat_map(|a| alternatives.iter().map(move |b| format!("{a}{b}")))
            .collect();
    }
    Some(acc)
}

/// Inside backquotes, `\$`, `` \` `` and `\\` stand for the character itself.
fn unescape_backquoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('$' | '`' | '\\')) {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes the body of `$'…'` (with or without the surrounding `$'` and `'`).
pub fn decode_ansi_c(s: &str) -> String {
    let body = s
        .strip_prefix("$'")
        .and_then(|b| b.strip_suffix('\''))
        .unwrap_or(s);
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    let hex = |chars: &[char], i: usize, max: usize| -> (u32, usize) {
        let mut v = 0u32;
        let mut n = 0;
        while n < max && i + n < chars.len() && chars[i + n].is_ascii_hexdigit() {
            v = v * 16 + chars[i + n].to_digit(16).unwrap_or(0);
            n += 1;
        }
        (v, n)
    };
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '\\' || i >= chars.len() {
            out.push(c);
            continue;
        }
        let e = chars[i];
        i += 1;
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'e' | 'E' => out.push('\x1b'),
            'f' => out.push('\x0c'),
            'v' => out.push('\x0b'),
            '\\' | '\'' | '"' | '?' => out.push(e),
            'c' if i < chars.len() => {
                out.push(char::from_u32(chars[i] as u32 & 0x1f).unwrap_or('?'));
                i += 1;
            }
            'x' | 'u' | 'U' => {
                let max = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let (v, n) = hex(&chars, i, max);
                if n == 0 {
                    out.push('\\');
                    out.push(e);
                } else {
                    out.extend(char::from_u32(v));
                    i += n;
                }
            }
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                let mut n = 0;
                while n < 2 && i < chars.len() && chars[i].is_digit(8) {
                    v = v * 8 + chars[i].to_digit(8).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.extend(char::from_u32(v & 0xff));
            }
            _ => {
                out.push('\\');
                out.push(e);
            }
        }
    }
    out
}

/// Whether a program basename is a shell or `source`-like builtin.
pub fn is_shell(program: &str) -> bool {
    SHELLS.contains(&basename(program))
}
