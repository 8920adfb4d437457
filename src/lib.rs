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
//! let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
//! plans.add_key_to_plan(&plan.id, &key.id).unwrap();
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(UsagePlanLayer::new(plans.clone()));
//! # drop(app);
//! ```
//!
//! [tower]: https://docs.rs/tower
//!
//! # Features
//!
//! None is on by default: the core (the layer, the registry, the in-memory
//! store) pulls no HTTP server, no Redis client and no AWS crate.
//!
//! - `admin`: `admin::AdminService`, the SigV4-authenticated, AWS API
//!   Gateway-compatible admin API over the same [`UsagePlans`].
//! - `console`: a web console at `/console/` on the admin service (implies
//!   `admin`; no extra dependencies).
//! - `redis`: `store::RedisStore`, counters shared by replicas through
//!   Redis or a Redis Cluster.
//! - `axum`: [`UsageContext`] as an axum extractor, and
//!   `MissingUsageContext`, its rejection.
//! - `gateway`: the `gateway` module, a standalone reverse proxy with
//!   config file, state file, TLS and metrics (implies `admin`, `console`
//!   and `redis`).
//!
//! # The layer
//!
//! For each request the layer reads the API key (header `x-api-key` by
//! default, see [`KeySource`]), finds the key's usage plan
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
//! A gRPC call (`content-type: application/grpc…`) is refused as gRPC
//! does instead: a trailers-only response with `grpc-status` 16
//! `UNAUTHENTICATED` (no key, unknown key), 7 `PERMISSION_DENIED`
//! (disabled key, no plan), 8 `RESOURCE_EXHAUSTED` (throttled, quota spent;
//! with a `google.rpc.RetryInfo` in `grpc-status-details-bin`) or 14
//! `UNAVAILABLE`; see [`Refusal::grpc_code`] and [`GrpcRefusal`].
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
//! let key = plans.create_api_key(NewApiKey::new("demo").with_value("demo-key-0123456789abcdef").with_enabled(true)).unwrap();
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
mod layer;
mod limit;
mod log_throttle;
mod model;
mod prehashed;
mod registry;
mod route;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock, UnixNanos};
pub use error::{Error, ErrorKind, Result};
pub use key::{AuthorizerKey, KeySource, RequestHead};
#[cfg(feature = "axum")]
pub use layer::MissingUsageContext;
pub use layer::{
    AwsRefusal, Charge, GrpcRefusal, Refunded, Refusal, RefusalResponse, ResponseFuture,
    ShadowRefusal, StoreFailure, UsageContext, UsagePlanLayer, UsagePlanService,
};
pub use model::{
    ApiKey, ApiStage, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, StageKey, Throttle, Usage,
    UsagePlan, UsagePlanKey, MAX_COUNT, MAX_KEY_VALUE_LEN, MIN_KEY_VALUE_LEN,
};
pub use registry::{
    KeySnapshot, PlanSnapshot, RegistrySnapshot, Replicate, UsagePlans, UsagePlansBuilder,
    MAX_USAGE_DAYS,
};

/// The README's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "gateway"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// A calendar date, as [`UsagePlans::usage`] takes and returns them
/// (re-exported from [`jiff`](https://docs.rs/jiff)).
pub use jiff::civil::Date;
/// An instant, as a [`Clock`] reads it (re-exported from
/// [`jiff`](https://docs.rs/jiff)).
pub use jiff::Timestamp;
