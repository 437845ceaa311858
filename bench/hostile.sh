#!/usr/bin/env bash
# What one hostile client can make a node do to everyone else (docs/benchmarks.md, "Hostile
# clients"): each scenario of `tidings-bench hostile` against fresh Tidings nodes (and a fresh
# redis-server where the row says Redis), with the default limits.
#   bench/hostile.sh [SECONDS]     (default 60; the stream flood runs 5 s, as the issue has it)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
OUT=target/hostile-bench
mkdir -p "$OUT"
cargo build --release --workspace -q
BENCH=target/release/tidings-bench
TIDINGS=target/release/tidings
SECRET=bench-token-secret-of-at-least-32-bytes
HOOK_SECRET=bench-webhook-secret-of-at-least-32-bytes
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

redis() { # PORT
  redis-server --port "$1" --save "" --appendonly no --dir "$OUT" >"$OUT/redis-$1.log" 2>&1 &
  PIDS+=($!); wait_port "$1"
}
node() { # NAME PORT ARGS…: starts a node, sets NODE to its pid
  local name=$1 port=$2; shift 2
  "$TIDINGS" --listen "127.0.0.1:$port" --log warn "$@" >"$OUT/$name.log" 2>&1 &
  NODE=$!; PIDS+=($NODE); wait_port "$port"
}
churn_node() { # NAME PORT WEBHOOK-PORT ARGS…
  local name=$1 port=$2 hook=$3; shift 3
  node "$name" "$port" --allow-anonymous --token-hmac-secret "$SECRET" \
    --webhook-url "http://127.0.0.1:$hook/hook" --webhook-secret "$HOOK_SECRET" "$@"
}

echo "== churn: 4 anonymous connections, unique channels, webhooks on, receiver up (50 ms a POST)"
churn_node churn-memory 9210 9211
"$BENCH" --url ws://127.0.0.1:9210/ws --pid "$NODE" hostile churn -d "$SECONDS_EACH" \
  --webhook-listen 127.0.0.1:9211 --token-secret "$SECRET"
cleanup

echo "== churn, as above, the receiver down (events wait in the queue)"
churn_node churn-memory-down 9212 9299
"$BENCH" --url ws://127.0.0.1:9212/ws --pid "$NODE" hostile churn -d "$SECONDS_EACH"
cleanup

echo "== churn on Redis, receiver up"
redis 9220
churn_node churn-redis 9221 9222 --redis-url redis://127.0.0.1:9220
"$BENCH" --url ws://127.0.0.1:9221/ws --pid "$NODE" hostile churn -d "$SECONDS_EACH" \
  --redis 127.0.0.1:9220 --webhook-listen 127.0.0.1:9222 --token-secret "$SECRET"
cleanup

echo "== churn on Redis, the receiver down"
redis 9223
churn_node churn-redis-down 9224 9299 --redis-url redis://127.0.0.1:9223
"$BENCH" --url ws://127.0.0.1:9224/ws --pid "$NODE" hostile churn -d "$SECONDS_EACH" \
  --redis 127.0.0.1:9223
cleanup

echo "== presence churn: one connection in and out of a 200-member chat room"
node presence 9230 --allow-anonymous
"$BENCH" --url ws://127.0.0.1:9230/ws --pid "$NODE" hostile presence-churn -d "$SECONDS_EACH"
cleanup

echo "== stream flood: made-up session ids from 127.0.0.2 against two nodes (5 s)"
redis 9240
node flood-a 9241 --allow-anonymous --redis-url redis://127.0.0.1:9240
A=$NODE
node flood-b 9242 --allow-anonymous --redis-url redis://127.0.0.1:9240
"$BENCH" --url ws://127.0.0.1:9241/ws --url ws://127.0.0.1:9242/ws --pid "$A" --pid "$NODE" \
  hostile stream-flood -d 5 --redis 127.0.0.1:9240
cleanup

echo "== backend answers: endless and 200 MB rpc answers"
node answers 9250 --allow-anonymous --proxy-rpc http://127.0.0.1:9251/rpc
"$BENCH" --url ws://127.0.0.1:9250/ws --pid "$NODE" hostile backend-answers --listen 127.0.0.1:9251
cleanup
