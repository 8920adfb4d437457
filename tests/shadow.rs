//! Shadow mode in the layer: counts and rate-limit headers as usual, no
//! refusal; a would-be refusal is admitted uncounted and marked.

mod support;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::Request;
use support::usage::usage_today;
use support::*;
use tower::ServiceExt;
use tower_usage_plans::{
    NewUsagePlan, Quota, QuotaPeriod, Refusal, ShadowRefusal, Throttle, UsageContext,
    UsagePlanLayer,
};

/// What the handler saw: the context's escaped refusal, or the bare mark.
async fn seen(
    usage: Option<Extension<UsageContext>>,
    shadow: Option<Extension<ShadowRefusal>>,
) -> String {
    let context = usage.map(|Extension(u)| format!("{:?}", u.shadow_refusal()));
    let mark = shadow.map(|Extension(s)| format!("{:?}", s.refusal()));
    format!("context={context:?} mark={mark:?}")
}

fn request(path: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn would_be_refusals_are_admitted_uncounted_and_marked() {
    let clock = clock("2026-03-07T12:00:00Z");
    let plans = plans_with_clock(&clock);
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p")
            .with_throttle(Throttle::new(1.0, 10).unwrap())
            .with_quota(Quota::new(2, QuotaPeriod::Day)),
        KEY,
    );
    let app = Router::new()
        .route("/{*path}", get(seen))
        .layer(UsagePlanLayer::new(plans.clone()).with_shadow(true));
    let call = |path: &str, key: Option<&str>| app.clone().oneshot(request(path, key));

    for _ in 0..2 {
        let response = call("/pets", Some(KEY)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.extensions().get::<ShadowRefusal>().is_none());
    }
    let over = call("/pets", Some(KEY)).await.unwrap();
    assert_eq!(over.status(), 200);
    assert_eq!(
        over.extensions()
            .get::<ShadowRefusal>()
            .map(|s| s.refusal()),
        Some(Refusal::QuotaExceeded)
    );
    assert!(over.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .contains("\"quota\";r=0"));
    assert!(!over.headers().contains_key("retry-after"));
    let body = axum::body::to_bytes(over.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        &body[..],
        br#"context=Some("Some(QuotaExceeded)") mark=Some("QuotaExceeded")"#
    );
    // Exact: the would-be refusal cost nothing.
    assert_eq!(usage_today(&plans, &plan.id, &key_id).await, [2, 0]);

    // No key: no context to mark, the bare mark instead.
    let missing = call("/pets", None).await.unwrap();
    assert_eq!(missing.status(), 200);
    let body = axum::body::to_bytes(missing.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], br#"context=None mark=Some("MissingKey")"#);

    // An ambiguous path is still refused: that guards the service.
    assert_eq!(call("/pets%3Bx", Some(KEY)).await.unwrap().status(), 400);
    assert_eq!(usage_today(&plans, &plan.id, &key_id).await, [2, 0]);
}
