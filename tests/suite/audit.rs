//! The audit log end to end: records written through the library, checked and shown by the
//! built `execbox audit` binary. Each kind of tampering is a pair with the untouched log that
//! verifies; the full-disk case runs in the root pass (it mounts a tiny tmpfs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use execbox::audit::{AuditError, AuditLog, Event, RotationPolicy};

use super::harness::{EXECBOX, TinyTmpfs, Ws, root_only, text};

fn exec_request(n: usize, command: &str) -> Event {
    Event::ExecRequest {
        session: "s1".into(),
        job: format!("job-{n}"),
        command: Some(command.into()),
        argv: None,
        parse_summary: serde_json::json!({"commands": [command]}),
        cwd: None,
        env: None,
        stdin: None,
        terms: None,
    }
}

/// Writes `n` records to `path` and returns its lines.
fn write_log(path: &Path, n: usize, policy: RotationPolicy) -> Vec<String> {
    let mut log = AuditLog::open(path, policy).unwrap();
    for i in 0..n {
        log.append(&exec_request(i, &format!("echo record {i}")))
            .unwrap();
    }
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn audit(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(&*EXECBOX)
        .arg("audit")
        .args(args)
        .args(files)
        .output()
        .unwrap()
}

/// A 10-record log, tampered with by `tamper`, verified by the binary: exit 1 and stderr.
fn tampered(tamper: impl FnOnce(&mut Vec<String>)) -> String {
    let ws = Ws::new();
    let p = ws.path().join("audit.jsonl");
    let mut lines = write_log(&p, 10, RotationPolicy::default());
    let clean = audit(&["verify"], std::slice::from_ref(&p));
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    tamper(&mut lines);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let o = audit(&["verify"], &[p]);
    assert_eq!(o.status.code(), Some(1), "stdout: {}", text(&o.stdout));
    text(&o.stderr)
}

#[track_caller]
fn assert_break(stderr: &str, seq: u64, kind: &str) {
    let want = format!("chain broken at seq {seq} ");
    assert!(
        stderr.contains(&want) && stderr.contains(&format!("): {kind}: ")),
        "wanted seq {seq} {kind}, got: {stderr}"
    );
}

#[test]
fn audit_a_written_log_verifies() {
    let ws = Ws::new();
    let p = ws.path().join("audit.jsonl");
    write_log(&p, 20, RotationPolicy::default());
    let o = audit(&["verify", "--log"], std::slice::from_ref(&p));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("ok: 20 records (seq 1..=20)"));
    let o = audit(&["verify", "--json"], &[p]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["records"].as_u64(), r["broken"].is_null()),
        (Some(20), true)
    );
}

#[test]
fn audit_verify_catches_an_edited_byte() {
    let err = tampered(|l| l[4] = l[4].replacen("record 4", "record 5", 1));
    assert_break(&err, 5, "edited");
}

#[test]
fn audit_verify_catches_a_deleted_line() {
    let err = tampered(|l| {
        l.remove(6);
    });
    assert_break(&err, 7, "deleted");
}

#[test]
fn audit_verify_catches_an_inserted_line() {
    let err = tampered(|l| {
        let copy = l[1].clone();
        l.insert(5, copy);
    });
    assert_break(&err, 6, "inserted");
}

#[test]
fn audit_verify_catches_two_swapped_lines() {
    let err = tampered(|l| l.swap(2, 3));
    assert_break(&err, 3, "reordered");
}

#[test]
fn audit_verify_catches_a_truncation_in_the_middle_of_a_line() {
    let ws = Ws::new();
    let p = ws.path().join("audit.jsonl");
    write_log(&p, 10, RotationPolicy::default());
    let bytes = std::fs::read(&p).unwrap();
    // Cut halfway through record 8.
    let start8: usize = bytes
        .split_inclusive(|&b| b == b'\n')
        .take(7)
        .map(<[u8]>::len)
        .sum();
    std::fs::write(&p, &bytes[..start8 + 30]).unwrap();
    let o = audit(&["verify"], &[p]);
    assert_eq!(o.status.code(), Some(1));
    assert_break(&text(&o.stderr), 8, "truncated line");
}

fn rotating() -> RotationPolicy {
    RotationPolicy {
        max_bytes: 4096,
        keep: 5,
        ..RotationPolicy::default()
    }
}

fn first_seq(path: &Path) -> u64 {
    let t = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(t.lines().next().unwrap()).unwrap();
    v["seq"].as_u64().unwrap()
}

/// Enough records of ~250 bytes to fill 4 KiB files more than three times over.
fn rotated_log(ws: &Ws) -> PathBuf {
    let p = ws.path().join("audit.jsonl");
    write_log(&p, 60, rotating());
    for n in 1..=3 {
        assert!(
            ws.path().join(format!("audit.jsonl.{n}")).exists(),
            "rotation {n} did not happen"
        );
    }
    p
}

#[test]
fn audit_chain_survives_three_rotations() {
    let ws = Ws::new();
    let p = rotated_log(&ws);
    let o = audit(&["verify", "--log"], std::slice::from_ref(&p));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok: 60 records (seq 1..=60)"));
    // The same files named explicitly, oldest first.
    let mut files: Vec<PathBuf> = (1..=3)
        .rev()
        .map(|n| ws.path().join(format!("audit.jsonl.{n}")))
        .collect();
    files.push(p.clone());
    assert_eq!(audit(&["verify"], &files).status.code(), Some(0));
    // In the wrong order they do not verify.
    files.swap(0, 1);
    assert_eq!(audit(&["verify"], &files).status.code(), Some(1));
}

#[test]
fn audit_verify_catches_a_removed_rotated_file_in_the_middle() {
    let ws = Ws::new();
    let p = rotated_log(&ws);
    let middle = ws.path().join("audit.jsonl.2");
    let missing = first_seq(&middle);
    std::fs::remove_file(&middle).unwrap();
    let o = audit(&["verify", "--log"], &[p]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_break(&err, missing, "deleted");
    assert!(err.contains("audit.jsonl.1:1"), "{err}");
}

#[test]
fn audit_verify_exits_125_when_a_file_cannot_be_read() {
    let ws = Ws::new();
    let o = audit(&["verify"], &[ws.path().join("absent.jsonl")]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("absent.jsonl"));
}

#[test]
fn audit_tail_escapes_control_characters() {
    let ws = Ws::new();
    let p = ws.path().join("audit.jsonl");
    let mut log = AuditLog::open(&p, RotationPolicy::default()).unwrap();
    let evil = "echo \x1b]0;pwned\x07\x1b[2J\rfake\u{9b}31m";
    log.append(&exec_request(1, evil)).unwrap();
    // Positive control: the stored record really holds the escape sequence.
    let stored: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&p).unwrap().trim_end()).unwrap();
    assert_eq!(stored["command"], evil);
    for args in [&["tail"][..], &["tail", "--json"][..]] {
        let o = audit(args, std::slice::from_ref(&p));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed a raw control character: {out:?}"
        );
    }
    let out = text(&audit(&["tail"], &[p]).stdout);
    assert!(
        out.contains(r"\x1b]0;pwned\x07\x1b[2J\rfake\u{9b}31m"),
        "{out}"
    );
}

#[test]
fn audit_full_disk_fails_the_append_cleanly_and_the_chain_continues_after() {
    if !root_only("audit_full_disk_fails_the_append_cleanly_and_the_chain_continues_after") {
        return;
    }
    let ws = Ws::new();
    let mnt = ws.path().join("tmpfs");
    let _mount = TinyTmpfs::mount(&mnt);
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();

    let p = mnt.join("audit.jsonl");
    let mut log = AuditLog::open(&p, RotationPolicy::default()).unwrap();
    let long = "x".repeat(700);
    let mut last_ok = 0;
    let err = loop {
        match log.append(&exec_request(last_ok as usize, &long)) {
            Ok(seq) => last_ok = seq,
            Err(e) => break e,
        }
        assert!(last_ok < 1000, "the 64k tmpfs never filled up");
    };
    assert!(last_ok > 0, "nothing fit before the disk was full");
    match &err {
        AuditError::Write { path, source } => {
            assert_eq!(path, &p);
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{source}");
        }
        other => panic!("expected a write error, got {other}"),
    }
    // Nothing half-written: whole lines only, exactly the records that were acknowledged.
    let stored = std::fs::read(&p).unwrap();
    assert_eq!(stored.last(), Some(&b'\n'));
    assert_eq!(
        stored.iter().filter(|&&b| b == b'\n').count() as u64,
        last_ok
    );
    // Still full: a retry fails the same way and still leaves no partial line.
    assert!(log.append(&exec_request(0, &long)).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), stored);

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        log.append(&exec_request(0, &long)).unwrap(),
        last_ok + 1,
        "the chain continues where it stopped"
    );
    drop(log);
    let o = audit(&["verify"], &[p]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("ok: {} records", last_ok + 1)));
}

/// A chain built here from the definition in docs/audit.md alone (not with the writer) must
/// verify: the documented format and the code agree.
#[test]
fn audit_a_log_written_to_the_documented_definition_verifies() {
    use sha2::{Digest, Sha256};
    let ws = Ws::new();
    let p = ws.path().join("audit.jsonl");
    let mut prev = "0".repeat(64);
    let mut log = String::new();
    for seq in 1..=5 {
        let line = format!(
            r#"{{"seq":{seq},"ts":"2025-01-31T12:00:00.123Z","type":"alert","prev":"{prev}","kind":"doc","detail":"by hand"}}"#
        );
        prev = Sha256::digest(line.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        log.push_str(&line);
        log.push('\n');
    }
    std::fs::write(&p, &log).unwrap();
    let o = audit(&["verify"], std::slice::from_ref(&p));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("sha256 {prev}")));
}
