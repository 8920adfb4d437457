#![cfg(feature = "gateway")]
//! The state file refuses values the model cannot produce: a start with
//! such a file fails with an error naming the field, and leaves the file
//! as it was. Each case edits a real state file, written by a gateway that
//! served requests, in one place.

mod support;
use net::{get, TempDir};
use support::gateway_config::{daily_quota, one_key};
use support::net;

use http::StatusCode;
use serde_json::{json, Value};
use tower_usage_plans::gateway::{Gateway, GatewayConfig, GatewayError};
use tower_usage_plans::{ApiStage, Throttle};

const KEY: &str = "state-key-0123456789abcdef";

/// A plan with a quota, a plan throttle (burst 5) and a method throttle on
/// `/foo/GET` (burst 2) for the gateway's stage.
fn config(state: &std::path::Path) -> GatewayConfig {
    let stage = ApiStage::new("gateway", "prod")
        .with_method_throttle("/foo/GET", Throttle::new(1.0, 2).unwrap());
    GatewayConfig {
        state_file: Some(state.to_owned()),
        ..one_key(
            KEY,
            daily_quota(100)
                .with_throttle(Throttle::new(1.0, 5).unwrap())
                .with_api_stage(stage),
        )
    }
}

/// A state file with one counter holding a period, a day, the plan's
/// bucket and the `/foo/GET` bucket.
async fn written_state(dir: &TempDir) -> (GatewayConfig, Value) {
    let path = dir.0.join("state.json");
    let config = config(&path);
    let gateway = Gateway::start(config.clone()).await.unwrap();
    for path in ["/", "/foo"] {
        let (status, _, _) = get(gateway.data_addr(), path, Some(KEY)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    gateway.shutdown().await.unwrap();
    let state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["counters"].as_array().unwrap().len(), 1, "{state}");
    assert_eq!(
        state["counters"][0]["state"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{state}"
    );
    (config, state)
}

/// The `[method, bucket]` pair's bucket: `None` is the plan's.
fn bucket<'a>(state: &'a mut Value, method: Option<&str>) -> &'a mut Value {
    let buckets = state["counters"][0]["state"]["buckets"]
        .as_array_mut()
        .unwrap();
    let at = buckets
        .iter()
        .position(|b| b[0].as_str() == method)
        .unwrap();
    &mut buckets[at][1]
}

fn plan_bucket(state: &mut Value) -> &mut Value {
    bucket(state, None)
}

fn method_bucket(state: &mut Value) -> &mut Value {
    bucket(state, Some("/foo/GET"))
}

#[tokio::test]
async fn values_outside_the_model_refuse_the_start_naming_the_field() {
    let dir = TempDir::new("state-check");
    let (config, state) = written_state(&dir).await;
    let path = config.state_file.clone().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let seventy_three_years = 73 * 365 * 86_400;
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "counters[0].state.allowance 18446744073709551614 leaves",
            Box::new(|s| s["counters"][0]["state"]["allowance"] = json!(u64::MAX - 1)),
        ),
        (
            "counters[0].state.allowance 2147483650 leaves",
            Box::new(|s| s["counters"][0]["state"]["allowance"] = json!(2_147_483_650_u64)),
        ),
        (
            "counters[0].state.used",
            Box::new(|s| s["counters"][0]["state"]["used"] = json!(u64::MAX)),
        ),
        (
            "counters[0].state.buckets[0]: tokens -1e308",
            Box::new(|s| plan_bucket(s)["tokens"] = json!(-1e308)),
        ),
        (
            "counters[0].state.buckets[0]: tokens 6 is above the throttle's burstLimit 5",
            Box::new(|s| plan_bucket(s)["tokens"] = json!(6.0)),
        ),
        (
            "counters[0].state.buckets[1]: tokens 2.5 is above the throttle's burstLimit 2",
            Box::new(|s| method_bucket(s)["tokens"] = json!(2.5)),
        ),
        (
            "counters[0].state.buckets[0]: updated",
            Box::new(move |s| {
                plan_bucket(s)["updated"] = json!((now + seventy_three_years) * 1_000_000_000)
            }),
        ),
        (
            "counters[0].state.period.start",
            Box::new(move |s| {
                let period = &mut s["counters"][0]["state"]["period"];
                period["start"] = json!(now + seventy_three_years);
                period["end"] = json!(now + seventy_three_years + 86_400);
            }),
        ),
        (
            "counters[0].state.period {start",
            Box::new(|s| {
                let period = &mut s["counters"][0]["state"]["period"];
                period["start"] = json!(period["start"].as_i64().unwrap() - 3600);
            }),
        ),
        (
            "counters[0].state.days[0].day",
            Box::new(move |s| {
                s["counters"][0]["state"]["days"][0]["day"] = json!(now / 86_400 + 365 * 73)
            }),
        ),
        (
            "counters[0].state.days: day",
            Box::new(|s| {
                let days = s["counters"][0]["state"]["days"].as_array_mut().unwrap();
                let copy = days[0].clone();
                days.push(copy);
            }),
        ),
        (
            "counters[0].state.days[0].remaining",
            Box::new(|s| s["counters"][0]["state"]["days"][0]["remaining"] = json!(u64::MAX)),
        ),
        (
            "counters[0].plan_id 'nope' names no plan",
            Box::new(|s| s["counters"][0]["plan_id"] = json!("nope")),
        ),
        (
            "counters[0].key_id 'nope' names no key",
            Box::new(|s| s["counters"][0]["key_id"] = json!("nope")),
        ),
        (
            "counters[0]: key",
            Box::new(|s| {
                s["registry"]["plans"][0]["keys"] = json!([]);
            }),
        ),
        (
            "counters[1]: a second counter",
            Box::new(|s| {
                let copy = s["counters"][0].clone();
                s["counters"].as_array_mut().unwrap().push(copy);
            }),
        ),
        (
            "registry.plans[0].created",
            Box::new(move |s| {
                s["registry"]["plans"][0]["created"] = json!(now + seventy_three_years)
            }),
        ),
    ];
    for (field, edit) in cases {
        let mut edited = state.clone();
        edit(&mut edited);
        let bytes = serde_json::to_vec(&edited).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let error = Gateway::start(config.clone()).await.unwrap_err();
        assert!(matches!(error, GatewayError::StateFile(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(field), "{field}: {message}");
        assert!(message.contains("state.json"), "{message}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{field}: file unchanged"
        );
    }

    // The file as written starts, and so does one a little ahead of the
    // clock (a clock stepped back by less than the tolerance).
    let mut ahead = state.clone();
    plan_bucket(&mut ahead)["updated"] = json!((now + 60) * 1_000_000_000);
    for good in [state, ahead] {
        std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
        Gateway::start(config.clone())
            .await
            .unwrap()
            .shutdown()
            .await
            .unwrap();
    }
}

/// A burst lowered after the bucket was last used leaves more tokens than
/// the new burst in memory; the file written then still starts.
#[tokio::test]
async fn a_lowered_burst_is_saved_capped() {
    let dir = TempDir::new("state-lowered");
    let path = dir.0.join("state.json");
    let config = config(&path);
    let gateway = Gateway::start(config.clone()).await.unwrap();
    let (status, _, _) = get(gateway.data_addr(), "/", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let plan = gateway.plans().usage_plans()[0].id.clone();
    gateway
        .plans()
        .update_usage_plan(&plan, |p| {
            p.throttle = Some(Throttle::new(1.0, 1).unwrap());
            Ok(())
        })
        .unwrap();
    gateway.shutdown().await.unwrap();
    let restarted = Gateway::start(config).await.unwrap();
    restarted.shutdown().await.unwrap();
}
