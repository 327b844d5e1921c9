//! Checking a chain: every line a record, `seq` consecutive, every `prev` the hash of the line
//! before it, across files in rotation order. Names the first broken link and what kind of
//! tampering most plausibly explains it.
//!
//! Reads the files once, front to back, holding one line at a time (plus the rest of the
//! stream only when it must tell a reordering from a deletion). It must never write.
//!
//! Not detectable here (see `docs/audit.md`): a chain rewritten from some point on by someone
//! who can write the files, records removed from the end, or old files removed from the
//! start. [`Report::last_hash`] is what to compare with an off-host copy.

use std::fmt;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::AuditError;
use super::chain::{GENESIS, Header, LineHash};

/// What a walk over the files found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub files: Vec<PathBuf>,
    /// Records that linked correctly before the first break (all of them when unbroken).
    pub records: u64,
    /// The first record's seq: above 1 when older files were rotated away.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The hash of the last good line: compare it with an anchor kept elsewhere.
    pub last_hash: Option<LineHash>,
    pub broken: Option<Break>,
}

/// The first place where the chain does not hold.
#[derive(Debug, Serialize)]
pub struct Break {
    pub kind: BreakKind,
    /// The first sequence number the chain cannot vouch for.
    pub seq: u64,
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A record's bytes changed after it was written.
    Edited,
    /// Records are missing (a line, or a whole rotated file).
    Deleted,
    /// A record that the writer did not write in this place.
    Inserted,
    /// Records present but out of order.
    Reordered,
    /// A line cut short (no trailing newline).
    Truncated,
    /// A line that is not a record at all.
    Unparseable,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
            BreakKind::Reordered => "reordered",
            BreakKind::Truncated => "truncated line",
            BreakKind::Unparseable => "not a record",
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain broken at seq {} ({}:{}): {}: {}",
            self.seq,
            self.file.display(),
            self.line,
            self.kind.as_str(),
            self.detail
        )
    }
}

impl Serialize for LineHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One stored line and where it is.
struct RawLine {
    bytes: Vec<u8>,
    complete: bool,
    file: usize,
    line: u64,
}

/// The lines of several files in order. A read error ends the walk (exit 125 in the CLI),
/// distinct from a broken chain.
struct Lines<'a> {
    files: &'a [PathBuf],
    idx: usize,
    reader: Option<BufReader<File>>,
    line: u64,
}

impl Iterator for Lines<'_> {
    type Item = Result<RawLine, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let path = self.files.get(self.idx)?;
            let err = |source| AuditError::Read {
                path: path.clone(),
                source,
            };
            if self.reader.is_none() {
                match File::open(path) {
                    Ok(f) => self.reader = Some(BufReader::new(f)),
                    Err(e) => return Some(Err(err(e))),
                }
                self.line = 0;
            }
            let reader = self.reader.as_mut()?;
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Err(e) => return Some(Err(err(e))),
                Ok(0) => {
                    self.reader = None;
                    self.idx += 1;
                }
                Ok(_) => {
                    self.line += 1;
                    let complete = bytes.last() == Some(&b'\n');
                    if complete {
                        bytes.pop();
                    }
                    return Some(Ok(RawLine {
                        bytes,
                        complete,
                        file: self.idx,
                        line: self.line,
                    }));
                }
            }
        }
    }
}

/// A record that passed: what the next one must link to.
struct Good {
    seq: u64,
    hash: LineHash,
    prev: LineHash,
    file: usize,
    line: u64,
}

/// Where a chain must start. A new log's first record is its anchor: seq 1, `prev` 64 zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first record must be the anchor: a chain starting later lost its oldest records
    /// (rotated away, or deleted), which is a break.
    Anchor,
    /// Any start is accepted and reported as `first_seq` (the operator said the earlier files
    /// were archived elsewhere deliberately).
    Archived,
}

/// Walks `files` (oldest first) and reports the first broken link, if any; a chain may start
/// at any seq ([`Start::Archived`]).
///
/// `Err` only when a file cannot be read; tampering is reported in [`Report::broken`].
pub fn verify(files: &[PathBuf]) -> Result<Report, AuditError> {
    verify_from(files, Start::Archived)
}

/// Like [`verify`], with [`Start::Anchor`] a chain whose first record is not seq 1 is broken
/// (kind `deleted`, at seq 1).
pub fn verify_from(files: &[PathBuf], start: Start) -> Result<Report, AuditError> {
    let mut report = Report {
        files: files.to_vec(),
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        broken: None,
    };
    let mut lines = Lines {
        files,
        idx: 0,
        reader: None,
        line: 0,
    }
    .peekable();
    let mut good: Option<Good> = None;
    let at = |kind, seq, file: usize, line, detail: String| Break {
        kind,
        seq,
        file: files[file].clone(),
        line,
        detail,
    };
    while let Some(raw) = lines.next() {
        let raw = raw?;
        let expected = good.as_ref().map_or(1, |g| g.seq + 1);
        let brk = |kind, detail| Some(at(kind, expected, raw.file, raw.line, detail));
        if !raw.complete {
            report.broken = brk(
                BreakKind::Truncated,
                format!(
                    "the line ends after {} bytes without a newline",
                    raw.bytes.len()
                ),
            );
            break;
        }
        let (header, prev) = match parse(&raw.bytes) {
            Ok(h) => h,
            Err(e) => {
                report.broken = brk(BreakKind::Unparseable, e);
                break;
            }
        };
        let hash = LineHash::of_line(&raw.bytes);
        let seq = header.seq;
        let broken = match &good {
            // The first record present: seq 1 must be the genesis; a later seq means older
            // files were rotated away, which the report shows as `first_seq`.
            None if seq == 1 && prev != GENESIS => brk(
                BreakKind::Edited,
                "the first record's prev is not 64 zeros".into(),
            ),
            None if seq != 1 && start == Start::Anchor => brk(
                BreakKind::Deleted,
                format!(
                    "the chain starts at seq {seq}, not at its anchor (seq 1): records 1..={} are missing; if the earlier files were archived deliberately, include them (oldest first) or pass --archived",
                    seq.saturating_sub(1)
                ),
            ),
            None => None,
            Some(g) => {
                let linked = prev == g.hash;
                if seq == expected && linked {
                    None
                } else if seq == expected {
                    // The next line repeating this seq and linking to the last good one
                    // means this line was slipped in; otherwise the last good line changed.
                    let next_links_past = match lines.peek() {
                        Some(Ok(n)) => {
                            parse(&n.bytes).is_ok_and(|(h, p)| h.seq == seq && p == g.hash)
                        }
                        _ => false,
                    };
                    if next_links_past {
                        brk(
                            BreakKind::Inserted,
                            format!(
                                "this record claims seq {seq} but the next line is the real one"
                            ),
                        )
                    } else {
                        Some(at(
                            BreakKind::Edited,
                            g.seq,
                            g.file,
                            g.line,
                            format!(
                                "its hash does not match the prev of seq {seq} (this record was modified, or the prev of the next one was)"
                            ),
                        ))
                    }
                } else if linked {
                    brk(
                        BreakKind::Edited,
                        format!("the record links correctly but its seq reads {seq}"),
                    )
                } else if seq > expected {
                    match appears_later(&mut lines, expected, files)? {
                        Some(place) => brk(
                            BreakKind::Reordered,
                            format!("seq {seq} comes before seq {expected}, which is at {place}"),
                        ),
                        None if expected + 1 == seq => brk(
                            BreakKind::Deleted,
                            format!("record {expected} is missing before seq {seq}"),
                        ),
                        None => brk(
                            BreakKind::Deleted,
                            format!(
                                "records {expected}..={} are missing before seq {seq}",
                                seq - 1
                            ),
                        ),
                    }
                } else if seq == g.seq && prev == g.prev {
                    // Same seq and link as the line before: that line is a forged twin of this one.
                    Some(at(
                        BreakKind::Inserted,
                        seq,
                        g.file,
                        g.line,
                        format!("a forged record claiming seq {seq} precedes the real one"),
                    ))
                } else {
                    brk(
                        BreakKind::Inserted,
                        format!("a record claiming seq {seq} appears where seq {expected} belongs"),
                    )
                }
            }
        };
        if broken.is_some() {
            report.broken = broken;
            break;
        }
        report.first_seq.get_or_insert(seq);
        good = Some(Good {
            seq,
            hash,
            prev,
            file: raw.file,
            line: raw.line,
        });
        report.records += 1;
    }
    // Only what still stands: after an `Edited` verdict on the last good line, that line is
    // not vouched for, but its position is still the best anchor we have.
    if let Some(g) = good {
        report.last_seq = Some(g.seq);
        report.last_hash = Some(g.hash);
    }
    Ok(report)
}

fn parse(bytes: &[u8]) -> Result<(Header, LineHash), String> {
    let h: Header =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid record: {e}"))?;
    let prev = LineHash::from_hex(&h.prev)
        .ok_or_else(|| format!("prev {:?} is not 64 lowercase hex digits", h.prev))?;
    Ok((h, prev))
}

/// Where the record with `seq` is later in the stream, if anywhere (consumes the stream).
fn appears_later(
    lines: &mut impl Iterator<Item = Result<RawLine, AuditError>>,
    seq: u64,
    files: &[PathBuf],
) -> Result<Option<String>, AuditError> {
    for raw in lines {
        let raw = raw?;
        if parse(&raw.bytes).is_ok_and(|(h, _)| h.seq == seq) {
            return Ok(Some(format!("{}:{}", show(&files[raw.file]), raw.line)));
        }
    }
    Ok(None)
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, RotationPolicy, writer::AuditLog};

    /// A fresh log of `n` records; returns its path and lines.
    fn log(n: usize) -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&p, RotationPolicy::default()).unwrap();
        for i in 0..n {
            log.append(&Event::Alert {
                kind: "t".into(),
                detail: format!("record {i}"),
            })
            .unwrap();
        }
        let lines = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        (dir, p, lines)
    }

    fn check(p: &Path, lines: &[String]) -> Break {
        std::fs::write(p, lines.join("\n") + "\n").unwrap();
        verify(&[p.to_path_buf()]).unwrap().broken.expect("broken")
    }

    #[test]
    fn an_untouched_log_verifies_and_reports_its_last_hash() {
        let (_d, p, lines) = log(5);
        let r = verify(&[p]).unwrap();
        assert!(r.broken.is_none());
        assert_eq!((r.records, r.first_seq, r.last_seq), (5, Some(1), Some(5)));
        assert_eq!(r.last_hash, Some(LineHash::of_line(lines[4].as_bytes())));
    }

    #[test]
    fn an_edited_byte_is_reported_at_the_edited_record() {
        let (_d, p, mut lines) = log(5);
        lines[2] = lines[2].replace("record 2", "record X");
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Edited, 3, 3), "{b}");
    }

    #[test]
    fn an_edited_seq_is_reported_as_an_edit_not_a_gap() {
        let (_d, p, mut lines) = log(5);
        lines[2] = lines[2].replace("\"seq\":3", "\"seq\":9");
        let b = check(&p, &lines);
        // Line 3's bytes changed, so line 4's prev no longer matches: the edit is at seq 3
        // either way.
        assert_eq!((b.kind, b.seq), (BreakKind::Edited, 3), "{b}");
    }

    #[test]
    fn a_deleted_line_is_reported_with_the_missing_seq() {
        let (_d, p, mut lines) = log(5);
        lines.remove(2);
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Deleted, 3, 3), "{b}");
    }

    #[test]
    fn swapped_lines_are_reported_as_reordered() {
        let (_d, p, mut lines) = log(5);
        lines.swap(1, 2);
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Reordered, 2, 2), "{b}");
    }

    #[test]
    fn a_duplicated_line_is_reported_as_inserted() {
        let (_d, p, mut lines) = log(5);
        let copy = lines[0].clone();
        lines.insert(3, copy);
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Inserted, 4, 4), "{b}");
    }

    #[test]
    fn a_well_forged_record_is_reported_as_inserted_where_it_sits() {
        let (_d, p, mut lines) = log(5);
        // Correct seq and prev for position 3: only the real seq 3 after it gives it away.
        let forged = crate::audit::chain::encode(
            3,
            "2030-01-01T00:00:00.000Z",
            &LineHash::of_line(lines[1].as_bytes()),
            &Event::DaemonStop {},
        )
        .unwrap();
        lines.insert(2, String::from_utf8(forged).unwrap());
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Inserted, 3, 3), "{b}");
    }

    #[test]
    fn a_line_cut_in_the_middle_is_reported_as_truncated() {
        let (_d, p, lines) = log(5);
        let mut text = lines[..3].join("\n") + "\n";
        text.push_str(&lines[3][..20]);
        std::fs::write(&p, text).unwrap();
        let b = verify(&[p]).unwrap().broken.unwrap();
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Truncated, 4, 4), "{b}");
    }

    #[test]
    fn garbage_is_reported_as_not_a_record() {
        let (_d, p, mut lines) = log(3);
        lines[1] = "hello".into();
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq), (BreakKind::Unparseable, 2), "{b}");
    }

    #[test]
    fn a_first_record_with_seq_1_must_link_to_genesis() {
        let (_d, p, mut lines) = log(2);
        lines[0] = lines[0].replace(&"0".repeat(64), &"1".repeat(64));
        let b = check(&p, &lines);
        assert_eq!((b.kind, b.seq), (BreakKind::Edited, 1), "{b}");
    }

    #[test]
    fn a_chain_that_starts_late_breaks_at_its_anchor_unless_archived_is_said() {
        let (_dir, p, lines) = log(6);
        std::fs::write(&p, lines[3..].join("\n") + "\n").unwrap();
        let r = verify_from(std::slice::from_ref(&p), Start::Anchor).unwrap();
        let b = r.broken.unwrap();
        assert_eq!((b.kind, b.seq, b.line), (BreakKind::Deleted, 1, 1));
        assert!(
            b.detail.contains("records 1..=3 are missing"),
            "{}",
            b.detail
        );
        // Told the older files were archived deliberately: the rest verifies.
        let r = verify_from(std::slice::from_ref(&p), Start::Archived).unwrap();
        assert!(r.broken.is_none());
        assert_eq!(r.first_seq, Some(4));
        // Control: a whole chain verifies either way.
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let r = verify_from(&[p], Start::Anchor).unwrap();
        assert!(r.broken.is_none());
    }

    #[test]
    fn a_missing_file_is_a_read_error_not_a_broken_chain() {
        let e = verify(&[PathBuf::from("/nonexistent/audit.jsonl")]).unwrap_err();
        assert!(matches!(e, AuditError::Read { .. }));
    }
}
