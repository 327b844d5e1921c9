//! The daemon's configuration file (`/etc/execbox/execbox.toml`): sockets, who may connect,
//! where state and workspaces live, which profiles exist, and the abuse limits.
//!
//! Parsing goes raw serde structs (`deny_unknown_fields`) → [`RawConfig::validate`] → a
//! [`Config`] that cannot be invalid. Every error names the file, the key and the fix. This
//! module never touches the filesystem beyond reading the file and listing the profiles
//! directory: creating sockets and directories is the server's job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::profile::{Profile, ProfileError};
use crate::units::{parse_duration, parse_size};

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub file: String,
    pub agent_socket: PathBuf,
    pub agent_mode: u32,
    pub agent_group: Option<u32>,
    pub operator_socket: PathBuf,
    pub allow: Allowlist,
    /// Peers allowed on the operator socket (root and the daemon's own uid always are).
    pub operator_uids: Vec<u32>,
    pub state_dir: PathBuf,
    pub workspace_root: PathBuf,
    /// Profiles by name (file stem, or `default` for the embedded one).
    pub profiles: BTreeMap<String, Profile>,
    pub default_profile: String,
    /// Profiles a session may only bind with an operator's approval.
    pub approval_profiles: Vec<String>,
    /// SHA-256 (hex) of each profile's file text, bound into approvals: an edited profile
    /// needs new approvals.
    pub profile_sha256: BTreeMap<String, String>,
    /// SHA-256 (hex) of the config file text, recorded by `daemon_start`.
    pub config_sha256: String,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    pub cgroup_parent: Option<PathBuf>,
    /// First host uid of the per-session sandbox identities (root only).
    pub sandbox_uid_base: u32,
    pub limits: ServerLimits,
    pub detach: DetachConfig,
    pub log_json: bool,
    pub sessions: SessionsConfig,
    pub pairing: PairingConfig,
    pub files: FilesConfig,
}

/// `[files]`: the bounds on `/v1/files` (files in and out of a session's workspace).
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// The largest upload; a longer body answers 413 `too_large` and leaves nothing behind.
    pub max_file_bytes: u64,
    /// Entries one listing returns at most (then `truncated: true`).
    pub max_list_entries: usize,
}

/// `[sessions]`: how root sessions come to be, and how many one agent may hold.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// A root session only from an operator's pairing code (`docs/pairing.md`); child
    /// sessions still come from their parent's token.
    pub require_pairing: bool,
    /// Live sessions of one peer uid, roots and children together (≤ `limits.max_sessions`).
    pub max_per_uid: usize,
    /// Live sessions of one lineage: a root session and all its descendants
    /// (≤ `max_per_uid`).
    pub max_per_lineage: usize,
    /// Artifact ids one session holds at once in the daemon's registry.
    pub max_artifacts: usize,
    /// As root: a session's workspace gets its owner's (the creating peer's) primary group,
    /// read-only (`2750`), so the agent's user can read what its jobs wrote
    /// (`docs/sessions.md`). `false`: `0700`, the sandbox uid's alone.
    pub owner_group: bool,
}

/// `[pairing]`: the limits on redeeming pairing codes (`docs/pairing.md`).
#[derive(Debug, Clone)]
pub struct PairingConfig {
    /// Failed redemptions per peer uid within `failure_window`; then refused until the oldest
    /// leaves the window.
    pub max_failures: u32,
    pub failure_window: Duration,
    /// Wait after the n-th failure: `backoff × 2^(n−1)`.
    pub backoff: Duration,
    /// Failures of all uids together within the window that invalidate every outstanding
    /// code and raise an alert.
    pub alert_after: u32,
    /// Outstanding codes at most.
    pub max_codes: usize,
    /// The longest `--ttl` an operator may give a code.
    pub max_ttl: Duration,
}

/// `[detach]`: what a client's disconnect does to its job, and the bounds on the output kept
/// for jobs that go on without their client (`server::retain`).
#[derive(Debug, Clone)]
pub struct DetachConfig {
    /// `default = "detach"`: requests that do not say `on_disconnect` detach.
    pub default_detach: bool,
    pub max_bytes_per_job: usize,
    pub max_bytes_per_session: usize,
    pub max_bytes_total: usize,
    /// Retained output is forgotten this long after its job ended.
    pub retention: Duration,
}

/// `[approvals]`: how long a request waits for an operator, and how many may wait.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// A pending request is refused (`approval_expired`) after this long.
    pub expiry: Duration,
    /// Pending requests per session; one more answers 429 `too_many_pending`.
    pub max_pending_per_session: usize,
}

/// `[audit]`: where the hash-chained log lives and when it rotates.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub rotation: crate::audit::RotationPolicy,
    /// Audit bytes per second one session's requests may cause (burst: 10 s worth).
    pub session_rate: u64,
    /// Audit bytes per second one peer uid's requests may cause, all its sessions together.
    pub uid_rate: u64,
}

/// SO_PEERCRED allowlist for the agent socket. Default deny.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// Every local user may connect (logged loudly at each start).
    pub open: bool,
}

impl Allowlist {
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        self.open || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// Abuse limits; every one answers a clear 4xx and leaves the daemon serving others.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_body: usize,
    pub max_jobs: usize,
    pub max_jobs_per_session: usize,
    pub max_sessions: usize,
    /// Requests per second per peer uid (token bucket, burst = 2 s worth).
    pub peer_rate: f64,
    /// Requests per second per session.
    pub session_rate: f64,
    pub token_ttl: Duration,
    /// Bad tokens from one uid before it is locked out (then backoff doubles each time).
    pub bad_token_limit: u32,
    pub bad_token_lockout: Duration,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Finished jobs kept for `GET /v1/jobs` per session.
    pub finished_jobs_kept: usize,
    /// Open connections on the agent socket, all peers together.
    pub max_connections: usize,
    /// Open connections on the agent socket per peer uid (allowed or not).
    pub max_connections_per_uid: usize,
    /// Connections the operator socket may hold; reserved, never used by agents.
    pub operator_connections: usize,
    /// A request body must arrive whole within this (after its headers).
    pub body_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}")]
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
    #[error("{file}: profile {profile}")]
    Profile {
        file: String,
        profile: String,
        #[source]
        source: Box<ProfileError>,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    sockets: RawSockets,
    #[serde(default)]
    allow: RawAllow,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    pairing: RawPairing,
    #[serde(default)]
    detach: RawDetach,
    #[serde(default)]
    files: RawFiles,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    max_file_bytes: Option<String>,
    max_list_entries: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    #[serde(default)]
    require_pairing: bool,
    max_per_uid: Option<usize>,
    max_per_lineage: Option<usize>,
    max_artifacts: Option<usize>,
    owner_group: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPairing {
    max_failures: Option<u32>,
    failure_window: Option<String>,
    backoff: Option<String>,
    alert_after: Option<u32>,
    max_codes: Option<usize>,
    max_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDetach {
    default: Option<String>,
    max_bytes_per_job: Option<String>,
    max_bytes_per_session: Option<String>,
    max_bytes_total: Option<String>,
    retention: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    expiry: Option<String>,
    max_pending_per_session: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
    max_bytes: Option<String>,
    keep: Option<usize>,
    max_field_bytes: Option<String>,
    session_rate: Option<String>,
    uid_rate: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    agent: Option<PathBuf>,
    agent_mode: Option<String>,
    agent_group: Option<String>,
    operator: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    open: bool,
    #[serde(default)]
    operator_uids: Vec<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    state_dir: Option<PathBuf>,
    workspace_root: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
    default_profile: Option<String>,
    #[serde(default)]
    approval_profiles: Vec<String>,
    cgroup_parent: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    uid_base: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body: Option<String>,
    max_jobs: Option<usize>,
    max_jobs_per_session: Option<usize>,
    max_sessions: Option<usize>,
    peer_rate: Option<f64>,
    session_rate: Option<f64>,
    token_ttl: Option<String>,
    bad_token_limit: Option<u32>,
    bad_token_lockout: Option<String>,
    header_timeout: Option<String>,
    shutdown_grace: Option<String>,
    finished_jobs_kept: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    operator_connections: Option<usize>,
    body_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    json: bool,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let mut config = raw.validate(file)?;
        config.config_sha256 = sha256_hex(text.as_bytes());
        Ok(config)
    }
}

impl RawConfig {
    pub fn validate(self, file: &str) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String, fix: &str| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
            fix: fix.to_string(),
        };
        let absolute = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                    "write an absolute path such as /run/execbox/agent.sock",
                ))
            }
        };

        // Sockets: paths only. Anything resembling a network address is refused outright.
        let agent_socket = absolute(
            "sockets.agent",
            self.sockets
                .agent
                .unwrap_or_else(|| "/run/execbox/agent.sock".into()),
        )?;
        let operator_socket = absolute(
            "sockets.operator",
            self.sockets
                .operator
                .unwrap_or_else(|| "/run/execbox/operator.sock".into()),
        )?;
        if agent_socket == operator_socket {
            return Err(invalid(
                "sockets.operator",
                "is the same path as sockets.agent".into(),
                "give the operator socket its own path, e.g. /run/execbox/operator.sock",
            ));
        }
        let agent_mode = match self.sockets.agent_mode.as_deref() {
            None => 0o660,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m & !0o770 == 0)
                .ok_or_else(|| {
                    invalid(
                        "sockets.agent_mode",
                        format!("{m:?} is not an octal mode without bits for others"),
                        "write e.g. \"0660\" (never give others access: use agent_group)",
                    )
                })?,
        };
        let agent_group = match self.sockets.agent_group.as_deref() {
            None => None,
            Some(g) => Some(resolve_group(g).ok_or_else(|| {
                invalid(
                    "sockets.agent_group",
                    format!("no group named {g:?}"),
                    "create it (groupadd --system execbox) or give a numeric gid",
                )
            })?),
        };

        // Who may connect: default deny, and an empty allowlist is a mistake, not "everyone".
        let allow = Allowlist {
            uids: self.allow.uids,
            gids: self.allow.gids,
            open: self.allow.open,
        };
        if !allow.open && allow.uids.is_empty() && allow.gids.is_empty() {
            return Err(invalid(
                "allow",
                "uids and gids are both empty, so nobody could connect".into(),
                "list the agents' users: [allow] uids = [UID, …] (`id -u USER`; or gids = [...]); `open = true` admits every local user",
            ));
        }

        let state_dir = absolute(
            "paths.state_dir",
            self.paths
                .state_dir
                .unwrap_or_else(|| "/var/lib/execbox".into()),
        )?;
        let workspace_root = absolute(
            "paths.workspace_root",
            self.paths
                .workspace_root
                .unwrap_or_else(|| state_dir.join("workspaces")),
        )?;

        let mut profiles = BTreeMap::new();
        let mut profile_sha256 = BTreeMap::new();
        match &self.paths.profiles_dir {
            None => {
                profile_sha256.insert(
                    "default".to_string(),
                    sha256_hex(crate::profile::EMBEDDED_DEFAULT.as_bytes()),
                );
                let p = Profile::embedded_default().map_err(|source| ConfigError::Profile {
                    file: file.into(),
                    profile: "default".into(),
                    source: Box::new(source),
                })?;
                profiles.insert("default".to_string(), p);
            }
            Some(dir) => {
                let dir = absolute("paths.profiles_dir", dir.clone())?;
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    invalid(
                        "paths.profiles_dir",
                        format!("cannot list {}: {e}", dir.display()),
                        "point it at a directory of profiles such as /etc/execbox/policies",
                    )
                })?;
                for e in entries.flatten() {
                    let path = e.path();
                    if path.extension().is_none_or(|x| x != "toml") {
                        continue;
                    }
                    let name = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let p = Profile::load(&path).map_err(|source| ConfigError::Profile {
                        file: file.into(),
                        profile: name.clone(),
                        source: Box::new(source),
                    })?;
                    // Read again for the hash: a profile edited between the two reads still
                    // gets a hash different from the approved one (never a stale match).
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    profile_sha256.insert(name.clone(), sha256_hex(&bytes));
                    profiles.insert(name, p);
                }
            }
        }
        let default_profile = self
            .paths
            .default_profile
            .unwrap_or_else(|| "default".into());
        let names = || profiles.keys().cloned().collect::<Vec<_>>().join(", ");
        if !profiles.contains_key(&default_profile) {
            return Err(invalid(
                "paths.default_profile",
                format!("no profile named {default_profile:?} (have: {})", names()),
                "name one of the profiles in paths.profiles_dir (file name without .toml)",
            ));
        }
        for p in &self.paths.approval_profiles {
            if !profiles.contains_key(p) {
                return Err(invalid(
                    "paths.approval_profiles",
                    format!("no profile named {p:?} (have: {})", names()),
                    "list only existing profile names",
                ));
            }
        }

        let l = self.limits;
        let size = |key: &str, v: Option<String>, default: u64| -> Result<u64, ConfigError> {
            v.map_or(Ok(default), |s| {
                parse_size(&s).map_err(|m| invalid(key, m, "write e.g. \"1MiB\""))
            })
        };
        let dur = |key: &str, v: Option<String>, default: Duration| {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(|m| invalid(key, m, "write e.g. \"30s\" or \"24h\""))
            })
        };
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(invalid(key, "is 0".into(), "use a positive number"))
            } else {
                Ok(v)
            }
        };
        let rate = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(invalid(
                    key,
                    format!("{v} is not a positive rate"),
                    "requests per second, e.g. 50",
                ))
            }
        };
        let max_jobs = positive("limits.max_jobs", l.max_jobs.unwrap_or(64))?;
        let limits = ServerLimits {
            max_body: size("limits.max_body", l.max_body, 1 << 20)? as usize,
            max_jobs,
            max_jobs_per_session: positive(
                "limits.max_jobs_per_session",
                l.max_jobs_per_session.unwrap_or(max_jobs),
            )?,
            max_sessions: positive("limits.max_sessions", l.max_sessions.unwrap_or(1024))?,
            peer_rate: rate("limits.peer_rate", l.peer_rate.unwrap_or(200.0))?,
            session_rate: rate("limits.session_rate", l.session_rate.unwrap_or(100.0))?,
            token_ttl: dur(
                "limits.token_ttl",
                l.token_ttl,
                Duration::from_secs(24 * 3600),
            )?,
            bad_token_limit: l.bad_token_limit.unwrap_or(5).max(1),
            bad_token_lockout: dur(
                "limits.bad_token_lockout",
                l.bad_token_lockout,
                Duration::from_secs(1),
            )?,
            header_timeout: dur(
                "limits.header_timeout",
                l.header_timeout,
                Duration::from_secs(10),
            )?,
            shutdown_grace: dur(
                "limits.shutdown_grace",
                l.shutdown_grace,
                Duration::from_secs(10),
            )?,
            finished_jobs_kept: l.finished_jobs_kept.unwrap_or(256),
            // Every running job holds its client's connection: the defaults grow with max_jobs.
            max_connections: positive(
                "limits.max_connections",
                l.max_connections
                    .unwrap_or_else(|| 1024.max(max_jobs.saturating_mul(2) + 64)),
            )?,
            max_connections_per_uid: positive(
                "limits.max_connections_per_uid",
                l.max_connections_per_uid
                    .unwrap_or_else(|| 128.max(max_jobs.saturating_add(64))),
            )?,
            operator_connections: positive(
                "limits.operator_connections",
                l.operator_connections.unwrap_or(32),
            )?,
            body_timeout: dur(
                "limits.body_timeout",
                l.body_timeout,
                Duration::from_secs(30),
            )?,
        };
        if limits.max_connections_per_uid > limits.max_connections {
            return Err(invalid(
                "limits.max_connections_per_uid",
                format!(
                    "{} is above limits.max_connections ({})",
                    limits.max_connections_per_uid, limits.max_connections
                ),
                "keep it at most max_connections, e.g. 64 of 1024",
            ));
        }
        for (key, d) in [
            ("limits.body_timeout", limits.body_timeout),
            ("limits.header_timeout", limits.header_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(invalid(
                    key,
                    "must be above 0 and at most 1h".into(),
                    "write e.g. \"30s\"",
                ));
            }
        }
        // One agent must not take every session slot: a uid gets a share of max_sessions, a
        // lineage (a root and its descendants) a share of its uid's.
        let max_per_uid = positive(
            "sessions.max_per_uid",
            self.sessions
                .max_per_uid
                .unwrap_or((limits.max_sessions / 4).max(1)),
        )?;
        if max_per_uid > limits.max_sessions {
            return Err(invalid(
                "sessions.max_per_uid",
                format!(
                    "{max_per_uid} is more than limits.max_sessions ({})",
                    limits.max_sessions
                ),
                "use at most limits.max_sessions, and less when several uids are allowed, so one uid cannot take every session",
            ));
        }
        let max_per_lineage = positive(
            "sessions.max_per_lineage",
            self.sessions.max_per_lineage.unwrap_or(max_per_uid.min(64)),
        )?;
        if max_per_lineage > max_per_uid {
            return Err(invalid(
                "sessions.max_per_lineage",
                format!("{max_per_lineage} is more than sessions.max_per_uid ({max_per_uid})"),
                "use at most sessions.max_per_uid",
            ));
        }
        let sessions = SessionsConfig {
            require_pairing: self.sessions.require_pairing,
            max_per_uid,
            max_per_lineage,
            max_artifacts: positive(
                "sessions.max_artifacts",
                self.sessions.max_artifacts.unwrap_or(1024),
            )?,
            owner_group: self.sessions.owner_group.unwrap_or(true),
        };
        let approvals = ApprovalsConfig {
            expiry: dur(
                "approvals.expiry",
                self.approvals.expiry,
                Duration::from_secs(600),
            )?,
            max_pending_per_session: positive(
                "approvals.max_pending_per_session",
                self.approvals.max_pending_per_session.unwrap_or(16),
            )?,
        };
        if approvals.expiry.is_zero() || approvals.expiry > Duration::from_secs(7 * 86_400) {
            return Err(invalid(
                "approvals.expiry",
                "must be above 0 and at most 7 days".into(),
                "write e.g. \"10m\"",
            ));
        }
        let d = self.detach;
        let default_detach = match d.default.as_deref() {
            None | Some("kill") => false,
            Some("detach") => true,
            Some(other) => {
                return Err(invalid(
                    "detach.default",
                    format!("{other:?} is neither \"kill\" nor \"detach\""),
                    "write default = \"kill\" (the job dies with its client) or \"detach\"",
                ));
            }
        };
        let detach = DetachConfig {
            default_detach,
            max_bytes_per_job: size("detach.max_bytes_per_job", d.max_bytes_per_job, 1 << 20)?
                as usize,
            max_bytes_per_session: size(
                "detach.max_bytes_per_session",
                d.max_bytes_per_session,
                8 << 20,
            )? as usize,
            max_bytes_total: size("detach.max_bytes_total", d.max_bytes_total, 64 << 20)? as usize,
            retention: dur("detach.retention", d.retention, Duration::from_secs(600))?,
        };
        if detach.max_bytes_per_job == 0
            || detach.max_bytes_per_job > detach.max_bytes_per_session
            || detach.max_bytes_per_session > detach.max_bytes_total
        {
            return Err(invalid(
                "detach.max_bytes_per_job",
                "the limits must satisfy 0 < per job <= per session <= total".into(),
                "e.g. max_bytes_per_job = \"1MiB\", max_bytes_per_session = \"8MiB\", max_bytes_total = \"64MiB\"",
            ));
        }
        if detach.retention.is_zero() || detach.retention > Duration::from_secs(7 * 86_400) {
            return Err(invalid(
                "detach.retention",
                "must be above 0 and at most 7 days".into(),
                "write e.g. \"10m\"",
            ));
        }
        let default_rotation = crate::audit::RotationPolicy::default();
        let audit = AuditConfig {
            path: absolute(
                "audit.path",
                self.audit
                    .path
                    .unwrap_or_else(|| crate::audit::DEFAULT_PATH.into()),
            )?,
            rotation: crate::audit::RotationPolicy {
                max_bytes: size(
                    "audit.max_bytes",
                    self.audit.max_bytes,
                    default_rotation.max_bytes,
                )?,
                keep: positive(
                    "audit.keep",
                    self.audit.keep.unwrap_or(default_rotation.keep),
                )?,
                max_field_bytes: size(
                    "audit.max_field_bytes",
                    self.audit.max_field_bytes,
                    default_rotation.max_field_bytes as u64,
                )? as usize,
            },
            session_rate: size("audit.session_rate", self.audit.session_rate, 256 << 10)?,
            uid_rate: size("audit.uid_rate", self.audit.uid_rate, 1 << 20)?,
        };
        let field = audit.rotation.max_field_bytes;
        if !(crate::audit::bound::MIN_FIELD_BYTES..=1 << 20).contains(&field) {
            return Err(invalid(
                "audit.max_field_bytes",
                format!("{field} bytes is outside 256B..=1MiB"),
                "write e.g. \"4KiB\"",
            ));
        }
        if field as u64 * 16 > audit.rotation.max_bytes {
            return Err(invalid(
                "audit.max_field_bytes",
                "is more than a sixteenth of audit.max_bytes, so a few records would fill a file"
                    .into(),
                "lower it, or raise audit.max_bytes",
            ));
        }
        for (key, v) in [
            ("audit.session_rate", audit.session_rate),
            ("audit.uid_rate", audit.uid_rate),
        ] {
            if v < 4 << 10 {
                return Err(invalid(
                    key,
                    format!("{v} bytes per second is below 4KiB, too little for one large request"),
                    "write e.g. \"256KiB\" (bytes of audit records per second)",
                ));
            }
        }
        if audit.session_rate > audit.uid_rate {
            return Err(invalid(
                "audit.session_rate",
                "is above audit.uid_rate".into(),
                "keep session_rate <= uid_rate, e.g. \"256KiB\" and \"1MiB\"",
            ));
        }
        if audit.rotation.max_bytes < 4096 {
            return Err(invalid(
                "audit.max_bytes",
                "is below 4KiB".into(),
                "write e.g. \"64MiB\"",
            ));
        }
        let p = self.pairing;
        let count = |key: &str, v: u32| {
            if v == 0 {
                Err(invalid(key, "is 0".into(), "use a positive number"))
            } else {
                Ok(v)
            }
        };
        let pairing = PairingConfig {
            max_failures: count("pairing.max_failures", p.max_failures.unwrap_or(5))?,
            failure_window: dur(
                "pairing.failure_window",
                p.failure_window,
                Duration::from_secs(3600),
            )?,
            backoff: dur("pairing.backoff", p.backoff, Duration::from_secs(1))?,
            alert_after: count("pairing.alert_after", p.alert_after.unwrap_or(10))?,
            max_codes: positive("pairing.max_codes", p.max_codes.unwrap_or(64))?,
            max_ttl: dur("pairing.max_ttl", p.max_ttl, Duration::from_secs(86_400))?,
        };
        let week = Duration::from_secs(7 * 86_400);
        for (key, d) in [
            ("pairing.failure_window", pairing.failure_window),
            ("pairing.max_ttl", pairing.max_ttl),
        ] {
            if d.is_zero() || d > week {
                return Err(invalid(
                    key,
                    "must be above 0 and at most 7 days".into(),
                    "write e.g. \"1h\"",
                ));
            }
        }
        if pairing.backoff > pairing.failure_window {
            return Err(invalid(
                "pairing.backoff",
                "is longer than pairing.failure_window".into(),
                "write e.g. \"1s\" (it doubles after each failure)",
            ));
        }
        let files = FilesConfig {
            max_file_bytes: size("files.max_file_bytes", self.files.max_file_bytes, 64 << 20)?,
            max_list_entries: positive(
                "files.max_list_entries",
                self.files.max_list_entries.unwrap_or(10_000),
            )?,
        };
        if files.max_file_bytes == 0 {
            return Err(invalid(
                "files.max_file_bytes",
                "is 0".into(),
                "write e.g. \"64MiB\"",
            ));
        }
        let sandbox_uid_base = self
            .sandbox
            .uid_base
            .unwrap_or(crate::sandbox::prepare::DEFAULT_SANDBOX_ID);
        if sandbox_uid_base < 65536 {
            return Err(invalid(
                "sandbox.uid_base",
                format!("{sandbox_uid_base} overlaps ordinary users' ids"),
                "use a high, unused range such as 2000000000",
            ));
        }
        Ok(Config {
            file: file.to_string(),
            agent_socket,
            agent_mode,
            agent_group,
            operator_socket,
            allow,
            operator_uids: self.allow.operator_uids,
            state_dir,
            workspace_root,
            profiles,
            default_profile,
            approval_profiles: self.paths.approval_profiles,
            profile_sha256,
            config_sha256: String::new(),
            approvals,
            audit,
            cgroup_parent: self.paths.cgroup_parent,
            sandbox_uid_base,
            limits,
            detach,
            log_json: self.log.json,
            sessions,
            pairing,
            files,
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A group name or numeric gid → gid, from /etc/group.
fn resolve_group(g: &str) -> Option<u32> {
    if let Ok(n) = g.parse() {
        return Some(n);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(g)).then(|| f.nth(1)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn detach_limits_are_validated() {
        let c = parse("[allow]\nuids=[1]\n").unwrap();
        assert!(!c.detach.default_detach);
        assert_eq!(c.detach.max_bytes_per_job, 1 << 20);
        let c =
            parse("[allow]\nuids=[1]\n[detach]\ndefault=\"detach\"\nretention=\"2s\"\n").unwrap();
        assert!(c.detach.default_detach);
        assert_eq!(c.detach.retention, Duration::from_secs(2));
        for bad in [
            "default=\"keep\"",
            "max_bytes_per_job=\"16MiB\"",
            "retention=\"0s\"",
            "max_bytes_total=\"1KiB\"",
        ] {
            let e = parse(&format!("[allow]\nuids=[1]\n[detach]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("key `detach.") && e.contains("fix:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn empty_allowlist_refuses_to_start() {
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("key `allow`"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse("[allow]\nuids=[1]\nopne=true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("opne"), "{e}");
    }

    #[test]
    fn defaults_are_safe() {
        let c = parse("[allow]\nuids=[1000]\n").unwrap();
        assert_eq!(c.agent_mode, 0o660);
        assert!(!c.allow.open);
        assert!(c.allow.permits(1000, 5));
        assert!(!c.allow.permits(1001, 5));
        assert_eq!(c.default_profile, "default");
    }

    #[test]
    fn world_accessible_agent_socket_is_refused() {
        let e = parse("[sockets]\nagent_mode=\"0666\"\n[allow]\nuids=[1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockets.agent_mode"), "{e}");
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        let e = parse("[sockets]\nagent=\"127.0.0.1:80\"\n[allow]\nuids=[1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockets.agent"), "{e}");
    }

    #[test]
    fn approvals_and_audit_keys_are_validated() {
        let c = parse("[allow]\nuids=[1]\n").unwrap();
        assert_eq!(c.approvals.expiry, Duration::from_secs(600));
        assert_eq!(c.audit.path, Path::new(crate::audit::DEFAULT_PATH));
        assert_eq!(c.config_sha256.len(), 64);
        for (text, key) in [
            ("[approvals]\nexpiry=\"0s\"\n", "approvals.expiry"),
            (
                "[approvals]\nmax_pending_per_session=0\n",
                "approvals.max_pending_per_session",
            ),
            ("[audit]\npath=\"audit.jsonl\"\n", "audit.path"),
            ("[audit]\nkeep=0\n", "audit.keep"),
            (
                "[audit]\nmax_field_bytes=\"100B\"\n",
                "audit.max_field_bytes",
            ),
            (
                "[audit]\nmax_bytes=\"8KiB\"\nmax_field_bytes=\"4KiB\"\n",
                "audit.max_field_bytes",
            ),
            ("[audit]\nsession_rate=\"1KiB\"\n", "audit.session_rate"),
            (
                "[audit]\nsession_rate=\"2MiB\"\nuid_rate=\"1MiB\"\n",
                "audit.session_rate",
            ),
            ("[audit]\nuid_rat=\"1MiB\"\n", "uid_rat"),
        ] {
            let e = parse(&format!("[allow]\nuids=[1]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = parse("[allow]\nuids=[1]\n[approvals]\nexpirey=\"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expirey"), "{e}");
    }

    #[test]
    fn sessions_and_pairing_keys_are_validated() {
        let c = parse("[allow]\nuids=[1]\n").unwrap();
        assert!(!c.sessions.require_pairing);
        assert_eq!(c.pairing.max_failures, 5);
        assert_eq!(c.pairing.failure_window, Duration::from_secs(3600));
        let c = parse("[allow]\nuids=[1]\n[sessions]\nrequire_pairing=true\n").unwrap();
        assert!(c.sessions.require_pairing);
        for (text, key) in [
            ("[sessions]\nrequire_paring=true\n", "require_paring"),
            ("[pairing]\nmax_failures=0\n", "pairing.max_failures"),
            ("[pairing]\nalert_after=0\n", "pairing.alert_after"),
            (
                "[pairing]\nfailure_window=\"0s\"\n",
                "pairing.failure_window",
            ),
            ("[pairing]\nmax_ttl=\"200h\"\n", "pairing.max_ttl"),
            ("[pairing]\nbackoff=\"2h\"\n", "pairing.backoff"),
            ("[pairing]\nmax_codes=0\n", "pairing.max_codes"),
            ("[pairing]\nmax_failure=3\n", "max_failure"),
        ] {
            let e = parse(&format!("[allow]\nuids=[1]\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn connection_limits_are_validated() {
        let c = parse("[allow]\nuids=[1]\n").unwrap();
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.limits.max_connections_per_uid, 128);
        let c = parse("[allow]\nuids=[1]\n[limits]\nmax_jobs=2000\n").unwrap();
        assert_eq!(c.limits.max_connections, 4064);
        assert_eq!(c.limits.max_connections_per_uid, 2064);
        assert_eq!(c.limits.operator_connections, 32);
        assert_eq!(c.limits.body_timeout, Duration::from_secs(30));
        for (text, key) in [
            ("max_connections=0", "limits.max_connections"),
            ("operator_connections=0", "limits.operator_connections"),
            (
                "max_connections=8\nmax_connections_per_uid=9",
                "limits.max_connections_per_uid",
            ),
            ("body_timeout=\"0s\"", "limits.body_timeout"),
            ("body_timeout=\"2h\"", "limits.body_timeout"),
            ("header_timeout=\"0s\"", "limits.header_timeout"),
            ("body_timout=\"1s\"", "body_timout"),
        ] {
            let e = parse(&format!("[allow]\nuids=[1]\n[limits]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn example_config_parses_once_the_allowlist_is_set() {
        let text = include_str!("../packaging/execbox.toml");
        // The example names a group that may not exist here; the rest must validate.
        let text = text.replace("agent_group = \"execbox\"", "");
        // The package installs the policies under /etc; here they are in the checkout.
        let text = text.replace(
            "\"/etc/execbox/policies\"",
            &format!("{:?}", concat!(env!("CARGO_MANIFEST_DIR"), "/policies")),
        );
        // Shipped with an empty allowlist (issue 22 item 4: it admitted uid 1000, often the
        // operator's own login): it refuses to start, naming the key and the fix.
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("allow") && e.contains("uids = ["),
            "the shipped config must refuse to start until [allow] is set: {e}"
        );
        let text = text.replacen("uids = []", "uids = [4242]", 1);
        let c = parse(&text).unwrap();
        assert!(
            c.sessions.require_pairing,
            "the packaged service pairs agents by default"
        );
    }
}
