//! An axum app wearing `UsagePlanLayer`, with a demo plan and key.
//!
//! ```text
//! cargo run --example axum_app
//! curl -i -H 'x-api-key: demo-key-0123456789abcdef' http://127.0.0.1:3000/pets   # 200
//! curl -i http://127.0.0.1:3000/pets                                            # 403
//! curl -i http://127.0.0.1:3000/health                                          # 200, unmetered
//! ```
//! The demo plan allows 2 requests per second (burst 5) and 100 per day.

use axum::routing::get;
use axum::{Extension, Router};
use tower_usage_plans::{
    NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsageContext, UsagePlanLayer, UsagePlans,
};

const DEMO_KEY: &str = "demo-key-0123456789abcdef";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plans = UsagePlans::new();
    let plan = plans.create_usage_plan(
        NewUsagePlan::new("demo")
            .with_throttle(Throttle::new(2.0, 5)?)
            .with_quota(Quota::new(100, QuotaPeriod::Day)),
    )?;
    let key = plans.create_api_key(
        NewApiKey::new("demo")
            .with_value(DEMO_KEY)
            .with_enabled(true),
    )?;
    plans.add_key_to_plan(&plan.id, &key.id)?;

    let app = Router::new()
        .route("/pets", get(pets))
        .route("/health", get(|| async { "ok" }))
        .layer(UsagePlanLayer::new(plans).with_unmetered("GET", "/health"));

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!(
        "try: curl -i -H 'x-api-key: {DEMO_KEY}' http://{}/pets",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

async fn pets(Extension(usage): Extension<UsageContext>) -> String {
    format!("[\"rex\",\"tom\"] for key {}\n", usage.key_id())
}
