# syntax=docker/dockerfile:1
#
# The Rendezvous image: `docker build -t rendezvous .` (docker-compose.yml builds it
# too). It holds both binaries: `rendezvous`, the entrypoint, and
# `rendezvous-loadtest` (run it with `--entrypoint rendezvous-loadtest`).
#
# Configure the engine through RENDEZVOUS_* environment variables (`docker run --rm
# rendezvous --help` lists every one); flags after the image name work too. Off
# loopback, anonymous users are refused unless RENDEZVOUS_ANONYMOUS=allow or a JWT
# secret (RENDEZVOUS_JWT_SECRET) is set and clients send tokens.

# ---------------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, from the manifests and stub sources alone: this layer is
# rebuilt only when a Cargo.toml or Cargo.lock changes, not on every source edit.
# (Every workspace member's Cargo.toml is needed, and every target it declares.)
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
COPY actors/protocol/Cargo.toml actors/protocol/Cargo.toml
COPY loadtest/Cargo.toml loadtest/Cargo.toml
COPY loadtest/relay/Cargo.toml loadtest/relay/Cargo.toml
# The tests' support crate is a member too (only its manifest: nothing here builds it).
COPY tests/support/Cargo.toml tests/support/Cargo.toml
RUN mkdir -p src actors/src actors/benches actors/protocol/src loadtest/src loadtest/relay/src \
 tests/support/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > actors/benches/pool.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && echo 'fn main() {}' > loadtest/relay/src/main.rs \
 && touch src/lib.rs actors/src/lib.rs actors/protocol/src/lib.rs tests/support/src/lib.rs \
 && cargo build --release --locked -p rendezvous -p rendezvous-loadtest

# Then the real sources. COPY keeps the files' modification times, which can be
# older than the stubs', so touch every crate root to make cargo rebuild our crates.
COPY src src
# The browser client serves the JavaScript SDK's modules (embedded like src/web).
COPY clients/js/src clients/js/src
COPY actors actors
COPY loadtest loadtest
RUN touch src/lib.rs src/main.rs actors/src/lib.rs actors/protocol/src/lib.rs loadtest/src/main.rs \
 && cargo build --release --locked -p rendezvous -p rendezvous-loadtest \
 && strip target/release/rendezvous target/release/rendezvous-loadtest

# -------------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# ca-certificates: rediss:// to a Redis with a publicly signed certificate.
# curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged system user with fixed ids (numeric USER, so Kubernetes'
# runAsNonRoot can verify it). The engine writes no files.
RUN groupadd --system --gid 10001 rendezvous \
 && useradd --system --uid 10001 --gid rendezvous --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin rendezvous

COPY --from=builder /src/target/release/rendezvous /src/target/release/rendezvous-loadtest /usr/local/bin/

USER 10001:10001

# Listen on every interface of the container. Anything else is set the same way,
# e.g. RENDEZVOUS_NODE_ID, RENDEZVOUS_REDIS_URL, RENDEZVOUS_LOG_FORMAT=json, RUST_LOG.
ENV RENDEZVOUS_BIND=0.0.0.0:8080
EXPOSE 8080

# Liveness (OPERATIONS.md): /healthz answers 200 while the process serves. Readiness
# (/readyz) is for load balancers, not for restarting the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1

# SIGTERM (docker stop) drains: new upgrades get 503, sessions are closed with 1012,
# the node leaves the cluster, then it exits (within --drain-timeout-ms, 5 s).
ENTRYPOINT ["rendezvous"]
