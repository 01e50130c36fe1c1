//! Configuration of the `rendezvous` binary: command-line flags, environment
//! variables (`RENDEZVOUS_*`) and an optional TOML file, in that order of
//! precedence, over the defaults in [`EngineConfig`].
//!
//! TOML layout (every key optional):
//! ```toml
//! bind = "127.0.0.1:8080"
//! trusted_proxies = ["127.0.0.1/32"]   # may set the client address (X-Forwarded-For)
//! handshake_timeout_ms = 10000
//! node_id = "node-a"
//! jwt_secret = "change-me-to-32-or-more-random-bytes"
//! jwt_public_key = "/etc/rendezvous/idp.pem"   # RS256 / ES256
//! jwt_audience = "chat"
//! jwt_issuer = "https://idp.example.com/"
//! anonymous = "auto"          # auto | allow | deny
//! log_format = "text"         # text | json
//! [engine]                    # any field of EngineConfig
//! search_timeout_ms = 60000
//! ladder = [ { after_ms = 0, same_region = true, min_shared = 2 } ]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::{KeyError, PublicKey};
use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use rendezvous_actors::{EngineConfig, LadderStep};
use serde::{Deserialize, Serialize};

use crate::front::parse_proxy;

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key of at least the
/// hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Smallest `max_header_bytes`: hyper's smallest read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Whether connections without a JWT are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousMode {
    /// Allowed when bound to a loopback address and no JWT secret or public key is
    /// set, and only for requests that did not come through a proxy (no `Forwarded`
    /// or `X-Forwarded-For` header).
    #[default]
    Auto,
    /// Always allowed (insecure; logged loudly).
    Allow,
    /// Never allowed: every connection needs a valid JWT.
    Deny,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Command line. Every option can also come from the environment variable shown.
#[derive(Debug, Parser, Default)]
#[command(
    name = "rendezvous",
    version,
    about = "Real-time stranger matching and chat over WebSocket.\n\nWith no options it serves the embedded single-node engine on 127.0.0.1:8080."
)]
pub struct Cli {
    /// Address and port to serve HTTP and WebSocket (`/ws`) on [default: 127.0.0.1:8080]
    #[arg(long, env = "RENDEZVOUS_BIND", value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
    /// Redis URL (`redis://[:password@]host:port/db` or `rediss://`) to join a cluster of nodes; none = single node
    #[arg(long, env = "RENDEZVOUS_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Name of this node, reported to clients and peers [default: node-1]
    #[arg(long, env = "RENDEZVOUS_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// HS256 secret for client JWTs (claim `sub` = user id), at least 32 bytes; enables token auth
    #[arg(long, env = "RENDEZVOUS_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for client JWTs: an RSA key verifies RS256 tokens, an EC P-256 key ES256; enables token auth
    #[arg(long, env = "RENDEZVOUS_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Audience tokens must name in `aud`; unset = tokens with an `aud` are refused
    #[arg(long, env = "RENDEZVOUS_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Issuer tokens must name in `iss`; unset = any issuer
    #[arg(long, env = "RENDEZVOUS_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Accept connections without a token (`?user=NAME`): auto = only direct (not proxied) requests on a loopback bind without token verification; with tokens also on, anonymous ids start with `~`
    #[arg(long, env = "RENDEZVOUS_ANONYMOUS", value_enum)]
    pub anonymous: Option<AnonymousMode>,
    /// TOML file with any of these settings (flags and environment win over it)
    #[arg(long, env = "RENDEZVOUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, env = "RENDEZVOUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Comma-separated reverse proxies (CIDR or address, e.g. 10.0.0.0/8,::1) whose `Forwarded` / `X-Forwarded-For` name the client address; unset = nobody's
    #[arg(
        long,
        env = "RENDEZVOUS_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR,..."
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// A new connection must complete its request headers within this many ms, else it is closed [default: 10000]
    #[arg(long, env = "RENDEZVOUS_HANDSHAKE_TIMEOUT_MS", help_heading = "Limits")]
    pub handshake_timeout_ms: Option<u64>,
    /// A keep-alive HTTP connection idle this many ms after a response is closed [default: 30000]
    #[arg(long, env = "RENDEZVOUS_HTTP_IDLE_TIMEOUT_MS", help_heading = "Limits")]
    pub http_idle_timeout_ms: Option<u64>,
    /// Most connections not yet upgraded to a WebSocket (0 = 4096), and never more than the open-file limit leaves beside the open sessions; when full, the oldest stalled one gives way or a new one is closed at once [default: 0]
    #[arg(long, env = "RENDEZVOUS_MAX_PENDING_CONNECTIONS", help_heading = "Limits")]
    pub max_pending_connections: Option<usize>,
    /// Most connections not yet upgraded from one client address (trusted proxies exempt); more are closed at once; 0 = no limit [default: 512]
    #[arg(long, env = "RENDEZVOUS_MAX_PENDING_PER_IP", help_heading = "Limits")]
    pub max_pending_per_ip: Option<usize>,
    /// Largest request head (request line and headers) in bytes, at least 8192; larger gets HTTP 431 [default: 65536]
    #[arg(long, env = "RENDEZVOUS_MAX_HEADER_BYTES", help_heading = "Limits")]
    pub max_header_bytes: Option<usize>,

    /// Worker threads for sessions and rooms; 0 = one per core
    #[arg(long, env = "RENDEZVOUS_WORKERS", help_heading = "Engine")]
    pub workers: Option<usize>,
    /// Matching-pool shards; 0 = one per core
    #[arg(long, env = "RENDEZVOUS_POOL_SHARDS", help_heading = "Engine")]
    pub pool_shards: Option<usize>,
    /// Longest a search waits before `no_match_found`, in ms [default: 60000]
    #[arg(long, env = "RENDEZVOUS_SEARCH_TIMEOUT_MS", help_heading = "Matching")]
    pub search_timeout_ms: Option<u64>,
    /// Relaxation ladder: comma-separated AFTER_MS:REGION:MIN_SHARED steps, REGION = same|any [default: 0:same:2,2000:same:1,4000:any:1,8000:any:0]
    #[arg(long, env = "RENDEZVOUS_LADDER", value_parser = parse_ladder, help_heading = "Matching")]
    pub ladder: Option<Ladder>,
    /// How often pools relax criteria and expire searches, in ms [default: 100]
    #[arg(long, env = "RENDEZVOUS_MATCH_TICK_MS", help_heading = "Matching")]
    pub match_tick_ms: Option<u64>,
    /// Language assumed for searches that give none [default: en]
    #[arg(long, env = "RENDEZVOUS_DEFAULT_LANGUAGE", help_heading = "Matching")]
    pub default_language: Option<String>,
    /// Comma-separated language tags a search may name (e.g. en,fr,pt-BR); others get `bad_request`; unset = any well-formed tag
    #[arg(
        long,
        env = "RENDEZVOUS_LANGUAGES",
        value_delimiter = ',',
        value_name = "TAGS",
        help_heading = "Matching"
    )]
    pub languages: Option<Vec<String>>,
    /// Most languages with their own per-language pool metric series; the rest are summed as `other` [default: 50]
    #[arg(long, env = "RENDEZVOUS_LANGUAGE_SERIES", help_heading = "Matching")]
    pub language_series: Option<usize>,
    /// Seconds a partner skipped with `next` stays away [default: 300]
    #[arg(long, env = "RENDEZVOUS_SKIP_TTL_SECS", help_heading = "Matching")]
    pub skip_ttl_secs: Option<u64>,
    /// Seconds a `block` keeps two users apart [default: 2592000]
    #[arg(long, env = "RENDEZVOUS_BLOCK_TTL_SECS", help_heading = "Matching")]
    pub block_ttl_secs: Option<u64>,
    /// Most users one user keeps away at once (blocks and running skips); past it the oldest is forgotten [default: 1000]
    #[arg(long, env = "RENDEZVOUS_MAX_BLOCKS_PER_USER", help_heading = "Limits")]
    pub max_blocks_per_user: Option<usize>,
    /// Byte budget per user per second of block, signal, read, typing, join/leave and history (payload x recipients, pages returned) [default: 262144]
    #[arg(long, env = "RENDEZVOUS_ACTION_BYTES_PER_SECOND", help_heading = "Limits")]
    pub action_bytes_per_second: Option<u64>,
    /// Burst of that byte budget per user [default: 1048576]
    #[arg(long, env = "RENDEZVOUS_ACTION_BYTES_BURST", help_heading = "Limits")]
    pub action_bytes_burst: Option<u64>,
    /// `find_match`/`next` per user per minute [default: 10]
    #[arg(long, env = "RENDEZVOUS_FIND_MATCH_PER_MINUTE", help_heading = "Limits")]
    pub find_match_per_minute: Option<u32>,
    /// `send` per user per second, sustained [default: 20]
    #[arg(long, env = "RENDEZVOUS_SEND_PER_SECOND", help_heading = "Limits")]
    pub send_per_second: Option<u32>,
    /// `send` burst per user [default: 40]
    #[arg(long, env = "RENDEZVOUS_SEND_BURST", help_heading = "Limits")]
    pub send_burst: Option<u32>,
    /// All frames per session per second, sustained [default: 100]
    #[arg(long, env = "RENDEZVOUS_FRAMES_PER_SECOND", help_heading = "Limits")]
    pub frames_per_second: Option<u32>,
    /// Burst of all frames per session [default: 200]
    #[arg(long, env = "RENDEZVOUS_FRAMES_BURST", help_heading = "Limits")]
    pub frames_burst: Option<u32>,
    /// Rate-limit refusals within 10 s that close a session with 4008 [default: 50]
    #[arg(long, env = "RENDEZVOUS_FLOOD_STRIKES", help_heading = "Limits")]
    pub flood_strikes: Option<u32>,
    /// Largest inbound frame in bytes; larger closes with 1009 [default: 65536]
    #[arg(long, env = "RENDEZVOUS_MAX_FRAME_BYTES", help_heading = "Limits")]
    pub max_frame_bytes: Option<usize>,
    /// Longest chat text in characters [default: 4096]
    #[arg(long, env = "RENDEZVOUS_MAX_TEXT_CHARS", help_heading = "Limits")]
    pub max_text_chars: Option<usize>,
    /// Frames queued per client before it counts as a slow consumer [default: 1024]
    #[arg(long, env = "RENDEZVOUS_OUTBOUND_QUEUE", help_heading = "Limits")]
    pub outbound_queue: Option<usize>,
    /// Bytes queued per client before it counts as a slow consumer; 0 = no byte limit [default: 1048576]
    #[arg(long, env = "RENDEZVOUS_OUTBOUND_QUEUE_BYTES", help_heading = "Limits")]
    pub outbound_queue_bytes: Option<usize>,
    /// Longest a socket write may block before the client is dropped, in ms [default: 10000]
    #[arg(long, env = "RENDEZVOUS_WRITE_TIMEOUT_MS", help_heading = "Limits")]
    pub write_timeout_ms: Option<u64>,
    /// Kernel send buffer per client socket in bytes; 0 = kernel autotuning [default: 262144]
    #[arg(long, env = "RENDEZVOUS_SOCKET_SEND_BUFFER_BYTES", help_heading = "Limits")]
    pub socket_send_buffer_bytes: Option<usize>,
    /// Seat kept in rooms after a disconnect, in ms [default: 30000]
    #[arg(long, env = "RENDEZVOUS_RECONNECT_GRACE_MS", help_heading = "Rooms")]
    pub reconnect_grace_ms: Option<u64>,
    /// Messages kept per room for `history` [default: 1000]
    #[arg(long, env = "RENDEZVOUS_HISTORY_LEN", help_heading = "Rooms")]
    pub history_len: Option<usize>,
    /// Most bytes of message text kept per room for `history` (memory and Redis); the oldest drop out [default: 1048576]
    #[arg(long, env = "RENDEZVOUS_HISTORY_BYTES", help_heading = "Rooms")]
    pub history_bytes: Option<usize>,
    /// Cluster: users' and rooms' Redis keys live this long past the reconnect grace without a refresh; nodes refresh them every third of it, in ms (at least 5000) [default: 30000]
    #[arg(long, env = "RENDEZVOUS_CLUSTER_KEY_MARGIN_MS", help_heading = "Rooms")]
    pub cluster_key_margin_ms: Option<u64>,
    /// Most sessions on this node; 0 = 95% of the open-file limit [default: 0]
    #[arg(long, env = "RENDEZVOUS_MAX_SESSIONS", help_heading = "Limits")]
    pub max_sessions: Option<usize>,
    /// Most sessions from one IP address; 0 = no limit (behind a proxy all clients share its address) [default: 0]
    #[arg(long, env = "RENDEZVOUS_MAX_SESSIONS_PER_IP", help_heading = "Limits")]
    pub max_sessions_per_ip: Option<usize>,
    /// Most rooms one user may be in [default: 20]
    #[arg(long, env = "RENDEZVOUS_MAX_ROOMS_PER_USER", help_heading = "Limits")]
    pub max_rooms_per_user: Option<usize>,
    /// Most members of one public room [default: 1000]
    #[arg(long, env = "RENDEZVOUS_MAX_PUBLIC_ROOM_MEMBERS", help_heading = "Limits")]
    pub max_public_room_members: Option<usize>,
    /// Largest room where a `signal` without `to` goes to every member [default: 8]
    #[arg(long, env = "RENDEZVOUS_MAX_SIGNAL_BROADCAST_MEMBERS", help_heading = "Limits")]
    pub max_signal_broadcast_members: Option<usize>,
    /// Most public rooms open on this node; a join that would open one more gets `too_large` [default: 10000]
    #[arg(long, env = "RENDEZVOUS_MAX_PUBLIC_ROOMS", help_heading = "Limits")]
    pub max_public_rooms: Option<usize>,
    /// Comma-separated Origins allowed to open /ws (e.g. https://chat.example.com); unset = any
    #[arg(
        long,
        env = "RENDEZVOUS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        help_heading = "Limits"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// After a session's token expires (`token_expired`), how long it may send `refresh` before it is closed with 4001, in ms [default: 30000]
    #[arg(long, env = "RENDEZVOUS_TOKEN_GRACE_MS", help_heading = "Limits")]
    pub token_grace_ms: Option<u64>,
    /// Shortest time between two `refresh` attempts of one session, in ms; sooner gets `rate_limited` [default: 1000]
    #[arg(long, env = "RENDEZVOUS_REFRESH_MIN_INTERVAL_MS", help_heading = "Limits")]
    pub refresh_min_interval_ms: Option<u64>,
    /// Bound on the graceful drain on SIGTERM/SIGINT, in ms [default: 5000]
    #[arg(long, env = "RENDEZVOUS_DRAIN_TIMEOUT_MS", help_heading = "Engine")]
    pub drain_timeout_ms: Option<u64>,
}

/// A relaxation ladder given on the command line (one value, comma-separated steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder(pub Vec<LadderStep>);

/// Parse `0:same:2,2000:any:1` into ladder steps.
pub fn parse_ladder(s: &str) -> Result<Ladder, String> {
    s.split(',')
        .map(|step| {
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
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Ladder)
}

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    trusted_proxies: Option<Vec<String>>,
    handshake_timeout_ms: Option<u64>,
    http_idle_timeout_ms: Option<u64>,
    max_pending_connections: Option<usize>,
    max_pending_per_ip: Option<usize>,
    max_header_bytes: Option<usize>,
    redis_url: Option<String>,
    node_id: Option<String>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    anonymous: Option<AnonymousMode>,
    log_format: Option<LogFormat>,
    allowed_origins: Option<Vec<String>>,
    engine: Option<EngineConfig>,
}

/// Settings of one server, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers set the client
    /// address (per-IP limits, logs); anyone else's such headers are ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// Deadline from accept to complete request headers, in ms: a socket that sends
    /// nothing (or half a request) would otherwise hold a file descriptor forever.
    pub handshake_timeout_ms: u64,
    /// Deadline for the next request on a keep-alive connection after a response, in ms.
    pub http_idle_timeout_ms: u64,
    /// Cap on connections not yet upgraded; 0 = 4,096. Whatever the cap, the
    /// pending connections admitted never exceed what the open-file limit leaves
    /// beside the open sessions (and a reserve of 64), so sessions plus pending
    /// connections never run the node out of descriptors.
    pub max_pending_connections: usize,
    /// Cap on connections not yet upgraded per client address (TCP peer; trusted
    /// proxies exempt); 0 = none. High enough for load tests at 6,000 handshakes/s
    /// from one address.
    pub max_pending_per_ip: usize,
    /// Largest request head (request line and headers), in bytes; more is answered
    /// 431. Bounds what a slow sender can pin per pending connection (hyper's own
    /// default is about 400 KiB); a browser's upgrade with cookies and a token is a
    /// few KiB. At least 8192, hyper's smallest read buffer.
    pub max_header_bytes: usize,
    pub redis_url: Option<String>,
    /// HS256 secret (at least 32 bytes).
    pub jwt_secret: Option<String>,
    /// RS256 / ES256 public key, read and checked when the configuration loads.
    pub jwt_public_key: Option<PublicKey>,
    /// `aud` every token must carry, when set.
    pub jwt_audience: Option<String>,
    /// `iss` every token must carry, when set.
    pub jwt_issuer: Option<String>,
    pub anonymous: AnonymousMode,
    pub log_format: LogFormat,
    /// Origins allowed to open `/ws`; empty = any (requests without `Origin`, i.e.
    /// non-browser clients, are not affected).
    pub allowed_origins: Vec<String>,
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            handshake_timeout_ms: 10_000,
            http_idle_timeout_ms: 30_000,
            max_pending_connections: 0,
            max_pending_per_ip: 512,
            max_header_bytes: 64 * 1024,
            redis_url: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            anonymous: AnonymousMode::Auto,
            log_format: LogFormat::Text,
            allowed_origins: Vec::new(),
            engine: EngineConfig::default(),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `trusted_proxies` entry is not a CIDR or an address.
    #[error("trusted_proxies: {0}")]
    TrustedProxy(String),
    /// A front-door deadline of 0 would close every connection at once.
    #[error("{0} must be above 0")]
    ZeroTimeout(&'static str),
    #[error("max_header_bytes must be at least {MIN_HEADER_BYTES}")]
    SmallHeaderLimit,
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error(transparent)]
    Invalid(#[from] rendezvous_actors::config::ConfigError),
    #[error("jwt_secret must be at least {MIN_SECRET_BYTES} bytes (HS256); generate one with `openssl rand -base64 48`")]
    WeakSecret,
    #[error("jwt_public_key {path}: {source}")]
    PublicKey { path: PathBuf, source: KeyError },
}

impl Config {
    /// Resolve flags and environment (already merged by clap) over the file over the
    /// defaults, then validate.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        c.engine = file.engine.unwrap_or_default();
        c.bind = cli.bind.or(file.bind).unwrap_or(c.bind);
        if let Some(list) = cli.trusted_proxies.or(file.trusted_proxies) {
            c.trusted_proxies = list
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse_proxy(s).map_err(ConfigError::TrustedProxy))
                .collect::<Result<_, _>>()?;
        }
        c.handshake_timeout_ms = cli
            .handshake_timeout_ms
            .or(file.handshake_timeout_ms)
            .unwrap_or(c.handshake_timeout_ms);
        c.http_idle_timeout_ms = cli
            .http_idle_timeout_ms
            .or(file.http_idle_timeout_ms)
            .unwrap_or(c.http_idle_timeout_ms);
        c.max_pending_connections = cli
            .max_pending_connections
            .or(file.max_pending_connections)
            .unwrap_or(c.max_pending_connections);
        c.max_pending_per_ip =
            cli.max_pending_per_ip.or(file.max_pending_per_ip).unwrap_or(c.max_pending_per_ip);
        c.max_header_bytes =
            cli.max_header_bytes.or(file.max_header_bytes).unwrap_or(c.max_header_bytes);
        c.redis_url = cli.redis_url.or(file.redis_url).filter(|u| !u.is_empty());
        c.jwt_secret = cli.jwt_secret.or(file.jwt_secret).filter(|s| !s.is_empty());
        if let Some(path) = cli.jwt_public_key.or(file.jwt_public_key) {
            let key = PublicKey::from_file(&path)
                .map_err(|source| ConfigError::PublicKey { path: path.clone(), source })?;
            c.jwt_public_key = Some(key);
        }
        c.jwt_audience = cli.jwt_audience.or(file.jwt_audience).filter(|s| !s.is_empty());
        c.jwt_issuer = cli.jwt_issuer.or(file.jwt_issuer).filter(|s| !s.is_empty());
        c.anonymous = cli.anonymous.or(file.anonymous).unwrap_or_default();
        c.log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        if let Some(id) = cli.node_id.or(file.node_id) {
            c.engine.node_id = id;
        }
        let e = &mut c.engine;
        macro_rules! over {
            ($($field:ident),*) => { $( if let Some(v) = cli.$field { e.$field = v; } )* };
        }
        over!(
            workers,
            pool_shards,
            search_timeout_ms,
            match_tick_ms,
            default_language,
            languages,
            language_series,
            skip_ttl_secs,
            block_ttl_secs,
            max_blocks_per_user,
            action_bytes_per_second,
            action_bytes_burst,
            find_match_per_minute,
            send_per_second,
            send_burst,
            frames_per_second,
            frames_burst,
            flood_strikes,
            max_frame_bytes,
            max_text_chars,
            outbound_queue,
            outbound_queue_bytes,
            write_timeout_ms,
            socket_send_buffer_bytes,
            reconnect_grace_ms,
            history_len,
            history_bytes,
            drain_timeout_ms,
            token_grace_ms,
            refresh_min_interval_ms,
            max_sessions,
            max_sessions_per_ip,
            max_rooms_per_user,
            max_public_room_members,
            max_signal_broadcast_members,
            max_public_rooms,
            cluster_key_margin_ms
        );
        c.allowed_origins = cli.allowed_origins.or(file.allowed_origins).unwrap_or_default();
        if let Some(Ladder(steps)) = cli.ladder {
            e.ladder = steps;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        if self.handshake_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("handshake_timeout_ms"));
        }
        if self.http_idle_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout("http_idle_timeout_ms"));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::SmallHeaderLimit);
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < MIN_SECRET_BYTES) {
            return Err(ConfigError::WeakSecret);
        }
        Ok(())
    }

    /// Whether anonymous connections are accepted under these settings.
    pub fn anonymous_allowed(&self) -> bool {
        match self.anonymous {
            AnonymousMode::Allow => true,
            AnonymousMode::Deny => false,
            AnonymousMode::Auto => self.bind.ip().is_loopback() && !self.verifies_tokens(),
        }
    }

    /// Whether this node accepts tokens (a secret or a public key is configured).
    pub fn verifies_tokens(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_options_means_embedded_single_node_on_loopback_8080() {
        let c = Config::load(Cli::default()).expect("defaults");
        assert_eq!(c.bind, "127.0.0.1:8080".parse().expect("addr"));
        assert!(c.redis_url.is_none());
        assert!(c.anonymous_allowed());
    }

    #[test]
    fn front_door_settings_from_flags_and_file() {
        let c = Config::load(Cli::default()).expect("defaults");
        assert_eq!((c.handshake_timeout_ms, c.http_idle_timeout_ms), (10_000, 30_000));
        assert_eq!((c.max_pending_connections, c.max_pending_per_ip), (0, 512));
        assert!(c.trusted_proxies.is_empty());
        let dir = std::env::temp_dir().join(format!("rdv-cfg-front-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("c.toml");
        let toml = "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nhandshake_timeout_ms = 2000\n\
                    max_pending_per_ip = 9\nmax_pending_connections = 99\n";
        std::fs::write(&path, toml).expect("write");
        let cli = Cli {
            config: Some(path.clone()),
            http_idle_timeout_ms: Some(700),
            max_pending_per_ip: Some(5),
            ..Cli::default()
        };
        let c = Config::load(cli).expect("valid");
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        assert_eq!((c.handshake_timeout_ms, c.http_idle_timeout_ms), (2000, 700));
        assert_eq!((c.max_pending_connections, c.max_pending_per_ip), (99, 5), "flags win");
        let cli = Cli { trusted_proxies: Some(vec!["10.0.0.0/99".into()]), ..Cli::default() };
        assert!(matches!(Config::load(cli), Err(ConfigError::TrustedProxy(_))));
        let cli = Cli { trusted_proxies: Some(vec![String::new()]), ..Cli::default() };
        assert!(Config::load(cli).expect("empty list").trusted_proxies.is_empty());
        let cli = Cli { handshake_timeout_ms: Some(0), ..Cli::default() };
        assert!(matches!(Config::load(cli), Err(ConfigError::ZeroTimeout(_))));
    }

    #[test]
    fn ladder_flag_parses() {
        let Ladder(l) = parse_ladder("0:same:2, 1500:any:0").expect("valid");
        assert_eq!(l.len(), 2);
        assert!(l[0].same_region && l[0].min_shared == 2);
        assert_eq!(l[1].after_ms, 1500);
        assert!(parse_ladder("0:near:2").is_err());
        assert!(parse_ladder("0:same").is_err());
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = std::env::temp_dir().join(format!("rdv-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "node_id = \"from-file\"\nbind = \"127.0.0.1:9000\"\n[engine]\nsend_burst = 7\nhistory_len = 9\n",
        )
        .expect("write");
        let cli = Cli {
            config: Some(path),
            node_id: Some("from-flag".into()),
            history_len: Some(11),
            ..Cli::default()
        };
        let c = Config::load(cli).expect("valid");
        assert_eq!(c.engine.node_id, "from-flag");
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.engine.send_burst, 7);
        assert_eq!(c.engine.history_len, 11);
        assert!(c.anonymous_allowed(), "loopback without a secret");
    }

    #[test]
    fn bounds_flags_reach_the_engine() {
        let cli = Cli::try_parse_from([
            "rendezvous",
            "--languages",
            "en,fr,pt-BR",
            "--language-series",
            "7",
            "--max-blocks-per-user",
            "10",
            "--action-bytes-per-second",
            "1000",
            "--action-bytes-burst",
            "5000",
            "--max-signal-broadcast-members",
            "4",
            "--max-public-rooms",
            "3",
        ])
        .expect("flags parse");
        let e = Config::load(cli).expect("valid").engine;
        assert_eq!(e.languages, ["en", "fr", "pt-BR"]);
        assert_eq!(
            (e.language_series, e.max_blocks_per_user, e.max_signal_broadcast_members),
            (7, 10, 4)
        );
        assert_eq!(
            (e.action_bytes_per_second, e.action_bytes_burst, e.max_public_rooms),
            (1000, 5000, 3)
        );
        let cli = Cli::try_parse_from(["rendezvous", "--languages", "fr,de"]).expect("parse");
        assert!(Config::load(cli).is_err(), "the default language `en` is not in the list");
    }

    #[test]
    fn unknown_keys_and_weak_secrets_are_refused() {
        let dir = std::env::temp_dir().join(format!("rdv-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("c.toml");
        std::fs::write(&path, "[engine]\nsend_brust = 7\n").expect("write");
        assert!(matches!(
            Config::load(Cli { config: Some(path), ..Cli::default() }),
            Err(ConfigError::Parse { .. })
        ));
        let cli = Cli { jwt_secret: Some("short".into()), ..Cli::default() };
        assert!(matches!(Config::load(cli), Err(ConfigError::WeakSecret)));
        let cli = Cli { jwt_secret: Some("x".repeat(31)), ..Cli::default() };
        assert!(matches!(Config::load(cli), Err(ConfigError::WeakSecret)));
        let cli = Cli { jwt_secret: Some("x".repeat(32)), ..Cli::default() };
        assert!(Config::load(cli).is_ok());
        let missing = Cli { jwt_public_key: Some("/nonexistent/key.pem".into()), ..Cli::default() };
        assert!(matches!(
            Config::load(missing),
            Err(ConfigError::PublicKey { source: KeyError::Read(_), .. })
        ));
    }

    #[test]
    fn anonymous_needs_loopback_or_an_explicit_allow() {
        let mut c = Config { bind: "0.0.0.0:8080".parse().expect("addr"), ..Config::default() };
        assert!(!c.anonymous_allowed());
        c.anonymous = AnonymousMode::Allow;
        assert!(c.anonymous_allowed());
        let c = Config {
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Config::default()
        };
        assert!(!c.anonymous_allowed(), "a secret turns auto off");
    }
}
