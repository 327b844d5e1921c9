//! Pairing: an operator issues a one-time code (`execbox pair`, operator socket) that binds the
//! session an agent redeems it for (`POST /v1/sessions {"pairing_code"}`, agent socket) to the
//! profile and workspace the operator chose. See `docs/pairing.md`.
//!
//! This module owns the outstanding codes and the guessing accounting, with no I/O:
//! - at most `pairing.max_failures` failed redemptions per peer uid within
//!   `pairing.failure_window`; after that the uid's attempts are refused *without looking at
//!   the code*, so even the right code fails until the oldest failure leaves the window;
//! - between failures, an exponential backoff (`pairing.backoff` × 2^(n−1)), same refusal;
//! - `pairing.alert_after` failures from all uids together within the window invalidate every
//!   outstanding code (a wrong guess names no profile, so every profile's codes are the ones
//!   under attack) and raise an alert.
//!
//! Must never: keep a code in clear, compare codes in variable time, tell a caller why a code
//! failed (wrong, expired, used and revoked look the same), or count an attempt refused unread
//! as a failure (it judged nothing, so it must not move the alert threshold either).

pub mod clock;
pub mod code;
pub mod routes;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::config::PairingConfig;
use clock::Clock;

/// One outstanding code, as the daemon keeps it (the hash, never the code).
#[derive(Debug, Clone)]
pub struct Outstanding {
    /// Printed, listed, used to revoke; the only name of the code in logs and audit records.
    pub id: String,
    pub hash: [u8; 32],
    pub profile: String,
    /// The operator's directory; `None`: the session gets its own under `workspace_root`.
    pub workspace: Option<PathBuf>,
    pub label: Option<String>,
    pub issued_by: u32,
    pub created_at: u64,
    pub expires: Instant,
    pub expires_at: u64,
}

impl Outstanding {
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "code_id": self.id,
            "profile": self.profile,
            "workspace": self.workspace,
            "label": self.label,
            "issued_by": self.issued_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        })
    }
}

/// What a redemption attempt came to.
#[derive(Debug)]
pub enum Redeem {
    /// The code matched an outstanding, unexpired code, which is now used up.
    Redeemed(Outstanding),
    /// Refused without looking at the code: `locked` when the uid used up its failures in
    /// the window, otherwise still in backoff after its last failure.
    Refused { wait: Duration, locked: bool },
    /// A failure, counted.
    Failed(Failure),
}

#[derive(Debug)]
pub struct Failure {
    /// The uid's failures within the window, this one included.
    pub failures: u32,
    /// When the code was a real one past its expiry, its id (for the audit record only).
    pub expired_id: Option<String>,
    /// The alert threshold was reached: every outstanding code was invalidated (listed).
    pub alert: Option<Vec<Outstanding>>,
}

/// The outstanding codes and failure history.
#[derive(Debug, Default)]
pub struct Registry {
    codes: Vec<Outstanding>,
    per_uid: HashMap<u32, VecDeque<Instant>>,
    /// Failures of every uid within the window, for the alert threshold.
    all: VecDeque<Instant>,
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| *t + window <= now) {
        q.pop_front();
    }
}

impl Registry {
    /// Adds a code; `false` (nothing added) when `max_codes` are outstanding.
    pub fn issue(&mut self, code: Outstanding, now: Instant, max_codes: usize) -> bool {
        self.expire(now);
        if self.codes.len() >= max_codes {
            return false;
        }
        self.codes.push(code);
        true
    }

    /// Outstanding, unexpired codes, oldest first.
    pub fn list(&mut self, now: Instant) -> Vec<Outstanding> {
        self.expire(now);
        self.codes.clone()
    }

    /// Takes a code out (revocation); `None` when there is no such outstanding code.
    pub fn take(&mut self, id: &str) -> Option<Outstanding> {
        let i = self.codes.iter().position(|c| c.id == id)?;
        Some(self.codes.remove(i))
    }

    /// Restores a code taken out by a step that then failed (its audit record was not written).
    pub fn put_back(&mut self, code: Outstanding) {
        self.codes.push(code);
    }

    fn expire(&mut self, now: Instant) {
        self.codes.retain(|c| c.expires > now);
    }

    /// `Some((wait, locked))` while `uid` may not try a code.
    pub fn gate(&mut self, uid: u32, now: Instant, l: &PairingConfig) -> Option<(Duration, bool)> {
        let q = self.per_uid.get_mut(&uid)?;
        prune(q, now, l.failure_window);
        let (Some(first), Some(last)) = (q.front().copied(), q.back().copied()) else {
            self.per_uid.remove(&uid);
            return None;
        };
        let n = q.len() as u32;
        if n >= l.max_failures {
            return Some((
                (first + l.failure_window).saturating_duration_since(now),
                true,
            ));
        }
        let backoff = l
            .backoff
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(l.failure_window);
        let until = last + backoff;
        (until > now).then(|| (until - now, false))
    }

    /// One attempt by `uid` with `presented`.
    pub fn redeem(&mut self, uid: u32, presented: &str, now: Instant, l: &PairingConfig) -> Redeem {
        if let Some((wait, locked)) = self.gate(uid, now, l) {
            return Redeem::Refused { wait, locked };
        }
        let canonical = code::normalize(presented);
        // Hash and compare against every code whatever the input, without stopping at a
        // match: the time taken says nothing about which code, if any, was close.
        let presented_hash = code::hash(canonical.as_deref().unwrap_or(""));
        let mut matched = None;
        for (i, c) in self.codes.iter().enumerate() {
            let eq: bool = presented_hash.ct_eq(&c.hash).into();
            if eq && canonical.is_some() {
                matched = Some(i);
            }
        }
        match matched {
            Some(i) if self.codes[i].expires > now => Redeem::Redeemed(self.codes.remove(i)),
            m => {
                let expired_id = m.map(|i| self.codes[i].id.clone());
                self.expire(now);
                Redeem::Failed(self.fail(uid, now, l, expired_id))
            }
        }
    }

    fn fail(
        &mut self,
        uid: u32,
        now: Instant,
        l: &PairingConfig,
        expired_id: Option<String>,
    ) -> Failure {
        let q = self.per_uid.entry(uid).or_default();
        q.push_back(now);
        let failures = q.len() as u32;
        prune(&mut self.all, now, l.failure_window);
        self.all.push_back(now);
        let alert = (self.all.len() as u32 >= l.alert_after).then(|| {
            // One alert per burst: the count starts again from zero.
            self.all.clear();
            std::mem::take(&mut self.codes)
        });
        Failure {
            failures,
            expired_id,
            alert,
        }
    }
}

/// The registry behind its lock, and the clock it is read with.
pub struct Pairing {
    registry: Mutex<Registry>,
    clock: Box<dyn Clock>,
}

impl Pairing {
    pub fn new(clock: Box<dyn Clock>) -> Pairing {
        Pairing {
            registry: Mutex::new(Registry::default()),
            clock,
        }
    }

    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The registry (held for microseconds; never across an await or an audit append).
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PairingConfig {
        PairingConfig {
            max_failures: 5,
            failure_window: Duration::from_secs(3600),
            backoff: Duration::from_secs(1),
            alert_after: 20,
            max_codes: 4,
            max_ttl: Duration::from_secs(86_400),
        }
    }

    fn outstanding(id: &str, code: &str, now: Instant, ttl: u64) -> Outstanding {
        Outstanding {
            id: id.into(),
            hash: code::hash(&code::normalize(code).unwrap()),
            profile: "default".into(),
            workspace: None,
            label: None,
            issued_by: 0,
            created_at: 0,
            expires: now + Duration::from_secs(ttl),
            expires_at: 0,
        }
    }

    const WRONG: &str = "2222-2222-2222-2222";

    #[test]
    fn a_code_works_once_and_in_any_spelling() {
        let clock = clock::Manual::default();
        let (mut r, l) = (Registry::default(), limits());
        let c = code::generate().unwrap();
        assert!(r.issue(outstanding("p1", &c, clock.now(), 600), clock.now(), 4));
        let spelled = c.replace('-', "").to_ascii_lowercase();
        assert!(
            matches!(r.redeem(7, &spelled, clock.now(), &l), Redeem::Redeemed(o) if o.id == "p1")
        );
        assert!(matches!(
            r.redeem(7, &c, clock.now(), &l),
            Redeem::Failed(Failure { failures: 1, .. })
        ));
    }

    #[test]
    fn an_expired_code_fails_and_is_named_for_the_record_only() {
        let clock = clock::Manual::default();
        let (mut r, l) = (Registry::default(), limits());
        let c = code::generate().unwrap();
        r.issue(outstanding("p1", &c, clock.now(), 60), clock.now(), 4);
        clock.advance(Duration::from_secs(61));
        match r.redeem(7, &c, clock.now(), &l) {
            Redeem::Failed(f) => assert_eq!(f.expired_id.as_deref(), Some("p1")),
            other => panic!("{other:?}"),
        }
        assert!(r.list(clock.now()).is_empty());
    }

    #[test]
    fn backoff_doubles_and_the_limit_holds_for_the_window_even_for_the_right_code() {
        let clock = clock::Manual::default();
        let (mut r, l) = (Registry::default(), limits());
        let c = code::generate().unwrap();
        r.issue(outstanding("p1", &c, clock.now(), 7200), clock.now(), 4);
        for n in 1..=5u32 {
            assert!(
                matches!(r.redeem(7, WRONG, clock.now(), &l), Redeem::Failed(f) if f.failures == n)
            );
            if n < 5 {
                // Right after a failure, even the right code is refused unread.
                let wait = Duration::from_secs(1 << (n - 1));
                assert!(matches!(r.redeem(7, &c, clock.now(), &l),
                    Redeem::Refused { wait: w, locked: false } if w == wait));
                assert!(
                    r.gate(8, clock.now(), &l).is_none(),
                    "other uids are unaffected"
                );
                clock.advance(wait);
            }
        }
        clock.advance(Duration::from_secs(600));
        assert!(matches!(
            r.redeem(7, &c, clock.now(), &l),
            Redeem::Refused { locked: true, .. }
        ));
        // Refusals did not count: once all five failures have left the window, the code works.
        clock.advance(Duration::from_secs(3600));
        assert!(matches!(
            r.redeem(7, &c, clock.now(), &l),
            Redeem::Redeemed(_)
        ));
    }

    #[test]
    fn the_alert_threshold_invalidates_every_outstanding_code_once() {
        let clock = clock::Manual::default();
        let l = PairingConfig {
            alert_after: 3,
            ..limits()
        };
        let mut r = Registry::default();
        let (a, b) = (code::generate().unwrap(), code::generate().unwrap());
        r.issue(outstanding("pa", &a, clock.now(), 600), clock.now(), 4);
        r.issue(outstanding("pb", &b, clock.now(), 600), clock.now(), 4);
        // Three uids, one guess each: no single uid is near its limit.
        for uid in [1, 2] {
            assert!(matches!(
                r.redeem(uid, WRONG, clock.now(), &l),
                Redeem::Failed(Failure { alert: None, .. })
            ));
        }
        match r.redeem(3, WRONG, clock.now(), &l) {
            Redeem::Failed(Failure {
                alert: Some(gone), ..
            }) => {
                let ids: Vec<_> = gone.iter().map(|o| o.id.as_str()).collect();
                assert_eq!(ids, ["pa", "pb"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.list(clock.now()).is_empty());
        assert!(matches!(
            r.redeem(4, &a, clock.now(), &l),
            Redeem::Failed(Failure { alert: None, .. })
        ));
    }

    #[test]
    fn outstanding_codes_are_bounded_and_revocable() {
        let clock = clock::Manual::default();
        let (mut r, l) = (Registry::default(), limits());
        let codes: Vec<String> = (0..5).map(|_| code::generate().unwrap()).collect();
        for (i, c) in codes.iter().enumerate() {
            let ok = r.issue(
                outstanding(&format!("p{i}"), c, clock.now(), 600),
                clock.now(),
                4,
            );
            assert_eq!(ok, i < 4);
        }
        assert_eq!(r.take("p1").unwrap().id, "p1");
        assert!(r.take("p1").is_none());
        assert!(matches!(
            r.redeem(7, &codes[1], clock.now(), &l),
            Redeem::Failed(_)
        ));
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            r.redeem(7, &codes[2], clock.now(), &l),
            Redeem::Redeemed(_)
        ));
    }
}
