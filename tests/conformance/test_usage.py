"""GetUsage and UpdateUsage through boto3 (usage counted from real data-plane requests)."""

import uuid

import pytest

from conftest import http_request, make_client

REMAINING_10 = [{"op": "replace", "path": "/remaining", "value": "10"}]


def _admit(data_get, value, n):
    for i in range(n):
        r = data_get(value)
        assert r.status == 200, f"request {i + 1}/{n} was refused: {r!r}"


def test_get_usage_counts_admitted_requests(apigw, metered_key, make_key, attach, data_get, today):
    plan, key = metered_key(quota={"limit": 10, "period": "DAY"})
    idle = make_key()
    attach(plan["id"], idle["id"])
    _admit(data_get, key["value"], 4)

    usage = apigw.get_usage(usagePlanId=plan["id"], startDate=today, endDate=today)
    assert usage["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert usage["usagePlanId"] == plan["id"]
    assert usage["startDate"] == today
    assert usage["endDate"] == today
    items = usage["items"]
    assert items[key["id"]] == [[4, 6]], "keyed by key id, one [used, remaining] per day"
    assert key["value"] not in items, "usage must be keyed by key id, not by value"
    assert items.get(idle["id"], [[0, 10]]) == [[0, 10]]
    for pairs in items.values():
        for pair in pairs:
            assert all(type(x) is int for x in pair)

    only = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert only["items"] == {key["id"]: [[4, 6]]}


def test_get_usage_one_pair_per_day(apigw, metered_key, data_get, util):
    plan, key = metered_key(quota={"limit": 50, "period": "DAY"})
    _admit(data_get, key["value"], 2)
    start, end = util.utc_day(-2), util.utc_day(0)
    usage = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=start, endDate=end)
    assert (usage["startDate"], usage["endDate"]) == (start, end)
    days = usage["items"][key["id"]]
    assert len(days) == 3, days
    assert days[-1] == [2, 48]
    assert [d[0] for d in days[:-1]] == [0, 0]


def test_get_usage_errors(apigw, metered_key, today, expect_error):
    plan, _ = metered_key(quota={"limit": 10, "period": "DAY"})
    with expect_error("NotFoundException"):
        apigw.get_usage(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6],
                        startDate=today, endDate=today)
    with expect_error("BadRequestException"):
        apigw.get_usage(usagePlanId=plan["id"], startDate="not-a-date", endDate=today)
    with expect_error("BadRequestException"):
        apigw.get_usage(usagePlanId=plan["id"], startDate=today, endDate="2024-13-45")


def test_update_usage_sets_remaining(apigw, metered_key, data_get, today):
    plan, key = metered_key(quota={"limit": 100, "period": "DAY"})
    _admit(data_get, key["value"], 2)
    resp = apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=REMAINING_10)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["usagePlanId"] == plan["id"]
    assert resp["items"] == {key["id"]: [[2, 10]]}
    got = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert got["items"][key["id"]] == [[2, 10]]

    # above the plan's limit is allowed (an extension for the current period)
    resp = apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=[
        {"op": "replace", "path": "/remaining", "value": "1000"}])
    assert resp["items"] == {key["id"]: [[2, 1000]]}
    _admit(data_get, key["value"], 1)
    got = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert got["items"][key["id"]] == [[3, 999]]

    # zero shuts the key out for the rest of the period
    resp = apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=[
        {"op": "replace", "path": "/remaining", "value": "0"}])
    assert resp["items"] == {key["id"]: [[3, 0]]}
    refused = data_get(key["value"])
    assert refused.status == 429
    assert refused.body == b'{"message":"Limit Exceeded"}'


@pytest.mark.parametrize("ops", [
    [{"op": "replace", "path": "/remaining", "value": "-1"}],
    [{"op": "replace", "path": "/remaining", "value": "1.5"}],
    [{"op": "replace", "path": "/remaining", "value": "ten"}],
    [{"op": "replace", "path": "/remaining", "value": ""}],
    [{"op": "add", "path": "/remaining", "value": "1.5"}],
    [{"op": "add", "path": "/remaining", "value": "+1"}],
    [{"op": "add", "path": "/remaining", "value": "2147483648"}],
    [{"op": "remove", "path": "/remaining"}],
    [{"op": "copy", "path": "/remaining", "from": "/used"}],
    [{"op": "move", "path": "/remaining", "from": "/used"}],
    [{"op": "replace", "path": "/used", "value": "10"}],
    [{"op": "replace", "path": "/nope", "value": "10"}],
    [{"op": "replace", "path": "/remaining", "value": "20"},
     {"op": "add", "path": "/remaining", "value": "30"}],
    [{"op": "add", "path": "/remaining", "value": "30"}],
], ids=["negative", "fraction", "word", "empty", "add-fraction", "add-plus", "add-too-large",
        "remove", "copy", "move", "used-path", "unknown-path", "replace-then-add",
        "add-without-top-ups"])
def test_update_usage_bad_patch_is_bad_request_and_changes_nothing(
        apigw, metered_key, data_get, today, expect_error, ops):
    plan, key = metered_key(quota={"limit": 100, "period": "DAY"})
    _admit(data_get, key["value"], 1)
    apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=REMAINING_10)
    with expect_error("BadRequestException"):
        apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=ops)
    got = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert got["items"][key["id"]] == [[1, 10]]


def test_update_usage_add_extension_tops_up_atomically(top_ups_gateway, uniq, new_key_value,
                                                       today):
    """`add /remaining` (this gateway's extension, `--admin-top-ups`): signed, floored at 0,
    enforced at once."""
    apigw = make_client(top_ups_gateway.admin_url)
    plan = apigw.create_usage_plan(name=uniq("plan"), quota={"limit": 100, "period": "DAY"})
    key = apigw.create_api_key(name=uniq("key"), value=new_key_value(), enabled=True)
    apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")

    def data_get(value):
        return http_request(top_ups_gateway.data_url, "GET", "/anything", None, {"x-api-key": value})

    _admit(data_get, key["value"], 1)
    apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=REMAINING_10)

    def add(value: str):
        return apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=[
            {"op": "add", "path": "/remaining", "value": value}])["items"][key["id"]]

    assert add("500") == [[1, 510]]
    assert add("-10") == [[1, 500]]
    assert add("-100000") == [[1, 0]]
    assert data_get(key["value"]).status == 429
    assert add("1") == [[1, 1]]
    assert data_get(key["value"]).status == 200
    got = apigw.get_usage(usagePlanId=plan["id"], keyId=key["id"], startDate=today, endDate=today)
    assert got["items"][key["id"]] == [[2, 0]]


def test_update_usage_not_found(apigw, metered_key, make_key, data_get, today, expect_error):
    plan, key = metered_key(quota={"limit": 100, "period": "DAY"})
    outsider = make_key()
    _admit(data_get, key["value"], 1)
    apigw.update_usage(usagePlanId=plan["id"], keyId=key["id"], patchOperations=REMAINING_10)

    with expect_error("NotFoundException"):
        apigw.update_usage(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6], keyId=key["id"],
                           patchOperations=REMAINING_10)
    with expect_error("NotFoundException"):
        apigw.update_usage(usagePlanId=plan["id"], keyId="nosuchkey" + uuid.uuid4().hex[:6],
                           patchOperations=REMAINING_10)
    with expect_error("NotFoundException"):  # exists, but is not in this plan
        apigw.update_usage(usagePlanId=plan["id"], keyId=outsider["id"],
                           patchOperations=[{"op": "replace", "path": "/remaining", "value": "3"}])

    got = apigw.get_usage(usagePlanId=plan["id"], startDate=today, endDate=today)
    assert got["items"][key["id"]] == [[1, 10]]
    assert outsider["id"] not in got["items"]
