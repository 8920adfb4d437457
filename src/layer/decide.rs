//! The per-request policy shared by the service and its future: resolve
//! the key, ask the store, and turn the answer into "forward" or "refuse".

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Response};

use super::grpc::{add_retry_info, answer_grpc_web_as_asked, is_grpc};
use super::headers::RateLimitHeaders;
use super::{Charge, ChargeRules, Refusal, RefusalResponse, UsageContext};
use crate::key::{KeySource, RequestHead};
use crate::log_throttle::{LogThrottle, Logged};
use crate::registry::{Binding, KeyRoute, Stage};
use crate::route::{normalize, MethodRoute};
use crate::store::{Decision, DecisionRequest, QuotaState, StoreFuture, Verdict};
use crate::{Result, UsagePlans};

/// What the layer does when its counter store fails.
///
/// ```
/// use tower_usage_plans::{StoreFailure, UsagePlanLayer, UsagePlans};
///
/// let layer = UsagePlanLayer::new(UsagePlans::new()).with_store_failure(StoreFailure::FailClosed);
/// # drop(layer);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFailure {
    /// Admit the request, uncounted, and log it (AWS's behaviour).
    #[default]
    FailOpen,
    /// Refuse with 503 `{"message":"Service Unavailable"}`.
    FailClosed,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) plans: UsagePlans,
    pub(crate) stage: Stage,
    pub(crate) key_source: KeySource,
    pub(crate) unmetered: Vec<MethodRoute>,
    pub(crate) legacy_headers: bool,
    /// Whether admitted requests carry a [`UsageContext`].
    pub(crate) usage_context: bool,
    pub(crate) store_failure: StoreFailure,
    /// Shadow mode: would-be refusals are admitted, uncounted, and marked.
    pub(crate) shadow: bool,
    /// Which failed decisions get a log line: a store that is down fails
    /// every request.
    pub(crate) store_failures: LogThrottle,
}

/// The most often a failing store is logged, after its first failure.
pub(crate) const STORE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(5);

/// A metered request on its way to the store.
pub(crate) struct Pending {
    pub(crate) decision: StoreFuture<Decision>,
    /// The plan's ready `RateLimit-Policy` value for the decision, when
    /// the store answered at once (the memory store) and the plan had it.
    pub(crate) policy: Option<&'static HeaderValue>,
    pub(crate) context: Option<UsageContext>,
    /// For a decision the store answers later: what to check it against.
    pub(crate) recheck: Option<Recheck>,
}

/// A decision the store answers later (over the network) may finish after
/// the registry changed: a key taken out of its plan, disabled or deleted
/// meanwhile (through another replica, whose change this one took in; the
/// key's counter then dropped, and made anew by this decision). Admitted
/// then, the request is looked up again, and refused with its charge given
/// back if the key no longer passes. (Forwarded, it was admitted over a
/// spent quota: 5 over 3,000 in a black-box run.)
pub(crate) struct Recheck {
    /// The registry's generation before the lookup.
    generation: u64,
    /// What the decision charged.
    charge: Charge,
}

/// What to do with a request once the store has answered.
pub(crate) enum Next<B> {
    Forward(Admission),
    Refuse(Response<B>),
}

/// How a request is forwarded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// The rate-limit headers of its response.
    pub(crate) headers: Option<RateLimitHeaders>,
    /// Whether the store charged it (not when it failed and the request
    /// goes through uncounted, nor when it is a would-be refusal).
    pub(crate) counted: bool,
    /// In shadow mode, the refusal it escaped.
    pub(crate) shadow: Option<Refusal>,
}

impl Admission {
    /// Admitted uncounted because the store failed (fail-open).
    const UNCOUNTED: Self = Self {
        headers: None,
        counted: false,
        shadow: None,
    };

    /// Admitted in shadow mode instead of refused for `reason`.
    pub(crate) fn shadowed(reason: Refusal, headers: Option<RateLimitHeaders>) -> Self {
        tracing::info!(
            ?reason,
            "shadow mode: admitting a request that would be refused"
        );
        Self {
            headers,
            counted: false,
            shadow: Some(reason),
        }
    }
}

/// The binding a request with the key of `route` on `stage` is decided
/// under; or why it is refused: an unknown key (no route), a disabled one,
/// or one in no plan covering `stage`.
fn admitting<'r>(route: Option<&'r KeyRoute>, stage: &Stage) -> Result<&'r Arc<Binding>, Refusal> {
    let route = route.ok_or(Refusal::InvalidKey)?;
    if !route.enabled {
        return Err(Refusal::DisabledKey);
    }
    route.binding_for(stage).ok_or(Refusal::NoPlan)
}

impl Config {
    #[inline]
    pub(crate) fn is_unmetered(&self, head: &RequestHead<'_>) -> bool {
        if self.unmetered.is_empty() {
            return false;
        }
        let path = normalize(head.uri.path());
        self.unmetered.iter().any(|r| r.matches(head.method, &path))
    }

    /// Resolves key → plan → throttle and quota, and starts the decision.
    pub(crate) fn start(&self, head: &RequestHead<'_>) -> Result<Pending, Refusal> {
        let key = self.key_source.extract(head).ok_or(Refusal::MissingKey)?;
        let now = self.plans.clock().now_nanos();
        // Before the lookup: a change after it moves the generation on.
        let generation = self.plans.generation();
        self.plans.with_route(&key, |route| {
            let binding = admitting(route, &self.stage)?;
            let request = DecisionRequest {
                counter: &binding.counter,
                throttle: binding
                    .plan
                    .throttle_for(&self.stage, head.method, head.uri.path()),
                quota: binding.plan.quota(),
                now,
            };
            let decision = binding.store.decide(&request);
            let ready = decision.peek_ready();
            let policy = ready.and_then(|decision| binding.plan.policy_value(decision));
            let rules = || ChargeRules {
                method: request
                    .throttle
                    .and_then(|t| t.method)
                    .map(|key| binding.plan.method_key(&self.stage, key)),
                now,
            };
            let recheck = ready.is_none().then(|| Recheck {
                generation,
                charge: Charge::new(binding.clone(), rules()),
            });
            Ok(Pending {
                decision,
                policy,
                context: self
                    .usage_context
                    .then(|| UsageContext::new(binding.clone(), Some(rules()))),
                recheck,
            })
        })
    }

    /// `Ok` if the request `head` still passes as it did when `recheck`
    /// was made (always when the registry did not change since); else the
    /// refusal it meets now, its charge given back (in the background).
    pub(crate) fn recheck(&self, head: &RequestHead<'_>, recheck: Recheck) -> Result<(), Refusal> {
        if self.plans.generation() == recheck.generation {
            return Ok(());
        }
        let key = self.key_source.extract(head).ok_or(Refusal::MissingKey)?;
        let passes = self
            .plans
            .with_route(&key, |route| admitting(route, &self.stage).map(|_| ()));
        if passes.is_err() {
            recheck
                .charge
                .refund_in_background("a charge for a key changed meanwhile stays spent");
        }
        passes
    }

    /// Turns the store's answer into forward (with headers) or a refusal
    /// (in gRPC's shape if the request's headers say it is a gRPC call);
    /// `policy` is [`Pending::policy`].
    #[inline]
    pub(crate) fn finish<B, R: RefusalResponse<B>>(
        &self,
        refusal: &R,
        request_headers: &HeaderMap,
        answer: Result<Decision>,
        policy: Option<&'static HeaderValue>,
    ) -> Next<B> {
        let decision = match answer {
            Ok(decision) => decision,
            Err(error) => {
                // No line when a decision goes through again: with leases
                // some do while Redis is down, and each would start a run.
                match self.store_failures.failed(Instant::now()) {
                    Logged::First => tracing::warn!(
                        %error,
                        policy = ?self.store_failure,
                        "counter store failed (logged again every {STORE_FAILURE_LOG_EVERY:?} at most while it fails)"
                    ),
                    Logged::Again { held_back } => tracing::warn!(
                        %error,
                        policy = ?self.store_failure,
                        failures_not_logged = held_back,
                        "counter store failed"
                    ),
                    Logged::HeldBack => {}
                }
                return match self.store_failure {
                    StoreFailure::FailOpen => Next::Forward(Admission::UNCOUNTED),
                    StoreFailure::FailClosed if self.shadow => {
                        Next::Forward(Admission::shadowed(Refusal::StoreUnavailable, None))
                    }
                    StoreFailure::FailClosed => {
                        let mut response =
                            self.refuse(refusal, request_headers, Refusal::StoreUnavailable, None);
                        // A store comes back on its own: a retry a second
                        // later may be counted.
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                        Next::Refuse(response)
                    }
                };
            }
        };
        let (verdict, retry_after) = match decision.verdict {
            Verdict::Admitted => {
                return Next::Forward(Admission {
                    headers: RateLimitHeaders::new(&decision, policy, None, self.legacy_headers),
                    counted: true,
                    shadow: None,
                })
            }
            // Throttled with the quota also spent: no retry succeeds before
            // the period ends, whatever the bucket says.
            Verdict::Throttled => (
                Refusal::Throttled,
                decision.throttle.map(|t| match decision.quota {
                    Some(q) if q.remaining == 0 => t.retry_after_secs.max(quota_retry_secs(&q)),
                    _ => t.retry_after_secs,
                }),
            ),
            Verdict::QuotaExceeded => (
                Refusal::QuotaExceeded,
                decision.quota.as_ref().map(quota_retry_secs),
            ),
        };
        if self.shadow {
            // The headers as counted, without a `Retry-After` on a response
            // that is no refusal.
            let headers = RateLimitHeaders::new(&decision, policy, None, self.legacy_headers);
            return Next::Forward(Admission::shadowed(verdict, headers));
        }
        let headers = RateLimitHeaders::new(
            &decision,
            policy,
            Some(retry_after.unwrap_or(1).max(1)),
            self.legacy_headers,
        );
        Next::Refuse(self.refuse(refusal, request_headers, verdict, headers))
    }

    /// The refusal response, with its headers and reason attached; for a
    /// gRPC call (told by `request_headers`, only when refusing: admitted
    /// requests never look), the builder's gRPC answer.
    pub(crate) fn refuse<B, R: RefusalResponse<B>>(
        &self,
        refusal: &R,
        request_headers: &HeaderMap,
        reason: Refusal,
        headers: Option<RateLimitHeaders>,
    ) -> Response<B> {
        let mut response = if is_grpc(request_headers) {
            let mut response = refusal.grpc_response(reason);
            answer_grpc_web_as_asked(request_headers, response.headers_mut());
            response
        } else {
            refusal.response(reason)
        };
        if let Some(headers) = headers {
            headers.apply(response.headers_mut());
            if let Some(retry_after) = headers.retry_after() {
                add_retry_info(response.headers_mut(), reason, retry_after);
            }
        }
        response.extensions_mut().insert(reason);
        response
    }
}
/// When a spent quota can admit again: when its period ends — or never
/// (a day, as for a throttle that never refills) if its limit is 0.
fn quota_retry_secs(quota: &QuotaState) -> u64 {
    if quota.limit == 0 {
        quota.reset_secs.max(crate::limit::NEVER_SECS)
    } else {
        quota.reset_secs
    }
}
