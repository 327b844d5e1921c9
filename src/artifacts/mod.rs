//! Artifacts: files a job leaves in its profile's `[artifacts] dir`, handed to the caller by
//! random opaque id. This module owns collecting them when a job ends (`collect`: open, check,
//! hash), the id registry with its expiry (`Registry`), and reopening a registered file for
//! download (`open_registered`). The HTTP side is `server::artifacts`.
//!
//! Only the *direct* entries of the artifacts directory are artifacts; subdirectories and their
//! contents are ignored (reported as `not_regular`). One level keeps every name a single
//! `openat2` beneath one directory fd, with nothing to walk.
//!
//! Must never: put a host path in anything it returns (an [`Entry`]'s location is private and
//! never serialised), resolve a name any other way than `open::open_regular`, or hand out a
//! file whose inode, size or mtime differ from the registered ones.

pub mod open;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use open::{Identity, Refusal};

use crate::profile::ArtifactsProfile;

/// Ids held at once across all sessions: beyond this, new artifacts are skipped
/// (`registry_full`) until old ones expire. Bounds the daemon's memory.
pub const MAX_REGISTERED: usize = 1 << 16;
/// `artifacts_skipped` lists at most this many entries (the total is always given).
const MAX_SKIPPED_LISTED: usize = 64;

/// An artifact as the `exit` event lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Listed {
    pub file_id: String,
    /// The entry's name (not a path), lossily decoded.
    pub name: String,
    pub size: u64,
    /// Hex SHA-256 of the content at registration.
    pub sha256: String,
}

/// A directory entry that was not registered, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: &'static str,
}

/// A file found by [`collect`], not yet given an id.
#[derive(Debug)]
pub struct Found {
    name: Vec<u8>,
    identity: Identity,
    sha256: String,
}

/// What [`collect`] saw in one job's artifacts directory.
#[derive(Debug, Default)]
pub struct Collected {
    pub found: Vec<Found>,
    pub skipped: Vec<Skipped>,
    pub skipped_total: usize,
}

impl Collected {
    fn skip(&mut self, name: &[u8], why: Refusal) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(Skipped {
                name: String::from_utf8_lossy(name).into_owned(),
                reason: why.code(),
            });
        }
    }
}

/// Opens, checks and hashes the regular files directly in `workspace/cfg.dir`, within the
/// profile's caps (names in byte order, so which files a cap cuts off is deterministic).
/// A missing directory is no artifacts; one that is a symlink is skipped as a whole.
/// Blocking: call from a blocking thread.
pub fn collect(workspace: &Path, cfg: &ArtifactsProfile) -> Collected {
    let mut c = Collected::default();
    let root = match open::open_root(workspace, &cfg.dir) {
        Ok(r) => r,
        Err(Refusal::Missing) => return c,
        Err(why) => {
            c.skip(b".", why);
            return c;
        }
    };
    let mut names = match open::list(root.as_fd()) {
        Ok(n) => n,
        Err(why) => {
            c.skip(b".", why);
            return c;
        }
    };
    names.sort();
    let mut total = 0u64;
    for name in names {
        if c.found.len() >= cfg.max_files {
            c.skip(&name, Refusal::TooMany);
            continue;
        }
        match hash_one(root.as_fd(), &name, cfg.max_file_bytes) {
            Ok((identity, _)) if total + identity.size > cfg.max_total_bytes => {
                c.skip(&name, Refusal::TotalExceeded);
            }
            Ok((identity, sha256)) => {
                total += identity.size;
                c.found.push(Found {
                    name,
                    identity,
                    sha256,
                });
            }
            Err(why) => c.skip(&name, why),
        }
    }
    c
}

/// Opens one entry and hashes exactly its registered size.
fn hash_one(
    root: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    max: u64,
) -> Result<(Identity, String), Refusal> {
    let (file, identity) = open::open_regular(root, name)?;
    if identity.size > max {
        return Err(Refusal::TooLarge);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = identity.size;
    let mut r = file.take(identity.size + 1);
    loop {
        let n = r.read(&mut buf).map_err(|_| Refusal::Unreadable)?;
        if n == 0 {
            break;
        }
        if n as u64 > left {
            return Err(Refusal::Changed);
        }
        left -= n as u64;
        h.update(&buf[..n]);
    }
    if left != 0 {
        return Err(Refusal::Changed);
    }
    Ok((identity, hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A registered artifact. Its location is private: nothing outside this module sees a path.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The session whose job left it: it and its ancestors may fetch it.
    pub session: String,
    pub job: String,
    pub size: u64,
    pub sha256: String,
    workspace: PathBuf,
    dir: PathBuf,
    name: Vec<u8>,
    identity: Identity,
    expires: Instant,
}

/// Opaque id → registered artifact, with expiry. Lives in the daemon's state (one lock).
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<String, Entry>,
}

/// 144 bits from the OS RNG, URL-safe.
fn new_file_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b)?;
    Ok(format!("f_{}", URL_SAFE_NO_PAD.encode(b)))
}

impl Registry {
    /// Gives each found file an id owned by `session`, valid for `ttl` from `now`. Files beyond
    /// [`MAX_REGISTERED`] (or if the RNG fails) are moved to the skipped list.
    pub fn register(
        &mut self,
        session: &str,
        job: &str,
        workspace: &Path,
        cfg: &ArtifactsProfile,
        collected: &mut Collected,
        now: Instant,
    ) -> Vec<Listed> {
        let expires = now + cfg.ttl;
        let mut listed = Vec::new();
        for f in std::mem::take(&mut collected.found) {
            let id = match new_file_id() {
                Ok(id) if self.entries.len() < MAX_REGISTERED => id,
                _ => {
                    collected.skipped_total += 1;
                    collected.skipped.push(Skipped {
                        name: String::from_utf8_lossy(&f.name).into_owned(),
                        reason: "registry_full",
                    });
                    continue;
                }
            };
            listed.push(Listed {
                file_id: id.clone(),
                name: String::from_utf8_lossy(&f.name).into_owned(),
                size: f.identity.size,
                sha256: f.sha256.clone(),
            });
            self.entries.insert(
                id,
                Entry {
                    session: session.to_string(),
                    job: job.to_string(),
                    size: f.identity.size,
                    sha256: f.sha256,
                    workspace: workspace.to_path_buf(),
                    dir: cfg.dir.clone(),
                    name: f.name,
                    identity: f.identity,
                    expires,
                },
            );
        }
        listed
    }

    /// Drops expired ids and those whose session is gone (`live` says which sessions exist).
    pub fn purge(&mut self, now: Instant, live: impl Fn(&str) -> bool) {
        self.entries
            .retain(|_, e| e.expires > now && live(&e.session));
    }

    /// The entry for `id` if it has not expired.
    pub fn get(&self, id: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(id).filter(|e| e.expires > now)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a registered artifact cannot be served now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The name no longer exists.
    #[error("the artifact no longer exists")]
    Gone,
    /// Something else is there now: a different inode, size or mtime, a symlink, a non-regular
    /// file, a second hard link.
    #[error("the artifact was replaced or changed after it was registered ({0})")]
    Changed(Refusal),
}

/// Reopens a registered artifact beneath its root and checks it is still the same file.
/// Blocking.
pub fn open_registered(e: &Entry) -> Result<std::fs::File, FetchError> {
    let fail = |why: Refusal| match why {
        Refusal::Missing => FetchError::Gone,
        other => FetchError::Changed(other),
    };
    let root = open::open_root(&e.workspace, &e.dir).map_err(fail)?;
    let (file, identity) = open::open_regular(root.as_fd(), &e.name).map_err(fail)?;
    if identity != e.identity {
        return Err(FetchError::Changed(Refusal::Changed));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> ArtifactsProfile {
        ArtifactsProfile {
            dir: "out".into(),
            max_files: 2,
            max_file_bytes: 10,
            max_total_bytes: 15,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn caps_decide_in_name_order_and_every_skip_has_a_reason() {
        let ws = tempfile::tempdir().unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a"), b"12345678").unwrap();
        std::fs::write(out.join("b"), b"12345678901").unwrap(); // over max_file_bytes
        std::fs::write(out.join("c"), b"12345678").unwrap(); // over max_total_bytes
        std::fs::write(out.join("d"), b"1234").unwrap();
        std::fs::write(out.join("e"), b"1").unwrap(); // over max_files
        let c = collect(ws.path(), &cfg());
        let found: Vec<_> = c.found.iter().map(|f| f.name.clone()).collect();
        assert_eq!(found, vec![b"a".to_vec(), b"d".to_vec()]);
        let reasons: Vec<_> = c
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("b", "too_large"),
                ("c", "total_exceeded"),
                ("e", "too_many")
            ]
        );
    }

    #[test]
    fn registered_ids_are_long_random_and_expire() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("out")).unwrap();
        std::fs::write(ws.path().join("out/a"), b"abc").unwrap();
        let mut c = collect(ws.path(), &cfg());
        let mut r = Registry::default();
        let now = Instant::now();
        let l = r.register("s_1", "j_1", ws.path(), &cfg(), &mut c, now);
        assert_eq!(l.len(), 1);
        assert_eq!(
            l[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(l[0].file_id.len() >= 2 + 24, "{}", l[0].file_id);
        let e = r.get(&l[0].file_id, now).unwrap().clone();
        assert_eq!(open_registered(&e).map(|_| ()), Ok(()));
        assert!(
            r.get(&l[0].file_id, now + Duration::from_secs(61))
                .is_none()
        );
        r.purge(now, |s| s != "s_1");
        assert!(r.is_empty(), "dropped with its session");
    }

    #[test]
    fn a_file_rewritten_or_swapped_after_registration_is_not_served() {
        let ws = tempfile::tempdir().unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a"), b"abc").unwrap();
        let mut c = collect(ws.path(), &cfg());
        let mut r = Registry::default();
        let now = Instant::now();
        let id = r.register("s", "j", ws.path(), &cfg(), &mut c, now)[0]
            .file_id
            .clone();
        let e = r.get(&id, now).unwrap().clone();
        std::fs::remove_file(out.join("a")).unwrap();
        assert_eq!(open_registered(&e).unwrap_err(), FetchError::Gone);
        std::os::unix::fs::symlink("/etc/passwd", out.join("a")).unwrap();
        assert_eq!(
            open_registered(&e).unwrap_err(),
            FetchError::Changed(Refusal::Symlink)
        );
        std::fs::remove_file(out.join("a")).unwrap();
        std::fs::write(out.join("a"), b"xyz").unwrap();
        assert_eq!(
            open_registered(&e).unwrap_err(),
            FetchError::Changed(Refusal::Changed)
        );
    }
}
