//! Shell parser + policy evaluator. Any input must be decided without panicking or hanging,
//! and input the analysis could not follow must never be allowed, under every shipped profile
//! and under an allow-everything policy (no rules, default allow: only the fail-closed path
//! stands between such input and `allow`). `check` (the daemon's hot path) must agree with
//! `explain`. Inputs containing NUL are also tried as an argv (NUL-separated).
//! Run: `cargo xtask fuzz --target policy` (docs/fuzzing.md).

#![no_main]

use std::sync::OnceLock;

use execbox::policy::{Command, Context, Policy, Verdict};
use execbox::profile::Profile;
use libfuzzer_sys::fuzz_target;

fn policies() -> &'static [Policy] {
    static POLICIES: OnceLock<Vec<Policy>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let file = |text: &str, name: &str| Profile::parse(text, name).expect(name).policy;
        vec![
            Profile::embedded_default().expect("default profile").policy,
            file(include_str!("../../policies/strict.toml"), "strict.toml"),
            file(include_str!("../../policies/dev.toml"), "dev.toml"),
            Policy::compile(Verdict::Allow, Vec::new()).expect("empty policy"),
        ]
    })
}

fn decide(policy: &Policy, command: Command<'_>, ctx: &Context, shown: &dyn std::fmt::Debug) {
    let e = policy.explain(command, ctx);
    if !e.fail_closed.is_empty() {
        assert_ne!(
            e.decision.verdict,
            Verdict::Allow,
            "allowed although the analysis failed closed ({:?}): {shown:?}",
            e.fail_closed[0].code
        );
    }
    let quick = policy.check(command, ctx);
    assert_eq!(
        quick.verdict, e.decision.verdict,
        "check and explain disagree: {shown:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = Context::examples();
    let argv: Option<Vec<String>> = text
        .contains('\0')
        .then(|| text.split('\0').map(str::to_string).collect());
    for policy in policies() {
        decide(policy, Command::Shell(text), &ctx, &text);
        if let Some(argv) = &argv {
            decide(policy, Command::Argv(argv), &ctx, argv);
        }
    }
});
