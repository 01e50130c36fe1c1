//! Which Redis a node talks to, read from `--redis-url`, and how each connection
//! finds it.
//!
//! * `redis://` and `rediss://`: one server, as the redis crate reads the URL.
//! * `redis+sentinel://[user:password@]host:port[,host:port…]/MASTER_NAME` (and
//!   `rediss+sentinel://`, TLS to the primary): a primary managed by Sentinel. The
//!   credentials are the primary's (and its replicas'); the sentinels are asked
//!   without. Every (re)connect asks the sentinels for the current primary, so a
//!   connection lost in a failover comes back on the promoted replica.
//! * `redis+cluster://[user:password@]host:port[,host:port…]` (and `rediss+cluster://`):
//!   Redis Cluster 7+. The hosts are seeds: the slot map is read from whichever
//!   answers and followed from then on (see `cluster.rs`).
//!
//! [`parse`] is pure: the configuration calls it to refuse a bad URL at startup.

use std::sync::Arc;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, ErrorKind, RedisConnectionInfo, RedisError, RedisResult, TlsMode};

/// Port of a sentinel named without one.
pub const SENTINEL_PORT: u16 = 26379;
/// Port of a cluster node named without one.
pub const CLUSTER_PORT: u16 = 6379;
/// Longest a lookup of the primary through the sentinels may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A `--redis-url`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// `redis://` or `rediss://` (or another form the redis crate reads itself).
    Direct(String),
    /// A primary found through Sentinel.
    Sentinel(SentinelUrl),
    /// Redis Cluster, found through its seed nodes.
    Cluster(ClusterUrl),
}

/// `redis+cluster://` / `rediss+cluster://`, read.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// TLS to every node (`rediss+cluster://`).
    pub tls: bool,
    /// `#insecure`: TLS without checking the certificate.
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The seed nodes, asked in this order for the slot map.
    pub seeds: Vec<(String, u16)>,
}

impl std::fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterUrl")
            .field("tls", &self.tls)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<masked>"))
            .field("seeds", &self.seeds)
            .finish()
    }
}

/// `redis+sentinel://` / `rediss+sentinel://`, read.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// TLS to the primary (`rediss+sentinel://`).
    pub tls: bool,
    /// `#insecure`: TLS without checking the certificate (as with `rediss://`).
    pub insecure: bool,
    /// The primary's user and password (the sentinels are asked without).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sentinels, asked in this order.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels know the primary by.
    pub master: String,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("tls", &self.tls)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<masked>"))
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .finish()
    }
}

/// Read a `--redis-url`. The error says what is wrong, for a startup message.
pub fn parse(url: &str) -> Result<RedisUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(RedisUrl::Direct(url.to_owned()));
    };
    let (tls, cluster) = match scheme.to_ascii_lowercase().as_str() {
        "redis+sentinel" => (false, false),
        "rediss+sentinel" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        _ => return Ok(RedisUrl::Direct(url.to_owned())),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let insecure = match fragment {
        None | Some("") => false,
        Some("insecure") if tls => true,
        Some(f) => return Err(format!("{scheme}:// URL: unknown fragment #{f}")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(format!("{scheme}:// URL: query parameters are not supported"));
    }
    if cluster {
        let usage = format!("expected {scheme}://[user:password@]host:port[,host:port...]");
        let authority = match rest.split_once('/') {
            Some((a, "")) => a,
            Some(_) => {
                return Err(format!("{scheme}:// URL: a cluster has no database or path: {usage}"))
            }
            None => rest,
        };
        let (username, password, seeds) = authority_parts(authority, CLUSTER_PORT)
            .map_err(|e| format!("{scheme}:// URL: {e}: {usage}"))?;
        if seeds.is_empty() {
            return Err(format!("{scheme}:// URL names no node: {usage}"));
        }
        return Ok(RedisUrl::Cluster(ClusterUrl { tls, insecure, username, password, seeds }));
    }
    let usage = format!("expected {scheme}://[user:password@]host:port[,host:port...]/MASTER_NAME");
    let Some((authority, path)) = rest.split_once('/') else {
        return Err(format!("{scheme}:// URL names no primary: {usage}"));
    };
    let master = decode(path.strip_suffix('/').unwrap_or(path))?;
    if master.is_empty() {
        return Err(format!("{scheme}:// URL names no primary: {usage}"));
    }
    if master.contains('/') {
        return Err(format!("{scheme}:// URL: the path must be the primary's name only: {usage}"));
    }
    let (username, password, sentinels) = authority_parts(authority, SENTINEL_PORT)
        .map_err(|e| format!("{scheme}:// URL: {e}: {usage}"))?;
    if sentinels.is_empty() {
        return Err(format!("{scheme}:// URL names no sentinel: {usage}"));
    }
    Ok(RedisUrl::Sentinel(SentinelUrl { tls, insecure, username, password, sentinels, master }))
}

/// The parts of `[user:password@]host:port[,host:port…]`: credentials
/// (percent-decoded) and the hosts, `default_port` where none is given.
#[allow(clippy::type_complexity)]
fn authority_parts(
    authority: &str,
    default_port: u16,
) -> Result<(Option<String>, Option<String>, Vec<(String, u16)>), String> {
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((u, p)) => (non_empty(decode(u)?), non_empty(decode(p)?)),
            None => (non_empty(decode(info)?), None),
        },
    };
    let mut out = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        out.push(host_port(host, default_port)?);
    }
    Ok((username, password, out))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("bad address {s:?}"));
        };
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("bad address {s:?}")),
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("bad address {s:?}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("bad port in {s:?}"))?,
    };
    Ok((host.to_owned(), port))
}

/// Percent-decoding of one URL part.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else { return Err("bad percent-encoding in the URL".into()) };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8".into())
}

/// Where a connection goes: one fixed server, or whichever the sentinels name as
/// the primary now (asked on every call of [`Target::client`]).
#[derive(Clone)]
pub enum Target {
    Direct(Box<redis::Client>),
    Sentinel {
        sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
        master: Arc<str>,
    },
    /// Redis Cluster: the bridge routes by slot (`cluster.rs`); [`Target::client`]
    /// answers with the first seed.
    Cluster(Arc<ClusterTarget>),
}

/// How to reach the nodes of a Redis Cluster.
pub struct ClusterTarget {
    pub url: ClusterUrl,
    pub tcp: redis::io::tcp::TcpSettings,
}

impl ClusterTarget {
    /// A client for the node at `host:port`, with the URL's credentials and TLS.
    pub fn node_client(&self, host: &str, port: u16) -> RedisResult<redis::Client> {
        redis::Client::open(self.node_info(host, port, false))
    }

    /// The connection info of one node; `resp3` for the push connections.
    pub fn node_info(&self, host: &str, port: u16, resp3: bool) -> redis::ConnectionInfo {
        let addr = if self.url.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: self.url.insecure,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut redis_info = RedisConnectionInfo::default();
        if let Some(u) = &self.url.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &self.url.password {
            redis_info = redis_info.set_password(p);
        }
        if resp3 {
            redis_info = redis_info.set_protocol(redis::ProtocolVersion::RESP3);
        }
        redis::IntoConnectionInfo::into_connection_info(addr)
            .unwrap_or_else(|_| unreachable!("an address is connection info"))
            .set_redis_settings(redis_info)
            .set_tcp_settings(self.tcp.clone())
    }
}

impl Target {
    /// Build the target of `url`; `tcp` applies to every connection to Redis.
    pub fn new(url: &str, tcp: redis::io::tcp::TcpSettings) -> Result<Target, String> {
        match parse(url)? {
            RedisUrl::Direct(url) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| format!("redis url: {e}"))?;
                let client = redis::Client::open(info.set_tcp_settings(tcp))
                    .map_err(|e| format!("redis url: {e}"))?;
                Ok(Target::Direct(Box::new(client)))
            }
            RedisUrl::Sentinel(s) => {
                let mut redis_info = RedisConnectionInfo::default();
                if let Some(u) = &s.username {
                    redis_info = redis_info.set_username(u);
                }
                if let Some(p) = &s.password {
                    redis_info = redis_info.set_password(p);
                }
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis_info)
                    .set_tcp_settings(tcp);
                if s.tls {
                    node = node.set_tls_mode(if s.insecure {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    });
                }
                let sentinels: Vec<ConnectionAddr> =
                    s.sentinels.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p)).collect();
                let client = SentinelClient::build(
                    sentinels,
                    s.master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| format!("redis sentinel url: {e}"))?;
                Ok(Target::Sentinel {
                    sentinel: Arc::new(tokio::sync::Mutex::new(client)),
                    master: s.master.into(),
                })
            }
            RedisUrl::Cluster(url) => Ok(Target::Cluster(Arc::new(ClusterTarget { url, tcp }))),
        }
    }

    /// A client for the server to talk to now: the fixed one, or the primary the
    /// sentinels name (checked to call itself primary).
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Target::Direct(c) => Ok((**c).clone()),
            Target::Cluster(c) => {
                let (host, port) = c.url.seeds.first().cloned().unwrap_or_default();
                c.node_client(&host, port)
            }
            Target::Sentinel { sentinel, master } => {
                let mut s = sentinel.lock().await;
                match tokio::time::timeout(LOOKUP_TIMEOUT, s.async_get_client()).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => Err(RedisError::from((
                        ErrorKind::Io,
                        "no primary from the sentinels",
                        format!("{master}: {e}"),
                    ))),
                    Err(_) => Err(RedisError::from((
                        ErrorKind::Io,
                        "no primary from the sentinels",
                        format!("{master}: the lookup timed out"),
                    ))),
                }
            }
        }
    }

    /// Whether this target is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// Whether this target follows a primary through Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }
}

/// `host:port` of a client's server, for logs.
pub fn addr_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => {
            format!("{h}:{p}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelUrl {
        match parse(url) {
            Ok(RedisUrl::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn plain_urls_are_left_to_the_redis_crate() {
        for url in ["redis://127.0.0.1:6379/0", "rediss://:pw@h:6380", "redis://h", "h:6379"] {
            assert_eq!(parse(url), Ok(RedisUrl::Direct(url.to_owned())));
        }
    }

    #[test]
    fn several_sentinels_and_a_master_name() {
        let s = sentinel("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-3/mymaster");
        assert!(!s.tls);
        assert_eq!(s.master, "mymaster");
        assert_eq!(
            s.sentinels,
            [
                ("10.0.0.1".to_owned(), 26379),
                ("10.0.0.2".to_owned(), 26380),
                ("sentinel-3".to_owned(), SENTINEL_PORT)
            ]
        );
        assert_eq!((s.username, s.password), (None, None));
        let s = sentinel("redis+sentinel://[::1]:26379,[fe80::1]/m/");
        assert_eq!(s.sentinels, [("::1".to_owned(), 26379), ("fe80::1".to_owned(), 26379)]);
        assert_eq!(s.master, "m");
    }

    #[test]
    fn credentials_are_the_primarys_and_percent_decoded() {
        let s = sentinel("rediss+sentinel://app:p%40ss:w@h1:1,h2:2/main");
        assert!(s.tls && !s.insecure);
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password.as_deref(), Some("p@ss:w"));
        let s = sentinel("redis+sentinel://:secret@h1:1/main");
        assert_eq!((s.username, s.password.as_deref()), (None, Some("secret")));
        assert!(!format!("{:?}", sentinel("redis+sentinel://:secret@h/m")).contains("secret"));
        assert!(sentinel("rediss+sentinel://h/m#insecure").insecure);
    }

    #[test]
    fn a_missing_master_name_or_sentinel_is_a_clear_error() {
        for url in [
            "redis+sentinel://h1:26379,h2:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:26379//",
        ] {
            let e = parse(url).expect_err(url);
            assert!(e.contains("names no primary") && e.contains("MASTER_NAME"), "{url}: {e}");
        }
        let e = parse("redis+sentinel://user:pw@/m").expect_err("no host");
        assert!(e.contains("names no sentinel"), "{e}");
        assert!(parse("redis+sentinel://h:0/m").expect_err("port 0").contains("port"));
        assert!(parse("redis+sentinel://h:x/m").expect_err("bad port").contains("port"));
        assert!(parse("redis+sentinel://h/m/1").is_err(), "a db is not part of the form");
        assert!(parse("redis+sentinel://h/m?db=1").is_err());
        assert!(parse("redis+sentinel://h/m#insecure").is_err(), "#insecure needs TLS");
    }

    #[test]
    fn cluster_urls_name_seed_nodes() {
        let Ok(RedisUrl::Cluster(c)) = parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,h3")
        else {
            panic!("not a cluster url")
        };
        assert!(!c.tls);
        assert_eq!(
            c.seeds,
            [
                ("10.0.0.1".to_owned(), 7000),
                ("10.0.0.2".to_owned(), 7001),
                ("h3".to_owned(), CLUSTER_PORT)
            ]
        );
        let Ok(RedisUrl::Cluster(c)) = parse("rediss+cluster://u:p%40w@h:7000/#insecure") else {
            panic!("not a cluster url")
        };
        assert!(c.tls && c.insecure);
        assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("u"), Some("p@w")));
        assert!(!format!("{c:?}").contains("p@w"), "the password is masked");
    }

    #[test]
    fn a_bad_cluster_url_is_a_clear_error() {
        assert!(parse("redis+cluster://").expect_err("no node").contains("names no node"));
        assert!(parse("redis+cluster://h:7000/0").expect_err("db").contains("no database"));
        assert!(parse("redis+cluster://h:x").expect_err("port").contains("port"));
        assert!(parse("redis+cluster://h:7000?x=1").is_err());
        assert!(parse("redis+cluster://h:7000#insecure").is_err(), "#insecure needs TLS");
    }

    #[test]
    fn a_target_is_built_without_connecting() {
        let tcp = redis::io::tcp::TcpSettings::default();
        let t = Target::new("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m", tcp.clone());
        assert!(t.is_ok_and(|t| t.is_sentinel()));
        let t = Target::new("redis://127.0.0.1:1", tcp.clone());
        assert!(t.is_ok_and(|t| !t.is_sentinel()));
        let t = Target::new("redis+cluster://127.0.0.1:1,127.0.0.1:2", tcp);
        assert!(t.is_ok_and(|t| t.is_cluster()));
    }
}
