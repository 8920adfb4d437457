//! [`UsagePlanLayer`]: API keys, throttles and quotas for any tower service.
//!
//! For each request the layer reads the API key (header `x-api-key` by
//! default, see [`KeySource`](crate::KeySource)), finds the key's usage plan
//! for the layer's stage, applies the plan's token-bucket throttle (or a
//! per-method one) and its quota, then forwards the request or refuses it
//! the way Amazon API Gateway does:
//!
//! | refusal | status | body |
//! |---|---|---|
//! | no key, unknown or disabled key, no plan for the stage | 403 | `{"message":"Forbidden"}` |
//! | throttled | 429 | `{"message":"Too Many Requests"}` |
//! | quota exhausted | 429 | `{"message":"Limit Exceeded"}` + `x-amzn-ErrorType: LimitExceededException` |
//! | path with `%00` or other control characters, `;`/`%3B`, `\`/`%5C`, a broken `%` escape | 400 | `{"message":"Bad Request"}` + `x-amzn-ErrorType: BadRequestException`, before any metering |
//!
//! The layer canonicalises the path once (dot segments and duplicate
//! slashes resolved, `%2F` read as `/`, unreserved escapes decoded) and the
//! inner service receives that path: the path that was matched by method
//! throttles and unmetered routes is the path that is passed on. Resource
//! paths are case-sensitive, as in API Gateway.
//!
//! Every metered response carries `RateLimit-Policy` and `RateLimit`
//! headers; every 429 carries `Retry-After`. Admitted requests carry a
//! [`UsageContext`] in their extensions; refusals carry their [`Refusal`].
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower::ServiceExt;
//! use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, UsagePlanLayer, UsagePlans};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let plans = UsagePlans::new();
//! let plan = plans.create_usage_plan(NewUsagePlan::new("demo").with_quota(Quota::new(1, QuotaPeriod::Day))).unwrap();
//! let key = plans.create_api_key(NewApiKey::new("demo").with_value("demo-key-0123456789abcdef").enabled(true)).unwrap();
//! plans.add_key_to_plan(&plan.id, &key.id).unwrap();
//!
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(UsagePlanLayer::new(plans));
//! let request = || http::Request::get("/").header("x-api-key", "demo-key-0123456789abcdef").body(axum::body::Body::empty()).unwrap();
//! assert_eq!(app.clone().oneshot(request()).await.unwrap().status(), 200);
//! let refused = app.oneshot(request()).await.unwrap();
//! assert_eq!(refused.status(), 429);
//! assert!(refused.headers().contains_key("retry-after"));
//! # });
//! ```

mod decide;
mod future;
mod headers;
#[allow(clippy::module_inception)]
mod layer;
mod refusal;
mod service;

use crate::store::CounterKey;

pub use decide::StoreFailure;
pub use future::ResponseFuture;
pub use layer::UsagePlanLayer;
pub use refusal::{AwsRefusal, Refusal, RefusalResponse};
pub use service::UsagePlanService;

/// Who an admitted request was counted for: put into the request
/// extensions for handlers.
///
/// ```
/// use axum::Extension;
/// use tower_usage_plans::UsageContext;
///
/// async fn handler(Extension(usage): Extension<UsageContext>) -> String {
///     format!("key {} on plan {}", usage.key_id(), usage.plan_id())
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageContext(CounterKey);

impl UsageContext {
    /// The API key's id (never its value).
    pub fn key_id(&self) -> &str {
        self.0.key_id()
    }

    /// The usage plan's id.
    pub fn plan_id(&self) -> &str {
        self.0.plan_id()
    }
}
