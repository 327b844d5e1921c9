//! A private scratch directory for a fuzz target (tmpfs when there is one: targets write files
//! on every input). Shared by the targets with `#[path = "scratch.rs"] mod scratch;`.

use std::path::{Path, PathBuf};

/// `/dev/shm/execbox-fuzz-<name>-<pid>` (or under the temp dir), emptied.
pub fn dir(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("execbox-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
