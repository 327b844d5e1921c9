//! The clock pairing reads: code expiry, failure windows and backoff are all measured with it,
//! so tests can move time instead of waiting an hour.
//!
//! [`SystemClock`] is the daemon's. [`OffsetFile`] adds an offset read from a file on every
//! reading; it exists only in debug builds (`cfg(debug_assertions)`, so never in the release
//! binary the package ships) and only when `EXECBOX_TEST_CLOCK_FILE` is set in the daemon's
//! environment, which only whoever starts the daemon controls. Its offset moves forward only.

use std::time::Instant;

/// A monotonic time source.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock plus a forward offset in whole seconds, read from a file at each call (an
/// unreadable or malformed file means no offset). Test builds only.
#[cfg(debug_assertions)]
pub struct OffsetFile(pub std::path::PathBuf);

#[cfg(debug_assertions)]
impl Clock for OffsetFile {
    fn now(&self) -> Instant {
        let secs = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Instant::now() + std::time::Duration::from_secs(secs)
    }
}

/// The environment variable naming the offset file (debug builds only).
pub const TEST_CLOCK_ENV: &str = "EXECBOX_TEST_CLOCK_FILE";

/// The daemon's clock: the system clock, or in a debug build with `EXECBOX_TEST_CLOCK_FILE`
/// set, the offset clock (logged loudly).
pub fn from_env() -> Box<dyn Clock> {
    let Some(path) = std::env::var_os(TEST_CLOCK_ENV) else {
        return Box::new(SystemClock);
    };
    #[cfg(debug_assertions)]
    {
        tracing::warn!(file = ?path, "TEST CLOCK: pairing time is shifted by the offset in this file ({TEST_CLOCK_ENV}; debug builds only)");
        Box::new(OffsetFile(path.into()))
    }
    #[cfg(not(debug_assertions))]
    {
        tracing::warn!(file = ?path, "{TEST_CLOCK_ENV} is ignored: a release build has no test clock");
        Box::new(SystemClock)
    }
}

/// A clock a unit test moves by hand.
#[cfg(test)]
pub struct Manual(pub std::sync::Mutex<Instant>);

#[cfg(test)]
impl Default for Manual {
    fn default() -> Manual {
        Manual(std::sync::Mutex::new(Instant::now()))
    }
}

#[cfg(test)]
impl Manual {
    pub fn advance(&self, d: std::time::Duration) {
        *self.0.lock().unwrap() += d;
    }
}

#[cfg(test)]
impl Clock for Manual {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}
