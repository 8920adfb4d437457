//! The rate-limit headers of metered responses: IETF
//! `draft-ietf-httpapi-ratelimit-headers` structured fields, `Retry-After`
//! on every 429, and optionally the legacy `X-RateLimit-*` trio.

use std::fmt::Write;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::store::Decision;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The header values for one decision.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitHeaders {
    policy: HeaderValue,
    state: HeaderValue,
    retry_after: Option<HeaderValue>,
    legacy: Option<[HeaderValue; 3]>,
}

impl RateLimitHeaders {
    /// `None` when no policy applied (a plan without throttle or quota).
    pub(crate) fn new(decision: &Decision, retry_after: Option<u64>, legacy: bool) -> Option<Self> {
        let mut policy = String::new();
        let mut state = String::new();
        if let Some(t) = &decision.throttle {
            let _ = write!(policy, "\"throttle\";q={};w=1", t.burst_limit);
            let _ = write!(state, "\"throttle\";r={};t={}", t.tokens, t.next_token_secs);
        }
        if let Some(q) = &decision.quota {
            let sep = if policy.is_empty() { "" } else { ", " };
            let _ = write!(policy, "{sep}\"quota\";q={};w={}", q.limit, q.period_secs);
            let _ = write!(state, "{sep}\"quota\";r={};t={}", q.remaining, q.reset_secs);
        }
        if policy.is_empty() {
            return None;
        }
        let legacy = legacy.then(|| {
            let (limit, remaining, reset) = match (&decision.quota, &decision.throttle) {
                (Some(q), _) => (q.limit, q.remaining, q.reset_secs),
                (None, Some(t)) => (
                    u64::from(t.burst_limit),
                    u64::from(t.tokens),
                    t.next_token_secs,
                ),
                (None, None) => unreachable!("a policy applied"),
            };
            [limit.into(), remaining.into(), reset.into()]
        });
        Some(Self {
            policy: HeaderValue::try_from(policy).ok()?,
            state: HeaderValue::try_from(state).ok()?,
            retry_after: retry_after.map(HeaderValue::from),
            legacy,
        })
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.state);
        if let Some(retry_after) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, retry_after);
        }
        if let Some([limit, remaining, reset]) = self.legacy {
            headers.insert(X_RATELIMIT_LIMIT.clone(), limit);
            headers.insert(X_RATELIMIT_REMAINING.clone(), remaining);
            headers.insert(X_RATELIMIT_RESET.clone(), reset);
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
