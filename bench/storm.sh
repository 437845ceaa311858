#!/usr/bin/env bash
# The reconnect storm behind docs/benchmarks.md ("Reconnect storm"): CLIENTS (default 15,000)
# clients subscribed on node 1 of two nodes sharing one Redis, a publisher on node 2; node 1
# is SIGKILLed and every client comes back on node 2 after tidings.js's jittered back-off —
# Tidings clients from their last position (recovering what they missed), Socket.IO clients
# into their room (socketioxide with its Redis adapter cannot recover).
#
#   bench/storm.sh [SECTION…]     sections: tidings sio (default: both)
#   CLIENTS=5000 bench/storm.sh tidings
#   TIDINGS_BIN=/tmp/tidings-before bench/storm.sh tidings   another Tidings binary
#
# Loopback only; every process it starts is stopped on exit. `nstat` (iproute2), when
# present, shows the kernel's accept-queue overflows and SYN retransmissions of each run.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/storm
mkdir -p "$OUT"
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(tidings sio)
CLIENTS=${CLIENTS:-15000}
TIDINGS_BIN=${TIDINGS_BIN:-target/release/tidings}
SIO=bench/peers/socketioxide/target/release/socketioxide-peer

cargo build --release --workspace -q
source bench/lib.sh

storm() { # label protocol url1 url2 pid1 pid2
  local label=$1 protocol=$2 url1=$3 url2=$4 pid1=$5 pid2=$6
  command -v nstat >/dev/null && nstat -n >/dev/null
  "$BENCH" --protocol "$protocol" storm -n "$CLIENTS" --url "$url1" --url "$url2" \
    --kill "$pid1" --pid "$pid1" --pid "$pid2" 2>"$OUT/$label.err" | tee "$OUT/$label.txt"
  if command -v nstat >/dev/null; then
    echo "kernel: $(nstat -z | awk '/ListenOverflows|TCPSynRetrans/ {printf "%s %s  ", $1, $2}')"
  fi
}

for section in "${SECTIONS[@]}"; do
  case $section in
  tidings)
    port=$(free_port); redis "$port"
    p1=$(free_port); start tidings-1 "$p1" "$TIDINGS_BIN" --listen "127.0.0.1:$p1" --log warn \
      --redis-url "redis://127.0.0.1:$port"; pid1=$LAST_PID
    p2=$(free_port); start tidings-2 "$p2" "$TIDINGS_BIN" --listen "127.0.0.1:$p2" --log warn \
      --redis-url "redis://127.0.0.1:$port"; pid2=$LAST_PID
    storm tidings tidings "ws://127.0.0.1:$p1/ws" "ws://127.0.0.1:$p2/ws" "$pid1" "$pid2"
    cleanup; PIDS=()
    ;;
  sio)
    (cd bench/peers/socketioxide && cargo build --release -q)
    port=$(free_port); redis "$port"
    p1=$(free_port); start sio-1 "$p1" "$SIO" --listen "127.0.0.1:$p1" \
      --redis-url "redis://127.0.0.1:$port"; pid1=$LAST_PID
    p2=$(free_port); start sio-2 "$p2" "$SIO" --listen "127.0.0.1:$p2" \
      --redis-url "redis://127.0.0.1:$port"; pid2=$LAST_PID
    storm sio socketio "ws://127.0.0.1:$p1" "ws://127.0.0.1:$p2" "$pid1" "$pid2"
    cleanup; PIDS=()
    ;;
  *) echo "unknown section $section" >&2; exit 2 ;;
  esac
done
