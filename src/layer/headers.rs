//! The rate-limit headers of metered responses: IETF
//! `draft-ietf-httpapi-ratelimit-headers` structured fields, `Retry-After`
//! on every 429, and optionally the legacy `X-RateLimit-*` trio.

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

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

    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let Self {
            decision,
            retry_after,
            legacy,
        } = self;
        // Both values share one buffer: one allocation for the pair.
        let mut buf = Field(BytesMut::with_capacity(192));
        if let Some(t) = &decision.throttle {
            buf.item(b"\"throttle\";q=", t.burst_limit.into(), b";w=", 1);
        }
        if let Some(q) = &decision.quota {
            buf.item(b"\"quota\";q=", q.limit, b";w=", q.period_secs);
        }
        let policy = buf.split();
        if let Some(t) = &decision.throttle {
            buf.item(
                b"\"throttle\";r=",
                t.tokens.into(),
                b";t=",
                t.next_token_secs,
            );
        }
        if let Some(q) = &decision.quota {
            buf.item(b"\"quota\";r=", q.remaining, b";t=", q.reset_secs);
        }
        let state = buf.split();
        if let (Some(policy), Some(state)) = (policy, state) {
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

/// Structured-field lists written without `fmt` machinery.
struct Field(BytesMut);

impl Field {
    fn item(&mut self, name: &[u8], first: u64, second_name: &[u8], second: u64) {
        if !self.0.is_empty() {
            self.0.extend_from_slice(b", ");
        }
        let mut digits = itoa::Buffer::new();
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(digits.format(first).as_bytes());
        self.0.extend_from_slice(second_name);
        self.0.extend_from_slice(digits.format(second).as_bytes());
    }

    /// The list written so far as a header value; `None` when empty (no
    /// policy, no header).
    fn split(&mut self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        HeaderValue::from_maybe_shared(self.0.split().freeze()).ok()
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
