//! The servers the load script (`benches/load.sh`) compares: one axum app on
//! one tokio worker, bare, with `tower_governor`, or with `UsagePlanLayer`;
//! or a minimal upstream for the gateway-vs-nginx comparison.
//!
//! ```text
//! cargo run --release --example bench_server -- MODE ADDR
//! MODE: bare | governor | usage-plans | upstream
//! ```
//! Keys `bench-key-00000000000000000000` … `bench-key-00000000000000000999`
//! are all in one plan whose limits are never reached.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_usage_plans::model::MAX_COUNT;
use tower_usage_plans::{
    NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlanLayer, UsagePlans,
};

const KEYS: usize = 1_000;

#[derive(Clone)]
struct ApiKeyHeader;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bare".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let app = Router::new().route("/", get(|| async { "hello" }));
    let app = match mode.as_str() {
        "bare" | "upstream" => app,
        "governor" => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .key_extractor(ApiKeyHeader)
                .use_headers()
                .finish()
                .ok_or("governor config")?;
            app.layer(GovernorLayer {
                config: Arc::new(config),
            })
        }
        "usage-plans" => app.layer(UsagePlanLayer::new(plans()?)),
        other => return Err(format!("unknown mode {other}").into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("{mode} listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

fn plans() -> Result<UsagePlans, Box<dyn std::error::Error>> {
    let plans = UsagePlans::new();
    let plan = plans.create_usage_plan(
        NewUsagePlan::new("bench")
            .with_throttle(Throttle::new(1e12, MAX_COUNT as u32)?)
            .with_quota(Quota::new(MAX_COUNT, QuotaPeriod::Month)),
    )?;
    for i in 0..KEYS {
        let key = plans.create_api_key(
            NewApiKey::new("k")
                .with_value(format!("bench-key-{i:020}"))
                .enabled(true),
        )?;
        plans.add_key_to_plan(&plan.id, &key.id)?;
    }
    Ok(plans)
}
