//! Metric names, declared once. The binary describes them and exports them on
//! `/metrics`; dashboards must use exactly these names. Units are in the names.

/// Gauge: open WebSocket sessions on this node.
pub const CONNECTIONS: &str = "rendezvous_connections";
/// Counter: sessions opened.
pub const SESSIONS_OPENED_TOTAL: &str = "rendezvous_sessions_opened_total";
/// Counter: sessions closed, label `reason`.
pub const SESSIONS_CLOSED_TOTAL: &str = "rendezvous_sessions_closed_total";
/// Counter: searches started (`find_match` and `next`).
pub const SEARCHES_STARTED_TOTAL: &str = "rendezvous_searches_started_total";
/// Counter: searches ended without a match, label `reason` (cancelled, timeout, disconnected).
pub const SEARCHES_ENDED_TOTAL: &str = "rendezvous_searches_ended_total";
/// Gauge: searches waiting in the pool, label `shard`.
pub const POOL_WAITING: &str = "rendezvous_pool_waiting";
/// Counter: matches made, label `group_size`.
pub const MATCHES_TOTAL: &str = "rendezvous_matches_total";
/// Histogram: seconds a matched member waited, label `level` (relaxation step).
pub const MATCH_LATENCY_SECONDS: &str = "rendezvous_match_latency_seconds";
/// Histogram: interests shared by the members of a match.
pub const MATCH_SHARED_INTERESTS: &str = "rendezvous_match_shared_interests";
/// Counter: claims lost to a concurrent claim (the search was retried).
pub const CLAIM_CONFLICTS_TOTAL: &str = "rendezvous_claim_conflicts_total";
/// Gauge: rooms open on this node.
pub const ROOMS_OPEN: &str = "rendezvous_rooms_open";
/// Counter: frames received from clients.
pub const FRAMES_IN_TOTAL: &str = "rendezvous_frames_in_total";
/// Counter: frames written to clients.
pub const FRAMES_OUT_TOTAL: &str = "rendezvous_frames_out_total";
/// Counter: chat messages accepted (stored and acknowledged).
pub const MESSAGES_TOTAL: &str = "rendezvous_messages_total";
/// Counter: droppable frames (typing, presence, pings) dropped for a full queue.
pub const FRAMES_DROPPED_TOTAL: &str = "rendezvous_frames_dropped_total";
/// Counter: clients disconnected for not reading their frames.
pub const SLOW_CONSUMER_DISCONNECTS_TOTAL: &str = "rendezvous_slow_consumer_disconnects_total";
/// Counter: actions refused by a rate limit, label `action`.
pub const RATE_LIMITED_TOTAL: &str = "rendezvous_rate_limited_total";
/// Counter: error frames sent, label `code`.
pub const ERRORS_TOTAL: &str = "rendezvous_error_frames_total";
/// Counter: WebSocket upgrades refused, label `reason`.
pub const HANDSHAKES_REFUSED_TOTAL: &str = "rendezvous_handshakes_refused_total";
/// Gauge: connections accepted and not yet upgraded to a WebSocket (nor closed).
pub const CONNECTIONS_PENDING: &str = "rendezvous_connections_pending";
/// Counter: accepted sockets closed at once for a pending-connection cap, label
/// `reason` (`pending_total`, `pending_per_ip`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "rendezvous_connections_refused_total";
/// Counter: connections closed by a deadline before their upgrade, label `phase`
/// (`handshake`: headers not complete in time; `idle`: keep-alive without a next request).
pub const CONNECTIONS_TIMED_OUT_TOTAL: &str = "rendezvous_connections_timed_out_total";
/// Gauge: 1 while the bridge's store (Redis) and its subscription are healthy.
pub const BRIDGE_UP: &str = "rendezvous_bridge_up";
/// Histogram: seconds per round trip to Redis (one pipelined batch).
pub const BRIDGE_REDIS_SECONDS: &str = "rendezvous_bridge_redis_roundtrip_seconds";
/// Counter: commands sent to Redis, label `kind` (script or command name).
pub const BRIDGE_COMMANDS_TOTAL: &str = "rendezvous_bridge_commands_total";
/// Counter: events received from other nodes over pub/sub, label `kind`.
pub const BRIDGE_RECEIVED_TOTAL: &str = "rendezvous_bridge_received_total";
/// Counter: (re)connections to Redis after a failure.
pub const BRIDGE_RECONNECTS_TOTAL: &str = "rendezvous_bridge_reconnects_total";
/// Histogram: seconds a full resync took after a (re)connect.
pub const BRIDGE_RESYNC_SECONDS: &str = "rendezvous_bridge_resync_seconds";
/// Gauge: seconds since each peer's last heartbeat, label `node`.
pub const BRIDGE_PEER_HEARTBEAT_AGE_SECONDS: &str = "rendezvous_bridge_peer_heartbeat_age_seconds";
/// Counter: peers declared dead (heartbeat expired) or gone (drained).
pub const BRIDGE_NODES_LOST_TOTAL: &str = "rendezvous_bridge_nodes_lost_total";
/// Counter: `send`s repeating a stored `client_msg_id`, answered with the original `ack`.
pub const DUPLICATE_SENDS_TOTAL: &str = "rendezvous_duplicate_sends_total";
/// Counter: gaps in a room's `seq` seen by a replica (filled from the stream).
pub const BRIDGE_SEQ_GAPS_TOTAL: &str = "rendezvous_bridge_seq_gaps_total";
/// Gauge: searches waiting per language (label `language`), this node's own and replicas.
/// At most `language_series` languages get their own series (first come, kept:
/// the exporter cannot delete one); the rest are summed under `language="other"`.
pub const POOL_WAITING_BY_LANGUAGE: &str = "rendezvous_pool_waiting_by_language";
/// Histogram: seconds from a message's acceptance (`ts`) to its fan-out on this node.
pub const DELIVERY_LATENCY_SECONDS: &str = "rendezvous_delivery_latency_seconds";
/// Counter: chat message frames queued to members (fan-out).
pub const MESSAGES_DELIVERED_TOTAL: &str = "rendezvous_messages_delivered_total";
/// Gauge: frames waiting in all clients' outbound queues (sampled every 5 s).
pub const OUTBOUND_QUEUED_FRAMES: &str = "rendezvous_outbound_queued_frames";
/// Gauge: the fullest client outbound queue, in frames (sampled every 5 s).
pub const OUTBOUND_QUEUE_MAX_FRAMES: &str = "rendezvous_outbound_queue_max_frames";
/// Gauge: pairs of users kept apart (blocks and running skips), each counted once
/// per user who asked; at most `max_blocks_per_user` per user.
pub const AVOID_PAIRS: &str = "rendezvous_avoid_pairs";
/// Gauge: seconds a probe waited in an actor's mailbox, label `actor` (shard-N, rooms).
pub const ACTOR_MAILBOX_DELAY_SECONDS: &str = "rendezvous_actor_mailbox_delay_seconds";
/// Counter: `refresh` actions verified, label `result` (refreshed, refused).
pub const TOKEN_REFRESHES_TOTAL: &str = "rendezvous_token_refreshes_total";

/// Handles of the metrics touched on every chat message. `counter!` looks its key
/// up in the recorder's registry on each call (build, hash, compare), which was
/// 4 % of a node's CPU at 45,000 messages/s; a handle is one atomic add. Made when
/// the engine starts, so the process recorder must be installed before that
/// (handles made with none installed count nowhere).
#[derive(Clone)]
pub struct Hot {
    pub frames_in: metrics::Counter,
    pub frames_out: metrics::Counter,
    pub messages: metrics::Counter,
    pub delivered: metrics::Counter,
    pub delivery_latency: metrics::Histogram,
}

impl Hot {
    pub fn new() -> Self {
        Self {
            frames_in: metrics::counter!(FRAMES_IN_TOTAL),
            frames_out: metrics::counter!(FRAMES_OUT_TOTAL),
            messages: metrics::counter!(MESSAGES_TOTAL),
            delivered: metrics::counter!(MESSAGES_DELIVERED_TOTAL),
            delivery_latency: metrics::histogram!(DELIVERY_LATENCY_SECONDS),
        }
    }
}

impl Default for Hot {
    fn default() -> Self {
        Self::new()
    }
}
