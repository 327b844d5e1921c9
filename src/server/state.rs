//! Sessions, jobs and counters: the daemon's in-memory state (nothing survives a restart).
//!
//! Scope rule, enforced here and nowhere else: a session sees its own jobs and those of its
//! descendants (child sessions it spawned, transitively), never anything else. Lookups outside
//! the scope answer exactly like lookups of ids that do not exist.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

/// One session: a capability (the token), a workspace, a bound profile.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub token_hash: [u8; 32],
    pub spawned_by: Option<String>,
    /// The root of its lineage (itself for a root session). A lineage shares one expiry
    /// bound (a child never outlives its root) and the `sessions.max_per_lineage` quota.
    pub root: String,
    /// The peer uid that created it: its token works only from that uid.
    pub owner_uid: u32,
    pub profile: String,
    pub workspace: PathBuf,
    pub sandbox_id: u32,
    pub created_at: u64,
    pub expires: Instant,
    pub expires_at: u64,
    pub running: usize,
    /// The workspace is an operator's directory (chosen at pairing): ending the session
    /// leaves it in place.
    pub keep_workspace: bool,
    /// The workspace is its parent's, given read-only (`POST /v1/sessions` with
    /// `"workspace": "parent_ro"`): jobs see it read-only and `/v1/files` refuses writes.
    pub workspace_read_only: bool,
    /// The pairing code's label and id, when the session (or its root) was paired.
    pub label: Option<String>,
    pub pairing_code: Option<String>,
    /// Jobs of this session so far (running ones are `running`).
    pub counts: JobCounts,
}

/// A session's jobs so far, for the operator's `GET /v1/sessions`.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct JobCounts {
    /// Every exec request that became a job (refused ones included).
    pub requested: u64,
    /// Jobs that ran and ended.
    pub finished: u64,
    /// Jobs refused: by policy, an operator, an expired approval, the audit log or setup.
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for an operator's decision.
    PendingApproval,
    Running,
    Finished,
    Refused,
}

/// One job as `GET /v1/jobs` shows it.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub session: String,
    /// At most [`JOB_ARGV_BYTES`] of the request's argv (each item at most
    /// [`JOB_ARG_BYTES`]): a daemon keeps up to `finished_jobs_kept` jobs per session, and a
    /// 1 MiB argv kept whole in each was how two sessions grew it by half a gigabyte.
    pub argv: Vec<String>,
    /// When `argv` is cut: the whole argv's size, item count and SHA-256 (of its compact
    /// JSON, as in the audit record's bound form).
    pub argv_omitted: Option<Box<ArgvOmitted>>,
    pub created_at: u64,
    pub state: JobState,
    /// The final `exit` event, once there is one, kept as its JSON text: a daemon keeps up
    /// to `finished_jobs_kept` of these per session, and as a `serde_json::Value` (a map of
    /// ~20 boxed values) each cost several times its ~350 bytes of text.
    pub exit: Option<Box<str>>,
    /// Write end of the cancel pipe while the job runs.
    pub cancel: Option<Arc<OwnedFd>>,
}

/// The stored argv of a job, in bytes of its items, at most.
pub const JOB_ARGV_BYTES: usize = 4096;
/// One stored argv item, in bytes, at most.
pub const JOB_ARG_BYTES: usize = 1024;

/// What a job record left out of its argv.
#[derive(Debug, Clone, Serialize)]
pub struct ArgvOmitted {
    pub bytes: usize,
    pub items: usize,
    pub sha256: String,
}

/// The argv a job record keeps: the leading items within [`JOB_ARGV_BYTES`], each cut to
/// [`JOB_ARG_BYTES`] on a character boundary; and what was left out, when anything was.
pub fn argv_excerpt(argv: &[String]) -> (Vec<String>, Option<Box<ArgvOmitted>>) {
    let total: usize = argv.iter().map(String::len).sum();
    if total <= JOB_ARGV_BYTES && argv.iter().all(|a| a.len() <= JOB_ARG_BYTES) {
        return (argv.to_vec(), None);
    }
    let mut kept = Vec::new();
    let mut used = 0;
    for a in argv {
        let mut end = a.len().min(JOB_ARG_BYTES);
        while !a.is_char_boundary(end) {
            end -= 1;
        }
        if used + end > JOB_ARGV_BYTES {
            break;
        }
        used += end;
        kept.push(a[..end].to_string());
    }
    let json = serde_json::to_vec(argv).unwrap_or_default();
    let sha256 = crate::config::sha256_hex(&json);
    let omitted = ArgvOmitted {
        bytes: total,
        items: argv.len(),
        sha256,
    };
    (kept, Some(Box::new(omitted)))
}

impl Job {
    pub fn new(
        id: &str,
        session: &str,
        argv: &[String],
        state: JobState,
        cancel: Option<Arc<OwnedFd>>,
    ) -> Job {
        let (argv, argv_omitted) = argv_excerpt(argv);
        Job {
            id: id.to_string(),
            session: session.to_string(),
            argv,
            argv_omitted,
            created_at: unix_now(),
            state,
            exit: None,
            cancel,
        }
    }

    pub fn view(&self) -> serde_json::Value {
        let exit: Option<serde_json::Value> = self
            .exit
            .as_deref()
            .and_then(|e| serde_json::from_str(e).ok());
        serde_json::json!({
            "job": self.id,
            "session": self.session,
            "argv": self.argv,
            "argv_omitted": self.argv_omitted,
            "created_at": self.created_at,
            "state": self.state,
            "exit": exit,
        })
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub sessions: HashMap<String, Session>,
    pub jobs: HashMap<String, Job>,
    /// Finished jobs per session, oldest first, for bounded retention.
    pub finished: HashMap<String, VecDeque<String>>,
    pub running: usize,
    pub next_sandbox_offset: u32,
    /// Artifact ids handed out (see `crate::artifacts`).
    pub artifacts: crate::artifacts::Registry,
}

impl State {
    /// Adds (or replaces: an approved job starts under its pending record's id) a job record,
    /// and counts a new one for its session.
    pub fn add_job(&mut self, job: Job) {
        if !self.jobs.contains_key(&job.id)
            && let Some(s) = self.sessions.get_mut(&job.session)
        {
            s.counts.requested += 1;
        }
        self.jobs.insert(job.id.clone(), job);
    }

    /// `id` and every session below it (its whole lineage when `id` is a root).
    pub fn subtree(&self, id: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .sessions
            .keys()
            .filter(|s| self.within(s, id))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Live sessions of the lineage rooted at `root`, and of peer `uid`.
    pub fn counts_for(&self, root: &str, uid: u32) -> (usize, usize) {
        self.sessions.values().fold((0, 0), |(l, u), s| {
            (
                l + usize::from(s.root == root),
                u + usize::from(s.owner_uid == uid),
            )
        })
    }

    /// Is `session` the same as `ancestor` or one of its descendants?
    pub fn within(&self, session: &str, ancestor: &str) -> bool {
        let mut cur = Some(session);
        // Bounded by the number of sessions: the parent chain cannot cycle (parents exist
        // before their children), but a bound costs nothing.
        for _ in 0..=self.sessions.len() {
            match cur {
                Some(s) if s == ancestor => return true,
                Some(s) => cur = self.sessions.get(s).and_then(|x| x.spawned_by.as_deref()),
                None => return false,
            }
        }
        false
    }

    /// The job if `caller` may see it.
    pub fn job_for(&self, caller: &str, job: &str) -> Option<&Job> {
        self.jobs
            .get(job)
            .filter(|j| self.within(&j.session, caller))
    }

    pub fn jobs_for(&self, caller: &str) -> Vec<serde_json::Value> {
        let mut v: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| self.within(&j.session, caller))
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v.into_iter().map(Job::view).collect()
    }

    /// Ends a session: it and its finished jobs are forgotten (jobs still running are dropped
    /// by `finish` when they end). Without this, every ended session left up to
    /// `finished_jobs_kept` job records behind for the daemon's lifetime.
    pub fn remove_session(&mut self, id: &str) -> Option<Session> {
        for job in self.finished.remove(id).unwrap_or_default() {
            self.jobs.remove(&job);
        }
        self.sessions.remove(id)
    }

    /// Marks a job finished and forgets the oldest finished jobs beyond `keep`.
    pub fn finish(&mut self, job: &str, state: JobState, exit: serde_json::Value, keep: usize) {
        let Some(j) = self.jobs.get_mut(job) else {
            return;
        };
        // Already ended (e.g. refused by `launch`, then reported by the approval waiter): the
        // first account stands, and the job is not queued for retention twice.
        if j.exit.is_some() {
            return;
        }
        let was_running = matches!(j.state, JobState::Running);
        j.state = state;
        j.exit = Some(exit.to_string().into_boxed_str());
        j.cancel = None;
        let session = j.session.clone();
        let refused = matches!(j.state, JobState::Refused);
        if let Some(s) = self.sessions.get_mut(&session) {
            if refused {
                s.counts.refused += 1;
            } else {
                s.counts.finished += 1;
            }
            if was_running {
                s.running = s.running.saturating_sub(1);
            }
        }
        if was_running {
            self.running = self.running.saturating_sub(1);
        }
        // Its session already ended (deleted while the job ran): nobody can name the job any
        // more (the scope walk starts at a live session), so it is not kept.
        if !self.sessions.contains_key(&session) {
            self.jobs.remove(job);
            return;
        }
        let q = self.finished.entry(session).or_default();
        q.push_back(job.to_string());
        while q.len() > keep {
            if let Some(old) = q.pop_front() {
                self.jobs.remove(&old);
            }
        }
    }
}

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub jobs_started: AtomicU64,
    pub jobs_finished: AtomicU64,
    pub jobs_refused: AtomicU64,
    pub setup_failures: AtomicU64,
    pub jobs_lost: AtomicU64,
    pub auth_failures: AtomicU64,
    pub peers_refused: AtomicU64,
    pub connections_refused: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sessions_created: AtomicU64,
    pub audit_failures: AtomicU64,
    pub pairing_issued: AtomicU64,
    pub pairing_redeemed: AtomicU64,
    pub pairing_failures: AtomicU64,
    pub pairing_alerts: AtomicU64,
    /// Jobs that ran without a layer, by [`crate::profile::Degradation::ALL`] index.
    pub degraded: [AtomicU64; 4],
    /// From a job's `started` to its end.
    pub job_duration: super::histogram::Histogram,
    /// From the exec request's arrival to the job's `started`, [without, with] a wait for an
    /// operator's approval.
    pub queue_wait: [super::histogram::Histogram; 2],
    /// `network = "allowlist"` jobs: connections relayed and refused, DNS names refused.
    pub net_allowed: AtomicU64,
    pub net_denied: AtomicU64,
    pub net_dns_refused: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one job's reported degradations (their names, as in the exit report).
    pub fn count_degraded(&self, names: &[String]) {
        for (d, c) in crate::profile::Degradation::ALL.iter().zip(&self.degraded) {
            if names.iter().any(|n| n == d.name()) {
                Self::inc(c);
            }
        }
    }

    pub fn render(&self, active_jobs: usize, sessions: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64, kind: &str| {
            out.push_str(&format!(
                "# HELP execbox_{name} {help}\n# TYPE execbox_{name} {kind}\nexecbox_{name} {v}\n"
            ));
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "jobs_started_total",
            "Jobs handed to the sandbox.",
            g(&self.jobs_started),
            "counter",
        );
        counter(
            "jobs_finished_total",
            "Jobs that ran and ended.",
            g(&self.jobs_finished),
            "counter",
        );
        counter(
            "jobs_refused_total",
            "Jobs refused: by policy, by an operator, an expired approval, or an unwritable audit log.",
            g(&self.jobs_refused),
            "counter",
        );
        counter(
            "setup_failures_total",
            "Jobs whose sandbox could not be built.",
            g(&self.setup_failures),
            "counter",
        );
        counter(
            "jobs_lost_total",
            "Jobs that started but whose supervisor died without a report (killed with it).",
            g(&self.jobs_lost),
            "counter",
        );
        counter(
            "auth_failures_total",
            "Requests with a missing, bad or expired token.",
            g(&self.auth_failures),
            "counter",
        );
        counter(
            "peers_refused_total",
            "Connections refused because the peer uid/gid is not allowed.",
            g(&self.peers_refused),
            "counter",
        );
        counter(
            "connections_refused_total",
            "Connections refused before reading because of limits.max_connections, max_connections_per_uid or operator_connections.",
            g(&self.connections_refused),
            "counter",
        );
        counter(
            "rate_limited_total",
            "Requests refused by a rate limit or lockout.",
            g(&self.rate_limited),
            "counter",
        );
        counter(
            "sessions_created_total",
            "Sessions minted.",
            g(&self.sessions_created),
            "counter",
        );
        counter(
            "audit_failures_total",
            "Audit records that could not be written (each refused what it would have allowed).",
            g(&self.audit_failures),
            "counter",
        );
        counter(
            "pairing_codes_issued_total",
            "Pairing codes issued by operators.",
            g(&self.pairing_issued),
            "counter",
        );
        counter(
            "pairing_redeemed_total",
            "Pairing codes redeemed for a session.",
            g(&self.pairing_redeemed),
            "counter",
        );
        counter(
            "pairing_failures_total",
            "Failed pairing code redemptions (wrong, expired, used or revoked codes).",
            g(&self.pairing_failures),
            "counter",
        );
        counter(
            "pairing_alerts_total",
            "Guessing alerts: failures reached pairing.alert_after and every outstanding code was invalidated.",
            g(&self.pairing_alerts),
            "counter",
        );
        counter(
            "net_connections_allowed_total",
            "Connections of allowlist jobs relayed (counted when the job ends).",
            g(&self.net_allowed),
            "counter",
        );
        counter(
            "net_connections_denied_total",
            "Connections of allowlist jobs refused by the network supervisor (counted when the job ends).",
            g(&self.net_denied),
            "counter",
        );
        counter(
            "net_dns_refused_total",
            "DNS names of allowlist jobs answered NXDOMAIN or REFUSED (counted when the job ends).",
            g(&self.net_dns_refused),
            "counter",
        );
        counter(
            "jobs_active",
            "Jobs running now.",
            active_jobs as u64,
            "gauge",
        );
        counter("sessions", "Live sessions.", sessions as u64, "gauge");
        out.push_str(
            "# HELP execbox_jobs_degraded_total Jobs that ran without a layer the kernel or host lacks (docs/security.md, \"Degradations\").\n\
             # TYPE execbox_jobs_degraded_total counter\n",
        );
        for (d, c) in crate::profile::Degradation::ALL.iter().zip(&self.degraded) {
            out.push_str(&format!(
                "execbox_jobs_degraded_total{{layer=\"{}\"}} {}\n",
                d.name(),
                g(c)
            ));
        }
        out.push_str(
            "# HELP execbox_job_duration_seconds Jobs from their start in the sandbox to their end.\n\
             # TYPE execbox_job_duration_seconds histogram\n",
        );
        self.job_duration
            .render_into(&mut out, "execbox_job_duration_seconds", "");
        out.push_str(
            "# HELP execbox_job_queue_seconds Jobs from the exec request's arrival to their start in the sandbox (policy, audit records, admission, sandbox setup; approval=\"waited\" includes the operator's decision).\n\
             # TYPE execbox_job_queue_seconds histogram\n",
        );
        for (i, label) in ["approval=\"none\"", "approval=\"waited\""]
            .iter()
            .enumerate()
        {
            self.queue_wait[i].render_into(&mut out, "execbox_job_queue_seconds", label);
        }
        out
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, parent: Option<&str>) -> Session {
        Session {
            id: id.into(),
            token_hash: [0; 32],
            spawned_by: parent.map(Into::into),
            root: String::new(),
            owner_uid: 0,
            profile: "default".into(),
            workspace: "/w".into(),
            sandbox_id: 0,
            created_at: 0,
            expires: Instant::now(),
            expires_at: 0,
            running: 0,
            keep_workspace: false,
            workspace_read_only: false,
            label: None,
            pairing_code: None,
            counts: JobCounts::default(),
        }
    }

    #[test]
    fn a_job_keeps_an_excerpt_of_a_huge_argv_and_a_digest_of_all_of_it() {
        let big: Vec<String> = vec!["/bin/bash".into(), "-c".into(), "é".repeat(512 << 10)];
        let j = Job::new("j", "s", &big, JobState::Refused, None);
        let kept: usize = j.argv.iter().map(String::len).sum();
        assert!(kept <= JOB_ARGV_BYTES && j.argv[2].len() <= JOB_ARG_BYTES);
        assert_eq!(j.argv[..2], big[..2]);
        assert!(big[2].starts_with(&j.argv[2]));
        let o = j.argv_omitted.as_ref().unwrap();
        assert_eq!((o.bytes, o.items), (big.iter().map(String::len).sum(), 3));
        let json = serde_json::to_vec(&big).unwrap();
        assert_eq!(o.sha256, crate::config::sha256_hex(&json));
        // Many small items: the leading ones within the budget.
        let many: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let (kept, omitted) = argv_excerpt(&many);
        assert!(kept.iter().map(String::len).sum::<usize>() <= JOB_ARGV_BYTES);
        assert_eq!(omitted.unwrap().items, 100_000);
        // Control: an ordinary argv is kept whole, nothing omitted.
        let small: Vec<String> = vec!["git".into(), "status".into()];
        let j = Job::new("j", "s", &small, JobState::Refused, None);
        assert_eq!(j.argv, small);
        assert!(j.argv_omitted.is_none());
        assert!(j.view()["argv_omitted"].is_null());
    }

    #[test]
    fn ancestors_see_descendants_and_nobody_else() {
        let mut s = State::default();
        for (id, p) in [
            ("a", None),
            ("a1", Some("a")),
            ("a11", Some("a1")),
            ("b", None),
        ] {
            s.sessions.insert(id.into(), session(id, p));
        }
        assert!(s.within("a11", "a"));
        assert!(s.within("a1", "a1"));
        assert!(!s.within("a", "a1"), "a child does not see its parent");
        assert!(!s.within("b", "a"));
        assert!(!s.within("a", "b"));
        assert!(!s.within("gone", "a"));
    }

    #[test]
    fn an_ended_session_leaves_no_job_records_behind() {
        let mut s = State::default();
        s.sessions.insert("a".into(), session("a", None));
        s.sessions.insert("b".into(), session("b", None));
        for (job, sess) in [("j1", "a"), ("j2", "a"), ("j3", "b")] {
            s.jobs.insert(
                job.into(),
                Job::new(job, sess, &[], JobState::Running, None),
            );
            s.running += 1;
        }
        s.finish("j1", JobState::Finished, serde_json::json!({"code": 0}), 8);
        s.finish("j3", JobState::Finished, serde_json::json!({"code": 0}), 8);
        assert!(s.job_for("a", "j1").unwrap().view()["exit"]["code"] == 0);
        // `a` ends while j2 still runs: j1 goes now, j2 when it ends; b's job stays.
        assert!(s.remove_session("a").is_some());
        assert!(!s.jobs.contains_key("j1") && !s.finished.contains_key("a"));
        assert!(s.jobs.contains_key("j2"));
        s.finish("j2", JobState::Finished, serde_json::json!({"code": 0}), 8);
        assert!(!s.jobs.contains_key("j2") && !s.finished.contains_key("a"));
        assert_eq!(s.running, 0);
        assert!(s.job_for("b", "j3").is_some());
    }
}

#[cfg(test)]
mod degraded_metrics {
    use super::*;

    #[test]
    fn degraded_jobs_are_counted_by_layer() {
        let m = Metrics::default();
        m.count_degraded(&["landlock-scope".to_string()]);
        m.count_degraded(&["landlock-scope".to_string(), "cgroup".to_string()]);
        m.count_degraded(&[]);
        let text = m.render(0, 0);
        assert!(text.contains("execbox_jobs_degraded_total{layer=\"landlock-scope\"} 2\n"));
        assert!(text.contains("execbox_jobs_degraded_total{layer=\"cgroup\"} 1\n"));
        assert!(text.contains("execbox_jobs_degraded_total{layer=\"landlock\"} 0\n"));
    }
}
