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
