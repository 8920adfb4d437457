//! Exactness under real concurrency, over real sockets.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::KEY;
use tower_usage_plans::{NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlanLayer};

const CLIENTS: u64 = 32;
const REQUESTS: u64 = 1_500;
const QUOTA: u64 = 500;

/// `GET /` behind the layer over `plans`, served on a free port.
async fn serve_layered(
    plans: &tower_usage_plans::UsagePlans,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(UsagePlanLayer::new(plans.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_is_exact_over_real_sockets() {
    // A stopped clock: the test cannot straddle midnight.
    let plans = support::plans_with_clock(&support::clock("2026-11-28T12:00:00Z"));
    let (plan, key_id) = support::plan_with_key(
        &plans,
        NewUsagePlan::new("exact")
            .with_quota(Quota::new(QUOTA, QuotaPeriod::Day))
            // A generous throttle, so both checks run on every request.
            .with_throttle(Throttle::new(1_000_000.0, 1_000_000).unwrap()),
        KEY,
    );
    let (addr, server) = serve_layered(&plans).await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let next = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let exceeded = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, next, admitted, exceeded) = (
                client.clone(),
                next.clone(),
                admitted.clone(),
                exceeded.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    let request = http::Request::get(format!("http://{addr}/"))
                        .header("x-api-key", KEY)
                        .body(Empty::new())
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    let status = response.status();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    match status.as_u16() {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            assert_eq!(&body[..], br#"{"message":"Limit Exceeded"}"#);
                            exceeded.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    server.abort();

    assert_eq!(admitted.load(Ordering::Relaxed), QUOTA);
    assert_eq!(exceeded.load(Ordering::Relaxed), REQUESTS - QUOTA);
    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [QUOTA, 0],
        "used == quota, remaining 0"
    );
}

/// 1,000 concurrent `add_remaining(+1)` top-ups (UpdateUsage `add`) on a
/// key with no quota left, while clients race them over real sockets:
/// exactly 1,000 requests are admitted in all, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_top_ups_while_traffic_flows_are_exact() {
    const TOP_UPS: u64 = 1_000;
    let plans = support::plans_with_clock(&support::clock("2026-11-28T12:00:00Z"));
    let (plan, key_id) = support::plan_with_key(
        &plans,
        NewUsagePlan::new("top-ups").with_quota(Quota::new(0, QuotaPeriod::Day)),
        KEY,
    );
    let (addr, server) = serve_layered(&plans).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get_one = move || {
        let client = client.clone();
        async move {
            let request = http::Request::get(format!("http://{addr}/"))
                .header("x-api-key", KEY)
                .body(Empty::new())
                .unwrap();
            let status = client.request(request).await.unwrap().status().as_u16();
            assert!(status == 200 || status == 429, "unexpected status {status}");
            status == 200
        }
    };
    let top_up = || {
        let (plans, plan_id, key_id) = (plans.clone(), plan.id.clone(), key_id.clone());
        async move {
            plans.add_remaining(&plan_id, &key_id, 1).await.unwrap();
        }
    };
    let admitted =
        support::race::admitted_while_topping_up((16, 125), get_one, TOP_UPS as usize, top_up)
            .await;
    server.abort();
    assert_eq!(admitted, TOP_UPS);
    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [TOP_UPS, 0]
    );
}
