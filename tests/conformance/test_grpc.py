"""gRPC through the gateway with the real grpcio client (cleartext HTTP/2).

A grpcio server with the standard health service (`grpcio-health-checking`, no protoc) is the
upstream; a gateway of this module's own forwards to it. Admitted unary and server-streaming
calls, the upstream's own status passed through, and each refusal as a gRPC status with the
`google.rpc.RetryInfo` that `grpcio-status` decodes.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from conftest import GatewayProcess, gateway_binary

KEY = "grpcio-key-0123456789abcdef"
SPARE_KEY = "grpcio-spare-0123456789abcdef"
DISABLED_KEY = "grpcio-off-0123456789abcdef"

CONFIG = f"""
[[keys]]
name = "grpcio"
value = "{KEY}"
enabled = true

[[keys]]
name = "grpcio-spare"
value = "{SPARE_KEY}"
enabled = true

[[keys]]
name = "grpcio-off"
value = "{DISABLED_KEY}"
enabled = false

[[plans]]
name = "grpcio plenty"
quota = {{ limit = 100, period = "DAY" }}
keys = ["grpcio", "grpcio-off"]

[[plans]]
name = "grpcio one a day"
quota = {{ limit = 1, period = "DAY" }}
keys = ["grpcio-spare"]
"""


@pytest.fixture(scope="module")
def upstream():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("usage", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def grpc_gateway(upstream, tmp_path_factory):
    config = tmp_path_factory.mktemp("grpc") / "gateway.toml"
    config.write_text(CONFIG)
    with GatewayProcess(
        gateway_binary(),
        ("--config", str(config), "--upstream", f"http://127.0.0.1:{upstream}"),
    ) as gw:
        yield gw


@pytest.fixture
def stub(grpc_gateway):
    target = grpc_gateway.data_url.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        yield health_pb2_grpc.HealthStub(channel)


def key(value: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", value),)


def test_admitted_unary_call_and_ratelimit_metadata(stub):
    reply, call = stub.Check.with_call(
        health_pb2.HealthCheckRequest(service="usage"), metadata=key(KEY), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    metadata = dict(call.initial_metadata())
    assert metadata["ratelimit-policy"] == '"quota";q=100;w=86400'
    assert metadata["ratelimit"].startswith('"quota";r=')


def test_upstream_status_passes_through_unchanged(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), metadata=key(KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_streaming_call(stub):
    stream = stub.Watch(
        health_pb2.HealthCheckRequest(service="usage"), metadata=key(KEY), timeout=10
    )
    first = next(stream)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()


def test_refusals_are_grpc_statuses(stub):
    request = health_pb2.HealthCheckRequest(service="usage")
    cases = [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (key("no-such-key-0123456789abcdef"), grpc.StatusCode.UNAUTHENTICATED),
        (key(DISABLED_KEY), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(request, metadata=metadata, timeout=10)
        assert err.value.code() == code, metadata
        assert err.value.details() == "Forbidden"
        assert rpc_status.from_call(err.value) is None


def test_quota_spent_is_resource_exhausted_with_retry_info(stub):
    request = health_pb2.HealthCheckRequest(service="usage")
    stub.Check(request, metadata=key(SPARE_KEY), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(request, metadata=key(SPARE_KEY), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "Limit Exceeded"
    status = rpc_status.from_call(err.value)
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert len(status.details) == 1
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    trailing = dict(err.value.trailing_metadata())
    assert info.retry_delay.seconds == int(trailing["retry-after"])
    assert info.retry_delay.seconds > 0
