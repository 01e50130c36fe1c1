//! Configuration of the `rendezvous` binary. Every setting is declared once, as a
//! field of [`Config`] (front door, authentication, logs) or of [`EngineConfig`]
//! (the `[engine]` table): its doc comment is the `--help` text, its
//! `default_value` the default, and its name gives the flag (`--kebab-name`), the
//! TOML key and the environment variable (`RENDEZVOUS_UPPER_NAME`, added to every
//! flag by [`command`]).
//!
//! Precedence: flags, then environment variables, then the TOML file
//! (`--config FILE`), then the declared defaults. `--print-config` prints the result
//! as TOML that `--config` reads back, secrets masked.
//!
//! TOML layout (every key optional):
//! ```toml
//! bind = "127.0.0.1:8080"
//! trusted_proxies = ["127.0.0.1/32"]   # may set the client address (X-Forwarded-For)
//! handshake_timeout_ms = 10000
//! node_id = "node-a"                   # or under [engine]; this one wins
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

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use ipnet::IpNet;
use rendezvous_actors::config::declared_defaults;
use rendezvous_actors::EngineConfig;
use serde::{Deserialize, Serialize};

use crate::front::parse_proxy;
use crate::public_key::PublicKey;

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: a key of at least the
/// hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Longest `redis_ack_timeout_ms`: the command pipe to Redis stalls while it waits.
pub const MAX_ACK_TIMEOUT_MS: u64 = 10_000;

/// Longest `redis_linger_ms`: every Redis call may wait this long.
pub const MAX_LINGER_MS: u64 = 50;

/// Smallest `max_header_bytes`: hyper's smallest read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Every flag `--x-y` can also come from the environment variable `RENDEZVOUS_X_Y`.
pub const ENV_PREFIX: &str = "RENDEZVOUS_";

/// What `--print-config` writes in place of a secret. Read back from a file, it is
/// refused unless the environment or a flag supplies the real value.
pub const MASKED: &str = "<masked>";

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

/// Command line: every setting, plus what only the command line says.
#[derive(Debug, Parser)]
#[command(
    name = "rendezvous",
    version,
    about = "Real-time stranger matching and chat over WebSocket.\n\nWith no options it serves the embedded single-node engine on 127.0.0.1:8080.\nEvery option can also come from the environment variable shown, and every setting from the --config file."
)]
pub struct Cli {
    /// TOML file with any of these settings (flags and environment win over it)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (defaults, file, environment, flags) as TOML that --config reads back, secrets masked, and exit
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: Config,
}

/// Settings of one server: the declaration of every setting outside the engine,
/// and the resolved, validated values.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to serve HTTP and WebSocket (`/ws`) on
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Redis URL to join a cluster of nodes: `redis://[:password@]host:port/db`, `rediss://` (TLS), `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`) for a Redis Cluster from its seed nodes, or `redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME` (`rediss+sentinel://`: TLS to the primary) to follow a Sentinel-managed primary across failovers; none = single node
    #[arg(long, value_name = "URL", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Replicas that must confirm a chat message (Redis `WAIT`) before it is acknowledged; unset = 1 when the primary reports connected replicas, else 0. Too few in time: the sender gets `unavailable` and resends
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ack_replicas: Option<u32>,
    /// How long a send waits for --redis-ack-replicas replicas (ms) before it is answered `unavailable`
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub redis_ack_timeout_ms: u64,
    /// Under load, chat sends wait up to this many ms to share one Redis pipeline (per primary): less Redis CPU per message for up to this much more latency per cross-node message. Any other Redis call, and a node idle for longer, sends at once. 0 = every send goes at once; the default 5 ms halves Redis CPU per message against 0 for about 3 ms more median and 5 ms more p99 at 5,000 cross-node messages/s (BENCHMARKS.md)
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub redis_linger_ms: u64,
    /// HS256 secret for client JWTs (claim `sub` = user id), at least 32 bytes; enables token auth
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// PEM public key for client JWTs: an RSA key verifies RS256 tokens, an EC P-256 key ES256; enables token auth
    ///
    /// Read and checked when the configuration loads.
    #[arg(long, value_name = "FILE", value_parser = load_public_key)]
    #[serde(with = "public_key_path", skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PublicKey>,
    /// Audience tokens must name in `aud`; unset = tokens with an `aud` are refused
    #[arg(long, value_name = "AUD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Issuer tokens must name in `iss`; unset = any issuer
    #[arg(long, value_name = "ISS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Accept connections without a token (`?user=NAME`): auto = only direct (not proxied) requests on a loopback bind without token verification; with tokens also on, anonymous ids start with `~`
    #[arg(long, value_enum, default_value_t = AnonymousMode::Auto)]
    pub anonymous: AnonymousMode,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Comma-separated reverse proxies (CIDR or address, e.g. 10.0.0.0/8,::1) whose `Forwarded` / `X-Forwarded-For` name the client address; unset = nobody's
    ///
    /// That address is what per-IP limits and logs use; anyone else's such headers
    /// are ignored.
    #[arg(
        long,
        value_parser = parse_proxies,
        default_value = "",
        hide_default_value = true,
        value_name = "CIDR,..."
    )]
    #[serde(with = "proxy_list")]
    pub trusted_proxies: ::std::vec::Vec<IpNet>,
    /// A new connection must complete its request headers within this many ms, else it is closed
    ///
    /// A socket that sends nothing (or half a request) would otherwise hold a file
    /// descriptor forever.
    #[arg(long, default_value_t = 10_000, help_heading = "Limits")]
    pub handshake_timeout_ms: u64,
    /// A keep-alive HTTP connection idle this many ms after a response is closed
    #[arg(long, default_value_t = 30_000, help_heading = "Limits")]
    pub http_idle_timeout_ms: u64,
    /// Most connections not yet upgraded to a WebSocket (0 = 4096), and never more than the open-file limit leaves beside the open sessions; when full, the oldest stalled one gives way or a new one is closed at once
    ///
    /// A reserve of 64 descriptors stays free, so sessions plus pending connections
    /// never run the node out of descriptors.
    #[arg(long, default_value_t = 0, help_heading = "Limits")]
    pub max_pending_connections: usize,
    /// Most connections not yet upgraded from one client address (trusted proxies exempt); more are closed at once; 0 = no limit
    ///
    /// High enough for load tests at 6,000 handshakes/s from one address.
    #[arg(long, default_value_t = 512, help_heading = "Limits")]
    pub max_pending_per_ip: usize,
    /// Largest request head (request line and headers) in bytes, at least 8192; larger gets HTTP 431
    ///
    /// Bounds what a slow sender can pin per pending connection (hyper's own default
    /// is about 400 KiB); a browser's upgrade with cookies and a token is a few KiB.
    #[arg(long, default_value_t = 64 * 1024, help_heading = "Limits")]
    pub max_header_bytes: usize,
    /// Comma-separated Origins allowed to open /ws (e.g. https://chat.example.com); unset = any
    ///
    /// Requests without `Origin` (non-browser clients) are not affected.
    #[arg(long, value_delimiter = ',', value_name = "ORIGINS", help_heading = "Limits")]
    pub allowed_origins: Vec<String>,
    /// Address and port of the admin API, the admin page and `/metrics` for operators; served only when --admin-token is set
    #[arg(
        long,
        default_value = "127.0.0.1:9090",
        value_name = "ADDR:PORT",
        help_heading = "Admin"
    )]
    pub admin_bind: SocketAddr,
    /// Token operators send as `Authorization: Bearer TOKEN` to the admin API (at least 16 bytes); unset = no admin listener
    #[arg(long, value_name = "TOKEN", hide_env_values = true, help_heading = "Admin")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Serve `/metrics` and `/api/stats` on the public port too (`--public-metrics=false` keeps them for the admin address)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", help_heading = "Admin")]
    pub public_metrics: bool,
    #[command(flatten)]
    pub engine: EngineConfig,
}

impl Default for Config {
    /// The declared defaults (no file, no environment, no flags), read once per
    /// process.
    fn default() -> Self {
        static DEFAULTS: OnceLock<Config> = OnceLock::new();
        DEFAULTS.get_or_init(declared_defaults).clone()
    }
}

/// The command line of the binary: [`Cli`] with an environment variable named
/// after each setting's flag.
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "print_config") {
            return arg;
        }
        let env = format!("{ENV_PREFIX}{}", id.to_uppercase());
        arg.env(env)
    })
}

/// A loaded configuration and what the command line asked to do with it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `--print-config`: print [`Config::to_toml_masked`] and exit.
    pub print_config: bool,
}

/// Parse a PEM public key file given as a flag or environment variable.
fn load_public_key(path: &str) -> Result<PublicKey, String> {
    let path = Path::new(path);
    PublicKey::from_file(path).map_err(|e| format!("jwt_public_key {}: {e}", path.display()))
}

/// Parse a comma-separated list of proxies; empty entries are ignored.
fn parse_proxies(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(parse_proxy).collect()
}

/// `trusted_proxies` in TOML: a list of CIDR or address strings.
mod proxy_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_proxy(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `jwt_public_key` in TOML: the path of the PEM file, read when the file loads.
mod public_key_path {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &Option<PublicKey>, s: S) -> Result<S::Ok, S::Error> {
        key.as_ref().map(|k| &k.path).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PublicKey>, D::Error> {
        let path = Option::<PathBuf>::deserialize(d)?;
        path.map(|p| load_public_key(&p.to_string_lossy()))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag or environment value, or `--help` / `--version` (clap prints
    /// and exits).
    #[error(transparent)]
    Cli(#[from] clap::Error),
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
    #[error("admin_token must be at least {MIN_ADMIN_TOKEN_BYTES} bytes; generate one with `openssl rand -base64 32`")]
    WeakAdminToken,
    #[error("jwt_secret must be at least {MIN_SECRET_BYTES} bytes (HS256); generate one with `openssl rand -base64 48`")]
    WeakSecret,
    #[error("redis_url: {0}")]
    RedisUrl(String),
    #[error("redis_linger_ms must be at most {MAX_LINGER_MS}")]
    Linger,
    #[error("redis_ack_timeout_ms must be between 1 and {MAX_ACK_TIMEOUT_MS}")]
    AckTimeout,
    /// A secret still reads `<masked>` (a `--print-config` output used as the file).
    #[error("{0} is {MASKED} (printed by --print-config): give the real value with --{1} or {ENV_PREFIX}{2}")]
    Masked(&'static str, &'static str, &'static str),
}

impl Config {
    /// Load from the process's command line and environment.
    pub fn load() -> Result<Loaded, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Load from `args` (the first is the program name) and the environment:
    /// flags, then environment variables, then the `--config` file, then the
    /// declared defaults; then validate.
    pub fn load_from<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut matches = command().try_get_matches_from(args)?;
        let print_config = matches.get_flag("print_config");
        let mut config = match matches.get_one::<PathBuf>("config") {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        // Let flags and environment override the file, but not clap's copy of the
        // declared defaults: forget every value that came from a default.
        let ids: Vec<String> = matches.ids().map(|id| id.as_str().to_owned()).collect();
        for id in ids {
            if matches.value_source(&id) == Some(ValueSource::DefaultValue) {
                let _ = matches.try_clear_id(&id);
            }
        }
        config.update_from_arg_matches(&matches)?;
        for empty_is_unset in [
            &mut config.redis_url,
            &mut config.jwt_secret,
            &mut config.jwt_audience,
            &mut config.jwt_issuer,
            &mut config.admin_token,
        ] {
            if empty_is_unset.as_deref() == Some("") {
                *empty_is_unset = None;
            }
        }
        config.validate()?;
        Ok(Loaded { config, print_config })
    }

    /// Read a TOML file (see the module documentation for its layout).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// Parse TOML settings over the defaults (not validated).
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        let mut table: toml::Table = text.parse()?;
        // `node_id` may stand at the top level too, and wins over `[engine]`.
        if let Some(id) = table.remove("node_id") {
            let engine =
                table.entry("engine").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(engine) = engine.as_table_mut() {
                engine.insert("node_id".into(), id);
            }
        }
        table.try_into()
    }

    /// The settings as TOML that `--config` reads back, with the JWT secret and the
    /// password in the Redis URL replaced by [`MASKED`].
    pub fn to_toml_masked(&self) -> String {
        let mut c = self.clone();
        if c.jwt_secret.is_some() {
            c.jwt_secret = Some(MASKED.into());
        }
        if c.admin_token.is_some() {
            c.admin_token = Some(MASKED.into());
        }
        if c.engine.turn_secret.is_some() {
            c.engine.turn_secret = Some(MASKED.into());
        }
        c.redis_url = c.redis_url.as_deref().map(mask_url_password);
        let body = toml::to_string(&c).unwrap_or_else(|e| format!("# not printable: {e}\n"));
        format!(
            "# rendezvous --print-config: effective settings (defaults, file, environment, flags).\n\
             # Secrets read {MASKED}; to use this file, give them through the environment.\n{body}"
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.as_deref() == Some(MASKED) {
            return Err(ConfigError::Masked("jwt_secret", "jwt-secret", "JWT_SECRET"));
        }
        if self.admin_token.as_deref() == Some(MASKED) {
            return Err(ConfigError::Masked("admin_token", "admin-token", "ADMIN_TOKEN"));
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < MIN_ADMIN_TOKEN_BYTES) {
            return Err(ConfigError::WeakAdminToken);
        }
        if self.engine.turn_secret.as_deref() == Some(MASKED) {
            return Err(ConfigError::Masked("turn_secret", "turn-secret", "TURN_SECRET"));
        }
        if self.redis_url.as_deref().is_some_and(|u| u.contains(MASKED)) {
            return Err(ConfigError::Masked("redis_url", "redis-url", "REDIS_URL"));
        }
        if let Some(url) = &self.redis_url {
            rendezvous_actors::bridge::redis::target::parse(url).map_err(ConfigError::RedisUrl)?;
        }
        if self.redis_ack_timeout_ms == 0 || self.redis_ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            return Err(ConfigError::AckTimeout);
        }
        if self.redis_linger_ms > MAX_LINGER_MS {
            return Err(ConfigError::Linger);
        }
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

/// `redis://user:secret@host/0` → `redis://user:<masked>@host/0`, and the same
/// for `redis+sentinel://user:secret@h1:26379,h2:26379/main`; a URL without a
/// password is returned as it is.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let Some(colon) = rest[..at].find(':') else { return url.to_owned() };
    format!("{scheme}://{}{MASKED}{}", &rest[..=colon], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("rendezvous").chain(args.iter().copied()))
            .map(|l| l.config)
    }

    /// `load` of a command line written as one string (no value has a space).
    fn load_line(line: &str) -> Result<Config, ConfigError> {
        load(&line.split_whitespace().collect::<Vec<_>>())
    }

    #[test]
    fn admin_flags_parse_and_the_token_is_masked() {
        let c = load(&[]).expect("defaults");
        assert!(c.public_metrics && c.admin_token.is_none());
        assert_eq!(c.admin_bind.to_string(), "127.0.0.1:9090");
        let c = load(&["--public-metrics=false", "--admin-token", "0123456789abcdef0123"])
            .expect("flags");
        assert!(!c.public_metrics);
        let printed = c.to_toml_masked();
        assert!(!printed.contains("0123456789abcdef0123") && printed.contains(MASKED), "{printed}");
        assert!(matches!(load(&["--admin-token", "short"]), Err(ConfigError::WeakAdminToken)));
        let c = load(&["--moderation-state-file", "/tmp/m.json", "--reports-per-hour", "3"])
            .expect("moderation flags");
        assert_eq!(c.engine.reports_per_hour, 3);
        assert!(c.engine.moderation_state_file.is_some());
    }

    #[test]
    fn no_options_means_embedded_single_node_on_loopback_8080() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.bind, "127.0.0.1:8080".parse().expect("addr"));
        assert!(c.redis_url.is_none());
        assert!(c.anonymous_allowed());
        assert_eq!((c.handshake_timeout_ms, c.http_idle_timeout_ms), (10_000, 30_000));
        assert_eq!((c.max_pending_connections, c.max_pending_per_ip), (0, 512));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.engine.node_id, "node-1");
        assert!(c.engine.ladder.is_empty(), "the wait-target policy by default");
        assert_eq!(c.engine.max_wait_target_ms, 3_000);
    }

    #[test]
    fn every_flag_has_its_environment_variable_and_toml_key() {
        let cmd = command();
        let toml = Config::default().to_toml_masked();
        let mut settings = 0;
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "print_config") {
                continue;
            }
            settings += 1;
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env, Some(format!("RENDEZVOUS_{}", id.to_uppercase())), "{id}");
            // Everything with a default is printed under its key (the rest are unset).
            let key = if id == "ladder" { "[[engine.ladder]]".into() } else { format!("{id} = ") };
            if !arg.get_default_values().is_empty() {
                assert!(toml.contains(&format!("\n{key}")), "{id} not printed:\n{toml}");
            }
        }
        assert!(settings > 60, "{settings}");
    }

    #[test]
    fn the_file_fills_in_what_flags_do_not_set() {
        let toml =
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\", \"\"]\nhandshake_timeout_ms = 2000\n\
                    node_id = \"top\"\n[engine]\nnode_id = \"inner\"\nsend_burst = 7\n";
        let c = Config::from_toml(toml).expect("valid");
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
        assert_eq!(c.handshake_timeout_ms, 2000);
        assert_eq!(c.engine.node_id, "top", "the top-level node_id wins");
        assert_eq!(c.engine.send_burst, 7);
        assert_eq!(c.engine.history_len, 1_000, "unset keys keep their defaults");
        assert!(Config::from_toml("trusted_proxies = [\"10.0.0.0/99\"]").is_err());
        assert!(Config::from_toml("[engine]\nsend_brust = 7\n").is_err(), "unknown key");
        assert!(Config::from_toml("bnid = \"127.0.0.1:1\"\n").is_err(), "unknown key");
    }

    #[test]
    fn front_door_flags_are_checked() {
        let c = load(&["--trusted-proxies", "10.0.0.0/8,,::1", "--http-idle-timeout-ms", "700"])
            .expect("valid");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.http_idle_timeout_ms, 700);
        assert!(load(&["--trusted-proxies", ""]).expect("empty").trusted_proxies.is_empty());
        assert!(matches!(load(&["--trusted-proxies", "10.0.0.0/99"]), Err(ConfigError::Cli(_))));
        assert!(matches!(load(&["--handshake-timeout-ms", "0"]), Err(ConfigError::ZeroTimeout(_))));
        assert!(load(&["--redis-url", ""]).expect("empty is unset").redis_url.is_none());
    }

    #[test]
    fn ladder_flag_parses() {
        let c = load(&["--ladder", "0:same:2, 1500:any:0"]).expect("valid");
        let l = &c.engine.ladder;
        assert_eq!(l.len(), 2);
        assert!(l[0].same_region && l[0].min_shared == 2);
        assert_eq!(l[1].after_ms, 1500);
        assert!(load(&["--ladder", "0:near:2"]).is_err());
        assert!(load(&["--ladder", "0:same"]).is_err());
        assert!(matches!(load(&["--ladder", "0:same:2,0:any:0"]), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn bounds_flags_reach_the_engine() {
        let e = load_line(
            "--languages en,fr,pt-BR --language-series 7 --max-blocks-per-user 10 \
             --action-bytes-per-second 1000 --action-bytes-burst 5000 \
             --max-signal-broadcast-members 4 --max-public-rooms 3",
        )
        .expect("valid")
        .engine;
        assert_eq!(e.languages, ["en", "fr", "pt-BR"]);
        assert_eq!(
            (e.language_series, e.max_blocks_per_user, e.max_signal_broadcast_members),
            (7, 10, 4)
        );
        assert_eq!(
            (e.action_bytes_per_second, e.action_bytes_burst, e.max_public_rooms),
            (1000, 5000, 3)
        );
        assert!(load(&["--languages", "fr,de"]).is_err(), "the default `en` is not in the list");
        let e = load_line("--language-parts en=4,pt-BR=2").expect("valid").engine;
        assert_eq!((e.parts_of("en"), e.parts_of("pt-br"), e.parts_of("fr")), (4, 2, 1));
        for bad in ["en", "en=0", "en=65", "english=2", "en=2,en=3"] {
            assert!(load(&["--language-parts", bad]).is_err(), "--language-parts {bad}");
        }
    }

    #[test]
    fn the_settings_that_had_no_flag_have_one() {
        let e = load_line(
            "--heartbeat-interval-ms 1000 --client-timeout-ms 3000 \
             --empty-room-grace-ms 50 --history-limit-max 9 --max-interests 3 \
             --max-interest-chars 8 --max-signal-bytes 100 --max-name-chars 12",
        )
        .expect("valid")
        .engine;
        assert_eq!(
            (e.heartbeat_interval_ms, e.client_timeout_ms, e.empty_room_grace_ms),
            (1000, 3000, 50)
        );
        assert_eq!(e.history_limit_max, 9);
        assert_eq!((e.max_interests, e.max_interest_chars), (3, 8));
        assert_eq!((e.max_signal_bytes, e.max_name_chars), (100, 12));
        assert!(load(&["--client-timeout-ms", "20000"]).is_err(), "not above the heartbeat");
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let c = load_line(
            "--node-id n-7 --trusted-proxies 10.0.0.0/8 --languages en,fr --ladder \
             0:same:1,500:any:0 --log-format json --max-interests 4 --jwt-audience \
             chat",
        )
        .expect("valid");
        let printed = c.to_toml_masked();
        let again = Config::from_toml(&printed).expect("reads back");
        again.validate().expect("valid");
        assert_eq!(again.to_toml_masked(), printed);
        assert_eq!(again.engine.ladder, c.engine.ladder);
        assert_eq!(again.log_format, LogFormat::Json);
    }

    #[test]
    fn secrets_are_masked_and_a_masked_secret_is_refused() {
        let secret = "0123456789abcdef0123456789abcdef-secret";
        let c = load(&["--jwt-secret", secret, "--redis-url", "redis://u:hunter2@db:6379/0"])
            .expect("valid");
        let printed = c.to_toml_masked();
        assert!(!printed.contains(secret) && !printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redis://u:<masked>@db:6379/0"), "{printed}");
        let back = Config::from_toml(&printed).expect("parses");
        assert!(matches!(back.validate(), Err(ConfigError::Masked("jwt_secret", ..))));
        assert_eq!(mask_url_password("redis://db:6379"), "redis://db:6379");
        assert_eq!(mask_url_password("rediss://:p@ss@db/1"), "rediss://:<masked>@db/1");
        assert_eq!(mask_url_password("redis://user@db"), "redis://user@db");
        let sentinel = "redis+sentinel://app:hunter2@s1:26379,s2:26379,s3:26379/main";
        let masked = "redis+sentinel://app:<masked>@s1:26379,s2:26379,s3:26379/main";
        assert_eq!(mask_url_password(sentinel), masked);
        assert_eq!(
            mask_url_password("rediss+sentinel://:p@w@s1,s2/main#insecure"),
            "rediss+sentinel://:<masked>@s1,s2/main#insecure"
        );
        let printed = load(&["--redis-url", sentinel]).expect("valid").to_toml_masked();
        assert!(!printed.contains("hunter2") && printed.contains(masked), "{printed}");
        assert_eq!(
            crate::server::redacted(sentinel),
            "redis+sentinel://***@s1:26379,s2:26379,s3:26379/main"
        );
    }

    #[test]
    fn sentinel_urls_and_the_replica_ack_flags() {
        let c = load(&["--redis-url", "redis+sentinel://s1:26379,s2:26380/main"]).expect("valid");
        assert_eq!(c.redis_ack_replicas, None, "unset: decided from the primary's replicas");
        assert_eq!(c.redis_ack_timeout_ms, 500);
        let c = load_line("--redis-ack-replicas 2 --redis-ack-timeout-ms 800").expect("valid");
        assert_eq!((c.redis_ack_replicas, c.redis_ack_timeout_ms), (Some(2), 800));
        assert!(matches!(load_line("--redis-ack-timeout-ms 0"), Err(ConfigError::AckTimeout)));
        assert_eq!(c.redis_linger_ms, 5, "a busy node gathers for 5 ms unless told");
        assert_eq!(load_line("--redis-linger-ms 0").expect("valid").redis_linger_ms, 0);
        assert!(matches!(load_line("--redis-linger-ms 51"), Err(ConfigError::Linger)));
        let err =
            load(&["--redis-url", "redis+sentinel://s1:26379,s2:26379"]).expect_err("no name");
        assert!(err.to_string().contains("MASTER_NAME"), "{err}");
        assert!(load(&["--redis-url", "redis+cluster://c1:7000,c2:7000"]).is_ok());
        let err = load(&["--redis-url", "redis+cluster://c1:7000/1"]).expect_err("cluster db");
        assert!(err.to_string().contains("no database"), "{err}");
        // Plain URLs are left as they were.
        assert!(load(&["--redis-url", "rediss://:pw@db:6380/0"]).is_ok());
    }

    #[test]
    fn weak_secrets_and_unreadable_keys_are_refused() {
        assert!(matches!(load(&["--jwt-secret", "short"]), Err(ConfigError::WeakSecret)));
        assert!(matches!(load(&["--jwt-secret", &"x".repeat(31)]), Err(ConfigError::WeakSecret)));
        assert!(load(&["--jwt-secret", &"x".repeat(32)]).is_ok());
        let err = load(&["--jwt-public-key", "/nonexistent/key.pem"]).expect_err("missing key");
        assert!(err.to_string().contains("jwt_public_key"), "{err}");
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
