# What the comparison scripts share (sourced by bench/compare.sh and bench/pusher.sh): starting
# and stopping servers on free loopback ports, and one tidings-bench run as a summary line.
# The sourcing script sets OUT (where logs and JSON reports go) first.

BENCH=target/release/tidings-bench
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Below Linux's ephemeral range (32768+), which the generator's own connections use up.
free_port() {
  python3 -c '
import random, socket
while True:
    port = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass
    finally:
        s.close()
'
}

# SERVER_CPUS / GENERATOR_CPUS (taskset lists, e.g. 0 and 1), when set, pin what `start`
# starts and the generator `run` starts: each side gets its own cores, so a server's ceiling
# is its own and not what the generator leaves it. (taskset execs the command: $! stays the
# server's pid.)
pin() { # cpus → the command prefix, one word per line
  [ -z "$1" ] || printf '%s\n' taskset -c "$1"
}

# Starts a process in the background; waits until PORT accepts connections.
start() { # name port command…
  local name=$1 port=$2; shift 2
  local prefix; mapfile -t prefix < <(pin "${SERVER_CPUS:-}")
  "${prefix[@]}" "$@" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
  for _ in $(seq 200); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$name did not start; see $OUT/$name.log" >&2
  exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

redis() { # port → starts a throwaway redis-server
  start "redis-$1" "$1" redis-server --port "$1" --save "" --appendonly no
}

# One bench run: LABEL, then tidings-bench arguments; prints a summary line.
run() {
  local label=$1; shift
  local prefix; mapfile -t prefix < <(pin "${GENERATOR_CPUS:-}")
  if ! timeout 300 "${prefix[@]}" "$BENCH" "$@" --json >"$OUT/$label.json" 2>"$OUT/$label.err"; then
    echo "$label: tidings-bench failed: $(tail -1 "$OUT/$label.err")"
    return 0
  fi
  python3 - "$OUT/$label.json" "$label" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    lat = r.get("latency") or {}
    srv = r.get("servers") or []
    cpu = "+".join(f"{s.get('cpu_percent', 0):.0f}%" for s in srv)
    rss = "+".join(f"{s.get('rss_kib', 0)/1024:.0f}MiB" for s in srv)
    per = r.get("rss_kib_per_connection")
    print(f"{sys.argv[2]:<28} conns {r.get('connections')} sent {r.get('sent')} expected {r.get('expected')} "
          f"delivered {r.get('delivered')} lost {r.get('lost')} dup {r.get('duplicated')} ooo {r.get('out_of_order')} "
          f"offered/s {r.get('offered_per_sec', 0):.0f} delivered/s {r.get('delivered_per_sec', 0):.0f} "
          f"p50 {lat.get('p50_ms', 0):.2f} p99 {lat.get('p99_ms', 0):.2f} p99.9 {lat.get('p999_ms', 0):.2f} max {lat.get('max_ms', 0):.1f} "
          f"cpu {cpu} rss {rss} gen {r.get('generator_cpu_percent', 0):.0f}%" + (f" KiB/conn {per:.2f}" if per else ""), flush=True)
EOF
}

tidings() { # port [flags…]
  local port=$1; shift
  start "tidings-$port" "$port" target/release/tidings --listen "127.0.0.1:$port" --log warn "$@"
}
