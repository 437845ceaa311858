#!/usr/bin/env bash
# The reliability scoreboard (docs/benchmarks.md, "Reliability"): delivery under churn with
# tidings-bench jitter — every client dropped about every 15 s and offline about 2 s while a
# publisher broadcasts 2 messages a second, 120 in all.
#   one:     one Tidings node, 10,000 clients;
#   cluster: three Tidings nodes on one Redis (append-only, so a restart keeps the data),
#            10,000 clients spread over them and reconnecting to any; 20 s in, one node is
#            killed with SIGKILL; 40 s in, Redis is killed and started again on its data;
#   sio:     one socketioxide node (Socket.IO + Redis adapter, no recovery), 10,000 clients.
#   bench/reliability.sh [one|cluster|sio]…     (default: all)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/reliability
mkdir -p "$OUT"
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(one cluster sio)
cargo build --release --workspace -q
BENCH=target/release/tidings-bench
CLIENTS=${CLIENTS:-10000}
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
start() { # name port command…
  local name=$1 port=$2; shift 2
  "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!); LAST_PID=$!
  wait_port "$port"
}
jitter() { # label args…
  local label=$1; shift
  "$BENCH" jitter -n "$CLIENTS" --broadcasts 120 "$@" | tee "$OUT/$label.txt"
}

for section in "${SECTIONS[@]}"; do
  case $section in
  one)
    start tidings-one 28001 target/release/tidings --listen 127.0.0.1:28001 --log warn
    jitter one --url ws://127.0.0.1:28001/ws --pid "$LAST_PID"
    cleanup
    ;;
  cluster)
    dir=$OUT/redis-data; rm -rf "$dir"; mkdir -p "$dir"
    redis_cmd=(redis-server --port 28100 --dir "$dir" --save "" --appendonly yes --appendfsync always)
    start redis 28100 "${redis_cmd[@]}"; redis=$LAST_PID
    urls=(); pids=()
    for i in 1 2 3; do
      start "tidings-$i" $((28100 + i)) target/release/tidings --listen "127.0.0.1:$((28100 + i))" \
        --redis-url redis://127.0.0.1:28100 --log warn
      urls+=(--url "ws://127.0.0.1:$((28100 + i))/ws"); pids+=("$LAST_PID")
    done
    (
      sleep 20; echo "$(date +%T) killing node 2 (SIGKILL)"; kill -9 "${pids[1]}"
      sleep 20; echo "$(date +%T) killing Redis and starting it again on its data"
      kill -9 "$redis"; sleep 1
      "${redis_cmd[@]}" >"$OUT/redis-again.log" 2>&1 &
      echo $! >"$OUT/redis-again.pid"
    ) &
    PIDS+=($!)
    jitter cluster "${urls[@]}" --pid "${pids[0]}" --pid "${pids[2]}"
    [ -f "$OUT/redis-again.pid" ] && PIDS+=("$(cat "$OUT/redis-again.pid")")
    cleanup
    ;;
  sio)
    (cd bench/peers/socketioxide && cargo build --release -q)
    start redis-sio 28200 redis-server --port 28200 --save "" --appendonly no
    start socketioxide 28201 bench/peers/socketioxide/target/release/socketioxide-peer \
      --listen 127.0.0.1:28201 --redis-url redis://127.0.0.1:28200
    jitter sio --protocol socketio --url ws://127.0.0.1:28201 --pid "$LAST_PID"
    cleanup
    ;;
  esac
done
