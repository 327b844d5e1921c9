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
    let mut r = (&file).take(identity.size + 1);
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
    // Written to while it was read (a job of the session still running): the hash may mix
    // two versions, so the file is not registered.
    let after = crate::sandbox::sys::fstat(file.as_fd()).map_err(|_| Refusal::Unreadable)?;
    if open::Identity::of(&after) != identity {
        return Err(Refusal::Changed);
    }
    Ok((identity, hex(&h.finalize())))
}

/// Why [`serve_verified`] stopped before the last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("the bytes read differ from the registered size or SHA-256")]
    Mismatch,
    #[error("the file could not be read")]
    Unreadable,
    #[error("the client went away")]
    Gone,
}

/// Streams exactly `size` bytes of `file` to `send` while hashing them, and holds the last
/// chunk back until the bytes read match `sha256` (hex): a file changed after registration
/// (or while being served) never reaches the client whole, so the `x-execbox-sha256` header
/// cannot vouch for other bytes; the client sees a response shorter than its Content-Length.
/// `send` returns false when the client is gone. Blocking.
pub fn serve_verified(
    file: std::fs::File,
    size: u64,
    sha256: &str,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), ServeError> {
    let mut h = Sha256::new();
    let mut r = file.take(size + 1);
    let mut read = 0u64;
    let mut held: Option<Vec<u8>> = None;
    loop {
        let mut buf = vec![0u8; 256 << 10];
        let n = r.read(&mut buf).map_err(|_| ServeError::Unreadable)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        read += n as u64;
        if read > size {
            return Err(ServeError::Mismatch);
        }
        h.update(&buf);
        if let Some(prev) = held.replace(buf)
            && !send(prev)
        {
            return Err(ServeError::Gone);
        }
    }
    if read != size || hex(&h.finalize()) != sha256 {
        return Err(ServeError::Mismatch);
    }
    match held.map(send) {
        Some(false) => Err(ServeError::Gone),
        _ => Ok(()),
    }
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
///
/// A file a later job of the same session lists again unchanged (same name, identity and
/// hash) keeps its id, and its expiry is renewed: re-listing does not grow the registry. A
/// name registered again with other content replaces its old entry (whose file can never be
/// served again). Each session holds at most its quota of ids (`sessions.max_artifacts`).
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<String, Entry>,
    /// (session, name) → id.
    by_name: HashMap<(String, Vec<u8>), String>,
    /// Ids held per session.
    per_session: HashMap<String, usize>,
}

/// 144 bits from the OS RNG, URL-safe.
fn new_file_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b)?;
    Ok(format!("f_{}", URL_SAFE_NO_PAD.encode(b)))
}

impl Registry {
    /// Gives each found file an id owned by `session`, valid for `ttl` from `now`. Files beyond
    /// the session's `quota` (`session_quota`), [`MAX_REGISTERED`] (`registry_full`) or for
    /// which the RNG fails are moved to the skipped list.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        session: &str,
        job: &str,
        workspace: &Path,
        cfg: &ArtifactsProfile,
        collected: &mut Collected,
        now: Instant,
        quota: usize,
    ) -> Vec<Listed> {
        let expires = now + cfg.ttl;
        let mut listed = Vec::new();
        for f in std::mem::take(&mut collected.found) {
            let key = (session.to_string(), f.name.clone());
            // The same file listed again: same id, renewed.
            if let Some(id) = self.by_name.get(&key)
                && let Some(e) = self.entries.get_mut(id)
                && e.identity == f.identity
                && e.sha256 == f.sha256
                && e.workspace == workspace
                && e.dir == cfg.dir
            {
                e.expires = e.expires.max(expires);
                listed.push(Listed {
                    file_id: id.clone(),
                    name: String::from_utf8_lossy(&f.name).into_owned(),
                    size: e.size,
                    sha256: e.sha256.clone(),
                });
                continue;
            }
            // The name now holds other content: its old id can never be served again.
            if let Some(old) = self.by_name.remove(&key) {
                self.drop_entry(&old);
            }
            let held = self.per_session.get(session).copied().unwrap_or(0);
            let refused = if held >= quota {
                Some("session_quota")
            } else if self.entries.len() >= MAX_REGISTERED {
                Some("registry_full")
            } else {
                None
            };
            let id = match (refused, new_file_id()) {
                (None, Ok(id)) => id,
                (why, _) => {
                    collected.skipped_total += 1;
                    if collected.skipped.len() < MAX_SKIPPED_LISTED {
                        collected.skipped.push(Skipped {
                            name: String::from_utf8_lossy(&f.name).into_owned(),
                            reason: why.unwrap_or("registry_full"),
                        });
                    }
                    continue;
                }
            };
            listed.push(Listed {
                file_id: id.clone(),
                name: String::from_utf8_lossy(&f.name).into_owned(),
                size: f.identity.size,
                sha256: f.sha256.clone(),
            });
            *self.per_session.entry(session.to_string()).or_default() += 1;
            self.by_name.insert(key, id.clone());
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

    fn drop_entry(&mut self, id: &str) {
        let Some(e) = self.entries.remove(id) else {
            return;
        };
        let key = (e.session, e.name);
        if self.by_name.get(&key).is_some_and(|i| i == id) {
            self.by_name.remove(&key);
        }
        if let Some(n) = self.per_session.get_mut(&key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_session.remove(&key.0);
            }
        }
    }

    /// Drops expired ids and those whose session is gone (`live` says which sessions exist).
    pub fn purge(&mut self, now: Instant, live: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now || !live(&e.session))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.drop_entry(&id);
        }
    }

    /// Ids `session` holds now.
    pub fn held_by(&self, session: &str) -> usize {
        self.per_session.get(session).copied().unwrap_or(0)
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
        let l = r.register("s_1", "j_1", ws.path(), &cfg(), &mut c, now, 8);
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
        let id = r.register("s", "j", ws.path(), &cfg(), &mut c, now, 8)[0]
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

    /// Issue 15 item 13: rewritten in place with the same size and its mtime put back, the
    /// file kept its inode, size and mtime; it was served under the old `x-execbox-sha256`.
    #[test]
    fn a_same_size_rewrite_with_its_mtime_restored_is_not_served() {
        let ws = tempfile::tempdir().unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a"), b"abc").unwrap();
        std::fs::write(out.join("b"), b"def").unwrap();
        let mtime = std::fs::metadata(out.join("a"))
            .unwrap()
            .modified()
            .unwrap();
        let mut c = collect(ws.path(), &cfg());
        let mut r = Registry::default();
        let now = Instant::now();
        let l = r.register("s", "j", ws.path(), &cfg(), &mut c, now, 8);
        let entry = |name: &str| {
            let id = &l.iter().find(|x| x.name == name).unwrap().file_id;
            r.get(id, now).unwrap().clone()
        };
        let (a, b) = (entry("a"), entry("b"));
        // A later ctime needs a later clock tick than the registration's.
        std::thread::sleep(Duration::from_millis(20));
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(out.join("a"))
                .unwrap();
            f.write_all(b"xyz").unwrap();
            f.set_modified(mtime).unwrap();
        }
        let st = std::fs::metadata(out.join("a")).unwrap();
        assert_eq!(
            (st.len(), st.modified().unwrap()),
            (3, mtime),
            "the attack's premise"
        );
        assert_eq!(
            open_registered(&a).unwrap_err(),
            FetchError::Changed(Refusal::Changed)
        );
        // Positive control: the untouched file is served, every byte verified.
        let mut got = Vec::new();
        let f = open_registered(&b).unwrap();
        serve_verified(f, b.size, &b.sha256, |c| {
            got.extend(c);
            true
        })
        .unwrap();
        assert_eq!(got, b"def");
    }

    /// The check at open is not the last word: bytes that change after it (a job still
    /// writing) are hashed while served, and the last chunk is held back unless they match.
    #[test]
    fn bytes_changed_after_the_open_never_reach_the_client_whole() {
        let ws = tempfile::tempdir().unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let big = cfg_big();
        let data = vec![7u8; 600 << 10];
        std::fs::write(out.join("a"), &data).unwrap();
        let mut c = collect(ws.path(), &big);
        let mut r = Registry::default();
        let now = Instant::now();
        let id = r.register("s", "j", ws.path(), &big, &mut c, now, 8)[0]
            .file_id
            .clone();
        let e = r.get(&id, now).unwrap().clone();
        let serve = || {
            let f = open_registered(&e).unwrap();
            let mut got = Vec::new();
            let res = serve_verified(f, e.size, &e.sha256, |c| {
                got.extend(c);
                true
            });
            (res, got)
        };
        let (res, got) = serve();
        assert_eq!((res, got.len()), (Ok(()), data.len()), "positive control");
        // Opened (and checked) first, then rewritten in place before the bytes are read.
        let f = open_registered(&e).unwrap();
        {
            use std::io::{Seek, Write};
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(out.join("a"))
                .unwrap();
            w.seek(std::io::SeekFrom::Start(500 << 10)).unwrap();
            w.write_all(b"evil").unwrap();
        }
        let mut got = Vec::new();
        let res = serve_verified(f, e.size, &e.sha256, |c| {
            got.extend(c);
            true
        });
        assert_eq!(res, Err(ServeError::Mismatch));
        assert!(
            got.len() < data.len(),
            "{} bytes reached the client",
            got.len()
        );
    }

    fn cfg_big() -> ArtifactsProfile {
        ArtifactsProfile {
            max_file_bytes: 1 << 20,
            max_total_bytes: 2 << 20,
            ..cfg()
        }
    }

    /// Issue 15 item 18: every job re-registered every artifact under a new id, with no
    /// per-session bound on the shared registry.
    #[test]
    fn relisted_files_keep_their_ids_and_a_session_holds_at_most_its_quota() {
        let ws = tempfile::tempdir().unwrap();
        let out = ws.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a"), b"1").unwrap();
        let mut r = Registry::default();
        let now = Instant::now();
        let reg = |r: &mut Registry, session: &str, quota: usize| {
            let mut c = collect(ws.path(), &cfg());
            let l = r.register(session, "j", ws.path(), &cfg(), &mut c, now, quota);
            (l, c.skipped)
        };
        let (first, _) = reg(&mut r, "s", 2);
        for _ in 0..5 {
            let (again, skipped) = reg(&mut r, "s", 2);
            assert_eq!(again, first, "an unchanged file keeps its id");
            assert!(skipped.is_empty());
        }
        assert_eq!((r.len(), r.held_by("s")), (1, 1));
        // New names fill the quota; the next is skipped, and another session is unaffected.
        std::fs::write(out.join("b"), b"2").unwrap();
        std::fs::write(out.join("c"), b"3").unwrap();
        let _ = std::fs::remove_file(out.join("a"));
        let (l, skipped) = reg(&mut r, "s", 2);
        let names: Vec<_> = l.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(
            skipped
                .iter()
                .map(|x| (x.name.as_str(), x.reason))
                .collect::<Vec<_>>(),
            [("c", "session_quota")]
        );
        assert_eq!(r.held_by("s"), 2);
        let (other, skipped) = reg(&mut r, "t", 2);
        assert_eq!((other.len(), skipped.len()), (2, 0), "positive control");
        // A name rewritten with other content replaces its entry (the old id is gone).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(out.join("b"), b"22").unwrap();
        let (l2, _) = reg(&mut r, "s", 2);
        let b2 = l2.iter().find(|x| x.name == "b").unwrap();
        assert_ne!(b2.file_id, l[0].file_id);
        assert!(r.get(&l[0].file_id, now).is_none());
        assert_eq!(r.held_by("s"), 2);
        r.purge(now, |s| s != "s");
        assert_eq!((r.held_by("s"), r.held_by("t")), (0, 2));
    }
}
