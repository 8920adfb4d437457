#!/usr/bin/env bash
# The project's test command (the README's): installs what is missing
# (scripts/install-deps.sh: redis-server, pytest, boto3, the AWS CLI v1),
# starts the Redis servers the Redis tests use (scripts/redis.sh), builds
# the gateway example (the binary tests run it), runs every Rust test, then
# the conformance suite that drives the gateway with the real boto3 and
# AWS CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

redis_dir=$(mktemp -d)
trap 'bash scripts/redis.sh stop "$redis_dir"' EXIT
eval "$(bash scripts/redis.sh start "$redis_dir")"

cargo build --example gateway
cargo test --all-features
python3 -m pytest tests/conformance -q
