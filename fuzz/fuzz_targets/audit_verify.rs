//! `audit verify` on mutated logs. Two modes, chosen by the first byte:
//!
//! - even: the rest is the log itself (split into rotated files at each `\n--8<--\n`): any
//!   bytes must give a report or a read error, never a panic;
//! - odd: the rest is a list of edits applied to a valid log written by the real writer
//!   (`AuditLog::append`): 5-byte `(offset u32 LE, byte)` overwrites, or, when the rest is
//!   exactly 8 bytes, the deletion of one byte range `(start u32 LE, end u32 LE)`. Any change
//!   the chain can detect must be reported as a break. What it cannot detect (docs/audit.md):
//!   the last line rewritten, whole lines removed from the end or the start.
//!
//! Run: `cargo xtask fuzz --target audit_verify` (docs/fuzzing.md).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use execbox::audit::{Approval, AuditLog, Event, RotationPolicy, verify};
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch::dir("audit");
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

/// A valid log of a few records of different shapes, as the daemon writes it.
fn original() -> &'static Vec<u8> {
    static LOG: OnceLock<Vec<u8>> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = dir().join("original.jsonl");
        let mut log = AuditLog::open(&path, RotationPolicy::default()).expect("open");
        let approval = Approval {
            approval_id: "a_1".into(),
            job: "j_1".into(),
            operator_uid: Some(0),
            scope: Some("once".into()),
            reason: Some("ok \u{1b}[31m".into()),
        };
        for e in [
            Event::DaemonStart {
                config_sha256: "00".repeat(32),
                version: "0.1.0".into(),
            },
            Event::SessionCreate {
                session: "s_1".into(),
                parent: None,
                profile: "default".into(),
                peer_uid: 1000,
            },
            Event::ExecRequest {
                session: "s_1".into(),
                job: "j_1".into(),
                command: Some("echo \"hi\" | tr a-z A-Z".into()),
                argv: None,
                parse_summary: serde_json::json!({"commands": 2}),
                cwd: Some("/w".into()),
                env: Some(serde_json::json!({"vars": {"PATH": "/usr/bin"}})),
                stdin: Some(serde_json::Value::Null),
                terms: None,
            },
            Event::ApprovalGranted(approval),
            Event::JobExit {
                job: "j_1".into(),
                code: Some(0),
                reason: "exited".into(),
                usage: serde_json::Value::Null,
                protection: None,
                network: None,
            },
            Event::DaemonStop {},
        ] {
            log.append(&e).expect("append");
        }
        std::fs::read(&path).expect("read back")
    })
}

/// Offsets where a line starts (0 included, the end of the data included).
fn line_starts(log: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            log.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

fn write_and_verify(parts: &[&[u8]]) -> execbox::audit::Report {
    let files: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = dir().join(format!("part{i}.jsonl"));
            std::fs::write(&f, p).expect("write");
            f
        })
        .collect();
    verify(&files).expect("the files are readable")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut rest = rest;
        const CUT: &[u8] = b"\n--8<--\n";
        while let Some(i) = rest.windows(CUT.len()).position(|w| w == CUT) {
            parts.push(&rest[..=i]);
            rest = &rest[i + CUT.len()..];
        }
        parts.push(rest);
        parts.truncate(4);
        let report = write_and_verify(&parts);
        if report.broken.is_none() {
            // An unbroken report vouches for every line it read.
            let lines = parts
                .iter()
                .map(|p| p.iter().filter(|b| **b == b'\n').count())
                .sum::<usize>();
            assert_eq!(
                report.records as usize, lines,
                "unbroken but records != lines"
            );
        }
        return;
    }

    let orig = original();
    let starts = line_starts(orig);
    let last_line = starts[starts.len() - 2];
    let (mutated, detectable) = if rest.len() == 8 {
        let a = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize % (orig.len() + 1);
        let b = u32::from_le_bytes(rest[4..].try_into().unwrap()) as usize % (orig.len() + 1);
        let (start, end) = (a.min(b), a.max(b));
        let mut m = orig[..start].to_vec();
        m.extend_from_slice(&orig[end..]);
        // Whole first lines removed look like rotated-away records; a deletion reaching into
        // the last line only leaves a shorter, rewritten last line.
        let whole_prefix = start == 0 && starts.contains(&end);
        (m, start < end && end <= last_line && !whole_prefix)
    } else {
        let mut m = orig.clone();
        let mut first_change = None;
        for e in rest.chunks_exact(5) {
            let off = u32::from_le_bytes(e[..4].try_into().unwrap()) as usize % orig.len();
            m[off] = e[4];
        }
        for (i, (a, b)) in orig.iter().zip(&m).enumerate() {
            if a != b {
                first_change = Some(i);
                break;
            }
        }
        // The newline ending the second-to-last line belongs to that line.
        let detectable = first_change.is_some_and(|i| i < last_line);
        (m, detectable)
    };
    let report = write_and_verify(&[&mutated]);
    if detectable {
        assert!(
            report.broken.is_some(),
            "a change before the last line went undetected: {:?}",
            String::from_utf8_lossy(&mutated)
        );
    }
});
