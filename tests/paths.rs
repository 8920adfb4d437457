#![cfg(feature = "gateway")]
//! The path that was matched is the path that is forwarded: every variant
//! of `/foo` that an upstream could read as `/foo` is throttled by the
//! method throttle on `/foo/GET`, or refused with 400 before it costs
//! anything; what reaches the upstream is the canonical path.

mod support;
use net::{assert_aws_answer, get, http1_server, within};
use support::gateway_config::one_key;
use support::{body_string, net, plan_with_key, usage};
use usage::usage_today;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tower_usage_plans::gateway::{Gateway, GatewayConfig};
use tower_usage_plans::{ApiStage, NewUsagePlan, Quota, QuotaPeriod, Throttle};

const KEY: &str = "paths-key-0123456789abcdef";

/// One key in a plan with a generous quota and a method throttle on
/// `/foo/GET` of one request (refilling once in 1,000 s).
fn config() -> GatewayConfig {
    let stage = ApiStage::new("gateway", "prod")
        .with_method_throttle("/foo/GET", Throttle::new(0.001, 1).unwrap());
    one_key(
        KEY,
        NewUsagePlan::new("paths")
            .with_quota(Quota::new(1000, QuotaPeriod::Day))
            .with_api_stage(stage),
    )
}

/// An upstream that answers 200 and reports each request target it got.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (seen, targets) = mpsc::unbounded_channel();
    let addr = http1_server(move |request: Request<Incoming>| {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
        let _ = seen.send(target);
        async { Response::new(Full::new(Bytes::from("ok"))) }
    })
    .await;
    (addr, targets)
}

/// Finding 4 of the edge report: with `/foo` already throttled, none of
/// these reaches the upstream. The ones that name `/foo` are throttled
/// (429); the ambiguous ones are refused (400) and cost nothing.
#[tokio::test]
async fn no_variant_of_a_throttled_path_escapes_its_method_throttle() {
    let (upstream, mut targets) = recording_upstream().await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream}").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.data_addr();
    let plan = gateway.plans().usage_plans()[0].id.clone();
    let key = gateway.plans().api_key_by_value(KEY).unwrap().id;

    let (status, _, _) = get(addr, "/foo", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        within("the upstream", targets.recv()).await.unwrap(),
        "/foo"
    );
    let (status, _, _) = get(addr, "/foo", Some(KEY)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the throttle is spent"
    );

    // Variants that are /foo: matched as /foo, so throttled.
    for path in [
        "/foo/",
        "//foo",
        "/./foo",
        "/%66oo",
        "/bar/../foo",
        "/foo%2F",
        "/foo%2f",
        "/foo/.",
        "/%2Ffoo",
        "/x%2F..%2Ffoo",
        "/foo?x=1",
    ] {
        assert_aws_answer(
            &get(addr, path, Some(KEY)).await,
            (429, "Too Many Requests", "TooManyRequestsException"),
            path,
        );
    }
    // Variants that some upstream would read as /foo and another as
    // something else: refused before metering, whoever asks.
    for path in [
        "/foo;x", "/foo%3Bx", "/foo%3bx", "/foo;", "/foo%00", "/foo%00x", "/%00/foo", "/foo%0A",
        "/foo%7F", "/foo%5C", "/foo%", "/foo%2", "/foo%zz",
    ] {
        for key in [Some(KEY), None] {
            let answer = get(addr, path, key).await;
            assert_aws_answer(&answer, (400, "Bad Request", "BadRequestException"), path);
            assert!(!answer.1.contains_key("ratelimit"), "{path}: not metered");
        }
    }
    // Only the first /foo was admitted and counted; nothing else reached
    // the upstream.
    assert_eq!(usage_today(gateway.plans(), &plan, &key).await, [1, 999]);
    assert!(targets.try_recv().is_err(), "nothing else was forwarded");

    // Resource paths are case-sensitive, as in API Gateway: /FOO is another
    // resource, not throttled by /foo/GET, and forwarded as /FOO.
    let (status, _, _) = get(addr, "/FOO", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        within("the upstream", targets.recv()).await.unwrap(),
        "/FOO"
    );
    gateway.shutdown().await.unwrap();
}

/// What reaches the upstream is the canonical path the layer matched; the
/// query is passed on as it came.
#[tokio::test]
async fn the_upstream_gets_the_path_that_was_matched() {
    let (upstream, mut targets) = recording_upstream().await;
    let mut config = config();
    config.upstream = Some(format!("http://{upstream}/api").parse().unwrap());
    let gateway = Gateway::start(config).await.unwrap();
    for (sent, forwarded) in [
        ("/pets/1", "/api/pets/1"),
        ("/pets//1/", "/api/pets/1/"),
        ("/x/../pets/./1?q=%2F;a+b", "/api/pets/1?q=%2F;a+b"),
        ("/pet%73/%7Euser/%e2%82%ac", "/api/pets/~user/%E2%82%AC"),
        ("/a%2Fb/%3A%40", "/api/a/b/%3A%40"),
        ("/a%25b", "/api/a%25b"),
        ("/../..", "/api/"),
        ("/Pets", "/api/Pets"),
    ] {
        let (status, _, _) = get(gateway.data_addr(), sent, Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        let seen = within("the upstream", targets.recv()).await.unwrap();
        assert_eq!(seen, forwarded, "{sent}");
    }
    gateway.shutdown().await.unwrap();
}

/// The layer on its own (a library user's service): the inner service gets
/// the canonical path, and an ambiguous path never reaches it.
#[tokio::test]
async fn the_layer_passes_on_the_canonical_path() {
    use tower::{service_fn, ServiceExt};
    use tower_usage_plans::{Refusal, UsagePlanLayer, UsagePlans};

    let plans = UsagePlans::new();
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p").with_quota(Quota::new(10, QuotaPeriod::Day)),
        KEY,
    );
    let layer = UsagePlanLayer::new(plans.clone()).with_unmetered("GET", "/health");
    let inner = service_fn(|request: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(axum::body::Body::from(
            request.uri().to_string(),
        )))
    });
    let call = |path: &str| {
        let request = Request::get(path)
            .header("x-api-key", KEY)
            .body(())
            .unwrap();
        tower::Layer::layer(&layer, inner).oneshot(request)
    };
    let response = call("/a/./b//c%2Fd?x=%2F").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_string(response).await, "/a/b/c/d?x=%2F");
    let response = call("//health/").await.unwrap();
    assert_eq!(
        body_string(response).await,
        "/health/",
        "unmetered routes too"
    );
    for path in ["/a;b", "/health%00", "/a%3B"] {
        let response = call(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(response.extensions().get(), Some(&Refusal::BadPath));
    }
    assert_eq!(usage_today(&plans, &plan.id, &key_id).await, [1, 9]);
}
