//! Issue 15 items 1 and 10: nothing a job writes is executed by the host unless the operator
//! asked for it (`sandbox::protect`, docs/threat-model.md). Each attack runs *inside* the
//! sandbox and is judged by the files it leaves; host git is never run on what a job wrote.
//! Every attack sits next to a positive control: ordinary git use in the job keeps working.

use super::harness::*;
use std::path::Path;

const GIT: &str = "git -c user.name=t -c user.email=t@example.invalid";

fn job(ws: &Path, script: &str) -> std::process::Output {
    run_in(ws, &["--json"], &["/bin/sh", "-c", script])
}

fn has_git() -> bool {
    if Path::new("/usr/bin/git").exists() || Path::new("/usr/local/bin/git").exists() {
        return true;
    }
    missing("git under /usr (apt-get install git)");
    false
}

fn findings(o: &std::process::Output) -> Vec<serde_json::Value> {
    json_report(o)["protection"]["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A repository made inside a job (so no host git ever touches the workspace).
fn repo_made_in_a_job() -> Ws {
    let ws = Ws::new();
    let o = job(
        ws.path(),
        &format!("git init -q . && {GIT} commit -q --allow-empty -m init && echo made"),
    );
    assert_eq!(ok(&o), "made\n");
    assert!(findings(&o).is_empty(), "{:?}", json_report(&o));
    ws
}

#[test]
fn renaming_git_to_plant_fsmonitor_or_a_hook_fails_and_git_still_works() {
    if !has_git() {
        return;
    }
    let ws = repo_made_in_a_job();
    let config = std::fs::read(ws.path().join(".git/config")).unwrap();
    // Positive control: status and commit in a guarded repository.
    let o = job(
        ws.path(),
        &format!(
            "echo a > f && git add f && {GIT} commit -qm f && git status --short && git log --oneline | wc -l"
        ),
    );
    assert_eq!(ok(&o).trim(), "2");
    // The attack of the issue, step by step; each step that works prints its name.
    let o = job(
        ws.path(),
        r#"mv .git .git_orig 2>/dev/null && echo RENAMED
           mkdir -p d && mv .git d/ 2>/dev/null && echo MOVED
           mv .git/config .git/config.old 2>/dev/null && echo CONFIG_RENAMED
           ln -sf /tmp/x .git/config 2>/dev/null && echo CONFIG_REPLACED
           printf '[core]\n\tfsmonitor = "touch /tmp/pwned"\n' >> .git/config 2>/dev/null && echo CONFIG
           printf '#!/bin/sh\ntouch /tmp/pwned\n' > .git/hooks/pre-commit 2>/dev/null && echo HOOK
           mv .git/hooks .git/h2 2>/dev/null && echo HOOKS_RENAMED
           echo ../x > .git/commondir 2>/dev/null && echo COMMONDIR
           echo done"#,
    );
    let out = stdout(&o);
    assert!(
        out.lines().all(|l| l == "COMMONDIR" || l == "done"),
        "an attack step succeeded: {out}"
    );
    assert_eq!(
        std::fs::read(ws.path().join(".git/config")).unwrap(),
        config
    );
    assert!(!ws.path().join(".git/hooks/pre-commit").exists());
    assert!(!ws.path().join(".git_orig").exists());
    // `commondir` did not exist, so layer 1 could not bind it: layer 2 quarantined it.
    assert!(!ws.path().join(".git/commondir").exists());
    let f = findings(&o);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["path"], ".git/commondir");
    assert_eq!(f[0]["action"], "quarantined");
    let q = f[0]["quarantined_as"].as_str().unwrap();
    assert!(q.starts_with(".git/commondir.execbox-quarantine-"), "{q}");
    assert!(ws.path().join(q).exists());
    // Still a working repository.
    assert_eq!(ok(&job(ws.path(), "git log --oneline | wc -l")).trim(), "2");
}

#[test]
fn nested_repositories_and_submodule_git_dirs_are_guarded() {
    if !has_git() {
        return;
    }
    let ws = repo_made_in_a_job();
    let o = job(
        ws.path(),
        &format!(
            "git init -q sub && {GIT} -C sub commit -q --allow-empty -m s \
             && mkdir .git/modules && git init -q --separate-git-dir=$PWD/.git/modules/m m && {GIT} -C m commit -q --allow-empty -m m \
             && echo ok"
        ),
    );
    assert_eq!(ok(&o), "ok\n");
    assert!(findings(&o).is_empty(), "{:?}", findings(&o));
    let gitfile = std::fs::read(ws.path().join("m/.git")).unwrap();
    // Positive control: both are usable in the next job.
    let o = job(
        ws.path(),
        &format!(
            "{GIT} -C sub commit -q --allow-empty -m s2 && {GIT} -C m commit -q --allow-empty -m m2 && echo ok"
        ),
    );
    assert_eq!(ok(&o), "ok\n");
    let o = job(
        ws.path(),
        r#"mv sub/.git sub/.g 2>/dev/null && echo SUB_RENAMED
           echo '[core] fsmonitor = x' >> sub/.git/config 2>/dev/null && echo SUB_CONFIG
           echo x > sub/.git/hooks/post-checkout 2>/dev/null && echo SUB_HOOK
           mv .git/modules/m .git/modules/n 2>/dev/null && echo MOD_RENAMED
           echo '[core] fsmonitor = x' >> .git/modules/m/config 2>/dev/null && echo MOD_CONFIG
           echo x > .git/modules/m/hooks/pre-commit 2>/dev/null && echo MOD_HOOK
           echo 'gitdir: /tmp/evil' > m/.git 2>/dev/null && echo GITFILE
           mv m/.git m/.g 2>/dev/null && echo GITFILE_RENAMED
           echo done"#,
    );
    assert_eq!(stdout(&o), "done\n");
    assert!(findings(&o).is_empty(), "{:?}", findings(&o));
    assert_eq!(std::fs::read(ws.path().join("m/.git")).unwrap(), gitfile);
    assert!(!ws.path().join("sub/.git/hooks/post-checkout").exists());
    assert!(!ws.path().join(".git/modules/m/hooks/pre-commit").exists());
}

#[test]
fn a_repository_created_in_the_job_loses_what_would_run_on_the_host() {
    if !has_git() {
        return;
    }
    let ws = Ws::new();
    // Positive control in the same job: a plain `git init` + commit is left alone.
    let o = job(
        ws.path(),
        &format!(
            r#"git init -q plain && {GIT} -C plain commit -q --allow-empty -m p
               git init -q evil && git -C evil config core.fsmonitor 'touch /tmp/pwned'
               printf '#!/bin/sh\ntouch /tmp/pwned\n' > evil/.git/hooks/pre-commit && chmod +x evil/.git/hooks/pre-commit
               mkdir bare && cd bare && git init -q --bare && git config core.pager 'touch /tmp/pwned' && echo ok"#
        ),
    );
    assert_eq!(ok(&o), "ok\n");
    let f = findings(&o);
    let paths: Vec<&str> = f.iter().map(|x| x["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"evil/.git/config"), "{f:?}");
    assert!(paths.contains(&"evil/.git/hooks/pre-commit"), "{f:?}");
    assert!(paths.contains(&"bare/config"), "{f:?}");
    assert!(paths.iter().all(|p| !p.starts_with("plain/")), "{f:?}");
    assert!(f.iter().all(|x| x["action"] == "quarantined"), "{f:?}");
    for p in [
        "evil/.git/config",
        "evil/.git/hooks/pre-commit",
        "bare/config",
    ] {
        assert!(!ws.path().join(p).exists(), "{p} still there");
    }
    assert!(ws.path().join("plain/.git/config").exists());
    // The quarantined repository still works inside the next job, without the planted code.
    let o = job(
        ws.path(),
        &format!(
            "{GIT} -C evil commit -q --allow-empty -m e && test ! -e /tmp/pwned && git -C plain log --oneline | wc -l"
        ),
    );
    assert_eq!(ok(&o).trim(), "1");
}

/// A profile with a nested hidden path.
fn hidden_profile(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(fixture("open.toml"))
        .unwrap()
        .replace(
            r#"hidden = ["secret-dir", "secret.env"]"#,
            r#"hidden = ["secret-dir", "secret.env", "conf/db.env", "keys/private"]"#,
        );
    assert!(text.contains("conf/db.env"));
    let p = dir.join("hidden.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn renaming_the_parent_of_a_hidden_path_fails_and_the_next_job_still_sees_nothing() {
    let pol = Ws::new();
    let profile = hidden_profile(pol.path());
    let ws = Ws::new();
    std::fs::create_dir_all(ws.path().join("conf")).unwrap();
    std::fs::write(ws.path().join("conf/db.env"), "PASSWORD=hunter2").unwrap();
    std::fs::write(ws.path().join("conf/app.toml"), "ok").unwrap();
    std::fs::create_dir_all(ws.path().join("keys/private")).unwrap();
    std::fs::write(ws.path().join("keys/private/id"), "KEY").unwrap();
    let run = |script: &str| {
        let mut c = std::process::Command::new(&*EXECBOX);
        c.args(["run", "--policy"])
            .arg(&profile)
            .arg("--workspace")
            .arg(ws.path())
            .args(["--", "/bin/sh", "-c", script])
            .stdin(std::process::Stdio::null());
        c.output().unwrap()
    };
    // Positive control: the rest of conf/ is readable and writable.
    assert_eq!(
        ok(&run(
            "cat conf/app.toml; echo new > conf/new && cat conf/new"
        )),
        "oknew\n"
    );
    let o = run(r#"mv conf conf2 2>/dev/null && echo CONF_RENAMED
           mv keys keys2 2>/dev/null && echo KEYS_RENAMED
           mv keys/private keys/p2 2>/dev/null && echo PRIVATE_RENAMED
           cat conf/db.env keys/private/id 2>/dev/null
           echo done"#);
    assert_eq!(stdout(&o), "done\n");
    let o =
        run("cat conf2/db.env conf/db.env keys2/private/id keys/private/id 2>/dev/null; echo end");
    assert_eq!(stdout(&o), "end\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("conf/db.env")).unwrap(),
        "PASSWORD=hunter2"
    );
}

#[test]
fn a_git_symlink_to_a_host_directory_is_a_clear_broken_workspace_not_a_mount_failure() {
    let host = Ws::new();
    std::fs::write(host.path().join("config"), "[core]\n").unwrap();
    std::fs::create_dir(host.path().join("hooks")).unwrap();
    let ws = Ws::new();
    std::os::unix::fs::symlink(host.path(), ws.path().join(".git")).unwrap();
    let o = job(ws.path(), "echo ran");
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
    assert_eq!(stdout(&o), "");
    let r = json_report(&o);
    assert_eq!(r["error"]["kind"], "workspace", "{r}");
    let msg = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains(".git") && msg.contains("symlink") && msg.contains("fix"),
        "{msg}"
    );
    // Positive control: with the link gone, the workspace works again.
    std::fs::remove_file(ws.path().join(".git")).unwrap();
    assert_eq!(ok(&job(ws.path(), "echo ran")), "ran\n");
}

#[test]
fn a_git_symlink_planted_by_a_job_is_quarantined_so_the_next_job_runs() {
    let ws = Ws::new();
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    let o = job(
        ws.path(),
        "ln -s /etc .git && ln -s /usr sub/.git && echo planted",
    );
    assert_eq!(ok(&o), "planted\n");
    let f = findings(&o);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f.iter()
            .all(|x| x["kind"] == "git_symlink" && x["action"] == "quarantined"),
        "{f:?}"
    );
    assert!(std::fs::symlink_metadata(ws.path().join(".git")).is_err());
    assert!(std::fs::symlink_metadata(ws.path().join("sub/.git")).is_err());
    assert_eq!(ok(&job(ws.path(), "echo next")), "next\n");
}

#[test]
fn the_daemon_reports_quarantined_files_in_the_exit_event_and_the_audit_log() {
    use super::daemon::{Daemon, exit_of};
    let d = Daemon::start("");
    let (status, v) = d.json("POST", "/v1/sessions", None, None);
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    let ws = Path::new(v["workspace"].as_str().unwrap()).to_path_buf();
    // Positive control: a job that plants nothing reports nothing.
    let (_, events) = d.exec(
        token,
        serde_json::json!({"argv": ["/bin/sh", "-c", "echo hi > f"]}),
    );
    let exit = exit_of(&events);
    assert_eq!(exit["code"], 0, "{exit}");
    assert_eq!(exit["protection"]["findings_total"], 0, "{exit}");
    let (_, events) = d.exec(
        token,
        serde_json::json!({"argv": ["/bin/sh", "-c", "mkdir -p r/.git/hooks && echo '#!/bin/sh' > r/.git/hooks/pre-commit && ln -s /root .git"]}),
    );
    let exit = exit_of(&events);
    assert_eq!(exit["code"], 0, "{exit}");
    let p = &exit["protection"];
    assert_eq!(p["findings_total"], 2, "{exit}");
    let paths: Vec<&str> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&".git") && paths.contains(&"r/.git/hooks/pre-commit"),
        "{p}"
    );
    assert!(std::fs::symlink_metadata(ws.join(".git")).is_err());
    // The audit record of the job's end carries the same report.
    let audit = std::fs::read_to_string(d.dir.path().join("audit.jsonl")).unwrap();
    let rec: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r.to_string().contains("job_exit"))
        .unwrap();
    assert_eq!(
        rec.to_string().matches("execbox-quarantine-").count(),
        2,
        "{rec}"
    );
}
