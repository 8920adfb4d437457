//! The layer's behaviour: refusals, headers, throttles, per-method
//! throttles, unmetered routes and extensions — with a controlled clock.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use support::*;
use tower::{service_fn, ServiceExt};
use tower_usage_plans::{
    ApiStage, AuthorizerKey, KeySource, ManualClock, NewApiKey, NewUsagePlan, Quota, QuotaPeriod,
    Refusal, Throttle, UsageContext, UsagePlanLayer,
};

const NOW: &str = "2026-11-28T12:00:00Z";

/// A layer over `plan` holding `KEY`, with time stopped at `NOW`.
fn layer_over(plan: NewUsagePlan) -> (ManualClock, UsagePlanLayer) {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    plan_with_key(&plans, plan, KEY);
    (clock, UsagePlanLayer::new(plans))
}

#[tokio::test]
async fn forbidden_for_missing_unknown_disabled_and_planless_keys() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let (_, key_id) = plan_with_key(&plans, NewUsagePlan::new("p"), KEY);
    plans
        .create_api_key(
            NewApiKey::new("no plan")
                .with_value("planless-key-0123456789")
                .with_enabled(true),
        )
        .unwrap();
    let layer = UsagePlanLayer::new(plans.clone());

    let missing = send(&layer, "GET", "/", None).await;
    let unknown = get(&layer, "unknown-key-0123456789abc").await;
    let planless = get(&layer, "planless-key-0123456789").await;
    plans
        .update_api_key(&key_id, |k| {
            k.enabled = false;
            Ok(())
        })
        .unwrap();
    let disabled = get(&layer, KEY).await;

    for (response, reason) in [
        (missing, Refusal::MissingKey),
        (unknown, Refusal::InvalidKey),
        (planless, Refusal::NoPlan),
        (disabled, Refusal::DisabledKey),
    ] {
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.extensions().get::<Refusal>(), Some(&reason));
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(
            header(&response, "x-amzn-errortype"),
            Some("ForbiddenException")
        );
        assert_eq!(header(&response, "ratelimit"), None, "403s are not metered");
        assert_eq!(body_string(response).await, r#"{"message":"Forbidden"}"#);
    }
}

#[tokio::test]
async fn quota_refusal_is_aws_shaped_with_headers() {
    let (_, layer) = layer_over(NewUsagePlan::new("p").with_quota(Quota::new(2, QuotaPeriod::Day)));

    let first = get(&layer, KEY).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some(r#""quota";q=2;w=86400"#)
    );
    // 12:00 UTC: twelve hours to the end of the day.
    assert_eq!(header(&first, "ratelimit"), Some(r#""quota";r=1;t=43200"#));
    assert_eq!(header(&first, "retry-after"), None);
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);

    let refused = get(&layer, KEY).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.extensions().get::<Refusal>(),
        Some(&Refusal::QuotaExceeded)
    );
    assert_eq!(
        header(&refused, "x-amzn-errortype"),
        Some("LimitExceededException")
    );
    assert_eq!(header(&refused, "content-type"), Some("application/json"));
    assert_eq!(header(&refused, "retry-after"), Some("43200"));
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(r#""quota";r=0;t=43200"#)
    );
    assert_eq!(
        body_string(refused).await,
        r#"{"message":"Limit Exceeded"}"#
    );
}

#[tokio::test]
async fn limits_of_zero_never_admit_and_say_so() {
    let (_, layer) =
        layer_over(NewUsagePlan::new("q0").with_quota(Quota::new(0, QuotaPeriod::Day)));
    let refused = get(&layer, KEY).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The day ends in 12 hours, but tomorrow allows none either.
    assert_eq!(header(&refused, "retry-after"), Some("86400"));
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(r#""quota";r=0;t=43200"#)
    );

    let (_, layer) =
        layer_over(NewUsagePlan::new("b0").with_throttle(Throttle::new(10.0, 0).unwrap()));
    let refused = get(&layer, KEY).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), Some("86400"));
    // No token will ever come: not "t=0".
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(r#""throttle";r=0;t=86400"#)
    );
}

#[tokio::test]
async fn throttle_burst_then_refill_with_controlled_time() {
    let (clock, layer) =
        layer_over(NewUsagePlan::new("p").with_throttle(Throttle::new(0.5, 2).unwrap()));

    let first = get(&layer, KEY).await;
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some(r#""throttle";q=2;w=1"#)
    );
    assert_eq!(header(&first, "ratelimit"), Some(r#""throttle";r=1;t=2"#));
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);

    let throttled = get(&layer, KEY).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        throttled.extensions().get::<Refusal>(),
        Some(&Refusal::Throttled)
    );
    assert_eq!(
        header(&throttled, "retry-after"),
        Some("2"),
        "one token at 0.5/s takes 2 s"
    );
    assert_eq!(
        header(&throttled, "x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        body_string(throttled).await,
        r#"{"message":"Too Many Requests"}"#
    );

    clock.advance(Duration::from_millis(1_999));
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "not yet"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::OK,
        "Retry-After was exact"
    );
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    clock.advance(Duration::from_secs(3600));
    for _ in 0..2 {
        assert_eq!(
            get(&layer, KEY).await.status(),
            StatusCode::OK,
            "refills up to burst"
        );
    }
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "but no further"
    );
}

#[tokio::test]
async fn refused_requests_cost_nothing() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p")
            .with_throttle(Throttle::new(1.0, 1).unwrap())
            .with_quota(Quota::new(2, QuotaPeriod::Day)),
        KEY,
    );
    let layer = UsagePlanLayer::new(plans.clone());

    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);
    for _ in 0..5 {
        // Throttled: no quota spent.
        assert_eq!(
            get(&layer, KEY).await.extensions().get::<Refusal>(),
            Some(&Refusal::Throttled)
        );
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::OK,
        "quota still had one left"
    );
    clock.advance(Duration::from_secs(1));
    let refused = get(&layer, KEY).await;
    assert_eq!(
        refused.extensions().get::<Refusal>(),
        Some(&Refusal::QuotaExceeded)
    );
    // Quota-refused: no token spent, so after a grant the very next request passes.
    assert_eq!(
        header(&refused, "ratelimit"),
        Some(r#""throttle";r=1;t=0, "quota";r=0;t=43198"#)
    );
    plans.set_remaining(&plan.id, &key_id, 1).await.unwrap();
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);

    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [3, 0],
        "only admitted requests are used"
    );
}

#[tokio::test]
async fn method_throttles_override_the_plan_with_templates() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let stage = ApiStage::new("petstore", "prod")
        .with_method_throttle("/pets/{id}/GET", Throttle::new(1.0, 1).unwrap())
        .with_method_throttle("/files/{proxy+}/*", Throttle::new(1.0, 2).unwrap())
        .with_method_throttle("//GET", Throttle::new(1.0, 3).unwrap());
    plan_with_key(
        &plans,
        NewUsagePlan::new("p")
            .with_api_stage(stage)
            .with_throttle(Throttle::new(1.0, 100).unwrap()),
        KEY,
    );
    let layer = UsagePlanLayer::new(plans).with_stage("petstore", "prod");

    let pet = send(&layer, "GET", "/pets/7", Some(KEY)).await;
    assert_eq!(
        header(&pet, "ratelimit-policy"),
        Some(r#""throttle";q=1;w=1"#)
    );
    assert_eq!(
        send(&layer, "GET", "/pets/8", Some(KEY)).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one bucket for the template"
    );
    // Another method of the same path uses the plan's bucket.
    let post = send(&layer, "POST", "/pets/7", Some(KEY)).await;
    assert_eq!(post.status(), StatusCode::OK);
    assert_eq!(
        header(&post, "ratelimit-policy"),
        Some(r#""throttle";q=100;w=1"#)
    );

    let file = send(&layer, "PUT", "/files/a/b/c", Some(KEY)).await;
    assert_eq!(
        header(&file, "ratelimit-policy"),
        Some(r#""throttle";q=2;w=1"#),
        "greedy {{proxy+}}, any method"
    );
    let root = send(&layer, "GET", "/", Some(KEY)).await;
    assert_eq!(
        header(&root, "ratelimit-policy"),
        Some(r#""throttle";q=3;w=1"#),
        "//GET is the root"
    );
}

#[tokio::test]
async fn stages_decide_which_plan_applies() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    plan_with_key(
        &plans,
        NewUsagePlan::new("p").with_api_stage(ApiStage::new("api", "prod")),
        KEY,
    );
    let prod = UsagePlanLayer::new(plans.clone()).with_stage("api", "prod");
    let beta = UsagePlanLayer::new(plans).with_stage("api", "beta");
    assert_eq!(get(&prod, KEY).await.status(), StatusCode::OK);
    let refused = get(&beta, KEY).await;
    assert_eq!(
        refused.extensions().get::<Refusal>(),
        Some(&Refusal::NoPlan)
    );
}

#[tokio::test]
async fn unmetered_routes_pass_without_key_and_count_nothing() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p").with_quota(Quota::new(1, QuotaPeriod::Day)),
        KEY,
    );
    let layer = UsagePlanLayer::new(plans.clone())
        .with_unmetered("GET", "/health")
        .with_unmetered("*", "/public/{proxy+}");

    let health = send(&layer, "GET", "/health", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(header(&health, "ratelimit"), None);
    assert_eq!(
        send(&layer, "POST", "/public/a/b", Some(KEY))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&layer, "POST", "/health", None).await.status(),
        StatusCode::FORBIDDEN,
        "only GET is unmetered"
    );
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::OK,
        "the quota of 1 is untouched"
    );
    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [1, 0]
    );
}

#[tokio::test]
async fn admitted_requests_carry_usage_context_unless_left_out() {
    let plans = tower_usage_plans::UsagePlans::new();
    let (plan, key_id) = plan_with_key(&plans, NewUsagePlan::new("p"), KEY);
    for (carried, expected) in [
        (true, format!("{}/{}", plan.id, key_id)),
        (false, "none".into()),
    ] {
        let service = tower::Layer::layer(
            &UsagePlanLayer::new(plans.clone()).with_usage_context(carried),
            service_fn(|request: Request<Body>| async move {
                let usage = request.extensions().get::<UsageContext>();
                let text =
                    usage.map_or("none".into(), |u| format!("{}/{}", u.plan_id(), u.key_id()));
                Ok::<_, std::convert::Infallible>(Response::new(Body::from(text)))
            }),
        );
        let response = service
            .oneshot(
                Request::get("/")
                    .header("x-api-key", KEY)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_string(response).await, expected);
    }
    // Counted either way.
    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [2, 0]
    );
}

#[tokio::test]
async fn other_key_sources() {
    let plans = tower_usage_plans::UsagePlans::new();
    plan_with_key(&plans, NewUsagePlan::new("p"), KEY);
    let query = UsagePlanLayer::new(plans.clone()).with_key_source(KeySource::query("api_key"));
    assert_eq!(
        send(&query, "GET", &format!("/x?api_key={KEY}"), None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&query, "GET", "/x", Some(KEY)).await.status(),
        StatusCode::FORBIDDEN
    );

    let authorizer = tower::Layer::layer(
        &UsagePlanLayer::new(plans).with_key_source(KeySource::authorizer()),
        service_fn(echo),
    );
    let mut request = Request::get("/").body(Body::empty()).unwrap();
    request.extensions_mut().insert(AuthorizerKey::new(KEY));
    assert_eq!(
        authorizer.oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn custom_refusal_and_legacy_headers() {
    let plans = tower_usage_plans::UsagePlans::new();
    plan_with_key(
        &plans,
        NewUsagePlan::new("p").with_quota(Quota::new(1, QuotaPeriod::Day)),
        KEY,
    );
    let layer = UsagePlanLayer::new(plans)
        .with_legacy_headers(true)
        .with_refusal_response(|refusal: Refusal| {
            Response::builder()
                .status(refusal.status())
                .body(Body::from(format!("no: {refusal:?}")))
                .unwrap()
        });
    let service = tower::Layer::layer(&layer, service_fn(echo));
    let request = || {
        Request::get("/")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap()
    };
    let ok = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(header(&ok, "x-ratelimit-limit"), Some("1"));
    assert_eq!(header(&ok, "x-ratelimit-remaining"), Some("0"));
    let refused = service.oneshot(request()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused.headers().contains_key("retry-after"),
        "headers added to custom refusals too"
    );
    assert_eq!(body_string(refused).await, "no: QuotaExceeded");
}

#[tokio::test]
async fn admin_changes_apply_on_the_next_request() {
    let plans = tower_usage_plans::UsagePlans::new();
    let (plan, key_id) = plan_with_key(&plans, NewUsagePlan::new("p"), KEY);
    let layer = UsagePlanLayer::new(plans.clone());
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);
    plans
        .update_usage_plan(&plan.id, |p| {
            p.throttle = Some(Throttle::new(1.0, 0)?);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        get(&layer, KEY).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    plans.remove_key_from_plan(&plan.id, &key_id).unwrap();
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::FORBIDDEN);
    plans.delete_api_key(&key_id).unwrap();
    assert_eq!(
        get(&layer, KEY).await.extensions().get::<Refusal>(),
        Some(&Refusal::InvalidKey)
    );
}

#[tokio::test]
async fn an_admitted_request_carries_its_charge_which_a_refund_gives_back() {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p")
            .with_quota(Quota::new(5, QuotaPeriod::Day))
            .with_throttle(Throttle::new(0.001, 1).unwrap()),
        KEY,
    );
    // A service that never delivers: it gives the charge back.
    let service = tower::Layer::layer(
        &UsagePlanLayer::new(plans.clone()),
        service_fn(|mut request: Request<Body>| async move {
            let usage = request.extensions_mut().get_mut::<UsageContext>().unwrap();
            let charge = usage
                .take_charge()
                .expect("an admitted request was charged");
            assert!(usage.take_charge().is_none(), "taken once");
            charge.refund().await.unwrap();
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }),
    );
    for _ in 0..3 {
        let request = Request::get("/")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "burst 1, and refunded");
    }
    assert_eq!(
        support::usage::usage_today(&plans, &plan.id, &key_id).await,
        [0, 5]
    );
}

#[tokio::test]
async fn a_refund_gives_back_to_the_method_throttle_that_charged() {
    refunds_to_the_method_throttle(Some(Throttle::new(0.001, 100).unwrap())).await;
}

/// A charge names its method throttle; its refund finds that throttle in
/// the plan, also when the plan has none of its own to fall back on.
#[tokio::test]
async fn a_refund_finds_the_method_throttle_of_a_plan_without_its_own() {
    refunds_to_the_method_throttle(None).await;
}

/// Three requests to a method throttled with a burst of 1 (and a plan
/// throttle `plan_throttle`), each refunded by its handler: all admitted.
async fn refunds_to_the_method_throttle(plan_throttle: Option<Throttle>) {
    let clock = clock(NOW);
    let plans = plans_with_clock(&clock);
    let stage = ApiStage::new("petstore", "prod")
        .with_method_throttle("/pets/{id}/GET", Throttle::new(0.001, 1).unwrap());
    let mut plan = NewUsagePlan::new("p").with_api_stage(stage);
    if let Some(throttle) = plan_throttle {
        plan = plan.with_throttle(throttle);
    }
    plan_with_key(&plans, plan, KEY);
    let service = tower::Layer::layer(
        &UsagePlanLayer::new(plans).with_stage("petstore", "prod"),
        service_fn(|mut request: Request<Body>| async move {
            let usage = request.extensions_mut().get_mut::<UsageContext>().unwrap();
            usage.take_charge().unwrap().refund().await.unwrap();
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }),
    );
    for _ in 0..3 {
        let request = Request::get("/pets/7")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the method's burst of 1, refunded each time"
        );
    }
}

#[tokio::test]
async fn keys_kept_as_digests_are_found_by_value_and_never_by_digest() {
    let clock = clock(NOW);
    let hashed = tower_usage_plans::UsagePlans::builder()
        .with_clock(clock.clone())
        .with_hash_only(true)
        .build();
    let (_, key_id) = plan_with_key(&hashed, NewUsagePlan::new("p"), KEY);
    assert_eq!(hashed.api_key(&key_id).unwrap().value, None);
    let layer = UsagePlanLayer::new(hashed.clone());
    for _ in 0..3 {
        assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);
    }
    assert_eq!(
        get(&layer, "unknown-key-0123456789abc").await.status(),
        StatusCode::FORBIDDEN
    );

    // The snapshot holds the digest only; presenting it is no key.
    let snapshot = hashed.snapshot();
    let digest = snapshot.keys[0].digest.clone();
    assert!(!serde_json::to_string(&snapshot).unwrap().contains(KEY));
    assert_eq!(get(&layer, &digest).await.status(), StatusCode::FORBIDDEN);

    // A registry that keeps values, restored from that snapshot, finds the
    // value-less key by digest; a deleted key is gone at once.
    let restored = plans_with_clock(&clock);
    restored.restore(snapshot).unwrap();
    let layer = UsagePlanLayer::new(restored.clone());
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);
    restored.delete_api_key(&key_id).unwrap();
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::FORBIDDEN);
    hashed.delete_api_key(&key_id).unwrap();
    let layer = UsagePlanLayer::new(hashed);
    assert_eq!(get(&layer, KEY).await.status(), StatusCode::FORBIDDEN);
}

/// A counter store that is down: every call fails.
struct DownStore;

impl tower_usage_plans::store::CounterStore for DownStore {
    fn decide(
        &self,
        _: &tower_usage_plans::store::DecisionRequest<'_>,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::Decision> {
        down()
    }
    fn refund(
        &self,
        _: &tower_usage_plans::store::DecisionRequest<'_>,
    ) -> tower_usage_plans::store::StoreFuture<()> {
        down()
    }
    fn set_remaining(
        &self,
        _: &tower_usage_plans::store::CounterKey,
        _: &tower_usage_plans::store::QuotaRule,
        _: tower_usage_plans::Timestamp,
        _: u64,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::DayUsage> {
        down()
    }
    fn add_remaining(
        &self,
        _: &tower_usage_plans::store::CounterKey,
        _: &tower_usage_plans::store::QuotaRule,
        _: tower_usage_plans::Timestamp,
        _: i64,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::DayUsage> {
        down()
    }
    fn usage(
        &self,
        _: &tower_usage_plans::store::CounterKey,
        _: Option<&tower_usage_plans::store::QuotaRule>,
        _: tower_usage_plans::Timestamp,
        _: jiff::civil::Date,
        _: jiff::civil::Date,
    ) -> tower_usage_plans::store::StoreFuture<Vec<tower_usage_plans::store::DayUsage>> {
        down()
    }
    fn forget(
        &self,
        _: &tower_usage_plans::store::CounterKey,
    ) -> tower_usage_plans::store::StoreFuture<()> {
        down()
    }
}

fn down<T: Send + 'static>() -> tower_usage_plans::store::StoreFuture<T> {
    tower_usage_plans::store::StoreFuture::ready(Err(tower_usage_plans::Error::new(
        tower_usage_plans::ErrorKind::Store,
        "down",
    )))
}

/// The log lines written while `f` runs (this thread's subscriber).
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A store that is down fails every request: the layer logs the first
/// failure at once, then at most one line every 5 s, not one a request.
#[tokio::test(flavor = "current_thread")]
async fn a_store_that_is_down_is_logged_a_few_lines_not_one_per_request() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let plans = tower_usage_plans::UsagePlans::builder()
        .with_store(std::sync::Arc::new(DownStore))
        .build();
    plan_with_key(&plans, NewUsagePlan::new("p"), KEY);
    let layer = UsagePlanLayer::new(plans);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        // Fail-open (the default): admitted, uncounted.
        assert_eq!(get(&layer, KEY).await.status(), StatusCode::OK);
    }
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let logged = text.matches("counter store failed").count() as u64;
    assert!(logged >= 1, "the first failure is logged: {text}");
    assert!(
        logged <= 1 + started.elapsed().as_secs() / 5,
        "{logged} lines for 50 failed decisions"
    );
}
