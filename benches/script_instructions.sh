#!/usr/bin/env bash
# Instructions Redis spends on one "report" call of src/store/redis.lua (a
# lease's report of one admitted request, on a counter with a quota and a
# live lease), on one report in a "reports" call (32 counters' reports in
# one call, as a replica sends a round's reports on one server), and on one
# renewal (a "lease" call giving back a live lease
# and taking the next), counted by valgrind's callgrind around redis-server: unlike
# wall-clock timings, a busy machine does not move them. Run it before and
# after a change to the script.
#
#   bash benches/script_instructions.sh [SCRIPT] [CALLS]
#     (default src/store/redis.lua, 500 calls; port 7400 must be free)
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:-src/store/redis.lua}
calls=${2:-500}
port=7400
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export NOW=$(date +%s)
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  redis-server --port $port --save '' --appendonly no >"$work/valgrind.log" 2>&1 &
server=$!
for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.2; done
sha=$(redis-cli -p $port SCRIPT LOAD "$(cat "$script")")
python3 benches/script_calls.py "$sha" setup | redis-cli -p $port --pipe >/dev/null
python3 benches/script_calls.py "$sha" 50 | redis-cli -p $port --pipe >/dev/null
callgrind_control -z $server >/dev/null
python3 benches/script_calls.py "$sha" "$calls" | redis-cli -p $port --pipe >/dev/null
callgrind_control -d $server >/dev/null
callgrind_control -z $server >/dev/null
python3 benches/script_calls.py "$sha" renew "$calls" | redis-cli -p $port --pipe >/dev/null
callgrind_control -d $server >/dev/null
callgrind_control -z $server >/dev/null
python3 benches/script_calls.py "$sha" reports $((calls / 32 + 1)) | redis-cli -p $port --pipe >/dev/null
callgrind_control -d $server >/dev/null
redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
wait $server || true
reports=$(grep -h '^summary:' "$work"/cg.*.1 | awk '{print $2}')
renewals=$(grep -h '^summary:' "$work"/cg.*.2 | awk '{print $2}')
together=$(grep -h '^summary:' "$work"/cg.*.3 | awk '{print $2}')
echo "instructions a report call: $((reports / calls))"
echo "instructions a report in a \"reports\" call: $((together / ((calls / 32 + 1) * 32)))"
echo "instructions a renewal call: $((renewals / calls))"
