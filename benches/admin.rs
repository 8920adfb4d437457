//! The admin path must not stall the data path: one hot key hammered by 2
//! threads through the layer, alone and while a third thread applies
//! UpdateUsage to the same key a thousand times a second. Compare the two.
//!
//! `cargo bench --bench admin`

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, Service};
use tower_usage_plans::store::MemoryStore;
use tower_usage_plans::UsagePlanLayer;

#[path = "support.rs"]
mod support;

const THREADS: u64 = 2;

/// Polls a future that is ready at once (the in-memory store is).
fn now<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => unreachable!("the in-memory path answers at once"),
    }
}

fn hammer(c: &mut Criterion) {
    let values = support::keys();
    let plans = support::plans(Arc::new(MemoryStore::new()), &values);
    let plan_id = plans.usage_plans()[0].id.clone();
    let key_id = plans.api_key_by_value(&values[0]).unwrap().id;
    let layer = UsagePlanLayer::new(plans.clone());
    let hot = values[0].clone();

    let run = |iters: u64, admin: bool| -> Duration {
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            if admin {
                let (plans, plan_id, key_id, stop) =
                    (plans.clone(), plan_id.clone(), key_id.clone(), stop.clone());
                s.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let mut remaining = 1_000_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        remaining -= 1;
                        runtime
                            .block_on(plans.set_remaining(&plan_id, &key_id, remaining))
                            .unwrap();
                        // A thousand updates a second: far above any real
                        // admin rate, without taking a core from the data path.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }
            let start = Instant::now();
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (layer, hot) = (layer.clone(), hot.clone());
                    s.spawn(move || {
                        let mut service = layer.layer(service_fn(|_r: Request<()>| async {
                            Ok::<_, Infallible>(Response::new(bytes::Bytes::new()))
                        }));
                        for _ in 0..iters / THREADS {
                            let request = Request::get("/")
                                .header("x-api-key", &hot)
                                .body(())
                                .unwrap();
                            let response = now(service.call(request)).unwrap();
                            assert_eq!(response.status(), 200);
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            let elapsed = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            elapsed
        })
    };

    let mut group = c.benchmark_group("admin");
    group.bench_function("hot_key_2_threads", |b| {
        b.iter_custom(|iters| run(iters, false))
    });
    group.bench_function("hot_key_2_threads_with_update_usage", |b| {
        b.iter_custom(|iters| run(iters, true))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = hammer
}
criterion_main!(benches);
