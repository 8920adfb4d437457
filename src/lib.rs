//! Amazon API Gateway-style **usage plans** for [tower] services: API keys,
//! per-key token-bucket throttles and calendar quotas, enforced exactly.
//!
//! - [`UsagePlans`] holds plans, keys and counters (in memory by default,
//!   behind the [`CounterStore`](store::CounterStore) seam).
//! - [`UsagePlanLayer`] enforces them on every request of the service it
//!   wraps, refusing like AWS (403 / 429) with IETF rate-limit headers.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlanLayer, UsagePlans};
//!
//! let plans = UsagePlans::new();
//! let plan = plans
//!     .create_usage_plan(
//!         NewUsagePlan::new("basic")
//!             .with_throttle(Throttle::new(10.0, 20).unwrap())
//!             .with_quota(Quota::new(10_000, QuotaPeriod::Month)),
//!     )
//!     .unwrap();
//! let key = plans.create_api_key(NewApiKey::new("alice").enabled(true)).unwrap();
//! plans.add_key_to_plan(&plan.id, &key.id).unwrap();
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(UsagePlanLayer::new(plans.clone()));
//! # drop(app);
//! ```
//!
//! [tower]: https://docs.rs/tower
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
pub mod admin;
mod clock;
mod decision;
mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
mod key;
pub mod layer;
mod limit;
pub mod model;
mod prehashed;
mod registry;
mod route;
pub mod store;

#[cfg(feature = "admin")]
pub use admin::{AdminCredentials, AdminService};
pub use clock::{Clock, ManualClock, SystemClock, UnixNanos};
pub use error::{Error, ErrorKind, Result};
pub use key::{AuthorizerKey, KeySource, RequestHead};
pub use layer::{
    AwsRefusal, Charge, GrpcRefusal, Refusal, RefusalResponse, ShadowRefusal, StoreFailure,
    UsageContext, UsagePlanLayer, UsagePlanService,
};
pub use model::{
    ApiKey, ApiStage, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, Usage, UsagePlan,
    UsagePlanKey,
};
pub use registry::{
    KeySnapshot, PlanSnapshot, RegistrySnapshot, Replicate, UsagePlans, UsagePlansBuilder,
    MAX_USAGE_DAYS,
};

/// The README's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "gateway"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Re-exported for [`UsagePlans::usage`] dates and [`Clock`] times.
pub use jiff;
