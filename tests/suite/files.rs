//! `/v1/files` through a real daemon (the `open` fixture: protected `.git/hooks` and
//! `.git/config`, hidden `secret-dir` and `secret.env`; `[files] max_file_bytes = "1MiB"`).
//! Each refusal sits beside its positive control: the plain file next to the symlink, the
//! single-link file next to the hard link, the upload at the cap next to the one over it.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::daemon::{Daemon, curl, exit_of, http, output};
use super::harness::*;

const CAP: usize = 1 << 20;

fn start() -> Daemon {
    Daemon::start("[files]\nmax_file_bytes = \"1MiB\"\nmax_list_entries = 50\n")
}

struct Session {
    token: String,
    workspace: PathBuf,
}

fn session(d: &Daemon) -> Session {
    let (status, v) = d.json("POST", "/v1/sessions", None, None);
    assert_eq!(status, 201, "{v}");
    Session {
        token: v["token"].as_str().unwrap().into(),
        workspace: v["workspace"].as_str().unwrap().into(),
    }
}

fn put(d: &Daemon, s: &Session, path: &str, data: &[u8]) -> (u16, Value) {
    let (status, _, body) = http(
        &d.agent(),
        "PUT",
        &format!("/v1/files/{path}"),
        Some(&s.token),
        Some(("application/octet-stream", data)),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(d: &Daemon, s: &Session, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http(
        &d.agent(),
        "GET",
        &format!("/v1/files/{path}"),
        Some(&s.token),
        None,
    );
    (status, body)
}

fn code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

fn list(d: &Daemon, s: &Session, dir: &str) -> Value {
    let (status, v) = d.json("GET", &format!("/v1/files?dir={dir}"), Some(&s.token), None);
    assert_eq!(status, 200, "{v}");
    v
}

fn names(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs a shell script in the session and asserts it succeeded; returns its stdout.
fn run(d: &Daemon, s: &Session, script: &str) -> String {
    let (status, events) = d.exec(&s.token, json!({"argv": ["/bin/sh", "-c", script]}));
    assert_eq!(status, 200, "{events:?}");
    let exit = exit_of(&events);
    assert_eq!(
        exit["code"],
        0,
        "{exit}\n{}",
        text(&output(&events, "stderr"))
    );
    text(&output(&events, "stdout"))
}

fn audit(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn upload_download_list_delete_round_trip_seen_by_the_sessions_jobs() {
    let d = start();
    let s = session(&d);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (status, v) = put(&d, &s, "src/data.bin", &data);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["size"], data.len());
    assert_eq!(v["sha256"], sha256_hex(&data));
    // The session's jobs see it, and what they write comes back out.
    let seen = run(
        &d,
        &s,
        "sha256sum src/data.bin | cut -d' ' -f1; echo made > src/made.txt",
    );
    assert_eq!(seen.trim(), sha256_hex(&data));
    let (status, body) = get(&d, &s, "src/made.txt");
    assert_eq!((status, text(&body)), (200, "made\n".to_string()));
    let (status, body) = get(&d, &s, "src/data.bin");
    assert_eq!(status, 200);
    assert!(body == data, "download differs");
    // A file the API wrote belongs to the workspace's owner, like one a job wrote.
    let ws = std::fs::metadata(&s.workspace).unwrap();
    for f in ["src", "src/data.bin", "src/made.txt"] {
        let m = std::fs::symlink_metadata(s.workspace.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (ws.uid(), ws.gid()), "{f}");
    }
    // An executable upload, by mode.
    let (status, _, _) = http(
        &d.agent(),
        "PUT",
        "/v1/files/run.sh?mode=755",
        Some(&s.token),
        Some(("application/octet-stream", b"#!/bin/sh\necho ran\n")),
    );
    assert_eq!(status, 201);
    assert_eq!(run(&d, &s, "./run.sh"), "ran\n");
    let mut listed = names(&list(&d, &s, "src"));
    listed.sort();
    assert_eq!(listed, ["data.bin", "made.txt"]);
    let root = list(&d, &s, "");
    assert!(names(&root).contains(&"run.sh".to_string()), "{root}");
    // Delete: the file, then the emptied directory; a non-empty one is refused.
    let (status, v) = d.json("DELETE", "/v1/files/src", Some(&s.token), None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_empty"))
    );
    for f in ["src/data.bin", "src/made.txt", "src"] {
        let (status, v) = d.json("DELETE", &format!("/v1/files/{f}"), Some(&s.token), None);
        assert_eq!(status, 200, "{f}: {v}");
    }
    assert_eq!(get(&d, &s, "src/data.bin").0, 404);
    // On the record: the upload with its hash, the read, the removals.
    let records = audit(&d);
    let write = records
        .iter()
        .find(|r| r["type"] == "file_write" && r["path"] == "src/data.bin")
        .expect("file_write recorded");
    assert_eq!(write["sha256"], sha256_hex(&data));
    assert_eq!(write["size"], data.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = audit(&d);
        let read = records
            .iter()
            .find(|r| r["type"] == "file_read" && r["path"] == "src/data.bin");
        if let Some(r) = read {
            assert_eq!(r["sha256"], sha256_hex(&data));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no file_read record");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        audit(&d)
            .iter()
            .any(|r| r["type"] == "file_delete" && r["path"] == "src" && r["kind"] == "dir")
    );
}

#[test]
fn dotdot_absolute_and_encoded_escapes_are_refused() {
    let d = start();
    let s = session(&d);
    assert_eq!(put(&d, &s, "ok.txt", b"fine").0, 201, "positive control");
    for bad in [
        "../escape",
        "%2e%2e/escape",
        "a/../../escape",
        "%2Fetc%2Fpasswd",
        "a//b",
        "dir/",
        "nul%00byte",
    ] {
        let (status, v) = put(&d, &s, bad, b"x");
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "bad_path", "{bad}: {v}");
    }
    // curl with --path-as-is sends `..` unnormalised; the daemon still refuses.
    let o = curl(&[
        "--path-as-is",
        "--unix-socket",
        &d.agent().display().to_string(),
        "-H",
        &format!("Authorization: Bearer {}", s.token),
        "http://x/v1/files/../../etc/passwd",
    ]);
    assert_eq!(code(&o.stdout), "bad_path", "{}", text(&o.stdout));
    let parent = s.workspace.parent().unwrap();
    assert!(!parent.join("escape").exists());
}

#[test]
fn symlinks_hardlinks_and_fifos_made_by_a_job_are_refused_beside_plain_files() {
    let d = start();
    let s = session(&d);
    // Made inside the sandbox, where the agent's commands run.
    run(
        &d,
        &s,
        "echo plain > plain && ln -s /etc/passwd link && ln -s /etc linkdir \
         && echo one > a && ln a b && mkfifo fifo",
    );
    assert_eq!(get(&d, &s, "plain"), (200, b"plain\n".to_vec()));
    let refused = |path: &str| {
        let (status, body) = get(&d, &s, path);
        (status, code(&body))
    };
    assert_eq!(refused("link"), (403, "symlink".into()));
    assert_eq!(refused("linkdir/passwd"), (403, "symlink".into()));
    assert_eq!(refused("a"), (403, "hard_link".into()));
    // Not opened for reading (it would block): refused at once.
    assert_eq!(refused("fifo"), (403, "not_regular".into()));
    // Writing through a symlinked directory is refused; writing onto a link replaces the link.
    let (status, v) = put(&d, &s, "linkdir/evil", b"x");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("symlink"))
    );
    assert_eq!(put(&d, &s, "link", b"mine\n").0, 201);
    assert_eq!(get(&d, &s, "link"), (200, b"mine\n".to_vec()));
    assert!(
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains("root"),
        "/etc/passwd untouched"
    );
    // The hard link's other name is replaced, not written through; then both read.
    assert_eq!(put(&d, &s, "b", b"two\n").0, 201);
    assert_eq!(get(&d, &s, "a"), (200, b"one\n".to_vec()));
    assert_eq!(get(&d, &s, "b"), (200, b"two\n".to_vec()));
    // Deleting a symlink removes the link only.
    run(&d, &s, "ln -s plain link2");
    assert_eq!(
        d.json("DELETE", "/v1/files/link2", Some(&s.token), None).0,
        200
    );
    assert_eq!(get(&d, &s, "plain").0, 200);
}

/// A chunked upload (no Content-Length) of `total` bytes; returns the status and body.
fn put_chunked(d: &Daemon, s: &Session, path: &str, total: usize) -> (u16, String) {
    let mut c = UnixStream::connect(d.agent()).unwrap();
    write!(
        c,
        "PUT /v1/files/{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.token
    )
    .unwrap();
    let chunk = vec![b'z'; 64 << 10];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        // The daemon may answer and close once the cap is passed.
        if write!(c, "{n:x}\r\n")
            .and_then(|_| c.write_all(&chunk[..n]))
            .and_then(|_| c.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        sent += n;
    }
    let _ = c.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let t = text(&raw);
    let status = t
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, t)
}

#[test]
fn uploads_are_capped_and_a_refused_one_leaves_nothing_behind() {
    let d = start();
    let s = session(&d);
    let at_cap = vec![b'a'; CAP];
    assert_eq!(put(&d, &s, "at-cap", &at_cap).0, 201, "positive control");
    let (status, v) = put(&d, &s, "declared", &vec![b'a'; CAP + 1]);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    let (status, t) = put_chunked(&d, &s, "chunked", 4 * CAP);
    assert_eq!(status, 413, "{t}");
    assert!(t.contains("too_large"), "{t}");
    let (status, t) = put_chunked(&d, &s, "chunked-ok", CAP / 2);
    assert_eq!(status, 201, "{t}");
    let all: Vec<String> = std::fs::read_dir(&s.workspace)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut all = all;
    all.sort();
    assert_eq!(
        all,
        ["at-cap", "chunked-ok"],
        "no partial or temporary files"
    );
}

#[test]
fn protected_and_hidden_paths_are_fenced_like_in_the_sandbox() {
    let d = start();
    let s = session(&d);
    run(
        &d,
        &s,
        "mkdir -p .git/hooks secret-dir && echo '[core]' > .git/config && echo k > secret.env",
    );
    let (status, v) = put(&d, &s, ".git/hooks/pre-commit", b"#!/bin/sh\nid\n");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("protected"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gitconfig"),
        "the refusal names the alternative: {v}"
    );
    assert_eq!(put(&d, &s, ".git/config", b"").0, 403);
    assert_eq!(
        d.json("DELETE", "/v1/files/.git/config", Some(&s.token), None)
            .0,
        403
    );
    assert_eq!(get(&d, &s, ".git/config"), (200, b"[core]\n".to_vec()));
    assert_eq!(
        put(&d, &s, "description", b"d").0,
        201,
        "outside the git dir"
    );
    // Nothing in a git directory is written by the API, at any depth.
    run(&d, &s, "mkdir -p sub/.git");
    for path in [".git/description", "sub/.git/config", ".git"] {
        let (status, v) = put(&d, &s, path, b"x");
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("protected")),
            "{path}: {v}"
        );
    }
    let (status, body) = get(&d, &s, "secret.env");
    assert_eq!((status, code(&body)), (403, "hidden".into()));
    assert_eq!(put(&d, &s, "secret-dir/x", b"").0, 403);
    let root = names(&list(&d, &s, ""));
    assert!(!root.contains(&"secret.env".to_string()), "{root:?}");
    assert!(root.contains(&".git".to_string()), "{root:?}");
}

#[test]
fn a_session_reaches_only_its_own_workspace_and_only_with_its_token() {
    let d = start();
    let a = session(&d);
    let b = session(&d);
    assert_eq!(put(&d, &a, "mine.txt", b"a's").0, 201);
    assert_eq!(get(&d, &a, "mine.txt"), (200, b"a's".to_vec()));
    assert_eq!(
        get(&d, &b, "mine.txt").0,
        404,
        "b's workspace has no such file"
    );
    assert!(!b.workspace.join("mine.txt").exists());
    let (status, _, _) = http(&d.agent(), "GET", "/v1/files/mine.txt", None, None);
    assert_eq!(status, 401);
    let forged = Session {
        token: format!("{}x", a.token),
        workspace: a.workspace.clone(),
    };
    assert_eq!(get(&d, &forged, "mine.txt").0, 401);
    // Listings are bounded.
    for i in 0..60 {
        assert_eq!(put(&d, &b, &format!("many/f{i:02}"), b"").0, 201);
    }
    let l = list(&d, &b, "many");
    assert_eq!(l["entries"].as_array().unwrap().len(), 50);
    assert_eq!(l["truncated"], true);
}

/// A child session of `parent` with `{"workspace": access}`; returns it and the reply.
fn child(d: &Daemon, parent: &Session, access: &str) -> (Session, Value) {
    let (status, v) = d.json(
        "POST",
        "/v1/sessions",
        Some(&parent.token),
        Some(&json!({"workspace": access})),
    );
    assert_eq!(status, 201, "{v}");
    let s = Session {
        token: v["token"].as_str().unwrap().into(),
        workspace: v["workspace"].as_str().unwrap().into(),
    };
    (s, v)
}

const TRY_WRITE: &str =
    "cat shared.txt; if echo x > written.txt 2>/dev/null; then echo WROTE; else echo REFUSED; fi";

#[test]
fn a_child_gets_its_parents_workspace_read_write_or_read_only_when_it_asks() {
    let d = start();
    let parent = session(&d);
    assert_eq!(put(&d, &parent, "shared.txt", b"from parent\n").0, 201);

    // Read-write: the same directory, both ways, jobs and the API alike.
    let (rw, v) = child(&d, &parent, "parent_rw");
    assert_eq!(v["workspace_access"], "parent_rw");
    assert_eq!(rw.workspace, parent.workspace);
    assert_eq!(run(&d, &rw, TRY_WRITE), "from parent\nWROTE\n");
    assert_eq!(put(&d, &rw, "up.txt", b"child's").0, 201);
    assert_eq!(get(&d, &parent, "up.txt"), (200, b"child's".to_vec()));
    assert_eq!(get(&d, &parent, "written.txt"), (200, b"x\n".to_vec()));

    // Read-only: reads work, every write is refused, by the mount and by the API.
    let (ro, v) = child(&d, &parent, "parent_ro");
    assert_eq!(v["workspace_access"], "parent_ro");
    assert_eq!(
        run(&d, &ro, "rm -f written.txt 2>/dev/null; ls written.txt"),
        "written.txt\n"
    );
    assert_eq!(run(&d, &ro, TRY_WRITE), "from parent\nREFUSED\n");
    assert_eq!(get(&d, &ro, "shared.txt"), (200, b"from parent\n".to_vec()));
    let (status, v) = put(&d, &ro, "evil.txt", b"x");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("read_only"))
    );
    let (status, _) = d.json("DELETE", "/v1/files/shared.txt", Some(&ro.token), None);
    assert_eq!(status, 403);
    // Its own children cannot widen it.
    let (grand, v) = child(&d, &ro, "parent_rw");
    assert_eq!(v["workspace_access"], "parent_ro");
    assert_eq!(run(&d, &grand, TRY_WRITE), "from parent\nREFUSED\n");

    // The default is a workspace of its own.
    let (own, v) = child(&d, &parent, "own");
    assert_eq!(v["workspace_access"], "own");
    assert_ne!(own.workspace, parent.workspace);
    assert_eq!(get(&d, &own, "shared.txt").0, 404);

    // Ending a sharing child leaves the parent's workspace in place.
    let id = rw.token.split('.').next().unwrap().to_string();
    let (status, v) = d.json(
        "DELETE",
        &format!("/v1/sessions/{id}"),
        Some(&rw.token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(get(&d, &parent, "shared.txt").0, 200);
    assert!(parent.workspace.join("up.txt").exists());

    // Sharing needs a parent.
    let (status, v) = d.json(
        "POST",
        "/v1/sessions",
        None,
        Some(&json!({"workspace": "parent_rw"})),
    );
    assert_eq!(status, 400, "{v}");
}

/// `curl` over the agent socket as another user (`setpriv`; the test runs as root).
fn curl_as(uid: u32, d: &Daemon, args: &[&str]) -> std::process::Output {
    let ids = uid.to_string();
    std::process::Command::new("setpriv")
        .args(["--reuid", &ids, "--regid", &ids, "--clear-groups", "--"])
        .args(["curl", "-sS", "--max-time", "60", "--unix-socket"])
        .arg(d.agent())
        .args(args)
        .output()
        .unwrap()
}

/// A host command as another user; true when it succeeded.
fn host_as(uid: u32, argv: &[&str]) -> bool {
    let ids = uid.to_string();
    std::process::Command::new("setpriv")
        .args(["--reuid", &ids, "--regid", &ids, "--clear-groups", "--"])
        .args(argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_agents_user_reads_its_workspace_and_another_uid_cannot() {
    if !root_only("the_agents_user_reads_its_workspace_and_another_uid_cannot") {
        return;
    }
    const AGENT: u32 = 65534; // nobody, primary group nogroup (65534)
    const OTHER: u32 = 65533;
    let d = Daemon::start_with(&format!("[allow]\nuids = [{AGENT}]\n"), "");
    // The test's temp dir is root's 0700, the socket root's 0660: let the agent reach them
    // (what `[sockets] agent_group` does in a deployment).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(d.agent(), None, Some(AGENT)).unwrap();
    let o = curl_as(AGENT, &d, &["-X", "POST", "http://x/v1/sessions"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let token = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{v} {}", d.log()));
    let ws = PathBuf::from(v["workspace"].as_str().unwrap());
    let auth = format!("Authorization: Bearer {token}");
    let body =
        json!({"command": "mkdir -p out && echo hi > out/a.txt && echo top > b.txt && id -G"});
    let o = curl_as(
        AGENT,
        &d,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            "http://x/v1/exec",
        ],
    );
    let events: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exit_of(&events)["code"], 0, "{events:?}");
    // The sandbox runs with its own gid alone, never the agent's group.
    let groups = text(&output(&events, "stdout"));
    assert!(
        !groups.split_whitespace().any(|g| g == AGENT.to_string()),
        "the agent's group is not the sandbox's: {groups}"
    );
    // The workspace: the sandbox uid's, the agent's group, group read-only, setgid.
    let m = std::fs::metadata(&ws).unwrap();
    assert_ne!(m.uid(), AGENT);
    assert_ne!(m.uid(), 0);
    assert_eq!((m.gid(), m.mode() & 0o7777), (AGENT, 0o2750));
    let f = std::fs::metadata(ws.join("out/a.txt")).unwrap();
    assert_eq!((f.gid(), f.mode() & 0o777), (AGENT, 0o644), "made by a job");
    // The agent's user reads what its jobs wrote; another uid cannot even list the directory.
    let a = ws.join("out/a.txt").display().to_string();
    let b = ws.join("b.txt").display().to_string();
    let w = ws.display().to_string();
    assert!(host_as(AGENT, &["cat", &a]), "the agent reads out/a.txt");
    assert!(host_as(AGENT, &["ls", &w]), "the agent lists its workspace");
    assert!(!host_as(OTHER, &["cat", &b]), "another uid cannot read");
    assert!(!host_as(OTHER, &["ls", &w]), "another uid cannot list");
    // Reading is not writing: the group has no write bit; the API is the agent's write path.
    let x = ws.join("direct.txt").display().to_string();
    assert!(!host_as(AGENT, &["touch", &x]));
    let o = curl_as(
        AGENT,
        &d,
        &[
            "-H",
            &auth,
            "-T",
            "-",
            "http://x/v1/files/by-api.txt",
            "-w",
            "%{http_code}",
        ],
    );
    assert!(text(&o.stdout).ends_with("201"), "{}", text(&o.stdout));
    let f = std::fs::metadata(ws.join("by-api.txt")).unwrap();
    assert_eq!(
        (f.uid(), f.gid()),
        (m.uid(), AGENT),
        "uploaded like a job's file"
    );
    assert!(host_as(
        AGENT,
        &["cat", &ws.join("by-api.txt").display().to_string()]
    ));
}
