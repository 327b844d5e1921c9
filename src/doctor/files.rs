//! File permissions: the state dir (0700, or 0711 when the workspaces live inside it and the
//! per-session sandbox uids must traverse it), the config (0600 or 0640), the policy files,
//! the sockets (the configured agent mode, operator 0600) and the audit log (0600), plus the
//! audit log's contents.
//!
//! Every check takes its paths and the expected owner as arguments, so tests run them on a
//! temp dir. With `--fix` a check may `chmod` to the expected mode or create a missing
//! directory with it, and records the change; it never deletes, never `chown`s someone else's
//! file, and never loosens a mode that is stricter than needed except where a missing `x` bit
//! breaks sessions.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Changes, Check, Context, Status};
use crate::audit::BreakKind;
use crate::config::Config;

/// Group or other may write: anyone in them could change what the daemon trusts.
const GROUP_OTHER_WRITE: u32 = 0o022;

pub fn checks(cx: &Context, changes: &mut Changes) -> Vec<Check> {
    let fix = cx.fixing();
    let mut out = Vec::new();
    if let Some(path) = cx.config_path.filter(|p| p.exists()) {
        out.push(config_file_check(path, cx.euid, fix, changes));
    }
    let Some(c) = cx.loaded() else {
        return out;
    };
    out.push(state_dir_check(
        &c.state_dir,
        state_dir_mode(c),
        cx.euid,
        fix,
        changes,
    ));
    out.push(policies_check(c, fix, changes));
    out.push(socket_check(
        "files.agent_socket",
        &c.agent_socket,
        c.agent_mode,
        c.agent_group,
        fix,
        changes,
    ));
    out.push(socket_check(
        "files.operator_socket",
        &c.operator_socket,
        0o600,
        None,
        fix,
        changes,
    ));
    out.push(audit_log_check(&c.audit.path, fix, changes));
    out.push(audit_chain_check(&c.audit.path));
    out
}

/// The state dir's mode: 0700, or 0711 when the workspace root is inside it (a root daemon's
/// per-session sandbox uids must traverse it to reach their workspaces; `docs/security.md`).
pub fn state_dir_mode(c: &Config) -> u32 {
    if c.workspace_root.starts_with(&c.state_dir) {
        0o711
    } else {
        0o700
    }
}

fn mode_of(m: &std::fs::Metadata) -> u32 {
    m.permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32, was: u32, changes: &mut Changes) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    changes.push(format!(
        "chmod {mode:04o} {} (was {was:04o})",
        path.display()
    ));
    Ok(())
}

/// With `fix`, sets `path` to `target` when it differs; returns the mode now in place and a
/// note for the evidence (what was fixed, or why it could not be).
fn repair_mode(
    path: &Path,
    mode: u32,
    target: u32,
    fix: bool,
    changes: &mut Changes,
) -> (u32, String) {
    if mode == target || !fix {
        return (mode, String::new());
    }
    match chmod(path, target, mode, changes) {
        Ok(()) => (target, format!(" (fixed: was {mode:04o})")),
        Err(e) => (mode, format!(" (chmod failed: {e})")),
    }
}

fn mkdir(path: &Path, mode: u32, changes: &mut Changes) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    // The umask may have taken bits away: set exactly the mode asked for.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    changes.push(format!("mkdir -m {mode:04o} {}", path.display()));
    Ok(())
}

/// Judges `mode` against the mode a path should have: exactly `expected` is ok, group/other
/// write is a failure, anything else a warning.
pub fn judge(mode: u32, expected: u32) -> Status {
    if mode == expected {
        Status::Ok
    } else if mode & GROUP_OTHER_WRITE & !expected != 0 {
        Status::Fail
    } else {
        Status::Warn
    }
}

fn verdict(id: &'static str, title: &str, status: Status, evidence: String, fix: String) -> Check {
    match status {
        Status::Ok => Check::ok(id, title, evidence),
        Status::Info => Check::info(id, title, evidence, fix),
        Status::Warn => Check::warn(id, title, evidence, fix),
        Status::Fail => Check::fail(id, title, evidence, fix),
    }
}

pub fn state_dir_check(
    path: &Path,
    expected: u32,
    euid: u32,
    fix: bool,
    changes: &mut Changes,
) -> Check {
    const ID: &str = "files.state_dir";
    let title = format!("state dir mode {expected:04o}");
    let want = format!("chmod {expected:04o} {}", path.display());
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) if fix => {
            return match mkdir(path, expected, changes) {
                Ok(()) => Check::ok(ID, title, format!("{} created", path.display())),
                Err(e) => Check::fail(
                    ID,
                    title,
                    format!("cannot create {}: {e}", path.display()),
                    "create it as the daemon's user",
                ),
            };
        }
        Err(_) => {
            return Check::warn(
                ID,
                title,
                format!(
                    "{} does not exist yet (the daemon creates it)",
                    path.display()
                ),
                format!(
                    "execbox doctor --fix (mkdir -m {expected:04o} {})",
                    path.display()
                ),
            );
        }
    };
    if !meta.is_dir() {
        return Check::fail(
            ID,
            title,
            format!("{} is not a directory", path.display()),
            "move it away or point paths.state_dir elsewhere",
        );
    }
    let (mode, note) = repair_mode(path, mode_of(&meta), expected, fix, changes);
    let mut status = judge(mode, expected);
    let mut evidence = format!("{} is {mode:04o}{note}", path.display());
    if expected & 0o011 != 0 && mode & 0o011 != 0o011 {
        evidence.push_str("; sandbox uids cannot reach their workspaces inside it");
        status = status.max(Status::Warn);
    }
    if meta.uid() != euid {
        evidence.push_str(&format!(
            "; owned by uid {}, the daemon runs as {euid}",
            meta.uid()
        ));
        status = status.max(Status::Warn);
        return verdict(
            ID,
            &title,
            status,
            evidence,
            format!("chown {euid} {} && {want}", path.display()),
        );
    }
    verdict(ID, &title, status, evidence, want)
}

/// The config: 0600 or 0640, owned by root or the daemon's user (whoever else owns it can
/// rewrite the allowlist).
pub fn config_file_check(path: &Path, euid: u32, fix: bool, changes: &mut Changes) -> Check {
    const ID: &str = "files.config";
    const TITLE: &str = "config mode 0600 or 0640";
    let Ok(meta) = std::fs::metadata(path) else {
        return Check::fail(
            ID,
            TITLE,
            format!("cannot stat {}", path.display()),
            "check the path",
        );
    };
    let allowed = mode_of(&meta) & 0o640;
    let (mode, note) = repair_mode(path, mode_of(&meta), allowed, fix, changes);
    let status = if mode & !0o640 == 0 {
        Status::Ok
    } else if mode & GROUP_OTHER_WRITE != 0 {
        Status::Fail
    } else {
        Status::Warn
    };
    let owner = meta.uid();
    let evidence = format!("{} is {mode:04o}, owner uid {owner}{note}", path.display());
    if owner != 0 && owner != euid {
        return Check::fail(
            ID,
            TITLE,
            format!("{evidence}: that user can rewrite the allowlist"),
            format!(
                "chown root {} && chmod 0640 {}",
                path.display(),
                path.display()
            ),
        );
    }
    verdict(
        ID,
        TITLE,
        status,
        evidence,
        format!("chmod {allowed:04o} {}", path.display()),
    )
}

/// Policy files writable by group or others let those users allow any command.
fn policies_check(c: &Config, fix: bool, changes: &mut Changes) -> Check {
    const ID: &str = "files.policies";
    const TITLE: &str = "policy files not writable by others";
    let mut bad = Vec::new();
    let mut seen = 0;
    for p in c.profiles.values() {
        let path = Path::new(&p.source);
        let Ok(meta) = std::fs::metadata(path) else {
            continue; // the embedded default
        };
        seen += 1;
        let mode = mode_of(&meta);
        if mode & GROUP_OTHER_WRITE == 0 {
            continue;
        }
        let safe = mode & !GROUP_OTHER_WRITE;
        if fix && chmod(path, safe, mode, changes).is_ok() {
            continue;
        }
        bad.push(format!("{} ({mode:04o})", path.display()));
    }
    if bad.is_empty() {
        Check::ok(
            ID,
            TITLE,
            format!("{seen} policy file(s) checked (the embedded default has no file)"),
        )
    } else {
        Check::fail(
            ID,
            TITLE,
            format!("writable by group or others: {}", bad.join(", ")),
            "chmod go-w on each (execbox doctor --fix does it)",
        )
    }
}

pub fn socket_check(
    id: &'static str,
    path: &Path,
    expected: u32,
    group: Option<u32>,
    fix: bool,
    changes: &mut Changes,
) -> Check {
    let title = format!("socket mode {expected:04o}");
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Check::ok(
            id,
            title,
            format!("{} not present (daemon not running)", path.display()),
        );
    };
    let (mode, note) = repair_mode(path, mode_of(&meta), expected, fix, changes);
    let mut status = judge(mode, expected);
    let mut evidence = format!(
        "{} is {mode:04o}, group {}{note}",
        path.display(),
        meta.gid()
    );
    if let Some(g) = group
        && meta.gid() != g
    {
        evidence.push_str(&format!(" (configured group {g})"));
        status = status.max(Status::Warn);
    }
    verdict(
        id,
        &title,
        status,
        evidence,
        format!(
            "chmod {expected:04o} {}{}",
            path.display(),
            group
                .map(|g| format!(" && chgrp {g} {}", path.display()))
                .unwrap_or_default()
        ),
    )
}

/// The audit log 0600 in an existing directory no one else may write.
pub fn audit_log_check(path: &Path, fix: bool, changes: &mut Changes) -> Check {
    const ID: &str = "files.audit_log";
    const TITLE: &str = "audit log mode 0600";
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        if fix {
            return match mkdir(dir, 0o700, changes) {
                Ok(()) => Check::ok(ID, TITLE, format!("{} created", dir.display())),
                Err(e) => Check::fail(
                    ID,
                    TITLE,
                    format!("cannot create {}: {e}", dir.display()),
                    "create it as the daemon's user, mode 0700",
                ),
            };
        }
        return Check::warn(
            ID,
            TITLE,
            format!("directory {} does not exist", dir.display()),
            format!("execbox doctor --fix (mkdir -m 0700 {})", dir.display()),
        );
    }
    if let Ok(m) = std::fs::metadata(dir)
        && mode_of(&m) & GROUP_OTHER_WRITE != 0
    {
        return Check::fail(
            ID,
            TITLE,
            format!(
                "{} is {:04o}: others can replace the log",
                dir.display(),
                mode_of(&m)
            ),
            format!("chmod go-w {}", dir.display()),
        );
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Check::ok(
            ID,
            TITLE,
            format!("{} not written yet; its directory is safe", path.display()),
        );
    };
    let (mode, note) = repair_mode(path, mode_of(&meta), 0o600, fix, changes);
    let status = if mode & 0o077 == 0 {
        Status::Ok
    } else {
        judge(mode, 0o600)
    };
    verdict(
        ID,
        TITLE,
        status,
        format!("{} is {mode:04o}{note}", path.display()),
        format!("chmod 0600 {}", path.display()),
    )
}

/// The audit log's hash chain, across its rotated files (`execbox audit verify`).
pub fn audit_chain_check(path: &Path) -> Check {
    const ID: &str = "audit.chain";
    const TITLE: &str = "audit log integrity";
    if !path.exists() {
        return Check::ok(ID, TITLE, format!("{} not written yet", path.display()));
    }
    let report = crate::audit::log_files(path).and_then(|files| crate::audit::verify(&files));
    match report {
        Err(e) => Check::fail(
            ID,
            TITLE,
            format!("cannot verify {}: {e}", path.display()),
            "run doctor as the daemon's user (or root)",
        ),
        Ok(r) => match &r.broken {
            // An incomplete last line of the live file is what a crash in the middle of an
            // append leaves (nothing acted on that record); the writer cuts it off at the next
            // open and records an alert, so it must not keep the daemon from starting.
            Some(b) if b.kind == BreakKind::Truncated && b.file == path => Check::warn(
                ID,
                TITLE,
                format!(
                    "{} record(s) link correctly; the last line (seq {}) is incomplete, as a crash during an append leaves it",
                    r.records, b.seq
                ),
                "none needed: the daemon cuts it off at start and appends a `torn_record_removed` alert",
            ),
            Some(b) => Check::fail(
                ID,
                TITLE,
                format!(
                    "chain broken at seq {} ({}, {} line {}): {}",
                    b.seq,
                    b.kind.as_str(),
                    b.file.display(),
                    b.line,
                    b.detail
                ),
                format!(
                    "keep a copy of the log for investigation, then move {} aside so a new chain starts",
                    path.display()
                ),
            ),
            None => Check::ok(
                ID,
                TITLE,
                format!(
                    "{} record(s) link correctly (last seq {:?})",
                    r.records, r.last_seq
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn me() -> u32 {
        crate::sandbox::sys::geteuid()
    }

    #[test]
    fn judge_reads_modes_like_an_operator() {
        assert_eq!(judge(0o700, 0o700), Status::Ok);
        assert_eq!(judge(0o755, 0o700), Status::Warn);
        assert_eq!(judge(0o777, 0o700), Status::Fail);
        assert_eq!(judge(0o660, 0o660), Status::Ok);
        assert_eq!(judge(0o666, 0o660), Status::Fail);
    }

    #[test]
    fn state_dir_0755_is_a_warning_and_fix_makes_it_0700() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        set_mode(&state, 0o755);
        let mut changes = Changes::default();
        let c = state_dir_check(&state, 0o700, me(), false, &mut changes);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(changes.0.is_empty());

        let c = state_dir_check(&state, 0o700, me(), true, &mut changes);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.evidence.contains("fixed: was 0755"), "{c:?}");
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            changes.0,
            [format!("chmod 0700 {} (was 0755)", state.display())]
        );
    }

    #[test]
    fn world_writable_state_dir_fails() {
        let d = tempfile::tempdir().unwrap();
        set_mode(d.path(), 0o777);
        let c = state_dir_check(d.path(), 0o711, me(), false, &mut Changes::default());
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn state_dir_without_traverse_bits_warns_when_workspaces_are_inside() {
        let d = tempfile::tempdir().unwrap();
        set_mode(d.path(), 0o700);
        let c = state_dir_check(d.path(), 0o711, me(), false, &mut Changes::default());
        assert_eq!(c.status, Status::Warn);
        assert!(c.evidence.contains("cannot reach"), "{c:?}");
    }

    #[test]
    fn missing_state_dir_is_created_by_fix() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("a/b");
        let mut changes = Changes::default();
        let c = state_dir_check(&state, 0o700, me(), false, &mut changes);
        assert_eq!(c.status, Status::Warn);
        let c = state_dir_check(&state, 0o700, me(), true, &mut changes);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(changes.0, [format!("mkdir -m 0700 {}", state.display())]);
    }

    #[test]
    fn config_modes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("execbox.toml");
        std::fs::write(&f, "").unwrap();
        for (mode, status) in [
            (0o600, Status::Ok),
            (0o640, Status::Ok),
            (0o644, Status::Warn),
            (0o666, Status::Fail),
        ] {
            set_mode(&f, mode);
            let c = config_file_check(&f, me(), false, &mut Changes::default());
            assert_eq!(c.status, status, "{mode:o}: {c:?}");
        }
        let mut changes = Changes::default();
        let c = config_file_check(&f, me(), true, &mut changes);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn socket_modes_and_absence() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("agent.sock");
        let c = socket_check("s", &s, 0o660, None, false, &mut Changes::default());
        assert_eq!(c.status, Status::Ok);
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        set_mode(&s, 0o666);
        let c = socket_check("s", &s, 0o660, None, false, &mut Changes::default());
        assert_eq!(c.status, Status::Fail);
        let c = socket_check("s", &s, 0o660, None, true, &mut Changes::default());
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn audit_log_mode_and_missing_dir() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log/audit.jsonl");
        let mut changes = Changes::default();
        assert_eq!(
            audit_log_check(&log, false, &mut changes).status,
            Status::Warn
        );
        assert_eq!(audit_log_check(&log, true, &mut changes).status, Status::Ok);
        assert_eq!(changes.0.len(), 1);
        std::fs::write(&log, "{}\n").unwrap();
        set_mode(&log, 0o644);
        assert_eq!(
            audit_log_check(&log, false, &mut changes).status,
            Status::Warn
        );
        set_mode(&log, 0o600);
        assert_eq!(
            audit_log_check(&log, false, &mut changes).status,
            Status::Ok
        );
    }

    fn write_three_records(log: &Path) {
        let mut w = crate::audit::AuditLog::open(log, Default::default()).unwrap();
        for i in 0..3 {
            let ev = crate::audit::Event::Alert {
                kind: "test".into(),
                detail: format!("record {i}"),
            };
            w.append(&ev).unwrap();
        }
    }

    #[test]
    fn the_audit_chain_is_verified_and_tampering_fails() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("audit.jsonl");
        assert_eq!(audit_chain_check(&log).status, Status::Ok);
        write_three_records(&log);
        let c = audit_chain_check(&log);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.evidence.contains("3 record(s)"), "{c:?}");
        // One edited byte in the middle record breaks the chain.
        let text = std::fs::read_to_string(&log)
            .unwrap()
            .replacen("record 1", "record X", 1);
        std::fs::write(&log, text).unwrap();
        let c = audit_chain_check(&log);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.evidence.contains("seq"), "{c:?}");
    }

    #[test]
    fn a_torn_last_record_is_a_warning_and_a_torn_middle_is_a_failure() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("audit.jsonl");
        write_three_records(&log);
        let good = std::fs::read_to_string(&log).unwrap();
        // What a crash mid-append leaves: the writer repairs it at the next open.
        std::fs::write(&log, format!("{good}{{\"seq\":4,\"ts\"")).unwrap();
        let c = audit_chain_check(&log);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.evidence.contains("3 record(s)"), "{c:?}");
        // The same cut anywhere but the end of the live file (here: a rotated file before it)
        // is damage, not a crash.
        let cut = good.rfind("record 2").unwrap();
        std::fs::write(&log, &good).unwrap();
        std::fs::write(d.path().join("audit.jsonl.1"), &good[..cut]).unwrap();
        let c = audit_chain_check(&log);
        assert_eq!(c.status, Status::Fail, "{c:?}");
    }
}
