#!/usr/bin/env python3
"""Fails when the crate's `rust-version` is lower than what a dependency it
compiles (any feature, any target) declares as its own `rust-version`.

Reads `cargo metadata --all-features`: the crate's normal and build
dependencies, transitively (dev-dependencies do not reach library users).
"""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"]))
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = meta["resolve"]["root"]
declared = packages[root].get("rust_version")
if not declared:
    sys.exit("check-rust-version: Cargo.toml declares no rust-version")

reached, stack = set(), [root]
while stack:
    for dep in nodes[stack.pop()]["deps"]:
        if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]) and dep["pkg"] not in reached:
            reached.add(dep["pkg"])
            stack.append(dep["pkg"])

needs = sorted(((version(packages[i]["rust_version"]), packages[i]["name"], packages[i]["version"])
                for i in reached if packages[i].get("rust_version")), reverse=True)
too_new = [n for n in needs if n[0] > version(declared)]
if too_new:
    for need, name, ver in too_new:
        print(f"check-rust-version: {name} {ver} needs Rust {'.'.join(map(str, need))}", file=sys.stderr)
    sys.exit(f"check-rust-version: rust-version = \"{declared}\" is too low")
print(f"rust-version {declared}: holds for all {len(reached)} dependencies "
      f"(the highest need: {needs[0][1]} {'.'.join(map(str, needs[0][0]))})")
