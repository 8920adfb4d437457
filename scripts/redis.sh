#!/usr/bin/env bash
# Starts (start DIR) or stops (stop DIR) the Redis servers the tests use: one
# standalone server on 127.0.0.1:6390 and a 3-node cluster on 6391-6393, all
# with their files in DIR. Prints the env lines to export.
set -euo pipefail
cmd=$1 dir=$2
case "$cmd" in
  start)
    mkdir -p "$dir"
    command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install -y redis-server)" >&2; exit 1; }
    redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --dir "$dir" --pidfile "$dir/6390.pid" --logfile "$dir/6390.log" >/dev/null
    for p in 6391 6392 6393; do
      redis-server --port $p --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --cluster-enabled yes \
        --cluster-config-file "$dir/nodes-$p.conf" --dir "$dir" --pidfile "$dir/$p.pid" --logfile "$dir/$p.log" >/dev/null
    done
    for p in 6390 6391 6392 6393; do
      for _ in $(seq 100); do redis-cli -p $p ping >/dev/null 2>&1 && break; sleep 0.05; done
    done
    redis-cli --cluster create 127.0.0.1:6391 127.0.0.1:6392 127.0.0.1:6393 --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 200); do
      redis-cli -p 6391 cluster info | grep -q 'cluster_state:ok' && break; sleep 0.05
    done
    redis-cli -p 6391 cluster info | grep -q 'cluster_state:ok' || { echo "the Redis Cluster did not form" >&2; exit 1; }
    echo "export REDIS_URL=redis://127.0.0.1:6390"
    echo "export REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:6391,127.0.0.1:6392,127.0.0.1:6393"
    ;;
  stop)
    # A server writes its files (the cluster's nodes file, its log) as it
    # shuts down: wait until each has exited before removing the directory,
    # or the removal races with those writes and fails.
    pids=()
    for p in 6390 6391 6392 6393; do
      if [ -f "$dir/$p.pid" ]; then
        pid=$(cat "$dir/$p.pid")
        kill "$pid" 2>/dev/null && pids+=("$pid")
      fi
    done
    # (Killed only if still there after 10 s: a pid that exited may name
    # another process by then.)
    for pid in "${pids[@]}"; do
      for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || continue 2; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$dir" 2>/dev/null || { sleep 0.2; rm -rf "$dir"; }
    ;;
esac
