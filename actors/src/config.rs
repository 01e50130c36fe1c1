//! Engine settings: limits, the relaxation ladder, timers. Declared once here with a
//! doc line per field and a default for each; the binary layers CLI flags,
//! environment variables and a TOML file on top (see `src/config.rs` at the root).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One step of the relaxation ladder: once a search has waited `after_ms`, these
/// criteria apply. Steps must be sorted by `after_ms`, the first at 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderStep {
    /// Wait (ms) after which this step applies.
    pub after_ms: u64,
    /// Whether both sides must be in the same region (when both gave one).
    pub same_region: bool,
    /// Shared interests required, capped by how many interests each side gave
    /// (a user with one interest can never share two).
    pub min_shared: u32,
}

/// Everything the actors need to know. Defaults are the protocol's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Name of this node, reported in `welcome` and `/api/stats`.
    pub node_id: String,
    /// Worker threads (actix arbiters) that run sessions and rooms; 0 = one per core.
    pub workers: usize,
    /// Matching-pool shards (each an actor on its own arbiter); 0 = one per core.
    pub pool_shards: usize,
    /// Longest a search may wait before `no_match_found` (ms); caps `max_wait_ms`.
    pub search_timeout_ms: u64,
    /// How often a shard relaxes criteria and expires searches (ms).
    pub match_tick_ms: u64,
    /// Relaxation ladder, applied by wait time (see [`LadderStep`]).
    pub ladder: Vec<LadderStep>,
    /// Language assumed for a `find_match` without `language` ("" = its own bucket).
    pub default_language: String,
    /// Languages a `find_match` may name (tags, case-insensitive); empty = any
    /// well-formed tag. Others get `bad_request` naming these.
    pub languages: Vec<String>,
    /// Most languages with their own `rendezvous_pool_waiting_by_language` series;
    /// the rest are summed under `other`. Admitted first come and kept (the exporter
    /// cannot delete a series).
    pub language_series: usize,
    /// How long a partner skipped with `next` is kept away (s).
    pub skip_ttl_secs: u64,
    /// How long a `block` keeps two users apart (s); outlives the session.
    pub block_ttl_secs: u64,
    /// Most users one user may keep away at once (blocks, and skips still running);
    /// past it the oldest is forgotten.
    pub max_blocks_per_user: usize,
    /// Seat kept in rooms after a connection drops, for reconnects (ms).
    pub reconnect_grace_ms: u64,
    /// How long an empty public room lingers before it is forgotten (ms).
    pub empty_room_grace_ms: u64,
    /// Messages kept per room for `history` (a ring; the oldest drop out).
    pub history_len: usize,
    /// Most bytes of message text a room keeps for `history`, in memory and in the
    /// cluster's store, on top of `history_len`: the oldest messages drop out first.
    pub history_bytes: usize,
    /// Largest `limit` a `history` request may ask for.
    pub history_limit_max: u32,
    /// Largest inbound WebSocket frame/message (bytes); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Largest chat `text` (characters).
    pub max_text_chars: usize,
    /// Most interests in one `find_match`.
    pub max_interests: usize,
    /// Longest interest slug (characters).
    pub max_interest_chars: usize,
    /// Largest `signal` payload (bytes of JSON).
    pub max_signal_bytes: usize,
    /// Longest `language`, `region`, `room_id`, `client_msg_id` (characters).
    pub max_name_chars: usize,
    /// `find_match` (and `next`) allowed per user per minute.
    pub find_match_per_minute: u32,
    /// Sustained `send` rate per user (per second).
    pub send_per_second: u32,
    /// `send` burst per user.
    pub send_burst: u32,
    /// Sustained rate of all frames from one session (per second).
    pub frames_per_second: u32,
    /// Burst of all frames from one session.
    pub frames_burst: u32,
    /// Sustained byte budget per user of `block`, `signal`, `read`, `typing`,
    /// `join`/`leave` and `history`: what they make the node copy (payload times
    /// recipients, pages returned) or keep, per second.
    pub action_bytes_per_second: u64,
    /// Burst of that byte budget per user.
    pub action_bytes_burst: u64,
    /// Rate-limit refusals within 10 s after which the session is closed with 4008.
    pub flood_strikes: u32,
    /// Frames queued for one client before it counts as a slow consumer. Must absorb a
    /// busy room's legitimate burst: a room actor drains its whole mailbox before a
    /// writer on the same thread runs (10 members x a send burst of 40 = 400 frames).
    pub outbound_queue: usize,
    /// Bytes of queued frames for one client before it counts as a slow consumer
    /// (0: no byte limit). One frame larger than this still goes through an empty
    /// queue.
    pub outbound_queue_bytes: usize,
    /// Kernel send buffer of each client socket (bytes; 0: the kernel's own
    /// autotuning, which lets a client that stopped reading hold megabytes).
    pub socket_send_buffer_bytes: usize,
    /// Longest one socket write may block before the client is dropped (ms).
    pub write_timeout_ms: u64,
    /// Server ping interval (ms).
    pub heartbeat_interval_ms: u64,
    /// A client silent for this long (no frame, no pong) is disconnected (ms).
    pub client_timeout_ms: u64,
    /// After a session's token expires (`token_expired`), how long it may still send
    /// `refresh` with a new token before it is closed with 4001 (ms).
    pub token_grace_ms: u64,
    /// Shortest time between two `refresh` attempts of one session (ms); each costs
    /// a signature check. Sooner gets `rate_limited`.
    pub refresh_min_interval_ms: u64,
    /// Bound on how long a graceful drain waits for sessions to close (ms).
    pub drain_timeout_ms: u64,
    /// Most sessions on this node; past it new connections are refused (HTTP 503,
    /// or close 1013 for browsers). 0 = 95% of the process's open-file limit.
    pub max_sessions: usize,
    /// Most sessions from one IP address (0 = no limit, the default: behind a
    /// reverse proxy every client has the proxy's address).
    pub max_sessions_per_ip: usize,
    /// Most rooms one user may hold a seat in (match rooms and public rooms).
    pub max_rooms_per_user: usize,
    /// Most members of one public room.
    pub max_public_room_members: usize,
    /// Largest room in which a `signal` without `to` is sent to every member.
    pub max_signal_broadcast_members: usize,
    /// Most public rooms open on this node; joining a new one past it is refused
    /// (`too_large`), joining an open one still works.
    pub max_public_rooms: usize,
    /// Cluster only: how long past `reconnect_grace_ms` a user's and a room's keys
    /// live in Redis without a refresh (ms). Each node refreshes the keys of the users
    /// and rooms it holds every third of this, so Redis holds what is online, and a
    /// killed node's keys vanish within the grace plus this margin.
    pub cluster_key_margin_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            workers: 0,
            pool_shards: 0,
            search_timeout_ms: 60_000,
            match_tick_ms: 100,
            ladder: vec![
                LadderStep { after_ms: 0, same_region: true, min_shared: 2 },
                LadderStep { after_ms: 2_000, same_region: true, min_shared: 1 },
                LadderStep { after_ms: 4_000, same_region: false, min_shared: 1 },
                LadderStep { after_ms: 8_000, same_region: false, min_shared: 0 },
            ],
            default_language: "en".into(),
            languages: Vec::new(),
            language_series: 50,
            skip_ttl_secs: 300,
            block_ttl_secs: 30 * 24 * 3600,
            max_blocks_per_user: 1_000,
            reconnect_grace_ms: 30_000,
            empty_room_grace_ms: 30_000,
            history_len: 1_000,
            history_bytes: 1 << 20,
            history_limit_max: 200,
            max_frame_bytes: 64 * 1024,
            max_text_chars: 4_096,
            max_interests: 20,
            max_interest_chars: 32,
            max_signal_bytes: 16 * 1024,
            max_name_chars: 64,
            find_match_per_minute: 10,
            send_per_second: 20,
            send_burst: 40,
            frames_per_second: 100,
            frames_burst: 200,
            action_bytes_per_second: 256 * 1024,
            action_bytes_burst: 1 << 20,
            flood_strikes: 50,
            outbound_queue: 1_024,
            outbound_queue_bytes: 1 << 20,
            socket_send_buffer_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            heartbeat_interval_ms: 20_000,
            client_timeout_ms: 60_000,
            token_grace_ms: 30_000,
            refresh_min_interval_ms: 1_000,
            drain_timeout_ms: 5_000,
            max_sessions: 0,
            max_sessions_per_ip: 0,
            max_rooms_per_user: 20,
            max_public_room_members: 1_000,
            max_signal_broadcast_members: 8,
            max_public_rooms: 10_000,
            cluster_key_margin_ms: 30_000,
        }
    }
}

/// A setting that cannot work, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field, reason: reason.into() }
}

impl EngineConfig {
    /// Check the settings hang together; called once at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ladder.is_empty() {
            return Err(bad("ladder", "needs at least one step"));
        }
        if self.ladder[0].after_ms != 0 {
            return Err(bad("ladder", "the first step must start at after_ms = 0"));
        }
        if self.ladder.windows(2).any(|w| w[0].after_ms >= w[1].after_ms) {
            return Err(bad("ladder", "steps must be sorted by strictly increasing after_ms"));
        }
        let positive: [(&'static str, u64); 17] = [
            ("search_timeout_ms", self.search_timeout_ms),
            ("match_tick_ms", self.match_tick_ms),
            ("history_len", self.history_len as u64),
            ("history_bytes", self.history_bytes as u64),
            ("history_limit_max", self.history_limit_max as u64),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_text_chars", self.max_text_chars as u64),
            ("find_match_per_minute", self.find_match_per_minute as u64),
            ("send_per_second", self.send_per_second as u64),
            ("frames_per_second", self.frames_per_second as u64),
            ("outbound_queue", self.outbound_queue as u64),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("max_blocks_per_user", self.max_blocks_per_user as u64),
            ("action_bytes_per_second", self.action_bytes_per_second),
            ("action_bytes_burst", self.action_bytes_burst),
            ("max_public_rooms", self.max_public_rooms as u64),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(field, "must be greater than 0"));
            }
        }
        if self.send_burst < 1 || self.frames_burst < 1 {
            return Err(bad("send_burst", "bursts must be at least 1"));
        }
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            return Err(bad("client_timeout_ms", "must exceed heartbeat_interval_ms"));
        }
        for lang in &self.languages {
            if crate::language::parse_tag(lang).is_none() {
                return Err(bad(
                    "languages",
                    format!("`{lang}` is not a language tag (en, pt-BR)"),
                ));
            }
        }
        if !self.default_language.is_empty()
            && crate::language::parse_tag(&self.default_language).is_none()
        {
            return Err(bad("default_language", "must be a language tag (en, pt-BR) or empty"));
        }
        if !self.languages.is_empty()
            && !self.languages.iter().any(|l| l.eq_ignore_ascii_case(&self.default_language))
        {
            return Err(bad("default_language", "must be one of `languages`"));
        }
        if self.cluster_key_margin_ms < 5_000 {
            // A dead peer is noticed within 3.5 s; its users' keys must outlive that
            // plus a refresh interval (a third of the margin).
            return Err(bad("cluster_key_margin_ms", "must be at least 5000"));
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return Err(bad("node_id", "must be 1 to 64 characters"));
        }
        Ok(())
    }

    /// Worker arbiters to start.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            cores()
        } else {
            self.workers
        }
    }

    /// Pool shards to start.
    pub fn shard_count(&self) -> usize {
        if self.pool_shards == 0 {
            cores()
        } else {
            self.pool_shards
        }
    }

    /// The session cap in force: `max_sessions`, or 95% of the open-file limit.
    pub fn session_cap(&self, open_file_limit: u64) -> usize {
        if self.max_sessions > 0 {
            self.max_sessions
        } else {
            ((open_file_limit as f64 * 0.95) as usize).max(1)
        }
    }

    pub fn search_timeout(&self) -> Duration {
        Duration::from_millis(self.search_timeout_ms)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        EngineConfig::default().validate().expect("defaults validate");
    }

    #[test]
    fn unsorted_ladder_is_refused() {
        let mut c = EngineConfig::default();
        c.ladder.swap(1, 2);
        assert_eq!(c.validate().expect_err("unsorted").field, "ladder");
        c.ladder.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn languages_must_be_tags_and_include_the_default() {
        let mut c =
            EngineConfig { languages: vec!["en".into(), "pt-BR".into()], ..Default::default() };
        c.validate().expect("valid allow-list");
        c.default_language = "fr".into();
        assert_eq!(c.validate().expect_err("default outside").field, "default_language");
        c.default_language = "EN".into();
        c.validate().expect("compared case-insensitively");
        c.languages.push("english".into());
        assert_eq!(c.validate().expect_err("not a tag").field, "languages");
        let c = EngineConfig { default_language: "en_US".into(), ..Default::default() };
        assert_eq!(c.validate().expect_err("not a tag").field, "default_language");
    }
}
