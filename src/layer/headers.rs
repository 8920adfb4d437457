//! The rate-limit headers of metered responses: IETF
//! `draft-ietf-httpapi-ratelimit-headers` structured fields, `Retry-After`
//! on every 429, and optionally the legacy `X-RateLimit-*` trio.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;

use crate::store::Decision;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The headers of one decision, built when they are applied: the future
/// that carries them to the response stays small (a `Decision` is ~80
/// bytes; four header values would be ~250).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimitHeaders {
    decision: Decision,
    retry_after: Option<u64>,
    legacy: bool,
}

impl RateLimitHeaders {
    /// `None` when no policy applied (a plan without throttle or quota).
    pub(crate) fn new(decision: &Decision, retry_after: Option<u64>, legacy: bool) -> Option<Self> {
        (decision.throttle.is_some() || decision.quota.is_some()).then_some(Self {
            decision: *decision,
            retry_after,
            legacy,
        })
    }

    /// What the quota has left after this decision, if there is one.
    pub(crate) fn quota_remaining(&self) -> Option<u64> {
        self.decision.quota.map(|q| q.remaining)
    }

    /// The state as if the request had not been charged: its token and
    /// unit of quota back (a [`Refunded`](super::Refunded) answer).
    pub(crate) fn refunded(mut self) -> Self {
        if let Some(t) = &mut self.decision.throttle {
            if t.tokens < t.burst_limit {
                t.tokens += 1;
            }
            if t.tokens == t.burst_limit {
                // A full bucket waits for no token.
                t.next_token_secs = 0;
            }
        }
        if let Some(q) = &mut self.decision.quota {
            q.remaining = q.remaining.saturating_add(1);
        }
        self
    }

    /// The `Retry-After` seconds of a refusal.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let Self {
            decision,
            retry_after,
            legacy,
        } = self;
        let policy = Policy {
            burst: decision.throttle.map(|t| t.burst_limit),
            quota: decision.quota.map(|q| (q.limit, q.period_secs)),
        };
        // Written back to front: the quota's item, then the throttle's.
        let mut state = Field::default();
        if let Some(q) = &decision.quota {
            state.item(b"\"quota\";r=", q.remaining, b";t=", q.reset_secs);
        }
        if let Some(t) = &decision.throttle {
            state.item(
                b"\"throttle\";r=",
                t.tokens.into(),
                b";t=",
                t.next_token_secs,
            );
        }
        if let (Some(policy), Some(state)) = (policy.value(), state.value()) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), state);
        }
        if let Some(retry_after) = retry_after {
            headers.insert(http::header::RETRY_AFTER, retry_after.into());
        }
        let trio = match (&decision.quota, &decision.throttle) {
            _ if !legacy => None,
            (Some(q), _) => Some((q.limit, q.remaining, q.reset_secs)),
            (None, Some(t)) => Some((t.burst_limit.into(), t.tokens.into(), t.next_token_secs)),
            (None, None) => None,
        };
        if let Some((limit, remaining, reset)) = trio {
            headers.insert(X_RATELIMIT_LIMIT.clone(), limit.into());
            headers.insert(X_RATELIMIT_REMAINING.clone(), remaining.into());
            headers.insert(X_RATELIMIT_RESET.clone(), reset.into());
        }
    }
}

/// What `RateLimit-Policy` says. It changes only with a plan's settings
/// (and a month's length), so its values are interned: built once, kept
/// for the life of the process, and cloned per request without an
/// allocation or a reference count. Each thread remembers the last few it
/// used; a process interns at most [`INTERNED_POLICIES`] distinct ones
/// (~64 bytes each) and builds any beyond that per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Policy {
    burst: Option<u32>,
    /// Limit and period length in seconds.
    quota: Option<(u64, u64)>,
}

/// Policies a thread remembers; a plan has one, or a few with method
/// throttles or in a month-long quota.
const POLICIES_PER_THREAD: usize = 8;

/// Distinct policies a process keeps: far more than plans' settings ever
/// take, and a bound on what interning can hold (~64 KiB).
const INTERNED_POLICIES: usize = 1024;

thread_local! {
    static RECENT_POLICIES: RefCell<Vec<(Policy, HeaderValue)>> =
        RefCell::new(Vec::with_capacity(POLICIES_PER_THREAD));
}

impl Policy {
    fn value(self) -> Option<HeaderValue> {
        RECENT_POLICIES.with_borrow_mut(|recent| {
            if let Some((_, value)) = recent.iter().find(|(policy, _)| *policy == self) {
                return Some(value.clone());
            }
            let value = self.interned()?;
            if recent.len() == POLICIES_PER_THREAD {
                recent.remove(0);
            }
            recent.push((self, value.clone()));
            Some(value)
        })
    }

    /// The process-wide value, interned on first use while there is room.
    fn interned(self) -> Option<HeaderValue> {
        static INTERNED: OnceLock<Mutex<HashMap<Policy, HeaderValue>>> = OnceLock::new();
        let mut interned = INTERNED.get_or_init(Mutex::default).lock();
        if let Some(value) = interned.get(&self) {
            return Some(value.clone());
        }
        let field = self.field();
        if interned.len() >= INTERNED_POLICIES {
            return field.value();
        }
        let text: &'static str = Box::leak(field.as_str()?.into());
        let value = HeaderValue::from_static(text);
        interned.insert(self, value.clone());
        Some(value)
    }

    fn field(self) -> Field {
        // Written back to front: the quota's item, then the throttle's.
        let mut field = Field::default();
        if let Some((limit, period_secs)) = self.quota {
            field.item(b"\"quota\";q=", limit, b";w=", period_secs);
        }
        if let Some(burst) = self.burst {
            field.item(b"\"throttle\";q=", burst.into(), b";w=", 1);
        }
        field
    }
}

/// A structured-field list of at most two items, written on the stack
/// without `fmt` machinery, back to front: each number's digits come out
/// last first, so none is counted beforehand, and the names are copied as
/// fixed-size blocks (no `memcpy` calls). Items are added last first.
struct Field {
    buf: [u8; Field::CAPACITY],
    /// Where the written bytes start; they run to the end of `buf`.
    start: usize,
}

impl Default for Field {
    fn default() -> Self {
        Self {
            buf: [0; Field::CAPACITY],
            start: Field::CAPACITY,
        }
    }
}

/// `"00"` to `"99"`, for writing two digits a step.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

impl Field {
    /// Two items of two names (≤ 13 bytes) and two `u64`s (≤ 20 digits),
    /// with the separator.
    const CAPACITY: usize = 2 * (13 + 20 + 3 + 20) + 2;

    /// Writes a literal (its length known at compile time) before what is
    /// written.
    #[inline(always)]
    fn literal<const N: usize>(&mut self, bytes: &[u8; N]) {
        let Some(at) = self.start.checked_sub(N) else {
            return;
        };
        self.buf[at..at + N].copy_from_slice(bytes);
        self.start = at;
    }

    /// Writes `n` in decimal before what is written.
    #[inline(always)]
    fn number(&mut self, mut n: u64) {
        loop {
            if n < 10 {
                if let Some(at) = self.start.checked_sub(1) {
                    self.buf[at] = b'0' + n as u8;
                    self.start = at;
                }
                return;
            }
            let Some(at) = self.start.checked_sub(2) else {
                return;
            };
            let pair = (n % 100) as usize * 2;
            self.buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
            self.start = at;
            n /= 100;
            if n == 0 {
                return;
            }
        }
    }

    /// Adds `name` `first` `second_name` `second` before the items written
    /// (items are added last first).
    #[inline(always)]
    fn item<const A: usize, const B: usize>(
        &mut self,
        name: &[u8; A],
        first: u64,
        second_name: &[u8; B],
        second: u64,
    ) {
        if self.start < Self::CAPACITY {
            self.literal(b", ");
        }
        self.number(second);
        self.literal(second_name);
        self.number(first);
        self.literal(name);
    }

    fn written(&self) -> &[u8] {
        &self.buf[self.start.min(Self::CAPACITY)..]
    }

    /// The list as a header value, copied once into its own buffer (one
    /// allocation); `None` when empty (no policy, no header).
    fn value(&self) -> Option<HeaderValue> {
        let written = Some(self.written()).filter(|w| !w.is_empty())?;
        HeaderValue::from_bytes(written).ok()
    }

    /// The list written so far; `None` when empty.
    fn as_str(&self) -> Option<&str> {
        let text = std::str::from_utf8(self.written()).ok()?;
        (!text.is_empty()).then_some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{QuotaState, ThrottleState, Verdict};

    #[test]
    fn both_policies_in_draft_syntax() {
        let decision = Decision {
            verdict: Verdict::Admitted,
            throttle: Some(ThrottleState {
                burst_limit: 20,
                tokens: 19,
                next_token_secs: 1,
                retry_after_secs: 0,
            }),
            quota: Some(QuotaState {
                limit: 1000,
                remaining: 999,
                period_secs: 86_400,
                reset_secs: 3600,
            }),
        };
        let mut headers = HeaderMap::new();
        RateLimitHeaders::new(&decision, None, true)
            .unwrap()
            .apply(&mut headers);
        assert_eq!(
            headers["ratelimit-policy"],
            r#""throttle";q=20;w=1, "quota";q=1000;w=86400"#
        );
        assert_eq!(
            headers["ratelimit"],
            r#""throttle";r=19;t=1, "quota";r=999;t=3600"#
        );
        assert_eq!(headers["x-ratelimit-remaining"], "999");
        assert!(!headers.contains_key("retry-after"));
    }

    /// A refunded answer shows its token and unit unspent; a bucket that
    /// is full again waits for no token (`t=0`).
    #[test]
    fn a_refund_shows_the_charge_unspent() {
        let decision = Decision {
            verdict: Verdict::Admitted,
            throttle: Some(ThrottleState {
                burst_limit: 3,
                tokens: 2,
                next_token_secs: 100,
                retry_after_secs: 0,
            }),
            quota: Some(QuotaState {
                limit: 3,
                remaining: 2,
                period_secs: 86_400,
                reset_secs: 3600,
            }),
        };
        let mut headers = HeaderMap::new();
        RateLimitHeaders::new(&decision, None, false)
            .unwrap()
            .refunded()
            .apply(&mut headers);
        assert_eq!(
            headers["ratelimit"],
            r#""throttle";r=3;t=0, "quota";r=3;t=3600"#
        );
    }

    #[test]
    fn numbers_are_written_in_full() {
        for n in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1000,
            86_400,
            1 << 53,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..20).map(|p| 10u64.pow(p) - 1))
        .chain((0..20).map(|p| 10u64.pow(p)))
        {
            let mut field = Field::default();
            field.item(b"\"quota\";r=", n, b";t=", u64::MAX - n);
            assert_eq!(
                field.as_str(),
                Some(format!("\"quota\";r={n};t={}", u64::MAX - n).as_str())
            );
        }
    }

    #[test]
    fn no_policy_no_headers() {
        let decision = Decision {
            verdict: Verdict::Admitted,
            throttle: None,
            quota: None,
        };
        assert!(RateLimitHeaders::new(&decision, None, false).is_none());
    }
}
