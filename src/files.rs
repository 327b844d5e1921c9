//! Files in and out of a session's workspace (`/v1/files`): every path is resolved strictly
//! beneath the workspace, one directory at a time, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`; the last component is then acted on with an
//! `*at` call on its parent's descriptor (which never follows it). The daemon's side (routes,
//! caps, audit) is `server::files`; `docs/sessions.md` explains the model.
//!
//! Must never: follow a symlink or leave the workspace on any component, read a FIFO, device
//! or a file with a second hard link, write through an existing inode (an upload goes to a new
//! file that is renamed over the name, so a hard link to a file elsewhere is replaced, never
//! written), or touch a path the profile hides (`sandbox.hidden`) or protects
//! (`sandbox.protected`, writes only).

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::artifacts::open::{self as strict, Refusal};
use crate::sandbox::sys::{self, Errno, RESOLVE_STRICT};

/// Longest path accepted (bytes), and longest component (`NAME_MAX`).
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// Directory levels accepted in one path.
const MAX_DEPTH: usize = 64;
/// Prefix of an upload's file until it is complete (then renamed onto its name).
pub const UPLOAD_PREFIX: &str = ".execbox-upload-";

/// Why a files request is refused. Each maps to one stable code (`code`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("bad path: {0}")]
    BadPath(String),
    #[error("no such file or directory")]
    NotFound,
    #[error("the path is a symlink or crosses one; symlinks are never followed")]
    Symlink,
    #[error("it is not a regular file (a directory, FIFO, socket or device)")]
    NotRegular,
    #[error("it is a directory; list it with GET /v1/files?dir=PATH")]
    IsDirectory,
    #[error("a component of the path is not a directory")]
    NotDirectory,
    #[error("it has more than one hard link, so it may be a name for a file elsewhere")]
    HardLink,
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("larger than the limit of {max} bytes ([files] max_file_bytes)")]
    TooLarge { max: u64 },
    #[error("the profile hides {0} (sandbox.hidden)")]
    Hidden(String),
    #[error(
        "the profile protects {0} (sandbox.protected): it is read-only for the session; git settings go in the session's ~/.gitconfig"
    )]
    Protected(String),
    #[error(
        "{0} is part of a git directory, which the files API never writes (the host runs git here: docs/sessions.md); change it with git in a job, and put git settings in the session's ~/.gitconfig"
    )]
    GitDir(String),
    #[error("it changed while it was opened")]
    Changed,
    #[error("{op}: {errno}")]
    Io { op: &'static str, errno: String },
}

impl FileError {
    pub fn code(&self) -> &'static str {
        match self {
            FileError::BadPath(_) => "bad_path",
            FileError::NotFound => "not_found",
            FileError::Symlink => "symlink",
            FileError::NotRegular => "not_regular",
            FileError::IsDirectory => "is_directory",
            FileError::NotDirectory => "not_directory",
            FileError::HardLink => "hard_link",
            FileError::NotEmpty => "not_empty",
            FileError::TooLarge { .. } => "too_large",
            FileError::Hidden(_) => "hidden",
            FileError::Protected(_) | FileError::GitDir(_) => "protected",
            FileError::Changed => "changed",
            FileError::Io { .. } => "io",
        }
    }

    fn io(op: &'static str, e: Errno) -> FileError {
        match e.0 {
            libc::ENOENT => FileError::NotFound,
            // RESOLVE_NO_SYMLINKS answers ELOOP, RESOLVE_BENEATH EXDEV.
            libc::ELOOP | libc::EXDEV => FileError::Symlink,
            libc::ENOTDIR => FileError::NotDirectory,
            libc::EISDIR => FileError::IsDirectory,
            libc::ENOTEMPTY | libc::EEXIST => FileError::NotEmpty,
            _ => FileError::Io {
                op,
                errno: e.describe(),
            },
        }
    }

    fn from_refusal(r: Refusal) -> FileError {
        match r {
            Refusal::Symlink => FileError::Symlink,
            Refusal::NotRegular => FileError::NotRegular,
            Refusal::HardLink => FileError::HardLink,
            Refusal::Missing => FileError::NotFound,
            Refusal::Changed => FileError::Changed,
            Refusal::BadName => FileError::BadPath("not a plain name".into()),
            other => FileError::Io {
                op: "open",
                errno: other.to_string(),
            },
        }
    }
}

/// A checked workspace-relative path: plain components only (no empty, `.`, `..`, NUL), within
/// the length limits. Its components are exactly the entries walked, so prefix comparisons with
/// the profile's hidden and protected paths are sound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<String>,
}

impl RelPath {
    /// Parses the path of a request (`/v1/files/{path}` after the prefix, percent-decoded
    /// here). The empty path is the workspace itself (only meaningful for listings).
    pub fn parse(raw: &str) -> Result<RelPath, FileError> {
        let bad = |m: &str| FileError::BadPath(m.to_string());
        let decoded = percent_decode(raw).ok_or_else(|| bad("invalid percent-encoding"))?;
        if decoded.len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        if decoded.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if decoded.starts_with('/') {
            return Err(bad("absolute; paths are relative to the workspace"));
        }
        let mut parts = Vec::new();
        for p in decoded.split('/') {
            match p {
                // A trailing slash (or `a//b`) adds nothing; refuse rather than guess.
                "" if decoded.is_empty() => {}
                "" => return Err(bad("has an empty component (`//` or a trailing `/`)")),
                "." | ".." => return Err(bad("has a `.` or `..` component")),
                p if p.len() > MAX_NAME => return Err(bad("has a component over 255 bytes")),
                p => parts.push(p.to_string()),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(bad("deeper than 64 directories"));
        }
        Ok(RelPath { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path as the API shows it (`a/b/c`, empty for the workspace).
    pub fn display(&self) -> String {
        self.parts.join("/")
    }

    /// `self` is `p` or beneath it.
    fn within(&self, p: &Path) -> bool {
        let mut it = self.parts.iter();
        p.components().all(|c| match c {
            std::path::Component::Normal(n) => it.next().is_some_and(|x| n == x.as_str()),
            _ => false,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn cstr(s: &str) -> Result<CString, FileError> {
    CString::new(s).map_err(|_| FileError::BadPath("contains a NUL byte".into()))
}

/// The profile's paths the files API honours, as the sandbox does.
#[derive(Debug, Clone, Default)]
pub struct Fences {
    /// Never read, written, listed or removed (`sandbox.hidden`).
    pub hidden: Vec<PathBuf>,
    /// Never written or removed (`sandbox.protected`).
    pub protected: Vec<PathBuf>,
}

impl Fences {
    fn check_read(&self, p: &RelPath) -> Result<(), FileError> {
        match self.hidden.iter().find(|h| p.within(h)) {
            Some(h) => Err(FileError::Hidden(h.display().to_string())),
            None => Ok(()),
        }
    }

    fn check_write(&self, p: &RelPath) -> Result<(), FileError> {
        self.check_read(p)?;
        match self.protected.iter().find(|h| p.within(h)) {
            Some(h) => Err(FileError::Protected(h.display().to_string())),
            None => Ok(()),
        }
    }

    fn hides(&self, dir: &RelPath, name: &str) -> bool {
        let mut p = dir.clone();
        p.parts.push(name.to_string());
        self.check_read(&p).is_err()
    }
}

/// One session's workspace, opened (its own path is the daemon's, not a request's).
pub struct Workspace {
    root: OwnedFd,
    /// New files and directories are given to the workspace's owner and group (as root).
    owner: Option<(u32, u32)>,
    fences: Fences,
}

/// A directory entry as listed.
#[derive(Debug, serde::Serialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other` (FIFO, socket, device).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    pub mode: String,
    pub mtime: i64,
}

impl Workspace {
    /// Opens `path` (a directory the daemon made or an operator chose; not a symlink).
    /// `chown`: give what the API creates to the workspace's owner (the daemon runs as root).
    pub fn open(path: &Path, fences: Fences, chown: bool) -> Result<Workspace, FileError> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| FileError::BadPath("workspace".into()))?;
        let fd = sys::open(
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )
        .map(sys::owned)
        .map_err(|e| FileError::io("open the workspace", e))?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| FileError::io("stat", e))?;
        Ok(Workspace {
            root: fd,
            owner: chown.then_some((st.st_uid, st.st_gid)),
            fences,
        })
    }

    /// The directory `parts` beneath the root, opened for reading; with `create`, missing
    /// directories are made (mode 0755, the workspace's owner).
    fn dir(&self, parts: &[String], create: bool) -> Result<OwnedFd, FileError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let mut cur = sys::openat2(self.root.as_fd(), c".", flags, RESOLVE_STRICT)
            .map_err(|e| FileError::io("open", e))?;
        for p in parts {
            let name = cstr(p)?;
            let next = match sys::openat2(cur.as_fd(), &name, flags, RESOLVE_STRICT) {
                Err(Errno(libc::ENOENT)) if create => {
                    match sys::mkdirat(cur.as_fd(), &name, 0o755) {
                        Ok(()) | Err(Errno(libc::EEXIST)) => {}
                        Err(e) => return Err(FileError::io("mkdir", e)),
                    }
                    let fd = sys::openat2(cur.as_fd(), &name, flags, RESOLVE_STRICT)
                        .map_err(|e| FileError::io("open", e))?;
                    self.give(&fd)?;
                    fd
                }
                // With O_DIRECTORY a final symlink answers ENOTDIR: say what it is.
                Err(Errno(libc::ENOTDIR))
                    if sys::lstatat(cur.as_fd(), &name)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK) =>
                {
                    return Err(FileError::Symlink);
                }
                r => r.map_err(|e| FileError::io("open", e))?,
            };
            cur = next;
        }
        Ok(cur)
    }

    fn give(&self, fd: &OwnedFd) -> Result<(), FileError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(fd, Some(uid), Some(gid)).map_err(|e| FileError::Io {
                op: "chown",
                errno: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn split(p: &RelPath) -> Result<(&[String], &str), FileError> {
        match p.parts.split_last() {
            Some((last, dirs)) => Ok((dirs, last.as_str())),
            None => Err(FileError::IsDirectory),
        }
    }

    /// Refuses a write or removal in a git directory: at or beneath any `.git` entry (a
    /// directory or a gitfile), and a code-bearing entry (`config`, `hooks/`…, the list of
    /// `sandbox::protect::scan`) of a directory that has a `HEAD` (a bare-looking repository,
    /// or one being made). Jobs may change these under `sandbox::protect`'s two layers, which
    /// see every job's changes; an upload between jobs would be seen by neither.
    fn check_git(&self, p: &RelPath) -> Result<(), FileError> {
        use crate::sandbox::protect::scan::{CODE_DIRS, CODE_FILES};
        for (i, comp) in p.parts.iter().enumerate() {
            let shown = || p.parts[..=i].join("/");
            if comp == ".git" {
                return Err(FileError::GitDir(shown()));
            }
            if CODE_FILES.contains(&comp.as_str()) || CODE_DIRS.contains(&comp.as_str()) {
                let head = match self.dir(&p.parts[..i], false) {
                    Ok(d) => sys::lstatat(d.as_fd(), c"HEAD").is_ok(),
                    Err(FileError::NotFound) => false,
                    Err(e) => return Err(e),
                };
                if head {
                    return Err(FileError::GitDir(shown()));
                }
            }
        }
        Ok(())
    }

    /// Opens a regular file with one link for reading; returns it and its size.
    pub fn open_read(&self, p: &RelPath) -> Result<(File, u64), FileError> {
        self.fences.check_read(p)?;
        let (dirs, name) = Workspace::split(p)?;
        let dir = self.dir(dirs, false)?;
        // A directory is worth its own answer (the artifact rules call it "not regular").
        if let Ok(st) = sys::lstatat(dir.as_fd(), &cstr(name)?)
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        {
            return Err(FileError::IsDirectory);
        }
        let (f, id) =
            strict::open_regular(dir.as_fd(), name.as_bytes()).map_err(FileError::from_refusal)?;
        Ok((f, id.size))
    }

    /// Starts an upload to `p`: a new file next to it, renamed onto it by [`Upload::commit`].
    pub fn create(&self, p: &RelPath, mode: u32, max: u64) -> Result<Upload, FileError> {
        self.fences.check_write(p)?;
        self.check_git(p)?;
        let (dirs, name) = Workspace::split(p)?;
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(FileError::BadPath(format!(
                "names starting with {UPLOAD_PREFIX} are the API's own"
            )));
        }
        let dir = self.dir(dirs, true)?;
        // A directory cannot be replaced by a file: refuse now, before the upload is read.
        if sys::lstatat(dir.as_fd(), &cstr(name)?)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            return Err(FileError::IsDirectory);
        }
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| FileError::Io {
            op: "random",
            errno: e.to_string(),
        })?;
        let tmp: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = cstr(&format!("{UPLOAD_PREFIX}{tmp}"))?;
        let fd = sys::openat2_create(
            dir.as_fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            (mode & 0o777) as libc::mode_t,
            RESOLVE_STRICT,
        )
        .map_err(|e| FileError::io("create", e))?;
        let up = Upload {
            dir,
            tmp,
            name: cstr(name)?,
            file: Some(File::from(fd)),
            hash: Sha256::new(),
            size: 0,
            max,
        };
        if let Some(f) = &up.file {
            self.give(&OwnedFd::from(f.try_clone().map_err(|e| {
                FileError::Io {
                    op: "dup",
                    errno: e.to_string(),
                }
            })?))?;
            // The umask must not narrow what was asked for.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(|e| FileError::Io {
                    op: "chmod",
                    errno: e.to_string(),
                })?;
        }
        Ok(up)
    }

    /// Checks that `p` may be removed and names what it is (`file`, `dir`…).
    pub fn check_remove(&self, p: &RelPath) -> Result<&'static str, FileError> {
        self.fences.check_write(p)?;
        self.check_git(p)?;
        let (dirs, name) = Workspace::split(p)?;
        let dir = self.dir(dirs, false)?;
        let st = sys::lstatat(dir.as_fd(), &cstr(name)?).map_err(|e| FileError::io("stat", e))?;
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(FileError::BadPath(format!(
                "names starting with {UPLOAD_PREFIX} are the API's own"
            )));
        }
        Ok(kind(&st))
    }

    /// Removes the entry `p` itself: a file, symlink (not its target), FIFO or empty directory.
    pub fn remove(&self, p: &RelPath) -> Result<(), FileError> {
        self.check_remove(p)?;
        let (dirs, name) = Workspace::split(p)?;
        let dir = self.dir(dirs, false)?;
        let name = cstr(name)?;
        let st = sys::lstatat(dir.as_fd(), &name).map_err(|e| FileError::io("stat", e))?;
        let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        sys::unlinkat(dir.as_fd(), &name, flags).map_err(|e| FileError::io("remove", e))
    }

    /// The entries of the directory `p` (sorted by name), at most `max`; the bool says whether
    /// more were left out. Hidden entries are not listed; the API's unfinished uploads neither.
    pub fn list(&self, p: &RelPath, max: usize) -> Result<(Vec<Entry>, bool), FileError> {
        self.fences.check_read(p)?;
        let dir = self.dir(&p.parts, false)?;
        let names = strict::list(dir.as_fd()).map_err(FileError::from_refusal)?;
        let mut out = Vec::new();
        let mut truncated = false;
        let mut names: Vec<String> = names
            .into_iter()
            .filter_map(|n| String::from_utf8(n).ok())
            .filter(|n| !n.starts_with(UPLOAD_PREFIX) && !self.fences.hides(p, n))
            .collect();
        names.sort();
        for n in names {
            if out.len() >= max {
                truncated = true;
                break;
            }
            let Ok(st) = sys::lstatat(dir.as_fd(), &cstr(&n)?) else {
                continue;
            };
            out.push(Entry {
                kind: kind(&st),
                size: st.st_size as u64,
                mode: format!("{:04o}", st.st_mode & 0o7777),
                mtime: st.st_mtime,
                name: n,
            });
        }
        Ok((out, truncated))
    }
}

fn kind(st: &libc::stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// An upload in progress: written to a new file, hashed as it goes; removed unless committed.
pub struct Upload {
    dir: OwnedFd,
    tmp: CString,
    name: CString,
    file: Option<File>,
    hash: Sha256,
    size: u64,
    max: u64,
}

impl Upload {
    /// Appends `chunk`; refuses once the file would pass the cap.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(FileError::TooLarge { max: self.max });
        }
        self.hash.update(chunk);
        let Some(f) = self.file.as_mut() else {
            return Err(FileError::Changed);
        };
        f.write_all(chunk).map_err(|e| FileError::Io {
            op: "write",
            errno: e.to_string(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The SHA-256 of what was written, lower-case hex.
    pub fn sha256(&self) -> String {
        self.hash
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Flushes the file to disk (before its audit record is written).
    pub fn sync(&mut self) -> Result<(), FileError> {
        match &self.file {
            Some(f) => f.sync_all().map_err(|e| FileError::Io {
                op: "fsync",
                errno: e.to_string(),
            }),
            None => Err(FileError::Changed),
        }
    }

    /// Renames the file onto its name: the name now refers to the new file (an existing file,
    /// symlink or hard link there is replaced, never written through; a directory refuses).
    pub fn commit(mut self) -> Result<(), FileError> {
        self.file = None;
        sys::renameat(self.dir.as_fd(), &self.tmp, &self.name)
            .map_err(|e| FileError::io("rename", e))?;
        self.tmp = CString::default();
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = sys::unlinkat(self.dir.as_fd(), &self.tmp, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        let fences = Fences {
            hidden: vec!["secret.env".into(), "secret-dir".into()],
            protected: vec![".git/hooks".into(), ".git/config".into()],
        };
        let w = Workspace::open(d.path(), fences, false).unwrap();
        (d, w)
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn put(w: &Workspace, path: &str, data: &[u8]) -> Result<(), FileError> {
        let mut u = w.create(&p(path), 0o644, 1 << 20)?;
        u.write(data)?;
        u.sync()?;
        u.commit()
    }

    #[test]
    fn paths_are_plain_relative_components() {
        for bad in [
            "/etc/passwd",
            "..",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "%2e%2e/x",
            "a%00b",
            "%zz",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(p("a%20b/c.txt").display(), "a b/c.txt");
        assert_eq!(p("a%2Fb").display(), "a/b");
        assert!(p("").is_root());
        assert!(RelPath::parse(&"a/".repeat(65)).is_err());
    }

    #[test]
    fn upload_download_list_delete_round_trip() {
        let (d, w) = ws();
        put(&w, "sub/dir/f.txt", b"hello").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("sub/dir/f.txt")).unwrap(),
            b"hello"
        );
        let (mut f, size) = w.open_read(&p("sub/dir/f.txt")).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!((s.as_str(), size), ("hello", 5));
        put(&w, "sub/dir/f.txt", b"again").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("sub/dir/f.txt")).unwrap(),
            b"again"
        );
        let (entries, truncated) = w.list(&p("sub/dir"), 10).unwrap();
        assert!(!truncated);
        assert_eq!(entries.len(), 1, "no leftover upload files: {entries:?}");
        assert_eq!(
            (entries[0].name.as_str(), entries[0].kind),
            ("f.txt", "file")
        );
        assert!(matches!(
            w.open_read(&p("sub")),
            Err(FileError::IsDirectory)
        ));
        assert!(matches!(w.remove(&p("sub/dir")), Err(FileError::NotEmpty)));
        w.remove(&p("sub/dir/f.txt")).unwrap();
        w.remove(&p("sub/dir")).unwrap();
        assert!(matches!(
            w.open_read(&p("sub/dir/f.txt")),
            Err(FileError::NotFound)
        ));
    }

    #[test]
    fn symlinks_hardlinks_and_fifos_are_refused_beside_a_plain_file() {
        let (d, w) = ws();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("target"), b"outside").unwrap();
        std::fs::write(d.path().join("plain"), b"ok").unwrap();
        symlink(outside.path(), d.path().join("ln")).unwrap();
        symlink(outside.path().join("target"), d.path().join("fl")).unwrap();
        std::fs::hard_link(outside.path().join("target"), d.path().join("hard")).unwrap();
        let fifo = CString::new(d.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(
            std::process::Command::new("mkfifo")
                .arg(d.path().join("fifo"))
                .status()
                .unwrap()
                .code(),
            Some(0),
            "{fifo:?}"
        );
        assert!(w.open_read(&p("plain")).is_ok());
        assert!(matches!(
            w.open_read(&p("ln/target")),
            Err(FileError::Symlink)
        ));
        assert!(matches!(w.open_read(&p("fl")), Err(FileError::Symlink)));
        assert!(matches!(w.open_read(&p("hard")), Err(FileError::HardLink)));
        assert!(matches!(
            w.open_read(&p("fifo")),
            Err(FileError::NotRegular)
        ));
        // Writes through a symlinked directory are refused; a write onto a hard link replaces
        // the name and leaves the other file alone.
        assert!(matches!(put(&w, "ln/new", b"x"), Err(FileError::Symlink)));
        assert!(!outside.path().join("new").exists());
        put(&w, "hard", b"replaced").unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("target")).unwrap(),
            b"outside"
        );
        put(&w, "fl", b"replaced").unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("target")).unwrap(),
            b"outside"
        );
        // Removing a symlink removes the link, not what it points at.
        symlink(outside.path().join("target"), d.path().join("fl2")).unwrap();
        w.remove(&p("fl2")).unwrap();
        assert!(outside.path().join("target").exists());
    }

    #[test]
    fn the_cap_refuses_and_leaves_nothing_behind() {
        let (d, w) = ws();
        let mut u = w.create(&p("big"), 0o644, 10).unwrap();
        u.write(b"0123456789").unwrap();
        assert!(matches!(
            u.write(b"x"),
            Err(FileError::TooLarge { max: 10 })
        ));
        drop(u);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn git_directories_are_never_written() {
        let (d, w) = ws();
        std::fs::create_dir_all(d.path().join("sub/.git")).unwrap();
        std::fs::create_dir_all(d.path().join("bare.git/refs")).unwrap();
        std::fs::write(d.path().join("bare.git/HEAD"), b"ref: refs/heads/main").unwrap();
        for bad in [
            ".git/config",
            ".git/objects/x",
            ".git",
            "sub/.git/hooks/pre-commit",
            "bare.git/config",
            "bare.git/hooks/post-checkout",
            "bare.git/info/attributes",
        ] {
            assert!(
                matches!(
                    put(&w, bad, b"x"),
                    Err(FileError::GitDir(_) | FileError::Protected(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            w.remove(&p("sub/.git")),
            Err(FileError::GitDir(_))
        ));
        // Beside them: a file named config where no repository is, and a work-tree file.
        put(&w, "app/config", b"port = 1").unwrap();
        put(&w, "sub/README", b"r").unwrap();
        put(&w, "bare.git/description", b"d").unwrap();
    }

    #[test]
    fn hidden_and_protected_paths_are_fenced() {
        let (d, w) = ws();
        std::fs::write(d.path().join("secret.env"), b"k").unwrap();
        std::fs::create_dir_all(d.path().join(".git/hooks")).unwrap();
        std::fs::write(d.path().join(".git/config"), b"[core]").unwrap();
        assert!(matches!(
            w.open_read(&p("secret.env")),
            Err(FileError::Hidden(_))
        ));
        assert!(matches!(
            put(&w, "secret-dir/x", b""),
            Err(FileError::Hidden(_))
        ));
        assert!(matches!(
            put(&w, ".git/hooks/pre-commit", b"#!/bin/sh"),
            Err(FileError::Protected(_))
        ));
        assert!(matches!(
            put(&w, ".git/config", b""),
            Err(FileError::Protected(_))
        ));
        assert!(matches!(
            w.remove(&p(".git/config")),
            Err(FileError::Protected(_))
        ));
        // Reading a protected file is fine; a sibling outside the git directory is writable.
        assert!(w.open_read(&p(".git/config")).is_ok());
        put(&w, "description", b"d").unwrap();
        let (root, _) = w.list(&p(""), 100).unwrap();
        assert!(root.iter().all(|e| e.name != "secret.env"), "{root:?}");
        assert!(root.iter().any(|e| e.name == ".git"));
    }
}
