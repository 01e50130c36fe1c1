#!/usr/bin/env bash
# Run one bundled scenario N times, each against a fresh server, and print the
# median of every number its thresholds look at: the figures the scenario files'
# thresholds are set from (loadtest/scenarios/README.md, "Thresholds").
#
#   scripts/scenario-medians.sh loadtest/scenarios/match-storm.toml 10
#   SERVER='target/release/rendezvous-relay' scripts/scenario-medians.sh FILE 5
#   NODES=2 scripts/scenario-medians.sh loadtest/scenarios/multi-node.toml 3
#   PAUSE=0 scripts/scenario-medians.sh FILE 3 -- --set storm.rate=4000
#
# SERVER: the server command (default target/release/rendezvous); NODES=2 starts
# two engine nodes on 8080/8081 sharing a fresh redis-server on 6399; PAUSE:
# seconds to wait between runs (default 0); arguments after `--` go to every
# `rendezvous-loadtest run`. Results land in $OUT (default
# target/scenario-medians/NAME/run-K.json). Needs a release build:
#   cargo build --release -p rendezvous -p rendezvous-loadtest -p rendezvous-relay
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:?usage: $0 SCENARIO.toml RUNS [-- run args]}
runs=${2:?usage: $0 SCENARIO.toml RUNS [-- run args]}
shift 2
[ "${1:-}" = "--" ] && shift
extra=("$@")
server=${SERVER:-target/release/rendezvous}
nodes=${NODES:-1}
pause=${PAUSE:-0}
name=$(basename "$file" .toml)
out=${OUT:-target/scenario-medians/$name}
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

start() {
  local n
  if [ "$nodes" -eq 1 ]; then
    $server >"$out/server.log" 2>&1 &
    pids+=($!)
    wait_ready 8080
  else
    redis-server --port 6399 --save "" --appendonly no --dir "$out" >"$out/redis.log" 2>&1 &
    pids+=($!)
    sleep 0.3
    for n in $(seq 0 $((nodes - 1))); do
      $server --bind "127.0.0.1:$((8080 + n))" --redis-url redis://127.0.0.1:6399 \
        --node-id "n$n" >"$out/server-$n.log" 2>&1 &
      pids+=($!)
    done
    for n in $(seq 0 $((nodes - 1))); do wait_ready $((8080 + n)); done
  fi
}

for k in $(seq 1 "$runs"); do
  start
  code=0
  target/release/rendezvous-loadtest run "$file" --quiet --json "$out/run-$k.json" \
    "${extra[@]}" >"$out/run-$k.txt" 2>&1 || code=$?
  stop_all
  echo "run $k: exit $code ($(grep -c '^FAIL' "$out/run-$k.txt" || true) threshold(s) missed)"
  [ "$k" -lt "$runs" ] && sleep "$pause"
done

python3 - "$out" "$runs" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
docs = []
for k in range(1, runs + 1):
    try:
        docs.append(json.load(open(f"{out}/run-{k}.json")))
    except (OSError, ValueError):
        print(f"run {k}: no result")
if not docs:
    sys.exit(1)
print(f"{docs[0]['scenario']}: {len(docs)} runs, {sum(d['pass'] for d in docs)} passed")
for i, t in enumerate(docs[0]["thresholds"]):
    got = [d["thresholds"][i]["got"] for d in docs if d["thresholds"][i]["got"] is not None]
    med = statistics.median(got) if got else None
    bound = f"min {t['min']}" if t["min"] is not None else ""
    bound += f" max {t['max']}" if t["max"] is not None else ""
    vals = ", ".join(f"{v:g}" for v in got)
    print(f"  {t['path']}: median {med if med is None else f'{med:g}'} ({bound.strip()}) runs: {vals}")
EOF
