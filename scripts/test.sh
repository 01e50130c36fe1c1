#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a
# bare Debian machine (redis-server for the multi-node tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# redis-server (and redis-cli, same package) for the multi-node tests; openssl to
# make the certificate of the TLS (rediss://) test.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec cargo test --workspace --release --locked
