//! Capability tokens, bad-token lockout and request rate limits.
//!
//! A token is `<session id>.<secret>`: 32 bytes from the OS RNG, base64url. Only the SHA-256 of
//! the secret is stored, and it is compared in constant time. Must never: log a token, store
//! one in clear, or tell a caller whether a session id exists.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RngError(String);

/// `n` random bytes from the OS RNG (getrandom(2)).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RngError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| RngError(e.to_string()))?;
    Ok(b)
}

/// A random, URL-safe identifier with a kind prefix (`s_…`, `j_…`): 96 bits.
pub fn new_id(prefix: &str) -> Result<String, RngError> {
    Ok(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<12>()?)
    ))
}

/// A freshly minted secret: what the caller gets once, and the hash the daemon keeps.
pub struct Minted {
    pub secret: String,
    pub hash: [u8; 32],
}

/// 256 bits from the OS RNG.
pub fn mint() -> Result<Minted, RngError> {
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let hash = hash(&secret);
    Ok(Minted { secret, hash })
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn verify(secret: &str, stored: &[u8; 32]) -> bool {
    hash(secret).ct_eq(stored).into()
}

/// Splits `Bearer <session>.<secret>`.
pub fn parse_bearer(header: &str) -> Option<(&str, &str)> {
    let token = header.strip_prefix("Bearer ")?.trim();
    let (session, secret) = token.split_once('.')?;
    (!session.is_empty() && !secret.is_empty()).then_some((session, secret))
}

/// Bad-token accounting per peer uid: after `limit` failures, every further failure locks the
/// uid out for `base × 2^(failures − limit)` (capped at an hour). A success resets it.
#[derive(Debug, Default)]
pub struct Lockout {
    peers: HashMap<u32, (u32, Option<Instant>)>,
}

impl Lockout {
    /// `Some(remaining)` while `uid` is locked out.
    pub fn locked(&self, uid: u32, now: Instant) -> Option<Duration> {
        let (_, until) = self.peers.get(&uid)?;
        until.and_then(|u| (u > now).then(|| u - now))
    }

    pub fn failure(&mut self, uid: u32, limit: u32, base: Duration, now: Instant) {
        let e = self.peers.entry(uid).or_default();
        e.0 = e.0.saturating_add(1);
        if e.0 >= limit {
            let exp = (e.0 - limit).min(12);
            let wait = base.saturating_mul(1 << exp).min(Duration::from_secs(3600));
            e.1 = Some(now + wait);
        }
    }

    pub fn success(&mut self, uid: u32) {
        self.peers.remove(&uid);
    }
}

/// Token buckets keyed by anything (peer uid, session id): `rate` per second, burst of
/// `2 × rate` (at least 1).
#[derive(Debug)]
pub struct RateLimiter<K> {
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            buckets: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Takes one token; false when the bucket is empty.
    pub fn allow(&mut self, key: K, rate: f64, now: Instant) -> bool {
        let burst = (2.0 * rate).max(1.0);
        let (tokens, last) = self.buckets.entry(key).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let m = mint().unwrap();
        assert!(m.secret.len() >= 43, "256 bits in base64url");
        assert!(verify(&m.secret, &m.hash));
        assert!(!verify("guess", &m.hash));
        let other = mint().unwrap();
        assert_ne!(m.secret, other.secret);
    }

    #[test]
    fn bearer_needs_session_and_secret() {
        assert_eq!(parse_bearer("Bearer s_a.b"), Some(("s_a", "b")));
        assert_eq!(parse_bearer("Bearer s_a"), None);
        assert_eq!(parse_bearer("Basic s_a.b"), None);
        assert_eq!(parse_bearer("Bearer .b"), None);
    }

    #[test]
    fn lockout_starts_at_the_limit_and_doubles() {
        let mut l = Lockout::default();
        let t = Instant::now();
        let base = Duration::from_secs(1);
        for _ in 0..2 {
            l.failure(7, 3, base, t);
        }
        assert_eq!(l.locked(7, t), None);
        l.failure(7, 3, base, t);
        assert_eq!(l.locked(7, t), Some(base));
        l.failure(7, 3, base, t);
        assert_eq!(l.locked(7, t), Some(2 * base));
        assert_eq!(l.locked(8, t), None, "other peers are unaffected");
        l.success(7);
        assert_eq!(l.locked(7, t), None);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refills() {
        let mut r = RateLimiter::default();
        let t = Instant::now();
        assert!(r.allow(1u32, 1.0, t));
        assert!(r.allow(1, 1.0, t));
        assert!(!r.allow(1, 1.0, t));
        assert!(r.allow(2, 1.0, t), "buckets are per key");
        assert!(r.allow(1, 1.0, t + Duration::from_secs(1)));
    }
}
