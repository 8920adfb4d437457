use std::sync::Arc;

use tower_layer::Layer;

use super::decide::{Config, StoreFailure, STORE_FAILURE_LOG_EVERY};
use super::{AwsRefusal, UsagePlanService};
use crate::key::{KeySource, RequestHead};
use crate::log_throttle::LogThrottle;
use crate::registry::Stage;
use crate::route::MethodRoute;
use crate::UsagePlans;

/// Applies [`UsagePlans`] to every request of the wrapped service: API key,
/// usage plan, throttle, quota, rate-limit headers.
///
/// ```
/// use tower_usage_plans::{KeySource, UsagePlanLayer, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let layer = UsagePlanLayer::new(plans)
///     .with_stage("petstore", "prod")
///     .with_key_source(KeySource::header("x-api-key"))
///     .with_unmetered("GET", "/health")
///     .with_legacy_headers(true);
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(layer);
/// # drop(app);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct UsagePlanLayer<R = AwsRefusal> {
    config: Arc<Config>,
    refusal: R,
}

impl UsagePlanLayer {
    /// A layer for the stage `gateway:prod`, reading the key from the
    /// `x-api-key` header and answering refusals like AWS.
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::*;
    /// # /// The status of `method path` (with `key`) through `layer`.
    /// # async fn status(layer: UsagePlanLayer, method: &str, path: &str, key: Option<&str>) -> u16 {
    /// #     let app = axum::Router::new().fallback(|| async { "ok" }).layer(layer);
    /// #     let mut request = http::Request::builder().method(method).uri(path);
    /// #     if let Some(key) = key {
    /// #         request = request.header("x-api-key", key);
    /// #     }
    /// #     let request = request.body(axum::body::Body::empty()).unwrap();
    /// #     app.oneshot(request).await.unwrap().status().as_u16()
    /// # }
    /// # /// Plans holding `plan` with the enabled key `alice-key-0123456789`.
    /// # fn plans_with(plan: NewUsagePlan) -> UsagePlans {
    /// #     let plans = UsagePlans::new();
    /// #     let plan = plans.create_usage_plan(plan).unwrap();
    /// #     let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// #     let key = plans.create_api_key(key).unwrap();
    /// #     plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// #     plans
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = UsagePlanLayer::new(plans_with(NewUsagePlan::new("gold")));
    /// assert_eq!(status(layer.clone(), "GET", "/", Some("alice-key-0123456789")).await, 200);
    /// assert_eq!(status(layer, "GET", "/", None).await, 403);
    /// # }
    /// ```
    pub fn new(plans: UsagePlans) -> Self {
        Self {
            config: Arc::new(Config {
                plans,
                stage: Stage {
                    api_id: "gateway".into(),
                    stage: "prod".into(),
                },
                key_source: KeySource::default(),
                unmetered: Vec::new(),
                legacy_headers: false,
                usage_context: true,
                store_failure: StoreFailure::FailOpen,
                store_failures: LogThrottle::new(STORE_FAILURE_LOG_EVERY),
                shadow: false,
            }),
            refusal: AwsRefusal,
        }
    }
}

impl<R> UsagePlanLayer<R> {
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The stage `api_id:stage` this layer serves: plans listing it (or
    /// listing no stage) apply, and its per-method throttles.
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::*;
    /// # /// The status of `method path` (with `key`) through `layer`.
    /// # async fn status(layer: UsagePlanLayer, method: &str, path: &str, key: Option<&str>) -> u16 {
    /// #     let app = axum::Router::new().fallback(|| async { "ok" }).layer(layer);
    /// #     let mut request = http::Request::builder().method(method).uri(path);
    /// #     if let Some(key) = key {
    /// #         request = request.header("x-api-key", key);
    /// #     }
    /// #     let request = request.body(axum::body::Body::empty()).unwrap();
    /// #     app.oneshot(request).await.unwrap().status().as_u16()
    /// # }
    /// # /// Plans holding `plan` with the enabled key `alice-key-0123456789`.
    /// # fn plans_with(plan: NewUsagePlan) -> UsagePlans {
    /// #     let plans = UsagePlans::new();
    /// #     let plan = plans.create_usage_plan(plan).unwrap();
    /// #     let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// #     let key = plans.create_api_key(key).unwrap();
    /// #     plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// #     plans
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let plans = plans_with(NewUsagePlan::new("gold").with_api_stage(ApiStage::new("petstore", "prod")));
    /// let prod = UsagePlanLayer::new(plans.clone()).with_stage("petstore", "prod");
    /// let beta = UsagePlanLayer::new(plans).with_stage("petstore", "beta");
    /// assert_eq!(status(prod, "GET", "/", Some("alice-key-0123456789")).await, 200);
    /// assert_eq!(status(beta, "GET", "/", Some("alice-key-0123456789")).await, 403);
    /// # }
    /// ```
    pub fn with_stage(mut self, api_id: &str, stage: &str) -> Self {
        self.config_mut().stage = Stage {
            api_id: api_id.into(),
            stage: stage.into(),
        };
        self
    }

    /// Where to read the API key (default: header `x-api-key`).
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::*;
    /// # /// The status of `method path` (with `key`) through `layer`.
    /// # async fn status(layer: UsagePlanLayer, method: &str, path: &str, key: Option<&str>) -> u16 {
    /// #     let app = axum::Router::new().fallback(|| async { "ok" }).layer(layer);
    /// #     let mut request = http::Request::builder().method(method).uri(path);
    /// #     if let Some(key) = key {
    /// #         request = request.header("x-api-key", key);
    /// #     }
    /// #     let request = request.body(axum::body::Body::empty()).unwrap();
    /// #     app.oneshot(request).await.unwrap().status().as_u16()
    /// # }
    /// # /// Plans holding `plan` with the enabled key `alice-key-0123456789`.
    /// # fn plans_with(plan: NewUsagePlan) -> UsagePlans {
    /// #     let plans = UsagePlans::new();
    /// #     let plan = plans.create_usage_plan(plan).unwrap();
    /// #     let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// #     let key = plans.create_api_key(key).unwrap();
    /// #     plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// #     plans
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = UsagePlanLayer::new(plans_with(NewUsagePlan::new("gold")))
    ///     .with_key_source(KeySource::query("api_key"));
    /// assert_eq!(status(layer.clone(), "GET", "/?api_key=alice-key-0123456789", None).await, 200);
    /// assert_eq!(status(layer, "GET", "/", Some("alice-key-0123456789")).await, 403);
    /// # }
    /// ```
    pub fn with_key_source(mut self, key_source: KeySource) -> Self {
        self.config_mut().key_source = key_source;
        self
    }

    /// Lets `method` (`"GET"`, or `"*"` for any) on the resource path
    /// `path` (templates such as `/pets/{id}` and `/{proxy+}` allowed) pass
    /// without a key, uncounted: AWS's `apiKeyRequired=false`.
    ///
    /// # Panics
    /// If `method` or `path` is malformed (a programming error).
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::*;
    /// # /// The status of `method path` (with `key`) through `layer`.
    /// # async fn status(layer: UsagePlanLayer, method: &str, path: &str, key: Option<&str>) -> u16 {
    /// #     let app = axum::Router::new().fallback(|| async { "ok" }).layer(layer);
    /// #     let mut request = http::Request::builder().method(method).uri(path);
    /// #     if let Some(key) = key {
    /// #         request = request.header("x-api-key", key);
    /// #     }
    /// #     let request = request.body(axum::body::Body::empty()).unwrap();
    /// #     app.oneshot(request).await.unwrap().status().as_u16()
    /// # }
    /// # /// Plans holding `plan` with the enabled key `alice-key-0123456789`.
    /// # fn plans_with(plan: NewUsagePlan) -> UsagePlans {
    /// #     let plans = UsagePlans::new();
    /// #     let plan = plans.create_usage_plan(plan).unwrap();
    /// #     let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// #     let key = plans.create_api_key(key).unwrap();
    /// #     plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// #     plans
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_unmetered("GET", "/health");
    /// assert_eq!(status(layer.clone(), "GET", "/health", None).await, 200);
    /// assert_eq!(status(layer, "GET", "/pets", None).await, 403);
    /// # }
    /// ```
    pub fn with_unmetered(mut self, method: &str, path: &str) -> Self {
        let route = MethodRoute::new(method, path).unwrap_or_else(|e| {
            panic!("UsagePlanLayer::with_unmetered({method:?}, {path:?}): {e}")
        });
        self.config_mut().unmetered.push(route);
        self
    }

    /// Renamed [`with_unmetered`](Self::with_unmetered).
    ///
    /// # Panics
    /// As [`with_unmetered`](Self::with_unmetered).
    ///
    /// ```
    /// # #![allow(deprecated)]
    /// use tower_usage_plans::{RequestHead, UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).unmetered("GET", "/health");
    /// let request = http::Request::get("/health").body(()).unwrap();
    /// assert!(layer.is_unmetered(&RequestHead::of(&request)));
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_unmetered")]
    pub fn unmetered(self, method: &str, path: &str) -> Self {
        self.with_unmetered(method, path)
    }

    /// Adds `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (the quota's, else the throttle's) next to the
    /// IETF `RateLimit` headers.
    ///
    /// ```
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let plans = UsagePlans::new();
    /// let plan = plans
    ///     .create_usage_plan(NewUsagePlan::new("gold").with_quota(Quota::new(100, QuotaPeriod::Day)))
    ///     .unwrap();
    /// let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// let key = plans.create_api_key(key).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// let app = axum::Router::new()
    ///     .fallback(|| async { "ok" })
    ///     .layer(UsagePlanLayer::new(plans).with_legacy_headers(true));
    /// let request = http::Request::get("/")
    ///     .header("x-api-key", "alice-key-0123456789")
    ///     .body(axum::body::Body::empty())
    ///     .unwrap();
    /// let response = app.oneshot(request).await.unwrap();
    /// assert_eq!(response.headers()["x-ratelimit-limit"], "100");
    /// assert_eq!(response.headers()["x-ratelimit-remaining"], "99");
    /// # }
    /// ```
    pub fn with_legacy_headers(mut self, enabled: bool) -> Self {
        self.config_mut().legacy_headers = enabled;
        self
    }

    /// Whether admitted requests carry a [`UsageContext`](crate::UsageContext)
    /// in their extensions (default: yes). A service that never reads it
    /// saves the insertion (most of its cost is the extension map's
    /// allocation; BENCHMARKS.md has the figures).
    ///
    /// ```
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_usage_context(false);
    /// # drop(layer);
    /// ```
    pub fn with_usage_context(mut self, enabled: bool) -> Self {
        self.config_mut().usage_context = enabled;
        self
    }

    /// What to do when the counter store fails: admit (the default, AWS's
    /// behaviour) or answer 503.
    ///
    /// ```
    /// use tower_usage_plans::{StoreFailure, UsagePlanLayer, UsagePlans};
    ///
    /// // Behind a shared store, refuse rather than admit uncounted.
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_store_failure(StoreFailure::FailClosed);
    /// # drop(layer);
    /// ```
    pub fn with_store_failure(mut self, policy: StoreFailure) -> Self {
        self.config_mut().store_failure = policy;
        self
    }

    /// Shadow mode, for rolling out plans on a live service: requests are
    /// counted and get their rate-limit headers as usual, but none is
    /// refused. A request that would have been refused is admitted without
    /// being counted (as a refusal costs nothing), marked with a
    /// [`ShadowRefusal`](crate::ShadowRefusal) in its request and response
    /// extensions (and in its [`UsageContext`](crate::UsageContext)), and
    /// logged. Paths refused as ambiguous ([`Refusal::BadPath`]) are still
    /// refused: that guards the upstream, not a plan.
    ///
    /// [`Refusal::BadPath`]: crate::Refusal::BadPath
    ///
    /// ```
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_shadow(true);
    /// # drop(layer);
    /// ```
    pub fn with_shadow(mut self, enabled: bool) -> Self {
        self.config_mut().shadow = enabled;
        self
    }

    /// Renamed [`with_shadow`](Self::with_shadow).
    ///
    /// ```
    /// # #![allow(deprecated)]
    /// use tower_usage_plans::{UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).shadow(true);
    /// # drop(layer);
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_shadow")]
    pub fn shadow(self, enabled: bool) -> Self {
        self.with_shadow(enabled)
    }

    /// Replaces the refusal responses, e.g. with a closure
    /// `Fn(Refusal) -> Response<B>`.
    ///
    /// ```
    /// use axum::body::Body;
    /// use tower_usage_plans::{Refusal, UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_refusal_response(|refusal: Refusal| {
    ///     http::Response::builder()
    ///         .status(refusal.status())
    ///         .body(Body::from(format!("refused: {}", refusal.message())))
    ///         .unwrap()
    /// });
    /// # drop(layer);
    /// ```
    pub fn with_refusal_response<R2>(self, refusal: R2) -> UsagePlanLayer<R2> {
        UsagePlanLayer {
            config: self.config,
            refusal,
        }
    }

    /// Whether a request is on an unmetered route.
    ///
    /// ```
    /// use tower_usage_plans::{RequestHead, UsagePlanLayer, UsagePlans};
    ///
    /// let layer = UsagePlanLayer::new(UsagePlans::new()).with_unmetered("*", "/status/{proxy+}");
    /// let request = http::Request::post("/status/db").body(()).unwrap();
    /// assert!(layer.is_unmetered(&RequestHead::of(&request)));
    /// let request = http::Request::get("/pets").body(()).unwrap();
    /// assert!(!layer.is_unmetered(&RequestHead::of(&request)));
    /// ```
    pub fn is_unmetered(&self, head: &RequestHead<'_>) -> bool {
        self.config.is_unmetered(head)
    }
}

impl<S, R: Clone> Layer<S> for UsagePlanLayer<R> {
    type Service = UsagePlanService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        UsagePlanService::new(inner, self.config.clone(), self.refusal.clone())
    }
}

#[cfg(test)]
mod tests {
    /// The 0.1 builder names, kept deprecated for one release, still set
    /// what their `with_*` replacements set.
    #[test]
    #[allow(deprecated)]
    fn deprecated_builder_names_still_work() {
        use crate::{Clock, ManualClock, NewApiKey, UsagePlanLayer, UsagePlans};

        assert_eq!(
            NewApiKey::new("k").enabled(true),
            NewApiKey::new("k").with_enabled(true)
        );

        let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let plans = UsagePlans::builder()
            .store(std::sync::Arc::new(crate::store::MemoryStore::new()))
            .clock(clock.clone())
            .hash_only(true)
            .build();
        assert_eq!(plans.clock().now(), clock.now());

        let layer = UsagePlanLayer::new(plans)
            .unmetered("GET", "/health")
            .shadow(true);
        assert!(layer.config.shadow);
        assert_eq!(layer.config.unmetered.len(), 1);
    }
}
