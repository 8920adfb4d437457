//! `UsageContext` as a handler argument (the `axum` feature), and
//! `route_layer` metering some routes of a router and not others
//! (`examples/axum_routes.rs`).

#[path = "../examples/axum_routes.rs"]
mod axum_routes;
mod support;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use support::usage::usage_today;
use support::*;
use tower::ServiceExt;
use tower_usage_plans::{NewUsagePlan, Quota, QuotaPeriod, UsageContext, UsagePlans};

fn get_request(path: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.body(Body::empty()).unwrap()
}

async fn text(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn route_layer_meters_its_routes_only_and_handlers_read_the_context() {
    let plans = UsagePlans::new();
    let (plan, key_id) = plan_with_key(
        &plans,
        NewUsagePlan::new("p").with_quota(Quota::new(5, QuotaPeriod::Day)),
        KEY,
    );
    let app = axum_routes::app(plans.clone());

    let (status, body) = text(&app, get_request("/pets", Some(KEY))).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("[\"rex\",\"tom\"] for key {key_id} (4 left today)\n")
    );
    let (status, body) = text(&app, get_request("/pets/1", Some(KEY))).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("rex, on plan {}\n", plan.id));
    assert_eq!(text(&app, get_request("/pets", None)).await.0, 403);

    // Outside the route layer: no key needed, nothing counted; an unknown
    // path is axum's 404, not a refusal.
    assert_eq!(text(&app, get_request("/health", None)).await.0, 200);
    assert_eq!(text(&app, get_request("/health", Some(KEY))).await.0, 200);
    assert_eq!(text(&app, get_request("/nowhere", None)).await.0, 404);
    assert_eq!(usage_today(&plans, &plan.id, &key_id).await, [2, 3]);
}

#[tokio::test]
async fn a_handler_outside_the_layer_gets_a_500_naming_the_layer() {
    let app: Router = Router::new().route(
        "/pets",
        get(|usage: UsageContext| async move { usage.key_id().to_owned() }),
    );
    let (status, body) = text(&app, get_request("/pets", Some(KEY))).await;
    assert_eq!(status, 500);
    assert!(body.contains("UsagePlanLayer"), "{body}");
}
