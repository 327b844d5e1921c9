//! execbox: a sandboxed exec supervisor for AI agents.
//!
//! Module map (see `docs/ARCHITECTURE.md`):
//! - [`audit`]: the tamper-evident audit log (hash-chained JSON Lines) and its verifier.
//! - [`cli`]: the `execbox` command line; the only place that uses `anyhow`.
//! - [`profile`]: a policy file (`policies/*.toml`): sandbox view, limits and command rules.
//! - [`policy`]: shell parsing and the structural command rules that give a verdict.
//! - [`sandbox`]: namespaces, mounts, landlock, seccomp, capabilities, cgroups and the spawn
//!   itself. `sandbox::sys` is the only module allowed to contain `unsafe`.
//! - [`doctor`]: host, config and file-permission checks (`execbox doctor`, and at `serve` start).
//! - [`files`]: files in and out of a session's workspace, strictly beneath it (`/v1/files`).
//! - [`units`]: parsing of sizes and durations shared by the CLI and the profile.

pub mod artifacts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod files;
pub mod net;
pub mod policy;
pub mod profile;
pub mod sandbox;
pub mod server;
pub mod units;
