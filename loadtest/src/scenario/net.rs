//! Opening sessions for a scenario: which node, from which local address, and
//! under which identity (`?user=` or a freshly minted JWT).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;

use crate::client::{self, Failure, Member, Ws};

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Everything needed to open a session; cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    sources: Vec<IpAddr>,
    key: Option<(EncodingKey, u64)>,
    /// Unique per run and worker, so users of concurrent runs never meet.
    pub tag: String,
    next_source: AtomicUsize,
    pub wait: Duration,
}

impl Dialer {
    pub fn new(
        urls: Vec<String>,
        sources: Vec<IpAddr>,
        secret: Option<(String, u64)>,
        tag: String,
        wait: Duration,
    ) -> Self {
        let key = secret.map(|(s, ttl)| (EncodingKey::from_secret(s.as_bytes()), ttl));
        Self {
            inner: Arc::new(Inner {
                urls,
                sources,
                key,
                tag,
                next_source: AtomicUsize::new(0),
                wait,
            }),
        }
    }

    pub fn wait(&self) -> Duration {
        self.inner.wait
    }

    /// A dialer for the same servers and identities under another run tag (a
    /// namespace of users and a language of its own), connecting from `sources`.
    pub fn variant(&self, tag: String, sources: Vec<IpAddr>) -> Self {
        Self {
            inner: Arc::new(Inner {
                urls: self.inner.urls.clone(),
                sources,
                key: self.inner.key.clone(),
                tag,
                next_source: AtomicUsize::new(0),
                wait: self.inner.wait,
            }),
        }
    }

    /// A language no other run or worker searches in, shaped like a BCP 47
    /// tag (a private-use primary subtag and the run tag in subtags of up to 8
    /// letters and digits), so an engine that checks the shape accepts it.
    pub fn language(&self) -> String {
        run_language(&self.inner.tag)
    }

    /// The run's unique user name for `id`.
    pub fn user(&self, id: &str) -> String {
        format!("{}-{id}", self.inner.tag)
    }

    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    /// Every server URL of the run.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// The endpoint user number `n` goes to (round robin).
    pub fn url(&self, n: usize) -> &str {
        &self.inner.urls[self.url_index(n)]
    }

    /// Which URL [`Self::url`] picks for connection `n`.
    pub fn url_index(&self, n: usize) -> usize {
        n % self.inner.urls.len()
    }

    fn target(&self, url: &str, user: &str) -> Result<String, Failure> {
        let Some((key, ttl)) = &self.inner.key else {
            return Ok(format!("{url}?user={user}"));
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims { sub: user, iat: now, exp: now + ttl };
        let token = encode(&Header::default(), &claims, key)
            .map_err(|e| Failure::Connect { url: url.to_owned(), error: format!("jwt: {e}") })?;
        Ok(format!("{url}?token={token}"))
    }

    /// Connect `user` to `url` (from the next source address, if any) and wait
    /// for `welcome`; returns the member and the rooms `welcome` listed.
    pub async fn open(&self, url: &str, user: String) -> Result<(Member, Vec<String>), Failure> {
        self.open_with(url, user, None).await
    }

    /// Like [`Dialer::open`], with a 4 KiB receive buffer: a client that stops
    /// reading backs up into the server quickly.
    pub async fn open_small_rcvbuf(
        &self,
        url: &str,
        user: String,
    ) -> Result<(Member, Vec<String>), Failure> {
        self.open_with(url, user, Some(4_096)).await
    }

    async fn open_with(
        &self,
        url: &str,
        user: String,
        rcvbuf: Option<u32>,
    ) -> Result<(Member, Vec<String>), Failure> {
        let target = self.target(url, &user)?;
        let mut ws = if self.inner.sources.is_empty() && rcvbuf.is_none() {
            client::connect_to(&target).await?
        } else {
            let source = if self.inner.sources.is_empty() {
                None
            } else {
                let i = self.inner.next_source.fetch_add(1, Ordering::Relaxed);
                Some(self.inner.sources[i % self.inner.sources.len()])
            };
            connect_from(&target, source, rcvbuf).await?
        };
        let welcome = client::until(&mut ws, &user, "welcome", self.inner.wait).await?;
        let rooms = match welcome {
            rendezvous_protocol::ServerFrame::Welcome { rooms, .. } => rooms,
            _ => Vec::new(),
        };
        crate::scenario::progress::opened();
        Ok((Member { user, ws, _open: crate::telemetry::OpenSocket::new() }, rooms))
    }
}

/// `qaa-` (private use) and the tag's letters and digits in subtags of 8 at most.
fn run_language(tag: &str) -> String {
    let clean: Vec<char> = tag.chars().filter(char::is_ascii_alphanumeric).collect();
    let mut out = String::from("qaa");
    for chunk in clean.chunks(8) {
        out.push('-');
        out.extend(chunk.iter().map(char::to_ascii_lowercase));
    }
    out
}

/// Plain `ws://`, from a chosen local address and with a chosen receive buffer.
async fn connect_from(
    target: &str,
    source: Option<IpAddr>,
    rcvbuf: Option<u32>,
) -> Result<Ws, Failure> {
    let fail = |error: String| {
        crate::telemetry::error("connect");
        Failure::Connect { url: target.to_owned(), error }
    };
    let rest = target
        .strip_prefix("ws://")
        .ok_or_else(|| fail("source_addrs work with ws:// only".into()))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| fail(format!("resolve {authority}: {e}")))?
        .find(|a| source.is_none_or(|s| a.is_ipv4() == s.is_ipv4()))
        .ok_or_else(|| fail(format!("{authority} has no address of {source:?}'s family")))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| fail(format!("socket: {e}")))?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| fail(format!("bind {source}: {e}")))?;
    }
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).map_err(|e| fail(format!("rcvbuf: {e}")))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| fail(format!("connect {addr}: {e}")))?;
    stream.set_nodelay(true).map_err(|e| fail(format!("nodelay: {e}")))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        target,
        MaybeTlsStream::Plain(stream),
        Some(crate::client::ws_config()),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_languages_look_like_language_tags() {
        assert_eq!(run_language("lt1234567w0"), "qaa-lt123456-7w0");
        assert_eq!(run_language("lt12w0"), "qaa-lt12w0");
        assert_eq!(run_language("LT-9"), "qaa-lt9");
        let tag = run_language("lt4194304w63ac");
        assert!(tag.split('-').skip(1).all(|s| (1..=8).contains(&s.len())), "{tag}");
    }
}
