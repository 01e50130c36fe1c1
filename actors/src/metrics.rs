//! Metric names, declared once. The binary describes them and exports them on
//! `/metrics`; dashboards must use exactly these names. Units are in the names.

use crate::config::EngineConfig;
use crate::matching::shard_core::EndReason;
use crate::protocol::ErrorCode;

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
/// Histogram: seconds from a search's arrival to its match, per matched member, label
/// `language` (bounded as [`POOL_WAITING_BY_LANGUAGE`]: at most `language_series`
/// languages, the rest as `other`). The matching dashboard sets its p99 against the
/// wait target.
pub const MATCH_WAIT_SECONDS: &str = "rendezvous_match_wait_seconds";
/// Histogram: interests shared by each pair of members of a match, label `language`
/// (bounded as [`MATCH_WAIT_SECONDS`]).
pub const MATCH_PAIR_SHARED_INTERESTS: &str = "rendezvous_match_pair_shared_interests";
/// Gauge: the wait target the matching policy aims at, in seconds (0 under a fixed ladder).
pub const MATCH_WAIT_TARGET_SECONDS: &str = "rendezvous_match_wait_target_seconds";
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
/// Counter: pipelines whose writes fewer replicas than asked confirmed in time
/// (`WAIT` fell short; the sends in them were answered `unavailable`).
pub const BRIDGE_UNCONFIRMED_WRITES_TOTAL: &str = "rendezvous_bridge_unconfirmed_writes_total";
/// Counter: outcomes of cross-node offers read from the store, by `side`
/// (`creator`: recorded before the room opens, one per cross-node match;
/// `member`: asked by a node that held searches and never heard the end) and
/// `outcome` (`opened`, `aborted`).
pub const BRIDGE_OFFER_OUTCOMES_TOTAL: &str = "rendezvous_bridge_offer_outcomes_total";
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
/// Counter: `report`s stored.
pub const REPORTS_TOTAL: &str = "rendezvous_reports_total";
/// Counter: operators' actions made on this node, label `action` (kick, ban, unban, close_room, resolve).
pub const MODERATION_ACTIONS_TOTAL: &str = "rendezvous_moderation_actions_total";
/// Counter: connections and searches refused because of a ban, label `at` (connect, find_match).
pub const BANNED_REFUSALS_TOTAL: &str = "rendezvous_banned_refusals_total";

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

/// Close reasons of [`SESSIONS_CLOSED_TOTAL`] (the session's close code, named).
pub const SESSION_CLOSE_REASONS: &[&str] = &[
    "normal",
    "too_large",
    "restarting",
    "policy",
    "replaced",
    "unauthorized",
    "abnormal",
    "other",
];

/// Actions of [`RATE_LIMITED_TOTAL`]: the frame limit, the chat rate, the search
/// rate, the per-user byte budget's actions and `refresh`.
pub const RATE_LIMITED_ACTIONS: &[&str] = &[
    "frames",
    "send",
    "find_match",
    "next",
    "block",
    "join",
    "leave",
    "history",
    "signal",
    "read",
    "typing",
    "refresh",
];

/// Every wire error code, the `code` label of [`ERRORS_TOTAL`].
pub const ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::RateLimited,
    ErrorCode::NotInRoom,
    ErrorCode::TooLarge,
    ErrorCode::AlreadySearching,
    ErrorCode::Internal,
    ErrorCode::TokenExpired,
    ErrorCode::Unavailable,
];

/// Fails to compile when a code is added to the protocol: add it to [`ERROR_CODES`].
const fn _every_error_code_listed(c: ErrorCode) {
    match c {
        ErrorCode::BadRequest
        | ErrorCode::Unauthorized
        | ErrorCode::RateLimited
        | ErrorCode::NotInRoom
        | ErrorCode::TooLarge
        | ErrorCode::AlreadySearching
        | ErrorCode::Internal
        | ErrorCode::TokenExpired
        | ErrorCode::Unavailable => {}
    }
}

/// Register, at zero, every series of the engine's own whose label values are
/// known before anything happens, so dashboards and alerts read 0 (not "No data")
/// from the first scrape and `rate()` sees the first increment of a rare event.
/// Called by [`crate::Engine::start`], after the process recorder is installed.
/// The series that name something that exists only later (a peer node, a
/// language, a Redis command kind) appear with it; `rendezvous_bridge_*` only on a
/// clustered node, where a bridge runs.
pub fn export_at_zero(config: &EngineConfig, clustered: bool) {
    use metrics::{counter, gauge, histogram};
    for name in [
        SESSIONS_OPENED_TOTAL,
        SEARCHES_STARTED_TOTAL,
        CLAIM_CONFLICTS_TOTAL,
        FRAMES_IN_TOTAL,
        FRAMES_OUT_TOTAL,
        MESSAGES_TOTAL,
        MESSAGES_DELIVERED_TOTAL,
        FRAMES_DROPPED_TOTAL,
        SLOW_CONSUMER_DISCONNECTS_TOTAL,
    ] {
        counter!(name).increment(0);
    }
    for reason in SESSION_CLOSE_REASONS {
        counter!(SESSIONS_CLOSED_TOTAL, "reason" => *reason).increment(0);
    }
    for reason in [EndReason::Cancelled, EndReason::Disconnected, EndReason::Timeout] {
        counter!(SEARCHES_ENDED_TOTAL, "reason" => reason.label()).increment(0);
    }
    for size in 2..=8u8 {
        counter!(MATCHES_TOTAL, "group_size" => size.to_string()).increment(0);
    }
    for action in RATE_LIMITED_ACTIONS {
        counter!(RATE_LIMITED_TOTAL, "action" => *action).increment(0);
    }
    for code in ERROR_CODES {
        counter!(ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    for name in [CONNECTIONS, ROOMS_OPEN, OUTBOUND_QUEUED_FRAMES, OUTBOUND_QUEUE_MAX_FRAMES] {
        gauge!(name).increment(0.0);
    }
    for shard in 0..config.shard_count() {
        gauge!(POOL_WAITING, "shard" => shard.to_string()).increment(0.0);
    }
    gauge!(POOL_WAITING_BY_LANGUAGE, "language" => crate::language::OTHER).increment(0.0);
    for level in 0..config.ladder.len() {
        let _ = histogram!(MATCH_LATENCY_SECONDS, "level" => level.to_string());
    }
    let _ = histogram!(MATCH_SHARED_INTERESTS);
    let _ = histogram!(MATCH_WAIT_SECONDS, "language" => crate::language::OTHER);
    let _ = histogram!(MATCH_PAIR_SHARED_INTERESTS, "language" => crate::language::OTHER);
    gauge!(MATCH_WAIT_TARGET_SECONDS).increment(0.0);
    let _ = histogram!(DELIVERY_LATENCY_SECONDS);
    if clustered {
        for name in [
            BRIDGE_RECONNECTS_TOTAL,
            BRIDGE_NODES_LOST_TOTAL,
            BRIDGE_SEQ_GAPS_TOTAL,
            BRIDGE_UNCONFIRMED_WRITES_TOTAL,
        ] {
            counter!(name).increment(0);
        }
        for side in ["creator", "member"] {
            for outcome in ["opened", "aborted"] {
                counter!(BRIDGE_OFFER_OUTCOMES_TOTAL, "side" => side, "outcome" => outcome)
                    .increment(0);
            }
        }
        for kind in crate::bridge::events::ClusterEvent::KINDS {
            counter!(BRIDGE_RECEIVED_TOTAL, "kind" => *kind).increment(0);
        }
        let _ = histogram!(BRIDGE_REDIS_SECONDS);
        let _ = histogram!(BRIDGE_RESYNC_SECONDS);
    }
}
