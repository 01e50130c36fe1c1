//! What the load tester adds to the protocol's client (`rendezvous_protocol::client`,
//! shared with the integration tests): failures as counted values, connected members,
//! bounded concurrency.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use rendezvous_protocol::client::{self as wire, RecvError};
use rendezvous_protocol::ServerFrame;
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
