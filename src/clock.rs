//! Where time comes from, so tests can control it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;

/// A source of the current UTC time. Quota periods and token refills read
/// it; tests inject a [`ManualClock`].
///
/// ```
/// use tower_usage_plans::{Clock, ManualClock, Timestamp, UnixNanos};
///
/// let at: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
/// let clock: &dyn Clock = &ManualClock::new(at);
/// assert_eq!(clock.now(), at);
/// assert_eq!(clock.now_nanos(), UnixNanos::from(at));
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    ///
    /// ```
    /// # use tower_usage_plans::{Clock, ManualClock, Timestamp};
    /// let at: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
    /// assert_eq!(ManualClock::new(at).now(), at);
    /// ```
    fn now(&self) -> Timestamp;

    /// The current time in nanoseconds, what every decision reads. Override
    /// it when the clock has nanoseconds at hand: a `Timestamp` costs a
    /// division and range checks to build, on the hot path.
    ///
    /// ```
    /// # use tower_usage_plans::{Clock, ManualClock};
    /// let clock = ManualClock::new("1970-01-01T00:00:01Z".parse().unwrap());
    /// assert_eq!(clock.now_nanos().get(), 1_000_000_000);
    /// ```
    fn now_nanos(&self) -> UnixNanos {
        self.now().into()
    }
}

/// A time as nanoseconds since the Unix epoch (saturating at ±292 years):
/// what counters compute with.
///
/// ```
/// use tower_usage_plans::{Timestamp, UnixNanos};
///
/// let at: UnixNanos = "2026-11-28T00:00:01.5Z".parse::<Timestamp>().unwrap().into();
/// assert_eq!(at.get() % 1_000_000_000, 500_000_000);
/// assert_eq!(at.to_timestamp().to_string(), "2026-11-28T00:00:01.5Z");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(i64);

impl UnixNanos {
    /// `nanos` after the epoch.
    ///
    /// ```
    /// # use tower_usage_plans::UnixNanos;
    /// assert_eq!(UnixNanos::new(1_500_000_000).to_timestamp().to_string(), "1970-01-01T00:00:01.5Z");
    /// ```
    pub fn new(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds after the epoch.
    ///
    /// ```
    /// # use tower_usage_plans::UnixNanos;
    /// assert_eq!(UnixNanos::new(42).get(), 42);
    /// ```
    pub fn get(self) -> i64 {
        self.0
    }

    /// The same time as a `Timestamp`.
    ///
    /// ```
    /// # use tower_usage_plans::{Timestamp, UnixNanos};
    /// assert_eq!(UnixNanos::new(0).to_timestamp(), Timestamp::UNIX_EPOCH);
    /// ```
    pub fn to_timestamp(self) -> Timestamp {
        from_nanos(self.0)
    }
}

impl From<Timestamp> for UnixNanos {
    fn from(at: Timestamp) -> Self {
        Self(to_nanos(at))
    }
}

/// The system's wall clock, read cheaply: the CPU's time-stamp counter
/// (through `quanta`) plus an offset to the system clock taken
/// again every quarter of a second, so a stepped or slewed system clock is
/// followed within that time. Where the counter is not reliable, `quanta`
/// reads the OS clock instead.
///
/// ```
/// use tower_usage_plans::{Clock, SystemClock, Timestamp};
///
/// let now = SystemClock.now();
/// assert!(now.as_second() > 1_700_000_000);
/// let system = Timestamp::now();
/// assert!((system.as_millisecond() - now.as_millisecond()).abs() < 1_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        self.now_nanos().to_timestamp()
    }

    fn now_nanos(&self) -> UnixNanos {
        UnixNanos(Anchor::get().wall_nanos())
    }
}

/// How often the offset to the system clock is read again.
const REFRESH_NANOS: i64 = 250_000_000;

/// How far apart two counter readings around a system-clock reading may be
/// for the pair to count (else the thread was interrupted in between).
const PAIRING_NANOS: i64 = 50_000;

/// The counter's reading at start, and the system clock's offset to it.
struct Anchor {
    counter: quanta::Clock,
    /// The counter's raw reading at start.
    start: u64,
    /// Nanoseconds per counter tick, fixed-point with 32 fractional bits:
    /// one multiplication and a constant shift per reading.
    nanos_per_tick: u64,
    /// Wall-clock nanoseconds minus counter nanoseconds since `start`.
    offset: AtomicI64,
    /// Counter nanoseconds at the last offset reading.
    refreshed: AtomicI64,
}

impl Anchor {
    fn get() -> &'static Anchor {
        static ANCHOR: OnceLock<Anchor> = OnceLock::new();
        ANCHOR.get_or_init(|| Anchor::new(quanta::Clock::new()))
    }

    fn new(counter: quanta::Clock) -> Anchor {
        let start = counter.raw();
        // The nanoseconds of 2^40 ticks (minutes at GHz rates) give the
        // rate to better than one part in a billion.
        let nanos_per_tick = counter.delta_as_nanos(0, 1 << 40) >> (40 - 32);
        let anchor = Anchor {
            counter,
            start,
            nanos_per_tick,
            offset: AtomicI64::new(0),
            refreshed: AtomicI64::new(0),
        };
        anchor.refresh();
        anchor
    }

    /// Counter nanoseconds since `start`; negative if the counter went back
    /// (a virtual machine moved to another host, say).
    fn elapsed(&self) -> i64 {
        let raw = self.counter.raw();
        if raw >= self.start {
            self.nanos_of(raw - self.start)
        } else {
            -self.nanos_of(self.start - raw)
        }
    }

    /// Nanoseconds of `ticks` of the counter.
    fn nanos_of(&self, ticks: u64) -> i64 {
        let nanos = (u128::from(ticks) * u128::from(self.nanos_per_tick)) >> 32;
        i64::try_from(nanos).unwrap_or(i64::MAX)
    }

    fn wall_nanos(&self) -> i64 {
        let elapsed = self.elapsed();
        // Two separate loads may mix an old offset with a new refresh time:
        // that reading is off by one refresh's correction, at most.
        let since = elapsed.saturating_sub(self.refreshed.load(Ordering::Relaxed));
        if !(0..REFRESH_NANOS).contains(&since) {
            return self.refresh();
        }
        elapsed.saturating_add(self.offset.load(Ordering::Relaxed))
    }

    /// Reads the system clock between two counter readings and keeps the
    /// pair if nothing came between them; returns the system time.
    fn refresh(&self) -> i64 {
        let mut wall = to_nanos(Timestamp::now());
        for _ in 0..3 {
            let before = self.elapsed();
            wall = to_nanos(Timestamp::now());
            let after = self.elapsed();
            if after.saturating_sub(before) <= PAIRING_NANOS {
                let midpoint = before + (after - before) / 2;
                self.offset.store(wall - midpoint, Ordering::Relaxed);
                self.refreshed.store(midpoint, Ordering::Relaxed);
                break;
            }
        }
        wall
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_usage_plans::{Clock, ManualClock};
///
/// let clock = ManualClock::new("2024-02-29T23:59:59Z".parse().unwrap());
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(clock.now().to_string(), "2024-03-01T00:00:00Z");
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock stopped at `at`.
    ///
    /// ```
    /// # use tower_usage_plans::{Clock, ManualClock, Timestamp};
    /// let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
    /// assert_eq!(clock.now(), Timestamp::UNIX_EPOCH);
    /// ```
    pub fn new(at: Timestamp) -> Self {
        Self {
            nanos: Arc::new(AtomicI64::new(to_nanos(at))),
        }
    }

    /// Moves the clock to `at`.
    ///
    /// ```
    /// # use tower_usage_plans::{Clock, ManualClock, Timestamp};
    /// let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
    /// let at: Timestamp = "2026-12-31T23:59:59Z".parse().unwrap();
    /// clock.set(at);
    /// assert_eq!(clock.now(), at);
    /// ```
    pub fn set(&self, at: Timestamp) {
        self.nanos.store(to_nanos(at), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_usage_plans::{Clock, ManualClock, Timestamp};
    /// let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
    /// clock.advance(Duration::from_millis(1_500));
    /// assert_eq!(clock.now().to_string(), "1970-01-01T00:00:01.5Z");
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn now_nanos(&self) -> UnixNanos {
        UnixNanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Nanoseconds since the Unix epoch, saturating (the counters' time unit).
/// In `i64` arithmetic: the `i128` of `as_nanosecond` costs on the hot path.
pub(crate) fn to_nanos(at: Timestamp) -> i64 {
    at.as_second()
        .checked_mul(NANOS_PER_SEC)
        .and_then(|n| n.checked_add(i64::from(at.subsec_nanosecond())))
        .unwrap_or(if at.as_second() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
}

/// The timestamp `nanos` after the Unix epoch.
pub(crate) fn from_nanos(nanos: i64) -> Timestamp {
    let (secs, subsec) = (
        nanos.div_euclid(NANOS_PER_SEC),
        nanos.rem_euclid(NANOS_PER_SEC),
    );
    // Any i64 of nanoseconds is within jiff's range (±9999 years).
    Timestamp::new(secs, subsec as i32).unwrap_or(Timestamp::MAX)
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_round_trip_both_sides_of_the_epoch() {
        for nanos in [0, 1, -1, 1_764_000_000_123_456_789, -86_400_000_000_001] {
            assert_eq!(to_nanos(from_nanos(nanos)), nanos);
        }
        assert_eq!(
            from_nanos(1_500_000_000).to_string(),
            "1970-01-01T00:00:01.5Z"
        );
    }

    #[test]
    fn far_timestamps_saturate() {
        assert_eq!(to_nanos(Timestamp::MAX), i64::MAX);
        assert_eq!(to_nanos(Timestamp::MIN), i64::MIN);
    }

    /// The system clock now, in nanoseconds.
    fn system() -> i64 {
        to_nanos(Timestamp::now())
    }

    /// `wall` within 5 ms of `[earliest, latest]` (the offset is read
    /// between two counter readings; allow for that and for rounding).
    fn assert_within(wall: i64, earliest: i64, latest: i64) {
        const SLACK: i64 = 5_000_000;
        assert!(
            (earliest - SLACK..=latest + SLACK).contains(&wall),
            "{wall} not within [{earliest}, {latest}]"
        );
    }

    #[test]
    fn ticks_convert_as_the_counter_says() {
        let counter = quanta::Clock::new();
        let anchor = Anchor::new(counter.clone());
        for ticks in [1_000_u64, 1_000_000_000, 1_000_000_000_000] {
            let theirs = i64::try_from(counter.delta_as_nanos(0, ticks)).unwrap();
            let ours = anchor.nanos_of(ticks);
            // Within one part in a million (the fixed point holds ~1e-9).
            assert!(
                (ours - theirs).abs() <= theirs / 1_000_000 + 1,
                "{ticks}: {ours} vs {theirs}"
            );
        }
        let (mock, _) = quanta::Clock::mock();
        assert_eq!(Anchor::new(mock).nanos_of(123_456_789), 123_456_789);
    }

    #[test]
    fn a_counter_that_goes_back_does_not_take_the_time_back() {
        let (counter, mock) = quanta::Clock::mock();
        mock.increment(Duration::from_secs(10));
        let anchor = Anchor::new(counter);
        // The counter jumps 5 s back (a VM moved hosts, say): the time is
        // the system's, not 5 s earlier, and it moves on from there.
        mock.decrement(Duration::from_secs(5));
        let (before, wall, after) = (system(), anchor.wall_nanos(), system());
        assert_within(wall, before, after);
        mock.increment(Duration::from_millis(100));
        let wall = anchor.wall_nanos();
        assert_within(wall, before + 100_000_000, system() + 100_000_000);
    }

    #[test]
    fn a_counter_that_runs_fast_is_corrected_at_the_next_refresh() {
        let (counter, mock) = quanta::Clock::mock();
        let before = system();
        let anchor = Anchor::new(counter);
        // 300 ms of counter in no time: past the refresh interval, so the
        // system clock is read again instead of running 300 ms ahead.
        mock.increment(Duration::from_millis(300));
        let wall = anchor.wall_nanos();
        assert_within(wall, before, system());
    }

    #[test]
    fn system_clock_moves_forward_with_the_system() {
        let before = Timestamp::now();
        let ours = SystemClock.now();
        let after = Timestamp::now();
        // The counter's offset was read at most a refresh ago; allow for it.
        let slack = jiff::SignedDuration::from_millis(5);
        assert!(
            ours >= before - slack && ours <= after + slack,
            "{before} {ours} {after}"
        );
    }
}
