//! `execbox run` enforces the policy verdict before anything is created: deny ⇒ 125 naming the
//! rule; approve ⇒ a question on the controlling terminal, refused without one.

use std::process::Command;

use super::harness::*;

/// `execbox run` with the embedded default policy (no --policy).
fn run_default(ws: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(&*EXECBOX)
        .arg("run")
        .arg("--workspace")
        .arg(ws)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn denied_commands_exit_125_with_the_rule_and_run_nothing() {
    let ws = Ws::new();
    for args in [
        &["-c", "sudo touch marker"][..],
        &["--", "sudo", "touch", "marker"],
    ] {
        let o = run_default(ws.path(), args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains("refused by policy") && err.contains("rule"),
            "{err}"
        );
    }
    assert!(!ws.path().join("marker").exists());
    // Positive control: an ordinary command runs under the same policy.
    let o = run_default(ws.path(), &["-c", "echo hello > marker; cat marker"]);
    assert_eq!(ok(&o), "hello\n");
}

#[test]
fn approval_without_a_terminal_is_a_refusal() {
    let ws = Ws::new();
    // A program name the parser cannot resolve needs a human.
    let o = run_default(ws.path(), &["-c", "x=touch; $x marker"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("approval"), "{}", text(&o.stderr));
    assert!(!ws.path().join("marker").exists());
}

/// Drives `execbox run` on a pseudo-terminal: answers `answer` at the prompt and returns
/// (exit code, everything the terminal showed).
fn on_a_terminal(ws: &std::path::Path, command: &str, answer: &str) -> (i32, String) {
    let ws = ws.to_str().unwrap();
    on_a_pty(
        &[EXECBOX.as_str(), "run", "--workspace", ws, "-c", command],
        "Type 'yes'",
        answer,
        None,
    )
}

#[test]
fn approval_on_a_terminal_runs_only_after_an_explicit_yes() {
    let ws = Ws::new();
    let (code, shown) = on_a_terminal(ws.path(), "x=touch; $x marker", "no");
    assert_eq!(code, 125, "{shown}");
    assert!(!ws.path().join("marker").exists(), "{shown}");
    assert!(
        shown.contains("needs approval") && shown.contains("$x marker"),
        "{shown}"
    );

    let (code, shown) = on_a_terminal(ws.path(), "x=touch; $x marker", "yes");
    assert_eq!(code, 0, "{shown}");
    assert!(ws.path().join("marker").exists(), "{shown}");
}

#[test]
fn the_approval_prompt_shows_control_characters_visibly() {
    let ws = Ws::new();
    // An escape sequence that would clear the screen and move the cursor if printed raw.
    // Issue 15 item 15: invisible characters (word joiner, a tag character, a line separator,
    // the Hangul filler) would hide text the operator must see.
    let (_, shown) = on_a_terminal(
        ws.path(),
        "x=true; $x '\u{1b}[2J\u{1b}[H' 'r\u{2060}m\u{E0041}\u{2028}\u{3164}\u{AD}'",
        "no",
    );
    for c in [
        '\u{1b}',
        '\u{2060}',
        '\u{E0041}',
        '\u{2028}',
        '\u{3164}',
        '\u{AD}',
    ] {
        assert!(
            !shown.contains(c),
            "raw {:x} reached the terminal: {shown:?}",
            c as u32
        );
    }
    assert!(shown.contains("\\x1b[2J"), "{shown:?}");
    assert!(shown.contains("r\\u{2060}m\\u{e0041}"), "{shown:?}");
}

#[test]
fn the_readme_opening_command_works_with_the_default_policy() {
    let readme = std::fs::read_to_string(source_path("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- run"))
        .expect("README opens with `cargo run --release -- run …`");
    let shell = line.replacen("cargo run --release --", &format!("'{}'", *EXECBOX), 1);
    let ws = Ws::new();
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg(&shell)
        .current_dir(ws.path())
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(
        out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"),
        "{out}"
    );
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        text(&o.stderr)
    );
}
