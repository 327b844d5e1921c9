//! Layer 2 and the guard plan, without a sandbox: the job's writes are made directly.

use super::*;
use std::os::unix::fs::symlink;

fn profile() -> SandboxProfile {
    crate::profile::Profile::embedded_default().unwrap().sandbox
}

fn repo(dir: &Path) {
    for d in ["hooks", "objects", "refs", "info"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(dir.join("config"), "[core]\n\tfsmonitor = false\n").unwrap();
    std::fs::write(dir.join("hooks/pre-commit.sample"), "#!/bin/sh\n").unwrap();
}

fn find<'a>(r: &'a ProtectionReport, path: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no finding for {path}: {r:#?}"))
}

#[test]
fn guards_pin_git_directories_and_make_code_read_only_parents_first() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    repo(&ws.join(".git"));
    repo(&ws.join("sub/.git"));
    repo(&ws.join(".git/modules/m"));
    std::fs::create_dir_all(ws.join("conf")).unwrap();
    std::fs::write(ws.join("conf/db.env"), "x").unwrap();
    let mut sb = profile();
    sb.hidden = vec!["conf/db.env".into()];
    let p = prepare(ws, &sb).unwrap();
    let g: Vec<(String, GuardKind)> = p.guards.iter().map(|g| (lossy(&g.rel), g.kind)).collect();
    let has = |path: &str, k: GuardKind| g.contains(&(path.to_string(), k));
    assert!(has(".git", GuardKind::Pin), "{g:?}");
    assert!(has(".git/config", GuardKind::ReadOnly));
    assert!(has(".git/hooks", GuardKind::ReadOnly));
    assert!(has(".git/info", GuardKind::ReadOnly));
    assert!(has("sub/.git", GuardKind::Pin));
    assert!(has("sub/.git/config", GuardKind::ReadOnly));
    assert!(has(".git/modules/m", GuardKind::Pin));
    assert!(has(".git/modules/m/hooks", GuardKind::ReadOnly));
    assert!(has("conf", GuardKind::Pin));
    assert!(has("conf/db.env", GuardKind::HideFile));
    let pos = |path: &str| g.iter().position(|(p, _)| p == path).unwrap();
    assert!(pos(".git") < pos(".git/config"));
    assert!(pos(".git") < pos(".git/modules/m"));
    assert!(pos("conf") < pos("conf/db.env"));
    // One guard per path.
    let mut paths: Vec<_> = g.iter().map(|(p, _)| p.clone()).collect();
    paths.dedup();
    assert_eq!(paths.len(), g.len());
}

#[test]
fn a_git_symlink_is_a_broken_workspace_and_is_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    repo(host.path());
    symlink(host.path(), t.path().join(".git")).unwrap();
    let e = prepare(t.path(), &profile()).unwrap_err();
    assert_eq!(e.step(), "workspace");
    let msg = e.to_string();
    assert!(msg.contains(".git") && msg.contains("symlink"), "{msg}");
    // A symlinked hooks directory inside a real git directory, likewise.
    let t = tempfile::tempdir().unwrap();
    repo(&t.path().join(".git"));
    std::fs::remove_dir_all(t.path().join(".git/hooks")).unwrap();
    symlink("../githooks", t.path().join(".git/hooks")).unwrap();
    let e = prepare(t.path(), &profile()).unwrap_err();
    assert!(e.to_string().contains(".git/hooks"), "{e}");
}

#[test]
fn a_hook_or_redirect_created_in_a_guarded_git_directory_is_quarantined() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    repo(&ws.join(".git"));
    std::fs::remove_dir_all(ws.join(".git/hooks")).unwrap();
    let p = prepare(ws, &profile()).unwrap();
    // The job (layer 1 does not cover what did not exist):
    std::fs::create_dir(ws.join(".git/hooks")).unwrap();
    std::fs::write(ws.join(".git/hooks/pre-commit"), "#!/bin/sh\nevil\n").unwrap();
    std::fs::write(ws.join(".git/hooks/post-merge.sample"), "inert").unwrap();
    std::fs::write(ws.join(".git/commondir"), "../elsewhere\n").unwrap();
    let r = after(ws, &p, "job1");
    let f = find(&r, ".git/hooks/pre-commit");
    assert_eq!(
        (f.kind, f.change, f.action),
        (FindingKind::GitHook, Change::Created, Action::Quarantined)
    );
    assert_eq!(
        f.quarantined_as.as_deref(),
        Some(".git/hooks/pre-commit.execbox-quarantine-job1")
    );
    assert!(!ws.join(".git/hooks/pre-commit").exists());
    assert!(
        ws.join(".git/hooks/pre-commit.execbox-quarantine-job1")
            .exists()
    );
    assert_eq!(find(&r, ".git/commondir").kind, FindingKind::GitRedirect);
    assert!(!ws.join(".git/commondir").exists());
    assert_eq!(r.findings_total, 2, "{r:#?}");
    assert_eq!(r.repositories, 1);
}

#[test]
fn a_modified_config_is_quarantined_and_an_unchanged_workspace_reports_nothing() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    repo(&ws.join(".git"));
    let p = prepare(ws, &profile()).unwrap();
    std::fs::write(ws.join("file.txt"), "work").unwrap();
    std::fs::write(ws.join(".git/index"), "idx").unwrap();
    let r = after(ws, &p, "a");
    assert!(r.findings.is_empty(), "{r:#?}");
    let p = prepare(ws, &profile()).unwrap();
    std::fs::write(ws.join(".git/config"), "[core]\n\tfsmonitor = ./evil\n").unwrap();
    let r = after(ws, &p, "b");
    let f = find(&r, ".git/config");
    assert_eq!(
        (f.change, f.action),
        (Change::Modified, Action::Quarantined)
    );
    assert!(!ws.join(".git/config").exists());
}

#[test]
fn a_repository_the_job_created_keeps_a_plain_config_and_loses_planted_code() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    let p = prepare(ws, &profile()).unwrap();
    // `git init` writes a plain config and sample hooks: nothing to report.
    repo(&ws.join("plain/.git"));
    std::fs::write(
        ws.join("plain/.git/config"),
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
    )
    .unwrap();
    repo(&ws.join("evil/.git"));
    std::fs::write(ws.join("evil/.git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
    std::fs::write(ws.join("evil/.git/info/attributes"), "* filter=x\n").unwrap();
    let r = after(ws, &p, "j");
    assert!(
        r.findings.iter().all(|f| !f.path.starts_with("plain/")),
        "{r:#?}"
    );
    assert_eq!(find(&r, "evil/.git/config").kind, FindingKind::GitConfig);
    assert!(
        find(&r, "evil/.git/config")
            .detail
            .contains("core.fsmonitor")
    );
    assert_eq!(
        find(&r, "evil/.git/hooks/pre-commit").action,
        Action::Quarantined
    );
    assert_eq!(
        find(&r, "evil/.git/info/attributes").kind,
        FindingKind::GitAttributes
    );
    assert!(ws.join("plain/.git/config").exists());
    assert!(!ws.join("evil/.git/config").exists());
}

#[test]
fn a_renamed_repository_is_not_taken_for_a_job_written_one() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    repo(&ws.join("sub/.git"));
    let p = prepare(ws, &profile()).unwrap();
    std::fs::rename(ws.join("sub"), ws.join("sub2")).unwrap();
    let r = after(ws, &p, "j");
    assert!(r.findings.is_empty(), "{r:#?}");
    assert!(ws.join("sub2/.git/config").exists());
}

#[test]
fn planted_git_symlinks_and_outward_gitfiles_are_quarantined_worktree_files_reported() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    std::fs::create_dir(ws.join("a")).unwrap();
    std::fs::create_dir(ws.join("b")).unwrap();
    std::fs::write(ws.join(".gitattributes"), "*.txt text\n").unwrap();
    let p = prepare(ws, &profile()).unwrap();
    symlink("/etc", ws.join("a/.git")).unwrap();
    std::fs::write(ws.join("b/.git"), "gitdir: /home/someone/.git\n").unwrap();
    std::fs::write(ws.join(".gitattributes"), "*.txt text filter=run\n").unwrap();
    let r = after(ws, &p, "j");
    let f = find(&r, "a/.git");
    assert_eq!(
        (f.kind, f.action),
        (FindingKind::GitSymlink, Action::Quarantined)
    );
    assert!(std::fs::symlink_metadata(ws.join("a/.git")).is_err());
    assert_eq!(find(&r, "b/.git").kind, FindingKind::Gitfile);
    assert!(!ws.join("b/.git").exists());
    let f = find(&r, ".gitattributes");
    assert_eq!(
        (f.kind, f.action),
        (FindingKind::Gitattributes, Action::Reported)
    );
    // The next job starts: nothing left to refuse.
    assert!(prepare(ws, &profile()).is_ok());
}

#[test]
fn a_symlinked_config_in_a_new_repository_is_quarantined_a_worktree_commondir_is_not() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path();
    repo(&ws.join(".git"));
    let p = prepare(ws, &profile()).unwrap();
    repo(&ws.join("n/.git"));
    std::fs::write(ws.join("evil.cfg"), "[core]\n\tfsmonitor = x\n").unwrap();
    std::fs::remove_file(ws.join("n/.git/config")).unwrap();
    symlink("../../evil.cfg", ws.join("n/.git/config")).unwrap();
    // What `git worktree add w` leaves: a gitdir under .git/worktrees pointing back.
    std::fs::create_dir_all(ws.join(".git/worktrees/w")).unwrap();
    std::fs::write(ws.join(".git/worktrees/w/HEAD"), "ref: refs/heads/w\n").unwrap();
    std::fs::write(ws.join(".git/worktrees/w/commondir"), "../..\n").unwrap();
    std::fs::write(ws.join(".git/worktrees/w/gitdir"), "/x/w/.git\n").unwrap();
    let r = after(ws, &p, "j");
    assert_eq!(find(&r, "n/.git/config").action, Action::Quarantined);
    assert!(
        r.findings
            .iter()
            .all(|f| !f.path.starts_with(".git/worktrees")),
        "{r:#?}"
    );
}
