"""ImportApiKeys (`POST /apikeys?mode=import&format=csv`) through boto3."""

import uuid


def _value() -> str:
    # imported keys must be 30-128 characters
    return "imp" + uuid.uuid4().hex + uuid.uuid4().hex[:5]


# A header row naming every column ImportApiKeys reads (in any order and letter case).
COLUMNS = "name,key,description,enabled,usageplanIds\n"


def _good_and_short(prefix: str, good_value: str) -> str:
    """A CSV of `{prefix}-good` (key `good_value`) and `{prefix}-bad`, whose key is too short."""
    return (
        COLUMNS
        + f"{prefix}-good,{good_value},ok,true,\n"
        + f"{prefix}-bad,short,too short a key,true,\n"
    )


def _imported(apigw, csv: str, **options) -> dict:
    """ImportApiKeys of `csv`: 201, or the test fails; the response."""
    resp = apigw.import_api_keys(body=csv.encode(), format="csv", **options)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
    return resp


def _by_name(apigw, prefix):
    return {k["name"]: k for k in apigw.get_api_keys(nameQuery=prefix, includeValues=True)
            .get("items", [])}


def test_import_api_keys_csv(apigw, make_plan, uniq, data_get):
    plan = make_plan()
    prefix = uniq("imp")
    v1, v2 = _value(), _value()
    csv = (
        COLUMNS
        + f"{prefix}-1,{v1},first imported,TRUE,{plan['id']}\n"
        + f"{prefix}-2,{v2},second imported,false,{plan['id']}\n"
    )
    resp = _imported(apigw, csv, failOnWarnings=True)
    ids = resp["ids"]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert resp.get("warnings", []) == []

    keys = {}
    for key_id in ids:
        k = apigw.get_api_key(apiKey=key_id, includeValue=True)
        keys[k["name"]] = k
    assert set(keys) == {f"{prefix}-1", f"{prefix}-2"}
    k1, k2 = keys[f"{prefix}-1"], keys[f"{prefix}-2"]
    assert (k1["value"], k1["description"], k1["enabled"]) == (v1, "first imported", True)
    assert (k2["value"], k2["description"], k2["enabled"]) == (v2, "second imported", False)

    # attached to the plan named in usageplanIds
    plan_keys = apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    assert {pk["id"]: pk["value"] for pk in plan_keys} == {k1["id"]: v1, k2["id"]: v2}
    assert {pk["id"] for pk in apigw.get_usage_plans(keyId=k1["id"])["items"]} == {plan["id"]}

    # and live on the data plane: enabled key admitted, disabled key refused
    assert data_get(v1).status == 200
    assert data_get(v2).status == 403


def test_import_api_keys_header_case_order_and_defaults(apigw, uniq):
    prefix = uniq("imph")
    v1, v2 = _value(), _value()
    # any column order, header names case-insensitive, unknown columns ignored,
    # Enabled defaults to true, Description optional
    csv = (
        "Key,Ignored Column,Name\n"
        f"{v1},whatever,{prefix}-a\n"
        f"{v2},,{prefix}-b\n"
    )
    resp = _imported(apigw, csv)
    assert len(resp["ids"]) == 2
    got = _by_name(apigw, prefix)
    assert {n: (k["value"], k["enabled"]) for n, k in got.items()} == {
        f"{prefix}-a": (v1, True), f"{prefix}-b": (v2, True)}
    assert {k["id"] for k in got.values()} == set(resp["ids"])


def test_import_api_keys_fail_on_warnings_true_rolls_back(apigw, uniq, expect_error):
    prefix = uniq("impf")
    csv = _good_and_short(prefix, _value())
    with expect_error("BadRequestException"):
        apigw.import_api_keys(body=csv.encode(), format="csv", failOnWarnings=True)
    assert _by_name(apigw, prefix) == {}, "failOnWarnings=true must import nothing"


def test_import_api_keys_fail_on_warnings_false_imports_good_rows(apigw, uniq):
    prefix = uniq("impw")
    good = _value()
    resp = _imported(apigw, _good_and_short(prefix, good), failOnWarnings=False)
    assert len(resp["ids"]) == 1
    assert resp.get("warnings"), "the refused row must be reported as a warning"
    got = _by_name(apigw, prefix)
    assert set(got) == {f"{prefix}-good"}
    assert got[f"{prefix}-good"]["value"] == good
    assert got[f"{prefix}-good"]["id"] == resp["ids"][0]


def test_import_api_keys_without_key_column_is_bad_request(apigw, uniq, expect_error):
    prefix = uniq("impn")
    csv = f"name,description\n{prefix}-x,no key column\n"
    with expect_error("BadRequestException"):
        apigw.import_api_keys(body=csv.encode(), format="csv")
    assert _by_name(apigw, prefix) == {}
