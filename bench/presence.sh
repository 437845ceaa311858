#!/usr/bin/env bash
# What presence costs, measured with tidings-bench (docs/benchmarks.md, "Presence"):
#   big:   100,000 members of one channel on six nodes sharing a Redis (one node holds at most
#          ~19,000 connections here): presence_stats and one page of 100 and of 1,000, and Redis
#          memory per member;
#   churn: a 10,000-member room on one node, 50 connections a second joining and leaving
#          (each stays 3 s), with joins and leaves coalesced (the default past 1,000 members)
#          and pushed one by one (join-leave-limit raised): the node's CPU and what one member
#          receives.
#   bench/presence.sh [big|churn]…      (default: both)
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/presence
mkdir -p "$OUT"
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(big churn)
cargo build --release --workspace -q
BENCH=target/release/tidings-bench
PIDS=()
cleanup() {
  # --processes children first: killing a parent does not stop them.
  for pid in "${PIDS[@]}"; do pkill -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
node() { # port extra-args…
  local port=$1; shift
  target/release/tidings --listen "127.0.0.1:$port" --log warn "$@" >"$OUT/node-$port.log" 2>&1 &
  PIDS+=($!); LAST_PID=$!
  wait_port "$port"
}
# Waits until presence_stats of CHANNEL on PORT reports N clients.
wait_members() { # port channel n
  for _ in $(seq 600); do
    local got
    got=$("$BENCH" presence --url "ws://127.0.0.1:$1/ws" --channel "$2" --queries 1 --json 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["clients"])' || echo 0)
    [ "$got" -ge "$3" ] && return 0
    sleep 1
  done
  echo "only $got of $3 members arrived" >&2
  return 1
}

for section in "${SECTIONS[@]}"; do
  case $section in
  big)
    rport=26379
    redis-server --port $rport --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
    PIDS+=($!); wait_port $rport
    before=$(redis-cli -p $rport INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    urls=(); pids=()
    for i in 1 2 3 4 5 6; do
      node $((26000 + i)) --redis-url "redis://127.0.0.1:$rport" --namespace "big:presence=true" \
        --ping-interval 10m
      urls+=(--url "ws://127.0.0.1:$((26000 + i))/ws"); pids+=(--pid "$LAST_PID")
    done
    "$BENCH" idle "${urls[@]}" -n 100000 --channels 1 --prefix big --processes 6 --hold 600 \
      >"$OUT/big-idle.out" 2>&1 &
    PIDS+=($!)
    wait_members 26001 big:idle:0 100000
    after=$(redis-cli -p $rport INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    keys=0
    for key in pm po pu pn; do
      bytes=$(redis-cli -p $rport MEMORY USAGE "tidings:{big:idle:0}:$key" SAMPLES 0 | tr -d '\r')
      keys=$((keys + ${bytes:-0}))
    done
    for key in $(redis-cli -p $rport --scan --pattern 'tidings:{big:idle:0}:pn:*'); do
      bytes=$(redis-cli -p $rport MEMORY USAGE "$key" SAMPLES 0 | tr -d '\r')
      keys=$((keys + ${bytes:-0}))
    done
    echo "redis used_memory: +$((after - before)) bytes for 100,000 members ($(( (after - before) / 100000 )) per member); presence keys $keys bytes ($((keys / 100000)) per member)"
    for page in 100 1000; do
      "$BENCH" presence --url ws://127.0.0.1:26001/ws --channel big:idle:0 --queries 200 --page $page \
        | tee "$OUT/big-page-$page.txt"
    done
    cleanup; PIDS=()
    ;;
  churn)
    for mode in coalesced one-by-one; do
      extra=()
      [ $mode = one-by-one ] && extra=(--namespace "room:presence=true,join-leave=client,join-leave-limit=1000000")
      [ $mode = coalesced ] && extra=(--namespace "room:presence=true,join-leave=client")
      node 26100 "${extra[@]}"
      pid=$LAST_PID
      "$BENCH" idle --url ws://127.0.0.1:26100/ws -n 10000 --channels 1 --prefix room --hold 600 \
        >"$OUT/churn-idle-$mode.out" 2>&1 &
      idle=$!; PIDS+=($idle)
      wait_members 26100 room:idle:0 10000
      sleep 2
      echo "== $mode"
      "$BENCH" presence --url ws://127.0.0.1:26100/ws --pid "$pid" --channel room:idle:0 --queries 20 \
        --churn 50 -d 10 --stay 3 | tee "$OUT/churn-$mode.txt"
      kill "$idle" "$pid" 2>/dev/null || true
      wait "$idle" "$pid" 2>/dev/null || true
      PIDS=()
    done
    ;;
  esac
done
