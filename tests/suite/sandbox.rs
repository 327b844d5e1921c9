//! Every wall of the sandbox: an escape attempt that must fail next to a positive control that
//! shows the same probe succeeds where it should.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::*;

// ---- filesystem view -------------------------------------------------------------------------

#[test]
fn workspace_is_writable_and_the_system_is_not() {
    let ws = Ws::new();
    let o = run_in(
        ws.path(),
        &[],
        &["/bin/sh", "-c", "echo data > made-here && cat made-here"],
    );
    assert_eq!(ok(&o), "data\n");
    assert!(
        ws.path().join("made-here").exists(),
        "the write reached the host workspace"
    );

    for target in [
        "/usr/escape",
        "/etc/escape",
        "/escape",
        "/dev/escape",
        "/proc/sys/kernel/hostname",
    ] {
        let o = sh(&format!("echo x > {target}"));
        assert!(!o.status.success(), "{target} must not be writable");
    }
}

#[test]
fn host_secrets_and_homes_are_not_visible() {
    // Positive control: the view has what commands need.
    assert_eq!(
        ok(&sh(
            "test -r /etc/passwd && test -x /usr/bin/env && echo yes"
        )),
        "yes\n"
    );
    for p in [
        "/etc/shadow",
        "/root",
        "/home",
        "/var",
        "/run",
        "/sys",
        "/etc/ssh",
        "/boot",
    ] {
        let o = sh(&format!("ls -d {p}"));
        assert!(
            !o.status.success(),
            "{p} must not exist in the sandbox: {}",
            stdout(&o)
        );
    }
    // The host's /tmp is not the sandbox's /tmp.
    let marker = tempfile::Builder::new()
        .prefix("execbox-host-only-")
        .tempfile_in("/tmp")
        .unwrap();
    let name = marker
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(!sh(&format!("test -e /tmp/{name}")).status.success());
}

#[test]
fn tmp_is_private_and_writable() {
    assert_eq!(
        ok(&sh("echo t > /tmp/x && cat /tmp/x && stat -c %a /tmp")),
        "t\n1777\n"
    );
}

#[test]
fn git_hooks_and_config_stay_read_only_inside_a_writable_workspace() {
    let ws = Ws::new();
    std::fs::create_dir_all(ws.path().join(".git/hooks")).unwrap();
    std::fs::write(ws.path().join(".git/config"), "[core]\n").unwrap();
    std::fs::create_dir_all(ws.path().join(".git/objects")).unwrap();
    // Positive control: the rest of .git is writable.
    ok(&run_in(
        ws.path(),
        &[],
        &["/bin/sh", "-c", "echo x > .git/objects/ok"],
    ));
    for script in [
        "echo evil > .git/hooks/pre-commit",
        "echo '[alias]' >> .git/config",
    ] {
        let o = run_in(ws.path(), &[], &["/bin/sh", "-c", script]);
        assert!(!o.status.success(), "{script} must fail");
    }
    assert!(!ws.path().join(".git/hooks/pre-commit").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join(".git/config")).unwrap(),
        "[core]\n"
    );
}

#[test]
fn hidden_paths_show_nothing() {
    let ws = Ws::new();
    std::fs::create_dir(ws.path().join("secret-dir")).unwrap();
    std::fs::write(ws.path().join("secret-dir/key"), "k").unwrap();
    std::fs::write(ws.path().join("secret.env"), "TOKEN=1").unwrap();
    std::fs::write(ws.path().join("visible"), "v").unwrap();
    let o = run_in(
        ws.path(),
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat visible; cat secret-dir/key; cat secret.env; echo end",
        ],
    );
    assert_eq!(stdout(&o), "vend\n");
}

// ---- identity ---------------------------------------------------------------------------------

#[test]
fn files_created_in_the_workspace_belong_to_its_owner() {
    if !root_only("workspace owned by another user") {
        return;
    }
    let ws = Ws::new();
    std::os::unix::fs::chown(ws.path(), Some(4242), Some(4343)).unwrap();
    let o = run_in(
        ws.path(),
        &[],
        &[
            "/bin/sh",
            "-c",
            "id -u; id -g; mkdir d; echo x > d/f; cat /proc/self/uid_map",
        ],
    );
    let out = ok(&o);
    assert!(out.starts_with("4242\n4343\n"), "{out}");
    let meta = std::fs::metadata(ws.path().join("d/f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    // Host root is never mapped in.
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("0")),
        "uid_map maps host root: {out}"
    );
}

#[test]
fn a_root_owned_workspace_is_usable_without_mapping_host_root() {
    if !root_only("root-owned workspace through an idmapped mount") {
        return;
    }
    let ws = Ws::new();
    let o = run_in(
        ws.path(),
        &[],
        &[
            "/bin/sh",
            "-c",
            "echo x > f && cat /proc/self/uid_map /proc/self/gid_map",
        ],
    );
    let out = ok(&o);
    // Inside 0 is an unprivileged host id, never host 0.
    for line in out.lines() {
        let cols: Vec<_> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 3, "{out}");
        assert_ne!(cols[1], "0", "host root mapped: {out}");
    }
    // What it wrote belongs to the workspace owner (root), as if root had written it.
    let meta = std::fs::metadata(ws.path().join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[test]
fn host_root_files_are_not_root_inside() {
    if !root_only("host root-owned 0600 file") {
        return;
    }
    // A workspace owned by a normal user containing a root-only file: the sandbox (that user)
    // must not read it, although inside it may call itself anything.
    let ws = Ws::new();
    std::os::unix::fs::chown(ws.path(), Some(4242), Some(4242)).unwrap();
    std::fs::write(ws.path().join("root-only"), "secret").unwrap();
    std::fs::set_permissions(
        ws.path().join("root-only"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(ws.path().join("shared"), "public").unwrap();
    let o = run_in(
        ws.path(),
        &[],
        &["/bin/sh", "-c", "cat shared; cat root-only"],
    );
    assert_eq!(stdout(&o), "public");
}

#[test]
fn a_setuid_binary_in_the_workspace_gains_nothing() {
    if !root_only("setuid-root binary planted by the host") {
        return;
    }
    for owner in [0u32, 4242] {
        let ws = Ws::new();
        std::os::unix::fs::chown(ws.path(), Some(owner), Some(owner)).unwrap();
        let planted = ws.path().join("suid-id");
        std::fs::copy("/usr/bin/id", &planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let o = run_in(
            ws.path(),
            &[],
            &[
                "/bin/sh",
                "-c",
                "id -u; ./suid-id -u; grep CapEff /proc/self/status",
            ],
        );
        let out = ok(&o);
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(
            lines[0], lines[1],
            "setuid changed the uid (owner {owner}): {out}"
        );
        assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    }
}

#[test]
fn the_sandbox_cannot_leave_setuid_files_or_devices() {
    let o = sh(
        "touch f; chmod 0755 f && echo plain-ok; chmod 4755 f && echo suid-set; chmod 2755 f && echo sgid-set; \
                mknod dev c 1 3 && echo mknod-ok; stat -c %a f",
    );
    let out = stdout(&o);
    assert!(out.contains("plain-ok"), "positive control: {out}");
    assert!(
        !out.contains("suid-set") && !out.contains("sgid-set") && !out.contains("mknod-ok"),
        "{out}"
    );
    assert!(out.ends_with("755\n"), "{out}");
    // The open family too: O_CREAT with a setuid mode.
    let o = py(
        "import os\ntry:\n os.open('s', os.O_CREAT|os.O_WRONLY, 0o4755); print(oct(os.stat('s').st_mode & 0o7777))\nexcept PermissionError: print('refused')",
    );
    assert_eq!(stdout(&o), "refused\n");
    let o = py(
        "import os\nos.open('p', os.O_CREAT|os.O_WRONLY, 0o755); print(oct(os.stat('p').st_mode & 0o777))",
    );
    assert_eq!(stdout(&o), "0o755\n");
}

// ---- processes, capabilities, kernel surface -------------------------------------------------

#[test]
fn no_capabilities_no_new_privs_and_a_seccomp_filter() {
    let out = ok(&sh(
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
    ));
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} not empty: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

#[test]
fn new_namespaces_cannot_be_created() {
    // Positive control: the same tool works on the host.
    let host = Command::new("unshare")
        .args(["-U", "true"])
        .status()
        .unwrap();
    assert!(
        host.success(),
        "unshare -U must work on the host for this test to mean anything"
    );
    for args in [
        "unshare -U true",
        "unshare -n true",
        "unshare -m true",
        "unshare -p -f true",
    ] {
        let o = sh(args);
        assert!(!o.status.success(), "{args} succeeded in the sandbox");
    }
}

#[test]
fn ptrace_is_refused() {
    let probe = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.ptrace(0, 0, 0, 0)\nprint(r, ctypes.get_errno())";
    // PTRACE_TRACEME succeeds on the host…
    assert_eq!(text(&py_host(probe).stdout), "0 0\n");
    // …and is EPERM in the sandbox.
    assert_eq!(stdout(&py(probe)), format!("-1 {}\n", libc::EPERM));
}

#[test]
fn the_command_runs_under_our_own_pid_1() {
    let out = ok(&sh(
        "echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'",
    ));
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[0], "2", "{out}");
    assert_eq!(lines[1], "execbox", "{out}");
    // Only init, the shell, grep and ls: no host process is visible.
    assert!(lines[2].parse::<u32>().unwrap() <= 4, "{out}");
}

#[test]
fn hostname_and_ipc_are_private() {
    assert_eq!(ok(&sh("hostname")), "execbox\n");
}

#[test]
fn only_loopback_exists_and_a_local_server_works_on_it() {
    let out = ok(&sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"));
    assert_eq!(out, "lo\n");
    // A test suite's local server: bind, listen, connect and talk over the job's own lo.
    let local = "import socket, threading\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\ndef serve():\n c, _ = s.accept(); c.sendall(c.recv(5).upper()); c.close()\nthreading.Thread(target=serve, daemon=True).start()\nc = socket.create_connection(s.getsockname()[:2], timeout=10); c.sendall(b'hello'); print(c.recv(5).decode())";
    assert_eq!(stdout(&py(local)), "HELLO\n");
    // IPv6 loopback too.
    let local6 = local
        .replace("socket.socket()", "socket.socket(socket.AF_INET6)")
        .replace("'127.0.0.1'", "'::1'");
    assert_eq!(stdout(&py(&local6)), "HELLO\n");
    // Escape attempt: a server on the host's loopback is not reachable from the job's lo.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let connect = format!(
        "import socket\ntry:\n socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\nexcept ConnectionRefusedError: print('refused')"
    );
    assert_eq!(
        text(&py_host(&connect).stdout),
        "connected\n",
        "positive control on the host"
    );
    assert_eq!(stdout(&py(&connect)), "refused\n");
    // UDP on lo works as well.
    let udp = "import socket\na = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('127.0.0.1', 0))\nb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.sendto(b'hi', a.getsockname())\nprint(a.recv(2).decode())";
    assert_eq!(stdout(&py(udp)), "hi\n");
}

#[test]
fn landlock_also_guards_paths_the_mounts_leave_writable() {
    // /proc/self/comm is writable for any process on the host; landlock gives /proc read only.
    let probe = "try:\n open('/proc/self/comm', 'w').write('x'); print('written')\nexcept PermissionError: print('refused')";
    assert_eq!(text(&py_host(probe).stdout), "written\n");
    assert_eq!(stdout(&py(probe)), "refused\n");
}

#[test]
fn only_stdio_is_open_in_the_command() {
    // Give execbox itself an extra inherited descriptor; the command must not see it.
    let ws = Ws::new();
    let inner = format!(
        "exec 7</etc/hostname; ls /proc/self/fd | tr '\\n' ' '; echo; exec {} run --policy {} --workspace {} -- /bin/ls /proc/self/fd",
        *EXECBOX,
        fixture("open.toml").display(),
        ws.path().display()
    );
    let o = Command::new("/bin/bash")
        .arg("-c")
        .arg(inner)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = ok(&o);
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().contains('7'),
        "positive control: fd 7 is open in the parent: {out}"
    );
    let inside: Vec<_> = lines.collect();
    // 0-2 and the directory ls itself opened.
    assert_eq!(inside, ["0", "1", "2", "3"], "{out}");
}

#[test]
fn the_environment_is_clean() {
    let ws = Ws::new();
    let o = cmd_in(ws.path(), &["--env", "GIVEN=yes"], &["/usr/bin/env"])
        .env("HOST_SECRET_TOKEN", "hunter2")
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("GIVEN=yes"), "positive control: {out}");
    assert!(!out.contains("hunter2"), "host secret leaked: {out}");
    let keys: Vec<_> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for k in &keys {
        assert!(
            ["PATH", "HOME", "LANG", "TERM", "GIVEN", "PWD"].contains(k),
            "unexpected {k} in {out}"
        );
    }
}

#[test]
fn the_command_has_no_controlling_terminal() {
    let out = ok(&py(
        "import os\nprint(os.getsid(0) == os.getpid())\ntry:\n open('/dev/tty'); print('tty')\nexcept OSError: print('no tty')",
    ));
    assert_eq!(out, "True\nno tty\n");
}

// ---- limits ----------------------------------------------------------------------------------

#[test]
fn the_wall_clock_limit_kills_the_whole_job() {
    let ws = Ws::new();
    let t = Instant::now();
    let o = run_in(
        ws.path(),
        &["--timeout", "1s", "--json"],
        &["/bin/sh", "-c", "sleep 1001 & sleep 1002 & sleep 1003"],
    );
    assert_eq!(o.status.code(), Some(124), "{}", text(&o.stderr));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(json_report(&o)["ending"]["kind"], "timeout");
    for m in ["sleep 1001", "sleep 1002", "sleep 1003"] {
        assert!(
            host_processes_with(m).is_empty(),
            "{m} survived: {:?}",
            host_processes_with(m)
        );
    }
    // Positive control: a command inside the limit is not touched.
    ok(&run_in(
        ws.path(),
        &["--timeout", "5s"],
        &["/bin/sh", "-c", "sleep 0.2"],
    ));
}

#[test]
fn background_processes_die_with_the_command() {
    let o = sh("sleep 1004 & echo started");
    assert_eq!(ok(&o), "started\n");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        host_processes_with("sleep 1004").is_empty(),
        "{:?}",
        host_processes_with("sleep 1004")
    );
}

#[test]
fn a_fork_bomb_is_stopped_by_the_pids_limit() {
    let ws = Ws::new();
    let o = run_in(
        ws.path(),
        &["--pids", "32", "--json", "--timeout", "20s"],
        &[
            "/bin/sh",
            "-c",
            "for i in $(seq 200); do sleep 5 & done 2>/dev/null; echo done",
        ],
    );
    let r = json_report(&o);
    assert!(
        r["limits"]["pids_max_hits"].as_u64().unwrap_or(0) > 0,
        "pids limit never hit: {r}"
    );
    assert!(host_processes_with("sleep 5").len() < 40);
    // Positive control: a few processes are fine under the same limit.
    let o = run_in(
        ws.path(),
        &["--pids", "32", "--json"],
        &[
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4 5; do true & done; wait; echo ok",
        ],
    );
    assert_eq!(ok(&o), "ok\n");
    assert_eq!(json_report(&o)["limits"]["pids_max_hits"], 0);
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    let ws = Ws::new();
    let hog = "b = []\nwhile True: b.append(bytearray(16 << 20))";
    let o = run_in(
        ws.path(),
        &["--memory", "64MiB", "--json"],
        &["/usr/bin/python3", "-c", hog],
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    let r = json_report(&o);
    assert_eq!(r["ending"]["kind"], "out_of_memory", "{r}");
    // Positive control: 16 MiB fits in 64 MiB.
    let o = run_in(
        ws.path(),
        &["--memory", "64MiB"],
        &[
            "/usr/bin/python3",
            "-c",
            "b = bytearray(16 << 20); print(len(b))",
        ],
    );
    assert_eq!(ok(&o), format!("{}\n", 16 << 20));
}

#[test]
fn output_is_capped_with_an_exact_truncation_count() {
    // The test profile caps each stream at 1 MiB.
    let ws = Ws::new();
    let o = run_in(
        ws.path(),
        &["--json"],
        &["/bin/sh", "-c", "head -c 5242880 /dev/zero; echo err >&2"],
    );
    assert_eq!(o.stdout.len(), 1 << 20);
    let r = json_report(&o);
    assert_eq!(r["stdout_truncated"], 4 << 20);
    assert_eq!(r["stdout_bytes"], 1 << 20);
    assert_eq!(r["stderr_truncated"], 0);
}

#[test]
fn output_streams_while_the_command_runs() {
    let ws = Ws::new();
    let mut child = cmd_in(
        ws.path(),
        &[],
        &["/bin/sh", "-c", "echo first; sleep 3; echo second"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = child.stdout.take().unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"first\n");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "first line arrived only after {:?}",
        t.elapsed()
    );
    assert!(child.wait().unwrap().success());
}

// ---- exit codes and bad input ------------------------------------------------------------------

#[test]
fn exit_codes_follow_the_contract() {
    assert_eq!(sh("exit 7").status.code(), Some(7));
    assert_eq!(sh("kill -TERM $$").status.code(), Some(128 + libc::SIGTERM));
    let ws = Ws::new();
    let o = run_in(ws.path(), &[], &["no-such-program-xyz"]);
    assert_eq!(o.status.code(), Some(126));
    let err = text(&o.stderr);
    assert!(
        err.contains("no-such-program-xyz") && err.contains("fix:") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_creates_nothing() {
    let ws = Ws::new();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--memory", "lots"], 125, "512MiB"),
        (&["--timeout", "5 fortnights"], 125, "unknown unit"),
        (&["--no-such-flag"], 125, "--no-such-flag"),
        (&["--pids", "0"], 125, "--pids"),
        (&["--env", "NOEQUALS"], 125, "KEY=VALUE"),
        (&["--workspace", "/nonexistent/dir"], 126, "workspace"),
        (&["--workspace", "/"], 126, "system directory"),
        (&["--policy", "/nonexistent.toml"], 125, "policy"),
    ];
    for (args, code, needle) in cases {
        let mut c = Command::new(&*EXECBOX);
        c.arg("run");
        if !args.contains(&"--workspace") {
            c.arg("--workspace").arg(ws.path());
        }
        c.args(*args).args(["--", "/bin/true"]);
        let o = c.output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(*code),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert!(
            text(&o.stderr).contains(needle),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    let bad = ws.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[profile]\nname = \"x\"\ndefault_verdict = \"allow\"\n[limits]\nmemroy = 1\n",
    )
    .unwrap();
    let o = Command::new(&*EXECBOX)
        .arg("run")
        .arg("--policy")
        .arg(&bad)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = text(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("memroy"), "{err}");
    // Nothing ran, nothing was left: the workspace holds only the policy file we wrote.
    assert_eq!(std::fs::read_dir(ws.path()).unwrap().count(), 1);
}

#[test]
fn no_job_cgroups_are_left_behind() {
    // A parent cgroup of our own, so jobs of tests running in parallel do not interfere.
    let parent = TestCgroupParent::new();
    let arg = parent.relative.display().to_string();
    let ws = Ws::new();
    let with_parent = |argv: &[&str], extra: &[&str]| {
        let mut args = vec!["--cgroup-parent", arg.as_str()];
        args.extend_from_slice(extra);
        run_in(ws.path(), &args, argv)
    };
    // Positive control: while a job runs, its cgroup exists under our parent.
    let mut running = cmd_in(ws.path(), &["--cgroup-parent", &arg], &["/bin/sleep", "2"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while parent.children().is_empty() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !parent.children().is_empty(),
        "no job cgroup appeared under {:?}",
        parent.dirs
    );
    running.kill().unwrap();
    let _ = running.wait();

    ok(&with_parent(&["/bin/true"], &[]));
    let _ = with_parent(&["/bin/sh", "-c", "exit 3"], &[]);
    let _ = with_parent(&["no-such-program-xyz"], &[]);
    let _ = with_parent(&["/bin/sleep", "5"], &["--timeout", "200ms"]);
    let _ = with_parent(
        &["/bin/sh", "-c", "sleep 1005 & sleep 1006"],
        &["--timeout", "300ms"],
    );
    // The killed `execbox run` above leaves its job's cgroup only if cleanup is broken; give
    // the kernel a moment to finish tearing the namespace down.
    let t = Instant::now();
    while !parent.children().is_empty() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(parent.children(), Vec::<String>::new());
}

/// A fresh cgroup created in every hierarchy we may write to, below the delegated parent the
/// environment names (EXECBOX_CGROUP_PARENT) or the root.
pub(super) struct TestCgroupParent {
    pub(super) relative: std::path::PathBuf,
    pub(super) dirs: Vec<std::path::PathBuf>,
}

impl TestCgroupParent {
    pub(super) fn new() -> TestCgroupParent {
        let base = std::env::var("EXECBOX_CGROUP_PARENT").unwrap_or_default();
        // Unique per process and call: tests running in parallel each get their own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "execbox-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let relative = std::path::Path::new(&base).join(&name);
        let mut dirs = vec![];
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mounts.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            if !post.starts_with("cgroup") {
                continue;
            }
            let mount_point = pre.split_whitespace().nth(4).unwrap();
            let dir = std::path::Path::new(mount_point)
                .join(base.trim_start_matches('/'))
                .join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                dirs.push(dir);
            }
        }
        assert!(
            !dirs.is_empty(),
            "could not create a test cgroup anywhere (base {base:?})"
        );
        TestCgroupParent { relative, dirs }
    }

    /// Job cgroups below the parent, without a daemon's spares built ahead (`…-warmN`).
    pub(super) fn jobs(&self) -> Vec<String> {
        let mut c = self.children();
        c.retain(|d| !d.rsplit('-').next().unwrap_or("").starts_with("warm"));
        c
    }

    pub(super) fn children(&self) -> Vec<String> {
        self.dirs
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path().display().to_string())
            .collect()
    }
}

impl Drop for TestCgroupParent {
    fn drop(&mut self) {
        // Empty leftovers first (a killed daemon's spare cgroups), then ours.
        for child in self.children() {
            let _ = std::fs::remove_dir(child);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

// ---- host prerequisites -------------------------------------------------------------------------

/// The sandbox fails closed when a layer is missing, so on a host without one the tests above
/// fail with a setup error; this test names what is missing (and fails under
/// EXECBOX_REQUIRE_ALL=1, as in CI, instead of only printing).
#[test]
fn host_has_every_kernel_feature_the_suite_needs() {
    let abi =
        text(&py_host("import ctypes\nprint(ctypes.CDLL(None).syscall(444, None, 0, 1))").stdout);
    let abi: i64 = abi.trim().parse().unwrap_or(-1);
    if abi < 6 {
        missing(&format!("landlock ABI >= 6 (found {abi})"));
    }
    if !Command::new("unshare")
        .args(["-U", "-r", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        missing("unprivileged user namespaces");
    }
    let cgroups = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !cgroups.lines().any(|l| l.contains(" - cgroup")) {
        missing("a mounted cgroup hierarchy");
    }
}

// ---- seccomp, probe by probe ---------------------------------------------------------------------

/// Probes whose permitted call already fails with EPERM without a capability (the sandbox has
/// none): their EPERM inside proves nothing about seccomp, so they are left out here and the
/// filter logic for them is unit-tested in src/sandbox/seccomp.rs.
const CAPABILITY_FIRST: &[&str] = &[
    "fsopen",
    "fsmount",
    "fspick",
    "move_mount",
    "pivot_root",
    "reboot",
    "swapoff",
    "acct",
    "syslog",
];

#[test]
fn every_denied_syscall_is_refused_by_seccomp_and_works_unfiltered() {
    let probe = source_path("tests/probes/try_syscall.py");
    let ws = Ws::new();
    let local = ws.path().join("try_syscall.py");
    std::fs::copy(&probe, &local).unwrap();
    // Positive control: without a filter no probe looks filtered (the script checks itself).
    let host = Command::new("/usr/bin/python3")
        .arg(&local)
        .arg("--self-test")
        .env("PROBE_DIR", ws.path())
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "self-test on the host: {}{}",
        text(&host.stdout),
        text(&host.stderr)
    );

    let names = text(
        &Command::new("/usr/bin/python3")
            .arg(&local)
            .arg("--list")
            .output()
            .unwrap()
            .stdout,
    );
    let names: Vec<&str> = names
        .split_whitespace()
        .filter(|n| !CAPABILITY_FIRST.contains(n))
        .collect();
    let mut argv = vec!["/usr/bin/python3", "try_syscall.py"];
    argv.extend(names.iter().copied());
    let o = run_in(
        ws.path(),
        &["--env", &format!("PROBE_DIR={}", ws.path().display())],
        &argv,
    );
    let out = ok(&o);
    for line in out.lines() {
        let name = line.split_whitespace().next().unwrap();
        let allowed = name == "chmod_plain" || name.ends_with("_plain");
        if allowed {
            assert!(line.contains("errno=0"), "positive control refused: {line}");
        } else {
            assert!(
                line.contains("errno=EPERM") || line.contains("errno=ENOSYS"),
                "not refused by seccomp: {line}"
            );
        }
    }
    assert_eq!(out.lines().count(), names.len(), "{out}");
}

#[test]
fn the_wall_clock_limit_holds_even_when_nobody_reads_the_output() {
    // The reader of execbox's stdout never reads: the relay must not block on it forever.
    let ws = Ws::new();
    let mut child = cmd_in(ws.path(), &["--timeout", "1s"], &["/usr/bin/yes"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "execbox hung behind a full stdout pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(124));
    drop(child.stdout.take());
}

#[test]
fn a_missing_layer_fails_closed_unless_the_profile_names_the_degradation() {
    let ws = Ws::new();
    let bad_parent = ["--cgroup-parent", "execbox-no-such-parent-cgroup", "--json"];
    // Fail closed: no cgroup, no run; the message names the layer and the fix.
    let o = run_in(
        ws.path(),
        &bad_parent,
        &["/bin/sh", "-c", "echo ran > marker"],
    );
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
    assert!(!ws.path().join("marker").exists());
    let r = json_report(&o);
    assert_eq!(r["error"]["kind"], "cgroup", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_degraded"),
        "{r}"
    );

    // Allowed by the profile: it runs, and says so.
    let mut c = Command::new(&*EXECBOX);
    c.arg("run")
        .arg("--policy")
        .arg(fixture("degraded-cgroup.toml"))
        .arg("--workspace")
        .arg(ws.path());
    let o = c
        .args(bad_parent)
        .args(["--", "/bin/sh", "-c", "echo ran > marker"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(ws.path().join("marker").exists());
    assert_eq!(json_report(&o)["degraded"], serde_json::json!(["cgroup"]));
    let o = Command::new(&*EXECBOX)
        .arg("run")
        .arg("--policy")
        .arg(fixture("degraded-cgroup.toml"))
        .arg("--workspace")
        .arg(ws.path())
        .args(&bad_parent[..2])
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("ran without cgroup"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_slow_reader_still_gets_every_byte_after_the_job_ended() {
    // The job writes 1 000 000 bytes into the relay's pipe and exits at once; the reader only
    // starts reading 2.5 s later. Nothing may be dropped while the relay waits for it.
    let ws = Ws::new();
    let mut child = cmd_in(
        ws.path(),
        &[],
        &["/usr/bin/head", "-c", "1000000", "/dev/zero"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let mut got = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(got.len(), 1_000_000);
}

#[test]
fn the_command_cannot_reach_pid_1_s_descriptors_or_forge_its_exit() {
    // pid 1 holds the report pipe to the supervisor. It is not dumpable, so even a command that
    // is uid 0 inside its namespace (root-owned workspace) cannot open /proc/1/fd/*. As root the
    // id switch already clears dumpable; in the unprivileged CI pass (no id change) only pid 1's
    // explicit PR_SET_DUMPABLE keeps this closed: without it this test fails there.
    let o = py(
        "import os\ntry:\n os.listdir('/proc/1/fd'); print('listed')\nexcept PermissionError: print('refused')\ntry:\n open('/proc/1/fd/3', 'wb'); print('opened')\nexcept PermissionError: print('refused')\nprint(len(os.listdir('/proc/self/fd')) > 0)",
    );
    assert_eq!(
        stdout(&o),
        "refused\nrefused\nTrue\n",
        "{}",
        text(&o.stderr)
    );
    // And a command that exits 3 is reported as 3, whatever it tried.
    let o =
        sh("for f in /proc/1/fd/*; do printf 'xxxxxxxxxxxxxxxx' > $f; done 2>/dev/null; exit 3");
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn every_namespace_is_new() {
    // Each namespace the sandbox must have differs from the host's (the positive control is the
    // host's own view, read the same way).
    let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect();
    let inside = ok(&sh(&script));
    for (k, line) in kinds.iter().zip(inside.lines()) {
        let host = std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
        assert!(line.starts_with(&format!("{k}:[")), "{line}");
        assert_ne!(
            line,
            host.to_string_lossy(),
            "the sandbox shares the host's {k} namespace"
        );
    }
    assert_eq!(inside.lines().count(), kinds.len(), "{inside}");
    // The cgroup namespace is rooted at the job's cgroup.
    assert!(
        ok(&sh("cat /proc/self/cgroup"))
            .lines()
            .all(|l| l.ends_with(":/")),
        "not rooted at the job cgroup"
    );
}

#[test]
fn rlimits_forbid_core_dumps_and_bound_descriptors() {
    // The caller raises its own limits first (the positive control, printed on the first
    // line); inside they are the profile's: no core dumps, 1024 descriptors.
    let ws = Ws::new();
    let script = format!(
        "ulimit -Sc $(ulimit -Hc) 2>/dev/null; ulimit -Sn 4096; echo $(ulimit -c) $(ulimit -n); \
         exec '{}' run --policy '{}' --workspace '{}' -- /bin/sh -c 'echo $(ulimit -c) $(ulimit -n)'",
        *EXECBOX,
        fixture("open.toml").display(),
        ws.path().display()
    );
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = ok(&o);
    let lines: Vec<_> = out.lines().collect();
    assert!(
        lines[0].ends_with(" 4096"),
        "control: the caller's limits were not raised: {out}"
    );
    assert_eq!(lines[1], "0 1024", "{out}");
}

#[test]
fn the_sandbox_dies_with_a_killed_supervisor() {
    // SIGKILL `execbox run` itself: nothing can clean up in-process, so the sandbox's pid 1 must
    // die through its parent-death signal, taking the command with it.
    let ws = Ws::new();
    let mut child = cmd_in(ws.path(), &[], &["/bin/sleep", "1009"])
        .spawn()
        .unwrap();
    let t = Instant::now();
    while host_processes_with("sleep 1009").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let t = Instant::now();
    while !host_processes_with("sleep 1009").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the sandbox outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
