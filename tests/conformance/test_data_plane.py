"""Admin changes made with boto3 take effect on the data plane on the very next request."""

import concurrent.futures
import json

from conftest import patch_op

FORBIDDEN = b'{"message":"Forbidden"}'
TOO_MANY = b'{"message":"Too Many Requests"}'
LIMIT_EXCEEDED = b'{"message":"Limit Exceeded"}'


def assert_admitted(resp, what=""):
    assert resp.status == 200, f"{what}: expected 200, got {resp!r}"
    json.loads(resp.body)  # the echo upstream answers JSON


def assert_forbidden(resp, what=""):
    assert resp.status == 403, f"{what}: expected 403, got {resp!r}"
    assert resp.body == FORBIDDEN, resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp


def assert_limit_exceeded(resp, util, what=""):
    assert resp.status == 429, f"{what}: expected 429 Limit Exceeded, got {resp!r}"
    assert resp.body == LIMIT_EXCEEDED, resp
    assert (resp.header("x-amzn-ErrorType") or "").split(":")[0] == "LimitExceededException", resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    retry_after = int(resp.header("Retry-After"))
    # DAY quota: a retry can only succeed after the next UTC midnight
    to_midnight = util.seconds_to_utc_midnight()
    assert to_midnight - 5 <= retry_after <= to_midnight + 5, (retry_after, to_midnight)


def assert_throttled(resp, what=""):
    assert resp.status == 429, f"{what}: expected 429 Too Many Requests, got {resp!r}"
    assert resp.body == TOO_MANY, resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    assert resp.header("Retry-After") is not None, resp
    return int(resp.header("Retry-After"))


def test_echo_upstream_answers_admitted_requests(metered_key, data_get):
    _, key = metered_key(quota={"limit": 10, "period": "DAY"})
    resp = data_get(key["value"])
    assert_admitted(resp)
    assert b"/anything" in resp.body, "the echo describes the request it saw"
    assert_admitted(data_get(key["value"], path="/other/path?x=1", method="POST", body=b"{}"))


def test_missing_unknown_and_unplanned_keys_are_forbidden(data_get, make_key, new_key_value):
    assert_forbidden(data_get(None), "no x-api-key header")
    assert_forbidden(data_get(new_key_value()), "unknown key")
    assert_forbidden(data_get(""), "empty key")
    lonely = make_key()
    assert_forbidden(data_get(lonely["value"]), "key in no plan")


def test_quota_exhaustion_and_update_usage(apigw, metered_key, data_get, today, util):
    plan, key = metered_key(quota={"limit": 3, "period": "DAY"})
    remaining_seen = []
    for i in range(3):
        r = data_get(key["value"])
        assert_admitted(r, f"request {i + 1} of 3")
        policy = util.parse_structured_list(r.header("RateLimit-Policy"))
        assert policy.get("quota", {}).get("q") == 3, r
        assert policy["quota"].get("w") == 86400, r
        assert "throttle" not in policy, "a plan without throttle has no throttle policy"
        state = util.parse_structured_list(r.header("RateLimit"))
        remaining_seen.append(state["quota"]["r"])
    assert remaining_seen == [2, 1, 0]

    refused = data_get(key["value"])
    assert_limit_exceeded(refused, util, "4th request")
    assert util.parse_structured_list(refused.header("RateLimit"))["quota"]["r"] == 0
    assert refused.header("RateLimit-Policy")

    resp = apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"],
                              patchOperations=patch_op("replace", "/remaining", "2"))
    assert resp["items"] == {key["id"]: [[3, 2]]}
    assert_admitted(data_get(key["value"]), "1st after remaining=2")
    assert_admitted(data_get(key["value"]), "2nd after remaining=2")
    assert_limit_exceeded(data_get(key["value"]), util, "3rd after remaining=2")

    usage = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert usage["items"][key["id"]] == [[5, 0]], "refused requests are not counted"


def test_disabling_a_key_forbids_it(apigw, metered_key, data_get):
    _, key = metered_key(quota={"limit": 100, "period": "DAY"})
    assert_admitted(data_get(key["value"]))
    apigw.update_api_key(apiKey=key["id"], patchOperations=patch_op("replace", "/enabled", "false"))
    assert_forbidden(data_get(key["value"]), "disabled key")
    apigw.update_api_key(apiKey=key["id"], patchOperations=patch_op("replace", "/enabled", "true"))
    assert_admitted(data_get(key["value"]), "re-enabled key")


def test_created_disabled_key_is_forbidden(apigw, make_plan, uniq, new_key_value, attach, data_get):
    plan = make_plan()
    key = apigw.create_api_key(name=uniq("off"), value=new_key_value())  # enabled omitted
    attach(plan["id"], key["id"])
    assert_forbidden(data_get(key["value"]), "key created without enabled")


def test_removing_a_key_from_its_plan_forbids_it(apigw, metered_key, attach, data_get):
    plan, key = metered_key(quota={"limit": 100, "period": "DAY"})
    assert_admitted(data_get(key["value"]))
    apigw.delete_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"])
    assert_forbidden(data_get(key["value"]), "key removed from plan")
    attach(plan["id"], key["id"])
    assert_admitted(data_get(key["value"]), "key put back into plan")


def test_deleting_a_key_forbids_it(apigw, metered_key, data_get):
    _, key = metered_key(quota={"limit": 100, "period": "DAY"})
    assert_admitted(data_get(key["value"]))
    apigw.delete_api_key(apiKey=key["id"])
    assert_forbidden(data_get(key["value"]), "deleted key")


def test_plan_stage_scoping(apigw, metered_key, data_get):
    _, on_stage = metered_key(apiStages=[{"apiId": "gateway", "stage": "prod"}])
    assert_admitted(data_get(on_stage["value"]), "plan lists gateway:prod")

    plan, off_stage = metered_key(apiStages=[{"apiId": "gateway", "stage": "beta"}])
    assert_forbidden(data_get(off_stage["value"]), "plan lists only gateway:beta")
    apigw.update_usage_plan(usagePlanId=plan["id"],
                            patchOperations=patch_op("add", "/apiStages", "gateway:prod"))
    assert_admitted(data_get(off_stage["value"]), "after adding gateway:prod")
    apigw.update_usage_plan(usagePlanId=plan["id"],
                            patchOperations=patch_op("remove", "/apiStages", "gateway:prod"))
    assert_forbidden(data_get(off_stage["value"]), "after removing gateway:prod again")


def test_throttle_patched_to_burst_one(apigw, metered_key, data_get, today, util):
    plan, key = metered_key(throttle={"rateLimit": 0.1, "burstLimit": 5},
                            quota={"limit": 100, "period": "DAY"})
    first = data_get(key["value"])
    assert_admitted(first)
    policy = util.parse_structured_list(first.header("RateLimit-Policy"))
    assert policy["throttle"]["q"] == 5 and policy["throttle"]["w"] == 1, policy
    assert policy["quota"]["q"] == 100, policy
    state = util.parse_structured_list(first.header("RateLimit"))
    assert state["throttle"]["r"] == 4, state
    assert state["quota"]["r"] == 99, state
    assert_admitted(data_get(key["value"]))

    apigw.update_usage_plan(usagePlanId=plan["id"],
                            patchOperations=patch_op("replace", "/throttle/burstLimit", "1"))
    assert_admitted(data_get(key["value"]), "first request after burst=1")
    refused = data_get(key["value"])
    retry_after = assert_throttled(refused, "second immediate request after burst=1")
    # one token every 10 s: a retry cannot succeed sooner than that is due, nor later than 10 s
    assert 1 <= retry_after <= 11, retry_after
    assert util.parse_structured_list(refused.header("RateLimit-Policy"))["throttle"]["q"] == 1
    assert util.parse_structured_list(refused.header("RateLimit"))["throttle"]["r"] == 0

    usage = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert usage["items"][key["id"]] == [[3, 97]], "a throttled request costs no quota"


def test_throttle_only_plan_headers(metered_key, data_get, util):
    _, key = metered_key(throttle={"rateLimit": 50.0, "burstLimit": 10})
    r = data_get(key["value"])
    assert_admitted(r)
    policy = util.parse_structured_list(r.header("RateLimit-Policy"))
    assert set(policy) == {"throttle"}, policy
    assert policy["throttle"]["q"] == 10
    assert set(util.parse_structured_list(r.header("RateLimit"))) == {"throttle"}


def test_method_throttle_overrides_plan_throttle(metered_key, data_get):
    _, key = metered_key(
        throttle={"rateLimit": 100.0, "burstLimit": 100},
        apiStages=[{"apiId": "gateway", "stage": "prod",
                    "throttle": {"/anything/GET": {"rateLimit": 0.1, "burstLimit": 1}}}])
    assert_admitted(data_get(key["value"], path="/anything"))
    assert_throttled(data_get(key["value"], path="/anything"), "GET /anything burst 1")
    assert_admitted(data_get(key["value"], path="/anything", method="POST", body=b"{}"),
                    "POST /anything uses the plan throttle")
    assert_admitted(data_get(key["value"], path="/elsewhere"), "other paths use the plan throttle")


def test_quota_is_exact_under_concurrency(apigw, metered_key, data_get, today):
    limit, attempts = 20, 60
    plan, key = metered_key(quota={"limit": limit, "period": "DAY"})
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: data_get(key["value"]).status, range(attempts)))
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == attempts - limit, statuses
    usage = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert usage["items"][key["id"]] == [[limit, 0]]
