//! Parser + evaluator fuzz target: any input must be decided without panicking or hanging,
//! and input the analysis could not follow must never be allowed.
//! Run with `cargo +nightly fuzz run policy` from `fuzz/`.

#![no_main]

use std::sync::OnceLock;

use execbox::policy::{Command, Context, Policy, Verdict};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        execbox::profile::Profile::embedded_default()
            .expect("default profile")
            .policy
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = Context::examples();
    let e = policy().explain(Command::Shell(text), &ctx);
    if !e.fail_closed.is_empty() {
        assert_ne!(e.decision.verdict, Verdict::Allow, "{text:?}");
    }
});
