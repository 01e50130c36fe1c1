//! Logs and metrics. Tracing goes to stderr as text or JSON; the Prometheus
//! recorder is installed once per process (tests start many servers in one
//! process and share it) and rendered on `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rendezvous_actors::metrics as m;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Start logging. `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Reads the process figures (resident memory, open files, CPU) from the OS.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Refresh the process figures now: called on every scrape, so `/metrics` shows
/// the memory and files of this moment rather than of the last upkeep tick.
pub fn collect_process() {
    if let Some(p) = PROCESS.get() {
        p.collect();
    }
}

/// Buckets of every latency histogram (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Buckets of the search wait (seconds): 0.5 ms to a minute.
const MATCH_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the per-language match wait (seconds): fine around the default 3 s
/// wait target, so its p99 can be read against it.
const MATCH_WAIT_TARGET_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
];

/// The process-wide recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Every histogram gets buckets (Prometheus histograms, not summaries), so
            // dashboards can aggregate quantiles across nodes.
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::MATCH_LATENCY_SECONDS.into()),
                        MATCH_WAIT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::MATCH_SHARED_INTERESTS.into()),
                        &[0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::MATCH_WAIT_SECONDS.into()),
                        MATCH_WAIT_TARGET_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::MATCH_PAIR_SHARED_INTERESTS.into()),
                        &[0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0],
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            let upkeep = handle.clone();
            // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total…
            let process = PROCESS.get_or_init(metrics_process::Collector::default);
            process.describe();
            process.collect();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    collect_process();
                    upkeep.run_upkeep();
                })
                .ok();
            handle
        })
        .clone()
}

/// What kind of metric a name is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind and help line (the `# HELP` of `/metrics`).
const METRICS: &[(Kind, &str, &str)] = &[
    (Kind::Counter, m::SESSIONS_OPENED_TOTAL, "Sessions opened"),
    (Kind::Counter, m::SESSIONS_CLOSED_TOTAL, "Sessions closed, by reason"),
    (Kind::Counter, m::SEARCHES_STARTED_TOTAL, "Searches started (find_match and next)"),
    (Kind::Counter, m::SEARCHES_ENDED_TOTAL, "Searches ended without a match, by reason"),
    (Kind::Counter, m::MATCHES_TOTAL, "Matches made, by group size"),
    (Kind::Counter, m::CLAIM_CONFLICTS_TOTAL, "Match claims lost to a concurrent claim"),
    (Kind::Counter, m::FRAMES_IN_TOTAL, "Frames received from clients"),
    (Kind::Counter, m::FRAMES_OUT_TOTAL, "Frames written to clients"),
    (Kind::Counter, m::MESSAGES_TOTAL, "Chat messages stored and acknowledged"),
    (Kind::Counter, m::FRAMES_DROPPED_TOTAL, "Droppable frames dropped for a full client queue"),
    (Kind::Counter, m::SLOW_CONSUMER_DISCONNECTS_TOTAL, "Clients disconnected for not reading"),
    (Kind::Counter, m::RATE_LIMITED_TOTAL, "Actions refused by a rate limit, by action"),
    (Kind::Counter, m::ERRORS_TOTAL, "Error frames sent, by code"),
    (Kind::Counter, m::HANDSHAKES_REFUSED_TOTAL, "WebSocket upgrades refused, by reason"),
    (
        Kind::Counter,
        m::CONNECTIONS_REFUSED_TOTAL,
        "Sockets closed for a pending-connection cap, by reason: a newcomer refused, \
         or the oldest stalled one displaced",
    ),
    (
        Kind::Counter,
        m::CONNECTIONS_TIMED_OUT_TOTAL,
        "Connections closed by the handshake or keep-alive idle deadline, by phase",
    ),
    (Kind::Counter, m::MESSAGES_DELIVERED_TOTAL, "Chat message frames queued to members"),
    (Kind::Counter, m::BRIDGE_COMMANDS_TOTAL, "Commands sent to Redis, by kind"),
    (Kind::Counter, m::BRIDGE_RECEIVED_TOTAL, "Events received from other nodes, by kind"),
    (Kind::Counter, m::BRIDGE_RECONNECTS_TOTAL, "Reconnections to Redis after a failure"),
    (Kind::Counter, m::BRIDGE_NODES_LOST_TOTAL, "Peers declared dead or gone"),
    (
        Kind::Counter,
        m::DUPLICATE_SENDS_TOTAL,
        "Sends repeating a stored client_msg_id, acked as the original",
    ),
    (Kind::Counter, m::BRIDGE_SEQ_GAPS_TOTAL, "Gaps in a room's seq filled from the stream"),
    (
        Kind::Counter,
        m::BRIDGE_UNCONFIRMED_WRITES_TOTAL,
        "Redis pipelines whose writes too few replicas confirmed in time (WAIT)",
    ),
    (Kind::Counter, m::TOKEN_REFRESHES_TOTAL, "Token refresh actions, by result"),
    (Kind::Counter, m::REPORTS_TOTAL, "Reports stored"),
    (Kind::Counter, m::MODERATION_ACTIONS_TOTAL, "Operators' actions made on this node, by action"),
    (
        Kind::Counter,
        m::BANNED_REFUSALS_TOTAL,
        "Connections and searches refused for a ban, by where",
    ),
    (Kind::Gauge, m::CONNECTIONS, "Open WebSocket sessions on this node"),
    (Kind::Gauge, m::POOL_WAITING, "Searches waiting, per pool shard"),
    (Kind::Gauge, m::ROOMS_OPEN, "Rooms open on this node"),
    (Kind::Gauge, m::CONNECTIONS_PENDING, "Connections accepted and not yet upgraded"),
    (
        Kind::Gauge,
        m::POOL_WAITING_BY_LANGUAGE,
        "Searches waiting, per language (at most --language-series of them, the rest as other)",
    ),
    (Kind::Gauge, m::AVOID_PAIRS, "Pairs of users kept apart (blocks, skips), per asking user"),
    (Kind::Gauge, m::OUTBOUND_QUEUED_FRAMES, "Frames waiting in all outbound queues"),
    (Kind::Gauge, m::OUTBOUND_QUEUE_MAX_FRAMES, "The fullest outbound queue, in frames"),
    (Kind::Gauge, m::ACTOR_MAILBOX_DELAY_SECONDS, "Mailbox wait of a probe, by actor"),
    (Kind::Gauge, m::BRIDGE_UP, "1 while Redis and the cluster subscription are healthy"),
    (Kind::Gauge, m::BRIDGE_PEER_HEARTBEAT_AGE_SECONDS, "Age of each peer's last heartbeat"),
    (Kind::Histogram, m::MATCH_LATENCY_SECONDS, "Wait of each matched member, by relaxation level"),
    (Kind::Histogram, m::MATCH_SHARED_INTERESTS, "Interests shared by all members of a match"),
    (
        Kind::Histogram,
        m::MATCH_WAIT_SECONDS,
        "Arrival to match of each matched member, per language",
    ),
    (
        Kind::Histogram,
        m::MATCH_PAIR_SHARED_INTERESTS,
        "Interests shared by each pair of members of a match, per language",
    ),
    (
        Kind::Gauge,
        m::MATCH_WAIT_TARGET_SECONDS,
        "Wait the matching policy aims at (0: fixed ladder)",
    ),
    (
        Kind::Histogram,
        m::DELIVERY_LATENCY_SECONDS,
        "From a message's acceptance to its fan-out on this node",
    ),
    (Kind::Histogram, m::BRIDGE_REDIS_SECONDS, "Round trip of one pipeline to Redis"),
    (Kind::Histogram, m::BRIDGE_RESYNC_SECONDS, "Duration of a resync with Redis"),
];

/// The `reason`s of rendezvous_handshakes_refused_total (src/http.rs).
const HANDSHAKE_REFUSALS: &[&str] =
    &["bad_handshake", "origin_not_allowed", "full", "unauthorized", "draining"];

fn describe() {
    // Prometheus names carry their unit: `_seconds` is the only one used here.
    let unit = |name: &str| name.ends_with("_seconds").then_some(Unit::Seconds);
    metrics::with_recorder(|r| {
        for &(kind, name, help) in METRICS {
            let (key, unit, help) = (name.into(), unit(name), help.into());
            match kind {
                Kind::Counter => r.describe_counter(key, unit, help),
                Kind::Gauge => r.describe_gauge(key, unit, help),
                Kind::Histogram => r.describe_histogram(key, unit, help),
            }
        }
    });
    // Exported at zero from start-up, before anything happens to them.
    metrics::gauge!(m::CONNECTIONS_PENDING).set(0.0);
    metrics::gauge!(m::AVOID_PAIRS).increment(0.0);
    for reason in [
        crate::front::Refusal::Total.as_str(),
        crate::front::Refusal::PerIp.as_str(),
        crate::front::EVICTED,
    ] {
        metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
    for phase in [crate::front::Phase::Handshake, crate::front::Phase::Idle] {
        metrics::counter!(m::CONNECTIONS_TIMED_OUT_TOTAL, "phase" => phase.as_str()).absolute(0);
    }
    // Every reason src/http.rs refuses an upgrade for (the rest of the engine's
    // series are registered by rendezvous_actors::metrics::export_at_zero).
    for reason in HANDSHAKE_REFUSALS {
        metrics::counter!(m::HANDSHAKES_REFUSED_TOTAL, "reason" => *reason).absolute(0);
    }
    for result in ["refreshed", "refused"] {
        metrics::counter!(m::TOKEN_REFRESHES_TOTAL, "result" => result).increment(0);
    }
}
