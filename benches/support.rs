//! What the benches, and the bench server the load script runs, share: the
//! 1,000 bench keys, a plan holding them whose limits are never reached,
//! and the key extractor a `tower_governor` user would write.
#![allow(dead_code)]

use std::sync::Arc;

use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_usage_plans::store::CounterStore;
use tower_usage_plans::MAX_COUNT;
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlans};

pub const KEYS: usize = 1_000;

/// `bench-key-00000000000000000000` … `bench-key-00000000000000000999`.
pub fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("bench-key-{i:020}")).collect()
}

/// A throttle no bench reaches.
pub fn throttle() -> Throttle {
    Throttle::new(1e12, MAX_COUNT as u32).expect("valid throttle")
}

/// One plan with every key in it, counted in `store`.
pub fn plans(store: Arc<dyn CounterStore>, values: &[String]) -> UsagePlans {
    plans_with_quota(store, values, MAX_COUNT)
}

/// One plan with every key in it and a monthly quota of `limit`.
pub fn plans_with_quota(store: Arc<dyn CounterStore>, values: &[String], limit: u64) -> UsagePlans {
    let plan = NewUsagePlan::new("bench")
        .with_throttle(throttle())
        .with_quota(Quota::new(limit, QuotaPeriod::Month));
    plans_of(store, values, plan)
}

/// One plan with every key in it, a throttle and no quota.
pub fn plans_throttle_only(store: Arc<dyn CounterStore>, values: &[String]) -> UsagePlans {
    plans_of(
        store,
        values,
        NewUsagePlan::new("bench").with_throttle(throttle()),
    )
}

/// `plan`, with every key in it, counted in `store`.
fn plans_of(store: Arc<dyn CounterStore>, values: &[String], plan: NewUsagePlan) -> UsagePlans {
    let plans = UsagePlans::builder().with_store(store).build();
    let plan = plans.create_usage_plan(plan).expect("valid plan");
    for value in values {
        let key = plans
            .create_api_key(NewApiKey::new("k").with_value(value).with_enabled(true))
            .expect("valid key");
        plans.add_key_to_plan(&plan.id, &key.id).expect("fresh key");
    }
    plans
}

/// What a tower_governor user keys on to limit per API key.
#[derive(Clone)]
pub struct ApiKeyHeader;

impl KeyExtractor for ApiKeyHeader {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// `router` behind `tower_governor` (with `Router::layer`), keyed on the
/// API key as its user would key it, headers on, limits no bench reaches.
pub fn with_governor(router: axum::Router) -> axum::Router {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(ApiKeyHeader)
        .use_headers()
        .finish()
        .expect("valid governor config");
    router.layer(GovernorLayer::new(config))
}
