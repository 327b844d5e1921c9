//! The general execution model: what runs beyond the programs `unwrap.rs` knows by name.
//!
//! - **Unknown programs**: any argv suffix of a program that is not known to leave its
//!   arguments alone (`chrt 1 rm -rf /`, `prlimit … cmd`, `bwrap … cmd`) is judged as the simple
//!   command it forms, and the value of a code-taking option (`-c`, `-e`, `--exec`, `-ex` …) is
//!   parsed as shell (`expect -c 'spawn …'`, `gdb -ex 'shell …'`). These are guesses, so a
//!   parse error inside one does not fail closed; a guess never lowers a verdict.
//! - **State across the commands of one input**: variables given literal values, aliases,
//!   `hash -p`, programs copied or linked under another name, files written from literals
//!   (`printf … > x.sh`, `cat > x.sh <<EOF`, `tee`) and then run (`sh x.sh`, `./x.sh`,
//!   `. ./x.sh`, `python3 x.py`). A file written from output not known here and then run fails
//!   closed.
//! - **Builtins that evaluate text**: `trap`, `let`, `declare`/`export`/`local`/`readonly`
//!   (code-injecting variables, arithmetic subscripts), `printf -v`, `read`, `test -v`, `unset`.
//!
//! `docs/policy.md` has the table of every execution path and what judges it.

use std::collections::HashMap;

use super::model::{Redirect, SimpleCommand, Word, basename};
use super::parse::{Walker, is_stdin_path, literal_output};

/// Programs known not to execute their arguments as a command: the generic argv-suffix model
/// skips them (`echo rm -rf /`, `grep sudo`, `man reboot`, `apt install sudo`). Programs
/// with code-running options of their own are handled by name in `unwrap.rs` instead.
const NON_EXEC: &[&str] = &[
    // Text and files.
    "echo",
    "printf",
    "cat",
    "tac",
    "head",
    "tail",
    "less",
    "more",
    "most",
    "wc",
    "uniq",
    "cut",
    "tr",
    "sed",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "ag",
    "ack",
    "diff",
    "cmp",
    "comm",
    "patch",
    "join",
    "paste",
    "fold",
    "fmt",
    "column",
    "nl",
    "od",
    "xxd",
    "hexdump",
    "base64",
    "base32",
    "md5sum",
    "sha1sum",
    "sha256sum",
    "sha512sum",
    "cksum",
    "b2sum",
    "tee",
    "jq",
    "yq",
    "bat",
    "ls",
    "dir",
    "tree",
    "stat",
    "file",
    "du",
    "df",
    "touch",
    "mkdir",
    "rmdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "chmod",
    "chown",
    "chgrp",
    "dd",
    "truncate",
    "shred",
    "mktemp",
    "basename",
    "dirname",
    "realpath",
    "readlink",
    "pwd",
    "date",
    "cal",
    "sleep",
    "true",
    "false",
    "yes",
    "seq",
    "expr",
    "test",
    "[",
    "strings",
    "nm",
    "objdump",
    "readelf",
    "split",
    "csplit",
    "shuf",
    "numfmt",
    "iconv",
    "dos2unix",
    "unix2dos",
    "wdiff",
    "colordiff",
    "locate",
    "updatedb",
    // Archives and network transfer (their operands are files and URLs).
    "tar",
    "zip",
    "unzip",
    "gzip",
    "gunzip",
    "zcat",
    "bzip2",
    "bunzip2",
    "xz",
    "unxz",
    "zstd",
    "7z",
    "curl",
    "wget",
    "aria2c",
    "scp",
    "sftp",
    "ping",
    "dig",
    "nslookup",
    "host",
    "traceroute",
    "whois",
    // Help and lookup.
    "man",
    "info",
    "help",
    "which",
    "whereis",
    "type",
    "apropos",
    "whatis",
    "tldr",
    // System information.
    "id",
    "whoami",
    "groups",
    "uname",
    "hostname",
    "uptime",
    "free",
    "ps",
    "top",
    "htop",
    "pgrep",
    "lsof",
    "ss",
    "netstat",
    "lsblk",
    "blkid",
    "findmnt",
    "dmesg",
    "journalctl",
    "kill",
    "killall",
    "pkill",
    "nproc",
    "lscpu",
    "lspci",
    "lsusb",
    "printenv",
    "getent",
    "who",
    "w",
    "last",
    "lastlog",
    "finger",
    "pinky",
    "users",
    "logname",
    "tty",
    "locale",
    "atq",
    "atrm",
    "vmstat",
    "iostat",
    "mpstat",
    "sar",
    "pidof",
    "pstree",
    "systemd-analyze",
    "mysqldump",
    "pg_dump",
    "pg_restore",
    "createdb",
    "createuser",
    "pg_isready",
    // Build tools and package managers (they run their own project's code, not their argv).
    "cargo",
    "rustc",
    "rustup",
    "rustfmt",
    "clippy-driver",
    "go",
    "gofmt",
    "make",
    "cmake",
    "ninja",
    "meson",
    "gcc",
    "g++",
    "cc",
    "c++",
    "clang",
    "clang++",
    "ld",
    "as",
    "javac",
    "mvn",
    "gradle",
    "npm",
    "yarn",
    "pnpm",
    "pip",
    "pip3",
    "pipx",
    "poetry",
    "uv",
    "conda",
    "apt",
    "apt-get",
    "apt-cache",
    "dpkg",
    "dpkg-query",
    "rpm",
    "yum",
    "dnf",
    "apk",
    "brew",
    "snap",
    "flatpak",
    "gem",
    "bundle",
    "composer",
    "tsc",
    "eslint",
    "prettier",
    "black",
    "ruff",
    "mypy",
    "pytest",
    "jest",
    "mocha",
    "vitest",
    "webpack",
    "vite",
    "esbuild",
    // Cloud and cluster CLIs (their arguments are resource names; container runners are
    // judged by `container_command` below).
    "terraform",
    "tofu",
    "pulumi",
    "cdk",
    "aws",
    "az",
    "gcloud",
    "gsutil",
    "helm",
    "doctl",
    "hcloud",
    "heroku",
    "fly",
    "flyctl",
    "vercel",
    "netlify",
    "gh",
    "glab",
    "vagrant",
    "packer",
    "kubeadm",
    "minikube",
    "kind",
    "k3d",
    "eksctl",
    "oci",
    "linode-cli",
    "firebase",
    "supabase",
    "wrangler",
    "railway",
    "skaffold",
    "tilt",
    "argocd",
    "flux",
    "istioctl",
    "kustomize",
    "stern",
    // Editors and keys.
    "vim",
    "vi",
    "nvim",
    "nano",
    "emacs",
    "code",
    "ssh-keygen",
    "ssh-add",
    "openssl",
    "gpg",
    // Shell builtins that take names, not commands.
    "cd",
    "pushd",
    "popd",
    "dirs",
    "read",
    "wait",
    "jobs",
    "fg",
    "bg",
    "shift",
    "return",
    "exit",
    "break",
    "continue",
    "getopts",
    "umask",
    "ulimit",
    "set",
    "unset",
    "shopt",
    "complete",
    "compgen",
    "bind",
    "history",
    "export",
    "declare",
    "typeset",
    "local",
    "readonly",
    "let",
    "mapfile",
    "readarray",
    "caller",
    "disown",
    "times",
    "enable",
    ":",
];

/// Words that are common subcommands of unknown tools and also names of programs that rules
/// flag on their own (`terraform init`, `vagrant halt`, `docker service ls`): not taken as
/// the program of an argv suffix when they are the first operand.
const AMBIGUOUS_SUBCOMMANDS: &[&str] = &[
    "init", "halt", "reboot", "poweroff", "shutdown", "service", "services", "at", "batch", "kill",
    "mount", "umount", "passwd", "su", "login", "swapon", "swapoff", "status", "start", "stop",
    "top", "install", "shred", "sync",
];

/// Container and cluster runners: which subcommands run a command (`docker run IMAGE CMD`,
/// `kubectl exec POD -- CMD`); their other subcommands take resource names.
fn container_command(program: &str, args: &[Word]) -> Option<usize> {
    let positional = |i: usize| args.iter().filter(|a| !a.text.starts_with('-')).nth(i);
    match program {
        "docker" | "podman" | "nerdctl" | "docker-compose" | "podman-compose" | "finch" => {
            let first = positional(0)?.text.as_str();
            let second = positional(1).map(|w| w.text.as_str());
            let runs = matches!(first, "run" | "exec" | "create")
                || matches!(
                    (first, second),
                    ("container", Some("run" | "exec" | "create"))
                        | ("compose", Some("run" | "exec"))
                );
            runs.then_some(0)
        }
        "kubectl" | "oc" | "microk8s.kubectl" => {
            let first = positional(0)?.text.as_str();
            matches!(first, "exec" | "run" | "debug" | "attach").then(|| {
                args.iter()
                    .position(|a| a.text == "--")
                    .map_or(args.len(), |p| p + 1)
            })
        }
        _ => Some(0),
    }
}

/// Package and environment managers whose `run`/`exec` subcommand runs its arguments
/// (`poetry run CMD`, `uv run CMD`, `npm exec -- CMD`): the index after that subcommand.
fn runner_command(program: &str, args: &[Word]) -> Option<usize> {
    if !matches!(
        program,
        "poetry"
            | "uv"
            | "pipx"
            | "pnpm"
            | "yarn"
            | "npm"
            | "bundle"
            | "conda"
            | "pdm"
            | "hatch"
            | "rye"
            | "mise"
            | "asdf"
            | "direnv"
            | "nix"
            | "devbox"
            | "pixi"
            | "rtx"
            | "bunx"
    ) {
        return None;
    }
    let (i, sub) = args
        .iter()
        .enumerate()
        .find(|(_, a)| !a.text.starts_with('-'))?;
    matches!(
        sub.text.as_str(),
        "run" | "exec" | "x" | "dlx" | "shell" | "develop"
    )
    .then_some(i + 1)
}

/// Options of unknown programs whose value is commonly a command line.
const CODE_OPTIONS: &[&str] = &[
    "-c",
    "-e",
    "-x",
    "-ex",
    "-eval",
    "--eval",
    "--exec",
    "-exec",
    "--command",
    "-command",
    "--cmd",
    "--run",
    "--sh-exec",
    "--shell",
    "-C",
    "--init-command",
    "--pre-exec",
];

/// Environment variables whose value a later shell runs as code (prompts, traces).
pub(crate) const PROMPT_ENV: &[&str] = &["PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"];

/// State built up by earlier commands of the same input.
#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    /// Variables given a value known here, unconditionally; `None` once a variable was also
    /// assigned somewhere it may or may not take effect, or to a value not known here.
    vars: HashMap<String, Option<String>>,
    /// `alias name='value'`.
    aliases: HashMap<String, String>,
    /// Program names that stand for another program (`cp /bin/rm ./clean`, `hash -p`).
    renamed: HashMap<String, String>,
    /// Files written by this input: their content when it was literal.
    written: HashMap<String, Option<String>>,
}

impl State {
    /// Records `name=value`; `None` (a value not known here, or an assignment that may not
    /// take effect) makes the name unknown for the rest of the input.
    pub(crate) fn assign(&mut self, name: &str, value: Option<&Word>) {
        if self.vars.len() >= 256 && !self.vars.contains_key(name) {
            return;
        }
        let known = value
            .filter(|w| !w.dynamic && !w.glob)
            .map(|w| w.text.clone());
        self.vars.insert(name.to_string(), known);
    }

    /// The value of a variable assigned earlier in the input, when it is certain.
    pub(crate) fn value(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned().flatten()
    }

    /// Records a file written by this input, with its content when literal (appended to what
    /// was written before).
    pub(crate) fn write_file(&mut self, target: &Word, content: Option<&str>) {
        if target.dynamic || target.glob || self.written.len() >= 64 {
            return;
        }
        let key = basename(&target.text).to_string();
        let entry = self.written.entry(key).or_insert(Some(String::new()));
        match (entry.as_mut(), content) {
            (Some(text), Some(c)) if text.len() + c.len() <= super::parse::MAX_INPUT => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(c);
            }
            _ => *entry = None,
        }
    }

    fn written(&self, path: &str) -> Option<&Option<String>> {
        self.written.get(basename(path))
    }
}

/// Whether a word may be a program name that an unknown program runs.
fn looks_like_program(w: &Word) -> bool {
    let t = w.text.as_str();
    if w.dynamic || w.glob || t.is_empty() || t.starts_with(['-', '+']) || t.ends_with('/') {
        return false;
    }
    if t.starts_with('.') && !t.starts_with("./") && !t.starts_with("../") {
        return false;
    }
    t.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c))
        && !t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !matches!(
            basename(t),
            "source" | "eval" | "exec" | "alias" | "trap" | "." | ".."
        )
}

impl Walker {
    /// Effects of a command on later ones, and code run by builtins; called for every simple
    /// command the input itself contains, before it is emitted.
    pub(crate) fn before_emit(
        &mut self,
        cmd: &mut SimpleCommand,
        depth: usize,
        via: &[String],
    ) -> Vec<usize> {
        let mut direct = Vec::new();
        if let Some(real) = self.state.renamed.get(&cmd.program) {
            cmd.program = real.clone();
        }
        // Files written by redirection, with their content when the command prints a literal.
        let content = literal_output(cmd);
        for r in &cmd.redirects {
            if let Redirect::Write(w) = r {
                self.state.write_file(w, content.as_deref());
            }
        }
        let args = cmd.args.clone();
        let operands: Vec<&Word> = args.iter().filter(|a| !a.text.starts_with('-')).collect();
        match cmd.program.as_str() {
            "declare" | "typeset" | "local" | "readonly" | "export" => {
                for a in &args {
                    if let Some((name, value)) = a.text.split_once('=')
                        && !name.is_empty()
                        && !name.starts_with('-')
                    {
                        let value = Word {
                            text: value.to_string(),
                            ..a.clone()
                        };
                        self.code_env(name, &value, depth, via);
                        let known = (self.conditional == 0).then_some(&value);
                        self.state.assign(name, known);
                    }
                    if !a.dynamic && a.text.contains(['[', '`']) || a.text.contains("$(") {
                        self.arithmetic(&a.text, depth, via);
                    }
                }
            }
            "let" | "unset" | "read" | "mapfile" | "readarray" => {
                for a in &operands {
                    self.arithmetic(&a.text, depth, via);
                    if let Some((name, _)) = a.text.split_once('=') {
                        self.state.assign(name, None);
                    } else {
                        self.state.assign(&a.text, None);
                    }
                }
            }
            "printf" | "test" | "[" => {
                if let Some(p) = args.iter().position(|a| a.text == "-v")
                    && let Some(name) = args.get(p + 1)
                {
                    self.arithmetic(&name.text, depth, via);
                    self.state.assign(&name.text, None);
                }
            }
            "trap" => {
                if let Some(code) = args.first()
                    && !matches!(code.text.as_str(), "-p" | "-l" | "-" | "" | "--")
                {
                    direct.extend(self.code(code, depth, via, "trap"));
                }
            }
            "hash" => {
                if let Some(p) = args.iter().position(|a| a.text == "-p")
                    && let (Some(path), Some(name)) = (args.get(p + 1), args.get(p + 2))
                {
                    self.state
                        .renamed
                        .insert(name.text.clone(), basename(&path.text).to_string());
                }
            }
            "alias" => {
                for a in &args {
                    if let Some((name, value)) = a.text.split_once('=')
                        && !a.dynamic
                    {
                        self.state
                            .aliases
                            .insert(name.to_string(), value.to_string());
                    }
                }
            }
            "cp" | "mv" | "ln" | "install" | "rsync" => {
                let files: Vec<&&Word> = operands.iter().collect();
                if let [src, dst] = files[..]
                    && !src.dynamic
                    && !dst.dynamic
                {
                    let real = self
                        .state
                        .renamed
                        .get(basename(&src.text))
                        .cloned()
                        .unwrap_or_else(|| basename(&src.text).to_string());
                    if basename(&dst.text) != real && !dst.text.ends_with('/') {
                        self.state
                            .renamed
                            .insert(basename(&dst.text).to_string(), real);
                    }
                    if let Some(content) = self.state.written(&src.text).cloned() {
                        self.state.write_file(dst, content.as_deref());
                    }
                }
            }
            _ => {}
        }
        // An alias defined earlier in the input: its value with these arguments.
        if !cmd.program_path.contains('/')
            && let Some(value) = self.state.aliases.get(&cmd.program_path).cloned()
        {
            let mut code = Word::literal(value);
            for a in &args {
                code.text.push(' ');
                code.text.push_str(&shell_quote(&a.text));
                code.dynamic |= a.dynamic;
            }
            direct.extend(self.code(&code, depth, via, "alias"));
        }
        direct
    }

    /// What a command runs beyond the programs handled by name: files written earlier in the
    /// input, and the generic model for unknown programs.
    pub(crate) fn exec_model(
        &mut self,
        cmd: &SimpleCommand,
        depth: usize,
        via: &[String],
        handled: bool,
    ) -> Vec<usize> {
        let mut direct = self.run_written(cmd, depth, via);
        if cmd.program == "ssh" {
            direct.extend(self.ssh_remote(cmd, depth, via));
            return direct;
        }
        let runner = runner_command(&cmd.program, &cmd.args);
        if handled
            || !self.suffixes
            || NON_EXEC.contains(&cmd.program.as_str()) && runner.is_none()
            || self.speculative > 2
        {
            return direct;
        }
        self.speculative += 1;
        self.suffixes = false;
        let mut v = via.to_vec();
        v.push("argv".into());
        let mut suffixes = 0;
        let from = runner
            .or_else(|| container_command(&cmd.program, &cmd.args))
            .unwrap_or(cmd.args.len());
        let first_operand = cmd.args.iter().position(|a| !a.text.starts_with('-'));
        for (i, a) in cmd.args.iter().enumerate().skip(from) {
            if suffixes >= 8 {
                break;
            }
            if Some(i) == first_operand && AMBIGUOUS_SUBCOMMANDS.contains(&a.text.as_str()) {
                continue;
            }
            if looks_like_program(a) {
                suffixes += 1;
                let mut argv = cmd.args[i..].to_vec();
                // `start-stop-daemon --exec /bin/rm -- -rf /`: the `--` ends the outer options.
                if argv.get(1).is_some_and(|w| w.text == "--") {
                    argv.remove(1);
                }
                direct.extend(self.emit_argv(cmd, argv, depth, &v));
            }
        }
        // A positional argument that reads as a command line (`tmux new 'cmd'`,
        // `screen -dm 'cmd'`): judged as one, without guessing further inside it.
        let spaced = cmd
            .args
            .iter()
            .filter(|a| !a.dynamic && a.text.contains(' ') && !a.text.starts_with('-'))
            .take(4);
        for a in spaced {
            let mut v = via.to_vec();
            v.push(format!("{} argument", cmd.program));
            self.shell(&a.text, depth + 1, &v);
        }
        self.suffixes = true;
        // `expect -c 'spawn …'`, `gdb -ex 'shell …'`, `tmux new 'cmd'`.
        for (i, a) in cmd.args.iter().enumerate().take(64) {
            let value = if CODE_OPTIONS.contains(&a.text.as_str()) {
                cmd.args.get(i + 1).cloned()
            } else {
                a.text.split_once('=').and_then(|(o, val)| {
                    CODE_OPTIONS.contains(&o).then(|| Word {
                        text: val.to_string(),
                        ..a.clone()
                    })
                })
            };
            if let Some(mut code) = value
                && !code.dynamic
            {
                code.text = code.text.trim_start_matches('!').to_string();
                let mut v = via.to_vec();
                v.push(format!("{} {}", cmd.program, a.text));
                self.shell(&code.text, depth + 1, &v);
            }
        }
        self.speculative -= 1;
        direct
    }

    /// `./x.sh`, `sh x.sh`, `. ./x.sh`, `python3 x.py`, `sh < x.sh` after the input wrote `x.sh`.
    fn run_written(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        if self.state.written.is_empty() {
            return Vec::new();
        }
        let p = cmd.program.as_str();
        let shell = super::parse::POSIX_LIKE_SHELLS.contains(&p) || matches!(p, "source" | ".");
        let interpreter = super::rules::in_class(super::rules::INTERPRETER_CLASS, p);
        let operand = cmd.args.iter().find(|a| !a.text.starts_with('-'));
        let stdin_file = cmd.redirects.iter().find_map(|r| match r {
            Redirect::Read(w) if shell => Some(w),
            _ => None,
        });
        let file =
            if cmd.program_path.contains('/') && self.state.written(&cmd.program_path).is_some() {
                Some(cmd.program_path.clone())
            } else if shell || interpreter {
                operand
                    .or(stdin_file)
                    .map(|w| w.text.clone())
                    .filter(|t| self.state.written(t).is_some())
            } else {
                None
            };
        let Some(file) = file else {
            return Vec::new();
        };
        let mut v = via.to_vec();
        v.push(format!("{file} (written above)"));
        match self.state.written(&file).cloned().flatten() {
            Some(code) if interpreter && !code.starts_with("#!/bin/") => {
                let w = Word::literal(code);
                let before = self.out.commands.len();
                self.interpreter_code(&w, p.contains("awk"), depth, &v);
                (before..self.out.commands.len()).collect()
            }
            Some(code) => self.shell(&code, depth + 1, &v),
            None => {
                self.fail(
                    "dynamic-code",
                    format!("runs {file}, which this input wrote from output not known here"),
                );
                Vec::new()
            }
        }
    }

    /// `ssh [options] host command…`: the remote shell runs the words joined by spaces.
    fn ssh_remote(&mut self, cmd: &SimpleCommand, depth: usize, via: &[String]) -> Vec<usize> {
        let mut i = 0;
        while i < cmd.args.len() {
            let t = cmd.args[i].text.as_str();
            if t == "--" {
                i += 1;
                break;
            }
            if !t.starts_with('-') {
                break;
            }
            if t.len() == 2 && "BbcDEeFIiJLlmOoPpQRSWw".contains(&t[1..]) {
                i += 1;
            }
            i += 1;
        }
        let remote = cmd.args.get(i + 1..).unwrap_or_default();
        if remote.is_empty() || remote.iter().any(|w| w.dynamic) {
            return Vec::new();
        }
        let code = remote
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut v = via.to_vec();
        v.push("ssh (remote command)".into());
        self.speculative += 1;
        let direct = self.shell(&code, depth + 1, &v);
        self.speculative -= 1;
        direct
    }

    /// `source FILE`/`. FILE` of standard input fed by a here-string or heredoc.
    pub(crate) fn source_stdin(
        &mut self,
        cmd: &SimpleCommand,
        depth: usize,
        via: &[String],
    ) -> Vec<usize> {
        if !cmd.args.first().is_some_and(|a| is_stdin_path(&a.text)) {
            return Vec::new();
        }
        let here = cmd.redirects.iter().find_map(|r| match r {
            Redirect::Here(w) => Some(w.clone()),
            _ => None,
        });
        match here {
            Some(code) => self.code(&code, depth, via, "source /dev/stdin"),
            None => Vec::new(),
        }
    }
}

/// Single-quotes a word for re-parsing (`'…'\''…'`).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-=:@%+,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}
