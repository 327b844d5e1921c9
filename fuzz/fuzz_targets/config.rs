//! The daemon's config file (`Config::parse`): any text must give a config or an error naming
//! the file, never a panic. A config that parses must parse again to the same digest (the
//! digest is what `daemon_start` records).
//! Run: `cargo xtask fuzz --target config` (docs/fuzzing.md).

#![no_main]

use execbox::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(c) => {
            let again = Config::parse(text, "fuzz.toml").expect("parses twice");
            assert_eq!(c.config_sha256, again.config_sha256);
            assert!(c.agent_socket.is_absolute() && c.operator_socket.is_absolute());
        }
        Err(e) => assert!(
            e.to_string().contains("fuzz.toml"),
            "error without the file: {e}"
        ),
    }
});
