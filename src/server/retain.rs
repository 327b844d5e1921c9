//! Retained output of jobs that run with `on_disconnect = "detach"`: every event the job's
//! stream carries (`started`, `stdout`, `stderr`, `exit`) is also kept here, so a client that
//! went away can fetch it later from a cursor (`GET /v1/jobs/{id}/output`).
//!
//! Bounded three ways (`[detach]` in the config): bytes per job, per session and in total. An
//! event that does not fit is dropped *and counted* (events and output bytes), and the counts
//! are reported with the output. The final `exit` event (small: without the envelope) may pass
//! the per-job limit, never the session's or the total: a session cannot grow past its share
//! by running many jobs (a dropped exit is still in `GET /v1/jobs/{id}`). Output is forgotten
//! `retention` after the job ended, or with its session.
//!
//! Must never: decide who may read (the caller checks the job's scope first, like every job
//! route), or grow past its limits.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::DetachConfig;

/// Expired job ids remembered (to answer `output_expired` rather than 404) at most.
const TOMBSTONES: usize = 4096;

#[derive(Default)]
struct Buffer {
    session: String,
    /// NDJSON lines (each a JSON object with a trailing newline), in stream order.
    events: Vec<Bytes>,
    bytes: usize,
    dropped_events: u64,
    /// stdout/stderr bytes (decoded) in the dropped events.
    dropped_output_bytes: u64,
    /// The client went away while the job ran.
    detached: bool,
    /// When the job ended (its `exit` is the last event).
    ended: Option<Instant>,
    expires_at: Option<u64>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Buffer>,
    per_session: HashMap<String, usize>,
    total: usize,
    expired: VecDeque<String>,
}

/// One page of retained output.
pub struct Page {
    /// The events from the cursor on, each with its `seq` (its index) added.
    pub lines: Vec<Bytes>,
    /// The trailer: where to resume, whether the job ended, and what was dropped.
    pub trailer: serde_json::Value,
}

pub enum ReadError {
    /// Nothing is retained for this job (it ran with `on_disconnect = "kill"`).
    NotRetained,
    /// It was, and the retention time is over.
    Expired,
}

pub struct Store {
    limits: DetachConfig,
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new(limits: DetachConfig) -> Store {
        Store {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn retention(&self) -> Duration {
        self.limits.retention
    }

    /// Starts retaining `job`'s events.
    pub fn start(&self, job: &str, session: &str) {
        self.lock().jobs.insert(
            job.to_string(),
            Buffer {
                session: session.to_string(),
                ..Buffer::default()
            },
        );
    }

    /// Keeps one event line if it fits every limit, else counts it as dropped. `output_bytes`
    /// is the stdout/stderr payload the event carries (0 for other events); `last` (the final
    /// `exit`) is kept past the per-job limit and after earlier drops, within the others.
    pub fn push(&self, job: &str, line: Bytes, output_bytes: u64, last: bool) {
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(b) = inner.jobs.get_mut(job) else {
            return;
        };
        let session_used = inner.per_session.get(&b.session).copied().unwrap_or(0);
        let n = line.len();
        let shared_fits = session_used + n <= self.limits.max_bytes_per_session
            && inner.total + n <= self.limits.max_bytes_total;
        let job_fits = b.bytes + n <= self.limits.max_bytes_per_job && b.dropped_events == 0;
        // Once something was dropped, everything after it is too (but the exit): what is kept
        // is a prefix of the stream, never a stream with holes.
        if !shared_fits || !(job_fits || last) {
            b.dropped_events += 1;
            b.dropped_output_bytes += output_bytes;
            return;
        }
        b.events.push(line);
        b.bytes += n;
        *inner.per_session.entry(b.session.clone()).or_default() += n;
        inner.total += n;
    }

    /// The job's client went away; the job goes on.
    pub fn detached(&self, job: &str) {
        if let Some(b) = self.lock().jobs.get_mut(job) {
            b.detached = true;
        }
    }

    /// The job ended: its output is kept `retention` from now.
    pub fn ended(&self, job: &str) {
        let expires_at = super::state::unix_now() + self.limits.retention.as_secs();
        if let Some(b) = self.lock().jobs.get_mut(job) {
            b.ended = Some(Instant::now());
            b.expires_at = Some(expires_at);
        }
    }

    /// Forgets output whose retention time is over.
    pub fn expire_due(&self) {
        let now = Instant::now();
        let retention = self.limits.retention;
        let mut g = self.lock();
        let due: Vec<String> = g
            .jobs
            .iter()
            .filter(|(_, b)| b.ended.is_some_and(|t| now.duration_since(t) >= retention))
            .map(|(j, _)| j.clone())
            .collect();
        for job in due {
            Self::remove(&mut g, &job);
            g.expired.push_back(job);
            while g.expired.len() > TOMBSTONES {
                g.expired.pop_front();
            }
        }
    }

    fn remove(inner: &mut Inner, job: &str) {
        if let Some(b) = inner.jobs.remove(job) {
            inner.total -= b.bytes;
            if let Some(s) = inner.per_session.get_mut(&b.session) {
                *s -= b.bytes;
                if *s == 0 {
                    inner.per_session.remove(&b.session);
                }
            }
        }
    }

    /// Drops the output of every job of these (ended) sessions.
    pub fn end_sessions(&self, sessions: &[String]) {
        let mut g = self.lock();
        let jobs: Vec<String> = g
            .jobs
            .iter()
            .filter(|(_, b)| sessions.contains(&b.session))
            .map(|(j, _)| j.clone())
            .collect();
        for j in jobs {
            Self::remove(&mut g, &j);
        }
    }

    fn summary(b: &Buffer) -> serde_json::Value {
        serde_json::json!({
            "events": b.events.len(),
            "bytes": b.bytes,
            "dropped_events": b.dropped_events,
            "dropped_output_bytes": b.dropped_output_bytes,
            "detached": b.detached,
            "complete": b.ended.is_some(),
            "expires_at": b.expires_at,
        })
    }

    /// What `GET /v1/jobs/{id}` shows under `retained_output` (null when nothing is kept).
    pub fn describe(&self, job: &str) -> serde_json::Value {
        self.expire_due();
        let g = self.lock();
        match g.jobs.get(job) {
            Some(b) => Self::summary(b),
            None if g.expired.iter().any(|j| j == job) => serde_json::json!({"expired": true}),
            None => serde_json::Value::Null,
        }
    }

    /// The retained events from `cursor` on.
    pub fn read(&self, job: &str, cursor: usize) -> Result<Page, ReadError> {
        self.expire_due();
        let g = self.lock();
        let Some(b) = g.jobs.get(job) else {
            return Err(if g.expired.iter().any(|j| j == job) {
                ReadError::Expired
            } else {
                ReadError::NotRetained
            });
        };
        let lines = b
            .events
            .iter()
            .enumerate()
            .skip(cursor)
            .map(|(seq, line)| with_seq(seq, line))
            .collect();
        let mut trailer = Self::summary(b);
        if let Some(o) = trailer.as_object_mut() {
            o.insert("event".into(), "output_end".into());
            o.insert("job".into(), job.into());
            o.insert("next_cursor".into(), b.events.len().max(cursor).into());
        }
        Ok(Page { lines, trailer })
    }
}

/// `{"event":…}\n` → `{"seq":N,"event":…}\n` (every retained line is a non-empty JSON object).
fn with_seq(seq: usize, line: &Bytes) -> Bytes {
    let mut out = Vec::with_capacity(line.len() + 16);
    out.extend_from_slice(format!("{{\"seq\":{seq},").as_bytes());
    out.extend_from_slice(&line[1..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(job: usize, session: usize, total: usize) -> Store {
        Store::new(DetachConfig {
            default_detach: false,
            max_bytes_per_job: job,
            max_bytes_per_session: session,
            max_bytes_total: total,
            retention: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_job_keeps_what_fits_and_counts_what_it_drops() {
        let s = store(100, 1000, 1000);
        s.start("j", "s");
        s.push("j", Bytes::from_static(b"{\"a\":1}\n"), 0, false);
        s.push("j", Bytes::from(vec![b'{'; 95]), 7, false);
        // Would fit, but comes after a dropped event: dropped too (no holes).
        s.push("j", Bytes::from_static(b"{\"b\":2}\n"), 3, false);
        s.push("j", Bytes::from_static(b"{\"exit\":0}\n"), 0, true);
        let p = s.read("j", 0).ok().unwrap();
        assert_eq!(
            p.lines.len(),
            2,
            "the big line and the rest dropped, exit kept"
        );
        // A session at its limit keeps not even the exit of its next job (counted).
        let full = store(100, 20, 1000);
        full.start("k", "s");
        full.push("k", Bytes::from(vec![b'{'; 20]), 0, false);
        full.push("k", Bytes::from_static(b"{\"exit\":0}\n"), 0, true);
        assert_eq!(full.read("k", 0).ok().unwrap().trailer["dropped_events"], 1);
        assert_eq!(&p.lines[0][..], b"{\"seq\":0,\"a\":1}\n");
        assert_eq!(&p.lines[1][..], b"{\"seq\":1,\"exit\":0}\n");
        assert_eq!(p.trailer["dropped_events"], 2);
        assert_eq!(p.trailer["dropped_output_bytes"], 10);
        assert_eq!(p.trailer["next_cursor"], 2);
        // Resume from the cursor.
        let p = s.read("j", 1).ok().unwrap();
        assert_eq!(p.lines.len(), 1);
    }

    #[test]
    fn one_session_cannot_take_the_others_share() {
        let s = store(100, 30, 50);
        s.start("a1", "a");
        s.start("a2", "a");
        s.start("b1", "b");
        let ev = || Bytes::from(vec![b'{'; 20]);
        s.push("a1", ev(), 1, false);
        s.push("a2", ev(), 1, false); // over session a's 30
        s.push("b1", ev(), 1, false);
        s.push("b1", ev(), 1, false); // over the total of 50
        let dropped = |j| s.read(j, 0).ok().unwrap().trailer["dropped_events"].clone();
        assert_eq!(dropped("a1"), 0);
        assert_eq!(dropped("a2"), 1);
        assert_eq!(dropped("b1"), 1);
        // Ending a session frees its share.
        s.end_sessions(&["a".into()]);
        s.start("b2", "b");
        s.push("b2", Bytes::from(vec![b'{'; 10]), 1, false);
        assert_eq!(dropped("b2"), 0);
        assert!(matches!(s.read("a1", 0), Err(ReadError::NotRetained)));
    }

    #[test]
    fn output_expires_after_the_retention_time() {
        let s = Store::new(DetachConfig {
            retention: Duration::from_millis(30),
            ..store(100, 100, 100).limits
        });
        s.start("j", "s");
        s.push("j", Bytes::from_static(b"{}\n"), 0, true);
        s.ended("j");
        assert!(s.read("j", 0).is_ok());
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(s.read("j", 0), Err(ReadError::Expired)));
        assert_eq!(s.describe("j")["expired"], true);
        assert!(matches!(s.read("other", 0), Err(ReadError::NotRetained)));
        assert_eq!(s.lock().total, 0);
    }
}
