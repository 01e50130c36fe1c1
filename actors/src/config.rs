//! Engine settings: limits, the relaxation ladder, timers. Each setting is declared
//! once, as a field of [`EngineConfig`]: its doc comment is the `--help` text, its
//! `default_value_t` the default, its name the flag (`--kebab-name`), the TOML key
//! (under `[engine]`) and, in the binary, the environment variable
//! (`RENDEZVOUS_UPPER_NAME`). `Default` reads those declared defaults back through
//! clap, so no default is written twice (see `src/config.rs` at the root for the
//! layering of file, environment and flags).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};

/// One step of the relaxation ladder: once a search has waited `after_ms`, these
/// criteria apply. Steps must be sorted by `after_ms`, the first at 0. On the
/// command line a step is `AFTER_MS:same|any:MIN_SHARED`.
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

impl FromStr for LadderStep {
    type Err = String;

    /// Parse `2000:any:1` (`region` is accepted for `same`).
    fn from_str(step: &str) -> Result<Self, String> {
        let parts: Vec<&str> = step.trim().split(':').collect();
        let [after, region, min] = parts.as_slice() else {
            return Err(format!("ladder step `{step}` is not AFTER_MS:same|any:MIN_SHARED"));
        };
        let same_region = match *region {
            "same" | "region" => true,
            "any" => false,
            other => return Err(format!("ladder region `{other}` is not same or any")),
        };
        Ok(LadderStep {
            after_ms: after.parse().map_err(|e| format!("ladder after_ms `{after}`: {e}"))?,
            same_region,
            min_shared: min.parse().map_err(|e| format!("ladder min_shared `{min}`: {e}"))?,
        })
    }
}

impl fmt::Display for LadderStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let region = if self.same_region { "same" } else { "any" };
        write!(f, "{}:{region}:{}", self.after_ms, self.min_shared)
    }
}

/// A language whose pool is split into `parts` pools of their own
/// (`LANG~0` … `LANG~{parts-1}`), each a hash slot of its own in Redis Cluster.
/// On the command line: `LANG=PARTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageParts {
    pub language: String,
    pub parts: u16,
}

/// Most parts one language may be split into.
pub const MAX_LANGUAGE_PARTS: u16 = 64;

impl FromStr for LanguageParts {
    type Err = String;

    /// Parse `en=4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((language, parts)) = s.trim().split_once('=') else {
            return Err(format!("language parts `{s}` is not LANG=PARTS (e.g. en=4)"));
        };
        let parts = parts
            .trim()
            .parse()
            .map_err(|e| format!("language parts `{s}`: PARTS is not a number: {e}"))?;
        Ok(LanguageParts { language: language.trim().to_owned(), parts })
    }
}

impl fmt::Display for LanguageParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.language, self.parts)
    }
}

/// Everything the actors need to know. Defaults are the protocol's defaults.
///
/// The first paragraph of each field's doc is its `--help` line; what follows is
/// shown by `--help` (not `-h`) and explains the why.
#[derive(Debug, Clone, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Name of this node, reported to clients (`welcome`), peers and `/api/stats`
    #[arg(long, default_value = "node-1", value_name = "ID")]
    pub node_id: String,
    /// Worker threads for sessions and rooms; 0 = one per core
    #[arg(long, default_value_t = 0, help_heading = "Engine")]
    pub workers: usize,
    /// Matching-pool shards (each an actor on its own thread); 0 = one per core
    #[arg(long, default_value_t = 0, help_heading = "Engine")]
    pub pool_shards: usize,
    /// Longest a search waits before `no_match_found`, in ms; caps a search's `max_wait_ms`
    #[arg(long, default_value_t = 60_000, help_heading = "Matching")]
    pub search_timeout_ms: u64,
    /// How often pools relax criteria and expire searches, in ms
    #[arg(long, default_value_t = 100, help_heading = "Matching")]
    pub match_tick_ms: u64,
    /// Wait the matching policy aims at, in ms: within it, it holds out for more shared interests while a better partner is likely to come
    ///
    /// Adapts to each pool's observed arrival rate; see DESIGN.md "Matching".
    /// Ignored when `ladder` is given.
    #[arg(long, default_value_t = 3_000, help_heading = "Matching")]
    pub max_wait_target_ms: u64,
    /// Fixed relaxation ladder instead of the wait-target policy: comma-separated AFTER_MS:REGION:MIN_SHARED steps, REGION = same|any
    ///
    /// Once a search has waited AFTER_MS, a partner must share MIN_SHARED interests
    /// (capped by how many each side gave) and, for `same`, the region when both gave
    /// one. Unset (the default): the wait-target policy (`max_wait_target_ms`).
    /// The ladder used before the policy was `0:same:2,2000:same:1,4000:any:1,8000:any:0`.
    #[arg(long, value_delimiter = ',', value_name = "STEPS", help_heading = "Matching")]
    pub ladder: Vec<LadderStep>,
    /// Pool where searches without a language start; they may then move to other languages' pools ("" = they share a pool of their own)
    #[arg(long, default_value = "en", help_heading = "Matching")]
    pub default_language: String,
    /// Comma-separated language tags a search may name (e.g. en,fr,pt-BR); others get `bad_request`; unset = any well-formed tag
    #[arg(long, value_delimiter = ',', value_name = "TAGS", help_heading = "Matching")]
    pub languages: Vec<String>,
    /// Languages whose pool is split into several (LANG=PARTS, comma-separated, e.g. en=4); every node must be given the same
    ///
    /// Each part is a pool of its own, in a hash slot of its own: a language that
    /// takes most of the traffic then spreads its claims and pool events over
    /// several Redis Cluster primaries (and several local pool shards) instead of
    /// one. A search starts in the part its user id hashes to and moves to a
    /// sibling part where others wait when it is alone, or after a second without a
    /// match, like a search without a language moves between languages. Clients
    /// see no difference: the parts share the language's name in every frame and
    /// metric. Split only a language with many waiting at once (hundreds per part):
    /// fewer waiting per pool means fewer candidates to choose the best from.
    #[arg(long, value_delimiter = ',', value_name = "LANG=PARTS", help_heading = "Matching")]
    pub language_parts: Vec<LanguageParts>,
    /// Most languages with their own per-language pool metric series; the rest are summed as `other`
    ///
    /// Admitted first come and kept: the exporter cannot delete a series.
    #[arg(long, default_value_t = 50, help_heading = "Matching")]
    pub language_series: usize,
    /// Seconds a partner skipped with `next` stays away
    #[arg(long, default_value_t = 300, help_heading = "Matching")]
    pub skip_ttl_secs: u64,
    /// Seconds a `block` keeps two users apart (it outlives the session)
    #[arg(long, default_value_t = 30 * 24 * 3600, help_heading = "Matching")]
    pub block_ttl_secs: u64,
    /// Most users one user keeps away at once (blocks and running skips); past it the oldest is forgotten
    #[arg(long, default_value_t = 1_000, help_heading = "Limits")]
    pub max_blocks_per_user: usize,
    /// Seat kept in rooms after a disconnect, for reconnects, in ms
    #[arg(long, default_value_t = 30_000, help_heading = "Rooms")]
    pub reconnect_grace_ms: u64,
    /// How long an empty public room lingers before it is forgotten with its history, in ms
    #[arg(long, default_value_t = 30_000, help_heading = "Rooms")]
    pub empty_room_grace_ms: u64,
    /// Messages kept per room for `history` (a ring: the oldest drop out)
    #[arg(long, default_value_t = 1_000, help_heading = "Rooms")]
    pub history_len: usize,
    /// Most bytes of message text kept per room for `history` (memory and Redis); the oldest drop out
    ///
    /// Applies on top of history_len, in memory and in the cluster's store.
    #[arg(long, default_value_t = 1 << 20, help_heading = "Rooms")]
    pub history_bytes: usize,
    /// How long a room remembers a sender's `client_msg_id`: a `send` repeating it within this gets the original `ack` and is not stored again, in ms
    ///
    /// A client that resends after a dropped connection reuses the id; past this
    /// window (or past dedup_max_per_room) the resend is stored as a new message.
    #[arg(long, default_value_t = 600_000, help_heading = "Rooms")]
    pub dedup_window_ms: u64,
    /// Most `client_msg_id`s a room remembers for duplicate sends; past it the oldest are forgotten (0 = no deduplication)
    #[arg(long, default_value_t = 1_000, help_heading = "Rooms")]
    pub dedup_max_per_room: usize,
    /// Comma-separated STUN/TURN URLs served to clients for WebRTC calls (`welcome.ice_servers`, `GET /api/client-config`); none = host candidates only
    ///
    /// e.g. `stun:stun.example.org:3478,turn:turn.example.org:3478?transport=udp,turns:turn.example.org:5349`.
    /// TURN URLs need --turn-secret. Relay-only calls (`iceTransportPolicy: "relay"`)
    /// keep a user's IP address from their partner: see README, "Video calls".
    #[arg(long, value_delimiter = ',', value_name = "URLS", help_heading = "Calls")]
    pub ice_servers: Vec<String>,
    /// Secret shared with the TURN server (coturn `static-auth-secret`): clients get time-limited credentials derived from it
    #[arg(long, value_name = "SECRET", help_heading = "Calls")]
    pub turn_secret: Option<String>,
    /// Lifetime of the TURN credentials handed out, in seconds
    #[arg(long, default_value_t = 86_400, help_heading = "Calls")]
    pub turn_ttl_secs: u64,
    /// Largest `limit` a `history` request is served; a larger one is cut to it
    #[arg(long, default_value_t = 200, help_heading = "Rooms")]
    pub history_limit_max: u32,
    /// Largest inbound frame in bytes; larger closes with 1009
    #[arg(long, default_value_t = 64 * 1024, help_heading = "Limits")]
    pub max_frame_bytes: usize,
    /// Longest chat text in characters
    #[arg(long, default_value_t = 4_096, help_heading = "Limits")]
    pub max_text_chars: usize,
    /// Most interests in one `find_match`; more get `too_large`
    #[arg(long, default_value_t = 20, help_heading = "Limits")]
    pub max_interests: usize,
    /// Longest interest in characters; longer gets `too_large`
    #[arg(long, default_value_t = 32, help_heading = "Limits")]
    pub max_interest_chars: usize,
    /// Largest `signal` payload in bytes of JSON; larger gets `too_large`
    #[arg(long, default_value_t = 16 * 1024, help_heading = "Limits")]
    pub max_signal_bytes: usize,
    /// Longest `language`, `region`, `room_id` or `client_msg_id` in characters
    #[arg(long, default_value_t = 64, help_heading = "Limits")]
    pub max_name_chars: usize,
    /// `find_match`/`next` per user per minute
    #[arg(long, default_value_t = 10, help_heading = "Limits")]
    pub find_match_per_minute: u32,
    /// `send` per user per second, sustained
    #[arg(long, default_value_t = 20, help_heading = "Limits")]
    pub send_per_second: u32,
    /// `send` burst per user
    #[arg(long, default_value_t = 40, help_heading = "Limits")]
    pub send_burst: u32,
    /// All frames per session per second, sustained
    #[arg(long, default_value_t = 100, help_heading = "Limits")]
    pub frames_per_second: u32,
    /// Burst of all frames per session
    #[arg(long, default_value_t = 200, help_heading = "Limits")]
    pub frames_burst: u32,
    /// Byte budget per user per second of block, signal, read, typing, join/leave and history (payload x recipients, pages returned)
    ///
    /// What those actions make the node copy or keep.
    #[arg(long, default_value_t = 256 * 1024, help_heading = "Limits")]
    pub action_bytes_per_second: u64,
    /// Burst of that byte budget per user
    #[arg(long, default_value_t = 1 << 20, help_heading = "Limits")]
    pub action_bytes_burst: u64,
    /// Rate-limit refusals within 10 s that close a session with 4008
    #[arg(long, default_value_t = 50, help_heading = "Limits")]
    pub flood_strikes: u32,
    /// Frames queued per client before it counts as a slow consumer
    ///
    /// Must absorb a busy room's legitimate burst: a room actor drains its whole
    /// mailbox before a writer on the same thread runs (10 members x a send burst of
    /// 40 = 400 frames).
    #[arg(long, default_value_t = 1_024, help_heading = "Limits")]
    pub outbound_queue: usize,
    /// Bytes queued per client before it counts as a slow consumer; 0 = no byte limit
    ///
    /// One frame larger than this still goes through an empty queue.
    #[arg(long, default_value_t = 1 << 20, help_heading = "Limits")]
    pub outbound_queue_bytes: usize,
    /// Kernel send buffer per client socket in bytes; 0 = kernel autotuning
    ///
    /// Autotuning lets a client that stopped reading hold megabytes.
    #[arg(long, default_value_t = 256 * 1024, help_heading = "Limits")]
    pub socket_send_buffer_bytes: usize,
    /// Longest a socket write may block before the client is dropped, in ms
    #[arg(long, default_value_t = 10_000, help_heading = "Limits")]
    pub write_timeout_ms: u64,
    /// Interval of the server's WebSocket pings, in ms
    #[arg(long, default_value_t = 20_000, help_heading = "Limits")]
    pub heartbeat_interval_ms: u64,
    /// A client silent this long (no frame, no pong) is disconnected, in ms; more than heartbeat_interval_ms
    #[arg(long, default_value_t = 60_000, help_heading = "Limits")]
    pub client_timeout_ms: u64,
    /// After a session's token expires (`token_expired`), how long it may send `refresh` before it is closed with 4001, in ms
    #[arg(long, default_value_t = 30_000, help_heading = "Limits")]
    pub token_grace_ms: u64,
    /// Shortest time between two `refresh` attempts of one session, in ms; sooner gets `rate_limited`
    ///
    /// Each attempt costs a signature check.
    #[arg(long, default_value_t = 1_000, help_heading = "Limits")]
    pub refresh_min_interval_ms: u64,
    /// Bound on the graceful drain on SIGTERM/SIGINT, in ms
    #[arg(long, default_value_t = 5_000, help_heading = "Engine")]
    pub drain_timeout_ms: u64,
    /// Most sessions on this node; 0 = 95% of the open-file limit
    ///
    /// Past it new connections are refused (HTTP 503, or close 1013 for browsers).
    #[arg(long, default_value_t = 0, help_heading = "Limits")]
    pub max_sessions: usize,
    /// Most sessions from one IP address; 0 = no limit (behind a proxy all clients share its address)
    #[arg(long, default_value_t = 0, help_heading = "Limits")]
    pub max_sessions_per_ip: usize,
    /// Most rooms one user may be in (match rooms and public rooms)
    #[arg(long, default_value_t = 20, help_heading = "Limits")]
    pub max_rooms_per_user: usize,
    /// Most members of one public room
    #[arg(long, default_value_t = 1_000, help_heading = "Limits")]
    pub max_public_room_members: usize,
    /// Largest room where a `signal` without `to` goes to every member
    #[arg(long, default_value_t = 8, help_heading = "Limits")]
    pub max_signal_broadcast_members: usize,
    /// Most public rooms open on this node; a join that would open one more gets `too_large`
    #[arg(long, default_value_t = 10_000, help_heading = "Limits")]
    pub max_public_rooms: usize,
    /// Cluster: users' and rooms' Redis keys live this long past the reconnect grace without a refresh; nodes refresh them every third of it, in ms (at least 5000)
    ///
    /// So Redis holds what is online, and a killed node's keys vanish within the
    /// grace plus this margin.
    #[arg(long, default_value_t = 30_000, help_heading = "Rooms")]
    pub cluster_key_margin_ms: u64,
    /// Single node: keep bans, blocks and reports in this JSON file across restarts (written atomically: a temporary file, then a rename); unset = memory only. In a cluster Redis keeps them
    #[arg(long, value_name = "FILE", help_heading = "Moderation")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moderation_state_file: Option<std::path::PathBuf>,
    /// `report`s one user may file per hour; more get `rate_limited`
    #[arg(long, default_value_t = 10, help_heading = "Moderation")]
    pub reports_per_hour: u32,
    /// Messages of the room kept with a report as evidence (its last ones)
    #[arg(long, default_value_t = 20, help_heading = "Moderation")]
    pub report_evidence_messages: usize,
    /// How long after a match room closes its members may still report each other, in seconds
    #[arg(long, default_value_t = 600, help_heading = "Moderation")]
    pub report_window_secs: u64,
    /// How long a report is kept (open or resolved), in seconds
    #[arg(long, default_value_t = 30 * 24 * 3600, help_heading = "Moderation")]
    pub report_ttl_secs: u64,
    /// Longest `reason` of a `report`, in characters; longer gets `too_large`
    #[arg(long, default_value_t = 500, help_heading = "Moderation")]
    pub max_report_reason_chars: usize,
    /// Most reports kept on a node; past it the oldest resolved ones, then the oldest, are forgotten
    #[arg(long, default_value_t = 10_000, help_heading = "Moderation")]
    pub max_reports: usize,
}

impl Default for EngineConfig {
    /// The defaults declared on the fields, read once per process.
    fn default() -> Self {
        static DEFAULTS: OnceLock<EngineConfig> = OnceLock::new();
        DEFAULTS.get_or_init(declared_defaults).clone()
    }
}

/// Settings built from their declared defaults alone (no environment, no
/// arguments): the `Default` of a clap-declared settings struct, so that a default
/// is written once, in its `default_value` attribute.
pub fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    let matches = cmd.try_get_matches_from(["defaults"]).expect("the declared defaults parse");
    T::from_arg_matches(&matches).expect("every setting has a default")
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
    /// How many pools `language` (a lower-cased tag) is split into: 1 unless
    /// `language_parts` names it.
    pub fn parts_of(&self, language: &str) -> u16 {
        self.language_parts
            .iter()
            .find(|lp| lp.language.eq_ignore_ascii_case(language))
            .map_or(1, |lp| lp.parts)
    }

    /// Check the settings hang together; called once at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ladder.first().is_some_and(|s| s.after_ms != 0) {
            return Err(bad("ladder", "the first step must start at after_ms = 0"));
        }
        if self.ladder.windows(2).any(|w| w[0].after_ms >= w[1].after_ms) {
            return Err(bad("ladder", "steps must be sorted by strictly increasing after_ms"));
        }
        let positive: &[(&'static str, u64)] = &[
            ("max_wait_target_ms", self.max_wait_target_ms),
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
            ("reports_per_hour", self.reports_per_hour as u64),
            ("max_reports", self.max_reports as u64),
        ];
        for &(field, v) in positive {
            if v == 0 {
                return Err(bad(field, "must be greater than 0"));
            }
        }
        for url in &self.ice_servers {
            if !crate::ice::is_stun(url) && !crate::ice::is_turn(url) {
                return Err(bad(
                    "ice_servers",
                    format!("`{url}` is not a stun:, stuns:, turn: or turns: URL"),
                ));
            }
        }
        if self.ice_servers.iter().any(|u| crate::ice::is_turn(u)) && self.turn_secret.is_none() {
            return Err(bad("turn_secret", "TURN URLs in ice_servers need a turn_secret"));
        }
        if self.turn_secret.as_deref().is_some_and(str::is_empty) || self.turn_ttl_secs == 0 {
            return Err(bad(
                "turn_secret",
                "must not be empty, and turn_ttl_secs must be positive",
            ));
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
        for (i, lp) in self.language_parts.iter().enumerate() {
            if crate::language::parse_tag(&lp.language).is_none() {
                return Err(bad(
                    "language_parts",
                    format!("`{}` is not a language tag (en, pt-BR)", lp.language),
                ));
            }
            if !(1..=MAX_LANGUAGE_PARTS).contains(&lp.parts) {
                return Err(bad(
                    "language_parts",
                    format!("`{lp}`: a language has 1 to {MAX_LANGUAGE_PARTS} parts"),
                ));
            }
            if self.language_parts[..i]
                .iter()
                .any(|o| o.language.eq_ignore_ascii_case(&lp.language))
            {
                return Err(bad("language_parts", format!("`{}` is named twice", lp.language)));
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
    fn declared_defaults_are_read_back() {
        let c = EngineConfig::default();
        assert_eq!(
            (c.node_id.as_str(), c.search_timeout_ms, c.history_limit_max),
            ("node-1", 60_000, 200)
        );
        assert!(c.ladder.is_empty(), "the wait-target policy by default");
        assert_eq!(c.max_wait_target_ms, 3_000);
        for step in ["0:same:2", "2000:same:1", "4000:any:1", "8000:any:0"] {
            let parsed = step.parse::<LadderStep>().expect("parses");
            assert_eq!(parsed.to_string(), step);
        }
        assert!("0:near:2".parse::<LadderStep>().is_err());
        assert!("0:same".parse::<LadderStep>().is_err());
    }

    #[test]
    fn unsorted_ladder_is_refused() {
        let mut c = EngineConfig::default();
        let step = |s: &str| s.parse::<LadderStep>().expect("step");
        c.ladder = vec![step("0:same:2"), step("4000:any:1"), step("2000:same:1")];
        assert_eq!(c.validate().expect_err("unsorted").field, "ladder");
        c.ladder = vec![step("100:same:2")];
        assert_eq!(c.validate().expect_err("first not at 0").field, "ladder");
        c.ladder.clear();
        c.validate().expect("no ladder: the wait-target policy");
        c.max_wait_target_ms = 0;
        assert_eq!(c.validate().expect_err("zero target").field, "max_wait_target_ms");
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

    #[test]
    fn language_parts_parse_and_are_checked() {
        let lp: LanguageParts = " pt-BR=4 ".parse().expect("parses");
        assert_eq!(lp, LanguageParts { language: "pt-BR".into(), parts: 4 });
        assert_eq!(lp.to_string(), "pt-BR=4");
        for bad in ["en", "en=", "en=x", "en=-1", "=4"] {
            let parsed = bad.parse::<LanguageParts>();
            let checked = parsed.map(|lp| {
                EngineConfig { language_parts: vec![lp], ..Default::default() }.validate()
            });
            assert!(!matches!(checked, Ok(Ok(()))), "{bad} is refused");
        }
        let with = |v: Vec<(&str, u16)>| EngineConfig {
            language_parts: v
                .into_iter()
                .map(|(l, p)| LanguageParts { language: l.into(), parts: p })
                .collect(),
            ..Default::default()
        };
        let c = with(vec![("en", 4), ("PT-br", 2)]);
        c.validate().expect("valid");
        assert_eq!((c.parts_of("en"), c.parts_of("pt-br"), c.parts_of("fr")), (4, 2, 1));
        for (v, why) in [
            (vec![("en", 0)], "no parts"),
            (vec![("en", MAX_LANGUAGE_PARTS + 1)], "too many"),
            (vec![("en_US", 2)], "not a tag"),
            (vec![("en", 2), ("EN", 3)], "named twice"),
        ] {
            assert_eq!(with(v).validate().expect_err(why).field, "language_parts", "{why}");
        }
    }
}
