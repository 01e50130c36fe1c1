#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a
# bare Debian machine (redis-server, redis-tools and redis-sentinel for the multi-node, Redis Cluster and Sentinel tests; prometheus, its Redis
# exporter and curl for the deployment test; nginx for the TLS proxy test; chromium,
# Node and playwright-core for the browser test; the SDK's dev dependencies), then
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# redis-server for the multi-node tests; redis-cli (Debian's redis-tools, pulled in
# by redis-server but checked on its own) to make the Redis Cluster of
# tests/redis_cluster.rs (`redis-cli --cluster create`) and for the TLS probes;
# redis-sentinel for the failover tests (tests/sentinel.rs); openssl to make the
# certificate of the TLS (rediss://) test.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Debian's chromium and Node/npm for the browser test (tests/browser.rs).
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Debian's prometheus for the dashboard test (tests/deploy.rs: it scrapes real nodes
# with deploy/prometheus.yml and runs every dashboard query); curl runs the
# Dockerfile's HEALTHCHECK command by hand.
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# promtool (in Debian's prometheus package) checks and unit-tests deploy/alerts.yml;
# the Redis exporter feeds the Redis alerts (tests/deploy.rs); nginx terminates TLS
# in front of a node (tests/tls_proxy.rs).
[ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/bin/prometheus-redis-exporter ] || missing+=(prometheus-redis-exporter)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# playwright-core (no browser download: it drives /usr/bin/chromium), pinned by the lock file.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing tests/browser/node_modules (npm ci)" >&2
  npm ci --prefix tests/browser --no-audit --no-fund >/dev/null
fi
# The JavaScript SDK's dev dependencies (ajv for the schema check, typescript for its
# .d.ts files), pinned by clients/js/package-lock.json; tests/sdk.rs runs its suites.
if [ ! -d clients/js/node_modules/ajv ] || [ ! -d clients/js/node_modules/typescript ]; then
  echo "installing clients/js/node_modules (npm ci)" >&2
  npm ci --prefix clients/js --no-audit --no-fund >/dev/null
fi
exec cargo test --workspace --release --locked
