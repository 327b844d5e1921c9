//! Environment variables that decide what runs. One set of predicates for every way a
//! variable reaches a program: an inline assignment (`GIT_SSH_COMMAND=… git fetch`), `env
//! NAME=value cmd`, and the `env` of a request (`POST /v1/exec`, `execbox run --env`).
//!
//! - **Code**: the value is run as shell code later (`GIT_SSH_COMMAND`, `PAGER`, `EDITOR`, …)
//!   or is a function body (`BASH_FUNC_name%%`): it is parsed and judged like a command.
//! - **Injection**: the value makes the next program load code that is not analysed
//!   (`LD_PRELOAD`, `BASH_ENV`, `PYTHONSTARTUP`, `NODE_OPTIONS=--require …`, `GIT_CONFIG_*`):
//!   fail closed.
//! - **Program lookup**: `PATH` with a directory the job can write (anything but the system
//!   directories) lets a bare program name run a file the job wrote in place of the program
//!   the rules and the operator see: fail closed, naming the directory.
//!
//! Must never: touch the filesystem.

use super::model::Word;
use super::parse::Walker;

/// Environment variables whose value a program later runs as shell code.
const CODE_ENV: &[&str] = &[
    "GIT_SSH_COMMAND",
    "GIT_SSH",
    "GIT_PAGER",
    "PAGER",
    "GIT_EDITOR",
    "EDITOR",
    "VISUAL",
    "GIT_EXTERNAL_DIFF",
    "GIT_SEQUENCE_EDITOR",
    "GIT_PROXY_COMMAND",
    "LESSOPEN",
    "LESSCLOSE",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "PROMPT_COMMAND",
    "MANPAGER",
    "SYSTEMD_PAGER",
    "BROWSER",
    "RSYNC_RSH",
    "CVS_RSH",
    "FCEDIT",
    "RSYNC_CONNECT_PROG",
];

/// Environment variables that make the next program load code that is not analysed.
const INJECT_ENV: &[&str] = &[
    "LD_PRELOAD",
    "LD_AUDIT",
    "GCONV_PATH",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "ZDOTDIR",
    "TAR_OPTIONS",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONBREAKPOINT",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "LUA_INIT",
    "LUA_PATH",
    "GIT_EXEC_PATH",
    "GIT_TEMPLATE_DIR",
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "LESSKEY",
    "LESSKEYIN",
    "VIMINIT",
    "EXINIT",
    "MYVIMRC",
    "INPUTRC",
];

/// `NODE_OPTIONS` flags that load code.
const NODE_CODE_FLAGS: &[&str] = &[
    "-r",
    "--require",
    "--import",
    "--loader",
    "--experimental-loader",
    "--env-file",
    "--inspect",
    "--inspect-brk",
    "--eval",
    "-e",
];

/// Directories of the sandbox's `PATH` that the job cannot write (bound read-only from the
/// host). Any other directory in a requested `PATH` may hold a program the job wrote.
pub const SYSTEM_PATH_DIRS: &[&str] = &[
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/games",
    "/usr/local/games",
    "/usr/lib/jvm/default-java/bin",
    "/snap/bin",
];

/// What a variable does to the program that receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the policy needs to follow.
    None,
    /// The value is run as shell code.
    Code,
    /// The value is a function body that also replaces the command `name`.
    Function(String),
    /// Loads code that is not analysed (the detail says how).
    Inject(String),
    /// `PATH` naming a directory the job can write, or `LD_LIBRARY_PATH`: which program or
    /// library a name resolves to. Judged for a request's environment, which is not part of
    /// the command text; written inline (`PATH=$HOME/.cargo/bin:$PATH cargo build`) the
    /// directory is in the command the rules and the operator read, and stays allowed.
    Path(String),
}

/// The one classification of a variable, for inline assignments and request env alike.
pub fn effect(name: &str, value: &Word) -> Effect {
    if let Some(f) = name
        .strip_prefix("BASH_FUNC_")
        .and_then(|r| r.strip_suffix("%%").or_else(|| r.strip_suffix("()")))
    {
        return Effect::Function(f.to_string());
    }
    if CODE_ENV.contains(&name) {
        return Effect::Code;
    }
    if INJECT_ENV.contains(&name) {
        return Effect::Inject(format!(
            "{name} makes the next program load code that is not analysed"
        ));
    }
    if name.starts_with("GIT_CONFIG_KEY_") || name.starts_with("GIT_CONFIG_VALUE_") {
        // Configuration from the environment: a code-running key (core.pager, alias.x…) and
        // its value arrive in separate variables, so neither is followed.
        return Effect::Inject(format!(
            "{name} sets git configuration that may run commands"
        ));
    }
    if name == "NODE_OPTIONS" {
        let loads = value.dynamic
            || value.text.split_whitespace().any(|w| {
                let flag = w.split('=').next().unwrap_or(w);
                NODE_CODE_FLAGS.contains(&flag)
            });
        return match loads {
            true => Effect::Inject(format!(
                "NODE_OPTIONS={} makes node load code that is not analysed",
                value.text
            )),
            false => Effect::None,
        };
    }
    if name == "PATH" {
        return match writable_path_entry(value) {
            Some(dir) => Effect::Path(dir),
            None => Effect::None,
        };
    }
    if name == "LD_LIBRARY_PATH" {
        return Effect::Path(format!("{} (LD_LIBRARY_PATH)", value.text));
    }
    Effect::None
}

/// The first `PATH` entry that is not a system directory (an empty entry is the working
/// directory). A dynamic entry other than `$PATH` itself counts.
pub fn writable_path_entry(value: &Word) -> Option<String> {
    for entry in value.text.split(':') {
        if value.dynamic && matches!(entry, "$PATH" | "${PATH}") {
            continue;
        }
        let trusted = !entry.contains('$')
            && SYSTEM_PATH_DIRS.contains(&entry.trim_end_matches('/'))
            && !entry.is_empty();
        if !trusted {
            return Some(if entry.is_empty() {
                "(empty: the working directory)".to_string()
            } else {
                entry.to_string()
            });
        }
    }
    None
}

impl Walker {
    /// A variable given to the command(s) that follow: an inline assignment, `env NAME=value`,
    /// or the request's environment (`via` says which).
    pub(crate) fn env_var(&mut self, name: &str, value: &Word, depth: usize, via: &[String]) {
        match effect(name, value) {
            Effect::None => {}
            Effect::Code => {
                let mut v = via.to_vec();
                v.push(format!("{name}="));
                self.code_string(value, depth, &v, name);
            }
            Effect::Function(f) => {
                // `() { body; }`: judge the body, and fail closed because `f` no longer
                // names the program the rules see.
                let body = Word {
                    text: value.text.trim_start().trim_start_matches("()").to_string(),
                    ..value.clone()
                };
                let mut v = via.to_vec();
                v.push(format!("{name}="));
                self.code_string(&body, depth, &v, name);
                self.fail(
                    "function-from-environment",
                    format!("{name} defines a shell function that replaces the command `{f}`"),
                );
            }
            Effect::Inject(detail) => self.fail("code-injecting-environment", detail),
            Effect::Path(_) if via.first().map(String::as_str) != Some(super::request::ENV_VIA) => {
            }
            Effect::Path(dir) => self.fail(
                "writable-path",
                format!(
                    "PATH includes {dir}, which the job can write: a program name may run a file \
                     the job wrote instead of the program shown"
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_code_injection_functions_and_path() {
        let lit = Word::literal;
        assert_eq!(effect("GIT_SSH_COMMAND", &lit("rm -rf ~")), Effect::Code);
        assert!(matches!(
            effect("BASH_ENV", &lit("x.sh")),
            Effect::Inject(_)
        ));
        assert!(matches!(
            effect("LD_PRELOAD", &lit("/w/x.so")),
            Effect::Inject(_)
        ));
        assert!(matches!(
            effect("NODE_OPTIONS", &lit("--require ./x.js")),
            Effect::Inject(_)
        ));
        assert!(matches!(
            effect("NODE_OPTIONS", &lit("-r=./x.js")),
            Effect::Inject(_)
        ));
        assert_eq!(
            effect("NODE_OPTIONS", &lit("--max-old-space-size=4096")),
            Effect::None
        );
        assert!(matches!(
            effect("GIT_CONFIG_KEY_0", &lit("core.fsmonitor")),
            Effect::Inject(_)
        ));
        assert!(matches!(
            effect("GIT_CONFIG_VALUE_0", &lit("less")),
            Effect::Inject(_)
        ));
        assert_eq!(
            effect("BASH_FUNC_git%%", &lit("() { rm -rf /; }")),
            Effect::Function("git".into())
        );
        assert_eq!(
            effect("PATH", &lit("/usr/local/bin:/usr/bin:/bin")),
            Effect::None
        );
        assert_eq!(
            effect("PATH", &lit("/w/bin:/usr/bin")),
            Effect::Path("/w/bin".into())
        );
        assert!(matches!(
            effect("PATH", &lit("/usr/bin::/bin")),
            Effect::Path(_)
        ));
        assert!(matches!(
            effect("PATH", &lit("./bin:/usr/bin")),
            Effect::Path(_)
        ));
        assert_eq!(
            effect("PATH", &Word::opaque("$PATH:/usr/bin")),
            Effect::None
        );
        assert!(matches!(
            effect("PATH", &Word::opaque("$HOME/bin:$PATH")),
            Effect::Path(_)
        ));
        assert_eq!(effect("LANG", &lit("C.UTF-8")), Effect::None);
        assert_eq!(effect("RUST_LOG", &lit("debug")), Effect::None);
    }
}
