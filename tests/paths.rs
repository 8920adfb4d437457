#![cfg(feature = "gateway")]
//! The path that was matched is the path that is forwarded: every variant
//! of `/foo` that an upstream could read as `/foo` is throttled by the
//! method throttle on `/foo/GET`, or refused with 400 before it costs
//! anything; what reaches the upstream is the canonical path.

mod support;
use net::{get, within};
use support::{net, usage};
use usage::usage_today;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig};
use tower_usage_plans::{ApiStage, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle};

const KEY: &str = "paths-key-0123456789abcdef";

/// One key in a plan with a generous quota and a method throttle on
/// `/foo/GET` of one request (refilling once in 1,000 s).
fn config() -> GatewayConfig {
    let stage = ApiStage::new("gateway", "prod")
        .with_method_throttle("/foo/GET", Throttle::new(0.001, 1).unwrap());
    GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        keys: vec![NewApiKey::new("tester").with_value(KEY).with_enabled(true)],
        plans: vec![FilePlan {
            plan: NewUsagePlan::new("paths")
                .with_quota(Quota::new(1000, QuotaPeriod::Day))
                .with_api_stage(stage),
            keys: vec!["tester".into()],
        }],
        ..GatewayConfig::default()
    }
}

/// An upstream that answers 200 and reports each request target it got.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, targets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let target = request
                        .uri()
                        .path_and_query()
                        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
                    let _ = seen.send(target);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, targets)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
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
        let (status, headers, body) = get(addr, path, Some(KEY)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(
            headers["x-amzn-errortype"], "TooManyRequestsException",
            "{path}"
        );
        assert_eq!(json(&body)["message"], "Too Many Requests", "{path}");
    }
    // Variants that some upstream would read as /foo and another as
    // something else: refused before metering, whoever asks.
    for path in [
        "/foo;x", "/foo%3Bx", "/foo%3bx", "/foo;", "/foo%00", "/foo%00x", "/%00/foo", "/foo%0A",
        "/foo%7F", "/foo%5C", "/foo%", "/foo%2", "/foo%zz",
    ] {
        for key in [Some(KEY), None] {
            let (status, headers, body) = get(addr, path, key).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(headers["x-amzn-errortype"], "BadRequestException", "{path}");
            assert_eq!(headers["content-type"], "application/json", "{path}");
            assert_eq!(
                json(&body),
                serde_json::json!({"message": "Bad Request"}),
                "{path}"
            );
            assert!(!headers.contains_key("ratelimit"), "{path}: not metered");
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
    let plan = plans
        .create_usage_plan(NewUsagePlan::new("p").with_quota(Quota::new(10, QuotaPeriod::Day)))
        .unwrap();
    let key = plans
        .create_api_key(NewApiKey::new("k").with_value(KEY).with_enabled(true))
        .unwrap();
    plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    let layer = UsagePlanLayer::new(plans.clone()).with_unmetered("GET", "/health");
    let inner = service_fn(|request: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
            request.uri().to_string(),
        ))))
    });
    let call = |path: &str| {
        let request = Request::get(path)
            .header("x-api-key", KEY)
            .body(())
            .unwrap();
        tower::Layer::layer(&layer, inner).oneshot(request)
    };
    let body = |response: Response<Full<Bytes>>| async move {
        use http_body_util::BodyExt;
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    let response = call("/a/./b//c%2Fd?x=%2F").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "/a/b/c/d?x=%2F");
    let response = call("//health/").await.unwrap();
    assert_eq!(body(response).await, "/health/", "unmetered routes too");
    for path in ["/a;b", "/health%00", "/a%3B"] {
        let response = call(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(response.extensions().get(), Some(&Refusal::BadPath));
    }
    assert_eq!(usage_today(&plans, &plan.id, &key.id).await, [1, 9]);
}
