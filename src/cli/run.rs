//! `execbox run`: check one command against the policy and run it in a fresh sandbox, in this
//! process (no daemon). Exit code: the command's own, or 124 timeout, 125 refused or bad input,
//! 126 sandbox setup failed, 137 killed by a limit.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::policy::{Command, Context, Decision, Explanation, Request, Verdict};
use crate::profile::Profile;
use crate::sandbox::{self, JobSpec, OutputSink, Stream, prepare::DEFAULT_SANDBOX_ID, sys};
use crate::units::{parse_duration, parse_size};

pub const EXIT_REFUSED: u8 = 125;
pub const EXIT_SETUP: u8 = 126;

/// The PATH inside the sandbox.
pub use crate::server::exec::SANDBOX_PATH;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  execbox run -- ls -la
  execbox run -c 'cargo test 2>&1 | tail -n 20'
  execbox run --workspace ~/src/project --timeout 5m --memory 2GiB -- make -j2
  execbox run --json -- python3 script.py      # exit report as JSON on stderr

Through the daemon (--socket or EXECBOX_SOCKET):
  execbox run --socket /run/execbox/agent.sock --pairing-code XXXX-XXXX-XXXX-XXXX \\
      --token-file ~/.execbox-token -- make      # redeem once, keep the session
  execbox run --socket /run/execbox/agent.sock --token-file ~/.execbox-token -- make test
  EXECBOX_TOKEN=\"$(cat ~/.execbox-token)\" execbox run --socket PATH -- ls

Exit codes: the command's own; 124 timeout; 125 refused by policy or bad input;
126 sandbox setup failed (the message names the step and errno); 137 killed by a limit.")]
pub struct RunArgs {
    /// Directory mounted read-write at the same path [default: the current directory]
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Policy profile (TOML) [default: the embedded policies/default.toml]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Wall-clock limit, e.g. 30s, 10m [default: the profile's limits.wall_time]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit, e.g. 512MiB, 2GiB [default: the profile's limits.memory]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Maximum number of processes and threads [default: the profile's limits.pids]
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Set an environment variable in the sandbox (repeatable); the environment is otherwise
    /// clean: PATH, HOME, LANG, TERM and the profile's sandbox.env
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Print a machine-readable exit report as one JSON line on stderr
    #[arg(long)]
    json: bool,
    /// Delegated cgroup subtree for job cgroups (needed when not root), relative to each
    /// cgroup v1 controller mount or to the cgroup v2 root
    #[arg(long, value_name = "PATH", env = "EXECBOX_CGROUP_PARENT")]
    cgroup_parent: Option<PathBuf>,
    /// Host uid/gid the sandbox runs as when a root-run sandbox gets a root-owned workspace
    #[arg(long, value_name = "ID", env = "EXECBOX_SANDBOX_ID", default_value_t = DEFAULT_SANDBOX_ID)]
    sandbox_id: u32,
    /// Go through the daemon listening on this agent socket instead of running in-process
    /// (the session's own workspace is used; --workspace and --policy do not apply). A daemon
    /// with sessions.require_pairing (the packaged config) needs --pairing-code, --token-file
    /// or EXECBOX_TOKEN
    #[arg(long, value_name = "PATH", env = "EXECBOX_SOCKET")]
    socket: Option<PathBuf>,
    /// With --socket: redeem this operator's pairing code (`execbox pair`) for the session.
    /// With --token-file, the token is saved there (a new file, mode 0600) and the session is
    /// kept for later runs; without, the session ends with the command
    #[arg(
        long,
        value_name = "CODE",
        env = "EXECBOX_PAIRING_CODE",
        hide_env_values = true,
        requires = "socket"
    )]
    pairing_code: Option<String>,
    /// With --socket: run in the session whose token is in this file (mode 0600; the session
    /// and its workspace stay). A token can also come from the EXECBOX_TOKEN environment
    /// variable. Without either, a fresh session is created and ended
    #[arg(long, value_name = "PATH", requires = "socket")]
    token_file: Option<PathBuf>,
    /// Run this string with /bin/bash -c inside the sandbox (the grammar the policy parses)
    #[arg(short = 'c', value_name = "STRING", conflicts_with = "command")]
    shell: Option<String>,
    /// The command and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Writes output straight to our stdout/stderr, splicing when possible.
struct Terminal {
    stdout: std::io::Stdout,
    stderr: std::io::Stderr,
}

impl OutputSink for Terminal {
    fn splice_target(&self, stream: Stream) -> Option<BorrowedFd<'_>> {
        Some(match stream {
            Stream::Stdout => self.stdout.as_fd(),
            Stream::Stderr => self.stderr.as_fd(),
        })
    }
    fn chunk(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        match stream {
            Stream::Stdout => {
                let mut out = self.stdout.lock();
                out.write_all(data)?;
                out.flush()
            }
            Stream::Stderr => self.stderr.lock().write_all(data),
        }
    }
}

fn refuse(json: bool, code: u8, kind: &str, message: &str) -> ExitCode {
    if json {
        let v = serde_json::json!({"exit_code": code, "error": {"kind": kind, "message": message}});
        eprintln!("{v}");
    } else {
        eprintln!("execbox: {message}");
    }
    ExitCode::from(code)
}

pub fn run(args: RunArgs) -> ExitCode {
    let json = args.json;
    let (argv, shell) = match (&args.shell, args.command.is_empty()) {
        (Some(s), true) => (
            vec!["/bin/bash".to_string(), "-c".to_string(), s.clone()],
            Some(s.clone()),
        ),
        (None, false) => (args.command.clone(), None),
        _ => {
            return refuse(
                json,
                EXIT_REFUSED,
                "usage",
                "nothing to run; fix: give `-- CMD [ARGS…]` or `-c 'SHELL STRING'`",
            );
        }
    };

    if let Some(socket) = &args.socket {
        return through_daemon(&args, socket, &argv, shell.as_deref());
    }

    let profile = match &args.policy {
        Some(p) => Profile::load(p),
        None => Profile::embedded_default(),
    };
    let profile = match profile {
        Ok(p) => p,
        Err(e) => {
            return refuse(
                json,
                EXIT_REFUSED,
                "policy",
                &format!("invalid policy: {e}"),
            );
        }
    };

    // Default: the current directory ("." canonicalises to it).
    let requested = args.workspace.clone().unwrap_or_else(|| PathBuf::from("."));
    let workspace = match requested.canonicalize() {
        Ok(w) => w,
        Err(e) => {
            return refuse(
                json,
                EXIT_SETUP,
                "workspace",
                &format!(
                    "workspace {} cannot be used: {e}; fix: pass an existing, readable directory with --workspace",
                    requested.display()
                ),
            );
        }
    };

    let env = match environment(&profile, &args.env) {
        Ok(env) => env,
        Err(m) => return refuse(json, EXIT_REFUSED, "usage", &m),
    };
    // The variables `--env` set are judged; PATH, HOME, LANG, TERM and the profile's
    // pass-through list are not the requester's.
    let requested_env: Vec<(String, String)> = args
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // The verdict, before anything is created.
    let ctx = Context {
        workspace: workspace.clone(),
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    let command = match &shell {
        Some(s) => Command::Shell(s),
        None => Command::Argv(&argv),
    };
    let mut request = Request {
        command,
        stdin: None,
        env: &requested_env,
        cwd: "",
    };
    // Stdin that a command runs as its program is read now and judged as that program; the
    // job then reads exactly those bytes. Otherwise stdin streams to the job unread.
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let code_stdin = if !stdin_is_terminal && crate::policy::request::reads_stdin_as_code(&request)
    {
        match super::judge::read_code_stdin(std::io::stdin().lock()) {
            Ok(data) => Some(data),
            Err(m) => return refuse(json, EXIT_REFUSED, "stdin", &m),
        }
    } else {
        None
    };
    request.stdin = code_stdin.as_deref();
    let explained = profile.policy.explain_request(&request, &ctx);
    let decision = explained.decision.clone();
    match decision.verdict {
        Verdict::Allow => {}
        Verdict::Deny => {
            return refuse(
                json,
                EXIT_REFUSED,
                "refused",
                &refusal_text(&decision, "refused by policy"),
            );
        }
        Verdict::Approve => {
            if !confirm_on_terminal(
                &argv,
                shell.as_deref(),
                &decision,
                &explained,
                &requested_env,
            ) {
                return refuse(
                    json,
                    EXIT_REFUSED,
                    "refused",
                    &refusal_text(
                        &decision,
                        "needs an operator's approval and none was given (no terminal, or not confirmed)",
                    ),
                );
            }
        }
    }

    let mut limits = profile.limits;
    if let Some(t) = args.timeout {
        if t.is_zero() || t > sandbox::MAX_WALL_TIME {
            return refuse(
                json,
                EXIT_REFUSED,
                "usage",
                "--timeout must be between 1ms and 7 days",
            );
        }
        limits.wall_time = t;
    }
    if let Some(m) = args.memory {
        if m < 4 << 20 {
            return refuse(
                json,
                EXIT_REFUSED,
                "usage",
                "--memory is below 4MiB, too small to start a shell; fix: e.g. --memory 256MiB",
            );
        }
        limits.memory = Some(m);
    }
    if let Some(p) = args.pids {
        if p == 0 {
            return refuse(
                json,
                EXIT_REFUSED,
                "usage",
                "--pids 0 would not even allow the command itself; fix: e.g. --pids 64",
            );
        }
        limits.pids = Some(p);
    }

    // Our stdin goes to the command unless it is a terminal (a tty in the sandbox could inject
    // keystrokes into the operator's shell).
    let stdin: Option<OwnedFd> = match &code_stdin {
        Some(data) => match super::judge::stdin_file(data) {
            Ok(fd) => Some(fd),
            Err(e) => {
                return refuse(
                    json,
                    EXIT_SETUP,
                    "stdin",
                    &format!("cannot hold the judged stdin for the job: {e}"),
                );
            }
        },
        None if stdin_is_terminal => None,
        None => std::io::stdin().as_fd().try_clone_to_owned().ok(),
    };
    let spec = JobSpec {
        argv,
        workspace,
        cwd: None,
        env,
        sandbox: profile.sandbox.clone(),
        limits,
        cgroup_parent: args.cgroup_parent.clone(),
        sandbox_id: args.sandbox_id,
        stdin,
        job_name: sandbox::job_cgroup_name(std::process::id(), &nanos().to_string()),
        prewarmed: None,
    };

    // Ctrl-C / SIGTERM: first one asks the command to stop, the second kills the job.
    let signals = sys::sigset(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let sigfd = sys::block_signals(&signals)
        .ok()
        .and_then(|_| sys::signalfd(&signals).ok());
    let mut drain = || {
        sigfd
            .as_ref()
            .is_some_and(|fd| matches!(sys::read_signalfd(fd.as_fd()), Ok(Some(_))))
    };
    let cancel = sigfd
        .as_ref()
        .map(|fd| (fd.as_fd(), &mut drain as &mut dyn FnMut() -> bool));

    // A pipe on our stdout: grow it so each splice can move up to 1 MiB (the caller's pipe,
    // but a larger buffer changes nothing for its reader except fewer wake-ups).
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        let _ = sys::set_pipe_size(fd, 1 << 20);
    }
    let mut sink = Terminal {
        stdout: std::io::stdout(),
        stderr: std::io::stderr(),
    };
    match sandbox::run(spec, &mut sink, cancel) {
        Ok(outcome) => {
            if json {
                let mut v = serde_json::json!({
                    "exit_code": outcome.exit_code,
                    "ending": outcome.ending,
                    "reason": outcome.reason,
                    "duration_ms": outcome.duration_ms,
                    "limits": outcome.limits,
                    "usage": outcome.usage,
                    "stdout_bytes": outcome.stdout_bytes,
                    "stderr_bytes": outcome.stderr_bytes,
                    "stdout_truncated": outcome.stdout_truncated,
                    "stderr_truncated": outcome.stderr_truncated,
                    "degraded": outcome.degraded,
                    "cgroup_version": outcome.cgroup_version,
                    "protection": outcome.protection,
                    "policy": {"profile": profile.name, "verdict": decision.verdict, "rule": decision.rule},
                });
                if let Some(net) = &outcome.network {
                    v["network"] = serde_json::json!(net);
                }
                eprintln!("{v}");
            } else {
                if !outcome.degraded.is_empty() {
                    let names: Vec<_> = outcome.degraded.iter().map(|d| d.name()).collect();
                    eprintln!(
                        "execbox: warning: ran without {} (allowed by the profile)",
                        names.join(", ")
                    );
                }
                for f in &outcome.protection.findings {
                    eprintln!(
                        "execbox: warning: protect: {} {}, {}: {}{}",
                        f.path,
                        f.change.name(),
                        f.action.name(),
                        f.detail,
                        f.quarantined_as
                            .as_deref()
                            .map(|q| format!(" (now {q})"))
                            .unwrap_or_default()
                    );
                }
                if !matches!(outcome.ending, sandbox::Ending::Exited { .. })
                    || outcome.stdout_truncated + outcome.stderr_truncated > 0
                    || outcome.limits.pids_max_hits > 0
                {
                    eprintln!("execbox: {}", outcome.reason);
                }
            }
            ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)
        }
        Err(e) => refuse(
            json,
            EXIT_SETUP,
            e.step(),
            &format!("sandbox setup failed: {e}"),
        ),
    }
}

/// `--socket`: the same command through the daemon (`remote.rs`).
fn through_daemon(
    args: &RunArgs,
    socket: &std::path::Path,
    argv: &[String],
    shell: Option<&str>,
) -> ExitCode {
    if args.workspace.is_some() || args.policy.is_some() {
        return refuse(
            args.json,
            EXIT_REFUSED,
            "usage",
            "--workspace and --policy do not apply with --socket (the daemon gives each session its own workspace and profile); fix: drop them, or unset EXECBOX_SOCKET",
        );
    }
    // Our stdin goes to the command unless it is a terminal (as in-process).
    let stdin = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut data = Vec::new();
        match std::io::Read::read_to_end(&mut std::io::stdin(), &mut data) {
            Ok(_) if !data.is_empty() => Some(data),
            _ => None,
        }
    };
    let session = match session_source(args) {
        Ok(s) => s,
        Err(message) => return refuse(args.json, EXIT_REFUSED, "usage", &message),
    };
    super::remote::run(super::remote::Remote {
        socket,
        session,
        argv,
        shell,
        env: &args.env,
        timeout: args.timeout,
        memory: args.memory,
        pids: args.pids,
        stdin,
        json: args.json,
    })
}

/// Where `--socket`'s session comes from: a pairing code (and where to keep its token), a
/// token file, `EXECBOX_TOKEN`, or a fresh session.
fn session_source(args: &RunArgs) -> Result<super::remote::SessionSource, String> {
    use super::remote::SessionSource;
    if let Some(code) = &args.pairing_code {
        if let Some(f) = &args.token_file
            && std::fs::symlink_metadata(f).is_ok()
        {
            return Err(format!(
                "--token-file {} already exists, and a pairing code makes a new session; fix: name a new file for its token, or drop --pairing-code to use the saved token",
                f.display()
            ));
        }
        return Ok(SessionSource::Pairing {
            code: code.clone(),
            save: args.token_file.clone(),
        });
    }
    if let Some(f) = &args.token_file {
        return read_token_file(f).map(SessionSource::Token);
    }
    match std::env::var("EXECBOX_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(SessionSource::Token(t.trim().to_string())),
        _ => Ok(SessionSource::Fresh),
    }
}

/// A token file must be a regular file only its owner can read (it is a bearer credential).
fn read_token_file(f: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(f).map_err(|e| {
        format!(
            "--token-file {}: {e}; fix: name the file the token was saved in",
            f.display()
        )
    })?;
    if !m.is_file() {
        return Err(format!(
            "--token-file {} is not a regular file",
            f.display()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "--token-file {} is readable or writable by others (mode {:o}); fix: chmod 600 {}",
            f.display(),
            m.mode() & 0o7777,
            f.display()
        ));
    }
    let text =
        std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "--token-file {} does not hold one token (`s_….…`)",
            f.display()
        ));
    }
    Ok(token.to_string())
}

fn refusal_text(d: &Decision, what: &str) -> String {
    match &d.rule {
        Some(rule) => format!("{what}: rule {rule}: {}", d.reason),
        None => format!("{what}: {}", d.reason),
    }
}

/// Asks on the controlling terminal (never on stdin, which may be the agent's). Shows control
/// characters visibly so the command text cannot rewrite the prompt.
fn confirm_on_terminal(
    argv: &[String],
    shell: Option<&str>,
    d: &Decision,
    explained: &Explanation,
    env: &[(String, String)],
) -> bool {
    let Ok(mut tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return false;
    };
    let shown = shell.map(str::to_string).unwrap_or_else(|| argv.join(" "));
    let visible = crate::audit::tail::escape(&shown);
    let details = super::judge::prompt_details(explained, env);
    let _ = writeln!(
        tty,
        "execbox: this command needs approval\n  command: {visible}\n{details}  rule:    {}\n  reason:  {}\nRun it? Type 'yes' to run, anything else refuses: ",
        d.rule
            .as_deref()
            .unwrap_or(if explained.fail_closed.is_empty() {
                "(profile default)"
            } else {
                "(none: the analysis failed closed)"
            }),
        crate::audit::tail::escape(&d.reason)
    );
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(tty);
    std::io::BufRead::read_line(&mut reader, &mut line).is_ok() && line.trim() == "yes"
}

/// The clean environment: PATH, HOME, LANG, TERM, the profile's pass-through list, then
/// `--env` (which wins).
fn environment(profile: &Profile, extra: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), "/tmp".into()),
        (
            "LANG".into(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        ),
        (
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
        ),
    ];
    let mut set = |k: String, v: String| {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    };
    for name in &profile.sandbox.env_passthrough {
        if let Ok(v) = std::env::var(name) {
            set(name.clone(), v);
        }
    }
    for kv in extra {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!(
                "--env {kv:?} is not KEY=VALUE; fix: e.g. --env RUST_LOG=debug"
            ));
        };
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid || v.contains('\0') {
            return Err(format!(
                "--env {kv:?}: {k:?} is not a valid variable name; fix: letters, digits and _"
            ));
        }
        set(k.to_string(), v.to_string());
    }
    Ok(env)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
