//! The 17 operations: each parses its wire input, calls [`UsagePlans`] and
//! renders the AWS wire output.

use http::{Method, StatusCode};
use serde::Deserialize;

use super::import;
use super::patch::{self, PatchRequest, RemainingChange};
use super::wire::{accepted, json, parse_json, AwsError, List, Query, WireResult};
use crate::model::{ApiKey, NewApiKey, NewUsagePlan};
use crate::UsagePlans;

/// A request routed to an operation.
pub(crate) struct Call<'a> {
    pub(crate) plans: &'a UsagePlans,
    /// UpdateUsage takes `add /remaining` (`AdminService::with_top_ups`).
    pub(crate) top_ups: bool,
    pub(crate) query: Query,
    pub(crate) body: &'a [u8],
}

/// Finds the operation for a method and decoded path segments, runs it.
pub(crate) async fn dispatch(method: &Method, segments: &[String], call: Call<'_>) -> WireResult {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = method.as_str();
    match (s.as_slice(), m) {
        (["apikeys"], "POST") if call.query.get("mode") == Some("import") => import_api_keys(call),
        (["apikeys"], "POST") => create_api_key(call),
        (["apikeys"], "GET") => get_api_keys(call),
        (["apikeys", id], "GET") => get_api_key(call, id),
        (["apikeys", id], "PATCH") => update_api_key(call, id),
        (["apikeys", id], "DELETE") => delete_api_key(call, id),
        (["usageplans"], "POST") => create_usage_plan(call),
        (["usageplans"], "GET") => get_usage_plans(call),
        (["usageplans", id], "GET") => get_usage_plan(call, id),
        (["usageplans", id], "PATCH") => update_usage_plan(call, id),
        (["usageplans", id], "DELETE") => delete_usage_plan(call, id),
        (["usageplans", id, "keys"], "POST") => create_usage_plan_key(call, id),
        (["usageplans", id, "keys"], "GET") => get_usage_plan_keys(call, id),
        (["usageplans", id, "keys", key], "GET") => get_usage_plan_key(call, id, key),
        (["usageplans", id, "keys", key], "DELETE") => delete_usage_plan_key(call, id, key),
        (["usageplans", id, "keys", key, "usage"], "PATCH") => update_usage(call, id, key).await,
        (["usageplans", id, "usage"], "GET") => get_usage(call, id).await,
        (resource, _) if allowed_on(resource).is_some() => Err(AwsError {
            allow: allowed_on(resource),
            ..AwsError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowedException",
                format!("Method {m} is not allowed on this resource"),
            )
        }),
        _ => Err(AwsError::not_found(format!(
            "Unknown operation: {m} /{}",
            segments.join("/")
        ))),
    }
}

/// The methods a resource of the admin API takes (its `Allow` header);
/// `None` for a path that is none of them.
fn allowed_on(resource: &[&str]) -> Option<&'static str> {
    match resource {
        ["apikeys"] | ["usageplans"] | ["usageplans", _, "keys"] => Some("GET, POST"),
        ["apikeys", _] | ["usageplans", _] => Some("GET, PATCH, DELETE"),
        ["usageplans", _, "keys", _] => Some("GET, DELETE"),
        ["usageplans", _, "keys", _, "usage"] => Some("PATCH"),
        ["usageplans", _, "usage"] => Some("GET"),
        _ => None,
    }
}

// ---- API keys -------------------------------------------------------------

fn create_api_key(call: Call<'_>) -> WireResult {
    let input: NewApiKey = parse_json(call.body)?;
    json(StatusCode::CREATED, &call.plans.create_api_key(input)?)
}

fn import_api_keys(call: Call<'_>) -> WireResult {
    match call.query.required("format")? {
        f if f.eq_ignore_ascii_case("csv") => {}
        f => {
            return Err(AwsError::bad_request(format!(
                "Invalid format '{f}': only csv is supported"
            )))
        }
    }
    let fail_on_warnings = call.query.flag("failonwarnings")?;
    json(
        StatusCode::CREATED,
        &import::import(call.plans, call.body, fail_on_warnings)?,
    )
}

fn get_api_key(call: Call<'_>, id: &str) -> WireResult {
    let key = call.plans.api_key(id)?;
    json(
        StatusCode::OK,
        &shown(key, call.query.flag("includeValue")?),
    )
}

fn get_api_keys(call: Call<'_>) -> WireResult {
    let include = call.query.flag("includeValues")?;
    let name = call.query.get("name").filter(|n| !n.is_empty());
    let customer = call.query.get("customerId").filter(|c| !c.is_empty());
    let keys: Vec<ApiKey> = call
        .plans
        .api_keys()
        .into_iter()
        .filter(|k| name.is_none_or(|n| k.name.as_deref().is_some_and(|kn| kn.starts_with(n))))
        .filter(|k| customer.is_none_or(|c| k.customer_id.as_deref() == Some(c)))
        .map(|k| shown(k, include))
        .collect();
    let (item, position) = call.query.page()?.apply(keys, |k| &k.id);
    json(StatusCode::OK, &List { item, position })
}

fn update_api_key(call: Call<'_>, id: &str) -> WireResult {
    let patch: PatchRequest = parse_json(call.body)?;
    let key = call
        .plans
        .update_api_key(id, |key| patch::apply_to_key(key, &patch.operations))?;
    json(StatusCode::OK, &key)
}

fn delete_api_key(call: Call<'_>, id: &str) -> WireResult {
    call.plans.delete_api_key(id)?;
    accepted()
}

/// AWS shows a key's value only when asked.
fn shown(key: ApiKey, include_value: bool) -> ApiKey {
    if include_value {
        key
    } else {
        key.without_value()
    }
}

// ---- usage plans ----------------------------------------------------------

fn create_usage_plan(call: Call<'_>) -> WireResult {
    let input: NewUsagePlan = parse_json(call.body)?;
    json(StatusCode::CREATED, &call.plans.create_usage_plan(input)?)
}

fn get_usage_plan(call: Call<'_>, id: &str) -> WireResult {
    json(StatusCode::OK, &call.plans.usage_plan(id)?)
}

fn get_usage_plans(call: Call<'_>) -> WireResult {
    let plans = match call.query.get("keyId").filter(|k| !k.is_empty()) {
        Some(key_id) => call.plans.usage_plans_of_key(key_id)?,
        None => call.plans.usage_plans(),
    };
    let (item, position) = call.query.page()?.apply(plans, |p| &p.id);
    json(StatusCode::OK, &List { item, position })
}

fn update_usage_plan(call: Call<'_>, id: &str) -> WireResult {
    let patch: PatchRequest = parse_json(call.body)?;
    let plan = call
        .plans
        .update_usage_plan(id, |plan| patch::apply_to_plan(plan, &patch.operations))?;
    json(StatusCode::OK, &plan)
}

fn delete_usage_plan(call: Call<'_>, id: &str) -> WireResult {
    call.plans.delete_usage_plan(id)?;
    accepted()
}

// ---- usage plan keys ------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateUsagePlanKey {
    key_id: Option<String>,
    key_type: Option<String>,
}

fn create_usage_plan_key(call: Call<'_>, plan_id: &str) -> WireResult {
    let input: CreateUsagePlanKey = parse_json(call.body)?;
    let key_id = input
        .key_id
        .filter(|k| !k.is_empty())
        .ok_or_else(|| AwsError::bad_request("Missing required member: keyId"))?;
    match input.key_type.as_deref() {
        Some("API_KEY") => {}
        Some(other) => {
            return Err(AwsError::bad_request(format!(
                "Invalid keyType '{other}': only API_KEY is supported"
            )))
        }
        None => return Err(AwsError::bad_request("Missing required member: keyType")),
    }
    json(
        StatusCode::CREATED,
        &call.plans.add_key_to_plan(plan_id, &key_id)?,
    )
}

fn get_usage_plan_keys(call: Call<'_>, plan_id: &str) -> WireResult {
    let name = call.query.get("name").filter(|n| !n.is_empty());
    let keys: Vec<_> = call
        .plans
        .usage_plan_keys(plan_id)?
        .into_iter()
        .filter(|k| name.is_none_or(|n| k.name.as_deref().is_some_and(|kn| kn.starts_with(n))))
        .collect();
    let (item, position) = call.query.page()?.apply(keys, |k| &k.id);
    json(StatusCode::OK, &List { item, position })
}

fn get_usage_plan_key(call: Call<'_>, plan_id: &str, key_id: &str) -> WireResult {
    json(StatusCode::OK, &call.plans.usage_plan_key(plan_id, key_id)?)
}

fn delete_usage_plan_key(call: Call<'_>, plan_id: &str, key_id: &str) -> WireResult {
    call.plans.remove_key_from_plan(plan_id, key_id)?;
    accepted()
}

// ---- usage ----------------------------------------------------------------

async fn get_usage(call: Call<'_>, plan_id: &str) -> WireResult {
    let date = |name: &str| -> Result<jiff::civil::Date, AwsError> {
        let value = call.query.required(name)?;
        let valid = value.len() == 10 && value.as_bytes()[4] == b'-' && value.as_bytes()[7] == b'-';
        value.parse().ok().filter(|_| valid).ok_or_else(|| {
            AwsError::bad_request(format!("Invalid {name} '{value}': expected yyyy-MM-dd"))
        })
    };
    let (start, end) = (date("startDate")?, date("endDate")?);
    let page = call.query.page()?;
    let key_id = call.query.get("keyId").filter(|k| !k.is_empty());
    // Page the key ids first: the store is asked only for this page's keys.
    let mut position = None;
    let mut usage = call
        .plans
        .usage_of(plan_id, key_id, start, end, |keys| {
            let (keys, next) = page.apply(keys, |k| k);
            position = next;
            keys
        })
        .await?;
    usage.position = position;
    json(StatusCode::OK, &usage)
}

async fn update_usage(call: Call<'_>, plan_id: &str, key_id: &str) -> WireResult {
    let patch: PatchRequest = parse_json(call.body)?;
    let usage = match patch::remaining(&patch.operations, call.top_ups)? {
        RemainingChange::Set(n) => call.plans.set_remaining(plan_id, key_id, n).await?,
        RemainingChange::Add(n) => call.plans.add_remaining(plan_id, key_id, n).await?,
    };
    json(StatusCode::OK, &usage)
}
