"""SigV4 edges: dot-segment ids as boto3 sends them, raw reserved characters in a hand-built
query, and the `--admin-region` check."""

import botocore.exceptions
import pytest

from conftest import http_request, make_client, sign_headers

REGION_MESSAGE = "Credential should be scoped to a valid region, not '{}'."


def _error(call):
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        call()
    return ei.value.response


@pytest.mark.parametrize("api_key", [".", ".."])
def test_dot_segment_ids_verify_and_name_no_key(apigw, api_key):
    # boto3 sends /apikeys/. (and /apikeys/..) as is and signs the path with the dot segment
    # removed: the signature verifies, and "." names no key.
    resp = _error(lambda: apigw.get_api_key(apiKey=api_key))
    assert resp["Error"]["Code"] == "NotFoundException", resp
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_raw_reserved_query_characters_verify_however_signed(admin_url):
    raw = "/apikeys?name=a:b+c,d&includeValues=true"
    # botocore's SigV4Auth on the hand-built URL signs the query as it is...
    resp = http_request(admin_url, "GET", raw, None, sign_headers(admin_url + raw, "GET", b""))
    assert resp.status == 200, resp
    assert "item" in resp.json(), resp
    # ...a SigV4 signer decodes it and encodes it again ('+' read as a space, as the API does).
    encoded = "/apikeys?name=a%3Ab%20c%2Cd&includeValues=true"
    resp = http_request(admin_url, "GET", raw, None,
                        sign_headers(admin_url + encoded, "GET", b""))
    assert resp.status == 200, resp
    # The signature still covers the bytes: another value is refused.
    resp = http_request(admin_url, "GET", raw.replace("a:b", "a:c"), None,
                        sign_headers(admin_url + raw, "GET", b""))
    assert resp.status == 403, resp


def test_any_region_is_accepted_without_admin_region(admin_url):
    for region in ["eu-west-1", "ap-southeast-2"]:
        assert "items" in make_client(admin_url, region=region).get_usage_plans()


def test_admin_region_refuses_other_scopes_and_changes_nothing(regional_gateway):
    url = regional_gateway.admin_url
    home = make_client(url, region="us-east-1")
    before = home.get_usage_plans()["items"]
    away = make_client(url, region="eu-west-1")
    resp = _error(lambda: away.create_usage_plan(name="elsewhere"))
    assert resp["Error"]["Code"] == "InvalidSignatureException", resp
    assert resp["Error"]["Message"] == REGION_MESSAGE.format("eu-west-1")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert home.get_usage_plans()["items"] == before
    # Region names are compared exactly.
    for region in ["us-east-1x", "US-EAST-1"]:
        resp = http_request(url, "GET", "/usageplans", None,
                            sign_headers(url + "/usageplans", "GET", b"", region=region))
        assert resp.status == 403, resp
        assert resp.header("x-amzn-ErrorType") == "InvalidSignatureException"
        assert resp.json()["message"] == REGION_MESSAGE.format(region)
