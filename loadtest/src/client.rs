//! What the load tester adds to the protocol's client (`rendezvous_protocol::client`,
//! shared with the integration tests): failures as counted values, connected members,
//! matching one pair of users (each possibly on its own node), bounded concurrency.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use rendezvous_protocol::client::{self as wire, RecvError};
use rendezvous_protocol::ServerFrame;
use serde_json::json;
use tokio::task::JoinSet;

pub use rendezvous_protocol::client::{ws_config, Ws};

/// Why one pair (or one chat member) failed, with enough context to act on.
#[derive(Debug)]
pub enum Failure {
    Connect { url: String, error: String },
    Timeout { user: String, waiting_for: &'static str },
    Closed { user: String, waiting_for: &'static str },
    Server { user: String, frame: String },
    Protocol { user: String, error: String },
    Send { user: String, error: String },
    WrongPartner { user: String, got: Option<String>, want: String },
}

impl Failure {
    /// A short name for error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect { .. } => "connect",
            Failure::Timeout { .. } => "timeout",
            Failure::Closed { .. } => "closed",
            Failure::Server { .. } => "error_frame",
            Failure::Protocol { .. } => "protocol",
            Failure::Send { .. } => "send",
            Failure::WrongPartner { .. } => "wrong_partner",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect { url, error } => write!(f, "connect to {url}: {error}"),
            Failure::Timeout { user, waiting_for } => {
                write!(f, "{user}: timed out waiting for {waiting_for}")
            }
            Failure::Closed { user, waiting_for } => {
                write!(f, "{user}: connection closed while waiting for {waiting_for}")
            }
            Failure::Server { user, frame } => write!(f, "{user}: server answered {frame}"),
            Failure::Protocol { user, error } => write!(f, "{user}: unreadable frame: {error}"),
            Failure::Send { user, error } => write!(f, "{user}: send failed: {error}"),
            Failure::WrongPartner { user, got, want } => {
                write!(f, "{user}: matched with {got:?}, expected {want}")
            }
        }
    }
}

/// Open a session for `user`.
pub async fn connect(url: &str, user: &str) -> Result<Ws, Failure> {
    connect_to(&format!("{url}?user={user}")).await
}

/// Open a WebSocket to `target` (a full URL, query included).
pub async fn connect_to(target: &str) -> Result<Ws, Failure> {
    wire::connect(target).await.map_err(|e| {
        crate::telemetry::error("connect");
        Failure::Connect { url: target.to_owned(), error: e.to_string() }
    })
}

/// Read frames until one of type `kind` arrives, within `wait`. An `error` frame
/// or a closed socket on the way is a failure.
pub async fn until(
    ws: &mut Ws,
    user: &str,
    kind: &'static str,
    wait: Duration,
) -> Result<ServerFrame, Failure> {
    until_one_of(ws, user, &[kind], wait).await
}

/// [`until`] for the first frame of any of `kinds`.
pub async fn until_one_of(
    ws: &mut Ws,
    user: &str,
    kinds: &[&'static str],
    wait: Duration,
) -> Result<ServerFrame, Failure> {
    let waiting_for = kinds.first().copied().unwrap_or("a frame");
    let user = user.to_owned();
    wire::until(ws, kinds, tokio::time::Instant::now() + wait).await.map_err(|e| match e {
        RecvError::Timeout => Failure::Timeout { user, waiting_for },
        RecvError::Closed(_) | RecvError::Ended => Failure::Closed { user, waiting_for },
        RecvError::ErrorFrame(frame) => Failure::Server { user, frame: frame.to_json() },
        RecvError::Socket(_) | RecvError::Unreadable { .. } => {
            Failure::Protocol { user, error: e.to_string() }
        }
    })
}

/// Send one JSON text frame.
pub async fn send_text(ws: &mut Ws, user: &str, text: String) -> Result<(), Failure> {
    wire::send_text(ws, text)
        .await
        .map_err(|e| Failure::Send { user: user.to_owned(), error: e.to_string() })
}

/// One connected user.
pub struct Member {
    pub user: String,
    pub ws: Ws,
    /// Counted in the open-sockets gauge while the member lives.
    pub _open: crate::telemetry::OpenSocket,
}

/// A matched pair: A searched first on `url_a`, B second on `url_b`.
pub struct Pair {
    pub a: Member,
    pub b: Member,
    pub room_id: String,
    /// B's time from sending `find_match` to receiving `match_found`.
    pub latency: Duration,
}

/// Where and how to match pair number `id`.
#[derive(Clone)]
pub struct PairSpec {
    pub url_a: String,
    pub url_b: String,
    pub wait: Duration,
}

/// User names unique to this run, so leftovers of an earlier run (seats kept for
/// the reconnect grace) cannot interfere.
fn user_name(id: usize, side: char) -> String {
    format!("lt{}-{id}-{side}", std::process::id())
}

/// `find_match` with two interests unique to this pair and run, so concurrent
/// pairs never cross-match and every pair forms at the first ladder step.
fn find_match_frame(id: usize) -> String {
    let run = std::process::id();
    let interests = [format!("bench-{run}-{id}-a"), format!("bench-{run}-{id}-b")];
    json!({"action": "find_match", "interests": interests, "language": "en"}).to_string()
}

async fn open(url: &str, user: String, wait: Duration) -> Result<Member, Failure> {
    let mut ws = connect(url, &user).await?;
    until(&mut ws, &user, "welcome", wait).await?;
    Ok(Member { user, ws, _open: crate::telemetry::OpenSocket::new() })
}

/// Connect both users, let A search, then B; time B's search.
pub async fn match_pair(spec: PairSpec, id: usize) -> Result<Pair, Failure> {
    let mut a = open(&spec.url_a, user_name(id, 'a'), spec.wait).await?;
    let mut b = open(&spec.url_b, user_name(id, 'b'), spec.wait).await?;
    let find = find_match_frame(id);
    send_text(&mut a.ws, &a.user, find.clone()).await?;
    until(&mut a.ws, &a.user, "searching", spec.wait).await?;
    let t0 = Instant::now();
    send_text(&mut b.ws, &b.user, find).await?;
    let found = until(&mut b.ws, &b.user, "match_found", spec.wait).await?;
    let latency = t0.elapsed();
    metrics::histogram!(crate::telemetry::MATCH_LATENCY_SECONDS).record(latency.as_secs_f64());
    metrics::counter!(crate::telemetry::MATCHES_TOTAL).increment(1);
    let found_a = until(&mut a.ws, &a.user, "match_found", spec.wait).await?;
    let (
        ServerFrame::MatchFound { partner_id, room_id, .. },
        ServerFrame::MatchFound { room_id: room_a, .. },
    ) = (found, found_a)
    else {
        return Err(Failure::Server { user: b.user, frame: "not a match_found".into() });
    };
    if partner_id.as_deref() != Some(a.user.as_str()) {
        return Err(Failure::WrongPartner { user: b.user, got: partner_id, want: a.user });
    }
    if room_a != room_id {
        let frame = format!("room {room_a} for A but {room_id} for B");
        return Err(Failure::Server { user: b.user, frame });
    }
    Ok(Pair { a, b, room_id, latency })
}

/// Run `job(i)` for every `i` in `0..count`, at most `concurrency` at a time, and
/// start none after `stop_at`. Results come back in completion order.
pub async fn bounded<T, F>(
    count: usize,
    concurrency: usize,
    stop_at: Instant,
    job: impl Fn(usize) -> F,
) -> Vec<(usize, Result<T, String>)>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    let mut done = Vec::with_capacity(count);
    let mut next = 0usize;
    let mut running = JoinSet::new();
    while next < count || !running.is_empty() {
        if next < count && Instant::now() >= stop_at {
            eprintln!("time bound reached after starting {next} of {count}");
            next = count;
        }
        while next < count && running.len() < concurrency.max(1) {
            let (id, fut) = (next, job(next));
            running.spawn(async move { (id, fut.await.map_err(|f| f.to_string())) });
            next += 1;
        }
        match running.join_next().await {
            Some(Ok(result)) => done.push(result),
            Some(Err(e)) => done.push((usize::MAX, Err(format!("task: {e}")))),
            None => break,
        }
    }
    done
}
