//! Log lines for a failure that repeats on every request (a Redis outage):
//! the first at once, then at most one per interval saying how many were
//! held back, and one when the run of failures ends. The caller writes the
//! lines; this only says which to write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Which failures of a run get a log line.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: Duration,
    /// Set while a run of failures lasts: all a success reads otherwise.
    failing: AtomicBool,
    run: Mutex<Run>,
}

/// A run of failures, since its first.
#[derive(Debug, Default)]
struct Run {
    /// When its last line was written.
    logged: Option<Instant>,
    /// Failures since that line, not logged.
    held_back: u64,
    /// Failures in the run.
    total: u64,
}

/// What to log for one failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Logged {
    /// The first of a run: log it.
    First,
    /// The interval has passed since the last line: log it, with the
    /// failures held back since that line.
    Again {
        /// Failures since the last line, not logged.
        held_back: u64,
    },
    /// Counted, not logged.
    HeldBack,
}

/// A new throttle with the same interval: a run of failures is its
/// owner's own.
impl Clone for LogThrottle {
    fn clone(&self) -> Self {
        Self::new(self.every)
    }
}

impl LogThrottle {
    /// Lets a line through at most once per `every` while failures repeat.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            failing: AtomicBool::new(false),
            run: Mutex::new(Run::default()),
        }
    }

    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A failure at `now`: whether to log it.
    pub(crate) fn failed(&self, now: Instant) -> Logged {
        let mut run = self.run();
        self.failing.store(true, Ordering::Relaxed);
        run.total += 1;
        match run.logged {
            None => {
                run.logged = Some(now);
                Logged::First
            }
            Some(last) if now.saturating_duration_since(last) >= self.every => {
                run.logged = Some(now);
                Logged::Again {
                    held_back: std::mem::take(&mut run.held_back),
                }
            }
            Some(_) => {
                run.held_back += 1;
                Logged::HeldBack
            }
        }
    }

    /// A success: the run's failures if it ends one (log that it is over);
    /// `None` (one atomic load) when nothing was failing.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn succeeded(&self) -> Option<u64> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut run = self.run();
        if !self.failing.swap(false, Ordering::Relaxed) {
            // Another success ended the run first.
            return None;
        }
        Some(std::mem::take(&mut *run).total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_logs_its_first_failure_then_one_per_interval_then_its_end() {
        let throttle = LogThrottle::new(Duration::from_secs(5));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(throttle.succeeded(), None, "nothing was failing");
        assert_eq!(throttle.failed(at(0)), Logged::First);
        for _ in 0..3 {
            assert_eq!(throttle.failed(at(4)), Logged::HeldBack);
        }
        assert_eq!(throttle.failed(at(5)), Logged::Again { held_back: 3 });
        assert_eq!(throttle.failed(at(6)), Logged::HeldBack);
        assert_eq!(throttle.failed(at(10)), Logged::Again { held_back: 1 });
        assert_eq!(throttle.succeeded(), Some(7), "every failure of the run");
        assert_eq!(throttle.succeeded(), None, "once");
        // The next run starts afresh.
        assert_eq!(throttle.failed(at(11)), Logged::First);
        assert_eq!(throttle.succeeded(), Some(1));
    }
}
