//! Appending to the audit log: open (resuming the chain), write one line, fsync, rotate by size.
//!
//! Owns the invariant that the in-memory chain state (`next_seq`, `last`, `len`) only moves
//! after a record is fully written and synced. A failed write is undone by truncating the file
//! back to its previous length, so a retry after the cause is fixed continues the chain with no
//! half-written line in between. It must never follow a symlink, widen the file's mode, or
//! use a log that others can write.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::AuditError;
use super::chain::{self, Event, GENESIS, Header, LineHash};

/// When to start a new file, and how many old ones to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate before a record would make the current file larger than this.
    pub max_bytes: u64,
    /// Rotated files kept beside the log (`audit.jsonl.1` newest … `audit.jsonl.N` oldest); at
    /// least 1. An older one is moved to the archive directory, never deleted.
    pub keep: usize,
    /// Each field of a record is stored in at most this many bytes of JSON (`audit::bound`).
    pub max_field_bytes: usize,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_bytes: 64 << 20,
            keep: 10,
            max_field_bytes: super::bound::DEFAULT_FIELD_BYTES,
        }
    }
}

/// An open audit log. Not `Clone`: share it through [`AuditHandle`].
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    policy: RotationPolicy,
    file: File,
    /// Bytes of complete records in `file`; a failed write is truncated back to this.
    len: u64,
    /// A failed write could not be undone; the next append retries the truncation first.
    dirty: bool,
    next_seq: u64,
    last: LineHash,
}

/// `path.N`: the Nth most recent rotated file.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Where rotated files older than `keep` go: `<path>.archive/`, beside the log (a rename, so
/// the same file system). The daemon never deletes from it; that is an operator's decision.
pub fn archive_dir(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".archive");
    PathBuf::from(s)
}

/// Archived files, oldest first (named `<log name>.<first seq, 20 digits>`).
fn archived(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let dir = archive_dir(path);
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(|source| AuditError::Read {
            path: dir.clone(),
            source,
        })?,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.");
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let f = e.file_name();
            let f = f.to_string_lossy();
            f.strip_prefix(&prefix)
                .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// The log and its rotated siblings that exist, oldest first (the archive, then `path.N` …
/// `path.1`, `path`): the order `verify` needs. Gaps in the numbering are kept out of the list, not papered over:
/// verify then reports the missing records. Empty when there is no such directory.
pub fn log_files(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{name}.");
    let mut rotated: Vec<usize> = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(|source| AuditError::Read {
            path: dir.clone(),
            source,
        })?,
    };
    for e in entries.flatten() {
        let f = e.file_name();
        let f = f.to_string_lossy();
        if let Some(n) = f
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<usize>().ok())
        {
            rotated.push(n);
        }
    }
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let mut files = archived(path)?;
    files.extend(rotated.into_iter().map(|n| rotated_path(path, n)));
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and resumes its chain from the last
    /// record, looking at `path.1` when `path` is empty (a rotation happened just before a
    /// stop). The parent directory must exist.
    ///
    /// A last line without its newline is a write that never completed (a crash mid-append;
    /// nothing acted on it): it is cut off and an `alert` record saying so is appended, so the
    /// repair itself is on the record.
    pub fn open(path: impl Into<PathBuf>, policy: RotationPolicy) -> Result<AuditLog, AuditError> {
        let path = path.into();
        if policy.keep == 0 {
            return Err(AuditError::Policy(
                "keep must be at least 1, or rotation would delete the log",
            ));
        }
        if policy.max_bytes < 4096 {
            return Err(AuditError::Policy("max_bytes must be at least 4096"));
        }
        if policy.max_field_bytes < super::bound::MIN_FIELD_BYTES {
            return Err(AuditError::Policy("max_field_bytes must be at least 256"));
        }
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(AuditError::MissingDir { path });
        }
        let file = open_file(&path, false)?;
        let read_err = |source| AuditError::Read {
            path: path.clone(),
            source,
        };
        let mut len = file.metadata().map_err(read_err)?.len();

        let torn = torn_tail(&file, len).map_err(read_err)?;
        if let Some((start, _)) = &torn {
            // Undo the torn write so the next record starts on a fresh line.
            file.set_len(*start)
                .and_then(|()| file.sync_data())
                .map_err(|source| AuditError::Write {
                    path: path.clone(),
                    source,
                })?;
            len = *start;
        }

        let (next_seq, last) = if len > 0 {
            resume_from(&path, &file, len)?
        } else {
            let prev = rotated_path(&path, 1);
            match File::open(&prev) {
                Ok(f) => {
                    let plen = f.metadata().map_err(read_err)?.len();
                    if torn_tail(&f, plen).map_err(read_err)?.is_some() {
                        return Err(AuditError::Resume {
                            path: prev,
                            detail: "is incomplete (no trailing newline)".into(),
                        });
                    }
                    if plen == 0 {
                        (1, GENESIS)
                    } else {
                        resume_from(&prev, &f, plen)?
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, GENESIS),
                Err(source) => return Err(AuditError::Read { path: prev, source }),
            }
        };

        let mut log = AuditLog {
            path,
            policy,
            file,
            len,
            dirty: false,
            next_seq,
            last,
        };
        if let Some((start, bytes)) = torn {
            let shown: String = String::from_utf8_lossy(&bytes).chars().take(512).collect();
            log.append(&Event::Alert {
                kind: "torn_record_removed".into(),
                detail: format!(
                    "removed {} bytes of an incomplete record at offset {start} of {} (an append that never returned, so nothing acted on it): {shown}",
                    bytes.len(),
                    log.path.display()
                ),
            })?;
        }
        Ok(log)
    }

    /// Appends one record and returns its sequence number once it is on disk.
    ///
    /// Blocks for a write and an `fdatasync` (milliseconds on a disk; more on a busy one). On
    /// error nothing is counted: the chain state is unchanged and no partial line remains, so
    /// the same call can be retried once the cause (a full disk, permissions) is fixed.
    pub fn append(&mut self, event: &Event) -> Result<u64, AuditError> {
        self.append_all(std::slice::from_ref(event))
    }

    /// Appends consecutive records with one write and one `fdatasync`; returns the first's
    /// sequence number. All or nothing, like [`AuditLog::append`]. For records that belong
    /// together (a request and its verdict): one sync instead of one each.
    pub fn append_all(&mut self, events: &[Event]) -> Result<u64, AuditError> {
        self.append_all_sized(events).map(|(seq, _)| seq)
    }

    /// Like [`AuditLog::append_all`]; also returns the bytes written (for volume accounting).
    pub fn append_all_sized(&mut self, events: &[Event]) -> Result<(u64, u64), AuditError> {
        if self.dirty {
            self.undo_partial_write()
                .map_err(|source| self.write_error(source))?;
        }
        let ts = chain::timestamp(SystemTime::now());
        let (mut seq, mut last) = (self.next_seq, self.last);
        let mut batch = Vec::new();
        for event in events {
            let mut line =
                chain::encode_bounded(seq, &ts, &last, event, self.policy.max_field_bytes)
                    .map_err(AuditError::Encode)?;
            last = LineHash::of_line(&line);
            line.push(b'\n');
            batch.extend_from_slice(&line);
            seq += 1;
        }
        if self.len > 0 && self.len + batch.len() as u64 > self.policy.max_bytes {
            self.rotate()?;
        }
        // fdatasync, not fsync: it also flushes the size change a reader needs, and skips
        // timestamps nobody relies on.
        let written = self
            .file
            .write_all(&batch)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Some bytes may have landed (a short write before ENOSPC, or a failed sync):
            // cut them off so the file ends on a record boundary again.
            self.dirty = true;
            let _ = self.undo_partial_write();
            return Err(self.write_error(source));
        }
        let first = self.next_seq;
        self.len += batch.len() as u64;
        self.last = last;
        self.next_seq = seq;
        Ok((first, batch.len() as u64))
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record written (what an off-host anchor should store).
    pub fn last_hash(&self) -> LineHash {
        self.last
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_error(&self, source: std::io::Error) -> AuditError {
        AuditError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn undo_partial_write(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Moves a rotated file into the archive directory (created 0700 when missing), named
    /// after its first record's seq so that names sort in chain order. Refuses to overwrite.
    fn archive(&self, file: &Path) -> Result<(), AuditError> {
        let err = |source| AuditError::Rotate {
            path: file.to_path_buf(),
            source,
        };
        let f = File::open(file).map_err(err)?;
        let len = f.metadata().map_err(err)?.len();
        let first = first_seq(&f, len).map_err(err)?;
        let dir = archive_dir(&self.path);
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(err)?;
        }
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let target = dir.join(format!("{name}.{first:020}"));
        if target.exists() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists already", target.display()),
            )));
        }
        std::fs::rename(file, &target).map_err(err)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(err)?;
        tracing::info!(from = %file.display(), to = %target.display(), "audit file archived");
        Ok(())
    }

    /// `path.{keep-1}` → `path.{keep}` … `path` → `path.1`, then a fresh `path`. The chain
    /// state is untouched: the next record links to the last one of the file just rotated.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let err = |source| AuditError::Rotate {
            path: self.path.clone(),
            source,
        };
        // If an earlier rotation renamed `path` away but failed to create the new file, only
        // the creation is left to do (shifting again would skip a number).
        if self.path.exists() {
            // The oldest kept file goes to the archive, never away: a busy agent must not be
            // able to rotate records out of existence.
            let oldest = rotated_path(&self.path, self.policy.keep);
            if oldest.exists() {
                self.archive(&oldest)?;
            }
            for n in (1..self.policy.keep).rev() {
                match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1))
                {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1)).map_err(err)?;
        }
        let file = open_file(&self.path, true)?;
        // Make the renames and the new entry durable before a record relies on them.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        self.file = file;
        self.len = 0;
        Ok(())
    }
}

/// Opens for appending without following a symlink; creates with 0600; refuses a file that
/// group or others may write.
fn open_file(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.read(true).append(true).mode(0o600);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    // A symlink at the log path is someone steering our writes elsewhere.
    o.custom_flags(libc::O_NOFOLLOW);
    let file = o.open(path).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(AuditError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(AuditError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(file)
}

/// The next sequence number and last hash from a non-empty file that ends with a newline.
fn resume_from(path: &Path, file: &File, len: u64) -> Result<(u64, LineHash), AuditError> {
    let start = line_start(file, len - 1).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut line = vec![0; (len - 1 - start) as usize];
    file.read_exact_at(&mut line, start)
        .map_err(|source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let header: Header = serde_json::from_slice(&line).map_err(|e| AuditError::Resume {
        path: path.to_path_buf(),
        detail: format!("(at byte {start}) is not a valid record: {e}"),
    })?;
    Ok((header.seq + 1, LineHash::of_line(&line)))
}

/// The seq of a file's first record (0 when it has none that parses).
fn first_seq(file: &File, len: u64) -> std::io::Result<u64> {
    const CHUNK: usize = 8192;
    let mut head = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    while (head.len() as u64) < len && !head.contains(&b'\n') {
        let n = file.read_at(&mut buf, head.len() as u64)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<Header>(line)
        .map(|h| h.seq)
        .unwrap_or(0))
}

/// When the file does not end with a newline: where the incomplete last line starts, and
/// its bytes.
fn torn_tail(file: &File, len: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    let start = line_start(file, len)?;
    let mut bytes = vec![0; (len - start) as usize];
    file.read_exact_at(&mut bytes, start)?;
    Ok(Some((start, bytes)))
}

/// The offset just after the last `\n` before `end` (0 if none): reads backwards in chunks so
/// resuming a large log does not read all of it.
fn line_start(file: &File, end: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 8192;
    let mut pos = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while pos > 0 {
        let n = CHUNK.min(pos);
        let from = pos - n;
        let chunk = &mut buf[..n as usize];
        file.read_exact_at(chunk, from)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        pos = from;
    }
    Ok(0)
}

/// A cheap, cloneable, thread-safe handle for the daemon's tasks.
///
/// `append` takes a std mutex and blocks for the write and fsync: call it from
/// `spawn_blocking` (or accept a short block on a runtime thread). Records are serialized in
/// the order callers get the lock, which is the order of `seq`.
#[derive(Clone, Debug)]
pub struct AuditHandle {
    inner: Arc<Mutex<AuditLog>>,
}

impl AuditHandle {
    pub fn new(log: AuditLog) -> AuditHandle {
        AuditHandle {
            inner: Arc::new(Mutex::new(log)),
        }
    }

    pub fn open(path: impl Into<PathBuf>, policy: RotationPolicy) -> Result<Self, AuditError> {
        AuditLog::open(path, policy).map(AuditHandle::new)
    }

    /// See [`AuditLog::append`]: `Ok(seq)` only once the record is durable.
    pub fn append(&self, event: &Event) -> Result<u64, AuditError> {
        self.append_all(std::slice::from_ref(event))
    }

    /// See [`AuditLog::append_all`]: `Ok(first seq)` once every record is durable.
    pub fn append_all(&self, events: &[Event]) -> Result<u64, AuditError> {
        self.append_all_sized(events).map(|(seq, _)| seq)
    }

    /// See [`AuditLog::append_all_sized`]: `Ok((first seq, bytes written))`.
    pub fn append_all_sized(&self, events: &[Event]) -> Result<(u64, u64), AuditError> {
        // A panic inside append may have left the state half-updated: fail closed.
        let mut log = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        log.append_all_sized(events)
    }

    /// `(next seq, last hash)`, e.g. for `GET /v1/audit` or an anchor.
    pub fn position(&self) -> Result<(u64, LineHash), AuditError> {
        let log = self.inner.lock().map_err(|_| AuditError::Poisoned)?;
        Ok((log.next_seq, log.last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::verify;

    fn alert(n: usize) -> Event {
        Event::Alert {
            kind: "test".into(),
            detail: format!("record {n} {}", "x".repeat(100)),
        }
    }

    /// A new log with small files in a temporary directory.
    fn fresh() -> (tempfile::TempDir, PathBuf, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&p, small()).unwrap();
        (dir, p, log)
    }

    fn small() -> RotationPolicy {
        RotationPolicy {
            max_bytes: 4096,
            keep: 3,
            ..RotationPolicy::default()
        }
    }

    #[test]
    fn a_new_log_starts_at_seq_1_with_a_zero_prev_and_mode_0600() {
        let (_dir, p, mut log) = fresh();
        assert_eq!(log.append(&Event::DaemonStop {}).unwrap(), 1);
        let text = std::fs::read_to_string(&p).unwrap();
        let h: Header = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!((h.seq, h.prev), (1, "0".repeat(64)));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_batch_is_consecutive_chained_records() {
        let (_dir, p, mut log) = fresh();
        log.append(&alert(1)).unwrap();
        assert_eq!(log.append_all(&[alert(2), alert(3), alert(4)]).unwrap(), 2);
        assert_eq!(log.append(&alert(5)).unwrap(), 5);
        let report = verify(std::slice::from_ref(&p)).unwrap();
        assert!(report.broken.is_none(), "{:?}", report.broken);
        assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(5)));
        drop(log);
        let log = AuditLog::open(&p, small()).unwrap();
        assert_eq!(log.next_seq(), 6);
    }

    #[test]
    fn reopening_continues_the_chain_from_the_last_record() {
        let (_dir, p, mut log) = fresh();
        log.append(&alert(1)).unwrap();
        log.append(&alert(2)).unwrap();
        let last = log.last_hash();
        drop(log);
        let mut log = AuditLog::open(&p, small()).unwrap();
        assert_eq!((log.next_seq(), log.last_hash()), (3, last));
        assert_eq!(log.append(&alert(3)).unwrap(), 3);
        assert!(verify(&[p]).unwrap().broken.is_none());
    }

    #[test]
    fn rotation_keeps_the_chain_and_archives_beyond_keep_instead_of_deleting() {
        let (_dir, p, mut log) = fresh();
        // ~150 bytes a record, ~27 per 4 KiB file: 150 records rotate more than keep times.
        for n in 0..150 {
            log.append(&alert(n)).unwrap();
        }
        let files = log_files(&p).unwrap();
        let archived = archived(&p).unwrap();
        // keep = 3 beside the log, the rest in the archive: nothing deleted.
        assert!(archived.len() >= 2, "{files:?}");
        assert_eq!(files.len(), archived.len() + 4, "{files:?}");
        assert_eq!(files[..archived.len()], archived[..]);
        let name = archived[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, format!("audit.jsonl.{:020}", 1));
        let report = verify(&files).unwrap();
        assert!(report.broken.is_none(), "{:?}", report.broken);
        assert_eq!(report.first_seq, Some(1), "the whole chain is still there");
        assert_eq!(report.last_seq, Some(150));
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 4096);
        }
        let mode = std::fs::metadata(archive_dir(&p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_huge_field_is_stored_as_an_excerpt_and_a_digest() {
        let (_dir, p, mut log) = fresh();
        let huge = Event::Alert {
            kind: "test".into(),
            detail: "x".repeat(1 << 20),
        };
        log.append(&huge).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        // The field's cap plus the chain fields and the other (short) field.
        assert!(text.len() < 4096 + 256, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["detail"]["bytes"], 1 << 20);
        assert_eq!(v["detail"]["sha256"].as_str().unwrap().len(), 64);
        assert!(verify(&[p]).unwrap().broken.is_none());
    }

    #[test]
    fn reopening_right_after_a_rotation_resumes_from_the_rotated_file() {
        let (_dir, p, mut log) = fresh();
        log.append(&alert(1)).unwrap();
        drop(log);
        std::fs::rename(&p, rotated_path(&p, 1)).unwrap();
        let mut log = AuditLog::open(&p, small()).unwrap();
        assert_eq!(log.append(&alert(2)).unwrap(), 2);
        assert!(verify(&log_files(&p).unwrap()).unwrap().broken.is_none());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_repair_is_recorded() {
        let (_dir, p, mut log) = fresh();
        log.append(&alert(1)).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"ts\":\"half").unwrap();
        drop(f);
        let mut log = AuditLog::open(&p, small()).unwrap();
        assert_eq!(log.next_seq(), 3, "the alert about the repair took seq 2");
        log.append(&alert(3)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("torn_record_removed") && text.contains("half"));
        assert!(verify(&[p]).unwrap().broken.is_none());
    }

    #[test]
    fn refuses_a_group_writable_log_and_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = AuditLog::open(&p, small()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn refuses_a_symlink_and_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &p).unwrap();
        assert!(matches!(
            AuditLog::open(&p, small()),
            Err(AuditError::Open { .. })
        ));
        let missing = dir.path().join("nope/audit.jsonl");
        assert!(matches!(
            AuditLog::open(missing, small()),
            Err(AuditError::MissingDir { .. })
        ));
    }

    #[test]
    fn an_unparseable_last_record_stops_the_open_instead_of_starting_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "not json\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = AuditLog::open(&p, small()).unwrap_err();
        assert!(matches!(e, AuditError::Resume { .. }), "{e}");
    }

    #[test]
    fn the_handle_serializes_appends_from_many_threads_into_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let h = AuditHandle::open(&p, RotationPolicy::default()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for n in 0..10 {
                        h.append(&alert(t * 100 + n)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.position().unwrap().0, 41);
        assert!(verify(&[p]).unwrap().broken.is_none());
    }
}
