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
use tower_usage_plans::store::MemoryStore;
use tower_usage_plans::UsagePlanLayer;

#[path = "../benches/support.rs"]
mod support;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bare".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let app = Router::new().route("/", get(|| async { "hello" }));
    let app = match mode.as_str() {
        "bare" | "upstream" => app,
        "governor" => support::with_governor(app),
        "usage-plans" => app.layer(UsagePlanLayer::new(support::plans(
            Arc::new(MemoryStore::new()),
            &support::keys(),
        ))),
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
