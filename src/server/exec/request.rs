//! The `POST /v1/exec` body as the client sends it (strict: unknown fields are refused) and
//! the checks on its parts that need no server state: `cwd` inside the workspace, a clean
//! environment.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::server::api::ApiError;
use crate::units::parse_size;

/// A size as a number of bytes or a string such as "256MiB".
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(u64),
    /// JSON has one number type: `1e6` and `1000000.0` are the integer 1000000 to JSON Schema
    /// (and to many clients' encoders). Found by schemathesis.
    Number(f64),
    Text(String),
}

impl SizeValue {
    pub(super) fn bytes(&self, key: &str) -> Result<u64, ApiError> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Number(f) => whole(*f)
                .ok_or_else(|| ApiError::bad(format!("{key}: {f} is not a whole number of bytes"))),
            SizeValue::Text(t) => parse_size(t).map_err(|m| ApiError::bad(format!("{key}: {m}"))),
        }
    }
}

/// `f` as a u64 when it is a non-negative whole number in range.
pub(super) fn whole(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

/// A duration as seconds or a string such as "30s".
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum DurationValue {
    Seconds(f64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecLimits {
    pub(super) memory: Option<SizeValue>,
    /// A number (see [`SizeValue::Number`]); checked to be whole where it is used.
    pub(super) pids: Option<f64>,
    pub(super) cpu: Option<f64>,
    pub(super) output: Option<SizeValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecBody {
    pub(super) argv: Option<Vec<String>>,
    pub(super) command: Option<String>,
    pub(super) cwd: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) stdin_b64: Option<String>,
    pub(super) timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) limits: ExecLimits,
    /// Also return the combined output in the `exit` event between nonce markers.
    #[serde(default)]
    pub(super) envelope: bool,
    /// What the client's disconnect does to the job (default: `[detach] default`). Not null.
    #[serde(default, deserialize_with = "crate::server::api::no_null")]
    pub(super) on_disconnect: Option<OnDisconnect>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum OnDisconnect {
    /// The job is killed (its whole cgroup).
    Kill,
    /// The job goes on; its output is retained for `GET /v1/jobs/{id}/output`.
    Detach,
}

/// The PATH inside the sandbox (`execbox run` uses the same).
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// `cwd` must name a directory inside the workspace (relative to it, or absolute under it),
/// without `..`.
pub(super) fn inside(workspace: &Path, cwd: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(cwd);
    if p.components().any(|c| matches!(c, Component::ParentDir)) || cwd.contains('\0') {
        return Err(ApiError::bad("cwd must not contain `..`"));
    }
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace.join(p)
    };
    if !full.starts_with(workspace) {
        return Err(ApiError::bad(format!(
            "cwd must be inside the session's workspace {}",
            workspace.display()
        )));
    }
    Ok(full)
}

/// `cwd` resolved strictly beneath the workspace: lexically inside (see [`inside`]), then
/// opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from
/// the workspace, so no component is a symlink (a job can plant `scratch -> /usr`) and the
/// path shown to the operator is where the job starts. It must be a directory.
///
/// A job running at the same time could still swap a component for a symlink before the next
/// job starts there; the sandbox's mount view is the fence for that (the job then only sees
/// what its own sandbox binds).
pub(super) fn resolve_cwd(workspace: &Path, cwd: &str) -> Result<PathBuf, ApiError> {
    use crate::sandbox::sys::{self, RESOLVE_STRICT};
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let full = inside(workspace, cwd)?;
    let Ok(rel) = full.strip_prefix(workspace) else {
        return Err(ApiError::bad("cwd must be inside the session's workspace"));
    };
    // Without `.` components or doubled slashes: the path shown and hashed is the directory.
    let rel: PathBuf = rel.components().collect();
    if rel.as_os_str().is_empty() {
        return Ok(workspace.to_path_buf());
    }
    let full = workspace.join(&rel);
    let rel = rel.as_path();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).ok();
    let (Some(ws_c), Some(rel_c)) = (c(workspace), c(rel)) else {
        return Err(ApiError::bad("cwd contains a NUL byte"));
    };
    let ws = sys::open(
        &ws_c,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
    .map(sys::owned)
    .map_err(|e| {
        ApiError::bad(format!(
            "the session's workspace cannot be opened: {}",
            e.describe()
        ))
    })?;
    match sys::openat2(
        ws.as_fd(),
        &rel_c,
        libc::O_PATH | libc::O_DIRECTORY,
        RESOLVE_STRICT,
    ) {
        Ok(_) => Ok(full),
        Err(e) => {
            let why = match e.0 {
                libc::ELOOP | libc::EXDEV => {
                    "passes through a symlink; fix: give the real directory inside the workspace"
                }
                libc::ENOENT => {
                    "does not exist; fix: create it first or give an existing directory"
                }
                libc::ENOTDIR => "is not a directory",
                _ => "cannot be opened",
            };
            Err(ApiError::bad(format!(
                "cwd {cwd:?} {why} ({})",
                e.describe()
            )))
        }
    }
}

/// The clean environment: PATH, HOME, LANG, TERM, then the request's variables.
pub(super) fn environment(
    extra: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
    ];
    for (k, v) in extra {
        let valid = !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid || v.contains('\0') {
            return Err(ApiError::bad(format!(
                "env {k:?} is not a valid variable name (letters, digits and _) or its value has a NUL"
            )));
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_stays_inside_the_workspace() {
        let ws = Path::new("/srv/ws/s_1");
        assert_eq!(inside(ws, "sub").unwrap(), Path::new("/srv/ws/s_1/sub"));
        assert_eq!(
            inside(ws, "/srv/ws/s_1/a").unwrap(),
            Path::new("/srv/ws/s_1/a")
        );
        assert!(inside(ws, "../s_2").is_err());
        assert!(inside(ws, "/srv/ws/s_2").is_err());
        assert!(inside(ws, "/etc").is_err());
    }

    /// Issue 15 item 12: a cwd through a symlink out of the workspace is refused; a real
    /// directory resolves to itself.
    #[test]
    fn cwd_is_resolved_beneath_the_workspace_without_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path();
        std::fs::create_dir_all(ws.join("src/sub")).unwrap();
        std::os::unix::fs::symlink("/usr", ws.join("scratch")).unwrap();
        std::os::unix::fs::symlink("src", ws.join("link")).unwrap();
        std::fs::write(ws.join("file"), "").unwrap();
        assert_eq!(resolve_cwd(ws, "src/sub").unwrap(), ws.join("src/sub"));
        assert_eq!(resolve_cwd(ws, "").unwrap(), ws);
        assert_eq!(resolve_cwd(ws, "./").unwrap(), ws);
        assert_eq!(resolve_cwd(ws, "src/./sub//").unwrap(), ws.join("src/sub"));
        for bad in ["scratch", "scratch/bin", "link/sub", "missing", "file"] {
            let e = resolve_cwd(ws, bad).unwrap_err();
            assert!(e.body().contains("cwd"), "{bad}: {}", e.body());
        }
        let e = resolve_cwd(ws, "scratch").unwrap_err();
        assert!(e.body().contains("symlink"), "{}", e.body());
    }
}
