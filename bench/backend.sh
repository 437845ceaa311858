#!/usr/bin/env bash
# What a call through Tidings to the app's backend costs (docs/benchmarks.md, "Backend calls"):
# one Tidings node with --proxy-rpc pointing at tidings-bench's minimal backend, and C
# connections each keeping one rpc in flight for 10 s; beside each figure, the CPU of Tidings,
# of the backend and of the generator.
#   bench/backend.sh [CONNECTIONS…]     (default: 1 10 100 1000)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/backend-bench
mkdir -p "$OUT"
COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(1 10 100 1000)
cargo build --release --workspace -q
BENCH=target/release/tidings-bench
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

"$BENCH" backend --listen 127.0.0.1:9181 >"$OUT/backend.log" 2>&1 &
PIDS+=($!); BACKEND=$!
wait_port 9181
# Closed-loop callers send far above the default command rate: lift it for the measurement.
target/release/tidings --listen 127.0.0.1:9180 --log warn --proxy-rpc http://127.0.0.1:9181/rpc \
  --command-rate 1000000 --command-burst 1000000 >"$OUT/tidings.log" 2>&1 &
PIDS+=($!); TIDINGS=$!
wait_port 9180
for c in "${COUNTS[@]}"; do
  echo "== $c connections"
  "$BENCH" rpc --url ws://127.0.0.1:9180/ws --connections "$c" --duration 10 \
    --pid "$TIDINGS" --pid "$BACKEND"
done
