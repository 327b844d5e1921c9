//! Operator approvals: the queue of requests whose verdict is *approve*, the canonical request
//! hash every decision is bound to, and the session-scope grants (see `docs/approvals.md`).
//!
//! Owns three rules:
//! - **Binding.** A request is identified by the SHA-256 of its canonical form ([`Canonical`]):
//!   the exact command string or argv, the resolved cwd, the whole sorted environment, the stdin
//!   digest, the terms it runs under (wall time, memory, pids, cpu, output cap, what a
//!   disconnect does, the envelope), the profile name and the profile file's hash, the
//!   session. The operator's decision must carry the hash it was shown; the waiter recomputes
//!   it before running.
//! - **Scopes never widen.** `once` lets exactly the waiting request run. `session` also lets a
//!   later request of the *same* session with the *same* hash run, until the session ends: not
//!   the program, not another session, not a different byte.
//! - **One decider.** Whoever takes a pending entry out of the map (the operator's decision,
//!   expiry, the requester disconnecting, the session ending) owns its outcome; everyone else
//!   finds it gone.
//!
//! Must never: show an operator a request whose `approval_requested` record is not durable yet
//! (entries start invisible), or keep a session's grants after the session ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::config::sha256_hex;

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The waiting request only, exactly once.
    Once,
    /// The same canonical request again in the same session, until it ends.
    Session,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Session => "session",
        }
    }
}

/// What is being approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `POST /v1/exec` with an approve verdict.
    Exec,
    /// `POST /v1/sessions` binding a profile listed in `paths.approval_profiles`.
    SessionProfile,
}

/// The version of [`Canonical`]: 2 added the run terms ([`Terms`]).
pub const CANONICAL_VERSION: u32 = 2;

/// The terms an exec request runs under: part of what an operator approves, so a grant given
/// for a short, tightly limited run is not reused for a long, unlimited, detached one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Terms {
    pub wall_time_ms: u64,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpu: Option<f64>,
    pub nofile: u64,
    pub output_bytes: u64,
    /// `kill` or `detach`.
    pub on_disconnect: &'static str,
    pub envelope: bool,
}

impl Terms {
    pub fn new(limits: &crate::profile::Limits, detach: bool, envelope: bool) -> Terms {
        Terms {
            wall_time_ms: limits.wall_time.as_millis().min(u64::MAX as u128) as u64,
            memory: limits.memory,
            pids: limits.pids,
            cpu: limits.cpu,
            nofile: limits.nofile,
            output_bytes: limits.output_bytes,
            on_disconnect: if detach { "detach" } else { "kill" },
            envelope,
        }
    }
}

/// The canonical form of a request; its SHA-256 is the approval's `hash`. Field order is fixed
/// by the struct and the environment is sorted, so equal requests give equal bytes.
#[derive(Debug, Serialize)]
pub struct Canonical<'a> {
    /// Bumped if the canonical form ever changes, so old hashes can never match new requests.
    pub v: u32,
    pub kind: Kind,
    pub session: Option<&'a str>,
    /// The requesting peer (profile binds, which have no session yet).
    pub peer_uid: Option<u32>,
    pub profile: &'a str,
    pub profile_sha256: &'a str,
    /// The exact shell string, when the request was one.
    pub command: Option<&'a str>,
    /// The argv that will be executed (`/bin/bash -c <command>` for a shell string).
    pub argv: &'a [String],
    pub cwd: Option<String>,
    /// The job's whole environment, sorted by name.
    pub env: Vec<(&'a str, &'a str)>,
    pub stdin_sha256: Option<String>,
    /// The run terms of an exec request (`None` for profile binds).
    pub terms: Option<Terms>,
}

impl Canonical<'_> {
    pub fn hash(&self) -> String {
        // Serializing plain strings, numbers and vectors cannot fail.
        sha256_hex(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The operator's decision, handed to the waiting request.
#[derive(Debug, Clone)]
pub enum Outcome {
    Approved {
        scope: Scope,
        operator_uid: u32,
        /// The hash the operator approved (checked against the request before it runs).
        hash: String,
    },
    Denied {
        operator_uid: u32,
        reason: Option<String>,
    },
}

/// A session-scope grant: who approved which request.
#[derive(Debug, Clone)]
pub struct Grant {
    pub approval_id: String,
    pub operator_uid: u32,
}

/// One waiting request.
#[derive(Debug)]
pub struct Pending {
    pub seq: u64,
    pub id: String,
    pub kind: Kind,
    /// What the queue bound counts by: the session, or `uid:N` for profile binds.
    group: String,
    pub session: Option<String>,
    pub job: Option<String>,
    pub hash: String,
    /// What the operator is shown (command, parsed commands, rule, reason, ids, cwd, env keys).
    pub view: serde_json::Value,
    pub created_at: u64,
    pub expires_at: u64,
    pub expires: Instant,
    visible: bool,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl Pending {
    /// Delivers the decision; false when the requester is already gone.
    pub fn decide(mut self, outcome: Outcome) -> bool {
        self.tx.take().is_some_and(|tx| tx.send(outcome).is_ok())
    }

    /// The JSON an operator sees (`GET /v1/approvals`).
    pub fn public(&self) -> serde_json::Value {
        let mut v = self.view.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("approval_id".into(), self.id.clone().into());
            o.insert("seq".into(), self.seq.into());
            o.insert(
                "kind".into(),
                serde_json::to_value(self.kind).unwrap_or_default(),
            );
            o.insert("hash".into(), self.hash.clone().into());
            o.insert("created_at".into(), self.created_at.into());
            o.insert("expires_at".into(), self.expires_at.into());
        }
        v
    }
}

/// Why [`Approvals::take`] found nothing to decide.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeError {
    /// No such pending request (decided, expired, withdrawn, or never existed).
    NotFound,
    /// The decision's hash is not the request's: the operator saw something else.
    HashMismatch,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    by_id: HashMap<String, u64>,
    /// (session, hash) → grant.
    grants: HashMap<(String, String), Grant>,
}

/// The queue and the grants; one lock, held for microseconds.
pub struct Approvals {
    inner: Mutex<Inner>,
    /// Bumped whenever a request becomes visible or leaves: wakes long-polls.
    changed: watch::Sender<u64>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// A new, still invisible, pending request.
pub struct NewPending {
    pub kind: Kind,
    /// The queue bound applies per group: the session id, or `uid:N` for profile binds.
    pub group: String,
    pub session: Option<String>,
    pub job: Option<String>,
    pub hash: String,
    pub view: serde_json::Value,
    pub expires: Instant,
    pub expires_at: u64,
}

impl Approvals {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request, invisible until [`Approvals::publish`]. `None` when its group (the
    /// session, or the uid of a profile bind) already has `max_per_session` waiting.
    pub fn add(
        &self,
        id: String,
        new: NewPending,
        max_per_session: usize,
    ) -> Option<oneshot::Receiver<Outcome>> {
        let mut g = self.lock();
        let waiting = g.pending.values().filter(|p| p.group == new.group).count();
        if waiting >= max_per_session {
            return None;
        }
        g.next_seq += 1;
        let seq = g.next_seq;
        let (tx, rx) = oneshot::channel();
        g.by_id.insert(id.clone(), seq);
        g.pending.insert(
            seq,
            Pending {
                seq,
                id,
                kind: new.kind,
                group: new.group,
                session: new.session,
                job: new.job,
                hash: new.hash,
                view: new.view,
                created_at: super::state::unix_now(),
                expires_at: new.expires_at,
                expires: new.expires,
                visible: false,
                tx: Some(tx),
            },
        );
        Some(rx)
    }

    /// Shows a request to operators (after its `approval_requested` record is durable).
    pub fn publish(&self, id: &str) {
        let seq = {
            let mut g = self.lock();
            let Some(&seq) = g.by_id.get(id) else { return };
            if let Some(p) = g.pending.get_mut(&seq) {
                p.visible = true;
            }
            seq
        };
        self.changed.send_replace(seq);
    }

    /// Visible requests with `seq > after`, oldest first.
    pub fn list(&self, after: u64) -> Vec<serde_json::Value> {
        let g = self.lock();
        g.pending
            .range(after.saturating_add(1)..)
            .map(|(_, p)| p)
            .filter(|p| p.visible)
            .map(Pending::public)
            .collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Takes a visible request out for a decision. With `hash`, it must be the request's.
    pub fn take(&self, id: &str, hash: Option<&str>) -> Result<Pending, TakeError> {
        let mut g = self.lock();
        let seq = *g.by_id.get(id).ok_or(TakeError::NotFound)?;
        let p = g.pending.get(&seq).ok_or(TakeError::NotFound)?;
        if !p.visible {
            return Err(TakeError::NotFound);
        }
        if let Some(h) = hash
            && !constant_time_eq(h.as_bytes(), p.hash.as_bytes())
        {
            return Err(TakeError::HashMismatch);
        }
        g.by_id.remove(id);
        g.pending.remove(&seq).ok_or(TakeError::NotFound)
    }

    /// Returns a request taken by [`Approvals::take`] whose decision could not be recorded.
    pub fn put_back(&self, p: Pending) {
        let mut g = self.lock();
        g.by_id.insert(p.id.clone(), p.seq);
        g.pending.insert(p.seq, p);
    }

    /// Removes a request (expiry, withdrawal); `None` when someone else already took it.
    pub fn remove(&self, id: &str) -> Option<Pending> {
        let p = {
            let mut g = self.lock();
            let seq = g.by_id.remove(id)?;
            g.pending.remove(&seq)
        };
        if p.is_some() {
            self.changed.send_modify(|_| {});
        }
        p
    }

    pub fn grant_session(&self, session: &str, hash: &str, grant: Grant) {
        self.lock()
            .grants
            .insert((session.to_string(), hash.to_string()), grant);
    }

    /// The session-scope grant for exactly this request in exactly this session.
    pub fn session_grant(&self, session: &str, hash: &str) -> Option<Grant> {
        self.lock()
            .grants
            .get(&(session.to_string(), hash.to_string()))
            .cloned()
    }

    /// Forgets ended sessions' grants and drops their waiting requests (their waiters see
    /// the sender vanish and refuse).
    pub fn end_sessions(&self, sessions: &[String]) {
        let mut g = self.lock();
        g.grants.retain(|(s, _), _| !sessions.contains(s));
        let gone: Vec<(u64, String)> = g
            .pending
            .values()
            .filter(|p| p.session.as_ref().is_some_and(|s| sessions.contains(s)))
            .map(|p| (p.seq, p.id.clone()))
            .collect();
        for (seq, id) in gone {
            g.pending.remove(&seq);
            g.by_id.remove(&id);
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon<'a>(argv: &'a [String], env: Vec<(&'a str, &'a str)>, cwd: &str) -> String {
        canon_terms(argv, env, cwd, None, None)
    }

    fn canon_terms<'a>(
        argv: &'a [String],
        env: Vec<(&'a str, &'a str)>,
        cwd: &str,
        stdin: Option<&str>,
        terms: Option<Terms>,
    ) -> String {
        Canonical {
            v: CANONICAL_VERSION,
            kind: Kind::Exec,
            session: Some("s_1"),
            peer_uid: None,
            profile: "default",
            profile_sha256: "ab",
            command: None,
            argv,
            cwd: Some(cwd.into()),
            env,
            stdin_sha256: stdin.map(|s| sha256_hex(s.as_bytes())),
            terms,
        }
        .hash()
    }

    /// Issue 15 item 11: the run terms and stdin are part of what is approved.
    #[test]
    fn terms_and_stdin_change_the_hash() {
        let argv = vec!["bash".to_string()];
        let limits = crate::profile::Limits {
            memory: Some(256 << 20),
            pids: Some(64),
            cpu: Some(1.0),
            wall_time: std::time::Duration::from_secs(30),
            nofile: 1024,
            output_bytes: 1 << 20,
        };
        let h = |l: &crate::profile::Limits, detach, envelope, stdin| {
            canon_terms(
                &argv,
                vec![],
                "/w",
                stdin,
                Some(Terms::new(l, detach, envelope)),
            )
        };
        let base = h(&limits, false, false, Some("echo hi"));
        assert_eq!(base, h(&limits, false, false, Some("echo hi")));
        assert_ne!(base, h(&limits, true, false, Some("echo hi")));
        assert_ne!(base, h(&limits, false, true, Some("echo hi")));
        assert_ne!(base, h(&limits, false, false, Some("rm -rf ./*")));
        assert_ne!(base, h(&limits, false, false, None));
        for change in [
            |l: &mut crate::profile::Limits| l.wall_time = std::time::Duration::from_secs(600),
            |l: &mut crate::profile::Limits| l.memory = None,
            |l: &mut crate::profile::Limits| l.pids = Some(4096),
            |l: &mut crate::profile::Limits| l.cpu = None,
            |l: &mut crate::profile::Limits| l.output_bytes = 64 << 20,
        ] {
            let mut l = limits;
            change(&mut l);
            assert_ne!(base, h(&l, false, false, Some("echo hi")));
        }
    }

    #[test]
    fn any_byte_changes_the_hash() {
        let argv = vec!["ls".to_string()];
        let base = canon(&argv, vec![("A", "1")], "/w");
        assert_eq!(base, canon(&argv, vec![("A", "1")], "/w"));
        assert_ne!(base, canon(&argv, vec![("A", "2")], "/w"));
        assert_ne!(base, canon(&argv, vec![("A", "1")], "/w/"));
        assert_ne!(base, canon(&["ls ".to_string()], vec![("A", "1")], "/w"));
    }

    fn new(session: &str) -> NewPending {
        NewPending {
            kind: Kind::Exec,
            group: session.into(),
            session: Some(session.into()),
            job: None,
            hash: "h".into(),
            view: serde_json::json!({}),
            expires: Instant::now(),
            expires_at: 0,
        }
    }

    #[test]
    fn queue_is_bounded_per_session_and_invisible_until_published() {
        let a = Approvals::default();
        assert!(a.add("a1".into(), new("s"), 1).is_some());
        assert!(a.add("a2".into(), new("s"), 1).is_none());
        assert!(a.add("a3".into(), new("t"), 1).is_some());
        assert!(a.list(0).is_empty());
        assert_eq!(a.take("a1", None).unwrap_err(), TakeError::NotFound);
        a.publish("a1");
        assert_eq!(a.list(0).len(), 1);
        assert_eq!(
            a.take("a1", Some("x")).unwrap_err(),
            TakeError::HashMismatch
        );
        let p = a.take("a1", Some("h")).unwrap();
        assert!(a.remove("a1").is_none(), "one decider");
        a.put_back(p);
        assert!(a.remove("a1").is_some());
    }

    #[test]
    fn grants_are_per_session_and_end_with_it() {
        let a = Approvals::default();
        let g = Grant {
            approval_id: "a".into(),
            operator_uid: 0,
        };
        a.grant_session("s", "h", g);
        assert!(a.session_grant("s", "h").is_some());
        assert!(a.session_grant("t", "h").is_none());
        assert!(a.session_grant("s", "h2").is_none());
        a.end_sessions(&["s".into()]);
        assert!(a.session_grant("s", "h").is_none());
    }
}
