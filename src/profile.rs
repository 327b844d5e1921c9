//! A profile is one policy file (`policies/*.toml`): the sandbox view, the resource limits and
//! the command rules. This module owns the file format and its validation; the rules themselves
//! are compiled by [`crate::policy`].
//!
//! Parsing goes raw serde structs (`deny_unknown_fields`) → `validate()` → types that cannot be
//! invalid. Every error names the file, the key and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{Policy, RawRule, Verdict};
use crate::units::{parse_duration, parse_size};

/// The profile compiled into the binary, used when no `--policy` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../policies/default.toml");
/// How the embedded default is named in messages.
pub const EMBEDDED_DEFAULT_NAME: &str = "<embedded policies/default.toml>";

/// A validated profile.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where it was loaded from (a path, or [`EMBEDDED_DEFAULT_NAME`]).
    pub source: String,
    pub sandbox: SandboxProfile,
    pub limits: Limits,
    /// Files a job leaves in a workspace directory, handed out by opaque id (none when absent).
    pub artifacts: Option<ArtifactsProfile>,
    /// What the daemon's relay does to output besides the byte cap (`limits.output`).
    pub output: OutputProfile,
    pub policy: Policy,
}

/// `[artifacts]`: where a job leaves files for its caller, and how many may be kept how long.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactsProfile {
    /// Workspace-relative, without `..` or `.` components; only its direct entries count.
    pub dir: PathBuf,
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// How long an id stays valid after the job ends.
    pub ttl: Duration,
}

/// `[output]`: the output guard (the byte cap itself is `limits.output`, which
/// `output.max_bytes` may set instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputProfile {
    /// Remove terminal control sequences and C0 controls other than `\n`, `\t`, `\r`.
    pub strip_control: bool,
    /// Flag a stream as binary (NUL, or mostly invalid UTF-8, in its first bytes).
    pub detect_binary: bool,
}

impl Default for OutputProfile {
    fn default() -> Self {
        OutputProfile {
            strip_control: false,
            detect_binary: true,
        }
    }
}

/// What the sandbox shows and allows.
#[derive(Debug, Clone)]
pub struct SandboxProfile {
    /// Host paths bound read-only at the same place (absolute). Missing ones are skipped.
    pub read_only: Vec<PathBuf>,
    /// Host paths bound read-write besides the workspace (absolute). Must exist.
    pub read_write: Vec<PathBuf>,
    /// Workspace-relative paths made invisible (empty read-only) when they exist.
    pub hidden: Vec<PathBuf>,
    /// Workspace-relative paths re-bound read-only when they exist: code the host runs later.
    pub protected: Vec<PathBuf>,
    pub network: NetworkMode,
    /// `[network]`: what a `network = "allowlist"` job may reach (`Some` exactly then).
    pub egress: Option<crate::net::allow::Egress>,
    /// Name of a compiled seccomp filter (`seccomp/<name>.json`).
    pub seccomp: String,
    /// Host environment variables passed through when set (besides PATH/HOME/LANG/TERM).
    pub env_passthrough: Vec<String>,
    /// Layers the operator explicitly allows to be missing. Empty by default: fail closed.
    pub allow_degraded: Vec<Degradation>,
    /// Second layers ([`Degradation::is_second_layer`]) this profile demands: without them its
    /// jobs fail closed instead of running degraded. Empty by default.
    pub require: Vec<Degradation>,
    /// How deep the walk for git directories goes below the workspace (`sandbox::protect`).
    pub protect_scan_depth: usize,
    /// How many directory entries that walk reads at most (before and again after each job).
    pub protect_scan_entries: usize,
    /// Not a profile key: set per job by the daemon for a session given its parent's workspace
    /// read-only (`docs/sessions.md`). The workspace is then mounted read-only and landlock
    /// allows it only reading and executing.
    pub workspace_read_only: bool,
}

/// Network view inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// A fresh network namespace with only `lo` up: nothing outside the job is reachable.
    None,
    /// The same namespace, plus the names of `[network] allow`, answered and relayed by the
    /// supervisor (`docs/network.md`).
    Allowlist,
}

/// A sandbox layer that may be skipped when the kernel or host cannot provide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Degradation {
    /// Run without a per-job cgroup (no memory/pids/cpu limits) when none can be created.
    Cgroup,
    /// Run without any landlock rules when the kernel has no landlock.
    Landlock,
    /// Accepted for old profiles and without effect: landlock TCP rules are no longer used (the
    /// job's network namespace is the network fence; `docs/network.md`).
    LandlockNet,
    /// Run without landlock signal/abstract-socket scoping when the ABI is below 6.
    LandlockScope,
}

impl SandboxProfile {
    /// Whether a job of this profile may run without `d`: the operator allowed it by name, or
    /// it is a second layer the profile does not require.
    pub fn may_run_without(&self, d: Degradation) -> bool {
        self.allow_degraded.contains(&d) || (d.is_second_layer() && !self.require.contains(&d))
    }

    /// Every layer a job of this profile may run without.
    pub fn degradable(&self) -> Vec<Degradation> {
        Degradation::ALL
            .into_iter()
            .filter(|d| self.may_run_without(*d))
            .collect()
    }
}

impl Degradation {
    pub const ALL: [Degradation; 4] = [
        Degradation::Cgroup,
        Degradation::Landlock,
        Degradation::LandlockNet,
        Degradation::LandlockScope,
    ];

    /// A second layer behind a first one that holds for every job, so that a job runs without
    /// it by default (reported) when the kernel lacks it; `sandbox.require` demands it. The
    /// others are the only fence for what they guard and fail closed unless
    /// `sandbox.allow_degraded` names them. The table is in `docs/security.md`.
    pub fn is_second_layer(self) -> bool {
        match self {
            // Every job has its own pid namespace (no process outside it can be signalled) and
            // its own network namespace (abstract Unix sockets are per network namespace).
            Degradation::LandlockScope => true,
            // Never used: the job's network namespace is the network fence.
            Degradation::LandlockNet => true,
            // The only limit on memory, pids and cpu.
            Degradation::Cgroup => false,
            // The mount view is the first filesystem layer, but landlock is what still holds
            // if a mount is ever wrong (e.g. a bind that exposes more than meant): not degraded
            // silently.
            Degradation::Landlock => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Degradation::Cgroup => "cgroup",
            Degradation::Landlock => "landlock",
            Degradation::LandlockNet => "landlock-net",
            Degradation::LandlockScope => "landlock-scope",
        }
    }
}

/// Resource limits for one job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory in bytes (swap is not allowed on top).
    pub memory: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (1.0 = one full core).
    pub cpu: Option<f64>,
    /// Wall-clock time after which the whole job is killed.
    pub wall_time: Duration,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// Bytes kept per output stream; the rest is dropped and counted.
    pub output_bytes: u64,
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read policy file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {message}; fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        message: String,
        fix: String,
    },
    #[error("{file}: {source}")]
    Rules {
        file: String,
        #[source]
        source: crate::policy::PolicyError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    profile: RawMeta,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    limits: RawLimits,
    artifacts: Option<RawArtifacts>,
    #[serde(default)]
    output: RawOutput,
    network: Option<crate::net::allow::RawNetwork>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    dir: String,
    max_files: Option<usize>,
    max_file_bytes: Option<RawSize>,
    max_total_bytes: Option<RawSize>,
    ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    max_bytes: Option<RawSize>,
    strip_control: Option<bool>,
    detect_binary: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    #[serde(default)]
    description: String,
    default_verdict: Verdict,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    #[serde(default = "default_read_only")]
    read_only: Vec<String>,
    #[serde(default)]
    read_write: Vec<String>,
    #[serde(default)]
    hidden: Vec<String>,
    #[serde(default = "default_protected")]
    protected: Vec<String>,
    #[serde(default = "default_network")]
    network: NetworkMode,
    #[serde(default = "default_seccomp")]
    seccomp: String,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    allow_degraded: Vec<Degradation>,
    #[serde(default)]
    require: Vec<Degradation>,
    #[serde(default = "default_protect_scan_depth")]
    protect_scan_depth: usize,
    #[serde(default = "default_protect_scan_entries")]
    protect_scan_entries: usize,
}

impl Default for RawSandbox {
    fn default() -> Self {
        RawSandbox {
            read_only: default_read_only(),
            read_write: Vec::new(),
            hidden: Vec::new(),
            protected: default_protected(),
            network: default_network(),
            seccomp: default_seccomp(),
            env: Vec::new(),
            allow_degraded: Vec::new(),
            require: Vec::new(),
            protect_scan_depth: default_protect_scan_depth(),
            protect_scan_entries: default_protect_scan_entries(),
        }
    }
}

fn default_read_only() -> Vec<String> {
    [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    ]
    .map(String::from)
    .to_vec()
}
fn default_protected() -> Vec<String> {
    [".git/hooks", ".git/config"].map(String::from).to_vec()
}
/// Deep enough for `vendor/x/y/sub/.git`; the entry budget bounds the cost, not the depth.
fn default_protect_scan_depth() -> usize {
    8
}
/// At most ~15 ms of walking on a loaded machine (docs/benchmarks.md), before and after each
/// job; a typical repository is far below it (≈ 0.3 ms for 1,200 entries).
fn default_protect_scan_entries() -> usize {
    20_000
}
/// Above this the walk costs more than the job's start-up by far; a larger tree should list
/// its repositories' parents instead of walking everything.
const MAX_PROTECT_SCAN_ENTRIES: usize = 10_000_000;
fn default_network() -> NetworkMode {
    NetworkMode::None
}
fn default_seccomp() -> String {
    "default".into()
}

/// A size may be written as a string with a unit (`"1GiB"`) or a bare integer of bytes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<RawSize>,
    pids: Option<u64>,
    cpu: Option<f64>,
    wall_time: Option<String>,
    nofile: Option<u64>,
    output: Option<RawSize>,
}

const DEFAULT_WALL_TIME: Duration = Duration::from_secs(600);
const DEFAULT_NOFILE: u64 = 1024;
const DEFAULT_OUTPUT_BYTES: u64 = 64 << 20;
const DEFAULT_ARTIFACT_FILES: usize = 64;
const DEFAULT_ARTIFACT_FILE_BYTES: u64 = 64 << 20;
const DEFAULT_ARTIFACT_TOTAL_BYTES: u64 = 256 << 20;
const DEFAULT_ARTIFACT_TTL: Duration = Duration::from_secs(3600);
/// Above this many files per job an `exit` event stops being a small message.
const MAX_ARTIFACT_FILES: usize = 4096;

impl Profile {
    /// The profile compiled into the binary.
    ///
    /// Its rule examples are not re-checked here: the text is compiled into the binary and
    /// `embedded_default_examples_all_pass` checks them in `cargo test`, so checking them again
    /// on every `execbox run` would only cost ~2 ms per command. Files loaded from disk are
    /// always checked.
    pub fn embedded_default() -> Result<Profile, ProfileError> {
        Profile::parse_checked(EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME, false)
    }

    /// Loads and validates a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            file: file.clone(),
            source,
        })?;
        Profile::parse(&text, &file)
    }

    /// Parses and validates profile text; `file` is used in messages.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
        Profile::parse_checked(text, file, true)
    }

    /// [`Profile::parse`], with the rule examples checked or not (see [`Profile::embedded_default`]).
    fn parse_checked(
        text: &str,
        file: &str,
        check_examples: bool,
    ) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: &str, message: String, fix: &str| ProfileError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
            fix: fix.to_string(),
        };

        if raw.profile.name.trim().is_empty() {
            return Err(invalid(
                "profile.name",
                "is empty".into(),
                "give the profile a short name such as \"default\"",
            ));
        }
        let absolute = |key: &str, list: Vec<String>| -> Result<Vec<PathBuf>, ProfileError> {
            list.into_iter()
                .map(|p| {
                    let path = PathBuf::from(&p);
                    if path.is_absolute() && !p.split('/').any(|c| c == "..") {
                        Ok(path)
                    } else {
                        Err(invalid(
                            key,
                            format!("{p:?} is not an absolute path without `..`"),
                            "write the full host path, e.g. \"/usr\"",
                        ))
                    }
                })
                .collect()
        };
        let relative = |key: &str, list: Vec<String>| -> Result<Vec<PathBuf>, ProfileError> {
            list.into_iter()
                .map(|p| {
                    let path = PathBuf::from(&p);
                    let ok = !p.is_empty()
                        && path.is_relative()
                        && !p.split('/').any(|c| c == ".." || c == ".");
                    if ok {
                        Ok(path)
                    } else {
                        Err(invalid(
                            key,
                            format!("{p:?} is not a path inside the workspace"),
                            "write a workspace-relative path without `..`, e.g. \".git/hooks\"",
                        ))
                    }
                })
                .collect()
        };
        let s = raw.sandbox;
        for name in &s.env {
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(invalid(
                    "sandbox.env",
                    format!("{name:?} is not an environment variable name"),
                    "list names like \"LANG\" or \"RUST_LOG\"",
                ));
            }
        }
        if !crate::sandbox::seccomp::is_known(&s.seccomp) {
            return Err(invalid(
                "sandbox.seccomp",
                format!("no compiled seccomp filter is named {:?}", s.seccomp),
                &format!(
                    "use one of: {}",
                    crate::sandbox::seccomp::known_names().join(", ")
                ),
            ));
        }
        for d in &s.require {
            if s.allow_degraded.contains(d) {
                return Err(invalid(
                    "sandbox.require",
                    format!("{:?} is also in sandbox.allow_degraded", d.name()),
                    "keep it in one of the two lists",
                ));
            }
            if *d == Degradation::LandlockNet {
                return Err(invalid(
                    "sandbox.require",
                    "\"landlock-net\": landlock TCP rules are not used (the job's network namespace is the network fence, docs/network.md)".into(),
                    "remove \"landlock-net\" from sandbox.require",
                ));
            }
        }
        let egress = match (s.network, raw.network) {
            (NetworkMode::None, None) => None,
            (NetworkMode::None, Some(_)) => {
                return Err(invalid(
                    "network",
                    "is set but sandbox.network is \"none\", so it would have no effect".into(),
                    "set sandbox.network = \"allowlist\", or remove the [network] table",
                ));
            }
            (NetworkMode::Allowlist, None) => {
                return Err(invalid(
                    "sandbox.network",
                    "is \"allowlist\" but there is no [network] table".into(),
                    "add [network] allow = [\"pypi.org\", …] with the hosts the jobs need",
                ));
            }
            (NetworkMode::Allowlist, Some(n)) => Some(
                crate::net::allow::Egress::from_raw(n)
                    .map_err(|e| invalid(e.key, e.message, e.fix))?,
            ),
        };
        let sandbox = SandboxProfile {
            egress,
            read_only: absolute("sandbox.read_only", s.read_only)?,
            read_write: absolute("sandbox.read_write", s.read_write)?,
            hidden: relative("sandbox.hidden", s.hidden)?,
            protected: relative("sandbox.protected", s.protected)?,
            network: s.network,
            seccomp: s.seccomp,
            env_passthrough: s.env,
            allow_degraded: s.allow_degraded,
            require: s.require,
            protect_scan_depth: s.protect_scan_depth,
            protect_scan_entries: s.protect_scan_entries,
            workspace_read_only: false,
        };
        if sandbox.protect_scan_entries == 0
            || sandbox.protect_scan_entries > MAX_PROTECT_SCAN_ENTRIES
        {
            return Err(invalid(
                "sandbox.protect_scan_entries",
                format!("{} is out of range", sandbox.protect_scan_entries),
                &format!(
                    "use 1 to {MAX_PROTECT_SCAN_ENTRIES} (default {})",
                    default_protect_scan_entries()
                ),
            ));
        }
        if sandbox.protect_scan_depth > 64 {
            return Err(invalid(
                "sandbox.protect_scan_depth",
                format!("{} is out of range", sandbox.protect_scan_depth),
                &format!("use 0 to 64 (default {})", default_protect_scan_depth()),
            ));
        }

        let l = raw.limits;
        let size = |key: &str, v: Option<RawSize>| -> Result<Option<u64>, ProfileError> {
            match v {
                None => Ok(None),
                Some(RawSize::Bytes(n)) => Ok(Some(n)),
                Some(RawSize::Text(t)) => parse_size(&t)
                    .map(Some)
                    .map_err(|m| invalid(key, m, "write a size such as \"1GiB\"")),
            }
        };
        let memory = size("limits.memory", l.memory)?;
        if memory.is_some_and(|m| m < (4 << 20)) {
            return Err(invalid(
                "limits.memory",
                "is below 4MiB, too small to start a shell".into(),
                "raise it, e.g. \"256MiB\"",
            ));
        }
        if l.pids == Some(0) {
            return Err(invalid(
                "limits.pids",
                "is 0, which would not even allow the command itself".into(),
                "use a number such as 512",
            ));
        }
        if let Some(cpu) = l.cpu
            && !(cpu.is_finite() && (0.01..=1024.0).contains(&cpu))
        {
            return Err(invalid(
                "limits.cpu",
                format!("{cpu} is not a number of cores between 0.01 and 1024"),
                "write e.g. 1.0 for one full core",
            ));
        }
        let wall_time = match l.wall_time {
            None => DEFAULT_WALL_TIME,
            Some(t) => parse_duration(&t)
                .map_err(|m| invalid("limits.wall_time", m, "write e.g. \"10m\""))?,
        };
        if wall_time.is_zero() {
            return Err(invalid(
                "limits.wall_time",
                "is zero".into(),
                "write a positive duration, e.g. \"10m\"",
            ));
        }
        let nofile = l.nofile.unwrap_or(DEFAULT_NOFILE);
        if !(16..=1 << 20).contains(&nofile) {
            return Err(invalid(
                "limits.nofile",
                format!("{nofile} is outside 16..=1048576"),
                "use e.g. 1024",
            ));
        }
        // `output.max_bytes` and `limits.output` are one setting under two names; both is fine
        // only when they agree.
        let output_bytes = match (
            size("limits.output", l.output)?,
            size("output.max_bytes", raw.output.max_bytes)?,
        ) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "output.max_bytes",
                    format!("{b} differs from limits.output {a}; they are the same cap"),
                    "set only one of them",
                ));
            }
            (a, b) => a.or(b).unwrap_or(DEFAULT_OUTPUT_BYTES),
        };
        if output_bytes == 0 {
            return Err(invalid(
                "limits.output",
                "is 0, which would drop every byte of output".into(),
                "write a size such as \"1MiB\"",
            ));
        }
        let limits = Limits {
            memory,
            pids: l.pids,
            cpu: l.cpu,
            wall_time,
            nofile,
            output_bytes,
        };
        let output = OutputProfile {
            strip_control: raw.output.strip_control.unwrap_or(false),
            detect_binary: raw.output.detect_binary.unwrap_or(true),
        };
        let artifacts = match raw.artifacts {
            None => None,
            Some(a) => {
                let dir = relative("artifacts.dir", vec![a.dir])?.remove(0);
                let max_files = a.max_files.unwrap_or(DEFAULT_ARTIFACT_FILES);
                if !(1..=MAX_ARTIFACT_FILES).contains(&max_files) {
                    return Err(invalid(
                        "artifacts.max_files",
                        format!("{max_files} is outside 1..={MAX_ARTIFACT_FILES}"),
                        "use e.g. 64",
                    ));
                }
                let positive = |key: &str, v: Option<RawSize>, default: u64| {
                    let n = size(key, v)?.unwrap_or(default);
                    if n == 0 {
                        Err(invalid(
                            key,
                            "is 0".into(),
                            "write a size such as \"64MiB\"",
                        ))
                    } else {
                        Ok(n)
                    }
                };
                let max_file_bytes = positive(
                    "artifacts.max_file_bytes",
                    a.max_file_bytes,
                    DEFAULT_ARTIFACT_FILE_BYTES,
                )?;
                let max_total_bytes = positive(
                    "artifacts.max_total_bytes",
                    a.max_total_bytes,
                    DEFAULT_ARTIFACT_TOTAL_BYTES,
                )?;
                let ttl = match a.ttl {
                    None => DEFAULT_ARTIFACT_TTL,
                    Some(t) => parse_duration(&t)
                        .map_err(|m| invalid("artifacts.ttl", m, "write e.g. \"1h\""))?,
                };
                if ttl.is_zero() {
                    return Err(invalid(
                        "artifacts.ttl",
                        "is zero: every id would be expired when it is handed out".into(),
                        "write a positive duration, e.g. \"1h\"",
                    ));
                }
                Some(ArtifactsProfile {
                    dir,
                    max_files,
                    max_file_bytes,
                    max_total_bytes,
                    ttl,
                })
            }
        };

        let compile = if check_examples {
            Policy::compile
        } else {
            Policy::compile_unchecked
        };
        let policy = compile(raw.profile.default_verdict, raw.rule).map_err(|source| {
            ProfileError::Rules {
                file: file.to_string(),
                source,
            }
        })?;
        Ok(Profile {
            name: raw.profile.name,
            description: raw.profile.description,
            source: file.to_string(),
            sandbox,
            limits,
            artifacts,
            output,
            policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[profile]\nname = \"t\"\ndefault_verdict = \"allow\"\n";

    #[test]
    fn embedded_default_loads() {
        let p = Profile::embedded_default().unwrap();
        assert_eq!(p.name, "default");
        assert_eq!(p.limits.memory, Some(1 << 30));
        assert_eq!(p.limits.pids, Some(512));
        assert_eq!(p.limits.wall_time, Duration::from_secs(600));
    }

    #[test]
    fn embedded_default_examples_all_pass() {
        // The runtime skips this check for the embedded text (see embedded_default).
        Profile::parse(EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME).unwrap();
    }

    #[test]
    fn second_layers_degrade_by_default_and_only_fences_fail_closed() {
        let p = Profile::embedded_default().unwrap().sandbox;
        // Behind the job's own pid and network namespaces: runs without, reported.
        assert!(p.may_run_without(Degradation::LandlockScope));
        // The only fence for what they guard: never without the operator's word.
        assert!(!p.may_run_without(Degradation::Cgroup));
        assert!(!p.may_run_without(Degradation::Landlock));
        let text = format!("{MINIMAL}[sandbox]\nrequire = [\"landlock-scope\"]\n");
        let strict = Profile::parse(&text, "t.toml").unwrap().sandbox;
        assert!(!strict.may_run_without(Degradation::LandlockScope));
        assert_eq!(strict.degradable(), vec![Degradation::LandlockNet]);
        let text = format!("{MINIMAL}[sandbox]\nallow_degraded = [\"cgroup\"]\n");
        let lenient = Profile::parse(&text, "t.toml").unwrap().sandbox;
        assert!(lenient.may_run_without(Degradation::Cgroup));
    }

    #[test]
    fn require_rejects_contradictions_and_unused_layers() {
        let both = format!(
            "{MINIMAL}[sandbox]\nrequire = [\"landlock-scope\"]\nallow_degraded = [\"landlock-scope\"]\n"
        );
        let e = Profile::parse(&both, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("sandbox.require") && e.contains("one of the two"),
            "{e}"
        );
        let net = format!("{MINIMAL}[sandbox]\nrequire = [\"landlock-net\"]\n");
        let e = Profile::parse(&net, "t.toml").unwrap_err().to_string();
        assert!(e.contains("not used"), "{e}");
        let typo = format!("{MINIMAL}[sandbox]\nrequire = [\"landlock-scop\"]\n");
        assert!(Profile::parse(&typo, "t.toml").is_err());
    }

    #[test]
    fn minimal_profile_gets_safe_defaults() {
        let p = Profile::parse(MINIMAL, "t.toml").unwrap();
        assert!(p.sandbox.allow_degraded.is_empty());
        assert_eq!(p.sandbox.network, NetworkMode::None);
        assert!(p.sandbox.protected.contains(&PathBuf::from(".git/hooks")));
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let text = format!("{MINIMAL}[sandbox]\nnetwrok = \"none\"\n");
        let e = Profile::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("netwrok"), "{e}");
    }

    #[test]
    fn the_shipped_online_profile_loads_with_its_registries() {
        let p = Profile::parse(
            include_str!("../policies/online.toml"),
            "policies/online.toml",
        )
        .unwrap();
        let e = p.sandbox.egress.unwrap();
        assert!(e.rule_for("files.pythonhosted.org", 443).is_some());
        assert!(e.rule_for("github.com", 22).is_some());
        assert!(e.rule_for("evil.example", 443).is_none());
    }

    #[test]
    fn an_allowlist_is_parsed_with_its_hosts() {
        let text = format!(
            "{MINIMAL}[sandbox]\nnetwork = \"allowlist\"\n[network]\nallow = [\"pypi.org\", \"*.crates.io\", \"github.com:22\"]\nhosts = {{ \"pypi.org\" = \"10.1.2.3\" }}\nidle_timeout = \"1m\"\n"
        );
        let p = Profile::parse(&text, "t.toml").unwrap();
        assert_eq!(p.sandbox.network, NetworkMode::Allowlist);
        let e = p.sandbox.egress.unwrap();
        assert!(e.rule_for("static.crates.io", 443).is_some());
        assert_eq!(e.idle_timeout, Duration::from_secs(60));
        let bad = format!("{MINIMAL}[network]\nallow = [\"a.org\"]\nextra = 1\n");
        let err = Profile::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn artifacts_and_output_guard_are_parsed_with_defaults() {
        let p = Profile::parse(MINIMAL, "t.toml").unwrap();
        assert!(p.artifacts.is_none());
        assert_eq!(p.output, OutputProfile::default());
        let text = format!(
            "{MINIMAL}[artifacts]\ndir = \"out/files\"\nttl = \"2s\"\n[output]\nmax_bytes = \"1MiB\"\nstrip_control = true\n"
        );
        let p = Profile::parse(&text, "t.toml").unwrap();
        let a = p.artifacts.unwrap();
        assert_eq!(a.dir, PathBuf::from("out/files"));
        assert_eq!(a.ttl, Duration::from_secs(2));
        assert_eq!(a.max_files, DEFAULT_ARTIFACT_FILES);
        assert_eq!(p.limits.output_bytes, 1 << 20);
        assert!(p.output.strip_control && p.output.detect_binary);
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        for (body, key) in [
            ("[limits]\nmemory = \"lots\"\n", "limits.memory"),
            ("[limits]\nmemory = \"1MiB\"\n", "limits.memory"),
            ("[limits]\npids = 0\n", "limits.pids"),
            ("[limits]\nwall_time = \"0s\"\n", "limits.wall_time"),
            ("[limits]\ncpu = -1.0\n", "limits.cpu"),
            ("[sandbox]\nread_only = [\"usr\"]\n", "sandbox.read_only"),
            ("[sandbox]\nhidden = [\"../x\"]\n", "sandbox.hidden"),
            ("[sandbox]\nenv = [\"A=B\"]\n", "sandbox.env"),
            ("[sandbox]\nseccomp = \"nope\"\n", "sandbox.seccomp"),
            (
                "[sandbox]\nprotect_scan_entries = 0\n",
                "sandbox.protect_scan_entries",
            ),
            (
                "[sandbox]\nprotect_scan_depth = 65\n",
                "sandbox.protect_scan_depth",
            ),
            ("[artifacts]\ndir = \"../out\"\n", "artifacts.dir"),
            ("[artifacts]\ndir = \"/tmp/out\"\n", "artifacts.dir"),
            ("[artifacts]\ndir = \"out/../..\"\n", "artifacts.dir"),
            ("[artifacts]\ndir = \"\"\n", "artifacts.dir"),
            (
                "[artifacts]\ndir = \"out\"\nmax_files = 0\n",
                "artifacts.max_files",
            ),
            (
                "[artifacts]\ndir = \"out\"\nttl = \"0s\"\n",
                "artifacts.ttl",
            ),
            (
                "[artifacts]\ndir = \"out\"\nmax_file_bytes = 0\n",
                "artifacts.max_file_bytes",
            ),
            (
                "[limits]\noutput = \"1MiB\"\n[output]\nmax_bytes = \"2MiB\"\n",
                "output.max_bytes",
            ),
            ("[output]\nmax_bytes = 0\n", "limits.output"),
            ("[network]\nallow = [\"pypi.org\"]\n", "network"),
            ("[sandbox]\nnetwork = \"allowlist\"\n", "sandbox.network"),
            (
                "[sandbox]\nnetwork = \"allowlist\"\n[network]\nallow = [\"10.0.0.1\"]\n",
                "network.allow",
            ),
            (
                "[sandbox]\nnetwork = \"allowlist\"\n[network]\nallow = [\"a.org\"]\nhosts = { \"b.org\" = \"10.0.0.1\" }\n",
                "network.hosts",
            ),
        ] {
            let text = format!("{MINIMAL}{body}");
            let e = Profile::parse(&text, "p.toml").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("fix:"), "{key}: {e}");
        }
    }
}
