//! The tamper-evident audit log: an append-only JSON Lines file whose records form a SHA-256
//! hash chain (see `docs/audit.md`).
//!
//! - [`chain`]: the record format, the hash and the [`Event`] types.
//! - [`writer`]: [`AuditLog`] appends, fsyncs and rotates; [`AuditHandle`] shares it.
//! - [`verify`]: walks the chain across rotated files and names the first broken link.
//! - [`tail`]: renders records for a terminal with control characters made visible, and
//!   reads records after a given seq (for the operator socket).
//!
//! What this module must never do: report an append as done before the record is durable, or
//! count a record in the chain that did not fully reach the file. Callers act only after
//! [`AuditLog::append`] returns `Ok`; when it returns an error they must not act (the daemon
//! refuses the job).
//!
//! What it does not guarantee: someone who can write the file can rewrite the whole chain, and
//! records removed from the end leave no broken link. Ship records off-host or keep the last
//! hash elsewhere to cover that.

pub mod bound;
pub mod chain;
pub mod tail;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use chain::{Approval, Event, GENESIS, LineHash};
pub use verify::{Break, BreakKind, Report, verify};
pub use writer::{AuditHandle, AuditLog, RotationPolicy, archive_dir, log_files};

/// Where the daemon writes by default, and what `execbox audit` reads by default.
pub const DEFAULT_PATH: &str = "/var/log/execbox/audit.jsonl";

/// Why the audit log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit log directory for {} does not exist; create it (mode 0700, owned by the daemon's user) or configure another path",
        .path.display()
    )]
    MissingDir { path: PathBuf },
    #[error("opening audit log {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "refusing audit log {path}: mode {mode:04o} lets group or others write it; fix: chmod 600 {path}",
        path = .path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("reading audit log {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot continue the chain of audit log {path}: its last record {detail}; run `execbox audit verify {path}`, then move the file aside to start a new chain",
        path = .path.display()
    )]
    Resume { path: PathBuf, detail: String },
    #[error("writing audit log {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rotating audit log {}", .path.display())]
    Rotate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding an audit record")]
    Encode(#[source] serde_json::Error),
    #[error("invalid audit rotation policy: {0}")]
    Policy(&'static str),
    #[error("audit log state lost: an append panicked; restart the daemon")]
    Poisoned,
}

impl AuditError {
    /// A stable code for the wire (the daemon's refusal), separate from this type.
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Write { .. } | AuditError::Rotate { .. } => "audit_write_failed",
            AuditError::Encode(_) => "audit_encode_failed",
            AuditError::Poisoned => "audit_unavailable",
            _ => "audit_open_failed",
        }
    }
}
