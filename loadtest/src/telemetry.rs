//! The load tester's own metrics, served on `--metrics-bind` for Prometheus while a
//! run lasts, so dashboards show client-observed latency beside the server's. The
//! names are a contract with `dashboards/loadtest.json` (checked by tests/deploy.rs).

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Gauge: client sockets open.
pub const CONNECTIONS: &str = "rendezvous_loadtest_connections";
/// Counter: sessions opened (welcome received).
pub const CONNECTS_TOTAL: &str = "rendezvous_loadtest_connects_total";
/// Counter: pairs matched.
pub const MATCHES_TOTAL: &str = "rendezvous_loadtest_matches_total";
/// Histogram: the second searcher's `find_match` → `match_found` (seconds).
pub const MATCH_LATENCY_SECONDS: &str = "rendezvous_loadtest_match_latency_seconds";
/// Counter: chat messages sent.
pub const MESSAGES_SENT_TOTAL: &str = "rendezvous_loadtest_messages_sent_total";
/// Counter: the partner's chat messages received.
pub const MESSAGES_RECEIVED_TOTAL: &str = "rendezvous_loadtest_messages_received_total";
/// Histogram: scheduled send → the partner's `message` (seconds).
pub const DELIVERY_LATENCY_SECONDS: &str = "rendezvous_loadtest_delivery_latency_seconds";
/// Histogram: scheduled send → the sender's `ack` (seconds).
pub const ACK_LATENCY_SECONDS: &str = "rendezvous_loadtest_ack_latency_seconds";
/// Counter: failures, label `kind` (connect, error_frame, closed, send, protocol).
pub const ERRORS_TOTAL: &str = "rendezvous_loadtest_errors_total";
/// Counter: acknowledged messages the partner never received by the end of the drain.
pub const LOST_MESSAGES_TOTAL: &str = "rendezvous_loadtest_lost_messages_total";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Serve `/metrics` on `addr` for the rest of the process (needs a tokio runtime).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .upkeep_timeout(Duration::from_secs(5))
        .install()
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    describe_gauge!(CONNECTIONS, "Client sockets open");
    describe_counter!(CONNECTS_TOTAL, "Sessions opened");
    describe_counter!(MATCHES_TOTAL, "Pairs matched");
    describe_histogram!(MATCH_LATENCY_SECONDS, Unit::Seconds, "find_match to match_found");
    describe_counter!(MESSAGES_SENT_TOTAL, "Chat messages sent");
    describe_counter!(MESSAGES_RECEIVED_TOTAL, "Partner messages received");
    describe_histogram!(DELIVERY_LATENCY_SECONDS, Unit::Seconds, "Scheduled send to delivery");
    describe_histogram!(ACK_LATENCY_SECONDS, Unit::Seconds, "Scheduled send to ack");
    describe_counter!(ERRORS_TOTAL, "Failures, by kind");
    describe_counter!(LOST_MESSAGES_TOTAL, "Acknowledged messages never delivered");
    // Present from the start, so dashboards and alerts see zeros, not gaps.
    metrics::gauge!(CONNECTIONS).set(0.0);
    for name in [
        CONNECTS_TOTAL,
        MATCHES_TOTAL,
        MESSAGES_SENT_TOTAL,
        MESSAGES_RECEIVED_TOTAL,
        LOST_MESSAGES_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["connect", "error_frame", "closed", "send", "protocol"] {
        metrics::counter!(ERRORS_TOTAL, "kind" => kind).increment(0);
    }
    Ok(())
}

/// Counts one open socket for as long as it lives.
pub struct OpenSocket;

impl OpenSocket {
    pub fn new() -> Self {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        metrics::counter!(CONNECTS_TOTAL).increment(1);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }
}

/// Count one failure of `kind`.
pub fn error(kind: &'static str) {
    metrics::counter!(ERRORS_TOTAL, "kind" => kind).increment(1);
}
