#!/usr/bin/env bash
# The side-by-side run behind docs/benchmarks.md: Tidings, the naive broadcast server, the
# socketioxide peer and the FastAPI + broadcaster peer, measured by tidings-bench in one
# session on this machine. Loopback only; every process it starts is stopped on exit.
#
#   bench/compare.sh [SECTION…]     sections: fanout1k fanout10k tail100k pinned1k idle crossnode
#                                   scaleout channels chat
#                                   (default: all of them)
#   SERVERS="tidings naive" bench/compare.sh fanout1k     limits the fan-out sections' servers
#                                   (tidings, tidings-redis: one node on a Redis of its own,
#                                   naive, socketioxide)
#   RATESPINNED="2000 3000" PINNED_QUEUE=1MiB bench/compare.sh pinned1k   other rates, and
#                                   Tidings' queue depth there (default 512MiB, see the section)
#
# Needs: cargo (release builds), redis-server, and for the peers
#   - socketioxide: built by this script (bench/peers/socketioxide, its own Cargo project);
#   - FastAPI: a venv with bench/peers/fastapi/requirements.txt at $FASTAPI_VENV
#     (default /tmp/fapi; skipped when missing).
# Results: one JSON report per run in target/compare/, and a table line per run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/compare
mkdir -p "$OUT"
FASTAPI_VENV=${FASTAPI_VENV:-/tmp/fapi}
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(fanout1k fanout10k idle crossnode channels chat)

cargo build --release --workspace -q
(cd bench/peers/socketioxide && cargo build --release -q)
source bench/lib.sh

naive() { start "naive-$1" "$1" target/release/naive-broadcast "127.0.0.1:$1"; }
sio() { # port redis_port
  start "socketioxide-$1" "$1" bench/peers/socketioxide/target/release/socketioxide-peer \
    --listen "127.0.0.1:$1" --redis-url "redis://127.0.0.1:$2"
}
fastapi() { # port redis_port
  [ -x "$FASTAPI_VENV/bin/uvicorn" ] || return 1
  (cd bench/peers/fastapi && REDIS_URL="redis://127.0.0.1:$2" exec "$FASTAPI_VENV/bin/uvicorn" app:app \
    --host 127.0.0.1 --port "$1" --log-level warning --workers 1) >"$OUT/fastapi-$1.log" 2>&1 &
  PIDS+=($!); LAST_PID=$!
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

# Flags every Tidings of the fan-out sections gets (a section may set them).
TIDINGS_ARGS=()

# Fan-out at fixed offered rates (deliveries/s = rate × subscribers) against each server.
fanout_set() { # subscribers rates…
  local subs=$1; shift
  local rates=("$@") port rport
  for server in ${SERVERS:-tidings tidings-redis naive socketioxide}; do
    for rate in "${rates[@]}"; do
      port=$(free_port)
      case $server in
        tidings) tidings "$port" "${TIDINGS_ARGS[@]}"; url=ws://127.0.0.1:$port/ws; proto=tidings ;;
        tidings-redis) rport=$(free_port); redis "$rport"; local redis_pid=$LAST_PID
                       tidings "$port" --redis-url "redis://127.0.0.1:$rport" "${TIDINGS_ARGS[@]}"
                       url=ws://127.0.0.1:$port/ws; proto=tidings ;;
        naive) naive "$port"; url=ws://127.0.0.1:$port/; proto=naive ;;
        socketioxide) rport=$(free_port); redis "$rport"; local redis_pid=$LAST_PID
                      sio "$port" "$rport"; url=ws://127.0.0.1:$port; proto=socketio ;;
      esac
      local pid=$LAST_PID
      run "fanout-$subs-$server-$rate${ROUND:+-round$ROUND}" fanout --protocol "$proto" --url "$url" \
        --pid "$pid" -s "$subs" -p 2 -r "$rate" -d "${DURATION:-5}" || true
      stop "$pid"
      case $server in socketioxide|tidings-redis) stop "$redis_pid" ;; esac
    done
  done
}

for section in "${SECTIONS[@]}"; do
  case $section in
  fanout1k)
    fanout_set 1000 100 400 800 1200 1600
    rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
    for rate in 10 20 40; do
      port=$(free_port)
      if fastapi "$port" "$rport"; then
        pid=$LAST_PID
        run "fanout-1000-fastapi-$rate" fanout --protocol naive \
          --url "ws://127.0.0.1:$port/ws?username=bench&token=" --pid "$pid" -s 1000 -p 1 -r "$rate" -d 5 || true
        stop "$pid"
      fi
    done
    stop "$redis_pid"
    ;;
  fanout10k)
    fanout_set 10000 ${RATES10K:-10 20 40 80 160}
    ;;
  tail100k) # p99 and p99.9 at 100,000 deliveries/s: the servers in turn, ROUNDS times
    for round in $(seq "${ROUNDS:-5}"); do
      SERVERS=${SERVERS:-tidings naive socketioxide} ROUND=$round DURATION=6 fanout_set 1000 100
    done
    ;;
  pinned1k) # each server (and its Redis) on CPU 0, the generator on CPU 1
    # Saturation: up to 1,500 publications/s from each of the 2 publishers, so the
    # per-connection limits (1,000/s by default) are raised as a user of such a publisher would
    # raise them; and Tidings' queues are made as deep as the peer's, which has no bound
    # (512 MiB), so that past saturation it queues as the peer does instead of closing the
    # subscribers that fall behind (4000): the delivered rate is then each server's capacity.
    TIDINGS_ARGS=(--publish-rate 5000 --publish-burst 5000 --command-rate 10000
      --command-burst 10000 --max-queue-size "${PINNED_QUEUE:-512MiB}")
    SERVERS=${SERVERS:-tidings tidings-redis socketioxide} SERVER_CPUS=0 GENERATOR_CPUS=1 \
      fanout_set 1000 ${RATESPINNED:-1000 1500 2000 3000 4000 5000}
    TIDINGS_ARGS=()
    ;;
  idle)
    port=$(free_port); tidings "$port"; pid=$LAST_PID
    run idle-19000-tidings idle --url "ws://127.0.0.1:$port/ws" --pid "$pid" -n 19000
    stop "$pid"
    port=$(free_port); naive "$port"; pid=$LAST_PID
    run idle-19000-naive idle --protocol naive --url "ws://127.0.0.1:$port/" --pid "$pid" -n 19000
    stop "$pid"
    rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
    port=$(free_port); sio "$port" "$rport"; pid=$LAST_PID
    run idle-19000-socketioxide idle --protocol socketio --url "ws://127.0.0.1:$port" --pid "$pid" -n 19000
    stop "$pid"
    port=$(free_port)
    if fastapi "$port" "$rport"; then
      pid=$LAST_PID
      run idle-2000-fastapi idle --protocol naive --url "ws://127.0.0.1:$port/ws?username=bench&token=" \
        --pid "$pid" -n 2000
      stop "$pid"
      port=$(free_port); tidings "$port"; pid=$LAST_PID
      run idle-2000-tidings idle --url "ws://127.0.0.1:$port/ws" --pid "$pid" -n 2000
      stop "$pid"
    fi
    stop "$redis_pid"
    ;;
  crossnode)
    port=$(free_port); tidings "$port"; pid=$LAST_PID
    run crossnode-1node-10000 fanout --url "ws://127.0.0.1:$port/ws" --pid "$pid" -s 10000 -p 4 -r 20 -d 5
    stop "$pid"
    rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
    p1=$(free_port); tidings "$p1" --redis-url "redis://127.0.0.1:$rport"; n1=$LAST_PID
    p2=$(free_port); tidings "$p2" --redis-url "redis://127.0.0.1:$rport"; n2=$LAST_PID
    redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
    run crossnode-2nodes-10000 fanout --url "ws://127.0.0.1:$p1/ws" --url "ws://127.0.0.1:$p2/ws" \
      --pid "$n1" --pid "$n2" --pid "$redis_pid" -s 10000 -p 4 -r 20 -d 5
    redis-cli -p "$rport" INFO commandstats | grep -E "cmdstat_(publish|evalsha|subscribe)" | tee "$OUT/crossnode-commandstats.txt"
    stop "$n1"; stop "$n2"; stop "$redis_pid"
    ;;
  scaleout)
    # Redis at saturation: one node, then 2 nodes × 500 subscribers with the one publisher on
    # the first node, at the same offered rates. One publisher of up to 1,600 publications/s
    # needs the per-connection limits raised, as a user of such a publisher would.
    limits=(--publish-rate 5000 --publish-burst 5000 --command-rate 10000 --command-burst 10000)
    for rate in 400 800 1200 1600; do
      rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
      p1=$(free_port); tidings "$p1" --redis-url "redis://127.0.0.1:$rport" "${limits[@]}"; n1=$LAST_PID
      run "scaleout-1node-$rate" fanout --url "ws://127.0.0.1:$p1/ws" --pid "$n1" --pid "$redis_pid" \
        -s 1000 -p 1 -r "$rate" -d 5
      stop "$n1"; stop "$redis_pid"
      rport=$(free_port); redis "$rport"; redis_pid=$LAST_PID
      p1=$(free_port); tidings "$p1" --redis-url "redis://127.0.0.1:$rport" "${limits[@]}"; n1=$LAST_PID
      p2=$(free_port); tidings "$p2" --redis-url "redis://127.0.0.1:$rport" "${limits[@]}"; n2=$LAST_PID
      # Subscribers alternate between the URLs; the publisher is connection 1,000: node 1.
      run "scaleout-2nodes-$rate" fanout --url "ws://127.0.0.1:$p1/ws" --url "ws://127.0.0.1:$p2/ws" \
        --pid "$n1" --pid "$n2" --pid "$redis_pid" -s 1000 -p 1 -r "$rate" -d 5
      stop "$n1"; stop "$n2"; stop "$redis_pid"
    done
    ;;
  channels)
    port=$(free_port); tidings "$port"; pid=$LAST_PID
    # 9,990 rooms: one node holds every connection, and 20,000 open files (the hard limit here)
    # must also cover its listener and standard streams.
    run channels-9990x2 chat --url "ws://127.0.0.1:$port/ws" --pid "$pid" -c 9990 -m 2 -r 1 -d 10 --processes 2
    stop "$pid"
    # The reference: the same 20,000 publications/s and 40,000 deliveries/s on one channel.
    port=$(free_port); tidings "$port"; pid=$LAST_PID
    run channels-1x2 fanout --url "ws://127.0.0.1:$port/ws" --pid "$pid" -s 2 -p 40 -r 20000 -d 10
    stop "$pid"
    ;;
  chat)
    port=$(free_port); tidings "$port"; pid=$LAST_PID
    run chat-500x10 chat --url "ws://127.0.0.1:$port/ws" --pid "$pid" -c 500 -m 10 -r 1 -d 10
    stop "$pid"
    ;;
  *) echo "unknown section $section" >&2; exit 2 ;;
  esac
done
