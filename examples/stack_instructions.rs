//! Requests through the stack bench's in-process routers, for
//! `benches/instructions.sh`, which counts the instructions they take
//! under valgrind (only inside [`counted`]): a measure that a busy machine does not move, where
//! wall-clock timings do.
//!
//! ```text
//! cargo run --release --example stack_instructions -- MODE REQUESTS
//! MODE: bare | governor | usage-plans | usage-plans-no-context
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::Request;
use tower::Service;
use tower_usage_plans::store::MemoryStore;
use tower_usage_plans::UsagePlanLayer;

#[path = "../benches/support.rs"]
mod support;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "bare".into());
    let requests: usize = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let values = support::keys();
    let router = Router::new().route("/", get(|| async { "hello" }));
    let ours = || UsagePlanLayer::new(support::plans(Arc::new(MemoryStore::new()), &values));
    let mut app = match mode.as_str() {
        "bare" => router,
        "governor" => support::with_governor(router),
        "usage-plans" => router.layer(ours()),
        "usage-plans-no-context" => router.layer(ours().with_usage_context(false)),
        other => return Err(format!("unknown mode {other}").into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    // One request first: what is done once per process (the clock's
    // calibration, first-use initialisations) is not counted.
    serve(&runtime, &mut app, &values, 0..1)?;
    counted(&runtime, &mut app, &values, requests)
}

/// The requests `benches/instructions.sh` counts: valgrind counts only
/// inside this function (`--toggle-collect`), so the setup (1,000 keys)
/// and its run-to-run variation stay out of the figure.
#[inline(never)]
fn counted(
    runtime: &tokio::runtime::Runtime,
    app: &mut Router,
    values: &[String],
    requests: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    serve(runtime, app, values, 1..requests + 1)
}

#[inline(never)]
fn serve(
    runtime: &tokio::runtime::Runtime,
    app: &mut Router,
    values: &[String],
    range: std::ops::Range<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    for i in range {
        let request = Request::get("/")
            .header("x-api-key", &values[i % support::KEYS])
            .body(Body::empty())?;
        let response = runtime.block_on(app.call(request))?;
        assert_eq!(response.status(), 200);
    }
    Ok(())
}
