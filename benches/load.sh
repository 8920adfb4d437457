#!/usr/bin/env bash
# Load comparison over real sockets (wrk on one core, the server pinned to the
# other), interleaved A B C A B C so drift hits every variant alike.
#
#   bash benches/load.sh [ROUNDS] [SECONDS]
#
# Part 1: bare axum vs axum + tower_governor vs axum + UsagePlanLayer, 1,000
#         rotating keys, then one hot key. Prints req/s, p50 and ratios to bare.
# Part 2: the gateway example vs nginx (proxy_pass, upstream keepalive), both
#         pinned to core 0 in front of the same upstream on core 1; the
#         gateway without and with its access log (text, to a file), so the
#         log's cost shows; then both with TLS on the same certificate
#         (made here with openssl), ratio gateway/nginx.
# Part 3: scale-out: two gateway replicas sharing counters through Redis with
#         leases (--redis --redis-leases, each driven by its own wrk with half
#         the connections) vs one gateway counting in memory, all gateways on
#         core 0 (access log off), Redis with the upstream on core 1.
#         ONLY=gateway skips part 1, ONLY=redis runs part 3 alone, ONLY=app
#         runs part 1 alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
CONNS=${CONNS:-32}

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx
need taskset util-linux
need bc bc
need redis-server redis-server
need openssl openssl

cargo build --release --quiet --example bench_server --example gateway
BIN=target/release/examples
WORK=$(mktemp -d)
PIDS=()
# The processes write into $WORK as they stop (the gateway's state file, the
# servers' logs): wait for each to exit before removing it.
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$WORK" 2>/dev/null || { sleep 0.2; rm -rf "$WORK" || true; }
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# run_wrk PORT HOT [SCHEME] -> "req/s p50_us non2xx"
run_wrk() {
  HOT_KEY=$2 taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s benches/keys.lua "${3:-http}://127.0.0.1:$1/" > "$WORK/wrk-$1.txt"
  local rps p50 bad
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-$1.txt")
  p50=$(awk '$1=="50%" {v=$2; if (v ~ /us$/) {sub("us","",v); print v} else if (v ~ /ms$/) {sub("ms","",v); print v*1000} else {sub("s","",v); print v*1000000}}' "$WORK/wrk-$1.txt")
  bad=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk-$1.txt"); bad=${bad:-0}
  echo "$rps $p50 $bad"
}

# median "v1 v2 v3 ..." -> the median of the space-separated values
median() { tr ' ' '\n' <<< "$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A RPS P50
# measure MODE PID PORT HOT ROUND: load the server PID started on PORT, stop
# it, fail on any non-2xx, record and print its req/s and p50.
measure() {
  local mode=$1 pid=$2 port=$3 hot=$4 round=$5 scheme=${6:-http} rps p50 bad
  PIDS+=("$pid"); wait_port "$port"
  read -r rps p50 bad < <(run_wrk "$port" "$hot" "$scheme")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ "$bad" = 0 ] || { echo "$mode answered $bad non-2xx responses" >&2; exit 1; }
  RPS[$mode]+="$rps "; P50[$mode]+="$p50 "
  printf '  round %s %-12s %10.0f req/s  p50 %6.0f us\n' "$round" "$mode" "$rps" "$p50"
}

part1() {
  local hot=$1 label=$2 port=19100
  for round in $(seq "$ROUNDS"); do
    for mode in bare governor usage-plans; do
      port=$((port + 1))
      taskset -c 0 "$BIN/bench_server" "$mode" "127.0.0.1:$port" > /dev/null &
      measure "$mode" $! "$port" "$hot" "$round"
    done
  done
  local base; base=$(median "${RPS[bare]}")
  echo "$label (median of $ROUNDS rounds, ${SECS}s each, $CONNS connections):"
  for mode in bare governor usage-plans; do
    local m p; m=$(median "${RPS[$mode]}"); p=$(median "${P50[$mode]}")
    printf '  %-12s %10.0f req/s  p50 %6.0f us  ratio to bare %.3f\n' "$mode" "$m" "$p" "$(echo "$m / $base" | bc -l)"
  done
  RPS=(); P50=()
}

if [ -z "${ONLY:-}" ] || [ "${ONLY:-}" = app ]; then
  echo "== Part 1: in-app middleware (server on core 0, wrk on core 1)"
  part1 0 "1,000 rotating keys"
  part1 1 "one hot key"
fi
[ "${ONLY:-}" != app ] || exit 0

UP=19200
taskset -c 1 "$BIN/bench_server" upstream "127.0.0.1:$UP" > /dev/null & PIDS+=($!); wait_port $UP
{
  echo 'admin_credentials = [{ access_key_id = "AKIDBENCH", secret_access_key = "bench-secret" }]'
  for i in $(seq 0 999); do printf '[[keys]]\nname = "k%d"\nvalue = "bench-key-%020d"\nenabled = true\n' "$i" "$i"; done
  echo '[[plans]]'; echo 'name = "bench"'
  echo 'throttle = { rateLimit = 1e12, burstLimit = 2000000000 }'
  echo 'quota = { limit = 2000000000, period = "MONTH" }'
  printf 'keys = ['; for i in $(seq 0 999); do printf '"k%d",' "$i"; done; echo ']'
} > "$WORK/gateway.toml"

# start_gateway PORT [FLAGS...] -> the PID of a gateway in front of the upstream
start_gateway() {
  local port=$1; shift
  RUST_LOG=warn taskset -c 0 "$BIN/gateway" --config "$WORK/gateway.toml" --listen "127.0.0.1:$port" \
    --admin-listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" --access-log off "$@" >> "$WORK/gateway.log" 2>&1 &
  echo $!
}

if [ "${ONLY:-}" != redis ]; then
echo "== Part 2: gateway vs nginx in front of the same upstream"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:PORT;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
# A certificate of this run's own (no key is committed).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
sed -e "s|listen 127.0.0.1:PORT;|listen 127.0.0.1:PORT ssl; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.2 TLSv1.3;|" \
  "$WORK/nginx.conf" > "$WORK/nginx-tls.conf"
port=19300
MODES=${MODES:-gateway gateway-log nginx gateway-tls nginx-tls}
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    port=$((port + 1)) scheme=http
    case $mode in
      gateway|gateway-log|gateway-tls)
        args=(--access-log off)
        [ "$mode" = gateway-log ] && args=(--access-log text)
        [ "$mode" = gateway-tls ] && { args+=(--tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key"); scheme=https; }
        RUST_LOG=warn taskset -c 0 "$BIN/gateway" --config "$WORK/gateway.toml" --listen "127.0.0.1:$port" \
          --admin-listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" "${args[@]}" > "$WORK/gateway.log" 2>"$WORK/access.log" & pid=$! ;;
      nginx|nginx-tls)
        conf=$WORK/nginx.conf; [ "$mode" = nginx-tls ] && { conf=$WORK/nginx-tls.conf; scheme=https; }
        sed "s/PORT/$port/" "$conf" > "$WORK/nginx-$port.conf"
        taskset -c 0 nginx -c "$WORK/nginx-$port.conf" -p "$WORK" > /dev/null 2>&1 & pid=$! ;;
    esac
    measure "$mode" "$pid" "$port" 0 "$round" "$scheme"
    rm -f "$WORK/access.log"
  done
done
ratio() { printf '%s %.0f req/s, %s %.0f req/s: %s/%s = %.3f\n' "$1" "$(median "${RPS[$1]}")" "$2" "$(median "${RPS[$2]}")" "$1" "$2" "$(echo "$(median "${RPS[$1]}") / $(median "${RPS[$2]}")" | bc -l)"; }
if [ -n "${RPS[gateway-log]:-}" ] && [ -n "${RPS[gateway]:-}" ]; then ratio gateway-log gateway; fi
if [ -n "${RPS[gateway-tls]:-}" ] && [ -n "${RPS[nginx-tls]:-}" ]; then ratio gateway-tls nginx-tls; fi
if [ -n "${RPS[gateway]:-}" ] && [ -n "${RPS[nginx]:-}" ]; then ratio gateway nginx; fi
RPS=(); P50=()
fi

echo "== Part 3: two gateway replicas on Redis with leases vs one gateway in memory"
REDIS_PORT=19400
taskset -c 1 redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" > "$WORK/redis.log" 2>&1 & PIDS+=($!); wait_port $REDIS_PORT
port=19500
for round in $(seq "$ROUNDS"); do
  port=$((port + 1))
  measure memory "$(start_gateway "$port")" "$port" 0 "$round"
  # A fresh prefix of keys per round: Redis keeps no counters from the last.
  redis-cli -p $REDIS_PORT flushall > /dev/null
  a=$((port + 100)); b=$((port + 200))
  pa=$(start_gateway "$a" --redis "redis://127.0.0.1:$REDIS_PORT" --redis-leases); PIDS+=("$pa"); wait_port "$a"
  pb=$(start_gateway "$b" --redis "redis://127.0.0.1:$REDIS_PORT" --redis-leases); PIDS+=("$pb"); wait_port "$b"
  CONNS=$((CONNS / 2)) run_wrk "$a" 0 > "$WORK/a.out" & wa=$!
  CONNS=$((CONNS / 2)) run_wrk "$b" 0 > "$WORK/b.out" & wb=$!
  wait $wa $wb
  kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
  read -r ra la bada < "$WORK/a.out"; read -r rb lb badb < "$WORK/b.out"
  [ "$bada" = 0 ] && [ "$badb" = 0 ] || { echo "leased replicas answered $bada + $badb non-2xx responses" >&2; exit 1; }
  rps=$(echo "$ra + $rb" | bc -l)
  RPS[leased]+="$rps "
  printf '  round %s %-12s %10.0f req/s  (%0.f + %0.f)\n' "$round" "2 x leased" "$rps" "$ra" "$rb"
done
m=$(median "${RPS[memory]}"); l=$(median "${RPS[leased]}")
printf 'two leased replicas %.0f req/s, one in-memory gateway %.0f req/s: leased/memory = %.3f\n' "$l" "$m" "$(echo "$l / $m" | bc -l)"
