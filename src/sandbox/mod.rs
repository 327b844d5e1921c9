//! The sandbox runtime: runs one command in fresh namespaces behind every layer.
//!
//! Must never: run code between fork and exec in a multithreaded process, allocate after the
//! fork, or start a command when a layer could not be applied (unless the profile allows that
//! named degradation, which is then reported).

pub mod cgroup;
pub mod seccomp;
