#!/usr/bin/env bash
# Before/after for a change that must not cost speed or memory: the same tidings-bench runs
# against two tidings binaries, interleaved (before, after, before, after…) so that a noisy
# machine hurts both alike. Loopback only; each server is stopped after its run.
#
#   bench/ab.sh BEFORE_BINARY AFTER_BINARY [REPEATS]
#
# e.g. the binary of an earlier commit:
#   git worktree add /tmp/before COMMIT && (cd /tmp/before && cargo build --release -p tidings)
#   cargo build --release --workspace
#   bench/ab.sh /tmp/before/target/release/tidings target/release/tidings
#
# Runs fan-out (1,000 subscribers, 2 publishers, 400k/800k/1.6M deliveries/s offered, 5 s),
# idle (IDLE_CONNECTIONS connections, 10,000 unless set; 19,000 is the most one generator
# process holds) and chat over HTTP streams (CHAT_ROOMS rooms × 10 members at 1 msg/s for 10 s,
# 200 rooms unless set: `chat --transport stream`, each member a GET /stream session publishing
# with POST /stream). One JSON report per run in target/ab/, a line per run on stdout (with
# the errors when there were any: a 429 from the stream's per-address budget is one).
# CHAT_MEMBERS sets the members per room (10 unless set); SCENARIOS picks which of
# `fanout idle chat` run (all unless set), e.g. a stream fan-out that loads the server:
#   SCENARIOS=chat CHAT_ROOMS=20 CHAT_MEMBERS=100 bench/ab.sh BEFORE AFTER
# BENCH overrides the tidings-bench binary (target/release/tidings-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY [REPEATS]" >&2; exit 2; }
declare -A BINARY=([before]=$1 [after]=$2)
REPEATS=${3:-2}
BENCH=${BENCH:-target/release/tidings-bench}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
CHAT_ROOMS=${CHAT_ROOMS:-200}
CHAT_MEMBERS=${CHAT_MEMBERS:-10}
SCENARIOS=${SCENARIOS:-fanout idle chat}
wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
OUT=target/ab
mkdir -p "$OUT"
port=21000

summary() { # json label
  python3 - "$1" "$2" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    lat = r.get("latency") or {}
    srv = (r.get("servers") or [{}])[0]
    per = r.get("rss_kib_per_connection")
    print(f'{sys.argv[2]:<22} offered/s {r.get("offered_per_sec", 0):>9.0f} '
          f'delivered/s {r.get("delivered_per_sec", 0):>9.0f} lost {r.get("lost")} '
          f'p50 {lat.get("p50_ms", 0):.1f} p99 {lat.get("p99_ms", 0):.1f} '
          f'cpu {srv.get("cpu_percent", 0):.0f}% rss {srv.get("rss_kib", 0) / 1024:.0f}MiB '
          f'gen {r.get("generator_cpu_percent", 0):.0f}%'
          + (f" KiB/conn {per:.2f}" if per else "")
          + (f" errors {r['errors']}" if r.get("errors") else ""), flush=True)
PY
}

run() { # label binary scenario-args…
  local label=$1 binary=$2 pid
  shift 2
  port=$((port + 1))
  "$binary" --listen "127.0.0.1:$port" --log warn >"$OUT/$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  timeout 300 "$BENCH" "$@" --url "ws://127.0.0.1:$port/ws" --pid "$pid" --json \
    >"$OUT/$label.json" 2>"$OUT/$label.err" || echo "$label: tidings-bench failed"
  summary "$OUT/$label.json" "$label" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wanted fanout && for rep in $(seq "$REPEATS"); do
  for rate in 400 800 1600; do
    for which in before after; do
      run "fanout-$rate-$which-$rep" "${BINARY[$which]}" fanout -s 1000 -p 2 -r "$rate" -d 5
    done
  done
done
wanted idle && for rep in $(seq "$REPEATS"); do
  for which in before after; do
    run "idle-$IDLE_CONNECTIONS-$which-$rep" "${BINARY[$which]}" idle -n "$IDLE_CONNECTIONS"
  done
done
wanted chat && for rep in $(seq "$REPEATS"); do
  for which in before after; do
    run "chat-stream-$CHAT_ROOMS-$CHAT_MEMBERS-$which-$rep" "${BINARY[$which]}" \
      chat --transport stream -c "$CHAT_ROOMS" -m "$CHAT_MEMBERS" -r 1 -d 10
  done
done
true
