//! The data plane: [`UsagePlanLayer`] and what it puts into requests and
//! responses (the user-facing docs are the crate's).

mod decide;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod grpc;
mod headers;
mod refusal;
mod service;
mod usage_plan_layer;

use std::sync::Arc;

use crate::registry::Binding;
use crate::UnixNanos;

pub use decide::StoreFailure;
#[cfg(feature = "axum")]
pub use extract::MissingUsageContext;
pub use future::ResponseFuture;
pub use grpc::GrpcRefusal;
#[cfg(feature = "gateway")]
pub(crate) use grpc::{has_media_prefix, is_grpc, GRPC_STATUS};
#[cfg(feature = "gateway")]
pub(crate) use refusal::aws_json_response;
pub use refusal::{AwsRefusal, Refusal, RefusalResponse};
pub use service::UsagePlanService;
pub use usage_plan_layer::UsagePlanLayer;

/// Who an admitted request was counted for: put into the request
/// extensions for handlers (and, without its charge, into the response
/// extensions of a refusal for a known key: throttled, quota spent, store
/// unavailable). The one in the extensions also holds what the
/// request was charged (see [`take_charge`](Self::take_charge)); a clone
/// does not, so a charge can be given back once at most.
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
///
/// Small: the key's binding to its plan (counter, plan, store) is one
/// `Arc` shared by every request of the key; a context adds only what this
/// request was charged and what the decision said.
#[derive(Debug)]
pub struct UsageContext {
    binding: Arc<Binding>,
    charge: Option<ChargeRules>,
    quota_remaining: Option<u64>,
    shadow: Option<Refusal>,
}

impl Clone for UsageContext {
    /// The same key, plan and decision, without the charge.
    fn clone(&self) -> Self {
        Self {
            binding: self.binding.clone(),
            charge: None,
            quota_remaining: self.quota_remaining,
            shadow: self.shadow,
        }
    }
}

impl PartialEq for UsageContext {
    /// Contexts of the same (plan, key) counter are equal.
    fn eq(&self, other: &Self) -> bool {
        self.binding.counter == other.binding.counter
    }
}

impl Eq for UsageContext {}

impl UsageContext {
    pub(crate) fn new(binding: Arc<Binding>, charge: Option<ChargeRules>) -> Self {
        Self {
            binding,
            charge,
            quota_remaining: None,
            shadow: None,
        }
    }

    /// The API key's id (never its value).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_usage_plans::{NewApiKey, NewUsagePlan, UsageContext, UsagePlanLayer, UsagePlans};
    ///
    /// let plans = UsagePlans::new();
    /// let plan = plans.create_usage_plan(NewUsagePlan::new("gold")).unwrap();
    /// let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// let key = plans.create_api_key(key).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// let handler = service_fn(|request: http::Request<()>| async move {
    ///     let usage = request.extensions().get::<UsageContext>().unwrap();
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from(
    ///         usage.key_id().to_owned(),
    ///     )))
    /// });
    /// let request = http::Request::get("/").header("x-api-key", "alice-key-0123456789");
    /// let response = UsagePlanLayer::new(plans.clone())
    ///     .layer(handler)
    ///     .oneshot(request.body(()).unwrap())
    ///     .await
    ///     .unwrap();
    /// let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    /// assert_eq!(body, key.id);
    /// # }
    /// ```
    pub fn key_id(&self) -> &str {
        self.binding.counter.key_id()
    }

    /// The usage plan's id.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_usage_plans::{NewApiKey, NewUsagePlan, UsageContext, UsagePlanLayer, UsagePlans};
    ///
    /// let plans = UsagePlans::new();
    /// let plan = plans.create_usage_plan(NewUsagePlan::new("gold")).unwrap();
    /// let key = NewApiKey::new("alice").with_value("alice-key-0123456789").with_enabled(true);
    /// let key = plans.create_api_key(key).unwrap();
    /// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    /// let handler = service_fn(|request: http::Request<()>| async move {
    ///     let usage = request.extensions().get::<UsageContext>().unwrap();
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from(
    ///         usage.plan_id().to_owned(),
    ///     )))
    /// });
    /// let request = http::Request::get("/").header("x-api-key", "alice-key-0123456789");
    /// let response = UsagePlanLayer::new(plans.clone())
    ///     .layer(handler)
    ///     .oneshot(request.body(()).unwrap())
    ///     .await
    ///     .unwrap();
    /// let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    /// assert_eq!(body, plan.id);
    /// # }
    /// ```
    pub fn plan_id(&self) -> &str {
        self.binding.counter.plan_id()
    }

    /// What the plan's quota has left in this period after this request;
    /// `None` if the plan has no quota (or the store failed and the
    /// request went through uncounted).
    ///
    /// ```
    /// use axum::Extension;
    /// use tower_usage_plans::UsageContext;
    ///
    /// async fn handler(Extension(usage): Extension<UsageContext>) -> String {
    ///     match usage.quota_remaining() {
    ///         Some(left) => format!("{left} calls left today"),
    ///         None => "no quota".to_owned(),
    ///     }
    /// }
    /// # let _ = handler;
    /// ```
    pub fn quota_remaining(&self) -> Option<u64> {
        self.quota_remaining
    }

    /// In [shadow mode](crate::UsagePlanLayer::shadow), the refusal this
    /// request escaped (it was admitted and not counted); `None` if it
    /// would have been admitted anyway.
    ///
    /// ```
    /// use axum::Extension;
    /// use tower_usage_plans::UsageContext;
    ///
    /// async fn handler(Extension(usage): Extension<UsageContext>) -> &'static str {
    ///     match usage.shadow_refusal() {
    ///         Some(_) => "over the limit (not enforced yet)",
    ///         None => "within the limits",
    ///     }
    /// }
    /// # let _ = handler;
    /// ```
    pub fn shadow_refusal(&self) -> Option<Refusal> {
        self.shadow
    }

    /// What this request was charged — a token of its throttle and a unit
    /// of its quota — taken out of the context, so that it can be given
    /// back once ([`Charge::refund`]) if the request never reached the
    /// service (its client's framing failed, say). `None` if nothing was
    /// charged (the store failed and the layer admitted the request
    /// uncounted), the charge was taken already, or this is a clone.
    ///
    /// ```
    /// use tower_usage_plans::UsageContext;
    ///
    /// async fn never_delivered(mut usage: UsageContext) {
    ///     if let Some(charge) = usage.take_charge() {
    ///         let _ = charge.refund().await;
    ///     }
    /// }
    /// # let _ = never_delivered;
    /// ```
    pub fn take_charge(&mut self) -> Option<Charge> {
        let rules = self.charge.take()?;
        Some(Charge {
            binding: self.binding.clone(),
            rules,
        })
    }

    /// Records what the decision that admitted the request said.
    pub(crate) fn admitted(&mut self, admission: &decide::Admission) {
        self.quota_remaining = admission.headers.and_then(|h| h.quota_remaining());
        self.shadow = admission.shadow;
        if !admission.counted {
            // Nothing was charged, so nothing can be given back.
            self.charge = None;
        }
    }
}

/// In [shadow mode](crate::UsagePlanLayer::shadow), the mark of a request
/// that would have been refused and was admitted, uncounted, instead: in
/// the request's extensions (for handlers, also when there is no
/// [`UsageContext`], as for a missing key) and in its response's (for outer
/// layers, e.g. metrics).
///
/// ```
/// use tower_usage_plans::{Refusal, ShadowRefusal};
///
/// fn log(response: &http::Response<()>) {
///     if let Some(shadow) = response.extensions().get::<ShadowRefusal>() {
///         eprintln!("would have refused: {:?}", shadow.refusal());
///     }
/// }
/// # let _ = (log, Refusal::Throttled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowRefusal(pub(crate) Refusal);

impl ShadowRefusal {
    /// The refusal the request escaped.
    pub fn refusal(self) -> Refusal {
        self.0
    }
}

/// What a decision applied, with the binding's plan: enough to give its
/// spending back. The throttle is the method's (`method`, a key shared
/// with the plan: no allocation) or else the plan's; the quota the plan's.
#[derive(Debug)]
pub(crate) struct ChargeRules {
    pub(crate) method: Option<Arc<str>>,
    pub(crate) now: UnixNanos,
}

/// The mark of an answer whose request was given its charge back
/// ([`Charge::refund`]): put it into the response's extensions, and the
/// layer's `RateLimit` headers show the token and the unit of quota as
/// unspent. The gateway marks its free answers with it (an upstream it
/// could not reach, a body the client never finished).
///
/// ```
/// use tower_usage_plans::{Refunded, UsageContext};
///
/// async fn never_delivered(
///     mut usage: UsageContext,
///     response: &mut http::Response<String>,
/// ) {
///     if let Some(charge) = usage.take_charge() {
///         if charge.refund().await.is_ok() {
///             response.extensions_mut().insert(Refunded);
///         }
///     }
/// }
/// # let _ = never_delivered;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refunded;

/// What one admitted request was charged, from
/// [`UsageContext::take_charge`]: give it back with [`refund`](Self::refund)
/// when the request never reached the service.
///
/// ```
/// use tower_usage_plans::Charge;
///
/// async fn give_back(charge: Charge) -> tower_usage_plans::Result<()> {
///     charge.refund().await
/// }
/// # let _ = give_back;
/// ```
#[derive(Debug)]
pub struct Charge {
    binding: Arc<Binding>,
    rules: ChargeRules,
}

impl Charge {
    /// What a decision through `binding` charged under `rules`.
    pub(crate) fn new(binding: Arc<Binding>, rules: ChargeRules) -> Self {
        Self { binding, rules }
    }

    /// Gives the token and the unit of quota back through the counter
    /// store ([`CounterStore::refund`](crate::store::CounterStore::refund)).
    ///
    /// # Errors
    /// The store's, if it cannot be reached: the charge then stays spent.
    pub fn refund(self) -> crate::store::StoreFuture<()> {
        let Charge { binding, rules } = self;
        let plan = &binding.plan;
        let request = crate::store::DecisionRequest {
            counter: &binding.counter,
            throttle: plan
                .charged_throttle(rules.method.as_ref())
                .map(|throttle| crate::store::ThrottleRule {
                    method: rules.method.as_deref(),
                    throttle,
                }),
            quota: plan.quota(),
            now: rules.now,
        };
        binding.store.refund(&request)
    }

    /// [`Charge::refund`] without waiting for it: a store's refund starts
    /// when called (in memory: done), a networked one's finishes on the
    /// current Tokio runtime (without one, it is not finished). A failure
    /// is logged as `failed`.
    pub(crate) fn refund_in_background(self, failed: &'static str) {
        let refunding = self.refund();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = refunding.await {
                    tracing::warn!(%error, "{failed}");
                }
            });
        }
    }
}
