//! One request through an in-process axum router (no sockets): bare, with
//! `tower_governor` keyed by `x-api-key` (headers on), and with
//! `UsagePlanLayer` (throttle + quota + RateLimit headers) — added with
//! `Router::layer` and wrapped around the whole router, and via
//! `Router::layer` without the `UsageContext` extension. What each layer
//! *adds* to bare is the number to compare. Then a refusal (quota spent),
//! of a plain HTTP request (429, JSON) and of a gRPC call (trailers-only
//! `RESOURCE_EXHAUSTED` with its `google.rpc.RetryInfo`): the two should
//! cost about the same.
//!
//! `cargo bench --bench stack`

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tower::{Layer, Service};
use tower_usage_plans::store::MemoryStore;
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod, UsagePlanLayer, UsagePlans};

#[path = "support.rs"]
mod support;
use support::{keys, plans, with_governor, KEYS};

fn stack(c: &mut Criterion) {
    let values = keys();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let router = || Router::new().route("/", get(|| async { "hello" }));

    let ours = UsagePlanLayer::new(plans(Arc::new(MemoryStore::new()), &values));

    let mut bare = router();
    let mut with_governor = with_governor(router());
    let mut with_ours = router().layer(ours.clone());
    let mut wrapped = ours.clone().layer(router());
    // As a service that never reads the `UsageContext` would configure it.
    let mut without_context = router().layer(ours.with_usage_context(false));

    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) % KEYS;
        Request::get("/")
            .header("x-api-key", &values[i])
            .body(Body::empty())
            .unwrap()
    };
    let mut group = c.benchmark_group("stack");
    group.bench_function("bare", |b| {
        b.iter(|| runtime.block_on(bare.call(next())).unwrap())
    });
    group.bench_function("tower_governor", |b| {
        b.iter(|| {
            let response = runtime.block_on(with_governor.call(next())).unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    group.bench_function("usage_plans_router_layer", |b| {
        b.iter(|| {
            let response = runtime.block_on(with_ours.call(next())).unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    group.bench_function("usage_plans_around_router", |b| {
        b.iter(|| {
            let response = runtime.block_on(wrapped.call(next())).unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    group.bench_function("usage_plans_router_layer_no_context", |b| {
        b.iter(|| {
            let response = runtime.block_on(without_context.call(next())).unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    // A key whose quota is spent: every request is refused.
    let spent = UsagePlans::new();
    let plan = spent
        .create_usage_plan(NewUsagePlan::new("spent").with_quota(Quota::new(0, QuotaPeriod::Day)))
        .unwrap();
    let key = spent
        .create_api_key(
            NewApiKey::new("spent")
                .with_value(SPENT_KEY)
                .with_enabled(true),
        )
        .unwrap();
    spent.add_key_to_plan(&plan.id, &key.id).unwrap();
    let mut refusing = router().layer(UsagePlanLayer::new(spent));
    let refused = |content_type: Option<&str>| {
        let mut request = Request::post("/").header("x-api-key", SPENT_KEY);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(Body::empty()).unwrap()
    };
    group.bench_function("refused_http", |b| {
        b.iter(|| {
            let response = runtime.block_on(refusing.call(refused(None))).unwrap();
            assert_eq!(response.status(), 429);
        })
    });
    group.bench_function("refused_grpc", |b| {
        b.iter(|| {
            let response = runtime
                .block_on(refusing.call(refused(Some("application/grpc"))))
                .unwrap();
            assert_eq!(response.headers()["grpc-status"], "8");
        })
    });
    group.finish();
}

const SPENT_KEY: &str = "spent-key-0123456789abcdef";

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = stack
}
criterion_main!(benches);
