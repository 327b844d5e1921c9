//! Opening files strictly beneath a root: the artifacts directory is opened beneath the
//! workspace, and each artifact beneath that directory, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`. A name is first opened `O_PATH` (which has no
//! side effects even on a device or FIFO), checked with `fstat`, and only then reopened for
//! reading and checked again to be the same inode.
//!
//! Must never: follow a symlink, open a non-regular file for reading, or accept a name with a
//! `/` in it (an artifact is one directory entry).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::sandbox::sys::{self, Errno, RESOLVE_STRICT};

/// Why a directory entry is not an artifact, or a registered one cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the name is not a single plain file name")]
    BadName,
    #[error("it is a symlink, or its path crosses one")]
    Symlink,
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it has more than one hard link")]
    HardLink,
    #[error("it is larger than artifacts.max_file_bytes")]
    TooLarge,
    #[error("the job already left artifacts.max_files files")]
    TooMany,
    #[error("it would take the job over artifacts.max_total_bytes")]
    TotalExceeded,
    #[error("it changed while it was read")]
    Changed,
    #[error("it does not exist")]
    Missing,
    #[error("it cannot be opened or read")]
    Unreadable,
}

impl Refusal {
    /// The stable code (the `exit` event's `artifacts_skipped[].reason`).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BadName => "bad_name",
            Refusal::Symlink => "symlink",
            Refusal::NotRegular => "not_regular",
            Refusal::HardLink => "hard_link",
            Refusal::TooLarge => "too_large",
            Refusal::TooMany => "too_many",
            Refusal::TotalExceeded => "total_exceeded",
            Refusal::Changed => "changed",
            Refusal::Missing => "missing",
            Refusal::Unreadable => "unreadable",
        }
    }

    fn from_open(e: Errno) -> Refusal {
        match e.0 {
            // RESOLVE_NO_SYMLINKS answers ELOOP; O_NOFOLLOW on a final symlink too. EXDEV is
            // RESOLVE_BENEATH refusing an escape.
            libc::ELOOP | libc::EXDEV => Refusal::Symlink,
            libc::ENOENT => Refusal::Missing,
            libc::ENOTDIR => Refusal::NotRegular,
            _ => Refusal::Unreadable,
        }
    }
}

/// What identifies a file's content at registration: a swapped or rewritten file differs.
///
/// `ctime` is what catches a rewrite in place: a job can give a file back its size and mtime
/// (`touch -r`, `utimensat`), but every write or metadata change sets ctime to the kernel's
/// clock, and nothing but root changing the clock sets it back. Serving still verifies the
/// bytes against the registered hash (a write can land after this check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Identity {
    pub(super) fn of(st: &libc::stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

fn cstr(name: &[u8]) -> Result<CString, Refusal> {
    CString::new(name).map_err(|_| Refusal::BadName)
}

/// Opens `workspace/dir` as a directory (readable, for listing), strictly beneath the
/// workspace. `dir` is a validated workspace-relative path.
pub fn open_root(workspace: &Path, dir: &Path) -> Result<OwnedFd, Refusal> {
    use std::os::unix::ffi::OsStrExt;
    let ws = cstr(workspace.as_os_str().as_bytes())?;
    // The workspace itself is a path the daemon made; O_NOFOLLOW refuses it being a symlink.
    let ws = sys::open(
        &ws,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
    .map(sys::owned)
    .map_err(Refusal::from_open)?;
    let rel = cstr(dir.as_os_str().as_bytes())?;
    // O_PATH first, so a final symlink is seen as one (with O_DIRECTORY it is only ENOTDIR).
    let path = sys::openat2(
        ws.as_fd(),
        &rel,
        libc::O_PATH | libc::O_NOFOLLOW,
        RESOLVE_STRICT,
    )
    .map_err(Refusal::from_open)?;
    let st = sys::fstat(path.as_fd()).map_err(|_| Refusal::Unreadable)?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {}
        libc::S_IFLNK => return Err(Refusal::Symlink),
        _ => return Err(Refusal::NotRegular),
    }
    let fd = sys::openat2(
        ws.as_fd(),
        &rel,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE_STRICT,
    )
    .map_err(Refusal::from_open)?;
    let st2 = sys::fstat(fd.as_fd()).map_err(|_| Refusal::Unreadable)?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return Err(Refusal::Changed);
    }
    Ok(fd)
}

/// Opens the entry `name` of `root` for reading if it is a regular file with one link, and
/// returns it with its identity.
pub fn open_regular(root: BorrowedFd<'_>, name: &[u8]) -> Result<(File, Identity), Refusal> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Refusal::BadName);
    }
    let c = cstr(name)?;
    // O_PATH first: opening a FIFO or a device for reading could block or act on the device.
    let path = sys::openat2(root, &c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_STRICT)
        .map_err(Refusal::from_open)?;
    let st = sys::fstat(path.as_fd()).map_err(|_| Refusal::Unreadable)?;
    check_kind(&st)?;
    let id = Identity::of(&st);
    // Reopen for reading; O_NONBLOCK and O_NOCTTY make a file swapped in meanwhile harmless
    // to open, and the inode check below refuses it.
    let fd = sys::openat2(
        root,
        &c,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        RESOLVE_STRICT,
    )
    .map_err(Refusal::from_open)?;
    let st2 = sys::fstat(fd.as_fd()).map_err(|_| Refusal::Unreadable)?;
    check_kind(&st2)?;
    if Identity::of(&st2) != id {
        return Err(Refusal::Changed);
    }
    Ok((File::from(fd), id))
}

fn check_kind(st: &libc::stat) -> Result<(), Refusal> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFLNK => return Err(Refusal::Symlink),
        _ => return Err(Refusal::NotRegular),
    }
    // A second link may be a name for a file outside the artifacts directory (or the workspace
    // file it was linked from may change under us); either way, not an artifact.
    if st.st_nlink > 1 {
        return Err(Refusal::HardLink);
    }
    Ok(())
}

/// The names in the directory `root`, in the kernel's order (no `.`/`..`).
pub fn list(root: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Refusal> {
    let mut names = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = sys::getdents64(root, &mut buf).map_err(|_| Refusal::Unreadable)?;
        if n == 0 {
            return Ok(names);
        }
        parse_dirents(&buf[..n], &mut names);
    }
}

/// Parses `linux_dirent64` records: u64 ino, i64 off, u16 reclen, u8 type, NUL-ended name.
fn parse_dirents(mut buf: &[u8], names: &mut Vec<Vec<u8>>) {
    const NAME_AT: usize = 19;
    while buf.len() >= NAME_AT {
        let reclen = u16::from_ne_bytes([buf[16], buf[17]]) as usize;
        if reclen < NAME_AT || reclen > buf.len() {
            return;
        }
        let raw = &buf[NAME_AT..reclen];
        let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
        buf = &buf[reclen..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ws_with_out() -> (tempfile::TempDir, OwnedFd) {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("out")).unwrap();
        let root = open_root(ws.path(), Path::new("out")).unwrap();
        (ws, root)
    }

    #[test]
    fn a_regular_file_opens_and_everything_else_is_refused() {
        let (ws, root) = ws_with_out();
        let out = ws.path().join("out");
        std::fs::write(out.join("ok.txt"), b"hello").unwrap();
        std::fs::write(ws.path().join("secret"), b"s").unwrap();
        symlink("/etc/passwd", out.join("link")).unwrap();
        std::fs::hard_link(ws.path().join("secret"), out.join("hard")).unwrap();
        std::fs::create_dir(out.join("sub")).unwrap();
        let (_, id) = open_regular(root.as_fd(), b"ok.txt").unwrap();
        assert_eq!(id.size, 5);
        let refused = |n: &[u8]| open_regular(root.as_fd(), n).unwrap_err();
        assert_eq!(refused(b"link"), Refusal::Symlink);
        assert_eq!(refused(b"hard"), Refusal::HardLink);
        assert_eq!(refused(b"sub"), Refusal::NotRegular);
        assert_eq!(refused(b"../secret"), Refusal::BadName);
        assert_eq!(refused(b"/etc/passwd"), Refusal::BadName);
        assert_eq!(refused(b".."), Refusal::BadName);
        assert_eq!(refused(b"nope"), Refusal::Missing);
    }

    #[test]
    fn an_artifacts_dir_that_is_a_symlink_or_escapes_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        symlink("/etc", ws.path().join("out")).unwrap();
        assert_eq!(
            open_root(ws.path(), Path::new("out")).unwrap_err(),
            Refusal::Symlink
        );
        assert_eq!(
            open_root(ws.path(), Path::new("../..")).unwrap_err(),
            Refusal::Symlink
        );
        assert!(open_root(ws.path(), Path::new("/etc")).is_err());
    }

    #[test]
    fn listing_returns_every_name_but_dot_and_dotdot() {
        let (ws, root) = ws_with_out();
        for i in 0..300 {
            std::fs::write(ws.path().join("out").join(format!("f{i:03}")), b"").unwrap();
        }
        let mut names = list(root.as_fd()).unwrap();
        names.sort();
        assert_eq!(names.len(), 300);
        assert_eq!(names[0], b"f000");
    }
}
