//! Audit volume per session and per peer uid: how many bytes of audit records an agent's
//! requests may cause per second (`audit.session_rate`, `audit.uid_rate`; bursts of
//! [`BURST_SECS`] worth). A request is admitted while both of its buckets are above zero and
//! charged afterwards with what its records really took, so a bucket may go into debt by one
//! request; it is refused (`429 audit_rate_limited`) until the debt has drained.
//!
//! Must never: let one uid's requests write faster than `uid_rate` on average, whatever the
//! number of its sessions; or hold an entry for a key whose bucket is full again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A bucket holds this many seconds of its rate.
pub const BURST_SECS: f64 = 10.0;
/// Past this many entries, full buckets are forgotten (a full bucket is the same as none).
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Uid(u32),
    Session(u64),
}

/// The buckets; rates in bytes per second.
#[derive(Debug, Default)]
pub struct Volume {
    buckets: HashMap<Key, (f64, Instant)>,
}

fn session_key(session: &str) -> Key {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session.hash(&mut h);
    Key::Session(h.finish())
}

impl Volume {
    fn level(&mut self, key: Key, rate: f64, now: Instant) -> f64 {
        let cap = rate * BURST_SECS;
        let (tokens, last) = self.buckets.get(&key).copied().unwrap_or((cap, now));
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(cap);
        self.buckets.insert(key, (tokens, now));
        tokens
    }

    /// `Ok` when both buckets hold something; else how long until they will.
    pub fn admit(
        &mut self,
        session: &str,
        uid: u32,
        (session_rate, uid_rate): (u64, u64),
        now: Instant,
    ) -> Result<(), Duration> {
        let mut wait: f64 = 0.0;
        for (key, rate) in [
            (session_key(session), session_rate as f64),
            (Key::Uid(uid), uid_rate as f64),
        ] {
            let t = self.level(key, rate, now);
            if t <= 0.0 {
                wait = wait.max((-t + 1.0) / rate);
            }
        }
        if wait > 0.0 {
            return Err(Duration::from_secs_f64(wait.min(3600.0)));
        }
        Ok(())
    }

    /// Takes `bytes` from both buckets (they may go below zero).
    pub fn charge(
        &mut self,
        session: &str,
        uid: u32,
        (session_rate, uid_rate): (u64, u64),
        bytes: u64,
        now: Instant,
    ) {
        for (key, rate) in [
            (session_key(session), session_rate as f64),
            (Key::Uid(uid), uid_rate as f64),
        ] {
            let t = self.level(key, rate, now);
            self.buckets.insert(key, (t - bytes as f64, now));
        }
        if self.buckets.len() > SWEEP_AT {
            let (s, u) = (session_rate as f64, uid_rate as f64);
            self.buckets.retain(|k, (t, last)| {
                let rate = if matches!(k, Key::Uid(_)) { u } else { s };
                let now_level = *t + now.saturating_duration_since(*last).as_secs_f64() * rate;
                now_level < rate * BURST_SECS
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: (u64, u64) = (1000, 3000);

    #[test]
    fn a_session_past_its_burst_waits_for_the_debt_to_drain() {
        let mut v = Volume::default();
        let t0 = Instant::now();
        // Burst: 10 s × 1000 B/s; one request may overdraw it.
        assert!(v.admit("s", 1, RATES, t0).is_ok());
        v.charge("s", 1, RATES, 12_000, t0);
        let wait = v.admit("s", 1, RATES, t0).unwrap_err();
        assert!(
            wait >= Duration::from_secs(2) && wait < Duration::from_secs(3),
            "{wait:?}"
        );
        assert!(v.admit("s", 1, RATES, t0 + Duration::from_secs(3)).is_ok());
        // Another session of the same uid is not held back by this one's debt...
        assert!(v.admit("t", 1, RATES, t0).is_ok());
    }

    #[test]
    fn many_sessions_of_one_uid_share_the_uid_rate() {
        let mut v = Volume::default();
        let t0 = Instant::now();
        for i in 0..4 {
            let s = format!("s{i}");
            assert!(v.admit(&s, 7, RATES, t0).is_ok(), "{i}");
            v.charge(&s, 7, RATES, 9_000, t0);
        }
        // 36 kB against a 30 kB uid burst: a fresh session of uid 7 waits, uid 8 does not.
        assert!(v.admit("fresh", 7, RATES, t0).is_err());
        assert!(v.admit("other", 8, RATES, t0).is_ok());
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut v = Volume::default();
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT as u32 + 10) {
            v.charge("s", i, RATES, 10, t0);
        }
        v.charge("s", 0, RATES, 10, t0 + Duration::from_secs(60));
        assert!(v.buckets.len() < 10, "{}", v.buckets.len());
    }
}
