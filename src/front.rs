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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;
use rendezvous_actors::metrics as m;
use tokio::sync::Notify;
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

/// Descriptors kept for the node itself (listener, Redis, logs) when pending
/// connections are fitted beside the sessions.
pub const FD_RESERVE: usize = 64;

/// Pending connections at most when `--max-pending-connections` is 0 (auto).
pub const AUTO_PENDING_CAP: usize = 4096;

/// The cap on pending connections in force: `configured`, or (0) the automatic one.
/// Either way [`pending_room`] also keeps them within the open files the sessions
/// leave.
pub fn pending_cap(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        AUTO_PENDING_CAP
    }
}

/// How many connections may be pending now: the cap, but never more than the
/// open-file limit leaves beside the `sessions` open and [`FD_RESERVE`], so that
/// sessions and pending connections together never run the node out of
/// descriptors. A burst of handshakes while few sessions are open gets the whole
/// cap; a node near its session cap keeps only what its files allow. At least 16,
/// so a full node still answers health checks.
pub fn pending_room(cap: usize, open_file_limit: u64, sessions: usize) -> usize {
    let files = usize::try_from(open_file_limit).unwrap_or(usize::MAX);
    let left = files.saturating_sub(sessions.saturating_add(FD_RESERVE));
    cap.min(left.max(16))
}

/// Why an accepted socket was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node already holds its cap of pending connections, none of them old
    /// enough to give way.
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

/// The `reason` label of `rendezvous_connections_refused_total` for a pending
/// connection closed to make room for a new one.
pub const EVICTED: &str = "pending_evicted";

/// A connection let in: its number, and the older one it displaced, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub id: u64,
    /// An older pending connection to close now, to make room for this one.
    pub evicted: Option<u64>,
}

/// Pending connections against their caps (no I/O; time is an argument).
///
/// When the total cap is full, a newcomer displaces the oldest pending connection
/// if that one has been waiting at least `min_age`; otherwise the newcomer is
/// refused. A real client finishes its handshake in milliseconds, so the oldest
/// pending connections under pressure are the ones that stall: sockets held open
/// without a request can fill the cap, but they cannot keep new users out for
/// longer than `min_age`, from however many addresses they come.
#[derive(Debug)]
pub struct PendingCounts {
    total_cap: usize,
    /// 0 = no per-address cap.
    per_ip_cap: usize,
    /// How long a pending connection is safe from being displaced.
    min_age: Duration,
    /// Pending connections by number, which grows with accept time: the first
    /// entry is the oldest. At most `total_cap` entries.
    live: BTreeMap<u64, (IpAddr, Instant)>,
    next_id: u64,
    /// Only addresses with at least one pending connection: at most `total_cap` entries.
    per_ip: HashMap<IpAddr, usize>,
}

impl PendingCounts {
    pub fn new(total_cap: usize, per_ip_cap: usize, min_age: Duration) -> Self {
        Self {
            total_cap,
            per_ip_cap,
            min_age,
            live: BTreeMap::new(),
            next_id: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Count one more from `ip` accepted at `now`, possibly displacing the oldest
    /// (see the type's doc), or say which cap it would pass. `exempt` addresses
    /// (trusted proxies: all their clients share them) meet only the total cap.
    /// `room` lowers the total cap for this one call (the files left: [`pending_room`]).
    pub fn try_admit(
        &mut self,
        ip: IpAddr,
        exempt: bool,
        now: Instant,
        room: usize,
    ) -> Result<Admitted, Refusal> {
        let evict = if self.live.len() >= self.total_cap.min(room) {
            match self.live.first_key_value() {
                Some((&id, &(_, at))) if now.saturating_duration_since(at) >= self.min_age => {
                    Some(id)
                }
                _ => return Err(Refusal::Total),
            }
        } else {
            None
        };
        let mut n = self.of(ip);
        if evict.and_then(|id| self.live.get(&id)).is_some_and(|(from, _)| *from == ip) {
            n -= 1;
        }
        if !exempt && self.per_ip_cap > 0 && n >= self.per_ip_cap {
            return Err(Refusal::PerIp);
        }
        if let Some(old) = evict {
            self.release(old);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id, (ip, now));
        *self.per_ip.entry(ip).or_default() += 1;
        Ok(Admitted { id, evicted: evict })
    }

    /// Pending connection `id` ended (upgraded, closed, or displaced); false when
    /// it was no longer counted (a displaced one's own end comes later).
    pub fn release(&mut self, id: u64) -> bool {
        let Some((ip, _)) = self.live.remove(&id) else { return false };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        true
    }

    pub fn total(&self) -> usize {
        self.live.len()
    }

    pub fn of(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// What the door's lock guards: the counts, and the signal that closes each
/// pending connection if it is displaced.
struct Door {
    counts: PendingCounts,
    evict: HashMap<u64, Arc<Notify>>,
}

/// The node's door: pending counts, the trusted proxies and the deadlines, shared
/// by the accept loop (admits) and the connection tasks on the workers (release).
pub struct Admission {
    /// A plain mutex: held for a map update, never across an `.await`; the accept
    /// loop and the workers' releases are the only users.
    door: Mutex<Door>,
    pub trusted: TrustedProxies,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Largest request head, in bytes (`Config::max_header_bytes`).
    pub max_header_bytes: usize,
    /// The process's open-file limit, which sessions and pending connections share.
    open_file_limit: u64,
    /// Metric handles: one atomic each, no registry lookup per connection.
    pending_gauge: metrics::Gauge,
    refused_total: metrics::Counter,
    refused_per_ip: metrics::Counter,
    evicted: metrics::Counter,
}

/// How long a pending connection is safe from being displaced when the total cap
/// is full: a second, or half the handshake timeout when that is shorter. Real
/// handshakes take milliseconds.
pub fn displace_after(handshake_timeout: Duration) -> Duration {
    (handshake_timeout / 2).min(Duration::from_secs(1))
}

impl Admission {
    pub fn new(
        total_cap: usize,
        per_ip_cap: usize,
        trusted: TrustedProxies,
        handshake_timeout: Duration,
        idle_timeout: Duration,
        max_header_bytes: usize,
        open_file_limit: u64,
    ) -> Self {
        let counts = PendingCounts::new(total_cap, per_ip_cap, displace_after(handshake_timeout));
        Self {
            door: Mutex::new(Door { counts, evict: HashMap::new() }),
            trusted,
            handshake_timeout,
            idle_timeout,
            max_header_bytes,
            open_file_limit,
            pending_gauge: metrics::gauge!(m::CONNECTIONS_PENDING),
            refused_total: metrics::counter!(
                m::CONNECTIONS_REFUSED_TOTAL, "reason" => Refusal::Total.as_str()
            ),
            refused_per_ip: metrics::counter!(
                m::CONNECTIONS_REFUSED_TOTAL, "reason" => Refusal::PerIp.as_str()
            ),
            evicted: metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => EVICTED),
        }
    }

    /// Let a socket accepted from `peer` in, or refuse it (counted in
    /// `rendezvous_connections_refused_total`); the caller closes a refused one.
    /// The returned guard keeps it counted until dropped. Letting it in may close
    /// the oldest pending connection (counted as `pending_evicted`). `sessions`:
    /// the sessions open now, which hold files too.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, sessions: usize) -> Result<Pending, Refusal> {
        let ip = peer.to_canonical();
        let exempt = self.trusted.contains(ip);
        let now = Instant::now();
        let room = pending_room(usize::MAX, self.open_file_limit, sessions);
        let mut door = self.lock();
        match door.counts.try_admit(ip, exempt, now, room) {
            Ok(Admitted { id, evicted }) => {
                if let Some(gone) = evicted.and_then(|old| door.evict.remove(&old)) {
                    gone.notify_one();
                    self.evicted.increment(1);
                    self.pending_gauge.decrement(1.0);
                }
                let evict = Arc::new(Notify::new());
                door.evict.insert(id, evict.clone());
                drop(door);
                self.pending_gauge.increment(1.0);
                Ok(Pending { admission: self.clone(), id, evict, accepted_at: now })
            }
            Err(why) => {
                drop(door);
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
        self.lock().counts.total()
    }

    /// The cap on pending connections in force.
    pub fn total_cap(&self) -> usize {
        self.lock().counts.total_cap
    }

    /// The per-address cap (0 = none).
    pub fn per_ip_cap(&self) -> usize {
        self.lock().counts.per_ip_cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Door> {
        // A panic while holding it cannot leave the counts half-updated.
        self.door.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted connection, counted as pending until dropped (when it is upgraded
/// or closed, whichever comes first), or until a newer one displaces it.
pub struct Pending {
    admission: Arc<Admission>,
    id: u64,
    /// Notified when this connection is displaced: its task then closes it.
    evict: Arc<Notify>,
    /// When the socket was accepted: its handshake deadline runs from here.
    pub accepted_at: Instant,
}

impl Pending {
    /// Resolves when a newer connection displaced this one (the total cap was full
    /// and this was the oldest).
    pub async fn displaced(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut door = self.admission.lock();
        door.evict.remove(&self.id);
        // A displaced connection was already uncounted when it was displaced.
        if door.counts.release(self.id) {
            drop(door);
            self.admission.pending_gauge.decrement(1.0);
        }
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
        let t0 = Instant::now();
        let mut c = PendingCounts::new(5, 2, Duration::from_secs(1));
        let first = c.try_admit(a, false, t0, usize::MAX).expect("a").id;
        assert!(c.try_admit(a, false, t0, usize::MAX).is_ok());
        assert_eq!(c.try_admit(a, false, t0, usize::MAX), Err(Refusal::PerIp));
        let of_b = c.try_admit(b, false, t0, usize::MAX).expect("b").id;
        // A trusted proxy meets only the total cap.
        assert!(c.try_admit(proxy, true, t0, usize::MAX).is_ok());
        assert!(c.try_admit(proxy, true, t0, usize::MAX).is_ok());
        assert_eq!(c.total(), 5);
        // Full, and nobody has waited long enough to give way: the newcomer is refused.
        assert_eq!(c.try_admit(proxy, true, t0, usize::MAX), Err(Refusal::Total));
        assert_eq!(c.try_admit(ip("192.0.2.3"), false, t0, usize::MAX), Err(Refusal::Total));
        // Releases free both counts; an address at zero is forgotten.
        assert!(c.release(first));
        assert!(!c.release(first), "released once only");
        assert_eq!((c.total(), c.of(a)), (4, 1));
        assert!(c.try_admit(a, false, t0, usize::MAX).is_ok());
        assert!(c.release(of_b));
        assert_eq!(c.of(b), 0);
        assert!(!c.per_ip.contains_key(&b));
        // No per-address cap when it is 0.
        let mut open = PendingCounts::new(3, 0, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(open.try_admit(a, false, t0, usize::MAX).is_ok());
        }
        assert_eq!(open.try_admit(a, false, t0, usize::MAX), Err(Refusal::Total));
    }

    #[test]
    fn a_full_door_displaces_its_oldest_stalled_connection() {
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let t0 = Instant::now();
        let min_age = Duration::from_secs(1);
        let mut door = PendingCounts::new(3, 2, min_age);
        let oldest = door.try_admit(a, false, t0, usize::MAX).expect("a").id;
        let second =
            door.try_admit(b, false, t0 + Duration::from_millis(10), usize::MAX).expect("b").id;
        door.try_admit(a, false, t0 + Duration::from_millis(20), usize::MAX).expect("a again");
        // Full; the oldest has waited only 0.5 s: refused.
        let early = t0 + Duration::from_millis(500);
        assert_eq!(door.try_admit(c, false, early, usize::MAX), Err(Refusal::Total));
        // A second later the newcomer takes the oldest's place.
        let later = t0 + Duration::from_millis(1_200);
        let got = door.try_admit(c, false, later, usize::MAX).expect("c displaces the oldest");
        assert_eq!(got.evicted, Some(oldest));
        assert_eq!((door.total(), door.of(a), door.of(c)), (3, 1, 1));
        assert!(!door.release(oldest), "a displaced connection is no longer counted");
        // The per-address cap still holds, counting the one that would go: `b`
        // (oldest now) gives way to a second `b` only because it is `b`'s own.
        let again = door.try_admit(b, false, later, usize::MAX).expect("b replaces its own oldest");
        assert_eq!(again.evicted, Some(second));
        let mut tight = PendingCounts::new(2, 1, min_age);
        tight.try_admit(a, false, t0, usize::MAX).expect("a");
        tight.try_admit(b, false, t0, usize::MAX).expect("b");
        // `b` is at its cap and the oldest is `a`'s: displacing it would not help `b`.
        assert_eq!(tight.try_admit(b, false, later, usize::MAX), Err(Refusal::PerIp));
        assert_eq!(tight.total(), 2, "nothing displaced for a refusal");
    }

    #[test]
    fn connections_are_safe_from_displacement_for_a_while() {
        assert_eq!(displace_after(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(displace_after(Duration::from_millis(600)), Duration::from_millis(300));
    }

    #[test]
    fn pending_connections_fit_beside_the_open_sessions() {
        assert_eq!(pending_cap(0), AUTO_PENDING_CAP);
        assert_eq!(pending_cap(300), 300);
        // This machine: 20,000 files. Few sessions: the whole cap.
        assert_eq!(pending_room(4096, 20_000, 1_000), 4096);
        // At the session cap (95%): what the files leave.
        assert_eq!(pending_room(4096, 20_000, 19_000), 936);
        assert_eq!(pending_room(300, 20_000, 19_000), 300);
        // Never below 16, even on a node whose files are all taken.
        assert_eq!(pending_room(4096, 1024, 2000), 16);
        // The room lowers the cap of one admission.
        let t0 = Instant::now();
        let mut c = PendingCounts::new(10, 0, Duration::from_secs(1));
        let a = ip("192.0.2.1");
        assert!(c.try_admit(a, false, t0, 2).is_ok());
        assert!(c.try_admit(a, false, t0, 2).is_ok());
        assert_eq!(c.try_admit(a, false, t0, 2), Err(Refusal::Total));
        assert!(c.try_admit(a, false, t0, 3).is_ok());
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
