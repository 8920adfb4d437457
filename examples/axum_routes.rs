//! An axum router that meters some routes and not others with
//! `route_layer`, and handlers that take the `UsageContext` as an argument
//! (the `axum` feature).
//!
//! ```text
//! cargo run --example axum_routes
//! curl -i -H 'x-api-key: demo-key-0123456789abcdef' http://127.0.0.1:3000/pets  # 200, metered
//! curl -i http://127.0.0.1:3000/pets                                           # 403
//! curl -i http://127.0.0.1:3000/health                                         # 200, not metered
//! ```

use axum::routing::get;
use axum::Router;
// Not every example uses all of it.
#[allow(dead_code)]
#[path = "support/demo.rs"]
mod demo;

use tower_usage_plans::{
    NewUsagePlan, Quota, QuotaPeriod, UsageContext, UsagePlanLayer, UsagePlans,
};

/// `/pets` and `/pets/{id}` wear the layer; `/health`, added after
/// `route_layer`, does not (and unknown paths are a plain 404, uncounted).
pub fn app(plans: UsagePlans) -> Router {
    Router::new()
        .route("/pets", get(pets))
        .route("/pets/{id}", get(pet))
        .route_layer(UsagePlanLayer::new(plans))
        .route("/health", get(|| async { "ok" }))
}

async fn pets(usage: UsageContext) -> String {
    let left = usage
        .quota_remaining()
        .map_or_else(|| "no quota".to_owned(), |n| format!("{n} left today"));
    format!("[\"rex\",\"tom\"] for key {} ({left})\n", usage.key_id())
}

async fn pet(usage: UsageContext) -> String {
    format!("rex, on plan {}\n", usage.plan_id())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plans = demo::with_demo_key(
        NewUsagePlan::new("demo").with_quota(Quota::new(100, QuotaPeriod::Day)),
    )?;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(plans)).await?;
    Ok(())
}
