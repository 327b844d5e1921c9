//! A whole exec request as the policy judges it: the command (shell string or argv), the
//! environment the requester set, the working directory and the job's stdin. Everything in a
//! request that decides what runs is judged here, so `POST /v1/exec` and `execbox run` give
//! the same verdict for the same request:
//!
//! - the requester's variables go through the same predicates as inline assignments
//!   (`env.rs`: code, injection, `PATH` to a writable directory);
//! - the command is walked from the requested working directory;
//! - stdin that a command reads as its program is judged as that program (`stdin.rs`).

use super::Command;
use super::model::{Analysis, Word};
use super::parse::Walker;
use super::stdin::StdinFacts;

/// One request to judge.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub command: Command<'a>,
    /// The job's stdin when the request supplies it; `None`: the job reads nothing.
    pub stdin: Option<&'a [u8]>,
    /// The variables the requester set (the executor's own defaults are not judged).
    pub env: &'a [(String, String)],
    /// The working directory relative to the workspace (`""`: the workspace itself).
    pub cwd: &'a str,
}

impl<'a> Request<'a> {
    /// A bare command: no stdin, no variables, in the workspace.
    pub fn command(command: Command<'a>) -> Request<'a> {
        Request {
            command,
            stdin: None,
            env: &[],
            cwd: "",
        }
    }
}

/// What `via` shows for a command reached through the request's environment.
pub const ENV_VIA: &str = "request env";

/// The command model of a whole request, and the facts about its stdin.
pub(crate) fn analyse(req: &Request<'_>) -> (Analysis, Option<StdinFacts>) {
    let mut w = Walker::new();
    w.cwd = Some(req.cwd.trim_matches('/').to_string());
    let via = vec![ENV_VIA.to_string()];
    for (name, value) in req.env {
        w.env_var(name, &Word::literal(value.clone()), 0, &via);
    }
    match req.command {
        Command::Shell(s) => {
            w.shell(s, 0, &[]);
        }
        Command::Argv(a) => w.argv(a),
    }
    let stdin = w.job_stdin(req.stdin);
    let mut analysis = w.finish();
    super::mark_downloads(&mut analysis.commands);
    (analysis, stdin)
}

/// Whether some command of the request reads its program from the job's stdin: the caller
/// must then supply the stdin bytes for judgement (`execbox run` reads them first).
pub fn reads_stdin_as_code(req: &Request<'_>) -> bool {
    let (analysis, _) = analyse(&Request {
        stdin: None,
        ..*req
    });
    !super::stdin::readers(&analysis.commands).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Context, Verdict};

    fn judge(command: Command<'_>, stdin: Option<&str>, env: &[(&str, &str)]) -> Verdict {
        let policy = crate::profile::Profile::embedded_default().unwrap().policy;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let req = Request {
            command,
            stdin: stdin.map(str::as_bytes),
            env: &env,
            cwd: "",
        };
        policy
            .explain_request(&req, &Context::examples())
            .decision
            .verdict
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// Issue 15 item 2: stdin read as a program is that program.
    #[test]
    fn stdin_that_a_shell_runs_is_judged_as_the_command() {
        let wipe = "rm -rf ./*; echo wiped";
        for a in [
            &["/bin/bash"][..],
            &["sh", "-s"],
            &["bash", "/dev/stdin"],
            &["env", "bash", "-o", "errexit"],
            &["busybox", "sh"],
            &["unshare", "-r"],
        ] {
            let a = argv(a);
            assert_eq!(
                judge(Command::Argv(&a), Some(wipe), &[]),
                Verdict::Deny,
                "{a:?}"
            );
            // Positive control: the same program with harmless stdin, or the script as data.
            assert_eq!(
                judge(Command::Argv(&a), Some("echo hi"), &[]),
                Verdict::Allow,
                "{a:?}"
            );
        }
        for s in [
            "bash",
            "source /dev/stdin",
            "cat | true; bash -s",
            "bash -c 'sh -s'",
        ] {
            assert_eq!(
                judge(Command::Shell(s), Some(wipe), &[]),
                Verdict::Deny,
                "{s}"
            );
        }
        let cat = argv(&["cat"]);
        assert_eq!(judge(Command::Argv(&cat), Some(wipe), &[]), Verdict::Allow);
        assert_eq!(judge(Command::Shell("bash"), None, &[]), Verdict::Allow);
        // Stdin redirected from elsewhere is not the job's.
        assert_eq!(
            judge(Command::Shell("bash < x.sh"), Some(wipe), &[]),
            Verdict::Allow
        );
    }

    #[test]
    fn stdin_code_for_other_languages_fails_closed() {
        for a in [
            &["python3"][..],
            &["python3", "-"],
            &["perl"],
            &["node"],
            &["ruby"],
            &["php"],
        ] {
            let a = argv(a);
            assert_eq!(
                judge(Command::Argv(&a), Some("print(1)"), &[]),
                Verdict::Approve,
                "{a:?}"
            );
        }
        let py = argv(&["python3"]);
        let evil = "import os\nos.system('rm -rf /')\n";
        assert_eq!(judge(Command::Argv(&py), Some(evil), &[]), Verdict::Deny);
        // Positive control: a script operand or inline code reads stdin as data.
        let tool = argv(&["python3", "-m", "json.tool"]);
        assert_eq!(judge(Command::Argv(&tool), Some("{}"), &[]), Verdict::Allow);
    }

    /// Issue 15 item 3: the request's variables meet the inline-assignment predicates.
    #[test]
    fn request_env_is_judged_like_inline_assignments() {
        let fetch = argv(&["git", "fetch"]);
        let f = Command::Argv(&fetch);
        assert_eq!(
            judge(f, None, &[("GIT_SSH_COMMAND", "rm -rf /")]),
            Verdict::Deny
        );
        for (k, v) in [
            ("BASH_ENV", "/workspace/x.sh"),
            ("ENV", "/workspace/x.sh"),
            ("LD_PRELOAD", "/workspace/x.so"),
            ("LD_LIBRARY_PATH", "/workspace/lib"),
            ("PATH", "/workspace/bin:/usr/bin:/bin"),
            ("GIT_CONFIG_KEY_0", "core.fsmonitor"),
            ("GIT_CONFIG_PARAMETERS", "'core.pager'='sh'"),
            ("PYTHONSTARTUP", "/workspace/x.py"),
            ("NODE_OPTIONS", "--require /workspace/x.js"),
            ("PERL5OPT", "-Mx"),
        ] {
            assert_eq!(judge(f, None, &[(k, v)]), Verdict::Approve, "{k}={v}");
        }
        // Positive control: ordinary variables and the sandbox's own PATH.
        let env = [
            ("RUST_LOG", "debug"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("NODE_OPTIONS", "--max-old-space-size=4096"),
            ("PAGER", "less"),
        ];
        assert_eq!(judge(f, None, &env), Verdict::Allow);
        // The same predicates inline.
        let inline = "GIT_SSH_COMMAND='rm -rf /' git fetch";
        assert_eq!(judge(Command::Shell(inline), None, &[]), Verdict::Deny);
        // Inline, a lookup directory is part of the command text (allowed, as the coverage
        // corpus expects); from the hidden request env it needs an operator.
        let inline = "PATH=./bin:$PATH git status";
        assert_eq!(judge(Command::Shell(inline), None, &[]), Verdict::Allow);
        let func = "env 'BASH_FUNC_ls%%=() { rm -rf /; }' bash -c ls";
        assert_eq!(judge(Command::Shell(func), None, &[]), Verdict::Deny);
    }
}
