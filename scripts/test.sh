#!/usr/bin/env bash
# The project's test command (the README's): every Rust test, then the
# conformance suite that drives the gateway with the real boto3 and AWS CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-features
cargo build --example gateway --features gateway
python3 -m pytest tests/conformance -q
