//! Wrappers, nested shells and "read-only" tools that run code: each simple command is kept
//! as written *and* the command it would run is exposed to the rules (`sudo env rm -rf /`
//! yields `sudo`, `env` and `rm`).
//!
//! Knowledge of each wrapper's options lives here as data; when a wrapper's arguments cannot
//! be followed (a dynamic program or code string) the walk fails closed rather than guessing.

use super::model::{SimpleCommand, Word, basename};
use super::parse::{MAX_DEPTH, Walker, reads_code_from_stdin};

/// How to find the inner command of a wrapper: short options taking a value, long options
/// taking a value, positional operands before the command, whether `NAME=value` words are
/// skipped, and short flags that mean "no command follows".
struct Spec {
    short_values: &'static str,
    long_values: &'static [&'static str],
    operands: usize,
    assignments: bool,
    no_command: &'static str,
}

const fn spec(short_values: &'static str, long_values: &'static [&'static str]) -> Spec {
    Spec {
        short_values,
        long_values,
        operands: 0,
        assignments: false,
        no_command: "",
    }
}

fn wrapper_spec(program: &str) -> Option<Spec> {
    Some(match program {
        "env" => Spec {
            assignments: true,
            ..spec("uCS", &["unset", "chdir", "split-string"])
        },
        "command" => Spec {
            no_command: "vV",
            ..spec("", &[])
        },
        "builtin" | "nohup" | "unbuffer" | "catchsegv" | "sg" | "proxychains" => spec("", &[]),
        "exec" => spec("a", &[]),
        "nice" => spec("n", &["adjustment"]),
        "setsid" => spec("", &[]),
        "time" => spec("fo", &["format", "output"]),
        "timeout" => Spec {
            operands: 1,
            ..spec("sk", &["signal", "kill-after"])
        },
        "stdbuf" => spec("ioe", &["input", "output", "error"]),
        "sudo" => Spec {
            assignments: true,
            no_command: "lKkV",
            ..spec(
                "ughpCDrtTUR",
                &[
                    "user",
                    "group",
                    "host",
                    "prompt",
                    "close-from",
                    "chdir",
                    "role",
                    "type",
                    "command-timeout",
                    "other-user",
                    "chroot",
                ],
            )
        },
        "doas" => spec("uC", &[]),
        "runuser" => spec(
            "ugGw",
            &["user", "group", "supp-group", "whitelist-environment"],
        ),
        "xargs" => spec(
            "IELnPsad",
            &[
                "replace",
                "eof",
                "max-lines",
                "max-args",
                "max-procs",
                "max-chars",
                "arg-file",
                "delimiter",
                "process-slot-var",
            ],
        ),
        "busybox" | "toybox" => spec("", &[]),
        "chroot" => Spec {
            operands: 1,
            ..spec("", &["userspec", "groups"])
        },
        "nsenter" => spec("tSGw", &["target", "setuid", "setgid", "wd"]),
        "unshare" => spec("SGRw", &["setuid", "setgid", "root", "wd"]),
        "strace" | "ltrace" => spec("eoapsuPSXbIA", &["output", "attach", "user"]),
        "ionice" => spec("cnpP", &["class", "classdata", "pid", "pgid"]),
        "taskset" => Spec {
            operands: 1,
            no_command: "p",
            ..spec("", &[])
        },
        "systemd-run" => spec(
            "pEuMHrd",
            &["property", "setenv", "unit", "machine", "host"],
        ),
        "firejail" | "proot" | "fakeroot" | "torsocks" | "tsocks" => spec("", &[]),
        "flock" => Spec {
            operands: 1,
            ..spec("wEc", &["timeout", "conflict-exit-code", "command"])
        },
        _ => return None,
    })
}

/// Programs whose code-running arguments are followed by name above (the generic argv model
/// of `exec.rs` does not guess for them).
const HANDLED: &[&str] = &[
    "su",
    "eval",
    "alias",
    "script",
    "find",
    "parallel",
    "watch",
    "git",
    "rg",
    "sort",
    "tar",
    "bsdtar",
    "gtar",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "source",
    ".",
    "at",
    "batch",
    "pwsh",
    "powershell",
    "nu",
    "cmd",
    "cmd.exe",
    "ssh",
];

/// git `-c key=value` keys whose value is run as a command.
const GIT_CODE_KEYS: &[&str] = &[
    "core.pager",
    "core.sshcommand",
    "core.editor",
    "core.fsmonitor",
    "core.askpass",
    "sequence.editor",
    "diff.external",
    "credential.helper",
    "gpg.program",
    "gpg.ssh.program",
    "uploadpack.packobjectshook",
    "core.hookspath",
    "protocol.ext.allow",
];

/// Whether a git configuration key (lower case) names a command git runs: the fixed keys
/// above and the per-name families (`filter.*.clean`, `diff.*.textconv`, `pager.*` …).
pub(crate) fn is_git_code_key(key: &str) -> bool {
    if GIT_CODE_KEYS.contains(&key) || key.starts_with("pager.") {
        return true;
    }
    let parts: Vec<&str> = key.split('.').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    parts.len() >= 3
        && matches!(
            (first, last),
            ("filter", "clean" | "smudge" | "process")
                | ("diff", "textconv" | "command")
                | ("merge", "driver")
                | ("difftool" | "mergetool", "cmd" | "path")
                | ("remote", "uploadpack" | "receivepack" | "vcs")
                | ("gpg", "program")
                | ("credential", "helper")
                | ("browser" | "man", "cmd" | "path")
                | ("includeif", "path")
        )
        || matches!(
            key,
            "core.alternaterefscommand"
                | "core.gitproxy"
                | "include.path"
                | "init.templatedir"
                | "web.browser"
                | "sendemail.smtpserver"
                | "sendemail.tocmd"
                | "sendemail.cccmd"
                | "core.worktree"
        )
}

/// Interpreters and the options that take inline code.
fn inline_code_options(program: &str) -> Option<(&'static [&'static str], char)> {
    let p = program.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match p {
        "python" | "pypy" => (&["-c"], 'c'),
        "perl" => (&["-e", "-E"], 'e'),
        "ruby" => (&["-e"], 'e'),
        "node" | "nodejs" | "bun" => (&["-e", "--eval", "-p", "--print"], 'e'),
        "deno" => (&["eval"], '\0'),
        "php" => (&["-r"], 'r'),
        "lua" | "luajit" => (&["-e"], 'e'),
        _ => return None,
    })
}

impl Walker {
    /// Records a simple command and everything it would run; returns the direct commands.
    pub(crate) fn emit(&mut self, cmd: SimpleCommand, depth: usize) -> Vec<usize> {
        if !self.tick() {
            return Vec::new();
        }
        let idx = self.out.commands.len();
        self.out.commands.push(cmd);
        let mut direct = vec![idx];
        if depth > MAX_DEPTH {
            self.fail(
                "nesting-too-deep",
                format!("more than {MAX_DEPTH} nested wrappers or shells"),
            );
            return direct;
        }
        let cmd = self.out.commands[idx].clone();
        let program = cmd.program.as_str();
        let mut via = cmd.via.clone();
        via.push(program.to_string());

        if let Some(spec) = wrapper_spec(program) {
            if let Some(mut inner) = self.wrapper_inner(&cmd, &spec, depth, &via) {
                if program == "xargs" {
                    xargs_placeholders(&cmd.args, &mut inner);
                }
                direct.extend(self.emit_argv(&cmd, inner, depth, &via));
            }
            return direct;
        }
        let handled = HANDLED.contains(&program)
            || super::parse::POSIX_LIKE_SHELLS.contains(&program)
            || inline_code_options(program).is_some();
        match program {
            p if super::parse::POSIX_LIKE_SHELLS.contains(&p) => {
                direct.extend(self.nested_shell(&cmd, depth, &via));
            }
            "pwsh" | "powershell" | "nu" | "cmd" | "cmd.exe" => {
                if cmd.args.iter().any(|a| {
                    let t = a.text.to_ascii_lowercase();
                    matches!(
                        t.as_str(),
                        "-c" | "-command" | "/c" | "-encodedcommand" | "-e"
                    )
                }) {
                    self.fail(
                        "dynamic-code",
                        format!("{program} runs code in a language this policy does not parse"),
                    );
                }
            }
            "source" | "." => direct.extend(self.source_stdin(&cmd, depth, &via)),
            "at" | "batch" => {
                let here = cmd.redirects.iter().find_map(|r| match r {
                    super::model::Redirect::Here(w) => Some(w.clone()),
                    _ => None,
                });
                if let Some(code) = here {
                    direct.extend(self.code(&code, depth, &via, "at"));
                }
            }
            "su" => {
                if let Some(code) = option_value(&cmd.args, &["-c", "--command"], "c") {
                    direct.extend(self.code(&code, depth, &via, "su -c"));
                }
            }
            "eval" => {
                let code = join_words(&cmd.args);
                direct.extend(self.code(&code, depth, &via, "eval"));
            }
            "alias" => {
                for a in &cmd.args {
                    if let Some((_, value)) = a.text.split_once('=') {
                        let w = Word {
                            text: value.to_string(),
                            ..a.clone()
                        };
                        direct.extend(self.code(&w, depth, &via, "alias"));
                    }
                }
            }
            "script" => {
                if let Some(code) = option_value(&cmd.args, &["-c", "--command"], "c") {
                    direct.extend(self.code(&code, depth, &via, "script -c"));
                }
            }
            "find" => direct.extend(self.find_exec(&cmd, depth, &via)),
            "parallel" => direct.extend(self.parallel(&cmd, depth, &via)),
            "watch" => {
                let args = skip_options(&cmd.args, "nqd", &["interval", "errexit", "equexit"]);
                let exec = cmd
                    .args
                    .iter()
                    .any(|a| a.text == "-x" || a.text == "--exec");
                if let Some(rest) = args {
                    if exec {
                        direct.extend(self.emit_argv(&cmd, rest, depth, &via));
                    } else {
                        direct.extend(self.code(&join_words(&rest), depth, &via, "watch"));
                    }
                }
            }
            "git" => direct.extend(self.git(&cmd, depth, &via)),
            "rg" => {
                if let Some(p) = option_value(&cmd.args, &["--pre"], "") {
                    direct.extend(self.emit_argv(&cmd, vec![p], depth, &via));
                }
            }
            "sort" => {
                if let Some(p) = option_value(&cmd.args, &["--compress-program"], "") {
                    direct.extend(self.emit_argv(&cmd, vec![p], depth, &via));
                }
            }
            "tar" | "bsdtar" | "gtar" => {
                for opt in [
                    "--to-command",
                    "--use-compress-program",
                    "--info-script",
                    "--new-volume-script",
                    "--rsh-command",
                ] {
                    if let Some(code) = option_value(&cmd.args, &[opt], "") {
                        direct.extend(self.code(&code, depth, &via, opt));
                    }
                }
                if let Some(code) = option_value(&cmd.args, &["-I"], "") {
                    direct.extend(self.code(&code, depth, &via, "tar -I"));
                }
                if let Some(action) = option_value(&cmd.args, &["--checkpoint-action"], "")
                    && let Some(code) = action.text.strip_prefix("exec=")
                {
                    let w = Word {
                        text: code.to_string(),
                        ..action.clone()
                    };
                    direct.extend(self.code(&w, depth, &via, "tar --checkpoint-action"));
                }
            }
            "awk" | "gawk" | "mawk" | "nawk" => {
                let program =
                    skip_options(&cmd.args, "fvF", &["file", "assign", "field-separator"])
                        .and_then(|r| r.into_iter().next());
                let uses_file = cmd
                    .args
                    .iter()
                    .any(|a| a.text == "-f" || a.text.starts_with("--file"));
                if let (Some(code), false) = (program, uses_file) {
                    self.interpreter_code(&code, true, depth, &via);
                }
            }
            _ => {
                if let Some((opts, cluster)) = inline_code_options(program)
                    && let Some(code) = inline_code(&cmd.args, opts, cluster)
                {
                    self.interpreter_code(&code, false, depth, &via);
                }
            }
        }
        direct.extend(self.exec_model(&cmd, depth, &via, handled));
        direct
    }

    /// An environment assignment given to the command that follows (`env.rs` decides what
    /// it does: code, injection, program lookup).
    pub(crate) fn code_env(&mut self, name: &str, value: &Word, depth: usize, via: &[String]) {
        if super::exec::PROMPT_ENV.contains(&name) && name != "PROMPT_COMMAND" {
            // Prompts (and `PS4` under `set -x`) expand `$(…)` when shown.
            if value.dynamic {
                self.fail(
                    "dynamic-code",
                    format!("{name} is expanded as a prompt and is not known here"),
                );
            } else {
                self.arithmetic(&value.text, depth, via);
            }
        } else {
            self.env_var(name, value, depth, via);
        }
    }

    /// A code string (see [`Walker::code`]), for `env.rs`.
    pub(crate) fn code_string(&mut self, code: &Word, depth: usize, via: &[String], what: &str) {
        self.code(code, depth, via, what);
    }

    /// Analyses a code string; a dynamic one fails closed.
    pub(crate) fn code(
        &mut self,
        code: &Word,
        depth: usize,
        via: &[String],
        what: &str,
    ) -> Vec<usize> {
        if code.dynamic {
            // `sh -c "$(curl …)"`: the substitution's output is the code.
            let runner = via.last().cloned().unwrap_or_default();
            for &j in &code.from {
                let c = &mut self.out.commands[j];
                c.stdout_to.push(runner.clone());
                c.substituted_into.push(runner.clone());
            }
            self.fail(
                "dynamic-code",
                format!(
                    "{what} runs code that is only known at run time: {}",
                    code.text
                ),
            );
            return Vec::new();
        }
        let mut v = via.to_vec();
        v.push(what.to_string());
        let suffixes = std::mem::replace(&mut self.suffixes, true);
        let direct = self.shell(&code.text, depth + 1, &v);
        self.suffixes = suffixes;
        direct
    }

    pub(crate) fn emit_argv(
        &mut self,
        outer: &SimpleCommand,
        argv: Vec<Word>,
        depth: usize,
        via: &[String],
    ) -> Vec<usize> {
        let Some((program, args)) = argv.split_first() else {
            return Vec::new();
        };
        if program.dynamic || program.glob {
            self.fail(
                "non-literal-program",
                format!(
                    "{} runs `{}`, which is not a literal",
                    outer.program, program.text
                ),
            );
            return Vec::new();
        }
        let mut inner = SimpleCommand::from_argv(program, args.to_vec());
        inner.redirects = outer.redirects.clone();
        inner.cwd = outer.cwd.clone();
        inner.via = via.to_vec();
        self.emit(inner, depth + 1)
    }

    fn wrapper_inner(
        &mut self,
        cmd: &SimpleCommand,
        spec: &Spec,
        depth: usize,
        via: &[String],
    ) -> Option<Vec<Word>> {
        // `env -S 'a b'` and `flock FILE -c 'code'` carry code in an option.
        if cmd.program == "env"
            && let Some(code) = option_value(&cmd.args, &["-S", "--split-string"], "S")
        {
            let mut rest = code.clone();
            let after =
                skip_options(&cmd.args, spec.short_values, spec.long_values).unwrap_or_default();
            for a in after {
                rest.text.push(' ');
                rest.text.push_str(&a.text);
                rest.dynamic |= a.dynamic;
            }
            self.code(&rest, depth, via, "env -S");
            return None;
        }
        if cmd.program == "flock"
            && let Some(code) = option_value(&cmd.args, &["-c", "--command"], "c")
        {
            self.code(&code, depth, via, "flock -c");
            return None;
        }
        for a in &cmd.args {
            if a.text == "--" || !a.text.starts_with('-') {
                break;
            }
            if !a.text.starts_with("--") && a.text[1..].chars().any(|c| spec.no_command.contains(c))
            {
                return None;
            }
        }
        let mut rest = skip_options(&cmd.args, spec.short_values, spec.long_values)?;
        let skip = spec.operands.min(rest.len());
        rest.drain(..skip);
        if spec.assignments {
            // env(1) and sudo take any `NAME=value` before the command, not only names the
            // shell accepts (`BASH_FUNC_ls%%=() { …; }`).
            while rest.first().is_some_and(|w| {
                w.text
                    .split_once('=')
                    .is_some_and(|(n, _)| !n.is_empty() && !n.contains('/'))
            }) {
                let w = rest.remove(0);
                if let Some((name, value)) = w.text.split_once('=') {
                    let value = Word {
                        text: value.to_string(),
                        ..w.clone()
                    };
                    self.code_env(name, &value, depth, via);
                }
            }
        }
        if rest.is_empty() && cmd.program == "xargs" {
            rest.push(Word::literal("echo"));
        }
        (!rest.is_empty()).then_some(rest)
    }

    fn nested_shell(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let mut i = 0;
        while i < cmd.args.len() {
            let t = cmd.args[i].text.as_str();
            if t == "--" || !(t.starts_with('-') || t.starts_with('+')) || t.len() < 2 {
                break;
            }
            if t.starts_with("--") {
                i += 1;
                continue;
            }
            // `-c`, `-lc`, `-xec`: the first operand after the options is the code.
            if t[1..].contains('c') && t.starts_with('-') {
                let operands = &cmd.args[i + 1..];
                let code = operands
                    .iter()
                    .find(|a| !a.text.starts_with('-') && !a.text.starts_with('+'))
                    .or(operands.first());
                return match code {
                    Some(code) => self.code(code, depth, via, &format!("{} -c", cmd.program)),
                    None => Vec::new(),
                };
            }
            // `-o option` takes a value.
            if t.ends_with('o') || t.ends_with('O') {
                i += 1;
            }
            i += 1;
        }
        // A heredoc or here-string given to a shell that reads stdin is its program.
        if reads_code_from_stdin(cmd) {
            let here = cmd.redirects.iter().find_map(|r| match r {
                super::model::Redirect::Here(w) => Some(w.clone()),
                _ => None,
            });
            if let Some(code) = here {
                return self.code(&code, depth, via, "heredoc");
            }
        }
        Vec::new()
    }

    fn find_exec(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let mut direct = Vec::new();
        // `{}` stands for each path found under the starting points.
        let starts: Vec<Word> = cmd
            .args
            .iter()
            .take_while(|a| !a.text.starts_with('-') && a.text != "(" && a.text != "!")
            .take(4)
            .cloned()
            .collect();
        let starts = if starts.is_empty() {
            vec![Word::literal(".")]
        } else {
            starts
        };
        // What `{}` can be: with a name/path/time/size test, some paths below the start
        // (`START/{}`); with only `-type`/`-mindepth`, everything below it (`START/*`);
        // with no test, the start point itself as well.
        let tests = |names: &[&str]| cmd.args.iter().any(|a| names.contains(&a.text.as_str()));
        let selective = tests(&[
            "-name",
            "-iname",
            "-path",
            "-ipath",
            "-wholename",
            "-iwholename",
            "-regex",
            "-iregex",
            "-newer",
            "-mtime",
            "-mmin",
            "-atime",
            "-amin",
            "-ctime",
            "-cmin",
            "-size",
            "-perm",
            "-user",
            "-group",
            "-nouser",
            "-nogroup",
            "-empty",
            "-links",
            "-inum",
            "-samefile",
            "-lname",
            "-ilname",
            "-newermt",
            "-used",
            "-uid",
            "-gid",
        ]);
        let below = tests(&["-type", "-mindepth", "-xtype"]);
        let starts: Vec<Word> = starts
            .into_iter()
            .map(|s| match (selective, below) {
                (true, _) => Word {
                    text: format!("{}/{{}}", s.text.trim_end_matches('/')),
                    ..s
                },
                (false, true) => Word {
                    text: format!("{}/*", s.text.trim_end_matches('/')),
                    glob: true,
                    ..s
                },
                _ => s,
            })
            .collect();
        let mut i = 0;
        while i < cmd.args.len() {
            let t = cmd.args[i].text.as_str();
            if matches!(t, "-exec" | "-execdir" | "-ok" | "-okdir") {
                let start = i + 1;
                let mut end = start;
                while end < cmd.args.len() && !matches!(cmd.args[end].text.as_str(), ";" | "+") {
                    end += 1;
                }
                let argv = &cmd.args[start..end];
                let uses_path = argv.iter().any(|a| a.text.contains("{}"));
                for found in starts.iter().take(if uses_path { 4 } else { 1 }) {
                    let argv = argv
                        .iter()
                        .map(|a| match a.text.contains("{}") {
                            true => Word {
                                text: a.text.replace("{}", &found.text),
                                dynamic: a.dynamic || found.dynamic,
                                glob: a.glob || found.glob,
                                from: Vec::new(),
                            },
                            false => a.clone(),
                        })
                        .collect();
                    direct.extend(self.emit_argv(cmd, argv, depth, via));
                }
                i = end;
            }
            i += 1;
        }
        direct
    }

    fn parallel(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let value_opts = [
            "-j",
            "--jobs",
            "-S",
            "--sshlogin",
            "-I",
            "-E",
            "-n",
            "--max-args",
            "--joblog",
            "--results",
            "--delay",
            "--timeout",
            "-a",
            "--arg-file",
            "--colsep",
            "-C",
            "--tmpdir",
            "--tagstring",
            "-N",
            "-L",
            "-P",
            "--workdir",
            "--wd",
        ];
        let mut i = 0;
        while i < cmd.args.len() {
            let t = cmd.args[i].text.as_str();
            if t.starts_with(":::") || !t.starts_with('-') {
                break;
            }
            if value_opts.contains(&t) {
                i += 1;
            }
            i += 1;
        }
        let rest = &cmd.args[i..];
        let split = rest
            .iter()
            .position(|a| a.text.starts_with(":::"))
            .unwrap_or(rest.len());
        let (command, inputs) = rest.split_at(split);
        let mut direct = Vec::new();
        if command.is_empty() {
            // No command: every input is itself a command line.
            for input in inputs.iter().filter(|a| !a.text.starts_with(":::")) {
                direct.extend(self.code(input, depth, via, "parallel"));
            }
        } else {
            let template = join_words(command);
            let inputs: Vec<&Word> = inputs
                .iter()
                .filter(|a| !a.text.starts_with(":::"))
                .collect();
            if inputs.is_empty() {
                direct.extend(self.code(&template, depth, via, "parallel"));
            }
            for input in inputs.into_iter().take(16) {
                let mut code = template.clone();
                code.dynamic |= input.dynamic;
                code.text = if code.text.contains("{}") {
                    code.text.replace("{}", &input.text)
                } else {
                    format!("{} {}", code.text, input.text)
                };
                direct.extend(self.code(&code, depth, via, "parallel"));
            }
        }
        direct
    }

    fn git(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let mut direct = Vec::new();
        let mut aliases: Vec<(String, Word)> = Vec::new();
        let mut i = 0;
        while i < cmd.args.len() {
            let t = cmd.args[i].text.as_str();
            if !t.starts_with('-') {
                break;
            }
            let setting = if t == "-c" {
                i += 1;
                cmd.args.get(i).cloned()
            } else {
                t.strip_prefix("-c")
                    .filter(|s| s.contains('='))
                    .map(|s| Word {
                        text: s.to_string(),
                        ..cmd.args[i].clone()
                    })
            };
            if let Some(setting) = setting
                && let Some((key, value)) = setting.text.split_once('=')
            {
                let key = key.to_ascii_lowercase();
                let value_word = Word {
                    text: value.to_string(),
                    ..setting.clone()
                };
                if let Some(alias_code) = value
                    .strip_prefix('!')
                    .filter(|_| key.starts_with("alias."))
                {
                    let w = Word {
                        text: alias_code.to_string(),
                        ..setting.clone()
                    };
                    direct.extend(self.code(&w, depth, via, "git alias"));
                } else if let Some(alias) = key.strip_prefix("alias.") {
                    aliases.push((alias.to_string(), value_word.clone()));
                } else if is_git_code_key(&key) {
                    let code = Word {
                        text: value.trim_start_matches('!').to_string(),
                        ..value_word
                    };
                    direct.extend(self.code(&code, depth, via, &format!("git -c {key}")));
                }
            }
            // `--config-env=core.pager=VAR`: the value comes from the environment.
            if let Some(spec) = t
                .strip_prefix("--config-env=")
                .map(str::to_string)
                .or_else(|| {
                    (t == "--config-env")
                        .then(|| cmd.args.get(i + 1).map(|w| w.text.clone()))
                        .flatten()
                })
                && let Some((key, _)) = spec.split_once('=')
                && (is_git_code_key(&key.to_ascii_lowercase())
                    || key.to_ascii_lowercase().starts_with("alias."))
            {
                self.fail(
                    "dynamic-code",
                    format!(
                        "git --config-env sets {key}, which runs a command, from the environment"
                    ),
                );
            }
            if matches!(
                t,
                "-C" | "--git-dir" | "--work-tree" | "--namespace" | "--config-env"
            ) {
                i += 1;
            }
            i += 1;
        }
        // `git -c alias.p='push --force' p`: the alias runs git with its words.
        if let Some(sub) = cmd.args.get(i)
            && let Some((_, value)) = aliases.iter().find(|(a, _)| *a == sub.text)
            && !value.text.starts_with('!')
        {
            let mut argv = vec![Word::literal(cmd.program_path.clone())];
            argv.extend(value.text.split_whitespace().map(Word::literal));
            argv.extend(cmd.args[i + 1..].iter().cloned());
            let mut v = via.to_vec();
            v.push(format!("git alias {}", sub.text));
            direct.extend(self.emit_argv(cmd, argv, depth, &v));
        }
        direct
    }

    /// Shell commands embedded in interpreter code (`os.system("…")`, `` `…` ``,
    /// awk `system()`); a call whose argument is not a string literal fails closed.
    pub(crate) fn interpreter_code(
        &mut self,
        code: &Word,
        awk: bool,
        depth: usize,
        via: &[String],
    ) {
        if code.dynamic {
            self.fail(
                "dynamic-code",
                format!(
                    "inline interpreter code is only known at run time: {}",
                    code.text
                ),
            );
            return;
        }
        let text = code.text.as_str();
        let calls = [
            "system",
            "popen",
            "exec",
            "execSync",
            "spawnSync",
            "spawn",
            "execFileSync",
            "shell_exec",
            "passthru",
            "proc_open",
            "check_output",
            "check_call",
            "call",
            "run",
            "Popen",
            "getoutput",
            "getstatusoutput",
            "execv",
            "execvp",
            "execl",
            "execlp",
            "execute",
            "spawn_async",
        ];
        let mut found_dynamic = false;
        let before = self.out.commands.len();
        let mut v = via.to_vec();
        v.push("inline code".into());
        for (pos, _) in text.match_indices('(') {
            let name_start = text[..pos]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let name = &text[name_start..pos];
            // Tree and file deletion APIs: judged as the `rm` they amount to.
            if let Some(recursive) = deletion_call(name) {
                let mut argv = vec![Word::literal("rm"), Word::literal("-f")];
                if recursive {
                    argv.push(Word::literal("-r"));
                }
                let first = string_literals(&text[pos + 1..])
                    .and_then(|a| a.into_iter().next())
                    .or_else(|| first_string_literal(&text[pos + 1..]));
                match first {
                    Some(path) => argv.push(Word::literal(path)),
                    _ if recursive => argv.push(Word::opaque("$…")),
                    _ => continue,
                }
                let outer = SimpleCommand::from_argv(&Word::literal("interpreter"), Vec::new());
                let mut dv = v.clone();
                dv.push(format!("{name}(…)"));
                self.emit_argv(&outer, argv, depth, &dv);
                continue;
            }
            if !calls.contains(&name) {
                continue;
            }
            match string_literals(&text[pos + 1..]) {
                Some(args) if args.len() == 1 && !text[pos + 1..].trim_start().starts_with('[') => {
                    self.shell(&args[0], depth + 1, &v);
                }
                Some(args) if !args.is_empty() => {
                    let argv = args.into_iter().map(Word::literal).collect();
                    let outer = SimpleCommand::from_argv(&Word::literal("interpreter"), Vec::new());
                    self.emit_argv(&outer, argv, depth, &v);
                }
                _ => found_dynamic = true,
            }
        }
        // Backquotes run shell code in perl, ruby and php.
        if !awk {
            let parts: Vec<&str> = text.split('`').collect();
            for inner in parts
                .iter()
                .skip(1)
                .step_by(2)
                .take(parts.len().saturating_sub(1) / 2)
            {
                self.shell(inner, depth + 1, &v);
            }
        }
        // A command-running API used in a form not followed above (`system q(…)`, `qx{…}`,
        // `exec(open(f).read())`): nothing was extracted, so fail closed.
        let mentions = [
            "system",
            "exec",
            "popen",
            "spawn",
            "subprocess",
            "child_process",
            "shell_exec",
            "passthru",
            "proc_open",
            "qx",
            "Open3",
            "os.sys",
        ];
        if self.out.commands.len() == before && mentions.iter().any(|m| text.contains(m)) {
            found_dynamic = true;
        }
        if awk && strip_awk_strings(text).contains('|') {
            found_dynamic = true;
        }
        if found_dynamic {
            self.fail(
                "dynamic-code",
                "inline interpreter code runs a command that is not a string literal".into(),
            );
        }
    }
}

/// The first argument of a call when it is a string literal followed by `,` or `)`
/// (`"dist", {recursive: true})` → `dist`).
fn first_string_literal(s: &str) -> Option<String> {
    let s = s.trim_start();
    let q = s.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let rest = &s[1..];
    let end = rest.find(q)?;
    let lit = &rest[..end];
    let after = rest[end + 1..].trim_start();
    (!lit.contains('\\') && (after.starts_with(',') || after.starts_with(')')))
        .then(|| lit.to_string())
}

/// Interpreter calls that delete files (`Some(false)`) or trees (`Some(true)`).
fn deletion_call(name: &str) -> Option<bool> {
    match name {
        "rmtree" | "rmSync" | "rmdirSync" | "rm_rf" | "rm_r" | "remove_tree" | "removedirs"
        | "rimraf" | "deleteRecursively" | "emptyDirSync" | "removeSync" | "remove_dir_all"
        | "rmdir" | "rm" | "deleteDirectory" | "forceDelete" => Some(true),
        "unlinkSync" | "unlink" | "remove" | "delete" | "remove_file" => Some(false),
        _ => None,
    }
}

/// The text that stands for what `xargs` reads from stdin; `parse.rs` replaces it with the
/// previous pipeline stage's output when that is literal.
pub(crate) const STDIN_ARGS: &str = "{stdin}";

/// Marks where `xargs` puts its input: in place of the `-I` string, or appended.
fn xargs_placeholders(xargs_args: &[Word], inner: &mut Vec<Word>) {
    let replace = option_value(xargs_args, &["-I", "--replace"], "I")
        .map(|w| w.text)
        .or_else(|| {
            xargs_args
                .iter()
                .any(|a| a.text == "-i" || a.text == "--replace")
                .then(|| "{}".to_string())
        });
    let placeholder = Word::opaque(STDIN_ARGS);
    match replace {
        Some(r) if !r.is_empty() => {
            for a in inner.iter_mut().skip(1) {
                if a.text.contains(&r) {
                    *a = placeholder.clone();
                }
            }
        }
        _ => inner.push(placeholder),
    }
}

/// The words after a command's options (`None` if nothing follows).
fn skip_options(args: &[Word], short_values: &str, long_values: &[&str]) -> Option<Vec<Word>> {
    let mut i = 0;
    while i < args.len() {
        let t = args[i].text.as_str();
        if t == "--" {
            i += 1;
            break;
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            if !long.contains('=') && long_values.contains(&long) {
                i += 1;
            }
        } else {
            // A short cluster: a value-taking letter consumes the rest, or the next word.
            let body = &t[1..];
            if let Some(p) = body.find(|c| short_values.contains(c))
                && p + 1 == body.len()
            {
                i += 1;
            }
        }
        i += 1;
    }
    (i < args.len()).then(|| args[i..].to_vec())
}

/// The value of an option given as `-c VALUE`, `-cVALUE` (for `short` letters in a cluster)
/// `--opt VALUE` or `--opt=VALUE`.
fn option_value(args: &[Word], names: &[&str], short: &str) -> Option<Word> {
    for (i, a) in args.iter().enumerate() {
        let t = a.text.as_str();
        if t == "--" {
            return None;
        }
        for n in names {
            if t == *n {
                return args.get(i + 1).cloned();
            }
            if n.starts_with("--")
                && let Some(v) = t.strip_prefix(n).and_then(|r| r.strip_prefix('='))
            {
                return Some(Word {
                    text: v.to_string(),
                    ..a.clone()
                });
            }
        }
        if !short.is_empty() && t.starts_with('-') && !t.starts_with("--") && t.len() > 2 {
            let body = &t[1..];
            if let Some(p) = body.find(|c| short.contains(c)) {
                let rest = &body[p + 1..];
                return if rest.is_empty() {
                    args.get(i + 1).cloned()
                } else {
                    Some(Word {
                        text: rest.to_string(),
                        ..a.clone()
                    })
                };
            }
        }
    }
    None
}

/// The inline code of an interpreter: the value of `-c`/`-e`, also at the end of a cluster
/// (`perl -lne CODE`).
fn inline_code(args: &[Word], opts: &[&str], cluster: char) -> Option<Word> {
    for (i, a) in args.iter().enumerate() {
        let t = a.text.as_str();
        if opts.contains(&t) {
            return args.get(i + 1).cloned();
        }
        if cluster != '\0'
            && t.starts_with('-')
            && !t.starts_with("--")
            && t.len() > 2
            && t.ends_with(cluster)
        {
            return args.get(i + 1).cloned();
        }
        if !t.starts_with('-') {
            return None;
        }
    }
    None
}

/// Joins words into one code string as `eval` does.
fn join_words(words: &[Word]) -> Word {
    Word {
        text: words
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        dynamic: words.iter().any(|w| w.dynamic),
        glob: false,
        from: Vec::new(),
    }
}

/// The string literals at the start of a call's argument list, up to the closing `)`:
/// `"a", 'b')` → `["a", "b"]`; `None` when an argument is anything else.
fn string_literals(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.trim_start().trim_start_matches('[').chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next()? {
            q @ ('"' | '\'') => {
                let mut lit = String::new();
                loop {
                    match chars.next()? {
                        '\\' => lit.extend(chars.next()),
                        c if c == q => break,
                        c => lit.push(c),
                    }
                }
                out.push(lit);
            }
            ')' | ']' => return Some(out),
            ',' => {}
            _ => return None,
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            Some(',') => {
                chars.next();
            }
            Some(')' | ']') => return Some(out),
            // `shell=True)`, keyword arguments: the literals so far are the command.
            Some(_) if !out.is_empty() => return Some(out),
            _ => return None,
        }
    }
}

fn strip_awk_strings(code: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for c in code.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a program name (any path) is a wrapper that runs another command.
pub fn is_wrapper(program: &str) -> bool {
    wrapper_spec(basename(program)).is_some()
}

/// Whether a wrapper or login program is given a command to run (`None` when that is not
/// known or it does something else, such as `sudo -l`). Without one, most start a shell.
pub(crate) fn runs_a_command(cmd: &SimpleCommand) -> Option<bool> {
    let has = |names: &[&str], short: &str| option_value(&cmd.args, names, short).is_some();
    match cmd.program.as_str() {
        "script" | "su" => return Some(has(&["-c", "--command"], "c")),
        "sg" => return Some(cmd.args.len() > 1),
        "newgrp" | "login" => return Some(false),
        _ => {}
    }
    let spec = wrapper_spec(&cmd.program)?;
    for a in &cmd.args {
        if a.text == "--" || !a.text.starts_with('-') {
            break;
        }
        if !a.text.starts_with("--") && a.text[1..].chars().any(|c| spec.no_command.contains(c)) {
            return None;
        }
    }
    let mut rest = skip_options(&cmd.args, spec.short_values, spec.long_values).unwrap_or_default();
    let skip = spec.operands.min(rest.len());
    rest.drain(..skip);
    Some(!rest.is_empty())
}
