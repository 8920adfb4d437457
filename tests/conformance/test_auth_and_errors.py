"""SigV4 authentication, AWS-shaped errors, request ids, and raw wire shapes."""

import datetime as dt
import json
import urllib.error
import urllib.request
import uuid

import botocore.exceptions
import pytest


def _assert_aws_error(resp, status, code_prefix=None):
    assert resp.status == status, resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    body = resp.json()
    assert isinstance(body.get("message"), str) and body["message"], resp
    etype = resp.header("x-amzn-ErrorType")
    assert etype, f"no x-amzn-ErrorType header: {resp!r}"
    if code_prefix:
        assert etype.startswith(code_prefix), etype
    assert resp.header("x-amzn-RequestId"), f"no x-amzn-RequestId: {resp!r}"


def _client_error(call):
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        call()
    return ei.value.response


# -- authentication ------------------------------------------------------------------------


def test_unsigned_request_is_missing_authentication_token(admin_url):
    req = urllib.request.Request(admin_url + "/usageplans", method="GET",
                                 headers={"Accept": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=15)
    err = ei.value
    body = err.read()
    assert err.code == 403
    assert (err.headers.get("x-amzn-ErrorType") or "").startswith(
        "MissingAuthenticationTokenException"), dict(err.headers)
    assert err.headers.get("x-amzn-RequestId")
    assert json.loads(body).get("message")


def test_unsigned_write_changes_nothing(unsigned_request, apigw, uniq):
    name = uniq("unsigned")
    resp = unsigned_request("POST", "/apikeys", json.dumps({"name": name, "enabled": True}).encode(),
                            {"Content-Type": "application/json", "Accept": "application/json"})
    _assert_aws_error(resp, 403, "MissingAuthenticationTokenException")
    assert apigw.get_api_keys(nameQuery=name).get("items", []) == []


def test_wrong_secret_is_invalid_signature(client_factory, apigw, uniq):
    bad = client_factory(secret_key="not-the-conformance-secret")
    err = _client_error(lambda: bad.get_usage_plans())
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["ResponseMetadata"].get("RequestId")

    name = uniq("badsig")
    err = _client_error(lambda: bad.create_api_key(name=name, enabled=True))
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert apigw.get_api_keys(nameQuery=name).get("items", []) == [], "refused write had effect"


def test_unknown_access_key_is_unrecognized_client(client_factory):
    stranger = client_factory(access_key="AKIDUNKNOWN" + uuid.uuid4().hex[:8].upper())
    err = _client_error(lambda: stranger.get_api_keys())
    assert err["Error"]["Code"] == "UnrecognizedClientException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_expired_signature_is_rejected(signed_request):
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    resp = signed_request("GET", "/usageplans", when=old)
    _assert_aws_error(resp, 403, "InvalidSignatureException")
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    resp = signed_request("GET", "/usageplans", when=future)
    _assert_aws_error(resp, 403, "InvalidSignatureException")
    # the same helper with the current time is accepted (so the two refusals above are real)
    assert signed_request("GET", "/usageplans").status == 200


def test_tampered_body_is_invalid_signature(signed_request, apigw, uniq):
    name = uniq("tamper")
    signed_body = json.dumps({"name": uniq("signed")}).encode()
    sent_body = json.dumps({"name": name}).encode()
    assert len(signed_body) == len(sent_body)
    resp = signed_request("POST", "/usageplans", signed_body,
                          {"Content-Type": "application/json"}, send_body=sent_body)
    _assert_aws_error(resp, 403, "InvalidSignatureException")
    plans = apigw.get_paginator("get_usage_plans").paginate().build_full_result()
    assert name not in {p["name"] for p in plans.get("items", [])}


def test_signature_for_another_service_is_rejected(signed_request):
    resp = signed_request("GET", "/usageplans", service="execute-api")
    assert resp.status == 403, resp
    assert resp.header("x-amzn-ErrorType"), resp
    assert resp.header("x-amzn-ErrorType").split(":")[0] in (
        "InvalidSignatureException", "IncompleteSignatureException"), resp


def test_signature_over_percent_encoded_path_and_query(apigw, make_key, uniq, today, expect_error):
    # path labels with '/', ':', ' ', '~' and a query with ' ', '+', '&', '=', '/', non-ASCII
    # all have to verify (double-encoded canonical URI) and then route to the right resource.
    with expect_error("NotFoundException"):
        apigw.get_usage_plan(usagePlanId="up 1/x~y")
    with expect_error("NotFoundException"):
        apigw.update_usage(usagePlanId="up 1/x~y", keyId="k:1", patchOperations=[
            {"op": "replace", "path": "/remaining", "value": "1"}])
    with expect_error("NotFoundException"):
        apigw.get_usage(usagePlanId="up 1/x~y", keyId="k:1 +&", startDate=today, endDate=today)
    prefix = uniq("enc")
    odd = make_key(name=f"{prefix} a+b&c=d/é")
    make_key(name=f"{prefix} a b")  # '+' must not be decoded as a space
    got = apigw.get_api_keys(nameQuery=f"{prefix} a+b&c=d/")["items"]
    assert [k["id"] for k in got] == [odd["id"]]
    assert got[0]["name"] == f"{prefix} a+b&c=d/é"


# -- errors -------------------------------------------------------------------------------


def test_unknown_route_is_json_404(signed_request):
    resp = signed_request("GET", "/nope")
    _assert_aws_error(resp, 404)
    resp = signed_request("GET", "/usageplans/x/y/z/w")
    _assert_aws_error(resp, 404)


def test_malformed_json_is_bad_request_and_changes_nothing(signed_request, make_plan, apigw):
    plan = make_plan(description="intact")
    resp = signed_request("PATCH", f"/usageplans/{plan['id']}", b'{"patchOperations": [{"op": ',
                          {"Content-Type": "application/json"})
    _assert_aws_error(resp, 400, "BadRequestException")
    resp = signed_request("PATCH", f"/usageplans/{plan['id']}",
                          b'{"patchOperations": "not a list"}', {"Content-Type": "application/json"})
    _assert_aws_error(resp, 400, "BadRequestException")
    resp = signed_request("POST", "/usageplans", b"{name: unquoted}",
                          {"Content-Type": "application/json"})
    _assert_aws_error(resp, 400, "BadRequestException")
    assert apigw.get_usage_plan(usagePlanId=plan["id"])["description"] == "intact"


def test_oversized_body_is_refused_and_server_survives(signed_socket_request, apigw, uniq):
    name = uniq("huge")
    body = json.dumps({"name": name, "description": "x" * (1024 * 1024 + 4096)}).encode()
    resp = signed_socket_request("POST", "/usageplans", body, {"Content-Type": "application/json"})
    assert resp.status in (400, 413), resp
    assert (resp.header("Content-Type") or "").startswith("application/json"), resp
    assert resp.json().get("message"), resp
    assert resp.header("x-amzn-ErrorType"), resp
    # still serving, and nothing was created
    plans = apigw.get_paginator("get_usage_plans").paginate().build_full_result()
    assert name not in {p["name"] for p in plans.get("items", [])}


def test_request_ids(apigw, make_plan, expect_error):
    a = apigw.get_usage_plans(limit=1)
    b = apigw.get_usage_plans(limit=1)
    assert a["ResponseMetadata"]["RequestId"]
    assert b["ResponseMetadata"]["RequestId"]
    assert a["ResponseMetadata"]["RequestId"] != b["ResponseMetadata"]["RequestId"]
    assert make_plan()["ResponseMetadata"]["RequestId"]
    with expect_error("NotFoundException"):  # expect_error also checks the RequestId
        apigw.get_api_key(apiKey="nosuchkey" + uuid.uuid4().hex[:6])


# -- raw wire shapes (what Smithy SDKs need, beyond what boto3 tolerates) ------------------


def test_raw_wire_shapes(signed_request, metered_key, data_get, today):
    plan, key = metered_key(throttle={"rateLimit": 0.5, "burstLimit": 9},
                            quota={"limit": 40, "period": "DAY"})
    assert data_get(key["value"]).status == 200

    resp = signed_request("GET", f"/usageplans/{plan['id']}")
    assert resp.status == 200
    assert (resp.header("Content-Type") or "").startswith("application/json")
    assert resp.header("x-amzn-RequestId")
    p = resp.json()
    assert isinstance(p["throttle"]["rateLimit"], float) and p["throttle"]["rateLimit"] == 0.5
    assert type(p["throttle"]["burstLimit"]) is int
    assert type(p["quota"]["limit"]) is int and p["quota"]["period"] == "DAY"

    resp = signed_request("GET", "/usageplans?limit=1")
    assert resp.status == 200
    listing = resp.json()
    assert isinstance(listing.get("item"), list), f"list wrapper must be `item`: {listing}"
    assert "items" not in listing

    resp = signed_request("GET", f"/apikeys/{key['id']}?includeValue=true")
    k = resp.json()
    assert k["value"] == key["value"]
    assert isinstance(k["createdDate"], (int, float)) and not isinstance(k["createdDate"], bool)
    assert isinstance(k["lastUpdatedDate"], (int, float))
    assert k["enabled"] is True

    resp = signed_request("GET", f"/usageplans/{plan['id']}/keys")
    assert isinstance(resp.json().get("item"), list)

    resp = signed_request("GET", f"/usageplans/{plan['id']}/usage?keyId={key['id']}"
                                 f"&startDate={today}&endDate={today}")
    u = resp.json()
    assert u["values"] == {key["id"]: [[1, 39]]}, f"usage map must be `values`: {u}"
    assert "items" not in u

    resp = signed_request("PATCH", f"/usageplans/{plan['id']}/keys/{key['id']}/usage",
                          json.dumps({"patchOperations": [
                              {"op": "replace", "path": "/remaining", "value": "7"}]}).encode(),
                          {"Content-Type": "application/json"})
    assert resp.status == 200, resp
    assert resp.json()["values"] == {key["id"]: [[1, 7]]}

    resp = signed_request("DELETE", f"/usageplans/{plan['id']}/keys/{key['id']}")
    assert resp.status == 202, resp
