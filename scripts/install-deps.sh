#!/usr/bin/env bash
# Installs what the tests need when it is missing: Debian's redis-server,
# chromium and chromium-driver (the console's browser tests), and from PyPI
# pytest, boto3, the AWS CLI v1, selenium and grpcio. Called by scripts/test.sh
# (the README's test command) and by .ci/run; does nothing when all is there.
# apt-get runs as root, or through sudo when there is one.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "install-deps: need root (or sudo) to run: $*" >&2; return 1
  fi
}

apt_packages=()
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_packages+=(redis-server)
command -v curl >/dev/null || apt_packages+=(curl)
command -v chromium >/dev/null || apt_packages+=(chromium)
command -v chromedriver >/dev/null || apt_packages+=(chromium-driver)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${apt_packages[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
# Debian's package also starts a system redis on 6379; the tests use their
# own servers on 6390-6393 (scripts/redis.sh).

pip_packages=()
python3 -c 'import pytest' 2>/dev/null || pip_packages+=(pytest)
python3 -c 'import boto3, botocore' 2>/dev/null || pip_packages+=(boto3)
command -v aws >/dev/null || pip_packages+=(awscli)
python3 -c 'import selenium' 2>/dev/null || pip_packages+=(selenium)
# The gRPC conformance tests: grpcio's client and server, its health
# service (generated code shipped, no protoc) and google.rpc.Status decoding.
python3 -c 'import grpc, grpc_health.v1.health, grpc_status.rpc_status' 2>/dev/null \
  || pip_packages+=(grpcio grpcio-health-checking grpcio-status)
if [ ${#pip_packages[@]} -gt 0 ]; then
  echo "install-deps: pip install ${pip_packages[*]}" >&2
  python3 -m pip install --quiet "${pip_packages[@]}"
fi
