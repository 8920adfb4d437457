"""The real AWS CLI v1 against the admin API (output is botocore's parsed shape: member names)."""


def _ok(result, what):
    code, out, err = result
    assert code == 0, f"`aws apigateway {what}` failed ({code}): {err}"
    assert out is not None, f"`aws apigateway {what}` printed no JSON; stderr: {err}"
    return out


def test_cli_usage_plan_flow(aws_cli, uniq, today):
    plan_name, key_name = uniq("cliplan"), uniq("clikey")

    plan = _ok(aws_cli("create-usage-plan", "--name", plan_name, "--description", "from the CLI",
                       "--throttle", "burstLimit=5,rateLimit=2.5",
                       "--quota", "limit=100,period=DAY"), "create-usage-plan")
    assert plan["name"] == plan_name
    assert plan["description"] == "from the CLI"
    assert plan["throttle"] == {"burstLimit": 5, "rateLimit": 2.5}
    assert plan["quota"]["limit"] == 100 and plan["quota"]["period"] == "DAY"
    assert plan["quota"].get("offset", 0) == 0
    plan_id = plan["id"]

    key = _ok(aws_cli("create-api-key", "--name", key_name, "--enabled"), "create-api-key")
    assert key["name"] == key_name
    assert key["enabled"] is True
    assert isinstance(key["value"], str) and len(key["value"]) >= 20
    assert isinstance(key["createdDate"], (int, float)), "the CLI prints timestamps raw"
    key_id = key["id"]

    pk = _ok(aws_cli("create-usage-plan-key", "--usage-plan-id", plan_id, "--key-id", key_id,
                     "--key-type", "API_KEY"), "create-usage-plan-key")
    assert pk == {"id": key_id, "type": "API_KEY", "name": key_name, "value": key["value"]}

    updated = _ok(aws_cli("update-usage", "--usage-plan-id", plan_id, "--key-id", key_id,
                          "--patch-operations", "op=replace,path=/remaining,value=10"),
                  "update-usage")
    assert updated["items"] == {key_id: [[0, 10]]}
    assert "values" not in updated
    assert updated["usagePlanId"] == plan_id

    usage = _ok(aws_cli("get-usage", "--usage-plan-id", plan_id, "--start-date", today,
                        "--end-date", today), "get-usage")
    assert usage["items"][key_id] == [[0, 10]]
    assert usage["usagePlanId"] == plan_id
    assert (usage["startDate"], usage["endDate"]) == (today, today)

    # the CLI auto-paginates these: a server that never drops `position` would hang it
    plans = _ok(aws_cli("get-usage-plans"), "get-usage-plans")
    mine = [p for p in plans["items"] if p["id"] == plan_id]
    assert len(mine) == 1
    assert mine[0]["throttle"] == {"burstLimit": 5, "rateLimit": 2.5}
    assert "position" not in plans

    keys = _ok(aws_cli("get-api-keys", "--include-values"), "get-api-keys --include-values")
    mine = [k for k in keys["items"] if k["id"] == key_id]
    assert len(mine) == 1
    assert mine[0]["value"] == key["value"]
    assert mine[0]["name"] == key_name

    filtered = _ok(aws_cli("get-api-keys", "--name-query", key_name), "get-api-keys --name-query")
    assert [k["id"] for k in filtered["items"]] == [key_id]
    assert "value" not in filtered["items"][0]


def test_cli_small_pages(aws_cli, make_key, uniq):
    prefix = uniq("clipage")
    created = {make_key(name=f"{prefix}-{i}")["id"] for i in range(3)}
    out = _ok(aws_cli("get-api-keys", "--name-query", prefix, "--page-size", "1"),
              "get-api-keys --page-size 1")
    assert sorted(k["id"] for k in out["items"]) == sorted(created)


def test_cli_get_usage_of_more_than_a_page_of_keys(aws_cli, make_plan, make_key, attach, today):
    # README: botocore cannot merge the `items` map across pages, so the
    # CLI shows the first page (25 keys) only; `--page-size 500` shows all.
    plan = make_plan()
    keys = {make_key()["id"] for _ in range(26)}
    for key_id in keys:
        attach(plan["id"], key_id)
    args = ("get-usage", "--usage-plan-id", plan["id"], "--start-date", today, "--end-date", today)
    first_page = _ok(aws_cli(*args), "get-usage")
    assert len(first_page["items"]) == 25
    whole = _ok(aws_cli(*args, "--page-size", "500"), "get-usage --page-size 500")
    assert set(whole["items"]) == keys


def test_cli_error_exit_code(aws_cli):
    code, out, err = aws_cli("get-usage-plan", "--usage-plan-id", "nope")
    assert code == 255, (code, out, err)
    assert "NotFoundException" in err
    assert "GetUsagePlan" in err
