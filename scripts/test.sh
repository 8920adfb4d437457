#!/usr/bin/env bash
# The project's test command (the README's): every Rust test (the gateway
# binary tests run the example, so it is built first), then the conformance
# suite that drives the gateway with the real boto3 and AWS CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --example gateway --features gateway
cargo test --all-features
python3 -m pytest tests/conformance -q
