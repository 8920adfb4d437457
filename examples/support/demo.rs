//! The demo plan and key of the examples, set up as every app wearing the
//! layer does at start: create a plan, create a key, add the key to the
//! plan. Shared by `examples/axum_app.rs`, `examples/axum_routes.rs` and
//! `examples/grpc_service.rs` (`#[path]`).

use tower_usage_plans::{Error, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlans};

/// The value of the demo key.
pub const DEMO_KEY: &str = "demo-key-0123456789abcdef";

/// A registry holding the demo plan (2 requests per second, burst 5; 100
/// per day) with the enabled demo key in it.
pub fn demo_plans() -> Result<UsagePlans, Error> {
    with_demo_key(
        NewUsagePlan::new("demo")
            .with_throttle(Throttle::new(2.0, 5)?)
            .with_quota(Quota::new(100, QuotaPeriod::Day)),
    )
}

/// A registry holding `plan` with the enabled demo key in it.
pub fn with_demo_key(plan: NewUsagePlan) -> Result<UsagePlans, Error> {
    let plans = UsagePlans::new();
    let plan = plans.create_usage_plan(plan)?;
    let key = plans.create_api_key(
        NewApiKey::new("demo")
            .with_value(DEMO_KEY)
            .with_enabled(true),
    )?;
    plans.add_key_to_plan(&plan.id, &key.id)?;
    Ok(plans)
}
