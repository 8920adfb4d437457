//! AWS patch operations (`{"op","path","value"}`, JSON-Pointer paths) on
//! plans, keys and usage. Each function applies a whole list to a draft;
//! the registry commits the draft only if every operation succeeded.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{ApiKey, ApiStage, Quota, QuotaPeriod, Throttle, UsagePlan};
use crate::{Error, ErrorKind, Result};

/// The body of every Update* operation.
#[derive(Debug, Deserialize)]
pub(crate) struct PatchRequest {
    #[serde(default, rename = "patchOperations")]
    pub(crate) operations: Vec<PatchOperation>,
}

/// One AWS `PatchOperation`; `value` is always a string on the wire.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PatchOperation {
    pub(crate) op: String,
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
}

impl PatchOperation {
    fn unsupported(&self) -> Error {
        Error::bad_request(format!(
            "Invalid patch operation: op '{}' is not supported on path '{}'",
            self.op, self.path
        ))
    }

    fn value(&self) -> Result<&str> {
        self.value.as_deref().ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid patch operation: '{}' on '{}' needs a value",
                self.op, self.path
            ))
        })
    }

    fn integer<T: std::str::FromStr>(&self) -> Result<T> {
        let value = self.value()?;
        value
            .parse::<T>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid value '{value}' for {}: expected a non-negative integer",
                    self.path
                ))
            })
    }

    /// An optionally negative integer (`-20`, `500`).
    fn signed(&self) -> Result<i64> {
        let value = self.value()?;
        let digits = value.strip_prefix('-').unwrap_or(value);
        value
            .parse::<i64>()
            .ok()
            .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid value '{value}' for {}: expected an integer",
                    self.path
                ))
            })
    }

    fn number(&self) -> Result<f64> {
        let value = self.value()?;
        value
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "Invalid value '{value}' for {}: expected a non-negative number",
                    self.path
                ))
            })
    }

    fn boolean(&self) -> Result<bool> {
        match self.value()? {
            v if v.eq_ignore_ascii_case("true") => Ok(true),
            v if v.eq_ignore_ascii_case("false") => Ok(false),
            v => Err(Error::bad_request(format!(
                "Invalid value '{v}' for {}: expected true or false",
                self.path
            ))),
        }
    }

    /// `add` and `replace` both set a value.
    fn sets(&self) -> bool {
        matches!(self.op.as_str(), "add" | "replace")
    }
}

/// Decodes one JSON-Pointer segment (`~1` is `/`, `~0` is `~`).
fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// What an UpdateUsage does to the remaining quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemainingChange {
    /// `replace /remaining`: AWS's meaning, remaining becomes the value.
    Set(u64),
    /// `add /remaining` (this crate's extension): remaining moves by the
    /// signed value, atomically, floored at 0.
    Add(i64),
}

/// The change of an UpdateUsage: `replace` on `/remaining`, or `add` when
/// `top_ups` allows it (else, as by AWS, any op but `replace` is a bad
/// request). Of several `replace`s the last one counts (AWS applies them in
/// order); an `add` must be the only operation (one atomic step, not a
/// sequence). None at all changes nothing (an `add` of 0), as an empty
/// patch of a plan or key does: the answer is the usage as it stands.
pub(crate) fn remaining(operations: &[PatchOperation], top_ups: bool) -> Result<RemainingChange> {
    if top_ups && operations.len() > 1 && operations.iter().any(|op| op.op == "add") {
        return Err(Error::bad_request(
            "Invalid patch: an add on /remaining must be the only patch operation",
        ));
    }
    let mut change = None;
    for op in operations {
        if op.path != "/remaining" {
            return Err(Error::bad_request(format!(
                "Invalid patch path '{}': only /remaining can be updated",
                op.path
            )));
        }
        change = Some(match op.op.as_str() {
            "replace" => RemainingChange::Set(op.integer::<u64>()?),
            "add" if top_ups => RemainingChange::Add(op.signed()?),
            _ => return Err(op.unsupported()),
        });
    }
    Ok(change.unwrap_or(RemainingChange::Add(0)))
}

/// Applies UpdateApiKey operations to a draft key.
pub(crate) fn apply_to_key(key: &mut ApiKey, operations: &[PatchOperation]) -> Result<()> {
    for op in operations {
        match (op.op.as_str(), op.path.as_str()) {
            ("replace", "/name") => key.name = Some(op.value()?.to_owned()),
            ("replace", "/description") => key.description = Some(op.value()?.to_owned()),
            ("remove", "/description") => key.description = None,
            ("replace", "/customerId") => key.customer_id = Some(op.value()?.to_owned()),
            ("remove", "/customerId") => key.customer_id = None,
            ("replace", "/enabled") => key.enabled = op.boolean()?,
            (_, "/value") => {
                return Err(Error::bad_request(
                    "The value of an API key cannot be changed",
                ))
            }
            _ => return Err(op.unsupported()),
        }
    }
    Ok(())
}

/// Applies UpdateUsagePlan operations to a draft plan.
/// A quota that a patch sets up from nothing must get both its limit and
/// its period there: a default for either (a limit of 0 refuses every
/// request) would be a silent surprise.
pub(crate) fn apply_to_plan(plan: &mut UsagePlan, operations: &[PatchOperation]) -> Result<()> {
    let mut new_quota = None;
    for op in operations {
        apply_plan_op(plan, op, &mut new_quota)?;
    }
    match new_quota {
        Some(NewQuota {
            limit: true,
            period: true,
        })
        | None => Ok(()),
        Some(_) => Err(Error::bad_request(
            "Invalid quota: a new quota needs both /quota/limit and /quota/period",
        )),
    }
}

/// Which fields of a quota that the patch sets up from nothing it has set.
#[derive(Default)]
struct NewQuota {
    limit: bool,
    period: bool,
}

fn apply_plan_op(
    plan: &mut UsagePlan,
    op: &PatchOperation,
    new_quota: &mut Option<NewQuota>,
) -> Result<()> {
    let set = op.sets();
    match (op.op.as_str(), op.path.as_str()) {
        ("replace", "/name") => {
            plan.name = op.value()?.to_owned();
        }
        (_, "/description") if set => plan.description = Some(op.value()?.to_owned()),
        ("remove", "/description") => plan.description = None,
        (_, "/productCode") if set => plan.product_code = Some(op.value()?.to_owned()),
        ("remove", "/productCode") => plan.product_code = None,
        (_, "/throttle/rateLimit") if set => {
            set_throttle_field(&mut plan.throttle, "rateLimit", op)?
        }
        (_, "/throttle/burstLimit") if set => {
            set_throttle_field(&mut plan.throttle, "burstLimit", op)?
        }
        ("remove", "/throttle") => plan.throttle = None,
        (_, "/quota/limit") if set => {
            quota(plan, new_quota).limit = op.integer()?;
            if let Some(new) = new_quota {
                new.limit = true;
            }
        }
        (_, "/quota/offset") if set => quota(plan, new_quota).offset = op.integer()?,
        (_, "/quota/period") if set => {
            quota(plan, new_quota).period = op.value()?.parse()?;
            if let Some(new) = new_quota {
                new.period = true;
            }
        }
        ("remove", "/quota") => {
            plan.quota = None;
            *new_quota = None;
        }
        ("add", "/apiStages") => {
            let (api_id, stage) = stage_name(op.value()?)?;
            if plan.api_stages.iter().any(|s| s.is(&api_id, &stage)) {
                return Err(Error::conflict(format!(
                    "API stage {api_id}:{stage} is already in the plan"
                )));
            }
            plan.api_stages.push(ApiStage::new(api_id, stage));
        }
        ("remove", "/apiStages") => {
            let (api_id, stage) = stage_name(op.value()?)?;
            let before = plan.api_stages.len();
            plan.api_stages.retain(|s| !s.is(&api_id, &stage));
            if plan.api_stages.len() == before {
                return Err(stage_not_found(&api_id, &stage));
            }
        }
        (_, path) if path.starts_with("/apiStages/") => {
            apply_stage_op(plan, op, &path["/apiStages/".len()..])?
        }
        _ => return Err(op.unsupported()),
    }
    Ok(())
}

/// `/apiStages/{apiId}:{stage}/throttle[/{resourcePath}/{httpMethod}[/rateLimit|/burstLimit]]`.
fn apply_stage_op(plan: &mut UsagePlan, op: &PatchOperation, rest: &str) -> Result<()> {
    let (stage_segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (api_id, stage_name) = stage_name(&unescape(stage_segment))?;
    let stage = plan
        .api_stages
        .iter_mut()
        .find(|s| s.is(&api_id, &stage_name))
        .ok_or_else(|| stage_not_found(&api_id, &stage_name))?;
    if tail == "throttle" {
        return match op.op.as_str() {
            "remove" => {
                stage.throttle.clear();
                Ok(())
            }
            "replace" | "add" => {
                stage.throttle = method_throttles(op.value()?).map_err(|e| {
                    Error::bad_request(format!(
                        "Invalid value for {}: expected a JSON map of method throttles: {e}",
                        op.path
                    ))
                })?;
                Ok(())
            }
            _ => Err(op.unsupported()),
        };
    }
    let method_path = tail
        .strip_prefix("throttle/")
        .ok_or_else(|| op.unsupported())?;
    let field = ["rateLimit", "burstLimit"]
        .into_iter()
        .find(|f| method_path.ends_with(&format!("/{f}")));
    match (field, op.op.as_str()) {
        (Some(field), "replace" | "add") => {
            let key = unescape(&method_path[..method_path.len() - field.len() - 1]);
            let mut throttle = stage.throttle.get(&key).copied();
            set_throttle_field(&mut throttle, field, op)?;
            stage.throttle.extend(throttle.map(|t| (key, t)));
        }
        (None, "remove") => {
            let key = unescape(method_path);
            if stage.throttle.remove(&key).is_none() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("No method throttle '{key}' in API stage {api_id}:{stage_name}"),
                ));
            }
        }
        _ => return Err(op.unsupported()),
    }
    Ok(())
}

/// Sets `rateLimit` or `burstLimit`. A throttle that this sets up from
/// nothing takes its other field from the given one (burst = ⌈rate⌉, at
/// least 1; rate = burst per second) rather than a zero that would refuse
/// every request.
fn set_throttle_field(slot: &mut Option<Throttle>, field: &str, op: &PatchOperation) -> Result<()> {
    let (mut rate, mut burst) = match slot {
        Some(t) => (Some(t.rate_limit), Some(t.burst_limit)),
        None => (None, None),
    };
    if field == "rateLimit" {
        rate = Some(op.number()?);
    } else {
        burst = Some(op.integer()?);
    }
    *slot = Some(Throttle::completed(rate, burst));
    Ok(())
}

/// The plan's quota, set up (and noted as new) if it has none.
fn quota<'a>(plan: &'a mut UsagePlan, new_quota: &mut Option<NewQuota>) -> &'a mut Quota {
    plan.quota.get_or_insert_with(|| {
        *new_quota = Some(NewQuota::default());
        Quota::new(0, QuotaPeriod::Day)
    })
}

fn stage_name(value: &str) -> Result<(String, String)> {
    match value.split_once(':') {
        Some((api, stage)) if !api.is_empty() && !stage.is_empty() => {
            Ok((api.to_owned(), stage.to_owned()))
        }
        _ => Err(Error::bad_request(format!(
            "Invalid API stage '{value}': expected '{{apiId}}:{{stage}}'"
        ))),
    }
}

/// A JSON map of method throttles, as a plan's stage reads it (`{}` for a
/// method: none of its own).
fn method_throttles(json: &str) -> serde_json::Result<BTreeMap<String, Throttle>> {
    let mut json = serde_json::Deserializer::from_str(json);
    let throttles = crate::model::throttle_by_method(&mut json)?;
    json.end()?;
    Ok(throttles)
}

fn stage_not_found(api_id: &str, stage: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Invalid stage identifier specified: {api_id}:{stage} is not in the plan"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: &str, path: &str, value: Option<&str>) -> PatchOperation {
        PatchOperation {
            op: op.into(),
            path: path.into(),
            value: value.map(Into::into),
        }
    }

    fn plan() -> UsagePlan {
        crate::model::NewUsagePlan::new("p")
            .with_api_stage(ApiStage::new("abc", "prod"))
            .into_plan("id".into())
    }

    #[test]
    fn remaining_accepts_replace_of_a_count_and_add_of_an_integer_with_top_ups() {
        for top_ups in [false, true] {
            assert_eq!(
                remaining(&[op("replace", "/remaining", Some("10"))], top_ups).unwrap(),
                RemainingChange::Set(10)
            );
        }
        assert_eq!(
            remaining(&[op("add", "/remaining", Some("500"))], true).unwrap(),
            RemainingChange::Add(500)
        );
        assert_eq!(
            remaining(&[op("add", "/remaining", Some("-20"))], true).unwrap(),
            RemainingChange::Add(-20)
        );
        // Without top-ups, as AWS: replace only.
        let error = remaining(&[op("add", "/remaining", Some("500"))], false).unwrap_err();
        assert!(
            error.to_string().contains("op 'add' is not supported"),
            "{error}"
        );
        for bad in [
            op("replace", "/remaining", Some("-1")),
            op("replace", "/remaining", Some("1.5")),
            op("replace", "/remaining", Some("+1")),
            op("replace", "/remaining", Some("")),
            op("replace", "/remaining", None),
            op("add", "/remaining", Some("1.5")),
            op("add", "/remaining", Some("+1")),
            op("add", "/remaining", Some("-")),
            op("add", "/remaining", Some("--1")),
            op("add", "/remaining", Some("")),
            op("add", "/remaining", Some("99999999999999999999")),
            op("add", "/remaining", None),
            op("remove", "/remaining", None),
            op("copy", "/remaining", Some("1")),
            op("replace", "/used", Some("1")),
        ] {
            for top_ups in [false, true] {
                let refused = remaining(std::slice::from_ref(&bad), top_ups);
                assert!(refused.is_err(), "{bad:?}");
            }
        }
        // An empty patch changes nothing, as for a plan or a key.
        assert_eq!(remaining(&[], false).unwrap(), RemainingChange::Add(0));
        let twice = [
            op("replace", "/remaining", Some("5")),
            op("add", "/remaining", Some("6")),
        ];
        assert!(remaining(&twice, true).is_err());
        assert!(remaining(&twice, false).is_err());
    }

    #[test]
    fn method_throttles_raw_and_escaped() {
        let mut p = plan();
        apply_to_plan(
            &mut p,
            &[
                op(
                    "replace",
                    "/apiStages/abc:prod/throttle//pets/GET/rateLimit",
                    Some("1.5"),
                ),
                op(
                    "replace",
                    "/apiStages/abc:prod/throttle/~1pets~1GET/burstLimit",
                    Some("3"),
                ),
                op(
                    "replace",
                    "/apiStages/abc:prod/throttle///GET/burstLimit",
                    Some("4"),
                ),
            ],
        )
        .unwrap();
        let t = &p.api_stages[0].throttle;
        assert_eq!(
            t["/pets/GET"],
            Throttle {
                burst_limit: 3,
                rate_limit: 1.5
            }
        );
        assert_eq!(t["//GET"].burst_limit, 4);
        apply_to_plan(
            &mut p,
            &[op(
                "remove",
                "/apiStages/abc:prod/throttle//pets/GET",
                Some(""),
            )],
        )
        .unwrap();
        assert!(!p.api_stages[0].throttle.contains_key("/pets/GET"));
        assert!(apply_to_plan(
            &mut p,
            &[op(
                "replace",
                "/apiStages/x:y/throttle//a/GET/rateLimit",
                Some("1")
            )]
        )
        .is_err());
    }

    #[test]
    fn a_throttle_set_up_from_one_field_does_not_block() {
        let mut p = plan();
        apply_to_plan(&mut p, &[op("replace", "/throttle/rateLimit", Some("2.5"))]).unwrap();
        assert_eq!(
            p.throttle,
            Some(Throttle {
                burst_limit: 3,
                rate_limit: 2.5
            })
        );
        let mut p = plan();
        apply_to_plan(
            &mut p,
            &[op(
                "add",
                "/apiStages/abc:prod/throttle//a/GET/burstLimit",
                Some("4"),
            )],
        )
        .unwrap();
        assert_eq!(
            p.api_stages[0].throttle["/a/GET"],
            Throttle {
                burst_limit: 4,
                rate_limit: 4.0
            }
        );
    }

    #[test]
    fn plan_fields() {
        let mut p = plan();
        apply_to_plan(
            &mut p,
            &[
                op("replace", "/throttle/rateLimit", Some("0.5")),
                op("replace", "/throttle/burstLimit", Some("7")),
                op("replace", "/quota/limit", Some("100")),
                op("replace", "/quota/period", Some("WEEK")),
                op("add", "/apiStages", Some("api:beta")),
                op("remove", "/apiStages", Some("abc:prod")),
            ],
        )
        .unwrap();
        assert_eq!(
            p.throttle,
            Some(Throttle {
                burst_limit: 7,
                rate_limit: 0.5
            })
        );
        assert_eq!(p.quota, Some(Quota::new(100, QuotaPeriod::Week)));
        assert_eq!(p.api_stages, vec![ApiStage::new("api", "beta")]);
        let mut quotaless = plan();
        quotaless.quota = None;
        for half in [
            vec![op("replace", "/quota/limit", Some("100"))],
            vec![op("add", "/quota/period", Some("WEEK"))],
            vec![
                op("replace", "/quota/offset", Some("1")),
                op("replace", "/quota/period", Some("DAY")),
            ],
            vec![
                op("replace", "/quota/limit", Some("100")),
                op("remove", "/quota", None),
                op("replace", "/quota/period", Some("DAY")),
            ],
        ] {
            let error = apply_to_plan(&mut quotaless.clone(), &half).unwrap_err();
            assert!(error.to_string().contains("both"), "{half:?}: {error}");
        }
        let mut whole = quotaless.clone();
        apply_to_plan(
            &mut whole,
            &[
                op("add", "/quota/period", Some("MONTH")),
                op("add", "/quota/limit", Some("9")),
            ],
        )
        .unwrap();
        assert_eq!(whole.quota, Some(Quota::new(9, QuotaPeriod::Month)));
        // A plan that has a quota takes its fields one at a time.
        apply_to_plan(&mut whole, &[op("replace", "/quota/period", Some("DAY"))]).unwrap();
        assert_eq!(whole.quota, Some(Quota::new(9, QuotaPeriod::Day)));

        for bad in [
            op("replace", "/throttle/rateLimit", Some("-1")),
            op("replace", "/throttle/rateLimit", Some("NaN")),
            op("replace", "/quota/limit", Some("-5")),
            op("replace", "/quota/period", Some("YEAR")),
            op("replace", "/nope", Some("x")),
            op("move", "/name", Some("x")),
        ] {
            assert!(
                apply_to_plan(&mut p.clone(), std::slice::from_ref(&bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
