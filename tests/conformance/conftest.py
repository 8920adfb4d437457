"""Fixtures for the AWS wire-conformance suite.

The suite starts the real `gateway` example once per session and drives its admin API with
the real boto3 and the real AWS CLI v1, and its data plane with plain stdlib HTTP.

Binary: env `GATEWAY_BIN`, else `<repo>/target/debug/examples/gateway`
(build it with `cargo build --example gateway`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.exceptions
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "examples" / "gateway"
BUILD_HINT = "cargo build --example gateway"

ACCESS_KEY = "AKIDCONFORMANCE"
SECRET_KEY = "conformance-secret-key"
REGION = "us-east-1"
SERVICE = "apigateway"
STAGE_API_ID = "gateway"
STAGE_NAME = "prod"

STARTUP_DEADLINE_S = 30.0
SHUTDOWN_DEADLINE_S = 10.0
HTTP_TIMEOUT_S = 15.0

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# The contract is `... listening on http://(\S+)`; the character class only trims trailing
# punctuation a structured logger might glue onto the address (quotes, commas).
DATA_RE = re.compile(r"data plane listening on http://([^\s\"',;]+)")
ADMIN_RE = re.compile(r"admin API listening on http://([^\s\"',;]+)")

# The HTTP status AWS sends with each error code (`x-amzn-ErrorType`); the 403 codes are
# AWS's general SigV4 refusals, the rest the apigateway model's error shapes.
ERROR_STATUS = {
    "BadRequestException": 400,
    "UnauthorizedException": 401,
    "NotFoundException": 404,
    "ConflictException": 409,
    "LimitExceededException": 429,
    "TooManyRequestsException": 429,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "InvalidSignatureException": 403,
    "UnrecognizedClientException": 403,
}


# --------------------------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------------------------


class GatewayProcess:
    """Runs the gateway binary, drains its merged stdout/stderr, finds its listen addresses."""

    def __init__(self, binary: Path, extra_args: tuple[str, ...] = ()):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._startup_lines: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.data_url = ""
        self.admin_url = ""

    # -- log ---------------------------------------------------------------------------------
    def log_tail(self, n: int = 200) -> str:
        with self._lock:
            lines = list(self._lines[-n:])
        return "\n".join(lines) if lines else "(no output captured)"

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = ANSI_RE.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
            with self._lock:
                self._lines.append(line)
            if not self._ready.is_set():
                self._startup_lines.put(line)
        self._startup_lines.put(None)  # EOF

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "GatewayProcess":
        """`with GatewayProcess(...) as gw:` starts it, and stops it (a clean exit) after."""
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ)
        env["RUST_LOG"] = "info"
        env.pop("USAGE_PLANS_ADMIN_CREDENTIALS", None)
        cmd = [
            str(self.binary),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--admin-credentials", f"{ACCESS_KEY}:{SECRET_KEY}",
            "--stage", f"{STAGE_API_ID}:{STAGE_NAME}",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO_ROOT),
        )
        self._reader = threading.Thread(target=self._drain, name="gateway-log", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + STARTUP_DEADLINE_S
        data = admin = None
        while data is None or admin is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                pytest.fail(
                    f"gateway did not report both listeners within {STARTUP_DEADLINE_S:.0f}s "
                    f"(need lines matching {DATA_RE.pattern!r} and {ADMIN_RE.pattern!r}).\n"
                    f"command: {' '.join(cmd)}\n--- gateway log ---\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                line = self._startup_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = "still running (closed its output)"
                    self._kill()
                pytest.fail(
                    f"gateway exited before it was ready (exit code {code}).\n"
                    f"command: {' '.join(cmd)}\n--- gateway log ---\n{self.log_tail()}",
                    pytrace=False,
                )
            m = DATA_RE.search(line)
            if m:
                data = m.group(1).rstrip("/")
            m = ADMIN_RE.search(line)
            if m:
                admin = m.group(1).rstrip("/")
        self._ready.set()
        self.data_url = f"http://{data}"
        self.admin_url = f"http://{admin}"

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then require a clean exit (code 0) within the deadline."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(
                f"gateway died during the test session (exit code {self.proc.returncode})\n"
                f"--- gateway log ---\n{self.log_tail()}",
                pytrace=False,
            )
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=SHUTDOWN_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(
                f"gateway did not exit within {SHUTDOWN_DEADLINE_S:.0f}s of SIGTERM "
                f"(graceful shutdown)\n--- gateway log ---\n{self.log_tail()}",
                pytrace=False,
            )
        if self._reader is not None:
            self._reader.join(timeout=5)
        if code != 0:
            pytest.fail(
                f"gateway exited with code {code} after SIGTERM (expected 0)\n"
                f"--- gateway log ---\n{self.log_tail()}",
                pytrace=False,
            )


_GATEWAY: GatewayProcess | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the tail of the gateway log to every failing test's report."""
    outcome = yield
    rep = outcome.get_result()
    # setup/teardown failures of the gateway fixture carry the log in their own message
    if rep.failed and rep.when == "call" and _GATEWAY is not None:
        rep.sections.append(("gateway log (last 150 lines)", _GATEWAY.log_tail(150)))


def gateway_binary() -> Path:
    binary = Path(os.environ["GATEWAY_BIN"]) if os.environ.get("GATEWAY_BIN") else DEFAULT_BIN
    if not binary.is_file():
        pytest.fail(
            f"gateway binary not found at {binary}. Build it first:\n    {BUILD_HINT}\n"
            "(or point GATEWAY_BIN at a built binary)",
            pytrace=False,
        )
    if not os.access(binary, os.X_OK):
        pytest.fail(f"gateway binary {binary} is not executable", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def gateway():
    global _GATEWAY
    _GATEWAY = GatewayProcess(gateway_binary())  # the failure reports read its log
    with _GATEWAY as gw:
        yield gw


@pytest.fixture(scope="session")
def regional_gateway():
    """A second gateway that accepts admin signatures scoped to us-east-1 only."""
    with GatewayProcess(gateway_binary(), ("--admin-region", REGION)) as gw:
        yield gw


@pytest.fixture(scope="session")
def top_ups_gateway():
    """A second gateway whose UpdateUsage also takes `add /remaining` (its extension)."""
    with GatewayProcess(gateway_binary(), ("--admin-top-ups",)) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _gateway_alive(gateway):
    """Fail fast, with the log, if an earlier test killed the server."""
    if not gateway.alive():
        pytest.fail(
            f"gateway is no longer running (exit code {gateway.proc.returncode})\n"
            f"--- gateway log ---\n{gateway.log_tail()}",
            pytrace=False,
        )
    yield


@pytest.fixture(scope="session")
def admin_url(gateway) -> str:
    return gateway.admin_url


@pytest.fixture(scope="session")
def data_url(gateway) -> str:
    return gateway.data_url


# --------------------------------------------------------------------------------------------
# boto3 / AWS CLI
# --------------------------------------------------------------------------------------------


def make_client(admin_url: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, *,
                region: str = REGION):
    return boto3.client(
        "apigateway",
        endpoint_url=admin_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="session")
def apigw(admin_url):
    return make_client(admin_url)


@pytest.fixture(scope="session")
def client_factory(admin_url):
    """Build a boto3 client with other credentials (auth tests)."""

    def factory(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        return make_client(admin_url, access_key, secret_key)

    return factory


@pytest.fixture(scope="session")
def aws_cli(admin_url, tmp_path_factory):
    """`aws_cli(*args)` runs `aws apigateway <args>` against the admin API.

    Returns (returncode, parsed JSON stdout or None, stderr).
    """
    exe = shutil.which("aws")
    if exe is None:
        pytest.fail("the AWS CLI (`aws`, v1) is not on PATH", pytrace=False)
    home = tmp_path_factory.mktemp("awscli")
    config = home / "config"
    credentials = home / "credentials"
    config.write_text("")
    credentials.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )

    def run(*args: str, timeout: float = 60.0):
        cmd = [exe, "apigateway", *args,
               "--endpoint-url", admin_url, "--region", REGION, "--output", "json"]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            env=env, timeout=timeout,
        )
        parsed = None
        if proc.stdout.strip():
            try:
                parsed = json.loads(proc.stdout)
            except ValueError:
                parsed = None
        return proc.returncode, parsed, proc.stderr

    return run


# --------------------------------------------------------------------------------------------
# Raw HTTP (data plane, unsigned and hand-signed admin requests)
# --------------------------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {dict(self.headers.items())!r} {self.body[:300]!r}>"


def http_request(base_url: str, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None) -> RawResponse:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, resp.headers, data)
    finally:
        conn.close()


class _BytesSocket:
    def __init__(self, data: bytes):
        self._file = io.BytesIO(data)

    def makefile(self, *args, **kwargs):
        return self._file


def socket_exchange(base_url: str, head: bytes, body: bytes) -> RawResponse:
    """Send `head + body` on a fresh socket while concurrently reading the answer.

    For oversized bodies: the server may answer (and close) before it has read the whole
    body; reading concurrently makes sure we get its response before any reset.
    """
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT_S)
    send_error: list[BaseException] = []

    def sender():
        try:
            sock.sendall(head)
            view = memoryview(body)
            for i in range(0, len(view), 64 * 1024):
                sock.sendall(view[i:i + 64 * 1024])
        except OSError as e:  # server stopped reading: expected for oversized bodies
            send_error.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    chunks = []
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        t.join(timeout=HTTP_TIMEOUT_S)
        sock.close()
    data = b"".join(chunks)
    assert data, f"no HTTP response at all (send error: {send_error!r})"
    resp = http.client.HTTPResponse(_BytesSocket(data))
    resp.begin()
    return RawResponse(resp.status, resp.headers, resp.read())


def sign_headers(url: str, method: str, body: bytes, headers: dict | None = None, *,
                 access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 service: str = SERVICE, region: str = REGION,
                 when: dt.datetime | None = None) -> dict:
    """SigV4-sign a request the way botocore does; returns the headers to send."""
    hdrs = {"Accept": "application/json"}
    hdrs.update(headers or {})
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=hdrs)
    auth = botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(access_key, secret_key), service, region
    )
    if when is None:
        auth.add_auth(req)
    else:
        naive_utc = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=naive_utc):
            auth.add_auth(req)
    return dict(req.headers.items())


@pytest.fixture(scope="session")
def unsigned_request(admin_url):
    def send(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        return http_request(admin_url, method, path, body, headers)

    return send


@pytest.fixture(scope="session")
def signed_request(admin_url):
    """`signed_request(method, path, body=b'', headers=None, send_body=None, **sign_kw)`.

    Signs with SigV4 exactly like botocore (Accept: application/json is always added), then
    sends with http.client. `send_body` replaces the body after signing (tamper tests).
    """

    def send(method: str, path: str, body: bytes = b"", headers: dict | None = None,
             send_body: bytes | None = None, **sign_kw) -> RawResponse:
        hdrs = sign_headers(admin_url + path, method, body, headers, **sign_kw)
        payload = body if send_body is None else send_body
        return http_request(admin_url, method, path, payload if payload else None, hdrs)

    return send


@pytest.fixture(scope="session")
def signed_socket_request(admin_url):
    """Like signed_request but over a raw socket with concurrent reading (huge bodies)."""

    def send(method: str, path: str, body: bytes, headers: dict | None = None) -> RawResponse:
        hdrs = sign_headers(admin_url + path, method, body, headers)
        host = urlsplit(admin_url).netloc
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return socket_exchange(admin_url, head, body)

    return send


@pytest.fixture(scope="session")
def data_get(data_url):
    """`data_get(api_key=None, path='/anything', method='GET', headers=None, body=None)`."""

    def get(api_key: str | None = None, path: str = "/anything", method: str = "GET",
            headers: dict | None = None, body: bytes | None = None) -> RawResponse:
        hdrs = dict(headers or {})
        if api_key is not None:
            hdrs["x-api-key"] = api_key
        return http_request(data_url, method, path, body, hdrs)

    return get


# --------------------------------------------------------------------------------------------
# Small helpers shared by the tests
# --------------------------------------------------------------------------------------------


def utc_today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def seconds_to_utc_midnight() -> float:
    now = dt.datetime.now(dt.timezone.utc)
    midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


# A test using `today` finishes well within this; one starting closer to midnight than this
# waits for the new day, so the requests it counts and the date it asks about are the same day.
DAY_MARGIN_SECONDS = 120


@pytest.fixture
def today() -> str:
    """Today's date in UTC, `yyyy-mm-dd`, with at least DAY_MARGIN_SECONDS of it left."""
    left = seconds_to_utc_midnight()
    if left < DAY_MARGIN_SECONDS:
        time.sleep(left + 1)
    return utc_today()


@pytest.fixture(scope="session")
def uniq():
    """`uniq(tag='')` → a name no other test (or earlier run against this server) uses."""

    def make(tag: str = "") -> str:
        return f"conf-{tag}{'-' if tag else ''}{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def new_key_value():
    """A fresh, unique 42-character API key value."""

    def make() -> str:
        return "cv" + uuid.uuid4().hex + uuid.uuid4().hex[:8]

    return make


@pytest.fixture(scope="session")
def make_key(apigw, uniq, new_key_value):
    """Create an API key (enabled, fresh unique name/value unless overridden)."""

    def make(**kwargs):
        kwargs.setdefault("name", uniq("key"))
        kwargs.setdefault("value", new_key_value())
        kwargs.setdefault("enabled", True)
        resp = apigw.create_api_key(**kwargs)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201, resp
        return resp

    return make


@pytest.fixture(scope="session")
def make_plan(apigw, uniq):
    """Create a usage plan with a fresh unique name unless overridden."""

    def make(**kwargs):
        kwargs.setdefault("name", uniq("plan"))
        resp = apigw.create_usage_plan(**kwargs)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201, resp
        return resp

    return make


@pytest.fixture(scope="session")
def attach(apigw):
    """Put an API key into a usage plan."""

    def do(plan_id: str, key_id: str):
        resp = apigw.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201, resp
        return resp

    return do


@pytest.fixture(scope="session")
def metered_key(make_plan, make_key, attach):
    """`metered_key(**plan_kwargs)` → (plan, key) with the key attached to a fresh plan."""

    def make(**plan_kwargs):
        plan = make_plan(**plan_kwargs)
        key = make_key()
        attach(plan["id"], key["id"])
        return plan, key

    return make


@contextlib.contextmanager
def _expect_error(code: str, status: int | None = None):
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        yield ei
    resp = ei.value.response
    assert resp["Error"]["Code"] == code, f"expected {code}, got {resp['Error']!r}"
    want_status = status if status is not None else ERROR_STATUS.get(code)
    if want_status is not None:
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == want_status, resp
    assert resp["Error"].get("Message"), f"error without a message: {resp!r}"
    assert resp["ResponseMetadata"].get("RequestId"), f"error without x-amzn-RequestId: {resp!r}"


@pytest.fixture(scope="session")
def expect_error():
    """`with expect_error('NotFoundException'): apigw.get_usage_plan(...)`.

    Checks the error code, the HTTP status AWS uses for it, a non-empty message and a
    request id.
    """
    return _expect_error


def patch_op(op: str, path: str, value: str) -> list[dict]:
    """`patchOperations` of one operation."""
    return [{"op": op, "path": path, "value": value}]


@pytest.fixture(scope="session")
def delete_then_gone():
    """`delete_then_gone(apigw.delete_api_key, apigw.get_api_key, apiKey=key_id)`: the delete
    answers 202; then a get and a second delete of the same ids are both NotFoundException."""

    def check(delete, get, **ids):
        resp = delete(**ids)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
        with _expect_error("NotFoundException"):
            get(**ids)
        with _expect_error("NotFoundException"):
            delete(**ids)

    return check


def error_type(resp: RawResponse) -> str:
    """The error code a botocore client would derive from a raw response."""
    value = resp.header("x-amzn-ErrorType") or ""
    return value.split(":", 1)[0].rsplit("#", 1)[-1]


def parse_structured_list(value: str | None) -> dict:
    """Parse an RFC 8941-style list header such as
    `"throttle";r=9;t=1, "quota";r=4;t=3600` → {'throttle': {'r': 9, 't': 1}, 'quota': {...}}.
    Integer parameters become ints, decimals floats, others stay strings.
    """
    out: dict = {}
    if not value:
        return out
    for member in value.split(","):
        member = member.strip()
        if not member:
            continue
        parts = [p.strip() for p in member.split(";")]
        name = parts[0].strip('"')
        params = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            v = v.strip().strip('"')
            if re.fullmatch(r"-?\d+", v):
                params[k.strip()] = int(v)
            elif re.fullmatch(r"-?\d+\.\d+", v):
                params[k.strip()] = float(v)
            else:
                params[k.strip()] = v
        out[name] = params
    return out


class _Util:
    error_type = staticmethod(error_type)
    utc_today = staticmethod(utc_today)
    seconds_to_utc_midnight = staticmethod(seconds_to_utc_midnight)
    parse_structured_list = staticmethod(parse_structured_list)

    @staticmethod
    def utc_day(offset_days: int) -> str:
        d = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=offset_days)
        return d.isoformat()


@pytest.fixture(scope="session")
def util():
    """Plain helper functions (error_type, utc_today, utc_day, seconds_to_utc_midnight,
    parse_structured_list) without importing conftest from the test modules."""
    return _Util
