//! Connection accounting and log throttling: what keeps one local user from taking every
//! descriptor of the daemon, or from filling its log, by opening connections.
//!
//! - [`Conns`] admits a connection before a byte of it is read: at most
//!   `limits.max_connections_per_uid` per peer uid (allowed or not) and `limits.max_connections`
//!   on the agent socket together; the operator socket has its own `limits.operator_connections`,
//!   which agent connections never use, so it answers while agents are at their caps. A refused
//!   connection is answered with one non-blocking write and closed (no task, no wait).
//! - [`Throttle`] decides which refusals are logged: the first of a (uid, kind) in each window,
//!   the next one saying how many were folded into it.
//! - [`descriptor_budget`] fits the caps into the process's `RLIMIT_NOFILE` with a reserve for
//!   running jobs' pipes and the daemon's own files (`docs/reliability.md`).
//!
//! Must never: block the accept loop, or let a connection outlive its permit's count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::Socket;

/// Descriptors a running job holds in the daemon besides its client's connection: the read
/// ends of its stdout, stderr and result pipes, the write end of its cancel pipe, and, while it
/// is handed over, its stdin pipe's write end; one to spare.
pub const FDS_PER_JOB: u64 = 6;
/// Descriptors the daemon needs besides connections and jobs: the sockets, the audit log, the
/// spawner channel, the runtime's epoll and eventfds, artifact opens, `/proc` reads.
pub const FDS_BASE: u64 = 128;

/// The connection caps in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub agent_total: usize,
    pub per_uid: usize,
    pub operator_total: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer uid holds `per_uid` connections already.
    PerUid,
    /// The socket holds its total already.
    Total,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::PerUid => "too_many_connections_for_uid",
            Refusal::Total => "too_many_connections",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    per_uid: HashMap<u32, usize>,
    agent: usize,
    operator: usize,
}

/// Live connections per socket and per uid.
#[derive(Debug)]
pub struct Conns {
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Permit {
    counts: Arc<Mutex<Counts>>,
    socket: Socket,
    uid: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if self.socket == Socket::Operator {
            c.operator = c.operator.saturating_sub(1);
            return;
        }
        c.agent = c.agent.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

impl Conns {
    pub fn new(caps: Caps) -> Conns {
        Conns {
            caps,
            counts: Arc::default(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A place for a connection of `uid` on `socket`, or why not. The per-uid cap is the agent
    /// socket's (every peer uid there, allowed or not); the operator socket (mode 0600, operators
    /// only) has just its total.
    pub fn admit(&self, socket: Socket, uid: u32) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if socket == Socket::Operator {
            if c.operator >= self.caps.operator_total {
                return Err(Refusal::Total);
            }
            c.operator += 1;
        } else {
            if c.per_uid.get(&uid).copied().unwrap_or(0) >= self.caps.per_uid {
                return Err(Refusal::PerUid);
            }
            if c.agent >= self.caps.agent_total {
                return Err(Refusal::Total);
            }
            c.agent += 1;
            *c.per_uid.entry(uid).or_insert(0) += 1;
        }
        Ok(Permit {
            counts: self.counts.clone(),
            socket,
            uid,
        })
    }

    /// `(agent, operator)` connections open now.
    pub fn open(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.agent, c.operator)
    }
}

/// The caps to use under a soft `RLIMIT_NOFILE` of `nofile`: the configured ones when they fit
/// with `FDS_BASE + FDS_PER_JOB × max_jobs` to spare, else the agent total lowered to fit
/// (stricter, never looser; the caller logs it). `None` when not even one agent connection
/// fits beside the reserve.
pub fn descriptor_budget(configured: Caps, max_jobs: usize, nofile: u64) -> Option<Caps> {
    let reserve = FDS_BASE
        .saturating_add(FDS_PER_JOB.saturating_mul(max_jobs as u64))
        .saturating_add(configured.operator_total as u64);
    let room = nofile.saturating_sub(reserve);
    if room == 0 {
        return None;
    }
    let agent_total = (configured.agent_total as u64).min(room) as usize;
    Some(Caps {
        agent_total,
        per_uid: configured.per_uid.min(agent_total),
        ..configured
    })
}

/// At most one log line per (uid, kind) per window; the next one carries the count of those
/// folded into it. Bounded: past `MAX_KEYS` entries, those outside the window are forgotten.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    last: HashMap<(u32, &'static str), (Instant, u64)>,
}

const MAX_KEYS: usize = 4096;

/// The log window of the daemon's refusal lines.
pub const LOG_WINDOW: Duration = Duration::from_secs(1);

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(LOG_WINDOW)
    }
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            last: HashMap::new(),
        }
    }

    /// `Some(n)`: log now, mentioning the `n` occurrences not logged since the last line.
    /// `None`: counted, not logged.
    pub fn check(&mut self, uid: u32, kind: &'static str, now: Instant) -> Option<u64> {
        if self.last.len() >= MAX_KEYS && !self.last.contains_key(&(uid, kind)) {
            let window = self.window;
            self.last
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < window);
            if self.last.len() >= MAX_KEYS {
                // Every entry is recent: a new key is logged, not remembered.
                return Some(0);
            }
        }
        match self.last.get_mut(&(uid, kind)) {
            Some((t, n)) if now.saturating_duration_since(*t) < self.window => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                *t = now;
                Some(std::mem::take(n))
            }
            None => {
                self.last.insert((uid, kind), (now, 0));
                Some(0)
            }
        }
    }
}

/// The whole reply to a connection refused before it was read: small enough for one
/// non-blocking write into an empty socket buffer.
pub fn refusal_reply(r: Refusal) -> Vec<u8> {
    let body = format!(
        "{{\"error\":{{\"code\":\"{}\",\"message\":\"too many open connections; close idle ones and retry\"}}}}",
        r.code()
    );
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(agent_total: usize, per_uid: usize, operator_total: usize) -> Caps {
        Caps {
            agent_total,
            per_uid,
            operator_total,
        }
    }

    #[test]
    fn one_uid_cannot_take_more_than_its_share_and_the_operator_keeps_its_own() {
        let c = Conns::new(caps(3, 2, 1));
        let a1 = c.admit(Socket::Agent, 1000).unwrap();
        let _a2 = c.admit(Socket::Agent, 1000).unwrap();
        assert_eq!(c.admit(Socket::Agent, 1000).unwrap_err(), Refusal::PerUid);
        // Another uid still gets in, up to the total.
        let _b = c.admit(Socket::Agent, 1001).unwrap();
        assert_eq!(c.admit(Socket::Agent, 1002).unwrap_err(), Refusal::Total);
        // The operator socket is not touched by agent connections.
        let o = c.admit(Socket::Operator, 0).unwrap();
        assert_eq!(c.admit(Socket::Operator, 0).unwrap_err(), Refusal::Total);
        assert_eq!(c.open(), (3, 1));
        // Closing gives the place back.
        drop(a1);
        drop(o);
        let _a3 = c.admit(Socket::Agent, 1000).unwrap();
        let _o2 = c.admit(Socket::Operator, 0).unwrap();
        assert_eq!(c.open(), (3, 1));
    }

    #[test]
    fn the_caps_fit_the_descriptor_limit_with_the_reserve() {
        let want = caps(1024, 64, 32);
        // Plenty: unchanged.
        assert_eq!(descriptor_budget(want, 64, 20_000), Some(want));
        // 256 descriptors, 4 jobs: 256 - (128 + 24 + 32) = 72 agent connections.
        assert_eq!(descriptor_budget(want, 4, 256), Some(caps(72, 64, 32)));
        assert_eq!(descriptor_budget(want, 4, 200), Some(caps(16, 16, 32)));
        assert_eq!(descriptor_budget(want, 4, 184), None);
    }

    #[test]
    fn the_throttle_logs_once_per_window_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.check(7, "refused", t0), Some(0));
        for i in 1..=99 {
            assert_eq!(t.check(7, "refused", t0 + Duration::from_millis(i)), None);
        }
        // Another uid or kind is its own line.
        assert_eq!(t.check(8, "refused", t0), Some(0));
        assert_eq!(t.check(7, "other", t0), Some(0));
        assert_eq!(
            t.check(7, "refused", t0 + Duration::from_millis(1001)),
            Some(99)
        );
        assert_eq!(
            t.check(7, "refused", t0 + Duration::from_millis(2500)),
            Some(0)
        );
    }

    #[test]
    fn the_throttle_stays_bounded() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for uid in 0..(MAX_KEYS as u32 * 2) {
            assert_eq!(t.check(uid, "k", t0), Some(0));
        }
        assert!(t.last.len() <= MAX_KEYS);
        // Old entries are forgotten once the window passed.
        t.check(u32::MAX, "k", t0 + Duration::from_secs(2));
        assert!(t.last.len() <= 2);
    }
}
