//! Showing records to a human: one line per record (seq, time, type, key fields), optionally
//! following the live file across rotations.
//!
//! Records carry agent-controlled text (commands, reasons). Everything printed goes through
//! [`escape`], so an ANSI escape, a carriage return or a bidi override in a command is shown
//! as text and can never drive the operator's terminal. It must never print a stored byte
//! unescaped in the human format.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use super::AuditError;

/// Keys shown first, in this order; the rest follow by name.
const FIRST: &[&str] = &[
    "session",
    "job",
    "approval_id",
    "verdict",
    "rule",
    "ok",
    "peer_uid",
    "operator_uid",
    "scope",
    "code",
    "kind",
    "command",
    "argv",
];

/// How often `--follow` looks for new records.
const POLL: Duration = Duration::from_millis(200);

/// True for characters that change what a terminal shows beyond themselves, or show nothing
/// at all: C0, DEL, C1 (`Cc`), every format character (`Cf`: bidi controls, zero-width
/// characters, soft hyphen, tag characters, U+061C, U+2063, U+FFF9…), the line and paragraph
/// separators (`Zl`, `Zp`) and every other default-ignorable code point (U+3164, U+180E,
/// variation selectors…). The Unicode tables come from `icu_properties` (compiled-in data), so
/// a character the standard adds to these classes is covered by updating the crate, not a
/// hand-kept list.
pub fn dangerous(c: char) -> bool {
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
    use icu_properties::{CodePointMapData, CodePointSetData};
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        CodePointMapData::<GeneralCategory>::new().get(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// Makes control and format characters visible: `\n`, `\t`, `\r`, `\x1b`, `\u{9b}`; a
/// backslash becomes `\\` so the escapes are unambiguous.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && dangerous(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if dangerous(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A JSON line made safe for a terminal while staying the same JSON value: DEL, C1 and format
/// characters (legal raw inside JSON strings) become `\uXXXX`. Bytes that are not UTF-8 are
/// replaced; C0 characters cannot occur raw in a line that parses.
pub fn json_safe(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if dangerous(c) {
            // JSON escapes are UTF-16 units: a tag character is a surrogate pair.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s)
            if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"') =>
        {
            escape(s)
        }
        serde_json::Value::String(s) => format!("\"{}\"", escape(s).replace('"', "\\\"")),
        other => escape(&other.to_string()),
    }
}

/// One record as one human line: `seq  time  type  key=value …` (null fields left out).
pub fn render(line: &[u8]) -> String {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(line) else {
        return format!(
            "{:>7}  (not a record) {}",
            "?",
            escape(&String::from_utf8_lossy(line))
        );
    };
    let field = |m: &mut serde_json::Map<_, _>, k: &str| {
        m.remove(k)
            .map(|v| match v {
                serde_json::Value::String(s) => escape(&s),
                other => escape(&other.to_string()),
            })
            .unwrap_or_else(|| "?".into())
    };
    let seq = field(&mut m, "seq");
    let ts = field(&mut m, "ts");
    let kind = field(&mut m, "type");
    m.remove("prev");
    let mut out = format!("{seq:>7}  {ts}  {kind:<18}");
    let mut keys: Vec<String> = m.keys().cloned().collect();
    keys.sort_by_key(|k| {
        (
            FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()),
            k.clone(),
        )
    });
    for k in keys {
        let v = &m[&k];
        if v.is_null() {
            continue;
        }
        out.push_str(&format!(" {}={}", escape(&k), value(v)));
    }
    out
}

fn emit(out: &mut dyn Write, line: &[u8], json: bool) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", json_safe(line))?;
    } else {
        writeln!(out, "{}", render(line))?;
    }
    out.flush()
}

/// Prints the last `last` records of `path`; with `follow`, keeps printing new ones as they
/// are appended, reopening the file when it is rotated. Returns only on error without
/// `follow`; with `follow` it runs until the process is stopped.
pub fn tail(
    path: &Path,
    last: usize,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AuditError> {
    let read = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let mut ino = file.metadata().map_err(read)?.ino();
    let mut reader = BufReader::new(file);
    let mut ring: VecDeque<Vec<u8>> = VecDeque::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(read)? == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            if follow {
                // An append in progress: pick it up from its start on the next poll.
                let back = buf.len() as i64;
                reader.seek(SeekFrom::Current(-back)).map_err(read)?;
                break;
            }
        } else {
            buf.pop();
        }
        if last > 0 {
            if ring.len() == last {
                ring.pop_front();
            }
            ring.push_back(std::mem::take(&mut buf));
        }
    }
    let stdout = |e: std::io::Error| AuditError::Read {
        path: "<stdout>".into(),
        source: e,
    };
    for l in &ring {
        emit(out, l, json).map_err(stdout)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read)?;
        if n > 0 && buf.last() == Some(&b'\n') {
            buf.pop();
            emit(out, &buf, json).map_err(stdout)?;
            continue;
        }
        if n > 0 {
            reader.seek(SeekFrom::Current(-(n as i64))).map_err(read)?;
        }
        std::thread::sleep(POLL);
        let rotated = std::fs::metadata(path).is_ok_and(|m| m.ino() != ino);
        if rotated {
            // The writer only rotates between records: finish the old file, then switch.
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(read)?;
                if n == 0 || buf.last() != Some(&b'\n') {
                    break;
                }
                buf.pop();
                emit(out, &buf, json).map_err(stdout)?;
            }
            let file = File::open(path).map_err(read)?;
            ino = file.metadata().map_err(read)?.ino();
            reader = BufReader::new(file);
        }
    }
}

/// The stored lines of records with `seq > since`, oldest first, across `path`'s rotated files
/// (for `GET /v1/audit?since=SEQ`). Lines are returned as stored, without the newline; an
/// incomplete last line (an append in progress) is left out. Does not check the chain.
pub fn records_since(path: &Path, since: u64) -> Result<Vec<String>, AuditError> {
    let mut out = Vec::new();
    for file in super::log_files(path)? {
        let read = |source| AuditError::Read {
            path: file.clone(),
            source,
        };
        let text = std::fs::read(&file).map_err(read)?;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            let newer =
                serde_json::from_slice::<super::chain::Header>(line).is_ok_and(|h| h.seq > since);
            if newer {
                out.push(String::from_utf8_lossy(line).into_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_terminal_controls_visible() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\ry\n"), "x\\ry\\n");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("evil\u{202E}txt"), "evil\\u{202e}txt");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    /// Issue 15 item 15: every invisible character the review used is shown as an escape,
    /// in the human format and in the JSON format; visible text is untouched.
    #[test]
    fn every_format_separator_and_default_ignorable_character_is_escaped() {
        let invisible = [
            '\u{2060}',
            '\u{00AD}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{061C}',
            '\u{3164}',
            '\u{2028}',
            '\u{2029}',
            '\u{180E}',
            '\u{2063}',
            '\u{FFF9}',
            '\u{200B}',
            '\u{202E}',
            '\u{FEFF}',
            '\u{FE0F}',
            '\u{115F}',
            '\u{1D173}',
        ];
        for c in invisible {
            let s = format!("rm{c}x");
            let shown = escape(&s);
            assert!(!shown.chars().any(|d| d == c), "{:x}: {shown:?}", c as u32);
            assert!(shown.contains(&format!("\\u{{{:x}}}", c as u32)), "{shown}");
            let line = serde_json::json!({ "command": s }).to_string();
            let safe = json_safe(line.as_bytes());
            assert!(!safe.chars().any(dangerous), "{safe:?}");
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            assert_eq!(back["command"], s.as_str(), "{:x}", c as u32);
        }
        // Positive control: letters, marks, emoji and ordinary spaces stay as they are.
        for visible in [
            "plain ünïcode",
            "日本語",
            "e\u{301}",
            "👍",
            "a\u{00A0}b",
            "Ωμέγα",
        ] {
            assert_eq!(escape(visible), visible);
        }
    }

    #[test]
    fn render_shows_key_fields_first_and_leaves_nulls_out() {
        let line = br#"{"seq":4,"ts":"2025-01-01T00:00:00.000Z","type":"verdict","prev":"00","job":"j1","reason":"deletes the root","rule":null,"verdict":"deny"}"#;
        let r = render(line);
        assert_eq!(
            r,
            "      4  2025-01-01T00:00:00.000Z  verdict            job=j1 verdict=deny reason=\"deletes the root\""
        );
    }

    #[test]
    fn render_escapes_a_command_full_of_escapes_and_garbage_lines() {
        let line = "{\"seq\":1,\"ts\":\"t\",\"type\":\"exec_request\",\"prev\":\"0\",\"command\":\"echo \\u001b]0;pwned\\u0007\\u009b2J\"}";
        let r = render(line.as_bytes());
        assert!(!r.chars().any(dangerous), "{r:?}");
        assert!(r.contains("\\x1b]0;pwned\\x07\\u{9b}2J"), "{r}");
        let r = render(b"\x1b[31mnot json");
        assert!(
            !r.chars().any(dangerous) && r.contains("not a record"),
            "{r:?}"
        );
    }

    #[test]
    fn json_output_stays_the_same_value_without_raw_c1_characters() {
        let line = "{\"command\":\"a\u{9b}b\u{7f}\"}";
        let safe = json_safe(line.as_bytes());
        assert!(!safe.chars().any(dangerous));
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let b: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn tail_prints_the_last_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut log = crate::audit::AuditLog::open(&p, Default::default()).unwrap();
        for _ in 0..5 {
            log.append(&crate::audit::Event::DaemonStop {}).unwrap();
        }
        let mut out = Vec::new();
        tail(&p, 2, false, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let seqs: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(seqs, ["4", "5"]);
    }

    #[test]
    fn records_since_reads_across_rotated_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let policy = crate::audit::RotationPolicy {
            max_bytes: 4096,
            keep: 5,
            ..Default::default()
        };
        let mut log = crate::audit::AuditLog::open(&p, policy).unwrap();
        for n in 0..60 {
            log.append(&crate::audit::Event::Alert {
                kind: "t".into(),
                detail: format!("{n} {}", "x".repeat(100)),
            })
            .unwrap();
        }
        assert!(dir.path().join("audit.jsonl.1").exists());
        let got = records_since(&p, 25).unwrap();
        let seqs: Vec<u64> = got
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (26..=60).collect::<Vec<_>>());
    }
}
