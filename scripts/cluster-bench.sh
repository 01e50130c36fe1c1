#!/usr/bin/env bash
# Cross-node chat through one Redis against a Redis Cluster, with three engine
# nodes: delivery latency at a stated rate, and the Redis CPU spent per message
# sent (the primaries' used_cpu_user+used_cpu_sys over the run, divided by the
# messages sent), with each primary's share of it. BENCHMARKS.md quotes it.
#
#   scripts/cluster-bench.sh single 6000      # one redis-server
#   scripts/cluster-bench.sh cluster 6000     # 3 primaries + 3 replicas
#
# The second argument is the messages sent per second over all rooms (rooms of
# 2, members on different nodes, 1,000 rooms). RUNS (default 3) runs, each on
# fresh processes; WORKERS (default 1) per engine node; SECS (default 10) per run.
# ACK (default: the engine's) sets --redis-ack-replicas. EXTRA adds engine flags
# (e.g. EXTRA="--language-parts en=6"). SERVER (default target/release/rendezvous)
# runs another engine build, to compare two commits. LOAD=storm measures matching instead:
# the second argument is then arrivals per second of loadtest/scenarios/
# match-storm.toml (new connections, every search in one language, `en`: the
# hot-language case), and the CPU is per arriving user. Prints one line per run
# and leaves the result JSON files in target/cluster-bench/MODE-RATE/. Needs a
# release build of rendezvous and rendezvous-loadtest, and redis-server/redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: $0 single|cluster RATE}
rate=${2:?usage: $0 single|cluster RATE}
runs=${RUNS:-3}
workers=${WORKERS:-1}
secs=${SECS:-10}
load=${LOAD:-chat}
read -r -a extra_flags <<<"${EXTRA:-}"
server=${SERVER:-target/release/rendezvous}
out=target/cluster-bench/$load-$mode-$rate
rm -rf "$out"
mkdir -p "$out"
pids=()
ports=()

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  ports=()
}
trap stop_all EXIT

wait_ready() {
  for _ in $(seq 1 200); do
    if curl -fs -o /dev/null "http://127.0.0.1:$1/readyz"; then return 0; fi
    sleep 0.1
  done
  echo "node on port $1 not ready" >&2
  return 1
}

redis_cpu() { # seconds of CPU the server on port $1 used so far
  redis-cli -p "$1" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'
}

start_redis() {
  local p dir
  for p in "$@"; do
    dir="$out/run-$run/redis-$p"
    mkdir -p "$dir"
    local extra=()
    if [ "$mode" = cluster ]; then
      extra=(--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000)
    fi
    redis-server --port "$p" --save "" --appendonly no --dir "$dir" "${extra[@]}" \
      >"$dir/log" 2>&1 &
    pids+=($!)
    ports+=("$p")
  done
  for p in "$@"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

primaries=()
start_store() {
  if [ "$mode" = single ]; then
    start_redis 6410
    primaries=(6410)
    url=redis://127.0.0.1:6410
    return
  fi
  start_redis 7110 7111 7112 7113 7114 7115
  redis-cli --cluster create 127.0.0.1:7110 127.0.0.1:7111 127.0.0.1:7112 \
    127.0.0.1:7113 127.0.0.1:7114 127.0.0.1:7115 --cluster-replicas 1 --cluster-yes \
    >"$out/create.log" 2>&1
  for _ in $(seq 1 100); do
    local ok=1 p
    for p in 7110 7111 7112 7113 7114 7115; do
      redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0
      if redis-cli -p "$p" info replication | grep -q role:slave; then
        redis-cli -p "$p" info replication | grep -q master_link_status:up || ok=0
      fi
    done
    [ "$ok" = 1 ] && break
    sleep 0.2
  done
  primaries=()
  for p in 7110 7111 7112 7113 7114 7115; do
    redis-cli -p "$p" info replication | grep -q role:master && primaries+=("$p")
  done
  url=redis+cluster://127.0.0.1:7110,127.0.0.1:7111,127.0.0.1:7112
}

per_member=$(awk -v r="$rate" 'BEGIN {printf "%.4f", r / 2000}')
for run in $(seq 1 "$runs"); do
  start_store
  ack=()
  [ -n "${ACK:-}" ] && ack=(--redis-ack-replicas "$ACK")
  for n in 0 1 2; do
    "$server" --bind "127.0.0.1:$((8410 + n))" --redis-url "$url" \
      --node-id "b$n" --workers "$workers" "${ack[@]}" "${extra_flags[@]}" \
      >"$out/node-$n-$run.log" 2>&1 &
    pids+=($!)
  done
  for n in 0 1 2; do wait_ready $((8410 + n)); done
  sleep 1
  # Sample every primary's CPU twice a second while the load runs.
  ( while true; do
      line=$(date +%s.%N)
      for p in "${primaries[@]}"; do line+=" $(redis_cpu "$p")"; done
      echo "$line"
      sleep 0.5
    done ) >"$out/cpu-$run.txt" &
  sampler=$!
  sleep 1
  urls='urls=["ws://127.0.0.1:8410/ws","ws://127.0.0.1:8411/ws","ws://127.0.0.1:8412/ws"]'
  if [ "$load" = storm ]; then
    target/release/rendezvous-loadtest run loadtest/scenarios/match-storm.toml --set "$urls" \
      --set "storm.rate=$rate" --set storm.language=en --set "duration_secs=$secs" \
      --json "$out/run-$run.json" >"$out/run-$run.txt" 2>&1 || true
  else
    target/release/rendezvous-loadtest run loadtest/scenarios/multi-node.toml --set "$urls" \
      --set chat.rooms=1000 --set "chat.rate=$per_member" --set "duration_secs=$secs" \
      --json "$out/run-$run.json" >"$out/run-$run.txt" 2>&1 || true
  fi
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  # Redis CPU over the sending phase only (the load tester's timeline, less its
  # first and last second), per message delivered in it.
  python3 - "$out/run-$run.json" "$out/cpu-$run.txt" "$mode" "$rate" "$run" "$load" <<'PY'
import json, sys
res, cpu, mode, rate, run, load = sys.argv[1:]
r = json.load(open(res))
t = r["timeline"]
pts = t["points"]
# The sending seconds, less the first and the last (the drain after is left out).
last = min(len(pts), int(r["duration_s"])) - 1
t0 = t["origin_unix"] + t["interval_s"]
t1 = t["origin_unix"] + t["interval_s"] * last
msgs = sum(p["achieved"] for p in pts[1:last])
rows = [list(map(float, l.split())) for l in open(cpu) if l.strip()]
def at(ts):  # CPU of each primary at ts, interpolated between samples
    for a, b in zip(rows, rows[1:]):
        if a[0] <= ts <= b[0]:
            f = (ts - a[0]) / (b[0] - a[0]) if b[0] > a[0] else 0
            return [x + f * (y - x) for x, y in zip(a[1:], b[1:])]
    return None
a, b = at(t0), at(t1)
res_ = r["results"]
if load == "storm":
    p99 = res_["match_latency"]["p99_ms"]
    cross = res_["cross_node_match_latency"]["p99_ms"]
    wait = res_["arrival_to_match"]
    what = f"matched={res_['matched']} wait_p50_ms={wait['p50_ms']} wait_p99_ms={wait['p99_ms']} " \
           f"match_p99_ms={p99} cross_node_match_p99_ms={cross} " \
           f"double={res_['double_matches']} asymmetric={res_['asymmetric_pairs']}"
    unit = "user"
else:
    p99 = res_["delivery_latency"]["p99_ms"] if isinstance(res_["delivery_latency"], dict) else None
    what = f"sent={res_['sent']} delivery_p99_ms={p99} lost={res_['lost']}"
    unit = "msg"
if a is None or b is None or msgs == 0:
    print(f"{mode} rate={rate} run={run}: no CPU window (samples {len(rows)}, msgs {msgs})")
    sys.exit(0)
used = [y - x for x, y in zip(a, b)]
total = sum(used)
shares = " ".join(f"{100 * u / total:.0f}%" for u in used) if total > 0 else "-"
print(f"{load} {mode} rate={rate} run={run} {what} "
      f"window_{unit}s={msgs} redis_cpu_us_per_{unit}={1e6 * total / msgs:.1f} primary_shares={shares}")
PY
  stop_all
done
