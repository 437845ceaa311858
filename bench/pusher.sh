#!/usr/bin/env bash
# The Pusher comparison behind docs/benchmarks.md ("Pusher protocol"): Tidings' Pusher door
# and Sockudo 5.x, measured by tidings-bench in one session on this machine, with the same app
# (bench:bench-key:bench-secret) and the same scenarios. Loopback only; every process it
# starts is stopped on exit.
#
#   bench/pusher.sh [SECTION…]    sections: fanout client chat idle twonodes
#                                 (default: all of them)
#   SERVERS="tidings" bench/pusher.sh fanout    limits the servers (tidings, sockudo)
#   TIDINGS_BIN=/tmp/tidings-before bench/pusher.sh fanout   measures another Tidings binary
#   RATES="800 1600" PUBLISHERS=16 bench/pusher.sh fanout     other rates, publishers
#
# Needs: cargo (release builds), redis-server, and Sockudo built with its Redis adapter as its
# users install it (it needs protoc: apt-get install protobuf-compiler):
#   cargo install sockudo --version 5.2.0 --features redis --locked --root /root/peers/sockudo
# found at $SOCKUDO (default: sockudo on PATH, else /root/peers/sockudo/bin/sockudo). Sockudo
# runs with every limit a load test would hit lifted (per-IP rate limits, app connection
# limit, client events per second), metrics, webhooks queue, idempotency and delta
# compression off, and its default per-connection buffer of 1,000 messages; Tidings with its
# defaults and --pusher-app.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/pusher
mkdir -p "$OUT"
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(fanout client chat idle twonodes)
SOCKUDO=${SOCKUDO:-$(command -v sockudo || echo /root/peers/sockudo/bin/sockudo)}
TIDINGS_BIN=${TIDINGS_BIN:-target/release/tidings}
APP=bench:bench-key:bench-secret

cargo build --release --workspace -q
source bench/lib.sh

# Sockudo's configuration: one app, limits lifted (see above); ADAPTER is local or redis.
sockudo_config() { # adapter redis_port → path
  local path="$OUT/sockudo-$1.json"
  python3 - "$1" "${2:-6379}" >"$path" <<'EOF'
import json, sys
adapter, redis_port = sys.argv[1], int(sys.argv[2])
config = {
    "debug": False, "mode": "production", "host": "127.0.0.1", "port": 6001,
    "max_connections": 0, "activity_timeout": 120, "shutdown_grace_period": 2,
    "websocket_max_payload_kb": 64,
    "adapter": {"driver": "local"},
    "app_manager": {"driver": "memory", "array": {"apps": [{
        "id": "bench", "key": "bench-key", "secret": "bench-secret", "enabled": True,
        "policy": {
            "limits": {"max_connections": 0, "max_client_events_per_second": 0},
            "features": {"enable_client_messages": True, "enable_user_authentication": False,
                         "enable_watchlist_events": False}}}]}},
    "cache": {"driver": "memory"},
    "queue": {"driver": "none"},
    "rate_limiter": {"enabled": False, "driver": "memory"},
    "metrics": {"enabled": False},
    "idempotency": {"enabled": False},
    "delta_compression": {"enabled": False},
    "tag_filtering": {"enabled": False},
    "connection_recovery": {"enabled": False},
    "websocket": {"max_messages": 1000, "disconnect_on_buffer_full": True},
}
if adapter == "redis":
    url = f"redis://127.0.0.1:{redis_port}"
    config["adapter"] = {"driver": "redis", "fallback_to_local": False, "redis": {
        "prefix": "sockudo_bench_adapter:", "requests_timeout": 5000,
        "redis_pub_options": {"url": url}, "redis_sub_options": {"url": url}}}
    config["database"] = {"redis": {"host": "127.0.0.1", "port": redis_port}}
print(json.dumps(config, indent=1))
EOF
  echo "$path"
}

sockudo() { # port [redis_port]
  local port=$1 config
  if [ $# -gt 1 ]; then config=$(sockudo_config redis "$2"); else config=$(sockudo_config local); fi
  # PORT overrides the file's port; a --config that fails to parse would be ignored silently,
  # so the log is checked for it below.
  PORT=$port RUST_LOG=warn INSTANCE_PROCESS_ID="node-$port" start "sockudo-$port" "$port" \
    "$SOCKUDO" --config "$config"
}

pusher_tidings() { # port [flags…]
  local port=$1; shift
  start "tidings-$port" "$port" "$TIDINGS_BIN" --listen "127.0.0.1:$port" --log warn \
    --pusher-app "$APP" "$@"
}

# One server of a single-node section on a fresh port: sets URL and PID.
single() { # server
  local port; port=$(free_port)
  case $1 in
    tidings) pusher_tidings "$port" ;;
    sockudo) sockudo "$port" ;;
  esac
  URL=ws://127.0.0.1:$port PID=$LAST_PID
}

for section in "${SECTIONS[@]}"; do
  case $section in
  fanout)
    # Fan-out through HTTP triggers: 1,000 subscribers, 32 publishers (one request at a time
    # each, as a backend's workers: a trigger waits for its answer, so fewer cannot saturate
    # either server), offered deliveries/s = RATE × 1,000.
    for server in ${SERVERS:-tidings sockudo}; do
      for rate in ${RATES:-100 400 800 1200 1600}; do
        single "$server"
        run "fanout-$server-$rate" fanout --protocol pusher --pusher-app "$APP" --url "$URL" \
          --pid "$PID" -s 1000 -p "${PUBLISHERS:-32}" -r "$rate" -d 5 || true
        stop "$PID"
      done
    done
    ;;
  client)
    # Fan-out through client events on a private channel: 1,000 subscribers and 100
    # publishers at up to 10 events/s each; every event reaches the 1,099 other connections.
    for server in ${SERVERS:-tidings sockudo}; do
      for rate in 250 500 1000; do
        single "$server"
        run "client-$server-$rate" fanout --protocol pusher-client --pusher-app "$APP" --url "$URL" \
          --pid "$PID" -s 1000 -p 100 -r "$rate" -d 5 || true
        stop "$PID"
      done
    done
    ;;
  chat)
    # 500 private rooms of 10 members, 1 client event/s each (9 deliveries per event).
    for server in ${SERVERS:-tidings sockudo}; do
      single "$server"
      run "chat-$server" chat --protocol pusher-client --pusher-app "$APP" --url "$URL" \
        --pid "$PID" -c 500 -m 10 -r 1 -d 10 || true
      stop "$PID"
    done
    ;;
  idle)
    # Idle Pusher connections, each subscribed to one of 1,000 public channels.
    for server in ${SERVERS:-tidings sockudo}; do
      for n in 2000 10000; do
        single "$server"
        run "idle-$server-$n" idle --protocol pusher --pusher-app "$APP" --url "$URL" \
          --pid "$PID" -n "$n" || true
        stop "$PID"
      done
    done
    ;;
  twonodes)
    # Two nodes on one Redis, 500 subscribers on each, publishers triggering on both.
    for server in ${SERVERS:-tidings sockudo}; do
      for rate in ${RATES2:-200 400 800 1200}; do
        rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
        p1=$(free_port); p2=$(free_port)
        case $server in
          tidings) pusher_tidings "$p1" --redis-url "redis://127.0.0.1:$rport"; n1=$LAST_PID
                   pusher_tidings "$p2" --redis-url "redis://127.0.0.1:$rport"; n2=$LAST_PID ;;
          sockudo) sockudo "$p1" "$rport"; n1=$LAST_PID
                   sockudo "$p2" "$rport"; n2=$LAST_PID ;;
        esac
        run "twonodes-$server-$rate" fanout --protocol pusher --pusher-app "$APP" \
          --url "ws://127.0.0.1:$p1" --url "ws://127.0.0.1:$p2" \
          --pid "$n1" --pid "$n2" --pid "$redis_pid" -s 1000 -p "${PUBLISHERS:-32}" -r "$rate" -d 5 || true
        stop "$n1"; stop "$n2"; stop "$redis_pid"
      done
    done
    ;;
  *) echo "unknown section $section" >&2; exit 2 ;;
  esac
done
