//! The record format and the hash chain: what one line of `audit.jsonl` looks like and how a
//! record commits to the one before it.
//!
//! A record is one JSON object on one line:
//! `{"seq":N,"ts":"…","type":"…","prev":"<hex>",…event fields…}`. `prev` is the lowercase
//! hex SHA-256 of the previous record's line exactly as stored, without its trailing `\n`; the
//! first record of a new log has `seq` 1 and `prev` = 64 zeros ([`GENESIS`]). Verification
//! hashes the stored bytes, never a re-serialization, so field order and number formatting
//! never matter to the chain.
//!
//! This module must never do I/O: it turns events into bytes and bytes into headers.

use std::fmt;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest of one stored line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LineHash(pub [u8; 32]);

/// The `prev` of the very first record of a log: 64 zeros.
pub const GENESIS: LineHash = LineHash([0; 32]);

impl LineHash {
    /// The hash of a stored line; `line` excludes the trailing newline.
    pub fn of_line(line: &[u8]) -> LineHash {
        LineHash(Sha256::digest(line).into())
    }

    /// Parses 64 lowercase hex digits (uppercase is refused: the writer never produces it, so
    /// accepting it would let two different lines carry "the same" link).
    pub fn from_hex(s: &str) -> Option<LineHash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
        }
        Some(LineHash(out))
    }
}

impl fmt::Display for LineHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One approval decision or state change (requested, granted, denied, expired).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub approval_id: String,
    pub job: String,
    /// The operator who decided; `None` for `approval_requested` and `approval_expired`.
    pub operator_uid: Option<u32>,
    /// `once` or `session`; `None` until a decision is made.
    pub scope: Option<String>,
    pub reason: Option<String>,
}

/// Everything the audit log records. The wire name of each variant is its `type`.
///
/// Payloads owned by other modules (limits, resource usage, the policy's parse summary) are
/// carried as JSON values so this module does not pin their shape; the daemon serializes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    DaemonStart {
        config_sha256: String,
        version: String,
    },
    DaemonStop {},
    Auth {
        ok: bool,
        peer_uid: Option<u32>,
        reason: String,
    },
    SessionCreate {
        session: String,
        parent: Option<String>,
        profile: String,
        peer_uid: u32,
    },
    /// Sessions ended: `session` and every descendant (`ended`, itself included), by its own
    /// lineage's token (`by` "agent"), an operator ("operator", `operator_uid` set) or expiry
    /// ("expired"). Their running jobs were cancelled, pending approvals dropped, session
    /// grants forgotten.
    SessionEnd {
        session: String,
        by: String,
        ended: Vec<String>,
        jobs_cancelled: usize,
        peer_uid: Option<u32>,
        operator_uid: Option<u32>,
    },
    ExecRequest {
        session: String,
        job: String,
        /// The shell string, when the request was one.
        command: Option<String>,
        /// The argv, when the request was one (or the parsed argv of a shell string).
        argv: Option<Vec<String>>,
        parse_summary: serde_json::Value,
        /// The resolved working directory the job starts in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// The job's environment: values (bounded), the names the request set, a digest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<serde_json::Value>,
        /// The job's stdin: size, SHA-256, a bounded excerpt and the commands that read it as
        /// their program (`null` when the job reads none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<serde_json::Value>,
        /// The run terms (limits, wall time, on_disconnect, envelope).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terms: Option<serde_json::Value>,
    },
    Verdict {
        job: String,
        verdict: String,
        rule: Option<String>,
        reason: String,
    },
    ApprovalRequested(Approval),
    ApprovalGranted(Approval),
    ApprovalDenied(Approval),
    ApprovalExpired(Approval),
    /// The requester went away (disconnected) before a decision: nothing ran.
    ApprovalWithdrawn(Approval),
    JobStart {
        job: String,
        limits: serde_json::Value,
        /// Named degradations the profile allowed and that applied (empty when none).
        degraded: Vec<String>,
        #[serde(default)]
        namespaces: Vec<String>,
        cgroup_version: Option<u8>,
    },
    /// The job's client disconnected and the job went on (`on_disconnect = "detach"`); its
    /// output is retained for the session.
    JobDetached {
        job: String,
        session: String,
    },
    JobExit {
        job: String,
        code: Option<i32>,
        reason: String,
        /// CPU time, peaks and the like, including cgroup peaks.
        usage: serde_json::Value,
        /// The exit event's `protection` (what the job planted and what was quarantined);
        /// absent when the job did not run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protection: Option<serde_json::Value>,
        /// The exit event's `network` (`network = "allowlist"`): every DNS answer and
        /// connection of the job, with verdict, rule, addresses and bytes (bounded; counters
        /// past the bound).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<serde_json::Value>,
    },
    ConfigReload {
        config_sha256: String,
    },
    /// An operator issued a pairing code (`docs/pairing.md`). Codes are named by id only.
    PairingIssued {
        code_id: String,
        profile: String,
        workspace: Option<String>,
        label: Option<String>,
        expires_at: u64,
        operator_uid: u32,
    },
    /// A pairing code was used up: the session it created.
    PairingRedeemed {
        code_id: String,
        session: String,
        profile: String,
        peer_uid: u32,
    },
    /// A redemption failed. `code_id` only when the code was a real one (expired, or its
    /// workspace is missing); a wrong code has no id.
    PairingFailed {
        code_id: Option<String>,
        peer_uid: u32,
        /// The uid's failures within the window, this one included.
        failures: u32,
        reason: String,
    },
    /// A code was revoked by an operator (`operator_uid`) or invalidated by the daemon after
    /// too many failed redemptions (`operator_uid` null).
    PairingRevoked {
        code_id: String,
        operator_uid: Option<u32>,
        reason: String,
    },
    Alert {
        kind: String,
        detail: String,
    },
    /// A file was uploaded into a session's workspace (`PUT /v1/files/{path}`): recorded after
    /// the bytes are on disk and before the name refers to them.
    FileWrite {
        session: String,
        path: String,
        size: u64,
        sha256: String,
    },
    /// A file was downloaded (`GET /v1/files/{path}`), after the fact: `sha256` of the bytes
    /// sent, null when the client left before the end.
    FileRead {
        session: String,
        path: String,
        size: u64,
        sha256: Option<String>,
    },
    /// An entry was removed (`DELETE /v1/files/{path}`): recorded before the removal.
    FileDelete {
        session: String,
        path: String,
        kind: String,
    },
}

/// The chain fields every record has, whatever its type. Unknown fields are ignored so a
/// verifier keeps working on logs written by a newer version with new event types.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub seq: u64,
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub prev: String,
}

/// Serializes one record, without the trailing newline.
///
/// Field order is `seq, ts, type, prev`, then the event's fields (in name order); the order is
/// cosmetic, since the chain hashes the stored bytes.
pub fn encode(
    seq: u64,
    ts: &str,
    prev: &LineHash,
    event: &Event,
) -> Result<Vec<u8>, serde_json::Error> {
    encode_bounded(seq, ts, prev, event, usize::MAX)
}

/// Like [`encode`], with every event field bounded to `max_field_bytes` of JSON
/// (`audit::bound`: an excerpt, the length and the SHA-256 of what did not fit).
pub fn encode_bounded(
    seq: u64,
    ts: &str,
    prev: &LineHash,
    event: &Event,
    max_field_bytes: usize,
) -> Result<Vec<u8>, serde_json::Error> {
    let serde_json::Value::Object(mut fields) = serde_json::to_value(event)? else {
        unreachable!("an internally tagged enum serializes to an object")
    };
    let kind = fields.remove("type").unwrap_or_default();
    if max_field_bytes != usize::MAX {
        super::bound::bound_fields(&mut fields, max_field_bytes);
    }
    let mut out = Vec::with_capacity(256);
    // Writes into a Vec cannot fail; serde_json's compact form never contains a raw newline.
    let _ = write!(out, "{{\"seq\":{seq},\"ts\":");
    serde_json::to_writer(&mut out, ts)?;
    out.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut out, &kind)?;
    let _ = write!(out, ",\"prev\":\"{prev}\"");
    for (k, v) in &fields {
        out.push(b',');
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        serde_json::to_writer(&mut out, v)?;
    }
    out.push(b'}');
    Ok(out)
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    // Before 1970 only with a broken clock; clamp rather than fail an audit write over it.
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`), so we need no date crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hash_is_sha256_of_the_line_bytes_in_lowercase_hex() {
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            LineHash::of_line(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(GENESIS.to_string(), "0".repeat(64));
    }

    #[test]
    fn hex_round_trips_and_rejects_uppercase_and_wrong_lengths() {
        let h = LineHash::of_line(b"x");
        assert_eq!(LineHash::from_hex(&h.to_string()), Some(h));
        assert_eq!(LineHash::from_hex(&h.to_string().to_uppercase()), None);
        assert_eq!(LineHash::from_hex("00"), None);
        assert_eq!(LineHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn records_put_chain_fields_first_and_parse_back() {
        let ev = Event::Verdict {
            job: "j1".into(),
            verdict: "deny".into(),
            rule: Some("rm-root".into()),
            reason: "deletes /".into(),
        };
        let line = encode(7, "2025-01-01T00:00:00.000Z", &GENESIS, &ev).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"seq":7,"ts":"2025-01-01T00:00:00.000Z","type":"verdict","prev":"000"#
            ),
            "{text}"
        );
        let h: Header = serde_json::from_slice(&line).unwrap();
        assert_eq!((h.seq, h.kind.as_str()), (7, "verdict"));
        let back: Event = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn control_characters_in_fields_are_escaped_so_a_record_stays_one_line() {
        let ev = Event::Alert {
            kind: "x".into(),
            detail: "a\nb\x1b[31m".into(),
        };
        let line = encode(1, "t", &GENESIS, &ev).unwrap();
        assert!(!line.contains(&b'\n') && !line.contains(&0x1b));
    }

    #[test]
    fn approval_events_carry_their_fields_flat_next_to_the_type() {
        let ev = Event::ApprovalGranted(Approval {
            approval_id: "a1".into(),
            job: "j".into(),
            operator_uid: Some(0),
            scope: Some("once".into()),
            reason: None,
        });
        let line = encode(1, "t", &GENESIS, &ev).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "approval_granted");
        assert_eq!(v["approval_id"], "a1");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000Z");
    }
}
