"""Usage plans through boto3: Create/Get/GetAll/Update/Delete UsagePlan."""

import uuid

import pytest

GATEWAY_STAGE = {"apiId": "gateway", "stage": "prod"}


def _plan_view(plan: dict) -> dict:
    """The comparable part of a UsagePlan (no response metadata; empty == absent)."""
    out = {k: v for k, v in plan.items() if k != "ResponseMetadata"}
    if not out.get("apiStages"):
        out.pop("apiStages", None)
    else:
        out["apiStages"] = [
            {k: v for k, v in s.items() if not (k == "throttle" and not v)}
            for s in out["apiStages"]
        ]
    if not out.get("tags"):
        out.pop("tags", None)
    if "quota" in out:
        out["quota"] = dict(out["quota"])
        out["quota"].setdefault("offset", 0)
    return out


def _collect_pages(call, limit, **kwargs):
    items, position = [], None
    for _ in range(1000):
        args = dict(kwargs, limit=limit)
        if position is not None:
            args["position"] = position
        page = call(**args)
        assert len(page.get("items", [])) <= limit, page
        items.extend(page.get("items", []))
        position = page.get("position")
        if not position:
            return items
    raise AssertionError("pagination never ended (position returned forever)")


def _other_stage():
    return {"apiId": "conf" + uuid.uuid4().hex[:8], "stage": "s1"}


def test_create_usage_plan_round_trips_every_field(apigw, uniq):
    spec = dict(
        name=uniq("plan"),
        description="a plan with everything",
        throttle={"rateLimit": 0.5, "burstLimit": 7},
        quota={"limit": 1000, "offset": 0, "period": "WEEK"},
        apiStages=[{"apiId": "gateway", "stage": "prod",
                    "throttle": {"/pets/GET": {"rateLimit": 1.5, "burstLimit": 3}}}],
        tags={"suite": "conformance"},
    )
    resp = apigw.create_usage_plan(**spec)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert isinstance(resp["id"], str) and resp["id"]
    assert resp["name"] == spec["name"]
    assert resp["description"] == spec["description"]
    assert resp["throttle"] == {"rateLimit": 0.5, "burstLimit": 7}
    assert isinstance(resp["throttle"]["rateLimit"], float)
    assert type(resp["throttle"]["burstLimit"]) is int
    assert resp["quota"]["limit"] == 1000 and type(resp["quota"]["limit"]) is int
    assert resp["quota"]["period"] == "WEEK"
    assert resp["quota"].get("offset", 0) == 0
    assert resp["apiStages"] == spec["apiStages"]
    m = resp["apiStages"][0]["throttle"]["/pets/GET"]
    assert isinstance(m["rateLimit"], float) and type(m["burstLimit"]) is int
    assert resp.get("tags") == {"suite": "conformance"}

    got = apigw.get_usage_plan(usagePlanId=resp["id"])
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert _plan_view(got) == _plan_view(resp)


def test_create_usage_plan_minimal_omits_throttle_and_quota(apigw, uniq):
    resp = apigw.create_usage_plan(name=uniq("min"))
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
    got = apigw.get_usage_plan(usagePlanId=resp["id"])
    assert "throttle" not in got
    assert "quota" not in got
    assert got.get("apiStages", []) == []
    assert got["name"] == resp["name"]


def test_create_usage_plan_quota_offset_and_month(apigw, uniq):
    resp = apigw.create_usage_plan(
        name=uniq("off"), quota={"limit": 500, "offset": 20, "period": "MONTH"},
        throttle={"rateLimit": 100.0, "burstLimit": 200})
    assert resp["quota"] == {"limit": 500, "offset": 20, "period": "MONTH"}
    assert resp["throttle"] == {"rateLimit": 100.0, "burstLimit": 200}
    assert apigw.get_usage_plan(usagePlanId=resp["id"])["quota"] == resp["quota"]


def test_create_usage_plan_partial_throttle_takes_the_missing_half(apigw, make_plan):
    # A throttle of one field gets the other from it (README: "How this
    # differs from AWS"), not a zero that would refuse every request.
    rate_only = make_plan(throttle={"rateLimit": 2.5})
    assert rate_only["throttle"] == {"rateLimit": 2.5, "burstLimit": 3}
    burst_only = make_plan(
        throttle={"burstLimit": 7},
        apiStages=[{"apiId": "other", "stage": "s",
                    "throttle": {"/pets/GET": {"rateLimit": 0.1}}}])
    assert burst_only["throttle"] == {"rateLimit": 7.0, "burstLimit": 7}
    stage_throttle = burst_only["apiStages"][0]["throttle"]["/pets/GET"]
    assert stage_throttle == {"rateLimit": 0.1, "burstLimit": 1}
    for plan in (rate_only, burst_only):
        assert apigw.get_usage_plan(usagePlanId=plan["id"])["throttle"] == plan["throttle"]


def test_update_usage_plan_new_quota_needs_limit_and_period(apigw, make_plan, expect_error):
    plan = make_plan()
    for ops in (
        [{"op": "add", "path": "/quota/period", "value": "WEEK"}],
        [{"op": "replace", "path": "/quota/limit", "value": "100"}],
        [{"op": "replace", "path": "/quota/offset", "value": "1"}],
    ):
        with expect_error("BadRequestException"):
            apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
        assert "quota" not in apigw.get_usage_plan(usagePlanId=plan["id"])
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "add", "path": "/quota/limit", "value": "100"},
        {"op": "add", "path": "/quota/period", "value": "WEEK"},
    ])
    assert resp["quota"] == {"limit": 100, "offset": 0, "period": "WEEK"}


def test_update_usage_plan_offset_above_the_limit(apigw, make_plan, make_key, attach, data_get,
                                                  expect_error):
    """AWS accepts any offset >= 0; the initial period then allows max(0, limit - offset)."""
    plan, key = make_plan(), make_key()
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "add", "path": "/quota/limit", "value": "1"},
        {"op": "add", "path": "/quota/offset", "value": "2"},
        {"op": "add", "path": "/quota/period", "value": "DAY"},
    ])
    assert resp["quota"] == {"limit": 1, "offset": 2, "period": "DAY"}
    assert apigw.get_usage_plan(usagePlanId=plan["id"])["quota"] == resp["quota"]
    attach(plan["id"], key["id"])
    refused = data_get(key["value"])
    assert refused.status == 429, refused
    assert refused.body == b'{"message":"Limit Exceeded"}'
    # beyond AWS's 32-bit Integer: refused, and nothing changes
    with expect_error("BadRequestException"):
        apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
            {"op": "replace", "path": "/quota/offset", "value": str(2**31)}])
    assert apigw.get_usage_plan(usagePlanId=plan["id"])["quota"] == resp["quota"]


def test_get_usage_plan_unknown(apigw, expect_error):
    with expect_error("NotFoundException"):
        apigw.get_usage_plan(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6])


def test_get_usage_plans_pagination(apigw, make_plan):
    created = {make_plan(description=f"page {i}")["id"] for i in range(5)}
    items = _collect_pages(apigw.get_usage_plans, 2)
    ids = [p["id"] for p in items]
    assert len(ids) == len(set(ids)), "a plan appeared on two pages"
    assert created <= set(ids)
    by_id = {p["id"]: p for p in items}
    for pid in created:
        assert by_id[pid]["description"].startswith("page ")


def test_get_usage_plans_key_id_filter(apigw, make_plan, make_key, attach):
    key = make_key()
    a = make_plan(apiStages=[_other_stage()])
    b = make_plan(apiStages=[_other_stage()])
    c = make_plan(apiStages=[_other_stage()])
    make_plan()  # a plan without the key
    for p in (a, b, c):
        attach(p["id"], key["id"])
    listed = apigw.get_usage_plans(keyId=key["id"])["items"]
    assert {p["id"] for p in listed} == {a["id"], b["id"], c["id"]}
    paged = _collect_pages(apigw.get_usage_plans, 2, keyId=key["id"])
    assert sorted(p["id"] for p in paged) == sorted([a["id"], b["id"], c["id"]])
    lonely = make_key()
    assert apigw.get_usage_plans(keyId=lonely["id"]).get("items", []) == []


def test_update_usage_plan_scalar_fields(apigw, make_plan, uniq):
    plan = make_plan(description="before", throttle={"rateLimit": 10.0, "burstLimit": 20},
                     quota={"limit": 1000, "period": "DAY"})
    new_name = uniq("renamed")
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "replace", "path": "/name", "value": new_name},
        {"op": "replace", "path": "/description", "value": "after"},
        {"op": "replace", "path": "/throttle/rateLimit", "value": "2.5"},
        {"op": "replace", "path": "/throttle/burstLimit", "value": "4"},
        {"op": "replace", "path": "/quota/limit", "value": "500"},
        {"op": "replace", "path": "/quota/period", "value": "MONTH"},
    ])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["id"] == plan["id"]
    assert resp["name"] == new_name
    assert resp["description"] == "after"
    assert resp["throttle"] == {"rateLimit": 2.5, "burstLimit": 4}
    assert type(resp["throttle"]["burstLimit"]) is int
    assert resp["quota"]["limit"] == 500 and type(resp["quota"]["limit"]) is int
    assert resp["quota"]["period"] == "MONTH"
    assert _plan_view(apigw.get_usage_plan(usagePlanId=plan["id"])) == _plan_view(resp)

    # fractional rate limits keep their value through a patch
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "replace", "path": "/throttle/rateLimit", "value": "0.1"}])
    assert resp["throttle"]["rateLimit"] == pytest.approx(0.1)
    assert resp["throttle"]["burstLimit"] == 4


def test_update_usage_plan_api_stages_and_method_throttle(apigw, make_plan):
    plan = make_plan(apiStages=[{"apiId": "gateway", "stage": "prod",
                                 "throttle": {"/pets/GET": {"rateLimit": 1.0, "burstLimit": 2}}}])
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "replace", "path": "/apiStages/gateway:prod/throttle//pets/GET/rateLimit",
         "value": "7.5"}])
    assert resp["apiStages"] == [{"apiId": "gateway", "stage": "prod",
                                  "throttle": {"/pets/GET": {"rateLimit": 7.5, "burstLimit": 2}}}]
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "replace", "path": "/apiStages/gateway:prod/throttle//pets/GET/burstLimit",
         "value": "9"}])
    assert resp["apiStages"][0]["throttle"] == {"/pets/GET": {"rateLimit": 7.5, "burstLimit": 9}}
    got = apigw.get_usage_plan(usagePlanId=plan["id"])
    assert got["apiStages"][0]["throttle"] == {"/pets/GET": {"rateLimit": 7.5, "burstLimit": 9}}

    # remove the stage
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "remove", "path": "/apiStages", "value": "gateway:prod"}])
    assert resp.get("apiStages", []) == []
    assert apigw.get_usage_plan(usagePlanId=plan["id"]).get("apiStages", []) == []

    # add it back: a bare stage, no method throttles
    resp = apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=[
        {"op": "add", "path": "/apiStages", "value": "gateway:prod"}])
    assert len(resp["apiStages"]) == 1
    stage = resp["apiStages"][0]
    assert (stage["apiId"], stage["stage"]) == ("gateway", "prod")
    assert not stage.get("throttle")


def test_update_usage_plan_invalid_changes_nothing(apigw, make_plan, uniq, expect_error):
    plan = make_plan(description="unchanged", throttle={"rateLimit": 3.0, "burstLimit": 6},
                     quota={"limit": 100, "period": "DAY"},
                     apiStages=[{"apiId": "gateway", "stage": "prod"}])
    before = _plan_view(apigw.get_usage_plan(usagePlanId=plan["id"]))
    bad_patches = [
        [{"op": "replace", "path": "/nope", "value": "x"}],
        [{"op": "replace", "path": "/name", "value": uniq("partial")},
         {"op": "replace", "path": "/throttle/unknownLimit", "value": "1"}],
        [{"op": "replace", "path": "/description", "value": "changed"},
         {"op": "replace", "path": "/throttle/burstLimit", "value": "many"}],
        [{"op": "replace", "path": "/quota/period", "value": "YEAR"}],
        [{"op": "replace", "path": "/quota/limit", "value": "-5"}],
        [{"op": "copy", "path": "/name", "from": "/description"}],
    ]
    for ops in bad_patches:
        with expect_error("BadRequestException"):
            apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
    assert _plan_view(apigw.get_usage_plan(usagePlanId=plan["id"])) == before

    with expect_error("NotFoundException"):
        apigw.update_usage_plan(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6],
                                patchOperations=[{"op": "replace", "path": "/name", "value": "x"}])


def test_delete_usage_plan(apigw, make_plan, delete_then_gone):
    plan = make_plan()
    delete_then_gone(apigw.delete_usage_plan, apigw.get_usage_plan, usagePlanId=plan["id"])
    ids = {p["id"] for p in _collect_pages(apigw.get_usage_plans, 100)}
    assert plan["id"] not in ids
