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
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(UsagePlanLayer::new(plans.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

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
