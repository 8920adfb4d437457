"""Usage-plan keys through boto3: Create/Get/GetAll/Delete UsagePlanKey."""

import uuid


def _other_stage():
    return {"apiId": "conf" + uuid.uuid4().hex[:8], "stage": "s1"}


def test_create_usage_plan_key(apigw, make_plan, make_key, expect_error):
    plan, key = make_plan(), make_key()
    resp = apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert resp["id"] == key["id"]
    assert resp["type"] == "API_KEY"
    assert resp["name"] == key["name"]
    assert resp["value"] == key["value"]

    with expect_error("ConflictException"):
        apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    with expect_error("NotFoundException"):
        apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId="nosuchkey" + uuid.uuid4().hex[:6],
                                    keyType="API_KEY")
    with expect_error("NotFoundException"):
        apigw.create_usage_plan_key(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6],
                                    keyId=key["id"], keyType="API_KEY")
    # the failed calls changed nothing
    assert [k["id"] for k in apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]] == [key["id"]]


def test_create_usage_plan_key_checks_the_key_first(apigw, make_plan, expect_error):
    """Both ids unknown: AWS names the key, not the plan."""
    with expect_error("NotFoundException") as error:
        apigw.create_usage_plan_key(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6],
                                    keyId="nosuchkey" + uuid.uuid4().hex[:6], keyType="API_KEY")
    assert error.value.response["Error"]["Message"] == "Invalid API Key identifier specified"
    plan = make_plan()
    with expect_error("NotFoundException") as error:
        apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId="nosuchkey" + uuid.uuid4().hex[:6],
                                    keyType="API_KEY")
    assert error.value.response["Error"]["Message"] == "Invalid API Key identifier specified"
    assert apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"] == []


def test_key_in_two_plans_covering_the_same_stage_conflicts(apigw, make_plan, make_key, attach,
                                                            expect_error):
    key = make_key()
    everywhere = make_plan()  # no apiStages: applies to every stage
    attach(everywhere["id"], key["id"])
    also_everywhere = make_plan()
    with expect_error("ConflictException"):
        apigw.create_usage_plan_key(usagePlanId=also_everywhere["id"], keyId=key["id"],
                                    keyType="API_KEY")
    gateway_prod = make_plan(apiStages=[{"apiId": "gateway", "stage": "prod"}])
    with expect_error("ConflictException"):
        apigw.create_usage_plan_key(usagePlanId=gateway_prod["id"], keyId=key["id"],
                                    keyType="API_KEY")
    assert {p["id"] for p in apigw.get_usage_plans(keyId=key["id"])["items"]} == {everywhere["id"]}

    # plans on disjoint stages can share a key
    other = make_key()
    p1, p2 = make_plan(apiStages=[_other_stage()]), make_plan(apiStages=[_other_stage()])
    attach(p1["id"], other["id"])
    attach(p2["id"], other["id"])
    assert {p["id"] for p in apigw.get_usage_plans(keyId=other["id"])["items"]} == {p1["id"], p2["id"]}


def test_get_usage_plan_key(apigw, make_plan, make_key, attach, expect_error):
    plan, key, outsider = make_plan(), make_key(), make_key()
    attach(plan["id"], key["id"])
    got = apigw.get_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"])
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (got["id"], got["type"], got["name"], got["value"]) == (
        key["id"], "API_KEY", key["name"], key["value"])
    with expect_error("NotFoundException"):
        apigw.get_usage_plan_key(usagePlanId=plan["id"], keyId=outsider["id"])
    with expect_error("NotFoundException"):
        apigw.get_usage_plan_key(usagePlanId=plan["id"], keyId="nosuchkey" + uuid.uuid4().hex[:6])
    with expect_error("NotFoundException"):
        apigw.get_usage_plan_key(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6], keyId=key["id"])


def test_get_usage_plan_keys_name_filter_and_pagination(apigw, make_plan, make_key, attach, uniq,
                                                        expect_error):
    plan = make_plan()
    prefix = uniq("pk")
    alpha = [make_key(name=f"{prefix}-alpha-{i}") for i in range(2)]
    beta = make_key(name=f"{prefix}-beta")
    for k in alpha + [beta]:
        attach(plan["id"], k["id"])

    everything = apigw.get_usage_plan_keys(usagePlanId=plan["id"])
    assert everything["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert {k["id"]: (k["type"], k["name"], k["value"]) for k in everything["items"]} == {
        k["id"]: ("API_KEY", k["name"], k["value"]) for k in alpha + [beta]}

    filtered = apigw.get_usage_plan_keys(usagePlanId=plan["id"], nameQuery=f"{prefix}-alpha")
    assert {k["id"] for k in filtered["items"]} == {k["id"] for k in alpha}
    none = apigw.get_usage_plan_keys(usagePlanId=plan["id"], nameQuery=f"{prefix}-gamma")
    assert none.get("items", []) == []

    seen, position, pages = [], None, 0
    while True:
        args = {"usagePlanId": plan["id"], "limit": 2}
        if position:
            args["position"] = position
        page = apigw.get_usage_plan_keys(**args)
        pages += 1
        assert len(page.get("items", [])) <= 2
        seen += [k["id"] for k in page.get("items", [])]
        position = page.get("position")
        if not position:
            break
        assert pages < 50, "pagination never ended"
    assert sorted(seen) == sorted(k["id"] for k in alpha + [beta])
    assert pages >= 2

    with expect_error("NotFoundException"):
        apigw.get_usage_plan_keys(usagePlanId="nosuchplan" + uuid.uuid4().hex[:6])


def test_delete_usage_plan_key(apigw, make_plan, make_key, attach, delete_then_gone):
    plan, key, stays = make_plan(), make_key(), make_key()
    attach(plan["id"], key["id"])
    attach(plan["id"], stays["id"])
    delete_then_gone(apigw.delete_usage_plan_key, apigw.get_usage_plan_key,
                     usagePlanId=plan["id"], keyId=key["id"])
    assert [k["id"] for k in apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]] == [stays["id"]]
    # the API key itself survives
    assert apigw.get_api_key(apiKey=key["id"])["id"] == key["id"]
    assert apigw.get_usage_plans(keyId=key["id"]).get("items", []) == []
    # and can be attached again
    again = apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    assert again["id"] == key["id"]
