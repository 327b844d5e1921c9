//! Host-side filesystem access beneath the workspace that never follows a symlink: every open
//! is `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` relative to a
//! directory fd, names are single components, and files are read only after an `O_PATH` +
//! `fstat` showed them to be regular (opening a FIFO or a device could block or act on it).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::sandbox::sys::{self, Errno, RESOLVE_STRICT};

/// Largest file hashed in full; beyond it the first bytes and the size stand for the content.
const HASH_CAP: u64 = 16 << 20;

/// What kind of entry a name is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// The state of one code-bearing entry: enough to tell that it changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    File { sha256: [u8; 32], exec: bool },
    Dir,
    Symlink,
    Other,
}

pub fn cname(name: &[u8]) -> Option<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return None;
    }
    CString::new(name).ok()
}

/// Opens the workspace root itself (a canonical path the caller checked), refusing a symlink.
pub fn open_root(ws: &Path) -> Result<OwnedFd, Errno> {
    let c = CString::new(ws.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    sys::open(
        &c,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
    .map(sys::owned)
}

/// Opens a workspace-relative path (any number of components) beneath `root` as a directory.
pub fn open_dir_path(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    if rel.as_os_str().is_empty() {
        return sys::openat2(
            root,
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            RESOLVE_STRICT,
        );
    }
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    sys::openat2(
        root,
        &c,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE_STRICT,
    )
}

/// The kind of a workspace-relative path beneath `root`, without following any symlink;
/// `Err(ELOOP)` when a component on the way is a symlink, `Err(ENOENT)` when it is missing.
pub fn kind_of_path(root: BorrowedFd<'_>, rel: &Path) -> Result<Kind, Errno> {
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Errno(libc::EINVAL))?;
    let fd = sys::openat2(root, &c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_STRICT)?;
    Ok(kind(&sys::fstat(fd.as_fd())?))
}

fn kind(st: &libc::stat) -> Kind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Opens the entry `name` of `dir` as a directory (for listing).
pub fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    let c = cname(name).ok_or(Errno(libc::EINVAL))?;
    sys::openat2(
        dir,
        &c,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        RESOLVE_STRICT,
    )
}

/// Directory entries: names and their `d_type` kinds (`None`: the filesystem does not say).
pub type Entries = Vec<(Vec<u8>, Option<Kind>)>;

/// The entries of `dir` with their `d_type` kinds, without `.` and `..`, that `keep` accepts
/// (all entries count towards `budget`). Stops after `budget` entries; the bool says whether it
/// stopped early. `buf` is the `getdents64` buffer, reused across calls.
pub fn list(
    dir: BorrowedFd<'_>,
    buf: &mut [u8],
    budget: usize,
    keep: impl Fn(&[u8], Option<Kind>) -> bool,
) -> Result<(Entries, usize, bool), Errno> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    loop {
        let n = sys::getdents64(dir, buf)?;
        if n == 0 {
            return Ok((out, seen, false));
        }
        let mut b = &buf[..n];
        const NAME_AT: usize = 19;
        while b.len() >= NAME_AT {
            let reclen = u16::from_ne_bytes([b[16], b[17]]) as usize;
            if reclen < NAME_AT || reclen > b.len() {
                break;
            }
            let dtype = b[18];
            let raw = &b[NAME_AT..reclen];
            let name = &raw[..raw.iter().position(|x| *x == 0).unwrap_or(raw.len())];
            if name != b"." && name != b".." {
                if seen >= budget {
                    return Ok((out, seen, true));
                }
                seen += 1;
                let k = match dtype {
                    libc::DT_DIR => Some(Kind::Dir),
                    libc::DT_REG => Some(Kind::File),
                    libc::DT_LNK => Some(Kind::Symlink),
                    libc::DT_UNKNOWN => None,
                    _ => Some(Kind::Other),
                };
                if keep(name, k) {
                    out.push((name.to_vec(), k));
                }
            }
            b = &b[reclen..];
        }
    }
}

/// The kind of the entry `name` of `dir` (for filesystems without `d_type`).
pub fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Kind, Errno> {
    let c = cname(name).ok_or(Errno(libc::EINVAL))?;
    let fd = sys::openat2(dir, &c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_STRICT)?;
    Ok(kind(&sys::fstat(fd.as_fd())?))
}

/// Opens the regular file `name` of `dir` for reading (never a FIFO, device or symlink).
fn open_regular(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(std::fs::File, libc::stat), Errno> {
    let c = cname(name).ok_or(Errno(libc::EINVAL))?;
    let path = sys::openat2(dir, &c, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE_STRICT)?;
    let st = sys::fstat(path.as_fd())?;
    if kind(&st) != Kind::File {
        return Err(Errno(libc::EINVAL));
    }
    let fd = sys::openat2(
        dir,
        &c,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        RESOLVE_STRICT,
    )?;
    let st2 = sys::fstat(fd.as_fd())?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) || kind(&st2) != Kind::File {
        return Err(Errno(libc::EAGAIN));
    }
    Ok((std::fs::File::from(fd), st2))
}

/// Reads at most `cap` bytes of the regular file `name` of `dir`.
pub fn read_small(dir: BorrowedFd<'_>, name: &[u8], cap: u64) -> Result<Vec<u8>, Errno> {
    let (f, _) = open_regular(dir, name)?;
    let mut out = Vec::new();
    f.take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(out)
}

/// The state of the entry `name` of `dir`: a regular file is hashed.
pub fn state_at(dir: BorrowedFd<'_>, name: &[u8], kind_hint: Option<Kind>) -> Result<State, Errno> {
    let k = match kind_hint {
        Some(k) => k,
        None => kind_at(dir, name)?,
    };
    Ok(match k {
        Kind::Dir => State::Dir,
        Kind::Symlink => State::Symlink,
        Kind::Other => State::Other,
        Kind::File => {
            let (f, st) = open_regular(dir, name)?;
            let mut h = Sha256::new();
            let mut r = f.take(HASH_CAP);
            std::io::copy(&mut r, &mut h)
                .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
            h.update((st.st_size as u64).to_le_bytes());
            State::File {
                sha256: h.finalize().into(),
                exec: st.st_mode & 0o111 != 0,
            }
        }
    })
}

/// Renames `name` in `dir` to `name.execbox-quarantine-<stamp>` (never replacing anything);
/// returns the new name.
pub fn quarantine(dir: BorrowedFd<'_>, name: &[u8], stamp: &str) -> Result<Vec<u8>, Errno> {
    let old = cname(name).ok_or(Errno(libc::EINVAL))?;
    for attempt in 0..16 {
        let mut new = name.to_vec();
        new.extend_from_slice(super::QUARANTINE_MARK.as_bytes());
        new.extend_from_slice(stamp.as_bytes());
        if attempt > 0 {
            new.extend_from_slice(format!(".{attempt}").as_bytes());
        }
        let c = cname(&new).ok_or(Errno(libc::EINVAL))?;
        match sys::rename_noreplace(dir, &old, &c) {
            Ok(()) => return Ok(new),
            Err(Errno(libc::EEXIST)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno(libc::EEXIST))
}
