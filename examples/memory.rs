//! Resident memory per active key, measured (not estimated): creates N keys
//! in one plan, sends one request per key through the layer, and reports
//! the growth of the process's resident set (`/proc/self/statm`), split
//! into the registry (plans, keys, lookup view) and the counters.
//!
//! ```text
//! cargo run --release --example memory -- 10000 100000 1000000
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use tower::{service_fn, Layer, Service};
use tower_usage_plans::{
    NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlanLayer, UsagePlans,
};

/// The resident set size, from Linux's `/proc`; elsewhere the example says
/// it cannot measure and exits.
fn resident_bytes() -> u64 {
    if !cfg!(target_os = "linux") {
        eprintln!("examples/memory reads /proc/self/statm: it measures on Linux only");
        std::process::exit(2);
    }
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm");
    pages * 4096
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!(
        "{:>10} {:>16} {:>16} {:>16}",
        "keys", "registry B/key", "counters B/key", "total B/key"
    );
    for n in sizes {
        let before = resident_bytes();
        let plans = UsagePlans::new();
        let plan = plans
            .create_usage_plan(
                NewUsagePlan::new("memory")
                    .with_throttle(Throttle::new(100.0, 100).unwrap())
                    .with_quota(Quota::new(1_000_000, QuotaPeriod::Month)),
            )
            .unwrap();
        let values: Vec<String> = (0..n).map(|i| format!("memory-key-{i:020}")).collect();
        for value in &values {
            let key = plans
                .create_api_key(NewApiKey::new("k").with_value(value).with_enabled(true))
                .unwrap();
            plans.add_key_to_plan(&plan.id, &key.id).unwrap();
        }
        let registered = resident_bytes();
        let mut service =
            UsagePlanLayer::new(plans.clone()).layer(service_fn(|_r: Request<()>| async {
                Ok::<_, Infallible>(Response::new(bytes::Bytes::new()))
            }));
        for value in &values {
            let response = runtime
                .block_on(
                    service.call(
                        Request::get("/")
                            .header("x-api-key", value)
                            .body(())
                            .unwrap(),
                    ),
                )
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let counted = resident_bytes();
        let per = |bytes: u64| bytes as f64 / n as f64;
        println!(
            "{n:>10} {:>16.0} {:>16.0} {:>16.0}",
            per(registered - before),
            per(counted - registered),
            per(counted - before)
        );
        drop(values);
        drop(service);
        drop(plans);
    }
}
