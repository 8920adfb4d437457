//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceExt};
use tower_usage_plans::{
    ManualClock, NewApiKey, NewUsagePlan, UsagePlan, UsagePlanLayer, UsagePlans,
};

pub mod aws;
pub mod day;
pub mod eventually;
pub mod gateway_config;
pub mod grpc;
pub mod net;
pub mod race;
pub mod redis_server;
pub mod sdk_signing;
pub mod store_suite;
pub mod tls;
pub mod usage;
/// The gRPC test service, shared with `examples/grpc_service.rs`.
#[path = "../../examples/support/usage_grpc.rs"]
pub mod usage_grpc;

pub const KEY: &str = "test-key-0123456789abcdef";

/// A clock at a fixed, known instant (a Saturday).
pub fn clock(at: &str) -> ManualClock {
    ManualClock::new(at.parse().unwrap())
}

pub fn plans_with_clock(clock: &ManualClock) -> UsagePlans {
    UsagePlans::builder().with_clock(clock.clone()).build()
}

/// Creates `plan`, an enabled key with value `value`, and puts it in.
pub fn plan_with_key(plans: &UsagePlans, plan: NewUsagePlan, value: &str) -> (UsagePlan, String) {
    let plan = plans.create_usage_plan(plan).unwrap();
    let key = plans
        .create_api_key(NewApiKey::new("test").with_value(value).with_enabled(true))
        .unwrap();
    plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    (plan, key.id)
}

/// An echo service: 200 with the request path as body.
pub async fn echo(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::from(request.uri().path().to_owned())))
}

/// Sends one request through `layer` around the echo service.
pub async fn send(
    layer: &UsagePlanLayer,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> Response<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    let service = tower::Layer::layer(layer, service_fn(echo));
    service
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

pub async fn get(layer: &UsagePlanLayer, key: &str) -> Response<Body> {
    send(layer, "GET", "/", Some(key)).await
}

pub async fn body_string(response: Response<Body>) -> String {
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
}

pub fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}
