//! Throughput of the layer with `RedisStore` (plain and leased) as a ratio of the in-memory
//! store, measured in the same run: 32 requests in flight on a 2-worker
//! runtime, 1,000 keys, against a `redis-server` this bench starts on a free
//! port (Debian's `redis-server` must be installed).
//!
//! `cargo bench --features redis --bench redis`

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_usage_plans::model::MAX_COUNT;
use tower_usage_plans::store::{CounterStore, LeaseConfig, MemoryStore, RedisStore};
use tower_usage_plans::{
    NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlanLayer, UsagePlans,
};

const KEYS: usize = 1_000;
const IN_FLIGHT: u64 = 32;

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> (RedisServer, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::yield_now();
    }
    (RedisServer(child), format!("redis://127.0.0.1:{port}"))
}

fn plans(store: Arc<dyn CounterStore>, values: &[String]) -> UsagePlans {
    let plans = UsagePlans::builder().store(store).build();
    let plan = plans
        .create_usage_plan(
            NewUsagePlan::new("bench")
                .with_throttle(Throttle::new(1e12, MAX_COUNT as u32).unwrap())
                .with_quota(Quota::new(MAX_COUNT, QuotaPeriod::Month)),
        )
        .unwrap();
    for value in values {
        let key = plans
            .create_api_key(NewApiKey::new("k").with_value(value).enabled(true))
            .unwrap();
        plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    }
    plans
}

/// `iters` requests, `IN_FLIGHT` at a time; the wall time.
fn run(
    runtime: &tokio::runtime::Runtime,
    layer: &UsagePlanLayer,
    values: &Arc<Vec<String>>,
    iters: u64,
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
                        assert_eq!(response.status(), 200);
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
    let (_server, url) = redis_server();
    let plain = runtime
        .block_on(RedisStore::connect(&url))
        .unwrap()
        .with_prefix("plain:");
    let leased = runtime
        .block_on(RedisStore::connect(&url))
        .unwrap()
        .with_prefix("leased:")
        .with_leases(LeaseConfig::default());
    let memory = UsagePlanLayer::new(plans(Arc::new(MemoryStore::new()), &values));
    let redis = UsagePlanLayer::new(plans(Arc::new(plain), &values));
    let redis_leased = UsagePlanLayer::new(plans(Arc::new(leased), &values));

    let mut group = c.benchmark_group("store");
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| run(&runtime, &memory, &values, iters))
    });
    group.bench_function("redis", |b| {
        b.iter_custom(|iters| run(&runtime, &redis, &values, iters))
    });
    group.bench_function("redis_leased", |b| {
        b.iter_custom(|iters| run(&runtime, &redis_leased, &values, iters))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = stores
}
criterion_main!(benches);
