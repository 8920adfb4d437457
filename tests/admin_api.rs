#![cfg(feature = "admin")]
//! The admin API over real sockets: SigV4-signed requests (as boto3 signs
//! them) to `AdminService` served by hyper, and a data plane wearing
//! `UsagePlanLayer` on the same `UsagePlans`, on another socket.

mod support;
use support::aws;

use std::time::{Duration, SystemTime};

use aws::*;
use http::StatusCode;
use serde_json::{json, Value};
use tower_usage_plans::{ManualClock, UsagePlans};

const V1: &str = "value-one-0123456789abcdef";
const V2: &str = "value-two-0123456789abcdef";

/// The body of a plan named "p" with a daily quota of `limit`.
fn daily_quota(limit: u64) -> Value {
    json!({"name": "p", "quota": {"limit": limit, "period": "DAY"}})
}

/// The body of a plan named "p" throttled at `rate` requests/s, `burst` at once.
fn throttled(rate: f64, burst: u64) -> Value {
    json!({"name": "p", "throttle": {"rateLimit": rate, "burstLimit": burst}})
}

/// Creates the plan `plan` and an enabled key with `value`, and puts the key in it.
async fn metered(env: &Env, plan: Value, value: &str) -> (Value, Value) {
    let plan = env.admin.create_plan(plan).await;
    let key = env.admin.create_key("k", value).await;
    env.admin.add_key(&plan, &key).await;
    (plan, key)
}

fn id(v: &Value) -> &str {
    str_of(v, "id")
}

// ---- API keys ---------------------------------------------------------------

#[tokio::test]
async fn api_key_create_get_update_delete() {
    let env = env().await;
    let a = &env.admin;
    let before = now_secs();
    let (status, _, key) = a
        .post(
            "/apikeys",
            json!({"name": "n", "description": "d", "enabled": true, "generateDistinctId": true,
                   "value": "vvvvvvvvvvvvvvvvvvvv", "stageKeys": [{"restApiId": "r", "stageName": "s"}],
                   "customerId": "c", "tags": {"a": "b"}}),
        )
        .await;
    let after = now_secs();
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let created = int(&key["createdDate"]);
    assert!((before..=after).contains(&created), "{key}");
    assert_eq!(int(&key["lastUpdatedDate"]), created);
    let kid = id(&key).to_owned();
    assert_eq!(kid.len(), 10);
    assert_eq!(
        key,
        json!({"id": kid, "value": "vvvvvvvvvvvvvvvvvvvv", "name": "n", "customerId": "c",
               "description": "d", "enabled": true, "createdDate": created,
               "lastUpdatedDate": created, "stageKeys": ["r/s"], "tags": {"a": "b"}})
    );

    // Without `enabled` a key is created disabled, with a generated value.
    let (status, _, generated) = a.post("/apikeys", json!({"name": "g"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(generated["enabled"], json!(false));
    assert!(str_of(&generated, "value").len() >= 20, "{generated}");

    // GetApiKey hides the value unless includeValue=true.
    let (status, _, shown) = a.get(&format!("/apikeys/{kid}")).await;
    assert_eq!(status, StatusCode::OK);
    let mut without = key.clone();
    without.as_object_mut().unwrap().remove("value");
    assert_eq!(shown, without);
    let (_, headers, shown) = a.get(&format!("/apikeys/{kid}?includeValue=true")).await;
    assert_eq!(shown, key);
    assert_eq!(
        headers["cache-control"], "no-store",
        "a key's value is kept by no cache"
    );
    let (_, _, shown) = a.get(&format!("/apikeys/{kid}?includeValue=false")).await;
    assert_eq!(shown, without);

    // UpdateApiKey: several replaces in one call; returns the key with its value.
    let (status, _, updated) = a
        .patch_ops(
            &format!("/apikeys/{kid}"),
            &[
                ("replace", "/name", "n2"),
                ("replace", "/description", "d2"),
                ("replace", "/enabled", "false"),
                ("replace", "/customerId", "c2"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert!(int(&updated["lastUpdatedDate"]) >= created);
    let mut expected = key.clone();
    for (field, value) in [
        ("name", json!("n2")),
        ("description", json!("d2")),
        ("enabled", json!(false)),
        ("customerId", json!("c2")),
        ("lastUpdatedDate", updated["lastUpdatedDate"].clone()),
    ] {
        expected[field] = value;
    }
    assert_eq!(updated, expected);
    let (_, _, shown) = a.get(&format!("/apikeys/{kid}?includeValue=true")).await;
    assert_eq!(shown, expected);
    assert!(!env.plans.api_key(&kid).unwrap().enabled);

    // DeleteApiKey: 202 and an empty body, then it is gone.
    assert_eq!(
        a.delete_then_gone(&format!("/apikeys/{kid}")).await,
        "Invalid API Key identifier specified"
    );
    assert!(env.plans.api_key(&kid).is_err());
    assert_eq!(env.plans.key_count(), 1);
}

#[tokio::test]
async fn get_api_keys_pages_and_filters() {
    let env = env().await;
    let a = &env.admin;
    let mut ids = Vec::new();
    for (name, customer) in [
        ("alpha-1", "c1"),
        ("alpha-2", "c2"),
        ("alpha-3", "c1"),
        ("beta-1", "c1"),
        ("beta-2", "c2"),
    ] {
        let value = format!("{name}-value-0123456789abcdef");
        let (status, _, key) = a
            .post(
                "/apikeys",
                json!({"name": name, "value": value, "customerId": customer, "enabled": true}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push((id(&key).to_owned(), name, customer, value));
    }
    ids.sort();

    // limit=2 pages: 2 + 2 + 1, ordered by id, no value unless asked for.
    let pages = a.pages("/apikeys", "item").await;
    assert_eq!(
        pages
            .iter()
            .map(|p| p["item"].as_array().unwrap().len())
            .collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let listed: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["item"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        listed.iter().map(|k| id(k).to_owned()).collect::<Vec<_>>(),
        ids.iter().map(|k| k.0.clone()).collect::<Vec<_>>()
    );
    assert!(
        listed.iter().all(|k| k.get("value").is_none()),
        "{listed:?}"
    );
    for key in &listed {
        int(&key["createdDate"]);
    }

    let (_, _, all) = a.get("/apikeys?includeValues=true").await;
    let values: Vec<&str> = all["item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| str_of(k, "value"))
        .collect();
    assert_eq!(values, ids.iter().map(|k| k.3.as_str()).collect::<Vec<_>>());
    assert!(all.get("position").is_none(), "{all}");

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["item"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| str_of(k, "name").to_owned())
            .collect();
        n.sort();
        n
    };
    let (_, _, alpha) = a.get("/apikeys?name=alpha").await;
    assert_eq!(names(&alpha), ["alpha-1", "alpha-2", "alpha-3"]);
    let (_, _, none) = a.get("/apikeys?name=lpha").await;
    assert_eq!(none, json!({"item": []}), "name matches by prefix");
    let (_, _, c1) = a.get("/apikeys?customerId=c1").await;
    assert_eq!(names(&c1), ["alpha-1", "alpha-3", "beta-1"]);
    let (_, _, both) = a.get("/apikeys?name=beta&customerId=c2").await;
    assert_eq!(names(&both), ["beta-2"]);
    let pages = a.pages("/apikeys?name=alpha", "item").await;
    assert_eq!(pages.len(), 2);

    // Query values arrive RFC 3986-encoded (and are signed that way).
    let (status, _, spaced) = a
        .post(
            "/apikeys",
            json!({"name": "a b/c", "customerId": "x+y", "enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, found) = a.get("/apikeys?name=a%20b%2F&customerId=x%2By").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["item"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(id(&found["item"][0]), id(&spaced));
}

#[tokio::test]
async fn import_api_keys_from_csv() {
    let env = env().await;
    let a = &env.admin;
    let plan = a.create_plan(json!({"name": "p"})).await;
    let pid = id(&plan);
    let csv = format!(
        "Name,key,description,Enabled,usageplanIds,extra\n\
         imp-a,imported-key-aaaaaaaaaaaaaaaaaaaaaa,first,TRUE,{pid},x\n\
         imp-b,imported-key-bbbbbbbbbbbbbbbbbbbbbb,,false,,\n\
         imp-c,short-key-0123456789abcd,,TRUE,,\n"
    );
    // botocore sends the CSV raw, without Content-Type.
    let (status, _, out) = a
        .raw(
            "POST",
            "/apikeys?mode=import&format=csv",
            None,
            csv.as_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    let ids: Vec<String> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    let warnings = out["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].as_str().unwrap().starts_with("line 4"), "{out}");

    let (_, _, ka) = a
        .get(&format!("/apikeys/{}?includeValue=true", ids[0]))
        .await;
    assert_eq!(
        (
            &ka["name"],
            &ka["value"],
            &ka["description"],
            &ka["enabled"]
        ),
        (
            &json!("imp-a"),
            &json!("imported-key-aaaaaaaaaaaaaaaaaaaaaa"),
            &json!("first"),
            &json!(true)
        )
    );
    let (_, _, kb) = a.get(&format!("/apikeys/{}", ids[1])).await;
    assert_eq!(
        (&kb["name"], &kb["enabled"]),
        (&json!("imp-b"), &json!(false))
    );
    let (status, _, member) = a.get(&format!("/usageplans/{pid}/keys/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member["name"], "imp-a");
    assert_eq!(env.plans.key_count(), 2);

    // failonwarnings=true: one bad row refuses the whole file.
    let bad = "name,key\nimp-d,imported-key-dddddddddddddddddddddd\nimp-e,short\n";
    let resp = a
        .raw(
            "POST",
            "/apikeys?mode=import&format=csv&failonwarnings=true",
            None,
            bad.as_bytes(),
        )
        .await;
    assert_bad_request(&resp);
    assert_eq!(env.plans.key_count(), 2);
    assert!(env
        .plans
        .api_key_by_value("imported-key-dddddddddddddddddddddd")
        .is_none());

    // Re-importing a value updates that key instead of duplicating it.
    let again = "name,key,enabled\nimp-a2,imported-key-aaaaaaaaaaaaaaaaaaaaaa,false\n";
    let (status, _, out) = a
        .raw(
            "POST",
            "/apikeys?mode=import&format=csv",
            None,
            again.as_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(out, json!({"ids": [ids[0]], "warnings": []}));
    let key = env.plans.api_key(&ids[0]).unwrap();
    assert_eq!((key.name.as_deref(), key.enabled), (Some("imp-a2"), false));
    assert_eq!(env.plans.key_count(), 2);

    // Unsupported format, missing Key column.
    let resp = a
        .raw(
            "POST",
            "/apikeys?mode=import&format=json",
            None,
            again.as_bytes(),
        )
        .await;
    assert_bad_request(&resp);
    let resp = a
        .raw(
            "POST",
            "/apikeys?mode=import&format=csv",
            None,
            b"name,value\nx,y\n",
        )
        .await;
    assert_bad_request(&resp);
    assert_eq!(env.plans.key_count(), 2);
}

// ---- usage plans --------------------------------------------------------------

#[tokio::test]
async fn usage_plan_create_get_update_delete() {
    let env = env().await;
    let a = &env.admin;
    // The exact body boto3 sends for create_usage_plan (captured from a real call).
    let plan = a
        .create_plan(json!({"name": "p", "description": "d", "throttle": {"rateLimit": 10.5, "burstLimit": 20},
                            "quota": {"limit": 1000, "period": "DAY", "offset": 0},
                            "apiStages": [{"apiId": "abc", "stage": "prod", "throttle": {"/pets/GET": {"rateLimit": 1.0, "burstLimit": 2}}}],
                            "tags": {"k": "v"}}))
        .await;
    let pid = id(&plan).to_owned();
    assert_eq!(pid.len(), 10);
    assert_eq!(
        plan,
        json!({"id": pid, "name": "p", "description": "d",
               "apiStages": [{"apiId": "abc", "stage": "prod", "throttle": {"/pets/GET": {"burstLimit": 2, "rateLimit": 1.0}}}],
               "throttle": {"burstLimit": 20, "rateLimit": 10.5},
               "quota": {"limit": 1000, "offset": 0, "period": "DAY"}, "tags": {"k": "v"}})
    );
    int(&plan["throttle"]["burstLimit"]);
    int(&plan["quota"]["limit"]);
    int(&plan["quota"]["offset"]);
    let (status, _, got) = a.get(&format!("/usageplans/{pid}")).await;
    assert_eq!((status, &got), (StatusCode::OK, &plan));

    // A plan without throttle and quota omits them.
    let bare = a.create_plan(json!({"name": "bare"})).await;
    assert_eq!(
        bare,
        json!({"id": bare["id"], "name": "bare", "apiStages": []})
    );

    let (status, _, updated) = a
        .patch_ops(
            &format!("/usageplans/{pid}"),
            &[
                ("replace", "/name", "p2"),
                ("replace", "/description", "d2"),
                ("add", "/productCode", "pc"),
                ("replace", "/throttle/rateLimit", "5"),
                ("replace", "/throttle/burstLimit", "7"),
                ("replace", "/quota/limit", "500"),
                ("replace", "/quota/period", "WEEK"),
                ("replace", "/quota/offset", "3"),
                ("add", "/apiStages", "api:beta"),
                (
                    "replace",
                    "/apiStages/abc:prod/throttle//pets/GET/rateLimit",
                    "0.5",
                ),
                (
                    "replace",
                    "/apiStages/abc:prod/throttle///GET/burstLimit",
                    "4",
                ),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        updated,
        json!({"id": pid, "name": "p2", "description": "d2", "productCode": "pc",
               "apiStages": [{"apiId": "abc", "stage": "prod", "throttle": {
                                  "//GET": {"burstLimit": 4, "rateLimit": 4.0},  // burst alone sets up a throttle: rate = burst
                                  "/pets/GET": {"burstLimit": 2, "rateLimit": 0.5}}},
                             {"apiId": "api", "stage": "beta"}],
               "throttle": {"burstLimit": 7, "rateLimit": 5.0},
               "quota": {"limit": 500, "offset": 3, "period": "WEEK"}, "tags": {"k": "v"}})
    );
    assert_eq!(
        int(&updated["throttle"]["burstLimit"]),
        7,
        "integers stay JSON integers"
    );
    assert_eq!(int(&updated["quota"]["limit"]), 500);
    let (_, _, got) = a.get(&format!("/usageplans/{pid}")).await;
    assert_eq!(got, updated);

    let (status, _, removed) = a
        .patch_ops(
            &format!("/usageplans/{pid}"),
            &[
                ("remove", "/throttle", ""),
                ("remove", "/quota", ""),
                ("remove", "/apiStages", "api:beta"),
                ("remove", "/productCode", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    for gone in ["throttle", "quota", "productCode"] {
        assert!(removed.get(gone).is_none(), "{removed}");
    }
    assert_eq!(removed["apiStages"].as_array().unwrap().len(), 1);

    assert_eq!(
        a.delete_then_gone(&format!("/usageplans/{pid}")).await,
        "Invalid Usage Plan ID specified"
    );
    assert_eq!(env.plans.plan_count(), 1);
}

#[tokio::test]
async fn get_usage_plans_pages_and_key_filter() {
    let env = env().await;
    let a = &env.admin;
    let mut ids = Vec::new();
    for i in 0..5 {
        let plan = a.create_plan(json!({"name": format!("p{i}"), "apiStages": [{"apiId": "api", "stage": format!("s{i}")}]})).await;
        ids.push(id(&plan).to_owned());
    }
    let pages = a.pages("/usageplans", "item").await;
    assert_eq!(pages.len(), 3);
    let mut listed: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            p["item"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| id(p).to_owned())
        })
        .collect();
    let in_order = listed.clone();
    listed.sort();
    assert_eq!(in_order, listed, "ordered by id");
    ids.sort();
    assert_eq!(listed, ids);

    // keyId: the plans the key is in.
    let key = a.create_key("k", V1).await;
    for pid in [&ids[1], &ids[3]] {
        a.add_key(&json!({"id": pid}), &key).await;
    }
    let (status, _, of_key) = a.get(&format!("/usageplans?keyId={}", id(&key))).await;
    assert_eq!(status, StatusCode::OK);
    let of_key: Vec<&str> = of_key["item"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(of_key, [ids[1].as_str(), ids[3].as_str()]);
    let pages = a
        .pages(&format!("/usageplans?keyId={}", id(&key)), "item")
        .await;
    assert_eq!(pages.len(), 1);
}

// ---- usage plan keys ------------------------------------------------------------

#[tokio::test]
async fn usage_plan_keys_create_get_list_delete() {
    let env = env().await;
    let a = &env.admin;
    let plan = a.create_plan(json!({"name": "p"})).await;
    let pid = id(&plan);
    let mut keys = Vec::new();
    for (i, name) in ["alpha-1", "alpha-2", "beta-1"].into_iter().enumerate() {
        let key = a
            .create_key(name, &format!("plan-key-value-{i}-0123456789"))
            .await;
        let member = a.add_key(&plan, &key).await;
        assert_eq!(
            member,
            json!({"id": key["id"], "type": "API_KEY", "name": name, "value": key["value"]})
        );
        keys.push((key, member));
    }
    let (key, member) = &keys[0];
    let kid = id(key);
    let (status, _, got) = a.get(&format!("/usageplans/{pid}/keys/{kid}")).await;
    assert_eq!((status, &got), (StatusCode::OK, member));

    let pages = a.pages(&format!("/usageplans/{pid}/keys"), "item").await;
    assert_eq!(pages.len(), 2);
    let mut listed: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["item"].as_array().unwrap().clone())
        .collect();
    let mut expected: Vec<Value> = keys.iter().map(|(_, m)| m.clone()).collect();
    expected.sort_by(|x, y| id(x).cmp(id(y)));
    assert_eq!(listed, expected);
    let (_, _, alpha) = a.get(&format!("/usageplans/{pid}/keys?name=alpha")).await;
    listed = alpha["item"].as_array().unwrap().clone();
    let mut names: Vec<&str> = listed.iter().map(|m| str_of(m, "name")).collect();
    names.sort();
    assert_eq!(names, ["alpha-1", "alpha-2"]);

    a.delete_then_gone(&format!("/usageplans/{pid}/keys/{kid}"))
        .await;
    assert_eq!(env.plans.usage_plan_keys(pid).unwrap().len(), 2);
    // The key itself still exists.
    assert_eq!(a.get(&format!("/apikeys/{kid}")).await.0, StatusCode::OK);
}

// ---- usage ----------------------------------------------------------------------

/// As AWS, UpdateUsage takes `replace /remaining` only: `add` is 400
/// `BadRequestException`, the remaining quota unchanged, unless the
/// service takes top-ups (`with_top_ups`, below).
#[tokio::test]
async fn update_usage_refuses_add_without_top_ups() {
    let env = env().await;
    let a = &env.admin;
    let (plan, key) = metered(&env, daily_quota(1000), V1).await;
    let (pid, kid) = (id(&plan), id(&key));
    let path = format!("/usageplans/{pid}/keys/{kid}/usage");
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    let message = assert_bad_request(&a.patch_ops(&path, &[("add", "/remaining", "500")]).await);
    assert!(message.contains("op 'add' is not supported"), "{message}");
    let (status, _, usage) = a.patch_ops(&path, &[]).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["values"], json!({kid: [[1, 999]]}));
}

#[tokio::test]
async fn update_usage_seed_exchange() {
    let env = env_with_top_ups().await;
    let a = &env.admin;
    let (plan, key) = metered(&env, daily_quota(1000), V1).await;
    let (pid, kid) = (id(&plan), id(&key));
    let path = format!("/usageplans/{pid}/keys/{kid}/usage");
    let body = br#"{"patchOperations":[{"op":"replace","path":"/remaining","value":"10"}]}"#;
    let day_before = today();
    let (status, _, usage) = a.raw("PATCH", &path, Some("application/json"), body).await;
    let day_after = today();
    assert_eq!(status, StatusCode::OK, "{usage}");
    let date = str_of(&usage, "startDate").to_owned();
    assert!(day_before <= date && date <= day_after, "{usage}");
    assert_eq!(
        usage,
        json!({"usagePlanId": pid, "startDate": date, "endDate": date, "values": {kid: [[0, 10]]}})
    );
    int(&usage["values"][kid][0][1]);

    // Spend 3 on the data plane: the next UpdateUsage reports them as used.
    for _ in 0..3 {
        assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    }
    // One operation on /remaining: 200, and the values it answers with.
    let values_after = |op: &'static str, value: &'static str| {
        let path = &path;
        async move {
            let (status, _, usage) = a.patch_ops(path, &[(op, "/remaining", value)]).await;
            assert_eq!(status, StatusCode::OK, "{usage}");
            usage["values"].clone()
        }
    };
    assert_eq!(values_after("replace", "10").await, json!({kid: [[3, 10]]}));
    let remaining = || async {
        let u = env
            .plans
            .usage(pid, Some(kid), date.parse().unwrap(), date.parse().unwrap())
            .await
            .unwrap();
        u.values[kid].clone()
    };
    assert_eq!(remaining().await, [[3, 10]]);

    // Refusals, none of which changes the remaining quota.
    for value in ["-1", "1.5", "ten", ""] {
        assert_bad_request(
            &a.patch_ops(&path, &[("replace", "/remaining", value)])
                .await,
        );
    }
    for op in ["remove", "copy", "move", "test"] {
        assert_bad_request(&a.patch_ops(&path, &[(op, "/remaining", "5")]).await);
    }
    assert_bad_request(&a.patch_ops(&path, &[("replace", "/used", "5")]).await);
    // An empty patch changes nothing, as for a plan or a key: 200 and the
    // usage as it stands.
    let (status, _, unchanged) = a.patch(&path, json!({"patchOperations": []})).await;
    assert_eq!(
        (status, &unchanged["values"]),
        (StatusCode::OK, &json!({kid: [[3, 10]]}))
    );
    assert_bad_request(
        &a.patch(
            &path,
            json!({"patchOperations": [{"op": "replace", "path": "/remaining", "value": 5}]}),
        )
        .await,
    );
    // An operation as an array, read in order, had set the remaining.
    assert_bad_request(
        &a.patch(
            &path,
            json!({"patchOperations": [["replace", "/remaining", "7"]]}),
        )
        .await,
    );
    assert_bad_request(
        &a.patch_ops(
            &path,
            &[("replace", "/remaining", "5"), ("add", "/remaining", "6")],
        )
        .await,
    );
    assert_eq!(remaining().await, [[3, 10]]);

    let other_key = a.create_key("outsider", V2).await;
    for bad in [
        format!("/usageplans/nosuchplan/keys/{kid}/usage"),
        format!("/usageplans/{pid}/keys/nosuchkey/usage"),
        format!("/usageplans/{pid}/keys/{}/usage", id(&other_key)),
    ] {
        assert_not_found(&a.patch_ops(&bad, &[("replace", "/remaining", "5")]).await);
    }
    assert_eq!(remaining().await, [[3, 10]]);

    // The "add" extension: atomic, signed, floored at 0; bad values are
    // refused with nothing changed.
    for value in [
        "1.5",
        "+1",
        "ten",
        "",
        "-",
        "2147483648",
        "-2147483648",
        "99999999999999999999",
    ] {
        assert_bad_request(&a.patch_ops(&path, &[("add", "/remaining", value)]).await);
    }
    assert_eq!(remaining().await, [[3, 10]]);
    assert_eq!(values_after("add", "500").await, json!({kid: [[3, 510]]}));
    assert_eq!(values_after("add", "-10").await, json!({kid: [[3, 500]]}));
    assert_eq!(values_after("add", "-100000").await, json!({kid: [[3, 0]]}));
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(values_after("add", "1").await, json!({kid: [[3, 1]]}));
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    assert_eq!(remaining().await, [[4, 0]]);
    values_after("replace", "10").await;

    // Above the plan's limit is allowed ("usage extension").
    assert_eq!(
        values_after("replace", "5000").await,
        json!({kid: [[4, 5000]]})
    );
}

#[tokio::test]
async fn get_usage_per_day_and_paged_by_key() {
    // A controlled clock for the plans (SigV4 still checks the real time).
    let clock = ManualClock::new("2026-11-26T12:00:00Z".parse().unwrap());
    let env = env_with(UsagePlans::builder().with_clock(clock.clone()).build()).await;
    let a = &env.admin;
    let (plan, k1) = metered(&env, daily_quota(100), V1).await;
    let pid = id(&plan);
    let k2 = a.create_key("k2", V2).await;
    a.add_key(&plan, &k2).await;
    let k3 = a.create_key("k3", "value-three-0123456789abc").await;
    a.add_key(&plan, &k3).await;
    for _ in 0..3 {
        assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(24 * 3600));
    for value in [V1, V1, V2] {
        assert_eq!(env.data(Some(value)).await.0, StatusCode::OK);
    }

    let range = "startDate=2026-11-25&endDate=2026-11-27";
    let (status, _, usage) = a.get(&format!("/usageplans/{pid}/usage?{range}")).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let expected = json!({
        id(&k1): [[0, 100], [3, 97], [2, 98]],
        id(&k2): [[0, 100], [0, 100], [1, 99]],
        id(&k3): [[0, 100], [0, 100], [0, 100]],
    });
    assert_eq!(
        usage,
        json!({"usagePlanId": pid, "startDate": "2026-11-25", "endDate": "2026-11-27", "values": expected})
    );
    let (_, _, one) = a
        .get(&format!(
            "/usageplans/{pid}/usage?keyId={}&{range}",
            id(&k2)
        ))
        .await;
    assert_eq!(
        one["values"],
        json!({id(&k2): [[0, 100], [0, 100], [1, 99]]})
    );

    // Paged by key: 2 + 1, each page a full Usage document.
    let pages = a
        .pages(&format!("/usageplans/{pid}/usage?{range}"), "values")
        .await;
    assert_eq!(pages.len(), 2);
    let mut merged = serde_json::Map::new();
    for page in &pages {
        assert_eq!(
            (&page["usagePlanId"], &page["startDate"], &page["endDate"]),
            (&json!(pid), &json!("2026-11-25"), &json!("2026-11-27"))
        );
        merged.extend(page["values"].as_object().unwrap().clone());
    }
    assert_eq!(Value::Object(merged), expected);

    for bad in [
        "startDate=2026-11-27&endDate=2026-11-25".to_owned(),
        "startDate=not-a-date&endDate=2026-11-25".to_owned(),
        "startDate=2026-11-25&endDate=2026-13-45".to_owned(),
        "startDate=20261125&endDate=2026-11-27".to_owned(),
        "startDate=2026-11-25".to_owned(),
        format!("{range}&limit=0"),
        format!("{range}&limit=501"),
        format!("{range}&position=zz"),
    ] {
        assert_bad_request(&a.get(&format!("/usageplans/{pid}/usage?{bad}")).await);
    }
    assert_not_found(
        &a.get(&format!("/usageplans/nosuchplan/usage?{range}"))
            .await,
    );
    assert_not_found(
        &a.get(&format!("/usageplans/{pid}/usage?keyId=nosuchkey&{range}"))
            .await,
    );
}

// ---- errors -----------------------------------------------------------------------

#[tokio::test]
async fn bad_requests_change_nothing() {
    let env = env().await;
    let a = &env.admin;
    let (plan, key) = metered(&env, throttled(10.0, 20), V1).await;
    let (pid, kid) = (id(&plan).to_owned(), id(&key).to_owned());
    let plan_path = format!("/usageplans/{pid}");
    let key_path = format!("/apikeys/{kid}");
    let (_, _, plan_before) = a.get(&plan_path).await;
    let (_, _, key_before) = a.get(&format!("{key_path}?includeValue=true")).await;

    // Malformed JSON, and JSON of the wrong shape.
    let plan_keys = format!("{plan_path}/keys");
    let usage = format!("{plan_path}/keys/{kid}/usage");
    for (method, path) in [
        ("POST", "/apikeys"),
        ("POST", "/usageplans"),
        ("PATCH", &plan_path),
        ("PATCH", &key_path),
        ("POST", &plan_keys),
        ("PATCH", &usage),
    ] {
        let resp = a
            .raw(method, path, Some("application/json"), b"{\"name\": ")
            .await;
        assert_bad_request(&resp);
    }
    for (path, body) in [
        ("/usageplans", json!({"description": "no name"})),
        (
            "/usageplans",
            json!({"name": "q", "quota": {"limit": "250", "period": "DAY"}}),
        ),
        (
            "/usageplans",
            json!({"name": "q", "throttle": {"rateLimit": -1.0, "burstLimit": 1}}),
        ),
        (
            "/usageplans",
            json!({"name": "q", "quota": {"limit": 10, "period": "YEAR"}}),
        ),
        ("/apikeys", json!({"name": "short", "value": "too-short"})),
        ("/apikeys", json!({"name": "typed", "enabled": "yes"})),
        // An array is not an object (read in order, it made a plan).
        ("/usageplans", json!(["arrayplan"])),
        ("/apikeys", json!(["arraykey"])),
        // Nor inside (it made a throttle of burst 5, rate 10).
        ("/usageplans", json!({"name": "q", "throttle": [5, 10]})),
        // A stage no patch path could name (`a:b:c` read as `a` and
        // `b:c`: the stage could not be removed), nor a stage key.
        (
            "/usageplans",
            json!({"name": "q", "apiStages": [{"apiId": "a:b", "stage": "c"}]}),
        ),
        (
            "/usageplans",
            json!({"name": "q", "apiStages": [{"apiId": "a/b", "stage": "c"}]}),
        ),
        (
            "/usageplans",
            json!({"name": "q", "apiStages": [{"apiId": "a b", "stage": "c"}]}),
        ),
        (
            "/usageplans",
            json!({"name": "q", "apiStages": [{"apiId": "a", "stage": "c\u{0}"}]}),
        ),
        // AWS's tag limits, and a plan name as long as a key's may be.
        ("/usageplans", json!({"name": "q", "tags": {"": "v"}})),
        (
            "/apikeys",
            json!({"name": "t", "tags": {"aws:owner": "me"}}),
        ),
        ("/usageplans", json!({"name": "n".repeat(1025)})),
    ] {
        assert_bad_request(&a.post(path, body).await);
    }
    assert_bad_request(
        &a.post(
            &format!("{plan_path}/keys"),
            json!({"keyId": kid, "keyType": "OTHER"}),
        )
        .await,
    );
    assert_bad_request(
        &a.post(&format!("{plan_path}/keys"), json!({"keyType": "API_KEY"}))
            .await,
    );

    // Unknown op or path, wrong value type; a valid op first is not applied either.
    for ops in [
        vec![("move", "/name", "x")],
        vec![("replace", "/nope", "x")],
        vec![("replace", "/throttle/burstLimit", "many")],
        vec![("replace", "/throttle/burstLimit", "-1")],
        vec![("replace", "/throttle/rateLimit", "fast")],
        vec![("replace", "/quota/period", "YEAR")],
        vec![
            ("replace", "/name", "renamed"),
            ("replace", "/throttle/burstLimit", "1.5"),
        ],
    ] {
        assert_bad_request(&a.patch_ops(&plan_path, &ops).await);
    }
    for ops in [
        vec![("replace", "/enabled", "maybe")],
        vec![("replace", "/value", "another-value-0123456789")],
        vec![("copy", "/name", "x")],
        vec![("replace", "/name", "renamed"), ("replace", "/nope", "x")],
    ] {
        assert_bad_request(&a.patch_ops(&key_path, &ops).await);
    }
    let non_string =
        json!({"patchOperations": [{"op": "replace", "path": "/throttle/burstLimit", "value": 5}]});
    assert_bad_request(&a.patch(&plan_path, non_string).await);

    // limit=0 (and other bad paging) on every list operation.
    for path in ["/apikeys", "/usageplans", &format!("{plan_path}/keys")] {
        for q in ["limit=0", "limit=-1", "limit=x", "position=zz"] {
            assert_bad_request(&a.get(&format!("{path}?{q}")).await);
        }
    }
    assert_bad_request(&a.get(&format!("{key_path}?includeValue=maybe")).await);

    let (_, _, plan_after) = a.get(&plan_path).await;
    let (_, _, key_after) = a.get(&format!("{key_path}?includeValue=true")).await;
    assert_eq!(plan_after, plan_before);
    assert_eq!(key_after, key_before);
    assert_eq!((env.plans.plan_count(), env.plans.key_count()), (1, 1));
}

#[tokio::test]
async fn not_found_errors() {
    let env = env().await;
    let a = &env.admin;
    let plan = a.create_plan(json!({"name": "p"})).await;
    let key = a.create_key("k", V1).await;
    let (pid, kid) = (id(&plan), id(&key));
    let plan_msg = "Invalid Usage Plan ID specified";
    let key_msg = "Invalid API Key identifier specified";
    for (resp, message) in [
        (a.get("/usageplans/nosuchplan").await, Some(plan_msg)),
        (
            a.patch_ops("/usageplans/nosuchplan", &[("replace", "/name", "x")])
                .await,
            Some(plan_msg),
        ),
        (a.delete("/usageplans/nosuchplan").await, Some(plan_msg)),
        (a.get("/apikeys/nosuchkey").await, Some(key_msg)),
        (
            a.patch_ops("/apikeys/nosuchkey", &[("replace", "/name", "x")])
                .await,
            Some(key_msg),
        ),
        (a.delete("/apikeys/nosuchkey").await, Some(key_msg)),
        (a.get("/usageplans/nosuchplan/keys").await, Some(plan_msg)),
        (
            a.post(
                "/usageplans/nosuchplan/keys",
                json!({"keyId": kid, "keyType": "API_KEY"}),
            )
            .await,
            Some(plan_msg),
        ),
        (
            a.post(
                &format!("/usageplans/{pid}/keys"),
                json!({"keyId": "nosuchkey", "keyType": "API_KEY"}),
            )
            .await,
            Some(key_msg),
        ),
        (a.get(&format!("/usageplans/{pid}/keys/{kid}")).await, None),
        (
            a.delete(&format!("/usageplans/{pid}/keys/{kid}")).await,
            None,
        ),
        (a.get("/usageplans?keyId=nosuchkey").await, Some(key_msg)),
        // Path labels are percent-decoded per segment; the signature covers the encoded path.
        (
            a.get("/usageplans/up%201%2Fx~y/keys/k%3A1").await,
            Some(plan_msg),
        ),
        // An id left empty (boto3's `get_api_key(apiKey='')`) names no
        // resource: it had read the list of keys.
        (a.get("/apikeys/").await, None),
        (a.delete(&format!("/usageplans//keys/{kid}")).await, None),
    ] {
        let got = assert_not_found(&resp);
        if let Some(message) = message {
            assert_eq!(got, message);
        }
    }
    assert!(env.plans.usage_plan_keys(pid).unwrap().is_empty());
    assert_eq!((env.plans.plan_count(), env.plans.key_count()), (1, 1));
}

#[tokio::test]
async fn conflicts() {
    let env = env().await;
    let a = &env.admin;
    let key = a.create_key("k", V1).await;
    let resp = a
        .post(
            "/apikeys",
            json!({"name": "dup", "value": V1, "enabled": true}),
        )
        .await;
    assert_eq!(
        assert_error(&resp, 409, "ConflictException"),
        "API Key already exists"
    );
    assert_eq!(env.plans.key_count(), 1);

    let prod = a
        .create_plan(json!({"name": "prod", "apiStages": [{"apiId": "abc", "stage": "prod"}]}))
        .await;
    a.add_key(&prod, &key).await;
    let body = json!({"keyId": key["id"], "keyType": "API_KEY"});
    assert_error(
        &a.post(&format!("/usageplans/{}/keys", id(&prod)), body.clone())
            .await,
        409,
        "ConflictException",
    );

    // Another plan covering abc:prod (listing it, or listing no stage at all).
    let also = a.create_plan(json!({"name": "also", "apiStages": [{"apiId": "x", "stage": "y"}, {"apiId": "abc", "stage": "prod"}]})).await;
    let everywhere = a.create_plan(json!({"name": "everywhere"})).await;
    for plan in [&also, &everywhere] {
        let resp = a
            .post(&format!("/usageplans/{}/keys", id(plan)), body.clone())
            .await;
        assert_error(&resp, 409, "ConflictException");
        assert!(env.plans.usage_plan_keys(id(plan)).unwrap().is_empty());
    }
    // A stage listed twice.
    let resp = a
        .patch_ops(
            &format!("/usageplans/{}", id(&prod)),
            &[("add", "/apiStages", "abc:prod")],
        )
        .await;
    assert_error(&resp, 409, "ConflictException");
    // A plan on another stage is fine; widening it onto abc:prod is not.
    let beta = a
        .create_plan(json!({"name": "beta", "apiStages": [{"apiId": "abc", "stage": "beta"}]}))
        .await;
    a.add_key(&beta, &key).await;
    let resp = a
        .patch_ops(
            &format!("/usageplans/{}", id(&beta)),
            &[("add", "/apiStages", "abc:prod")],
        )
        .await;
    assert_error(&resp, 409, "ConflictException");
    let (_, _, beta_after) = a.get(&format!("/usageplans/{}", id(&beta))).await;
    assert_eq!(beta_after, beta);
    let (_, _, of_key) = a.get(&format!("/usageplans?keyId={}", id(&key))).await;
    let mut ids: Vec<&str> = of_key["item"].as_array().unwrap().iter().map(id).collect();
    ids.sort();
    let mut expected = [id(&prod), id(&beta)];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn authentication_failures_are_403_and_change_nothing() {
    let env = env().await;
    let a = &env.admin;
    let body = br#"{"name":"intruder","enabled":true}"#;
    let ct = Some("application/json");

    let unsigned = a.send(a.unsigned("POST", "/apikeys", ct, body)).await;
    assert_eq!(
        assert_error(&unsigned, 403, "MissingAuthenticationTokenException"),
        "Missing Authentication Token"
    );
    let unsigned_get = a.send(a.unsigned("GET", "/usageplans", None, b"")).await;
    assert_error(&unsigned_get, 403, "MissingAuthenticationTokenException");

    let stranger = a
        .send(a.signed_as(
            "AKIDUNKNOWN",
            "test-secret",
            a.unsigned("POST", "/apikeys", ct, body),
            body,
        ))
        .await;
    assert_eq!(
        assert_error(&stranger, 403, "UnrecognizedClientException"),
        "The security token included in the request is invalid."
    );

    let wrong_secret = a
        .send(a.signed_as(
            AKID,
            "not-the-secret",
            a.unsigned("POST", "/apikeys", ct, body),
            body,
        ))
        .await;
    assert_error(&wrong_secret, 403, "InvalidSignatureException");

    // Signed ten minutes ago (beyond the 5-minute skew), or not by SigV4 at all.
    let old = SystemTime::now() - Duration::from_secs(600);
    let expired = a.signed_at(
        AKID,
        SECRET,
        a.unsigned("POST", "/apikeys", ct, body),
        body,
        old,
    );
    assert_error(&a.send(expired).await, 403, "InvalidSignatureException");
    let mut garbage = a.unsigned("POST", "/apikeys", ct, body);
    garbage
        .headers_mut()
        .insert("authorization", "AWS4-HMAC-SHA256 garbage".parse().unwrap());
    assert_error(&a.send(garbage).await, 403, "IncompleteSignatureException");

    // Signed over one body, sent with another.
    let mut tampered = a.signed("POST", "/apikeys", ct, body);
    *tampered.body_mut() = br#"{"name":"intruder","enabled":false}"#.to_vec().into();
    assert_error(&a.send(tampered).await, 403, "InvalidSignatureException");
    // Signed for one path, sent to another.
    let mut moved = a.signed("DELETE", "/apikeys/aaaaaaaaaa", None, b"");
    *moved.uri_mut() = moved
        .uri()
        .to_string()
        .replace("aaaaaaaaaa", "bbbbbbbbbb")
        .parse()
        .unwrap();
    assert_error(&a.send(moved).await, 403, "InvalidSignatureException");
    // A signed header changed after signing.
    let mut header = a.signed("GET", "/usageplans", None, b"");
    header
        .headers_mut()
        .insert("accept", "text/html".parse().unwrap());
    assert_error(&a.send(header).await, 403, "InvalidSignatureException");

    assert_eq!(env.plans.key_count(), 0);
    let (status, _, keys) = a.get("/apikeys").await;
    assert_eq!((status, keys), (StatusCode::OK, json!({"item": []})));
}

#[tokio::test]
async fn unknown_routes_and_oversized_bodies_answer_json() {
    let env = env().await;
    let a = &env.admin;
    for path in [
        "/restapis",
        "/",
        "/usageplans/p/keys/k/usage/extra",
        "/apikeys/k/usage",
    ] {
        assert_not_found(&a.get(path).await);
    }
    // A 405 says what the resource takes.
    for (method, path, allow) in [
        ("PUT", "/apikeys", "GET, POST"),
        ("POST", "/apikeys/k", "GET, PATCH, DELETE"),
        ("GET", "/usageplans/p/keys/k/usage", "PATCH"),
    ] {
        let resp = a.raw(method, path, Some("application/json"), b"{}").await;
        assert_error(&resp, 405, "MethodNotAllowedException");
        assert_eq!(resp.1["allow"], allow, "{method} {path}");
    }

    // 1 MiB of JSON plus one byte.
    let limit = tower_usage_plans::admin::MAX_BODY_BYTES;
    let mut body = br#"{"name":"big","description":""#.to_vec();
    body.resize(limit - 2, b'x');
    body.extend_from_slice(br#""}"#);
    assert_eq!(body.len(), limit);
    let mut big = body.clone();
    big.insert(big.len() - 2, b'x');
    let resp = a
        .raw("POST", "/apikeys", Some("application/json"), &big)
        .await;
    assert_error(&resp, 413, "RequestEntityTooLargeException");
    assert_eq!(env.plans.key_count(), 0);
    // Exactly 1 MiB is read and accepted.
    let (status, _, key) = a
        .raw("POST", "/apikeys", Some("application/json"), &body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{}", key["name"]);
    assert_eq!(env.plans.key_count(), 1);

    // The same without Content-Length (chunked): refused once past 1 MiB.
    let chunks = |b: &[u8]| {
        b.chunks(64 * 1024)
            .map(bytes::Bytes::copy_from_slice)
            .collect()
    };
    let request = a.signed("POST", "/apikeys", Some("application/json"), &big);
    let resp = a.send_chunked(request, chunks(&big)).await;
    assert_error(&resp, 413, "RequestEntityTooLargeException");
    let small = br#"{"name":"chunked","enabled":true}"#;
    let request = a.signed("POST", "/apikeys", Some("application/json"), small);
    let (status, _, key) = a.send_chunked(request, chunks(small)).await;
    assert_eq!(
        (status, &key["name"]),
        (StatusCode::CREATED, &json!("chunked"))
    );
    assert_eq!(env.plans.key_count(), 2);
}

// ---- live effect on the data plane ----------------------------------------------------

#[tokio::test]
async fn update_usage_is_enforced_on_the_next_request() {
    let env = env().await;
    let a = &env.admin;
    let (plan, key) = metered(&env, daily_quota(1000), V1).await;
    let path = format!("/usageplans/{}/keys/{}/usage", id(&plan), id(&key));
    assert_eq!(env.data(Some(V1)).await, (StatusCode::OK, "pets".into()));
    let (status, _, usage) = a.patch_ops(&path, &[("replace", "/remaining", "1")]).await;
    assert_eq!(
        (status, &usage["values"][id(&key)]),
        (StatusCode::OK, &json!([[1, 1]]))
    );
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    let limited = (
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"message":"Limit Exceeded"}"#.to_owned(),
    );
    assert_eq!(env.data(Some(V1)).await, limited);
    assert_eq!(env.data(Some(V1)).await, limited);
    a.patch_ops(&path, &[("replace", "/remaining", "2")]).await;
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    assert_eq!(env.data(Some(V1)).await, limited);
    let (_, _, usage) = a.patch_ops(&path, &[("replace", "/remaining", "0")]).await;
    assert_eq!(
        usage["values"][id(&key)],
        json!([[4, 0]]),
        "refused requests are not counted"
    );
    assert_eq!(env.data(Some(V1)).await, limited);
}

#[tokio::test]
async fn update_usage_plan_throttle_is_enforced_on_the_next_request() {
    let env = env().await;
    let a = &env.admin;
    let (plan, _) = metered(&env, throttled(100.0, 100), V1).await;
    let path = format!("/usageplans/{}", id(&plan));
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    let (status, _, updated) = a
        .patch_ops(&path, &[("replace", "/throttle/burstLimit", "0")])
        .await;
    assert_eq!(
        (status, &updated["throttle"]),
        (
            StatusCode::OK,
            &json!({"burstLimit": 0, "rateLimit": 100.0})
        )
    );
    let throttled = (
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"message":"Too Many Requests"}"#.to_owned(),
    );
    assert_eq!(env.data(Some(V1)).await, throttled);
    assert_eq!(env.data(Some(V1)).await, throttled);
    a.patch_ops(&path, &[("remove", "/throttle", "")]).await;
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
}

/// `"throttle": {}` (boto3's `throttle={}`, settings left empty) is no
/// throttle, for the plan and for a method; read as zeros, the plan
/// refused every request with 429.
#[tokio::test]
async fn an_empty_throttle_is_no_throttle() {
    let env = env().await;
    let a = &env.admin;
    let (plan, _) = metered(&env, json!({"name": "p", "throttle": {}}), V1).await;
    assert_eq!(plan.get("throttle"), None, "{plan}");
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    let staged = a
        .create_plan(json!({"name": "s", "apiStages": [
            {"apiId": "abc", "stage": "prod", "throttle": {"//GET": {}}}]}))
        .await;
    assert_eq!(
        staged["apiStages"],
        json!([{"apiId": "abc", "stage": "prod"}])
    );
    let (status, _, updated) = a
        .patch_ops(
            &format!("/usageplans/{}", id(&staged)),
            &[(
                "replace",
                "/apiStages/abc:prod/throttle",
                r#"{"//GET": {}, "/pets/GET": {"rateLimit": 2}}"#,
            )],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["apiStages"][0]["throttle"],
        json!({"/pets/GET": {"burstLimit": 2, "rateLimit": 2.0}})
    );
}

#[tokio::test]
async fn disabling_or_removing_a_key_is_enforced_on_the_next_request() {
    let env = env().await;
    let a = &env.admin;
    let (plan, key) = metered(&env, json!({"name": "p"}), V1).await;
    let forbidden = (
        StatusCode::FORBIDDEN,
        r#"{"message":"Forbidden"}"#.to_owned(),
    );
    let key_path = format!("/apikeys/{}", id(&key));
    let member_path = format!("/usageplans/{}/keys/{}", id(&plan), id(&key));

    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);
    assert_eq!(
        a.patch_ops(&key_path, &[("replace", "/enabled", "false")])
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(env.data(Some(V1)).await, forbidden);
    assert_eq!(
        a.patch_ops(&key_path, &[("replace", "/enabled", "true")])
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);

    assert_eq!(a.delete(&member_path).await.0, StatusCode::ACCEPTED);
    assert_eq!(env.data(Some(V1)).await, forbidden);
    a.add_key(&plan, &key).await;
    assert_eq!(env.data(Some(V1)).await.0, StatusCode::OK);

    assert_eq!(
        a.delete(&format!("/usageplans/{}", id(&plan))).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(env.data(Some(V1)).await, forbidden);
    let (plan2, key2) = metered(&env, json!({"name": "p2"}), V2).await;
    assert_eq!(env.data(Some(V2)).await.0, StatusCode::OK);
    assert_eq!(
        a.delete(&format!("/apikeys/{}", id(&key2))).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(env.data(Some(V2)).await, forbidden);
    assert!(env.plans.usage_plan_keys(id(&plan2)).unwrap().is_empty());
    assert_eq!(env.data(None).await, forbidden);
}

/// An UpdateApiKey that changes nothing (no operation, or each sets what
/// is there) leaves the key's lastUpdatedDate as it was; one that changes
/// something moves it. (Before: an empty PATCH moved it.)
#[tokio::test]
async fn an_update_that_changes_nothing_keeps_last_updated_date() {
    let clock = ManualClock::new("2026-11-26T12:00:00Z".parse().unwrap());
    let env = env_with(UsagePlans::builder().with_clock(clock.clone()).build()).await;
    let a = &env.admin;
    let key = a.create_key("same", V1).await;
    let path = format!("/apikeys/{}", id(&key));
    let (_, _, before) = a.get(&path).await;
    clock.advance(Duration::from_secs(60));
    for body in [json!({}), json!({"patchOperations": []})] {
        let (status, _, after) = a.patch(&path, body).await;
        assert_eq!(status, StatusCode::OK, "{after}");
        assert_eq!(after["lastUpdatedDate"], before["lastUpdatedDate"]);
    }
    let (_, _, after) = a.patch_ops(&path, &[("replace", "/name", "same")]).await;
    assert_eq!(after["lastUpdatedDate"], before["lastUpdatedDate"]);
    let (_, _, after) = a.patch_ops(&path, &[("replace", "/name", "other")]).await;
    assert_eq!(
        int(&after["lastUpdatedDate"]),
        int(&before["lastUpdatedDate"]) + 60
    );
}

/// A change the other replicas could not be reached to confirm (503, "The
/// change holds on this replica"), then an SDK's retry of it refused before
/// it changed anything: the retry's answer, the one the caller sees, says
/// that an earlier request's change holds here, not only that nothing was
/// changed. Once changes are shared again, it no longer says so.
#[tokio::test]
async fn a_refused_retry_says_an_earlier_unconfirmed_change_holds() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower_usage_plans::store::StoreFuture;
    use tower_usage_plans::{Error, ErrorKind};

    let plans = UsagePlans::new();
    // The replicas can be reached for the first check only (the one
    // before the change), until `checks` is set back to 0.
    let checks = Arc::new(AtomicUsize::new(0));
    let replicate = {
        let checks = checks.clone();
        move || {
            StoreFuture::ready(match checks.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(()),
                _ => Err(Error::new(ErrorKind::Store, "Redis is down")),
            })
        }
    };
    plans.set_replication(Some(Arc::new(replicate)));
    let env = env_with(plans.clone()).await;
    let create = || {
        let body = br#"{"name":"retried"}"#;
        env.admin
            .signed("POST", "/usageplans", Some("application/json"), body)
    };

    let first = env.admin.send(create()).await;
    let message = assert_error(&first, 503, "ServiceUnavailableException");
    assert!(message.contains("holds on this replica"), "{message}");
    let retry = env.admin.send(create()).await;
    let message = assert_error(&retry, 503, "ServiceUnavailableException");
    assert!(
        message.contains("nothing was changed by this request")
            && message.contains("holds on this replica, not yet confirmed"),
        "{message}"
    );
    assert_eq!(
        plans.usage_plans().len(),
        1,
        "the first attempt's plan holds"
    );

    // Shared again (a change whose check passes: a deletion of a plan
    // that does not exist), then refused again: nothing unconfirmed is
    // left to mention.
    checks.store(0, Ordering::SeqCst);
    let missing = env
        .admin
        .send(env.admin.signed("DELETE", "/usageplans/none", None, b""))
        .await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    let refused = env.admin.send(create()).await;
    let message = assert_error(&refused, 503, "ServiceUnavailableException");
    assert!(!message.contains("earlier"), "{message}");
}

/// While the other replicas cannot be reached, bad input is still told as
/// such (400, 404), not as a 503 that a retry cannot mend; a good change
/// gets the 503 and is not made. (Validation ran only after the check: a
/// `/remaining` of `abc` was a 503 after 1-2 s with Redis down.)
#[tokio::test]
async fn bad_input_is_told_as_such_while_the_replicas_cannot_be_reached() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower_usage_plans::store::StoreFuture;
    use tower_usage_plans::{Error, ErrorKind};

    let plans = UsagePlans::new();
    let reachable = Arc::new(AtomicBool::new(true));
    let replicate = {
        let reachable = reachable.clone();
        move || {
            StoreFuture::ready(match reachable.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err(Error::new(ErrorKind::Store, "Redis is down")),
            })
        }
    };
    plans.set_replication(Some(Arc::new(replicate)));
    let env = env_with(plans.clone()).await;
    let (plan, key) = metered(&env, daily_quota(100), V1).await;
    reachable.store(false, Ordering::SeqCst);
    let update = |key_id: &str, value: &str| {
        let body = json!({"patchOperations": [
            {"op": "replace", "path": "/remaining", "value": value}
        ]});
        env.admin.signed(
            "PATCH",
            &format!("/usageplans/{}/keys/{key_id}/usage", id(&plan)),
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    };

    let bad = env.admin.send(update(id(&key), "abc")).await;
    assert_error(&bad, 400, "BadRequestException");
    let unknown = env.admin.send(update("nokey", "5")).await;
    assert_error(&unknown, 404, "NotFoundException");
    let broken = env
        .admin
        .send(
            env.admin
                .signed("POST", "/usageplans", Some("application/json"), b"{"),
        )
        .await;
    assert_error(&broken, 400, "BadRequestException");
    let good = env.admin.send(update(id(&key), "5")).await;
    assert_error(&good, 503, "ServiceUnavailableException");
    // Not made: the key still has its whole quota.
    reachable.store(true, Ordering::SeqCst);
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let path = format!(
        "/usageplans/{}/usage?keyId={}&startDate={today}&endDate={today}",
        id(&plan),
        id(&key)
    );
    let usage = env
        .admin
        .send(env.admin.signed("GET", &path, None, b""))
        .await;
    assert_eq!(usage.0, StatusCode::OK, "{}", usage.2);
    assert_eq!(usage.2["values"][id(&key)], json!([[0, 100]]));
    assert_eq!(plans.usage_plans().len(), 1);
}
