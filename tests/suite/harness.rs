//! Shared helpers: run the built binary in a fresh workspace, decide when a missing feature is
//! a skip and when (EXECBOX_REQUIRE_ALL=1, as in CI) it is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test. `EXECBOX_BIN` overrides the build path: `cargo xtask ci` copies the
/// binary somewhere an unprivileged user can reach for its second pass.
pub static EXECBOX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("EXECBOX_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_execbox").to_string())
});

/// A file of the source tree. `EXECBOX_SOURCE_DIR` overrides the checkout: `cargo xtask ci`
/// stages what the tests read where its unprivileged user can reach it.
pub fn source_path(rel: &str) -> PathBuf {
    let dir = std::env::var_os("EXECBOX_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.join(rel)
}

pub fn fixture(name: &str) -> PathBuf {
    source_path("tests/fixtures").join(name)
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A test that cannot run here: a failure under EXECBOX_REQUIRE_ALL=1, otherwise a visible skip.
pub fn missing(what: &str) {
    if std::env::var("EXECBOX_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("required feature missing: {what} (EXECBOX_REQUIRE_ALL=1)");
    }
    eprintln!("SKIP: {what}");
}

/// True when this test only makes sense as root; prints why it does not apply otherwise.
/// (CI runs the suite both as root and as an unprivileged user: each case runs in one of them.)
pub fn root_only(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("not applicable unprivileged (runs in the root pass): {test}");
    false
}

pub struct Ws {
    pub dir: tempfile::TempDir,
}

impl Ws {
    pub fn new() -> Ws {
        Ws {
            dir: tempfile::Builder::new()
                .prefix("execbox-test-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `execbox run --policy tests/fixtures/open.toml --workspace WS [extra…] -- argv…`.
pub fn run_in(ws: &Path, extra: &[&str], argv: &[&str]) -> Output {
    cmd_in(ws, extra, argv).output().unwrap()
}

pub fn cmd_in(ws: &Path, extra: &[&str], argv: &[&str]) -> Command {
    let mut c = Command::new(&*EXECBOX);
    c.arg("run")
        .arg("--policy")
        .arg(fixture("open.toml"))
        .arg("--workspace")
        .arg(ws);
    c.args(extra).arg("--").args(argv);
    c.stdin(Stdio::null());
    c
}

/// Runs a shell snippet with `sh -c` in a fresh workspace.
pub fn sh(script: &str) -> Output {
    let ws = Ws::new();
    run_in(ws.path(), &[], &["/bin/sh", "-c", script])
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    stdout(o)
}

/// Parses the one JSON line `--json` writes on stderr (the last line).
pub fn json_report(o: &Output) -> serde_json::Value {
    let err = text(&o.stderr);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report in: {err}"));
    serde_json::from_str(line).unwrap()
}

/// Processes on the host whose command line contains `marker`.
pub fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = text(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("execbox") {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Runs a Python snippet inside the sandbox; python3 is under the read-only /usr.
pub fn py(code: &str) -> Output {
    let ws = Ws::new();
    run_in(ws.path(), &[], &["/usr/bin/python3", "-c", code])
}

/// The same snippet on the host (the positive control that the probe itself works).
pub fn py_host(code: &str) -> Output {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(code)
        .output()
        .unwrap()
}

/// A 64 KiB tmpfs (mode 0700) mounted at `dir`, a new empty directory; root only. Unmounted
/// however the test ends (lazily when a daemon still holds a file open on it).
pub struct TinyTmpfs(pub PathBuf);

impl TinyTmpfs {
    pub fn mount(dir: &Path) -> TinyTmpfs {
        std::fs::create_dir(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        TinyTmpfs(dir.to_path_buf())
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs `argv` on a pseudo-terminal (python3's `pty`), types `answer` and a newline once
/// `prompt` has appeared, and returns (exit code, everything the terminal showed). With
/// `stop_after`, the program is sent SIGTERM once that text appears after the answer (for
/// programs that do not end by themselves); the exit code is then meaningless.
pub fn on_a_pty(
    argv: &[&str],
    prompt: &str,
    answer: &str,
    stop_after: Option<&str>,
) -> (i32, String) {
    let script = r#"
import os, pty, sys, time, signal
prompt, answer, stop = sys.argv[1].encode(), sys.argv[2], sys.argv[3].encode()
argv = sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen = b""
deadline = time.time() + 20
answered_at = None
while time.time() < deadline:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    if answered_at is None and prompt in seen:
        os.write(fd, answer.encode() + b"\n")
        answered_at = len(seen)
    if answered_at is not None and stop and stop in seen[answered_at:]:
        os.kill(pid, signal.SIGTERM)
        break
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status) & 0xff)
"#;
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args([prompt, answer, stop_after.unwrap_or("")])
        .args(argv)
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), text(&o.stdout))
}

/// Starts `execbox serve --config cfg`, which must refuse to start; returns what it said.
#[track_caller]
pub fn serve_refuses(cfg: &Path) -> String {
    let o = Command::new(&*EXECBOX)
        .args(["serve", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "serve started with {}", cfg.display());
    text(&o.stderr)
}
