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
#[path = "support/demo.rs"]
mod demo;

use demo::{demo_plans, DEMO_KEY};
use tower_usage_plans::{UsageContext, UsagePlanLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The demo plan with the demo key in it (`support/demo.rs`).
    let plans = demo_plans()?;

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
