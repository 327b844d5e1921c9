//! Engine tests with small inline rule sets; the shipped profiles have their own tests.

use super::*;

fn default_policy() -> Policy {
    crate::profile::Profile::embedded_default().unwrap().policy
}

fn check(cmd: &str) -> Decision {
    default_policy().check(Command::Shell(cmd), &Context::examples())
}

#[test]
fn shipped_profiles_load_and_their_examples_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            crate::profile::Profile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "expected default, strict and dev profiles, found {n}"
    );
}

fn adversarial_inputs() -> Vec<(&'static str, String)> {
    let n = parse::MAX_INPUT;
    vec![
        ("nested $(", "$(".repeat(n / 2)),
        (
            "nested $( closed",
            format!("{}x{}", "$(".repeat(5000), ")".repeat(5000)),
        ),
        ("nested backquotes", "`echo ".repeat(n / 6)),
        ("nested if", "if true; then ".repeat(n / 14)),
        ("nested parens", "(".repeat(n)),
        ("nested braces", "{ ".repeat(n / 2)),
        ("long pipeline", "a|".repeat(n / 2 - 1) + "a"),
        ("long list", "ls;".repeat(n / 3)),
        ("many words", "x ".repeat(n / 2)),
        ("many quotes", "'a'\"b\"".repeat(n / 6)),
        ("wrapper chain", "env ".repeat(n / 4 - 2) + "rm"),
        ("nested bash -c", "bash -c '".repeat(n / 9)),
        ("brace bomb", "{a,b}".repeat(n / 5)),
        ("many heredocs", "cat <<E\nx\nE\n".repeat(n / 13)),
        ("too large", "x".repeat(n + 1)),
    ]
}

#[test]
fn adversarial_inputs_are_decided_quickly_and_never_allowed_when_unanalysable() {
    let policy = default_policy();
    for (name, input) in adversarial_inputs() {
        assert!(input.len() <= parse::MAX_INPUT + 1, "{name}");
        let start = std::time::Instant::now();
        let e = policy.explain(Command::Shell(&input), &Context::examples());
        let took = start.elapsed();
        // Debug builds are ~10x slower than release; the release figure is in the bench.
        assert!(took.as_millis() < 1000, "{name}: took {took:?}");
        if !e.fail_closed.is_empty() {
            assert_ne!(e.decision.verdict, Verdict::Allow, "{name}");
        }
        eprintln!(
            "{name}: {took:?} {:?} {:?}",
            e.decision.verdict,
            e.fail_closed.first().map(|f| f.code)
        );
    }
}
