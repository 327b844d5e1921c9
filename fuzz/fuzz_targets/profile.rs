//! Policy profile files (`Profile::parse`, `policies/*.toml`): any text must give a profile or
//! an error naming the file, never a panic or a hang (rule examples are compiled and checked
//! at load, so this also runs the policy engine on fuzzed rules).
//! Run: `cargo xtask fuzz --target profile` (docs/fuzzing.md).

#![no_main]

use execbox::policy::{Command, Context};
use execbox::profile::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Profile::parse(text, "fuzz.toml") {
        // A profile that loads can decide a command.
        Ok(p) => drop(
            p.policy
                .check(Command::Shell("ls -la"), &Context::examples()),
        ),
        Err(e) => assert!(
            e.to_string().contains("fuzz.toml"),
            "error without the file: {e}"
        ),
    }
});
