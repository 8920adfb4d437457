"""API keys through boto3: CreateApiKey, GetApiKey, GetApiKeys, UpdateApiKey, DeleteApiKey."""

import datetime as dt
import time
import uuid


def _ts(value) -> float:
    """boto3 parses createdDate/lastUpdatedDate into datetimes; compare them as numbers."""
    assert isinstance(value, dt.datetime), f"not a timestamp: {value!r}"
    return value.timestamp()


def _collect_pages(call, limit, **kwargs):
    """Follow `position` until it is absent; return (items, pages)."""
    items, pages = [], []
    position = None
    for _ in range(1000):
        args = dict(kwargs, limit=limit)
        if position is not None:
            args["position"] = position
        page = call(**args)
        assert page["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert len(page.get("items", [])) <= limit, page
        pages.append(page)
        items.extend(page.get("items", []))
        position = page.get("position")
        if not position:
            return items, pages
    raise AssertionError("pagination never ended (position returned forever)")


def test_create_api_key_with_value(apigw, uniq, new_key_value):
    name, value, customer = uniq("k"), new_key_value(), uniq("cust")
    before = time.time()
    resp = apigw.create_api_key(
        name=name, description="made by the conformance suite", enabled=True, value=value,
        customerId=customer, tags={"suite": "conformance"},
    )
    after = time.time()
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert resp["ResponseMetadata"]["RequestId"]
    assert isinstance(resp["id"], str) and resp["id"]
    assert resp["id"] != value
    assert resp["value"] == value
    assert resp["name"] == name
    assert resp["description"] == "made by the conformance suite"
    assert resp["enabled"] is True
    assert resp["customerId"] == customer
    assert resp.get("tags") == {"suite": "conformance"}
    created = _ts(resp["createdDate"])
    assert before - 5 <= created <= after + 5
    assert _ts(resp["lastUpdatedDate"]) >= created - 1


def test_create_api_key_generates_value(apigw, uniq):
    a = apigw.create_api_key(name=uniq("gen"), enabled=True)
    b = apigw.create_api_key(name=uniq("gen"), enabled=True)
    for k in (a, b):
        assert k["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert isinstance(k["value"], str)
        assert 20 <= len(k["value"]) <= 128, k["value"]
        assert k["id"]
    assert a["id"] != b["id"]
    assert a["value"] != b["value"]
    got = apigw.get_api_key(apiKey=a["id"], includeValue=True)
    assert got["value"] == a["value"]


def test_create_api_key_enabled_defaults_to_false(apigw, uniq, new_key_value):
    resp = apigw.create_api_key(name=uniq("dis"), value=new_key_value())
    assert resp["enabled"] is False
    assert apigw.get_api_key(apiKey=resp["id"])["enabled"] is False


def test_create_api_key_value_length_bounds(apigw, uniq, expect_error):
    name = uniq("short")
    with expect_error("BadRequestException"):
        apigw.create_api_key(name=name, value="x" * 19, enabled=True)
    with expect_error("BadRequestException"):
        apigw.create_api_key(name=name, value="y" * 129, enabled=True)
    # nothing was created by the refused calls
    assert apigw.get_api_keys(nameQuery=name).get("items", []) == []
    # exactly 20 and exactly 128 characters are fine
    v20 = uuid.uuid4().hex[:20]
    v128 = (uuid.uuid4().hex * 4)[:128]
    assert apigw.create_api_key(name=uniq("b20"), value=v20)["value"] == v20
    assert apigw.create_api_key(name=uniq("b128"), value=v128)["value"] == v128


def test_create_api_key_duplicate_value_conflicts(apigw, uniq, new_key_value, expect_error):
    value = new_key_value()
    prefix = uniq("dup")
    first = apigw.create_api_key(name=prefix + "-a", value=value, enabled=True)
    with expect_error("ConflictException"):
        apigw.create_api_key(name=prefix + "-b", value=value, enabled=True)
    listed = apigw.get_api_keys(nameQuery=prefix, includeValues=True)["items"]
    assert [k["id"] for k in listed] == [first["id"]]
    assert listed[0]["value"] == value


def test_get_api_key_include_value(apigw, make_key, expect_error):
    key = make_key(description="d1", customerId="c1")
    with_value = apigw.get_api_key(apiKey=key["id"], includeValue=True)
    assert with_value["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert with_value["value"] == key["value"]
    for field in ("id", "name", "description", "customerId", "enabled"):
        assert with_value[field] == key[field], field
    assert _ts(with_value["createdDate"]) == _ts(key["createdDate"])

    without = apigw.get_api_key(apiKey=key["id"], includeValue=False)
    assert "value" not in without
    assert without["name"] == key["name"]
    default = apigw.get_api_key(apiKey=key["id"])
    assert "value" not in default

    with expect_error("NotFoundException"):
        apigw.get_api_key(apiKey="nosuchkey" + uuid.uuid4().hex[:8])


def test_get_api_keys_name_prefix_filter(apigw, make_key, uniq):
    prefix = uniq("pfx")
    mine = {make_key(name=f"{prefix}-{i}")["id"] for i in range(3)}
    # same characters but not as a prefix, and a longer unrelated name
    make_key(name=f"x{prefix}-0")
    make_key(name=f"{prefix[:-1]}")
    listed = apigw.get_api_keys(nameQuery=prefix)
    assert listed["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert {k["id"] for k in listed["items"]} == mine
    for k in listed["items"]:
        assert k["name"].startswith(prefix)
        assert "value" not in k


def test_get_api_keys_customer_id_filter(apigw, make_key, uniq):
    prefix = uniq("cst")
    c1, c2 = uniq("c1"), uniq("c2")
    a = make_key(name=prefix + "-a", customerId=c1)
    b = make_key(name=prefix + "-b", customerId=c1)
    c = make_key(name=prefix + "-c", customerId=c2)
    got = apigw.get_api_keys(customerId=c1)["items"]
    assert {k["id"] for k in got} == {a["id"], b["id"]}
    assert all(k["customerId"] == c1 for k in got)
    got = apigw.get_api_keys(customerId=c2, nameQuery=prefix)["items"]
    assert [k["id"] for k in got] == [c["id"]]
    assert apigw.get_api_keys(customerId=c2, nameQuery=prefix + "-a").get("items", []) == []


def test_get_api_keys_include_values(apigw, make_key, uniq):
    prefix = uniq("iv")
    keys = {k["id"]: k["value"] for k in (make_key(name=f"{prefix}-{i}") for i in range(2))}
    with_values = apigw.get_api_keys(nameQuery=prefix, includeValues=True)["items"]
    assert {k["id"]: k["value"] for k in with_values} == keys
    without = apigw.get_api_keys(nameQuery=prefix, includeValues=False)["items"]
    assert {k["id"] for k in without} == set(keys)
    assert all("value" not in k for k in without)


def test_get_api_keys_pagination(apigw, make_key, uniq):
    prefix = uniq("page")
    created = {make_key(name=f"{prefix}-{i:02d}")["id"] for i in range(5)}
    items, pages = _collect_pages(apigw.get_api_keys, 2, nameQuery=prefix, includeValues=True)
    ids = [k["id"] for k in items]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    assert set(ids) == created
    assert len(pages) >= 3
    assert all("value" in k for k in items)
    # a limit larger than the result gives one page and no position
    one = apigw.get_api_keys(nameQuery=prefix, limit=10)
    assert {k["id"] for k in one["items"]} == created
    assert "position" not in one


def test_update_api_key_fields(apigw, make_key, uniq):
    key = make_key(description="old", customerId="old-customer")
    new_name, new_customer = uniq("renamed"), uniq("cust")
    resp = apigw.update_api_key(apiKey=key["id"], patchOperations=[
        {"op": "replace", "path": "/name", "value": new_name},
        {"op": "replace", "path": "/description", "value": "new description"},
        {"op": "replace", "path": "/enabled", "value": "false"},
        {"op": "replace", "path": "/customerId", "value": new_customer},
    ])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["id"] == key["id"]
    assert resp["name"] == new_name
    assert resp["description"] == "new description"
    assert resp["enabled"] is False
    assert resp["customerId"] == new_customer
    assert _ts(resp["lastUpdatedDate"]) >= _ts(key["lastUpdatedDate"])
    assert _ts(resp["createdDate"]) == _ts(key["createdDate"])

    got = apigw.get_api_key(apiKey=key["id"], includeValue=True)
    assert (got["name"], got["description"], got["enabled"], got["customerId"]) == (
        new_name, "new description", False, new_customer)
    assert got["value"] == key["value"], "the value must never change"
    assert [k["id"] for k in apigw.get_api_keys(customerId=new_customer)["items"]] == [key["id"]]
    assert [k["id"] for k in apigw.get_api_keys(nameQuery=new_name)["items"]] == [key["id"]]

    # and back on, one operation at a time
    again = apigw.update_api_key(apiKey=key["id"], patchOperations=[
        {"op": "replace", "path": "/enabled", "value": "true"}])
    assert again["enabled"] is True
    assert again["name"] == new_name


def test_update_api_key_invalid_changes_nothing(apigw, make_key, expect_error, uniq):
    key = make_key(description="keep")
    before = apigw.get_api_key(apiKey=key["id"], includeValue=True)
    bad_patches = [
        [{"op": "replace", "path": "/nope", "value": "x"}],
        # valid first operation, invalid second: nothing may be applied
        [{"op": "replace", "path": "/name", "value": uniq("partial")},
         {"op": "replace", "path": "/bogus", "value": "x"}],
        [{"op": "replace", "path": "/description", "value": "changed"},
         {"op": "move", "path": "/name", "from": "/description"}],
        [{"op": "replace", "path": "/enabled", "value": "maybe"}],
    ]
    for ops in bad_patches:
        with expect_error("BadRequestException"):
            apigw.update_api_key(apiKey=key["id"], patchOperations=ops)
    after = apigw.get_api_key(apiKey=key["id"], includeValue=True)
    for field in ("name", "description", "enabled", "value", "customerId"):
        assert after.get(field) == before.get(field), field
    assert _ts(after["lastUpdatedDate"]) == _ts(before["lastUpdatedDate"])

    with expect_error("NotFoundException"):
        apigw.update_api_key(apiKey="nosuchkey" + uuid.uuid4().hex[:8], patchOperations=[
            {"op": "replace", "path": "/name", "value": "x"}])


def test_delete_api_key(apigw, make_key, delete_then_gone):
    key = make_key()
    delete_then_gone(apigw.delete_api_key, apigw.get_api_key, apiKey=key["id"])
    assert apigw.get_api_keys(nameQuery=key["name"]).get("items", []) == []
