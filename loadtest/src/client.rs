//! What the load tester adds to the protocol's client (`rendezvous_protocol::client`,
//! shared with the integration tests): failures as counted values, connected members,
//! bounded concurrency, and `wss://` (rustls, trusting the system's roots and
//! `--ca-file`).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

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

/// The variable `--ca-file` is read from; worker processes inherit it.
pub const CA_FILE_ENV: &str = "RENDEZVOUS_LOADTEST_CA_FILE";

/// The extra certificate authority of `--ca-file`, set by `main` before any
/// connection is made.
static CA_FILE: OnceLock<PathBuf> = OnceLock::new();
/// The TLS settings of every `wss://` connection, built on first use (reading the
/// system's roots once, not per connection), or why they cannot be.
static TLS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();

/// Trust the PEM certificate(s) in `path` for `wss://` besides the system's roots.
pub fn trust_ca_file(path: PathBuf) {
    let _ = CA_FILE.set(path);
}

/// The `--ca-file`, if one was given.
pub fn ca_file() -> Option<&'static Path> {
    CA_FILE.get().map(PathBuf::as_path)
}

fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // A system certificate rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file() {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca-file {}: no certificate in it", path.display()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("no trusted certificate authority for wss:// (pass --ca-file)".into());
        }
        // The provider named, not the process default: the workspace's rustls may
        // be built with more than one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    })
    .clone()
}

/// Open a WebSocket to `target` (a full URL, query included): `ws://` plain,
/// `wss://` over TLS.
pub async fn connect_to(target: &str) -> Result<Ws, Failure> {
    let fail = |error: String| {
        crate::telemetry::error("connect");
        Failure::Connect { url: target.to_owned(), error }
    };
    if target.starts_with("wss://") {
        let connector = tokio_tungstenite::Connector::Rustls(tls().map_err(fail)?);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            target,
            Some(ws_config()),
            true,
            Some(connector),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        return Ok(ws);
    }
    wire::connect(target).await.map_err(|e| fail(e.to_string()))
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

/// Stay on the socket for `hold`, counting text frames that name `kind` (e.g. a
/// second `match_found`: a double match); stops early if the socket ends.
pub async fn count_during(ws: &mut Ws, kind: &str, hold: Duration) -> u64 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let needle = format!("\"{kind}\"");
    let mut seen = 0;
    let hold = tokio::time::sleep(hold);
    tokio::pin!(hold);
    loop {
        tokio::select! {
            () = &mut hold => return seen,
            next = ws.next() => match next {
                Some(Ok(Message::Text(t))) if t.as_str().contains(&needle) => seen += 1,
                Some(Ok(_)) => {}
                _ => return seen,
            }
        }
    }
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
