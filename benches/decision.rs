//! The cost of one admitted decision, against the physical floor measured
//! in the same run: a `dashmap` get plus an atomic decrement.
//!
//! `cargo bench --bench decision`; compare each `ours` with its `baseline`.

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion};
use dashmap::DashMap;
use tower::{service_fn, Layer, Service};
use tower_usage_plans::store::{
    CounterKey, CounterStore, DecisionRequest, MemoryStore, QuotaRule, ThrottleRule, Verdict,
};
use tower_usage_plans::MAX_COUNT;
use tower_usage_plans::{Clock, Quota, QuotaPeriod, SystemClock, Throttle, UsagePlanLayer};

#[path = "support.rs"]
mod support;
use support::{throttle, KEYS};

fn quota() -> QuotaRule {
    QuotaRule {
        quota: Quota::new(MAX_COUNT, QuotaPeriod::Month),
        plan_created: 0,
    }
}

/// One decision as the layer makes it: the layer's clock, the plan's rules.
fn decide(store: &MemoryStore, counter: &CounterKey, rules: &(Throttle, QuotaRule)) {
    let request = DecisionRequest {
        counter,
        throttle: Some(ThrottleRule {
            method: None,
            throttle: rules.0,
        }),
        quota: Some(rules.1),
        now: SystemClock.now_nanos(),
    };
    let decision = futures_ready(store.decide(&request));
    assert_eq!(decision.verdict, Verdict::Admitted);
    black_box(decision);
}

fn futures_ready<T>(mut f: tower_usage_plans::store::StoreFuture<T>) -> T {
    use std::future::Future;
    let waker = std::task::Waker::noop();
    match std::pin::Pin::new(&mut f).poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(r) => r.unwrap(),
        std::task::Poll::Pending => unreachable!("the memory store answers at once"),
    }
}

fn baseline(map: &DashMap<String, AtomicI64>, key: &str) {
    let entry = map.get(key).unwrap();
    black_box(entry.fetch_sub(1, Ordering::Relaxed));
}

/// Runs `op` `iters` times split over `threads` threads; wall time per op.
fn threaded(iters: u64, threads: u64, op: impl Fn(u64) + Sync) -> Duration {
    let per_thread = iters / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                for i in 0..per_thread {
                    op(t * per_thread + i);
                }
            });
        }
    });
    start.elapsed() * threads as u32
}

fn decisions(c: &mut Criterion) {
    let names: Vec<String> = (0..KEYS).map(|i| format!("key{i:05}")).collect();
    let counters: Vec<CounterKey> = names.iter().map(|n| CounterKey::new("plan", n)).collect();
    let map: DashMap<String, AtomicI64> = names
        .iter()
        .map(|n| (n.clone(), AtomicI64::new(i64::MAX)))
        .collect();
    let store = MemoryStore::new();
    let rules = (throttle(), quota());
    let rules = &rules;
    for counter in &counters {
        decide(&store, counter, rules);
    }

    let mut group = c.benchmark_group("decision");
    for threads in [1u64, 2] {
        group.bench_function(format!("baseline/{threads}t_{KEYS}keys"), |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, |i| {
                    baseline(&map, &names[i as usize % KEYS])
                })
            })
        });
        group.bench_function(format!("ours/{threads}t_{KEYS}keys"), |b| {
            b.iter_custom(|iters| {
                threaded(iters, threads, |i| {
                    decide(&store, &counters[i as usize % KEYS], rules)
                })
            })
        });
        group.bench_function(format!("baseline/{threads}t_hot_key"), |b| {
            b.iter_custom(|iters| threaded(iters, threads, |_| baseline(&map, &names[0])))
        });
        group.bench_function(format!("ours/{threads}t_hot_key"), |b| {
            b.iter_custom(|iters| threaded(iters, threads, |_| decide(&store, &counters[0], rules)))
        });
    }
    group.finish();
}

/// One request through the whole layer (key digest, lookup, decision,
/// headers) around a service that answers at once.
fn layer(c: &mut Criterion) {
    let values = support::keys();
    let plans = support::plans(Arc::new(MemoryStore::new()), &values);
    let bare = service_fn(|_req: http::Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
    });
    let mut layered = UsagePlanLayer::new(plans).layer(bare);
    let mut bare = bare;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let request = |i: usize| {
        http::Request::get("/")
            .header("x-api-key", &values[i % KEYS])
            .body(Body::empty())
            .unwrap()
    };
    let mut group = c.benchmark_group("layer");
    let mut i = 0;
    group.bench_function("bare", |b| {
        b.iter(|| {
            i += 1;
            runtime.block_on(bare.call(request(i))).unwrap()
        })
    });
    group.bench_function("usage_plans", |b| {
        b.iter(|| {
            i += 1;
            runtime.block_on(layered.call(request(i))).unwrap()
        })
    });
    group.finish();
}

/// The layer's clock alone: what every decision above pays before it counts.
fn clock(c: &mut Criterion) {
    c.bench_function("clock/system_now_nanos", |b| {
        b.iter(|| black_box(SystemClock.now_nanos()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = decisions, layer, clock
}
criterion_main!(benches);
