"""Script calls for benches/script_instructions.sh, as Redis protocol.

`setup`: a decision and a lease of 60,000 units on each of 32 counters (a
quota of 10,000,000 a day, no throttle). `N`: N reports of one request each
from the first counter's lease, each its own call id (see "Calls" in
src/store/redis.lua). `renew N` (after `setup`): N renewals, each giving
back the lease before it with 10 requests admitted and asking for another
60,000 units. `reports N`: N "reports" calls, each reporting one request of
every counter's lease. Each call is
watched for a rollback as on one server (the marker and the replica's count of
calls applied, and its copy of the counter: see "Rollback" there). NOW (Unix seconds) fixes the clock, so the
lease never expires between runs.
"""

import os
import sys
import time

SHA, WHAT = sys.argv[1], sys.argv[2]
NOW = int(os.environ.get("NOW", time.time()))
DAY = NOW // 86400
KEY = "bench:{plan:key}"
COUNTERS = [KEY] + [f"bench:{{plan:key{i}}}" for i in range(1, 32)]
RECORD = "h:abcdef0123456789:"
MARKER_KEY, WRITES_KEY, MARKER = "bench:{ctl}:marker", "bench:{ctl}:writes", "0123456789abcdef"


def command(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def argv(op, unreported=0, epoch=0, metered="0", gen=0, cap=0, call_id=0, want=0, known="1",
         copy=0, units=0):
    return [op, NOW * 1_000_000, NOW, DAY, "", 0, 0, "DAY", DAY * 86400, DAY * 86400 + 86400,
            10_000_000, 0, 86400, units, unreported, 0, DAY, want, 0, epoch, metered, known,
            copy, -1, epoch, RECORD, gen, cap, 0, 0, 1_000_000, 250_000, 2, 0, call_id, call_id, 0,
            0, "abcdef0123456789:" + MARKER, 0]


def call(op, key=KEY, **args):
    return command("EVALSHA", SHA, 3, key, MARKER_KEY, WRITES_KEY, *argv(op, **args))


out = sys.stdout.buffer
if WHAT == "setup":
    out.write(command("SET", MARKER_KEY, MARKER))
    for key in COUNTERS:
        out.write(call("decide", key, known="0"))
        out.write(call("lease", key, want=60_000, call_id=1, known="0"))
elif WHAT == "renew":
    # The setup's lease is generation 1; each renewal empties the holder's
    # record, so the next lease starts generation 2, 3, ...
    for i in range(int(sys.argv[3])):
        out.write(call("lease", units=60_000 - 10, unreported=10, epoch=1, metered="1", gen=1 + i,
                       cap=30_000, call_id=2 + i, want=60_000, copy=1))
elif WHAT == "reports":
    # The replica's copy of each counter (1 used, epoch 1) is not ahead.
    keys = [COUNTERS[0], MARKER_KEY, WRITES_KEY] + COUNTERS[1:]
    for i in range(int(sys.argv[3])):
        shared = argv("reports", unreported=1, epoch=1, metered="1", gen=1, cap=30_000,
                      call_id=2 + i, copy=1)
        each = [2 + i, 1, 1, 1, DAY, RECORD, NOW * 1_000_000, 1, 1, DAY * 86400]
        out.write(command("EVALSHA", SHA, len(keys), *keys, *shared, *each * len(COUNTERS)))
else:
    for i in range(int(WHAT)):
        out.write(call("report", unreported=1, epoch=1, metered="1", gen=1, cap=30_000,
                       call_id=2 + i, copy=1))
