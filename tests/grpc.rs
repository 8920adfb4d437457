//! A tonic server wearing `UsagePlanLayer`, called by a real tonic client
//! over real sockets (HTTP/2 cleartext): admitted unary and
//! server-streaming calls, and every refusal as a gRPC status, with the
//! `google.rpc.RetryInfo` gRPC clients read.

mod support;
use support::grpc::{client, counted, incoming, keyed, retry_after, retry_delay};
use support::{plan_with_key, redis_server, usage, usage_grpc};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use tower_usage_plans::store::RedisStore;
use tower_usage_plans::{
    GrpcRefusal, ManualClock, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, StoreFailure, Throttle,
    UsagePlanLayer, UsagePlans,
};
use usage::usage_today;
use usage_grpc::{CountRequest, UsageServer, WhoAmIRequest};

const KEY: &str = "grpc-key-0123456789abcdef";

/// A tonic server wearing `layer` on a free port, and its call counter.
async fn serve<R>(layer: UsagePlanLayer<R>) -> (SocketAddr, UsageServer)
where
    R: tower_usage_plans::RefusalResponse<tonic::body::Body> + Clone + Send + Sync + 'static,
{
    let (addr, incoming) = incoming().await;
    let server = UsageServer::default();
    let serving = Server::builder()
        .layer(layer)
        .add_service(server.clone())
        .serve_with_incoming(incoming);
    tokio::spawn(async move { serving.await.unwrap() });
    (addr, server)
}

struct Fixture {
    plans: UsagePlans,
    plan_id: String,
    key_id: String,
}

/// A registry on a frozen clock with one plan (`plan`) and one key in it.
fn fixture(plan: NewUsagePlan) -> Fixture {
    let clock = ManualClock::new("2026-03-07T12:00:00Z".parse().unwrap());
    fixture_in(UsagePlans::builder().with_clock(clock).build(), plan)
}

/// `plans` with one plan (`plan`) and the key `KEY` in it.
fn fixture_in(plans: UsagePlans, plan: NewUsagePlan) -> Fixture {
    let (plan, key_id) = plan_with_key(&plans, plan, KEY);
    Fixture {
        plans,
        plan_id: plan.id,
        key_id,
    }
}

fn layer(plans: &UsagePlans) -> UsagePlanLayer<GrpcRefusal> {
    UsagePlanLayer::new(plans.clone()).with_refusal_response(GrpcRefusal)
}

#[tokio::test]
async fn admitted_unary_reads_the_usage_context_and_carries_ratelimit_metadata() {
    let f = fixture(NewUsagePlan::new("grpc").with_quota(Quota::new(10, QuotaPeriod::Day)));
    let (addr, server) = serve(layer(&f.plans)).await;
    let mut client = client(addr).await;

    let reply = client.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();
    let ratelimit = reply
        .metadata()
        .get("ratelimit")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ratelimit, r#""quota";r=9;t=43200"#);
    assert_eq!(
        reply.metadata().get("ratelimit-policy").unwrap(),
        r#""quota";q=10;w=86400"#
    );
    let reply = reply.into_inner();
    assert_eq!(reply.key_id, f.key_id);
    assert_eq!(reply.plan_id, f.plan_id);
    assert_eq!(server.calls(), 1);
    assert_eq!(usage_today(&f.plans, &f.plan_id, &f.key_id).await, [1, 9]);
}

#[tokio::test]
async fn a_server_stream_costs_one_unit_however_many_messages() {
    let f = fixture(NewUsagePlan::new("grpc").with_quota(Quota::new(10, QuotaPeriod::Day)));
    let (addr, _server) = serve(layer(&f.plans)).await;
    let mut client = client(addr).await;

    let response = client
        .count(keyed(CountRequest { n: 5 }, KEY))
        .await
        .unwrap();
    assert!(response.metadata().contains_key("ratelimit"));
    assert_eq!(counted(response).await, [1, 2, 3, 4, 5]);
    assert_eq!(usage_today(&f.plans, &f.plan_id, &f.key_id).await, [1, 9]);
}

#[tokio::test]
async fn key_refusals_are_unauthenticated_or_permission_denied_and_never_reach_the_service() {
    let f = fixture(NewUsagePlan::new("grpc").with_quota(Quota::new(10, QuotaPeriod::Day)));
    let disabled = f
        .plans
        .create_api_key(
            NewApiKey::new("off")
                .with_value("disabled-key-0123456789abcdef")
                .with_enabled(false),
        )
        .unwrap();
    f.plans.add_key_to_plan(&f.plan_id, &disabled.id).unwrap();
    f.plans
        .create_api_key(
            NewApiKey::new("planless")
                .with_value("planless-key-0123456789abcdef")
                .with_enabled(true),
        )
        .unwrap();
    let (addr, server) = serve(layer(&f.plans)).await;
    let mut client = client(addr).await;

    let missing = client
        .who_am_i(Request::new(WhoAmIRequest {}))
        .await
        .unwrap_err();
    let unknown = client
        .who_am_i(keyed(WhoAmIRequest {}, "no-such-key-0123456789abcdef"))
        .await
        .unwrap_err();
    let disabled = client
        .who_am_i(keyed(WhoAmIRequest {}, "disabled-key-0123456789abcdef"))
        .await
        .unwrap_err();
    let planless = client
        .count(keyed(
            CountRequest { n: 1 },
            "planless-key-0123456789abcdef",
        ))
        .await
        .unwrap_err();
    // Binary metadata is never a key: `x-api-key-bin` is not `x-api-key`.
    let mut binary = Request::new(WhoAmIRequest {});
    binary.metadata_mut().insert_bin(
        "x-api-key-bin",
        tonic::metadata::MetadataValue::from_bytes(KEY.as_bytes()),
    );
    let binary = client.who_am_i(binary).await.unwrap_err();

    for status in [&missing, &unknown, &binary] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "Forbidden");
    }
    for status in [&disabled, &planless] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), "Forbidden");
    }
    for status in [&missing, &unknown, &disabled, &planless, &binary] {
        assert!(status.get_error_details().retry_info().is_none());
    }
    assert_eq!(server.calls(), 0, "refused calls never reach the service");
    assert_eq!(usage_today(&f.plans, &f.plan_id, &f.key_id).await, [0, 10]);
}

#[tokio::test]
async fn throttled_and_quota_refusals_are_resource_exhausted_with_retry_info() {
    // A bucket of 2 that never refills on the frozen clock, and a quota of
    // 3: two calls pass, the third is throttled; then the quota alone.
    let f = fixture(
        NewUsagePlan::new("grpc")
            .with_throttle(Throttle::new(0.5, 2).unwrap())
            .with_quota(Quota::new(2, QuotaPeriod::Day)),
    );
    let (addr, server) = serve(layer(&f.plans)).await;
    let mut client = client(addr).await;

    for _ in 0..2 {
        client.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();
    }
    let exhausted = client
        .who_am_i(keyed(WhoAmIRequest {}, KEY))
        .await
        .unwrap_err();
    // Both the bucket and the quota are empty: the quota's period end is
    // the earliest a retry can pass.
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    assert_eq!(exhausted.message(), "Too Many Requests");
    assert_eq!(retry_after(&exhausted), 43_200);
    assert_eq!(retry_delay(&exhausted), Duration::from_secs(43_200));
    assert!(exhausted.metadata().contains_key("ratelimit"));
    assert_eq!(server.calls(), 2);
    assert_eq!(usage_today(&f.plans, &f.plan_id, &f.key_id).await, [2, 0]);

    // Quota only.
    let q = fixture(NewUsagePlan::new("quota").with_quota(Quota::new(1, QuotaPeriod::Day)));
    let (addr, server) = serve(layer(&q.plans)).await;
    let mut client = self::client(addr).await;
    client
        .count(keyed(CountRequest { n: 2 }, KEY))
        .await
        .unwrap();
    let spent = client
        .count(keyed(CountRequest { n: 2 }, KEY))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted);
    assert_eq!(spent.message(), "Limit Exceeded");
    assert_eq!(
        retry_delay(&spent),
        Duration::from_secs(retry_after(&spent))
    );
    assert_eq!(retry_after(&spent), 43_200);
    assert_eq!(server.calls(), 1);
    assert_eq!(usage_today(&q.plans, &q.plan_id, &q.key_id).await, [1, 0]);

    // Throttle only: the bucket's refill time.
    let t = fixture(NewUsagePlan::new("throttle").with_throttle(Throttle::new(0.25, 1).unwrap()));
    let (addr, _server) = serve(layer(&t.plans)).await;
    let mut client = self::client(addr).await;
    client.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();
    let throttled = client
        .who_am_i(keyed(WhoAmIRequest {}, KEY))
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert_eq!(throttled.message(), "Too Many Requests");
    assert_eq!(retry_after(&throttled), 4);
    assert_eq!(retry_delay(&throttled), Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_with_fail_closed_is_unavailable() {
    let mut redis = redis_server::Redis::start();
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(1));
    let f = fixture_in(
        UsagePlans::builder().with_store(Arc::new(store)).build(),
        NewUsagePlan::new("r").with_quota(Quota::new(5, QuotaPeriod::Day)),
    );
    let (addr, server) = serve(layer(&f.plans).with_store_failure(StoreFailure::FailClosed)).await;
    let mut client = client(addr).await;
    client.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();

    redis.stop();
    let down = client
        .who_am_i(keyed(WhoAmIRequest {}, KEY))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert_eq!(down.message(), "Service Unavailable");
    assert_eq!(server.calls(), 1);
}

/// A router serving gRPC next to plain HTTP routes, on HTTP/1.1 and h2c.
async fn serve_mixed(plans: &UsagePlans) -> (SocketAddr, UsageServer) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;

    let server = UsageServer::default();
    let router = axum::Router::new()
        .route("/pets", axum::routing::get(|| async { "[]" }))
        .route_service("/usage.v1.Usage/{method}", server.clone())
        .layer(UsagePlanLayer::new(plans.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, server)
}

#[tokio::test]
async fn the_default_refusal_answers_grpc_calls_as_grpc_and_http_requests_as_aws() {
    let f = fixture(NewUsagePlan::new("mixed").with_quota(Quota::new(1, QuotaPeriod::Day)));
    let (addr, server) = serve_mixed(&f.plans).await;
    let mut grpc = client(addr).await;

    let forbidden = grpc
        .who_am_i(Request::new(WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(forbidden.code(), Code::Unauthenticated);
    assert_eq!(forbidden.message(), "Forbidden");
    let reply = grpc.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();
    assert_eq!(reply.into_inner().key_id, f.key_id);
    let spent = grpc
        .who_am_i(keyed(WhoAmIRequest {}, KEY))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted);
    assert_eq!(spent.message(), "Limit Exceeded");
    assert_eq!(retry_delay(&spent), Duration::from_secs(43_200));
    assert_eq!(server.calls(), 1);

    // The same layer answers a plain HTTP request as AWS does.
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(format!("http://{addr}/pets"))
        .header("x-api-key", KEY)
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = http.request(request).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(!response.headers().contains_key("grpc-status-details-bin"));
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], br#"{"message":"Limit Exceeded"}"#);
}

/// The `grpc_service` example with `args`, killed when dropped.
struct Example(std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cargo run --example grpc_service -- args` on a free port: the
/// process and its address.
fn grpc_example(args: &[&str]) -> (Example, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut path = std::env::current_exe().unwrap();
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    let path = path.join("examples").join("grpc_service");
    let mut child = Command::new(&path)
        .args(args)
        .env("ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo test` builds it)", path.display()));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let example = Example(child);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected: {first}"))
        .parse()
        .unwrap();
    (example, addr)
}

/// `cargo run --example grpc_service -- --plain` behind the gateway: the
/// gateway meters the call, the service names the key the gateway names.
#[tokio::test]
async fn the_plain_example_serves_behind_the_gateway() {
    use support::gateway_config::{daily_quota, one_key};
    use tower_usage_plans::gateway::{Gateway, GatewayConfig};

    let (_example, upstream) = grpc_example(&["--plain"]);
    let key = "grpc-plain-example-key-0123456789";
    let gateway = Gateway::start(GatewayConfig {
        upstream: Some(format!("http://{upstream}").parse().unwrap()),
        ..one_key(key, daily_quota(5))
    })
    .await
    .unwrap();
    let mut client = client(gateway.data_addr()).await;
    let reply = client
        .who_am_i(keyed(WhoAmIRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    let plans = gateway.plans();
    assert_eq!(reply.key_id, plans.api_keys()[0].id);
    let plan = &plans.usage_plans()[0];
    assert_eq!(usage_today(plans, &plan.id, &reply.key_id).await, [1, 4]);
    gateway.shutdown().await.unwrap();
}

/// `cargo run --example grpc_service`, called by a tonic client.
#[tokio::test]
async fn the_example_serves_and_refuses_as_documented() {
    let (_example, addr) = grpc_example(&[]);
    let mut client = client(addr).await;
    let demo = "demo-key-0123456789abcdef";
    let reply = client
        .who_am_i(keyed(WhoAmIRequest {}, demo))
        .await
        .unwrap();
    assert!(!reply.into_inner().key_id.is_empty());
    let missing = client
        .who_am_i(Request::new(WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    // Burst 5: one spent above, four more pass, the next is throttled.
    for _ in 0..4 {
        client
            .who_am_i(keyed(WhoAmIRequest {}, demo))
            .await
            .unwrap();
    }
    let throttled = loop {
        // The bucket refills at 2/s on the example's real clock: a slow
        // machine may earn a token between calls, so call until refused.
        match client.who_am_i(keyed(WhoAmIRequest {}, demo)).await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    assert_eq!(
        retry_delay(&throttled),
        Duration::from_secs(retry_after(&throttled))
    );
}

#[tokio::test]
async fn with_refusal_response_still_decides_the_answer() {
    let f = fixture(NewUsagePlan::new("custom").with_quota(Quota::new(1, QuotaPeriod::Day)));
    let custom = |refusal: tower_usage_plans::Refusal| {
        let status = match refusal {
            tower_usage_plans::Refusal::QuotaExceeded => {
                Status::resource_exhausted("come back tomorrow")
            }
            _ => Status::failed_precondition(format!("custom: {}", refusal.message())),
        };
        status.into_http::<tonic::body::Body>()
    };
    let (addr, _server) =
        serve(UsagePlanLayer::new(f.plans.clone()).with_refusal_response(custom)).await;
    let mut client = client(addr).await;

    let missing = client
        .who_am_i(Request::new(WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert_eq!(missing.message(), "custom: Forbidden");
    client.who_am_i(keyed(WhoAmIRequest {}, KEY)).await.unwrap();
    let spent = client
        .who_am_i(keyed(WhoAmIRequest {}, KEY))
        .await
        .unwrap_err();
    assert_eq!(spent.code(), Code::ResourceExhausted);
    assert_eq!(spent.message(), "come back tomorrow");
    // A RESOURCE_EXHAUSTED of the user's own still gets the RetryInfo.
    assert_eq!(
        retry_delay(&spent),
        Duration::from_secs(retry_after(&spent))
    );
}
