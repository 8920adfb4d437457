#!/usr/bin/env bash
# The project's test command (the README's).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-features
