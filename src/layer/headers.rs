//! The rate-limit headers of metered responses: IETF
//! `draft-ietf-httpapi-ratelimit-headers` structured fields, `Retry-After`
//! on every 429, and optionally the legacy `X-RateLimit-*` trio.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::ratelimit::{Field, Policy};
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
    /// The plan's ready `RateLimit-Policy` value, when it had one for this
    /// decision; otherwise the value is found when the headers are applied.
    policy: Option<&'static HeaderValue>,
    retry_after: Option<u64>,
    legacy: bool,
}

impl RateLimitHeaders {
    /// `None` when no policy applied (a plan without throttle or quota).
    pub(crate) fn new(
        decision: &Decision,
        policy: Option<&'static HeaderValue>,
        retry_after: Option<u64>,
        legacy: bool,
    ) -> Option<Self> {
        (decision.throttle.is_some() || decision.quota.is_some()).then_some(Self {
            decision: *decision,
            policy,
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
            policy,
            retry_after,
            legacy,
        } = self;
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
        let policy = match policy {
            Some(ready) => Some(ready.clone()),
            None => Policy::of(&decision).value(),
        };
        if let (Some(policy), Some(state)) = (policy, state.value()) {
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
        RateLimitHeaders::new(&decision, None, None, true)
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
        RateLimitHeaders::new(&decision, None, None, false)
            .unwrap()
            .refunded()
            .apply(&mut headers);
        assert_eq!(
            headers["ratelimit"],
            r#""throttle";r=3;t=0, "quota";r=3;t=3600"#
        );
    }

    #[test]
    fn no_policy_no_headers() {
        let decision = Decision {
            verdict: Verdict::Admitted,
            throttle: None,
            quota: None,
        };
        assert!(RateLimitHeaders::new(&decision, None, None, false).is_none());
    }
}
