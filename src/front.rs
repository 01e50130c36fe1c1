//! Admission at the front door, before a connection becomes a session: which
//! accepted sockets are let in ([`Admission`], caps on connections not yet upgraded
//! to a WebSocket, in total and per client address), how long one may take
//! ([`ConnClock`], the handshake and keep-alive idle deadlines), and who the client
//! is behind a trusted reverse proxy ([`client_ip`], `Forwarded` / `X-Forwarded-For`).
//!
//! Pure rules live here with their unit tests; `server.rs` asks [`Admission`] at
//! accept time and `http.rs` drives the clock and the header parsing. Session limits
//! (`max_sessions`, `max_sessions_per_ip`) are not here: they are checked at the
//! upgrade, on the address this module resolves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;
use rendezvous_actors::metrics as m;
use tokio::time::Instant;

// ---------------------------------------------------------------- trusted proxies

/// Parse one `--trusted-proxies` entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare
/// address (one host: `/32` or `/128`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("`{s}` is neither a CIDR (10.0.0.0/8) nor an IP address"))
}

/// The reverse proxies whose forwarding headers are believed. Empty = nobody's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the proxies (an IPv4-mapped IPv6 address counts as
    /// its IPv4 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address for a request that came in over a TCP connection from
/// `peer`. Only a trusted proxy may name another one: through `Forwarded`
/// (RFC 7239, its `for=` parameters) or `X-Forwarded-For`, read from the right (the
/// entry the nearest proxy appended), skipping entries that are trusted proxies
/// themselves; the first other entry is the client. Anything malformed in the
/// entries read (or an `unknown` / obfuscated node) falls back to `peer`, as does a
/// request carrying both headers when they disagree: one of them came from the
/// client, and which one cannot be told.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let forwarded = joined(headers, FORWARDED.as_str()).map(|v| from_forwarded(&v, trusted));
    let xff = joined(headers, "x-forwarded-for").map(|v| from_x_forwarded_for(&v, trusted));
    match (forwarded, xff) {
        (None, None) => peer,
        (Some(one), None) | (None, Some(one)) => one.unwrap_or(peer),
        (Some(Some(a)), Some(Some(b))) if a == b => a,
        (Some(_), Some(_)) => peer,
    }
}

/// Every line of header `name`, joined with commas (a list split over several
/// lines is one list); None when absent, or when a line is not visible ASCII (then
/// the whole header is malformed, which the callers treat as `Some("")`).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for v in values {
        let Ok(v) = v.to_str() else { return Some(String::new()) };
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(v);
    }
    Some(out)
}

/// The client in an `X-Forwarded-For` list; None if malformed.
fn from_x_forwarded_for(list: &str, trusted: &TrustedProxies) -> Option<IpAddr> {
    rightmost_untrusted(list.split(',').map(|e| parse_node(e.trim())), trusted)
}

/// The client in a `Forwarded` header; None if malformed, or if an element read
/// has no `for=`.
fn from_forwarded(value: &str, trusted: &TrustedProxies) -> Option<IpAddr> {
    let elements = split_quoted(value, ',');
    let nodes = elements.iter().map(|element| {
        let mut node = None;
        for pair in split_quoted(element, ';') {
            let (name, v) = pair.split_once('=')?;
            if name.trim().eq_ignore_ascii_case("for") {
                node = parse_node(&unquote(v.trim())?);
            }
        }
        node
    });
    rightmost_untrusted(nodes, trusted)
}

/// Walk the entries from the right: skip trusted proxies, return the first other
/// address. A malformed entry met on the way ends the walk with None. If every
/// entry is a trusted proxy, the left-most one is the client.
fn rightmost_untrusted(
    entries: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let mut leftmost = None;
    for entry in entries.rev() {
        let ip = entry?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`
/// or a bare IPv6 address. `unknown`, obfuscated names (`_hidden`) and anything else
/// are None.
fn parse_node(s: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = s.rsplit_once(':')?;
        if !valid_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

/// A port number (RFC 7239 also allows obfuscated `_port` names; we ignore ports).
fn valid_port(p: &str) -> bool {
    p.parse::<u16>().is_ok() || (p.starts_with('_') && p.len() > 1)
}

/// Split on `sep` outside double quotes (a backslash escapes inside them).
fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A token as is, or a quoted-string without its quotes and escapes; None when a
/// quote is unbalanced.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return (!v.contains('"')).then(|| v.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- pending caps

/// The cap on pending connections in force: `configured`, or (0 = auto) what the
/// open-file limit leaves beside the session cap and a reserve for the node's own
/// files (listener, Redis, logs), at most 1,024 and at least 16.
pub fn pending_cap(configured: usize, open_file_limit: u64, session_cap: usize) -> usize {
    /// Descriptors kept for the node itself.
    const RESERVE: usize = 64;
    if configured > 0 {
        return configured;
    }
    let files = usize::try_from(open_file_limit).unwrap_or(usize::MAX);
    files.saturating_sub(session_cap.saturating_add(RESERVE)).clamp(16, 1024)
}

/// Why an accepted socket was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node already holds its cap of pending connections.
    Total,
    /// The client's address already holds its cap.
    PerIp,
}

impl Refusal {
    /// The `reason` label of `rendezvous_connections_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "pending_total",
            Refusal::PerIp => "pending_per_ip",
        }
    }
}

/// Counts of pending connections against their caps (no I/O, no clock).
#[derive(Debug)]
pub struct PendingCounts {
    total_cap: usize,
    /// 0 = no per-address cap.
    per_ip_cap: usize,
    total: usize,
    /// Only addresses with at least one pending connection: at most `total_cap` entries.
    per_ip: HashMap<IpAddr, usize>,
}

impl PendingCounts {
    pub fn new(total_cap: usize, per_ip_cap: usize) -> Self {
        Self { total_cap, per_ip_cap, total: 0, per_ip: HashMap::new() }
    }

    /// Count one more from `ip`, or say which cap it would pass. `exempt` addresses
    /// (trusted proxies: all their clients share them) meet only the total cap.
    pub fn try_admit(&mut self, ip: IpAddr, exempt: bool) -> Result<(), Refusal> {
        if self.total >= self.total_cap {
            return Err(Refusal::Total);
        }
        let n = self.per_ip.get(&ip).copied().unwrap_or(0);
        if !exempt && self.per_ip_cap > 0 && n >= self.per_ip_cap {
            return Err(Refusal::PerIp);
        }
        self.total += 1;
        self.per_ip.insert(ip, n + 1);
        Ok(())
    }

    /// One pending connection from `ip` ended (upgraded or closed).
    pub fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn of(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// The node's door: pending counts, the trusted proxies and the deadlines, shared
/// by the accept loop (admits) and the connection tasks on the workers (release).
pub struct Admission {
    /// A plain mutex: held for a hash-map update, never across an `.await`; the
    /// accept loop and the workers' releases are the only users.
    counts: Mutex<PendingCounts>,
    pub trusted: TrustedProxies,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Largest request head, in bytes (`Config::max_header_bytes`).
    pub max_header_bytes: usize,
    /// Metric handles: one atomic each, no registry lookup per connection.
    pending_gauge: metrics::Gauge,
    refused_total: metrics::Counter,
    refused_per_ip: metrics::Counter,
}

impl Admission {
    pub fn new(
        total_cap: usize,
        per_ip_cap: usize,
        trusted: TrustedProxies,
        handshake_timeout: Duration,
        idle_timeout: Duration,
        max_header_bytes: usize,
    ) -> Self {
        Self {
            counts: Mutex::new(PendingCounts::new(total_cap, per_ip_cap)),
            trusted,
            handshake_timeout,
            idle_timeout,
            max_header_bytes,
            pending_gauge: metrics::gauge!(m::CONNECTIONS_PENDING),
            refused_total: metrics::counter!(
                m::CONNECTIONS_REFUSED_TOTAL, "reason" => Refusal::Total.as_str()
            ),
            refused_per_ip: metrics::counter!(
                m::CONNECTIONS_REFUSED_TOTAL, "reason" => Refusal::PerIp.as_str()
            ),
        }
    }

    /// Let a socket accepted from `peer` in, or refuse it (counted in
    /// `rendezvous_connections_refused_total`); the caller closes a refused one.
    /// The returned guard keeps it counted until dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Pending, Refusal> {
        let ip = peer.to_canonical();
        let exempt = self.trusted.contains(ip);
        let admitted = self.lock().try_admit(ip, exempt);
        match admitted {
            Ok(()) => {
                self.pending_gauge.increment(1.0);
                Ok(Pending { admission: self.clone(), ip, accepted_at: Instant::now() })
            }
            Err(why) => {
                match why {
                    Refusal::Total => self.refused_total.increment(1),
                    Refusal::PerIp => self.refused_per_ip.increment(1),
                }
                Err(why)
            }
        }
    }

    /// Pending connections now (total).
    pub fn pending(&self) -> usize {
        self.lock().total()
    }

    /// The cap on pending connections in force.
    pub fn total_cap(&self) -> usize {
        self.lock().total_cap
    }

    /// The per-address cap (0 = none).
    pub fn per_ip_cap(&self) -> usize {
        self.lock().per_ip_cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingCounts> {
        // A panic while holding it cannot leave the counts half-updated.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted connection, counted as pending until dropped (when it is upgraded
/// or closed, whichever comes first).
pub struct Pending {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// When the socket was accepted: its handshake deadline runs from here.
    pub accepted_at: Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.lock().release(self.ip);
        self.admission.pending_gauge.decrement(1.0);
    }
}

/// At most one log line per period about a flood of events (refused connections),
/// each line saying how many events it stands for: an attack must not become a
/// flood of log lines, but an operator must still hear of it.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, unlogged: 0 }
    }

    /// Count one event at `now`; `Some(n)` when a line is due, `n` being the events
    /// since the previous line, this one included.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|at| now < at + self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

// ---------------------------------------------------------------- deadlines

/// Which deadline closed a connection (label `phase` of
/// `rendezvous_connections_timed_out_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Request headers not complete within the handshake timeout.
    Handshake,
    /// No next request within the idle timeout after a response.
    Idle,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Idle => "idle",
        }
    }
}

/// The deadlines of one HTTP connection before its upgrade. From accept, the first
/// request's headers must be complete within the handshake timeout; while a request
/// is being answered there is no deadline; after a response, the next request's
/// headers must be complete within the idle timeout. Time is an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnClock {
    state: ClockState,
    handshake: Duration,
    idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClockState {
    AwaitingHeaders { since: Instant },
    Answering,
    Idle { since: Instant },
}

impl ConnClock {
    pub fn new(accepted_at: Instant, handshake: Duration, idle: Duration) -> Self {
        Self { state: ClockState::AwaitingHeaders { since: accepted_at }, handshake, idle }
    }

    /// A request's headers are complete: no deadline while it is answered.
    pub fn on_request(&mut self) {
        self.state = ClockState::Answering;
    }

    /// The response is ready at `now`: the idle deadline starts.
    pub fn on_response(&mut self, now: Instant) {
        self.state = ClockState::Idle { since: now };
    }

    /// When the connection is to be closed if nothing happens, and why.
    pub fn deadline(&self) -> Option<(Instant, Phase)> {
        match self.state {
            ClockState::AwaitingHeaders { since } => {
                Some((since + self.handshake, Phase::Handshake))
            }
            ClockState::Answering => None,
            ClockState::Idle { since } => Some((since + self.idle, Phase::Idle)),
        }
    }

    /// The phase whose deadline has passed at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<Phase> {
        self.deadline().filter(|(at, _)| now >= *at).map(|(_, phase)| phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| parse_proxy(s).expect("cidr")).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    const PROXY: &str = "10.0.0.1";

    fn resolve(pairs: &[(&'static str, &str)]) -> IpAddr {
        client_ip(ip(PROXY), &headers(pairs), &proxies(&["10.0.0.0/24"]))
    }

    #[test]
    fn proxy_entries_parse_as_cidr_or_address() {
        assert_eq!(parse_proxy("10.1.2.3/8").expect("cidr").to_string(), "10.0.0.0/8");
        assert_eq!(parse_proxy(" 127.0.0.1 ").expect("ip").to_string(), "127.0.0.1/32");
        assert_eq!(parse_proxy("fd00::/8").expect("v6").to_string(), "fd00::/8");
        assert_eq!(parse_proxy("::1").expect("v6 ip").to_string(), "::1/128");
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.local").is_err());
        assert!(parse_proxy("").is_err());
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        let t = proxies(&["10.0.0.0/24"]);
        assert_eq!(client_ip(ip("192.0.2.9"), &h, &t), ip("192.0.2.9"));
        assert_eq!(client_ip(ip("192.0.2.9"), &h, &TrustedProxies::default()), ip("192.0.2.9"));
    }

    #[test]
    fn x_forwarded_for_takes_the_rightmost_untrusted_entry() {
        assert_eq!(resolve(&[("x-forwarded-for", "203.0.113.7")]), ip("203.0.113.7"));
        // The client wrote the first entry itself; the proxy appended the real one.
        assert_eq!(resolve(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]), ip("203.0.113.7"));
        // A chain of trusted proxies is skipped.
        assert_eq!(
            resolve(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.5,10.0.0.6")]),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            resolve(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.8")]),
            ip("203.0.113.8")
        );
        // Ports and IPv6 forms.
        assert_eq!(resolve(&[("x-forwarded-for", "203.0.113.7:5555")]), ip("203.0.113.7"));
        assert_eq!(resolve(&[("x-forwarded-for", "2001:db8::7")]), ip("2001:db8::7"));
        assert_eq!(resolve(&[("x-forwarded-for", "[2001:db8::7]:443")]), ip("2001:db8::7"));
        // Every entry a proxy: the left-most one.
        assert_eq!(resolve(&[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]), ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_follows_rfc_7239_forms() {
        assert_eq!(
            resolve(&[("forwarded", "for=192.0.2.60;proto=http;by=10.0.0.1")]),
            ip("192.0.2.60")
        );
        assert_eq!(
            resolve(&[("forwarded", "For=\"[2001:db8:cafe::17]:4711\"")]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(resolve(&[("forwarded", "for=\"192.0.2.43:47011\"")]), ip("192.0.2.43"));
        assert_eq!(
            resolve(&[("forwarded", "for=6.6.6.6, for=192.0.2.43;proto=https, for=10.0.0.4")]),
            ip("192.0.2.43")
        );
        // A comma inside a quoted value does not split elements.
        assert_eq!(resolve(&[("forwarded", "for=192.0.2.1;host=\"a,b\"")]), ip("192.0.2.1"));
        assert_eq!(
            resolve(&[("forwarded", "for=6.6.6.6"), ("forwarded", "for=192.0.2.2")]),
            ip("192.0.2.2")
        );
        // IPv4-mapped IPv6 is its IPv4 form.
        assert_eq!(resolve(&[("forwarded", "for=\"[::ffff:192.0.2.3]\"")]), ip("192.0.2.3"));
    }

    #[test]
    fn malformed_headers_fall_back_to_the_peer() {
        let peer = ip(PROXY);
        for bad in [
            "",
            "not-an-ip",
            "203.0.113.7 6.6.6.6",
            "203.0.113.7:99999",
            "[2001:db8::1",
            "203.0.113.7,",
            "unknown",
        ] {
            assert_eq!(resolve(&[("x-forwarded-for", bad)]), peer, "x-forwarded-for: {bad:?}");
        }
        for bad in [
            "for=unknown",
            "for=_hidden",
            "for=[2001:db8::1]:80x",
            "for=\"192.0.2.1",
            "proto=https",
            "for",
            "for=192.0.2.1, by=10.0.0.1",
            "for=\"[2001:db8::1]\"junk",
        ] {
            assert_eq!(resolve(&[("forwarded", bad)]), peer, "forwarded: {bad:?}");
        }
        // A bad entry left of the client does not matter: it is never reached.
        assert_eq!(resolve(&[("x-forwarded-for", "garbage, 203.0.113.7")]), ip("203.0.113.7"));
    }

    #[test]
    fn both_headers_must_agree() {
        let agree = [("forwarded", "for=203.0.113.7"), ("x-forwarded-for", "203.0.113.7")];
        assert_eq!(resolve(&agree), ip("203.0.113.7"));
        // The proxy wrote one of them and the client the other: trust neither.
        let disagree = [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.7")];
        assert_eq!(resolve(&disagree), ip(PROXY));
    }

    #[test]
    fn mapped_addresses_match_ipv4_proxies() {
        let t = proxies(&["127.0.0.1"]);
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client_ip(ip("::ffff:127.0.0.1"), &h, &t), ip("203.0.113.7"));
    }

    #[test]
    fn pending_caps_total_and_per_address() {
        let (a, b, proxy) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("10.0.0.1"));
        let mut c = PendingCounts::new(5, 2);
        assert_eq!(c.try_admit(a, false), Ok(()));
        assert_eq!(c.try_admit(a, false), Ok(()));
        assert_eq!(c.try_admit(a, false), Err(Refusal::PerIp));
        assert_eq!(c.try_admit(b, false), Ok(()));
        // A trusted proxy meets only the total cap.
        assert_eq!(c.try_admit(proxy, true), Ok(()));
        assert_eq!(c.try_admit(proxy, true), Ok(()));
        assert_eq!(c.total(), 5);
        assert_eq!(c.try_admit(proxy, true), Err(Refusal::Total));
        assert_eq!(c.try_admit(ip("192.0.2.3"), false), Err(Refusal::Total));
        // Releases free both counts; an address at zero is forgotten.
        c.release(a);
        assert_eq!((c.total(), c.of(a)), (4, 1));
        assert_eq!(c.try_admit(a, false), Ok(()));
        c.release(b);
        assert_eq!(c.of(b), 0);
        assert!(!c.per_ip.contains_key(&b));
        // No per-address cap when it is 0.
        let mut open = PendingCounts::new(3, 0);
        for _ in 0..3 {
            assert_eq!(open.try_admit(a, false), Ok(()));
        }
        assert_eq!(open.try_admit(a, false), Err(Refusal::Total));
    }

    #[test]
    fn auto_pending_cap_fits_beside_the_sessions() {
        // This machine: 20,000 files, 19,000 sessions (95%).
        assert_eq!(pending_cap(0, 20_000, 19_000), 936);
        assert_eq!(pending_cap(0, 1_000_000, 950_000), 1024);
        assert_eq!(pending_cap(0, 1024, 972), 16);
        assert_eq!(pending_cap(0, 1024, 2000), 16);
        assert_eq!(pending_cap(300, 20_000, 19_000), 300);
    }

    #[test]
    fn refusal_logs_are_throttled_and_counted() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut t = LogThrottle::new(every);
        assert_eq!(t.hit(t0), Some(1), "the first one is logged");
        for i in 1..=99 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(t.hit(t0 + every), Some(100), "the next line counts the silent ones");
        assert_eq!(t.hit(t0 + every * 3), Some(1));
    }

    #[test]
    fn deadlines_follow_the_connection() {
        let t0 = Instant::now();
        let (hs, idle) = (Duration::from_secs(10), Duration::from_secs(30));
        let mut c = ConnClock::new(t0, hs, idle);
        assert_eq!(c.deadline(), Some((t0 + hs, Phase::Handshake)));
        assert_eq!(c.expired(t0 + hs - Duration::from_millis(1)), None);
        assert_eq!(c.expired(t0 + hs), Some(Phase::Handshake));
        c.on_request();
        assert_eq!(c.deadline(), None);
        assert_eq!(c.expired(t0 + hs * 100), None, "no deadline while answering");
        let t1 = t0 + Duration::from_secs(50);
        c.on_response(t1);
        assert_eq!(c.deadline(), Some((t1 + idle, Phase::Idle)));
        assert_eq!(c.expired(t1 + idle), Some(Phase::Idle));
        c.on_request();
        assert_eq!(c.expired(t1 + idle * 2), None);
    }
}
