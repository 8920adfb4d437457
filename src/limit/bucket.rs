//! The token bucket behind every throttle.

use crate::decision::ThrottleState;
use crate::model::Throttle;

/// Multiplying by it, not dividing by 1e9: a division costs ~15 cycles on
/// the hot path. `1e-9` rounds up, so a refill is never short of a token
/// at an exact boundary (1 s at 1/s earns at least 1.0).
const SECS_PER_NANO: f64 = 1e-9;

/// Tokens and the time they were last counted. A new bucket is full.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Bucket {
    tokens: f64,
    updated: i64,
}

impl Bucket {
    pub(crate) fn full(throttle: &Throttle, now: i64) -> Self {
        Self {
            tokens: f64::from(throttle.burst_limit),
            updated: now,
        }
    }

    /// Adds the tokens earned since the last update, up to the burst limit
    /// (which may have been lowered since).
    /// A bucket holding `tokens` at time `updated` (a store's fields).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_tokens(tokens: f64, updated: i64) -> Self {
        Self { tokens, updated }
    }

    /// Checks a restored bucket: a finite, non-negative number of tokens,
    /// at most `burst` (the throttle's, when the bucket's throttle is
    /// known), counted no later than `latest` (Unix nanoseconds). Names the
    /// offending field (`tokens`, `updated`) in the error.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn check(&self, burst: Option<u32>, latest: i64) -> Result<(), String> {
        if !self.tokens.is_finite() || self.tokens < 0.0 {
            return Err(format!(
                "tokens {} is not a finite number of tokens >= 0",
                shown(self.tokens)
            ));
        }
        if let Some(burst) = burst {
            if self.tokens > f64::from(burst) {
                return Err(format!(
                    "tokens {} is above the throttle's burstLimit {burst}",
                    shown(self.tokens)
                ));
            }
        }
        if self.updated > latest {
            return Err(format!(
                "updated {} (Unix nanoseconds) is in the future",
                self.updated
            ));
        }
        Ok(())
    }

    /// Caps the tokens at `burst`, as the next refill would (a burst lowered
    /// since the bucket was last used).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn clamp(&mut self, burst: u32) {
        self.tokens = self.tokens.min(f64::from(burst));
    }

    pub(crate) fn refill(&mut self, throttle: &Throttle, now: i64) {
        let burst = f64::from(throttle.burst_limit);
        if now > self.updated {
            let earned = (now - self.updated) as f64 * SECS_PER_NANO * throttle.rate_limit;
            self.tokens += earned;
            self.updated = now;
        }
        self.tokens = self.tokens.min(burst);
    }

    pub(crate) fn has_token(&self) -> bool {
        self.tokens >= 1.0
    }

    pub(crate) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Gives back the token a decision at `now` took: refilled up to `now`
    /// (if it is later than the last update), plus one, up to the burst.
    pub(crate) fn give_back(&mut self, throttle: &Throttle, now: i64) {
        self.refill(throttle, now);
        self.tokens = (self.tokens + 1.0).min(f64::from(throttle.burst_limit));
    }

    /// What the headers say about the bucket now.
    pub(crate) fn state(&self, throttle: &Throttle) -> ThrottleState {
        // Casts truncate (and saturate): `floor` for the non-negative, without
        // a libm call on the hot path.
        let tokens = self.tokens.max(0.0) as u32;
        let whole = f64::from(tokens);
        ThrottleState {
            burst_limit: throttle.burst_limit,
            tokens,
            // A bucket of no tokens is never refilled: no token comes.
            next_token_secs: if throttle.burst_limit == 0 {
                super::NEVER_SECS
            } else if self.tokens >= f64::from(throttle.burst_limit) {
                0
            } else {
                secs_until(whole + 1.0 - self.tokens, throttle.rate_limit)
            },
            // A bucket that holds no whole token never admits anything.
            retry_after_secs: if throttle.burst_limit == 0 {
                super::NEVER_SECS
            } else {
                secs_until(1.0 - self.tokens, throttle.rate_limit)
            },
        }
    }
}

/// A number of tokens as a person would write it: `6`, `2.5`, `-1e308`.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
fn shown(tokens: f64) -> String {
    if tokens != 0.0 && !(1e-4..1e15).contains(&tokens.abs()) {
        format!("{tokens:e}")
    } else {
        format!("{tokens}")
    }
}

/// The longest wait a header states (~136 years): a token that takes
/// longer at a tiny rate says this.
const MOST_SECS: u64 = u32::MAX as u64;

/// Whole seconds (rounded up) until `missing` tokens have been earned; at
/// least 1 when anything is missing, at most [`MOST_SECS`]. A rate of zero
/// never refills: a day, as documented.
pub(crate) fn secs_until(missing: f64, rate: f64) -> u64 {
    if missing <= 0.0 {
        return 0;
    }
    if rate <= 0.0 {
        return super::NEVER_SECS;
    }
    // At most a second away (any rate of 1/s or more, for one token): no
    // division on the hot path. Exact: `missing <= rate` iff the quotient
    // is at most 1.
    if missing <= rate {
        return 1;
    }
    let secs = missing / rate;
    // A tiny rate: beyond the cap (and beyond what a u64 holds).
    if secs >= MOST_SECS as f64 {
        return MOST_SECS;
    }
    let whole = secs as u64;
    let up = if (whole as f64) < secs {
        whole + 1
    } else {
        whole
    };
    up.clamp(1, MOST_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    /// A state file cannot spell NaN or infinity in JSON, but a bucket
    /// restored any other way is checked the same.
    #[test]
    fn restored_tokens_must_be_finite_non_negative_and_within_the_burst() {
        let at = |tokens| Bucket::with_tokens(tokens, 0).check(Some(5), 0);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1e308, -0.5] {
            let error = at(bad).unwrap_err();
            assert!(error.starts_with("tokens "), "{bad}: {error}");
            assert!(error.contains("finite"), "{bad}: {error}");
        }
        assert!(at(5.5)
            .unwrap_err()
            .contains("above the throttle's burstLimit 5"));
        for good in [0.0, 2.5, 5.0] {
            assert_eq!(at(good), Ok(()), "{good}");
        }
        assert!(Bucket::with_tokens(1.0, 10)
            .check(None, 9)
            .unwrap_err()
            .starts_with("updated"));
        let mut high = Bucket::with_tokens(9.0, 0);
        high.clamp(5);
        assert_eq!(high.tokens, 5.0);
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let throttle = Throttle::new(2.0, 3).unwrap();
        let mut bucket = Bucket::full(&throttle, 0);
        for _ in 0..3 {
            bucket.refill(&throttle, 0);
            assert!(bucket.has_token());
            bucket.take();
        }
        bucket.refill(&throttle, 0);
        assert!(!bucket.has_token());
        assert_eq!(bucket.state(&throttle).retry_after_secs, 1);
        bucket.refill(&throttle, SEC / 2); // 0.5 s at 2/s = 1 token
        assert!(bucket.has_token());
        bucket.refill(&throttle, 100 * SEC);
        assert_eq!(bucket.state(&throttle).tokens, 3, "capped at burst");
    }

    #[test]
    fn fractional_rate() {
        let throttle = Throttle::new(0.1, 1).unwrap();
        let mut bucket = Bucket::full(&throttle, 0);
        bucket.take();
        bucket.refill(&throttle, 9 * SEC);
        assert!(!bucket.has_token());
        assert_eq!(bucket.state(&throttle).retry_after_secs, 1);
        bucket.refill(&throttle, 10 * SEC);
        assert!(bucket.has_token());
    }

    #[test]
    fn lowered_burst_clamps_tokens() {
        let mut bucket = Bucket::full(&Throttle::new(1.0, 10).unwrap(), 0);
        let lower = Throttle::new(1.0, 2).unwrap();
        bucket.refill(&lower, 0);
        assert_eq!(bucket.state(&lower).tokens, 2);
    }

    #[test]
    fn tiny_rates_wait_the_cap_not_an_overflow() {
        for rate in [1e-20, 1e-300, f64::MIN_POSITIVE / 4.0] {
            let throttle = Throttle::new(rate, 1).unwrap();
            let mut bucket = Bucket::full(&throttle, 0);
            bucket.take();
            let state = bucket.state(&throttle);
            assert_eq!(state.retry_after_secs, MOST_SECS, "{rate}");
            assert_eq!(state.next_token_secs, MOST_SECS, "{rate}");
        }
    }

    /// A token more than a day away is waited for in full: a retry after
    /// a shorter wait would be refused again. (Before: a day at most.)
    #[test]
    fn slow_rates_wait_until_the_token_comes() {
        for (rate, secs) in [(1e-5, 100_000), (1e-7, 10_000_000), (1e-4, 10_000)] {
            let throttle = Throttle::new(rate, 1).unwrap();
            let mut bucket = Bucket::full(&throttle, 0);
            bucket.take();
            let state = bucket.state(&throttle);
            assert_eq!(state.retry_after_secs, secs, "{rate}");
            assert_eq!(state.next_token_secs, secs, "{rate}");
        }
    }

    #[test]
    fn zero_burst_says_no_token_ever_comes() {
        let throttle = Throttle::new(10.0, 0).unwrap();
        let mut bucket = Bucket::full(&throttle, 0);
        bucket.refill(&throttle, SEC);
        let state = bucket.state(&throttle);
        assert!(!bucket.has_token());
        assert_eq!(state.tokens, 0);
        assert_eq!(state.next_token_secs, crate::limit::NEVER_SECS);
        assert_eq!(state.retry_after_secs, crate::limit::NEVER_SECS);
    }

    #[test]
    fn zero_rate_never_refills() {
        let throttle = Throttle::new(0.0, 1).unwrap();
        let mut bucket = Bucket::full(&throttle, 0);
        bucket.take();
        bucket.refill(&throttle, 1_000 * SEC);
        assert!(!bucket.has_token());
        assert_eq!(
            bucket.state(&throttle).retry_after_secs,
            crate::limit::NEVER_SECS
        );
    }
}
