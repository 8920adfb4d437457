//! Throughput of the layer with `RedisStore` (plain and leased) as a ratio of the in-memory
//! store, measured in the same run: 32 requests in flight on a 2-worker
//! runtime, 1,000 keys, against a `redis-server` this bench starts on a free
//! port (Debian's `redis-server` must be installed). Then the same 1,000
//! keys over their quota, refused: by the in-memory store, and by Redis
//! once a second per key (the replica remembers a spent quota). Then a
//! plan with a throttle and no quota, both stores.
//!
//! `cargo bench --features redis --bench redis`

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_usage_plans::store::{LeaseConfig, MemoryStore, RedisStore};
use tower_usage_plans::UsagePlanLayer;

#[path = "../tests/support/redis_server.rs"]
mod redis_server;
#[path = "support.rs"]
mod support;
use redis_server::Redis;
use support::{plans, plans_throttle_only, plans_with_quota, KEYS};

const IN_FLIGHT: u64 = 32;

/// `iters` requests, `IN_FLIGHT` at a time, each answered `status`; the
/// wall time.
fn run(
    runtime: &tokio::runtime::Runtime,
    layer: &UsagePlanLayer,
    values: &Arc<Vec<String>>,
    iters: u64,
    status: u16,
) -> Duration {
    let service = layer.layer(service_fn(|_r: Request<()>| async {
        Ok::<_, Infallible>(Response::new(bytes::Bytes::new()))
    }));
    runtime.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|t| {
                let (service, values) = (service.clone(), values.clone());
                tokio::spawn(async move {
                    for i in (t..iters).step_by(IN_FLIGHT as usize) {
                        let request = Request::get("/")
                            .header("x-api-key", &values[i as usize % KEYS])
                            .body(())
                            .unwrap();
                        let response = service.clone().oneshot(request).await.unwrap();
                        assert_eq!(response.status(), status);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let values: Arc<Vec<String>> =
        Arc::new((0..KEYS).map(|i| format!("bench-key-{i:020}")).collect());
    let server = Redis::start();
    let url = server.url();
    // Built inside the runtime: the stores start their control listeners
    // there, and leases are taken once the replica hears the channel.
    let (plain, leased, spent, throttle_only) = runtime.block_on(async {
        let plain = RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix("plain:");
        let leased = RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix("leased:")
            .with_leases(LeaseConfig::default());
        leased.until_leasing().await;
        // As the gateway does: leases report what they spent (and give
        // back what expired) every 200 ms. Without it, a lease that spent
        // half its grant unreported goes back to Redis per request.
        let reporter = leased.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let _ = reporter.give_back_expired_leases().await;
            }
        });
        let spent = RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix("spent:");
        let throttle_only = RedisStore::connect(&url)
            .await
            .unwrap()
            .with_prefix("throttle:");
        (plain, leased, spent, throttle_only)
    });
    let memory = UsagePlanLayer::new(plans(Arc::new(MemoryStore::new()), &values));
    let redis = UsagePlanLayer::new(plans(Arc::new(plain), &values));
    let redis_leased = UsagePlanLayer::new(plans(Arc::new(leased), &values));
    // Every key over its quota (of 0): refused.
    let memory_spent =
        UsagePlanLayer::new(plans_with_quota(Arc::new(MemoryStore::new()), &values, 0));
    let redis_spent = UsagePlanLayer::new(plans_with_quota(Arc::new(spent), &values, 0));
    let memory_throttle =
        UsagePlanLayer::new(plans_throttle_only(Arc::new(MemoryStore::new()), &values));
    let redis_throttle = UsagePlanLayer::new(plans_throttle_only(Arc::new(throttle_only), &values));

    let mut group = c.benchmark_group("store");
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| run(&runtime, &memory, &values, iters, 200))
    });
    group.bench_function("redis", |b| {
        b.iter_custom(|iters| run(&runtime, &redis, &values, iters, 200))
    });
    group.bench_function("redis_leased", |b| {
        b.iter_custom(|iters| run(&runtime, &redis_leased, &values, iters, 200))
    });
    // A spent quota: the memory store's refusal against Redis's refusal
    // remembered by the replica (asked again once a second per key).
    group.bench_function("memory_spent", |b| {
        b.iter_custom(|iters| run(&runtime, &memory_spent, &values, iters, 429))
    });
    group.bench_function("redis_spent", |b| {
        b.iter_custom(|iters| run(&runtime, &redis_spent, &values, iters, 429))
    });
    // A throttle without a quota: every request decided in Redis.
    group.bench_function("memory_throttle", |b| {
        b.iter_custom(|iters| run(&runtime, &memory_throttle, &values, iters, 200))
    });
    group.bench_function("redis_throttle", |b| {
        b.iter_custom(|iters| run(&runtime, &redis_throttle, &values, iters, 200))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = stores
}
criterion_main!(benches);
