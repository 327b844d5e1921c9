//! The job's standard input as code. When a command that receives the job's stdin reads its
//! *program* from it (a shell without a script operand, `sh -s`, `bash /dev/stdin`,
//! `source /dev/stdin`, `python3 -`, `perl` with no script, `at`, `sqlite3`, …) the stdin bytes
//! are the command: a shell script is parsed and judged like a command string; code for any
//! other language fails closed (`approve`), with the shell commands its literal calls name
//! judged as well.
//!
//! The model, not a list of examples: a program is a *code reader* when its grammar says its
//! program comes from a script operand, an inline option, a script-file option — or, when none
//! is given, from stdin. [`reads`] applies that grammar ([`READERS`] for interpreters, the
//! POSIX shell option grammar for shells, "no command" for wrappers that then start a shell);
//! a script operand or script-file option naming stdin (`-`, `/dev/stdin`, `/dev/fd/0`,
//! `/proc/self/fd/0`) counts the same as none, and a dynamic one is "maybe" (fails closed).
//! A command receives the job's stdin unless an earlier pipeline stage or a redirection feeds
//! it. Must never: touch the filesystem or run anything.

use serde::Serialize;

use super::model::{Redirect, SimpleCommand, Word};
use super::parse::Walker;

/// How a command treats the job's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// As data (or not at all).
    Data,
    /// As shell code.
    Shell,
    /// As code in another language.
    Code,
    /// Perhaps as code: an operand only known at run time.
    Maybe,
}

/// Facts about the job's stdin for the operator and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StdinFacts {
    pub bytes: usize,
    pub sha256: String,
    /// The first [`EXCERPT`] bytes (lossy UTF-8, unescaped: displays escape it).
    pub excerpt: String,
    /// Bytes left out of `excerpt`.
    pub omitted: usize,
    /// The commands that read it as their program (display lines); empty when it is data.
    pub code_for: Vec<String>,
}

/// Bytes of stdin shown and recorded.
pub const EXCERPT: usize = 4096;

impl StdinFacts {
    pub fn of(data: &[u8], code_for: Vec<String>) -> StdinFacts {
        let mut end = data.len().min(EXCERPT);
        // Cut on a character boundary when the data is text.
        if let Ok(text) = std::str::from_utf8(data) {
            while !text.is_char_boundary(end) {
                end -= 1;
            }
        }
        StdinFacts {
            bytes: data.len(),
            sha256: crate::config::sha256_hex(data),
            excerpt: String::from_utf8_lossy(&data[..end]).into_owned(),
            omitted: data.len() - end,
            code_for,
        }
    }
}

/// Paths that are the process's own stdin.
pub fn names_stdin(w: &Word) -> bool {
    if w.dynamic {
        return false;
    }
    let t = w.text.as_str();
    matches!(
        t,
        "-" | "/dev/stdin" | "/dev/fd/0" | "/proc/self/fd/0" | "/proc/thread-self/fd/0"
    ) || t
        .strip_prefix("/proc/")
        .and_then(|r| r.strip_suffix("/fd/0"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Where an interpreter's program comes from.
struct Reader {
    /// Program names (a versioned name counts: `python3.12`).
    names: &'static [&'static str],
    /// Options whose value (or the rest of the cluster) is the code: stdin is data.
    inline: &'static [&'static str],
    /// Letters that give inline code at the end of a short cluster (`perl -lne CODE`).
    inline_letters: &'static str,
    /// Options taking a separate value that is not code (skipped).
    values: &'static [&'static str],
    /// Options whose value is a script file (stdin when it names stdin).
    script_file: &'static [&'static str],
    /// Its program comes from stdin even with operands (`ed FILE` reads commands from stdin).
    always: bool,
    /// Needs one of these options before it reads code at all (`vim -e`); empty: none needed.
    needs: &'static [&'static str],
}

const fn reader(names: &'static [&'static str], inline: &'static [&'static str]) -> Reader {
    Reader {
        names,
        inline,
        inline_letters: "",
        values: &[],
        script_file: &[],
        always: false,
        needs: &[],
    }
}

/// The interpreters whose program can come from stdin, and their option grammar.
const READERS: &[Reader] = &[
    Reader {
        inline_letters: "cm",
        values: &["-W", "-X", "--check-hash-based-pycs"],
        ..reader(&["python", "pypy"], &["-c", "-m"])
    },
    Reader {
        inline_letters: "eE",
        values: &["-I", "-M", "-m"],
        ..reader(&["perl"], &["-e", "-E"])
    },
    Reader {
        inline_letters: "e",
        values: &["-I", "-r", "-C", "--require"],
        ..reader(&["ruby", "irb", "jruby", "truffleruby"], &["-e"])
    },
    Reader {
        values: &[
            "-r",
            "--require",
            "--import",
            "--loader",
            "--experimental-loader",
            "-C",
            "--conditions",
            "--input-type",
            "--env-file",
            "--title",
        ],
        ..reader(&["node", "nodejs"], &["-e", "--eval", "-p", "--print"])
    },
    Reader {
        inline_letters: "r",
        values: &["-c", "-d", "-z", "-n"],
        script_file: &["-f", "--file"],
        ..reader(&["php"], &["-r", "--run", "-R", "-B", "-E"])
    },
    Reader {
        inline_letters: "e",
        values: &["-l"],
        ..reader(&["lua", "luajit", "texlua"], &["-e"])
    },
    Reader {
        script_file: &["-f"],
        ..reader(&["tclsh", "wish", "expect", "jimsh"], &["-c"])
    },
    Reader {
        values: &["--args"],
        script_file: &["-f", "--file"],
        ..reader(&["R", "Rscript"], &["-e", "--expr"])
    },
    Reader {
        inline_letters: "eE",
        values: &[
            "-L",
            "--load",
            "-J",
            "--sysimage",
            "-t",
            "--threads",
            "-p",
            "--procs",
        ],
        ..reader(&["julia"], &["-e", "--eval", "-E", "--print"])
    },
    Reader {
        values: &["-L"],
        ..reader(
            &[
                "guile", "racket", "sbcl", "clisp", "ecl", "ocaml", "jshell", "ghci", "scala",
                "groovysh", "erl", "iex", "octave", "gnuplot", "dc",
            ],
            &["-c", "-e", "--eval", "--execute"],
        )
    },
    Reader {
        always: true,
        values: &["-p"],
        ..reader(&["ed", "red", "ex"], &[])
    },
    Reader {
        always: true,
        values: &["-cmd", "-S", "-W", "-w", "-u", "-i", "-T", "-c"],
        needs: &["-e", "-E", "-es", "-Es", "--headless"],
        ..reader(&["vim", "nvim", "vi", "ex"], &[])
    },
    Reader {
        always: true,
        values: &["-cmd", "-init", "-separator", "-nullvalue", "-newline"],
        ..reader(&["sqlite3"], &[])
    },
    Reader {
        always: true,
        values: &[
            "-h",
            "--host",
            "-p",
            "--port",
            "-U",
            "--username",
            "-d",
            "--dbname",
            "-u",
            "--user",
            "-D",
            "--database",
            "-P",
            "-v",
            "--set",
        ],
        script_file: &["-f", "--file"],
        ..reader(
            &["psql", "mysql", "mariadb"],
            &["-c", "--command", "-e", "--execute"],
        )
    },
    Reader {
        always: true,
        values: &["-q", "-t", "-M", "-m"],
        script_file: &["-f"],
        ..reader(&["at", "batch"], &[])
    },
    Reader {
        always: true,
        values: &["-u"],
        ..reader(&["crontab"], &["-l", "-r", "-e"])
    },
    Reader {
        always: true,
        values: &["-ex", "-iex", "-p", "--pid", "-cd", "-d", "--directory"],
        script_file: &["-x", "--command", "-ix"],
        ..reader(&["gdb"], &[])
    },
];

/// Script-file-only programs: their program is read from a `-f` option and never from stdin
/// by default (awk's operand is its program, sed's too; `make` reads a Makefile).
const SCRIPT_FILE_ONLY: &[(&[&str], &[&str])] = &[
    (
        &["awk", "gawk", "mawk", "nawk", "busybox-awk"],
        &["-f", "--file"],
    ),
    (&["sed", "gsed"], &["-f", "--file"]),
    (&["make", "gmake", "bmake"], &["-f", "--file", "--makefile"]),
    (&["deno", "bun"], &["run"]),
];

/// Shells: the POSIX option grammar (`-c` code, `-s` stdin, `-o name`, a script operand).
const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "oksh", "posh", "ash",
    "yash", "fish", "csh", "tcsh", "hush", "elvish", "nu", "xonsh", "ion",
];

/// Wrappers and login programs that start a shell when given no command.
const SHELL_WHEN_NO_COMMAND: &[&str] = &[
    "unshare",
    "nsenter",
    "chroot",
    "sg",
    "newgrp",
    "firejail",
    "proot",
    "fakeroot",
    "script",
    "su",
    "runuser",
    "doas",
    "run0",
    "machinectl",
    "login",
    "setpriv",
    "capsh",
    "bwrap",
    "systemd-nspawn",
];

fn named(names: &[&str], program: &str) -> bool {
    super::rules::in_class(names, program)
}

/// How `cmd` treats the stdin it receives.
pub fn reads(cmd: &SimpleCommand) -> Reads {
    let program = cmd.program.as_str();
    if named(SHELLS, program) {
        return shell_reads(&cmd.args);
    }
    if matches!(program, "source" | ".") {
        return match cmd.args.iter().find(|a| a.text != "--") {
            Some(a) if names_stdin(a) => Reads::Shell,
            Some(a) if a.dynamic => Reads::Maybe,
            _ => Reads::Data,
        };
    }
    if program == "sudo" {
        // `sudo -s`/`-i` without a command start a shell (refused by `privilege` anyway).
        let shell = cmd
            .args
            .iter()
            .take_while(|a| a.text.starts_with('-'))
            .any(|a| !a.text.starts_with("--") && a.text[1..].contains(['s', 'i']));
        let command = cmd.args.iter().any(|a| !a.text.starts_with('-'));
        return if shell && !command {
            Reads::Shell
        } else {
            Reads::Data
        };
    }
    if named(SHELL_WHEN_NO_COMMAND, program) {
        return match super::unwrap::runs_a_command(cmd) {
            Some(false) => Reads::Shell,
            _ => Reads::Data,
        };
    }
    for (names, file_opts) in SCRIPT_FILE_ONLY {
        if named(names, program) {
            return script_file_reads(&cmd.args, file_opts);
        }
    }
    // A program may appear in two readers (`vim` as a viewer and in Ex mode): any "code" wins.
    let mut out = Reads::Data;
    for r in READERS.iter().filter(|r| named(r.names, program)) {
        out = stricter(out, interpreter_reads(r, &cmd.args));
    }
    out
}

fn stricter(a: Reads, b: Reads) -> Reads {
    let rank = |r| match r {
        Reads::Data => 0,
        Reads::Maybe => 1,
        Reads::Code => 2,
        Reads::Shell => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn shell_reads(args: &[Word]) -> Reads {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let t = a.text.as_str();
        if t == "--" || t == "-" {
            return operand(args.get(i + 1), Reads::Shell);
        }
        if a.dynamic && (t.starts_with('-') || t.starts_with('+') || t.starts_with('$')) {
            return Reads::Maybe;
        }
        if let Some(long) = t.strip_prefix("--") {
            let (name, value) = long.split_once('=').unwrap_or((long, ""));
            if matches!(name, "rcfile" | "init-file") {
                let v = if value.is_empty() {
                    i += 1;
                    args.get(i).cloned()
                } else {
                    Some(Word::literal(value))
                };
                if v.as_ref().is_some_and(names_stdin) {
                    return Reads::Shell;
                }
            } else if name == "command" {
                return Reads::Data;
            }
            i += 1;
            continue;
        }
        if (t.starts_with('-') || t.starts_with('+')) && t.len() > 1 {
            let letters = &t[1..];
            if t.starts_with('-') && letters.contains('c') {
                return Reads::Data;
            }
            if t.starts_with('-') && letters.contains(['s', 'i']) {
                return Reads::Shell;
            }
            // `-o name`, `+O name`: the option's name follows.
            if letters.ends_with(['o', 'O']) {
                i += 1;
            }
            i += 1;
            continue;
        }
        return operand(Some(a), Reads::Shell);
    }
    Reads::Shell
}

/// The first operand is the script: stdin when it names stdin, or when there is none.
fn operand(w: Option<&Word>, kind: Reads) -> Reads {
    match w {
        None => kind,
        Some(w) if names_stdin(w) => kind,
        Some(w) if w.dynamic => Reads::Maybe,
        Some(_) => Reads::Data,
    }
}

fn script_file_reads(args: &[Word], file_opts: &[&str]) -> Reads {
    let mut i = 0;
    while i < args.len() {
        let t = args[i].text.as_str();
        if t == "--" {
            break;
        }
        for o in file_opts {
            if t == *o {
                let v = args.get(i + 1);
                if v.is_some_and(names_stdin) {
                    return Reads::Code;
                }
                if v.is_some_and(|v| v.dynamic) {
                    return Reads::Maybe;
                }
            } else if let Some(v) = t
                .strip_prefix(o)
                .map(|r| r.strip_prefix('=').unwrap_or(r))
                .filter(|v| !v.is_empty() && o.starts_with('-'))
                && names_stdin(&Word::literal(v))
            {
                return Reads::Code;
            }
        }
        i += 1;
    }
    Reads::Data
}

fn interpreter_reads(r: &Reader, args: &[Word]) -> Reads {
    if !r.needs.is_empty() && !args.iter().any(|a| r.needs.contains(&a.text.as_str())) {
        return Reads::Data;
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let t = a.text.as_str();
        if t == "--" {
            return if r.always {
                Reads::Code
            } else {
                operand(args.get(i + 1), Reads::Code)
            };
        }
        if t.starts_with('-') && t.len() > 1 {
            let (name, attached) = match t.split_once('=') {
                Some((n, v)) if t.starts_with("--") => (n, Some(v)),
                _ => (t, None),
            };
            if r.inline.contains(&name) {
                return Reads::Data;
            }
            let cluster = !t.starts_with("--")
                && t.len() > 2
                && !r.values.contains(&t)
                && !r.script_file.contains(&t);
            if cluster {
                // getopt: letters until one that takes a value; the rest is its value.
                for (k, c) in t[1..].char_indices() {
                    if r.inline_letters.contains(c) {
                        return Reads::Data;
                    }
                    let opt = format!("-{c}");
                    let rest = &t[1 + k + c.len_utf8()..];
                    if r.script_file.contains(&opt.as_str()) {
                        let v = match rest {
                            "" => args.get(i + 1).cloned(),
                            r => Some(Word::literal(r)),
                        };
                        return match v {
                            Some(v) if names_stdin(&v) => Reads::Code,
                            Some(v) if v.dynamic => Reads::Maybe,
                            _ => Reads::Data,
                        };
                    }
                    if r.values.contains(&opt.as_str()) {
                        if rest.is_empty() {
                            i += 1;
                        }
                        break;
                    }
                }
                i += 1;
                continue;
            }
            if r.script_file.contains(&name) {
                let v = match attached {
                    Some(v) => Some(Word::literal(v)),
                    None => {
                        i += 1;
                        args.get(i).cloned()
                    }
                };
                return match v {
                    Some(v) if names_stdin(&v) => Reads::Code,
                    Some(v) if v.dynamic => Reads::Maybe,
                    _ => Reads::Data,
                };
            }
            if attached.is_none() && r.values.contains(&name) {
                i += 1;
            }
            i += 1;
            continue;
        }
        if r.always {
            i += 1;
            continue;
        }
        if a.dynamic && t.starts_with('-') {
            return Reads::Maybe;
        }
        return operand(Some(a), Reads::Code);
    }
    Reads::Code
}

/// Whether `cmd` receives the job's own stdin: no earlier pipeline stage and no input
/// redirection feed it.
pub fn receives_job_stdin(cmd: &SimpleCommand) -> bool {
    cmd.stdin_from.is_empty()
        && !cmd
            .redirects
            .iter()
            .any(|r| matches!(r, Redirect::Read(_) | Redirect::Here(_)))
}

/// The commands (indices into the analysis) that read the job's stdin as code, and how.
pub(crate) fn readers(commands: &[SimpleCommand]) -> Vec<(usize, Reads)> {
    commands
        .iter()
        .enumerate()
        .filter(|(_, c)| receives_job_stdin(c))
        .map(|(i, c)| (i, reads(c)))
        .filter(|(_, r)| *r != Reads::Data)
        .collect()
}

impl Walker {
    /// Judges the job's stdin given to the commands analysed so far: parsed as a shell script
    /// when a shell reads it, failing closed when another language or "maybe" does.
    pub(crate) fn job_stdin(&mut self, stdin: Option<&[u8]>) -> Option<StdinFacts> {
        let readers = readers(&self.out.commands);
        let Some(data) = stdin else {
            // No stdin: the job reads an empty file; nothing more runs.
            return None;
        };
        let code_for: Vec<String> = readers
            .iter()
            .map(|(i, _)| self.out.commands[*i].display())
            .collect();
        let facts = StdinFacts::of(data, code_for);
        if readers.is_empty() {
            return Some(facts);
        }
        let first = |want: Reads| {
            readers
                .iter()
                .find(|(_, r)| *r == want)
                .map(|(i, _)| self.out.commands[*i].program.clone())
        };
        let (shell, other, maybe) = (first(Reads::Shell), first(Reads::Code), first(Reads::Maybe));
        let text = match std::str::from_utf8(data) {
            Ok(t) => Some(t),
            Err(_) => {
                self.fail(
                    "stdin-not-text",
                    format!(
                        "{} reads its program from stdin, which is not UTF-8 text",
                        shell
                            .clone()
                            .or(other.clone())
                            .or(maybe.clone())
                            .unwrap_or_default()
                    ),
                );
                None
            }
        };
        if let (Some(program), Some(text)) = (&shell, text) {
            let via = vec![format!("{program} < stdin")];
            self.shell(text, 1, &via);
        }
        if let Some(program) = &other {
            self.fail(
                "stdin-code",
                format!(
                    "{program} runs its program from stdin ({} bytes), which is not analysed",
                    data.len()
                ),
            );
            if let Some(text) = text.filter(|t| t.len() <= super::parse::MAX_INPUT) {
                let via = vec![format!("{program} < stdin")];
                self.interpreter_code(&Word::literal(text), false, 1, &via);
            }
        }
        if let Some(program) = &maybe {
            self.fail(
                "stdin-maybe-code",
                format!("{program} may read its program from stdin: its script is only known at run time"),
            );
        }
        Some(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_of(argv: &str) -> Reads {
        let words: Vec<&str> = argv.split_whitespace().collect();
        let cmd = SimpleCommand::from_argv(
            &Word::literal(words[0]),
            words[1..].iter().map(|w| Word::literal(*w)).collect(),
        );
        reads(&cmd)
    }

    #[test]
    fn shells_read_stdin_without_a_script_operand() {
        for s in [
            "bash",
            "/bin/sh",
            "sh -s",
            "sh -s a b",
            "bash -x",
            "bash -o errexit",
            "bash -euo pipefail",
            "bash /dev/stdin",
            "bash -- /dev/stdin",
            "bash -",
            "zsh -i",
            "dash -e",
            "bash --norc",
            "bash --rcfile /dev/stdin x",
            "source /dev/stdin",
            ". /proc/self/fd/0",
            "tcsh",
            "bash /dev/fd/0",
        ] {
            assert_eq!(reads_of(s), Reads::Shell, "{s}");
        }
        for s in [
            "bash script.sh",
            "bash -c ls",
            "sh -lc ls",
            "bash -o posix run.sh",
            "source env.sh",
            "bash -- x.sh",
        ] {
            assert_eq!(reads_of(s), Reads::Data, "{s}");
        }
    }

    #[test]
    fn interpreters_read_stdin_without_a_script_or_inline_code() {
        for s in [
            "python3",
            "python3 -",
            "python3 -u",
            "python3.12 -W ignore",
            "perl",
            "perl -w -",
            "ruby",
            "node",
            "nodejs -r x",
            "php",
            "lua -",
            "tclsh",
            "Rscript -",
            "julia",
            "awk -f /dev/stdin",
            "sed -f -",
            "make -f -",
            "at now",
            "sqlite3 db",
            "psql -h x",
            "ed file",
            "vim -es",
            "gdb -x /dev/stdin",
            "perl -Mstrict",
            "python3 -Werror::DeprecationWarning",
            "php -d x=1",
            "awk -f-",
            "deno run -",
            "irb",
            "perl /dev/stdin",
        ] {
            assert_eq!(reads_of(s), Reads::Code, "{s}");
        }
        for s in [
            "python3 x.py",
            "python3 -c pass",
            "python3 -m json.tool",
            "perl -lne print",
            "perl -e 1",
            "ruby -e 1",
            "node x.js",
            "node -e 1",
            "php -r 1",
            "php x.php",
            "awk {print}",
            "sed s/a/b/",
            "make",
            "psql -c select",
            "vim file",
            "python3 -Bc pass",
            "perl -Mstrict -e 1",
            "php -f x.php",
            "jq .",
            "cat",
            "grep x",
            "deno run x.ts",
            "at -f job now",
        ] {
            assert_eq!(reads_of(s), Reads::Data, "{s}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_keeps_characters_whole() {
        let big = "é".repeat(5000);
        let f = StdinFacts::of(big.as_bytes(), Vec::new());
        assert!(f.excerpt.len() <= EXCERPT);
        assert!(!f.excerpt.contains('\u{FFFD}'));
        assert_eq!(f.excerpt.len() + f.omitted, big.len());
        assert_eq!(f.bytes, 10_000);
    }
}
