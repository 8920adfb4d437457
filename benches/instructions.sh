#!/usr/bin/env bash
# Instructions per request through the stack bench's routers, counted by
# valgrind (callgrind, counting only inside the example's `counted`, so the
# setup of 1,000 keys and its run-to-run variation stay out; one warm-up
# request goes uncounted): unlike wall-clock timings, a busy machine does
# not move them. Prints each router's count and what
# UsagePlanLayer adds to bare as a ratio of what tower_governor adds.
#
#   bash benches/instructions.sh [REQUESTS]     (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)" >&2; exit 1; }
cargo build --release --quiet --example stack_instructions
bin=target/release/examples/stack_instructions

# Instructions of the counted requests of one run, from callgrind's summary.
count() {
  local out
  out=$(valgrind --tool=callgrind --toggle-collect='stack_instructions::counted' \
    --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1)
  echo "$out" | sed -n 's/.*Collected *: *\([0-9]*\).*/\1/p'
}

declare -A per_request
for mode in bare governor usage-plans usage-plans-no-context; do
  per_request[$mode]=$(( $(count "$mode" "$requests") / requests ))
  printf '%-24s %8d instructions a request\n' "$mode" "${per_request[$mode]}"
done
bare=${per_request[bare]}
governor_adds=$(( per_request[governor] - bare ))
for mode in usage-plans usage-plans-no-context; do
  adds=$(( per_request[$mode] - bare ))
  printf '%-24s adds %6d = %s x governor'\''s %d\n' "$mode" "$adds" \
    "$(python3 -c "print(f'{$adds / $governor_adds:.2f}')")" "$governor_adds"
done
