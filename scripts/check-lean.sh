#!/usr/bin/env bash
# A library user who depends on the crate with default features compiles
# only the middleware core: no HTTP server or client, CLI parser, Redis or
# SigV4 code. Checked from a throwaway crate that depends on this one by
# path, as a user's would, with this repository's lock file.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
user=$(mktemp -d)
trap 'rm -rf "$user"' EXIT
mkdir "$user/src"
echo 'fn main() {}' > "$user/src/main.rs"
cat > "$user/Cargo.toml" <<TOML
[package]
name = "a-library-user"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tower-usage-plans = { path = "$repo" }
TOML
cp Cargo.lock "$user/"
tree=$(cd "$user" && cargo tree -e normal --prefix none --format '{p}')
forbidden='^(hyper|hyper-util|clap|redis|aws-sigv4|aws-smithy-runtime-api|aws-credential-types|tracing-subscriber|metrics|metrics-exporter-prometheus|toml|axum|criterion|h2) '
if grep -E "$forbidden" <<<"$tree"; then
  echo "check-lean: the default features pull in the crates above" >&2
  exit 1
fi
echo "check-lean: a default-features user compiles $(grep -c . <<<"$tree") crates, none of the gateway's, Redis's or SigV4's"
