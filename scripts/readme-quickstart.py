#!/usr/bin/env python3
"""Runs the README's quick start exactly as written, on this checkout.

The commands come from README.md itself, so they cannot drift: in the
"Quick start" section, the first ```sh block starts the gateway, the second
is what a user types in another terminal, and the ```text block after it is
what that prints. In the expected text, `<...>` stands for a value that
differs from run to run (an id, a date); every other character must match,
but for white space at the ends of lines.
The gateway is started in its own process group and stopped by its PID.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def quick_start_blocks():
    text = open(README, encoding="utf-8").read()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def wait_for_port(port, process, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"readme-quickstart: the gateway exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"readme-quickstart: nothing listens on {port} after {seconds} s")


def matches(expected, actual):
    pattern = "".join(
        ".+?" if part.startswith("<") and part.endswith(">") and len(part) > 2 else re.escape(part)
        for part in re.split(r"(<[^<>\s]+>)", expected))
    return re.fullmatch(pattern, actual) is not None


def main():
    blocks = quick_start_blocks()
    shells = [body for lang, body in blocks if lang == "sh"]
    texts = [body for lang, body in blocks if lang == "text"]
    if len(shells) < 2 or not texts:
        sys.exit("readme-quickstart: the Quick start section needs two ```sh blocks and a ```text block")
    server, client, expected = shells[0].strip(), shells[1], texts[0]
    print(f"readme-quickstart: $ {server}", flush=True)
    root = os.path.dirname(README)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    os.makedirs(target, exist_ok=True)
    log = open(os.path.join(target, "readme-quickstart.log"), "w")
    gateway = subprocess.Popen(["bash", "-c", f"exec {server}"], cwd=root, start_new_session=True,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(8080, gateway, 900)
        wait_for_port(8081, gateway, 60)
        run = subprocess.run(["bash", "-e", "-c", client], cwd=root, capture_output=True, text=True,
                             timeout=120)
        printed = run.stdout.replace("\r\n", "\n")
        sys.stdout.write(printed)
        if run.returncode != 0:
            sys.exit(f"readme-quickstart: the commands failed ({run.returncode}):\n{run.stderr}")
        want, got = expected.rstrip("\n").split("\n"), printed.rstrip("\n").split("\n")
        if len(want) != len(got):
            sys.exit(f"readme-quickstart: printed {len(got)} lines, the README shows {len(want)}")
        for n, (w, g) in enumerate(zip(want, got), 1):
            if not matches(w.rstrip(), g.rstrip()):
                sys.exit(f"readme-quickstart: line {n} differs\n  README: {w!r}\n  printed: {g!r}")
    finally:
        # `cargo run` execs the gateway: this PID is the gateway's.
        os.kill(gateway.pid, signal.SIGTERM)
        code = gateway.wait(timeout=30)
    if code != 0:
        sys.exit(f"readme-quickstart: the gateway exited with {code} on SIGTERM")
    print("readme-quickstart: the quick start printed what the README shows; the gateway stopped cleanly")


main()
