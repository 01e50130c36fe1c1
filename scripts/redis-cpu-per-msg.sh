#!/usr/bin/env bash
# Redis CPU per chat message sent, end to end: a fresh redis-server and two engine
# nodes, rooms of 2 with their members on different nodes (multi-node.toml) at a
# fixed rate well below what the machine holds, then
#
#   Redis CPU per message = delta(used_cpu_user + used_cpu_sys of `INFO cpu`)
#                           / messages sent (the load tester's result JSON)
#
# with each run's chat delivery and cross-node match latencies (p50 / p99, from the
# same JSON: the cost a linger adds shows there), and, from `INFO commandstats`
# (reset once both nodes are ready), Redis commands per message (calls of every
# command, inside scripts included, over the sent count) and where the time goes,
# per command. The CPU delta covers the whole load-tester run: setting up the
# pairs, heartbeats and key refreshes too. They are about 1 % of the calls but,
# unbatched, about 6 us per message of the CPU at these settings (RATE=0.1 shows
# them nearly alone).
# Runs RUNS times (default 3), each on fresh processes, and prints the median:
# CPU *time* per message holds roughly steady on a shared machine, one run does not.
#
#   scripts/redis-cpu-per-msg.sh            # 3 runs, 500 pairs, 5 msg/s per member
#   scripts/redis-cpu-per-msg.sh 5 -- --set chat.rate=2
#   REDIS_PORT=6499 BASE_PORT=8180 scripts/redis-cpu-per-msg.sh
#
# Settings (environment): ROOMS (500), RATE (5 messages/s per member, so
# 2 * ROOMS * RATE messages/s: 5,000/s by default), DURATION (10 s of sending),
# REDIS_PORT (6399), BASE_PORT (8080: nodes on BASE_PORT and BASE_PORT+1),
# SERVER (target/release/rendezvous), OUT (target/redis-cpu-per-msg), REDIS_WRAP
# (a command to run redis-server under). Arguments after `--` go to every
# `rendezvous-loadtest run`.
#
# CPU time per message rises and falls with what else runs on the machine. For a
# count that does not, run Redis under callgrind at a rate it holds there and
# read the instructions Redis ran (user space only) per message:
#   REDIS_WRAP="valgrind --tool=callgrind --callgrind-out-file=$PWD/target/redis-cpu-per-msg/cg.%p" \
#     ROOMS=100 RATE=1 scripts/redis-cpu-per-msg.sh 1
# prints "instructions per message" from the profile Redis writes when it stops.
#
# Needs a release build:
#   cargo build --release --locked -p rendezvous -p rendezvous-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
extra=("$@")
rooms=${ROOMS:-500}
rate=${RATE:-5}
duration=${DURATION:-10}
rport=${REDIS_PORT:-6399}
base=${BASE_PORT:-8080}
server=${SERVER:-target/release/rendezvous}
out=${OUT:-target/redis-cpu-per-msg}
mkdir -p "$out"
pids=()

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

wait_ready() {
  for _ in $(seq 1 100); do
    if curl -fs -o /dev/null "http://127.0.0.1:$1/readyz"; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 not ready" >&2
  return 1
}

rcli() { redis-cli -p "$rport" "$@"; }

for k in $(seq 1 "$runs"); do
  # shellcheck disable=SC2086 # REDIS_WRAP is a command line, split on purpose
  ${REDIS_WRAP:-} redis-server --port "$rport" --save "" --appendonly no --dir "$out" \
    >"$out/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do rcli PING >/dev/null 2>&1 && break; sleep 0.1; done
  if ! kill -0 "${pids[-1]}" 2>/dev/null; then
    echo "redis-server did not start on port $rport, see $out/redis.log" >&2
    exit 1
  fi
  for n in 0 1; do
    $server --bind "127.0.0.1:$((base + n))" --redis-url "redis://127.0.0.1:$rport" \
      --node-id "n$n" >"$out/server-$n.log" 2>&1 &
    pids+=($!)
  done
  wait_ready "$base"
  wait_ready $((base + 1))
  rcli CONFIG RESETSTAT >/dev/null
  rcli INFO cpu >"$out/run-$k.cpu-before.txt"
  code=0
  target/release/rendezvous-loadtest run loadtest/scenarios/multi-node.toml --quiet \
    --url "ws://127.0.0.1:$base/ws" --url "ws://127.0.0.1:$((base + 1))/ws" \
    --set "chat.rooms=$rooms" --set "chat.rate=$rate" --duration-secs "$duration" \
    --json "$out/run-$k.json" "${extra[@]}" >"$out/run-$k.txt" 2>&1 || code=$?
  rcli INFO cpu >"$out/run-$k.cpu-after.txt"
  rcli INFO commandstats >"$out/run-$k.commandstats.txt"
  stop_all
  # Exit 1 is a missed threshold of the file (its 20,000 msg/s floor, at this
  # lower rate): expected. Anything else is a failed run.
  if [ "$code" -gt 1 ] || [ ! -s "$out/run-$k.json" ]; then
    echo "run $k: load tester failed (exit $code), see $out/run-$k.txt" >&2
    exit 1
  fi
  if [ -n "${REDIS_WRAP:-}" ]; then
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"]["sent"])' "$out/run-$k.json")
    for f in "$out"/cg.*; do
      [ -e "$f" ] || continue
      ir=$(awk '/^summary:/ {print $2}' "$f")
      echo "run $k: $ir instructions in Redis (callgrind), $((ir / sent)) per message sent ($sent sent)"
      mv "$f" "$out/run-$k.callgrind"
    done
  fi
  echo "run $k: done"
done

python3 - "$out" "$runs" <<'EOF'
import json, re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])

def cpu(path):
    v = dict(l.strip().split(":", 1) for l in open(path) if ":" in l)
    return float(v["used_cpu_user"]) + float(v["used_cpu_sys"])

def stats(path):
    s = {}
    for l in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", l)
        if m and m.group(1) not in ("info", "config|resetstat"):
            s[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return s

rows = []
for k in range(1, runs + 1):
    d = json.load(open(f"{out}/run-{k}.json"))["results"]
    sent = d["sent"]
    us = (cpu(f"{out}/run-{k}.cpu-after.txt") - cpu(f"{out}/run-{k}.cpu-before.txt")) * 1e6 / sent
    st = stats(f"{out}/run-{k}.commandstats.txt")
    inner = sum(c for name, (c, _) in st.items() if name not in ("evalsha", "eval"))
    scripts = sum(st.get(n, (0, 0))[0] for n in ("evalsha", "eval"))
    rows.append((us, sent, d["lost"], d["delivered"], inner / sent, scripts / sent, st))
    lat = lambda name: "{p50_ms:.2f} / {p99_ms:.2f} ms".format(**d[name]) if d.get(name) else "-"
    print(f"run {k}: sent {sent}, delivered {d['delivered']}, lost {d['lost']}, "
          f"redis cpu {us:.1f} us/msg, {inner / sent:.2f} commands/msg "
          f"(+{scripts / sent:.2f} script calls/msg); delivery p50 / p99 "
          f"{lat('delivery_latency')}, setup match p50 / p99 {lat('setup_match_latency')}")

rows.sort(key=lambda r: r[0])
med = rows[len(rows) // 2]
print(f"median of {runs}: redis cpu {statistics.median(r[0] for r in rows):.1f} us per message sent, "
      f"{statistics.median(r[4] for r in rows):.2f} redis commands per message "
      f"(+{statistics.median(r[5] for r in rows):.2f} script calls)")
print("commandstats of the median run (calls and usec per message sent):")
sent = med[1]
for name, (c, u) in sorted(med[6].items(), key=lambda kv: -kv[1][1]):
    print(f"  {name:<18} {c / sent:6.2f} calls {u / sent:7.2f} us")
EOF
