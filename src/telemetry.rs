//! Logs and metrics. Tracing goes to stderr as text or JSON; the Prometheus
//! recorder is installed once per process (tests start many servers in one
//! process and share it) and rendered on `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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

/// The process-wide recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(m::MATCH_LATENCY_SECONDS.into()),
                    &[
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::MATCH_SHARED_INTERESTS.into()),
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
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(m::CONNECTIONS, "Open WebSocket sessions on this node");
    describe_counter!(m::SESSIONS_OPENED_TOTAL, "Sessions opened");
    describe_counter!(m::SESSIONS_CLOSED_TOTAL, "Sessions closed, by reason");
    describe_counter!(m::SEARCHES_STARTED_TOTAL, "Searches started (find_match and next)");
    describe_counter!(m::SEARCHES_ENDED_TOTAL, "Searches ended without a match, by reason");
    describe_gauge!(m::POOL_WAITING, "Searches waiting, per pool shard");
    describe_counter!(m::MATCHES_TOTAL, "Matches made, by group size");
    describe_histogram!(
        m::MATCH_LATENCY_SECONDS,
        Unit::Seconds,
        "Wait of each matched member, by relaxation level"
    );
    describe_histogram!(m::MATCH_SHARED_INTERESTS, "Interests shared by all members of a match");
    describe_counter!(m::CLAIM_CONFLICTS_TOTAL, "Match claims lost to a concurrent claim");
    describe_gauge!(m::ROOMS_OPEN, "Rooms open on this node");
    describe_counter!(m::FRAMES_IN_TOTAL, "Frames received from clients");
    describe_counter!(m::FRAMES_OUT_TOTAL, "Frames written to clients");
    describe_counter!(m::MESSAGES_TOTAL, "Chat messages stored and acknowledged");
    describe_counter!(m::FRAMES_DROPPED_TOTAL, "Droppable frames dropped for a full client queue");
    describe_counter!(m::SLOW_CONSUMER_DISCONNECTS_TOTAL, "Clients disconnected for not reading");
    describe_counter!(m::RATE_LIMITED_TOTAL, "Actions refused by a rate limit, by action");
    describe_counter!(m::ERRORS_TOTAL, "Error frames sent, by code");
    describe_counter!(m::HANDSHAKES_REFUSED_TOTAL, "WebSocket upgrades refused, by reason");
}
