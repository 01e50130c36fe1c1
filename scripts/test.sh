#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a
# bare Debian machine (redis-server for the multi-node tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing Debian's package" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
exec cargo test --workspace --release --locked
