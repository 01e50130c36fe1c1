//! The accept loop and the graceful drain. [`run`] is the one entry point: the
//! binary binds and calls it; tests bind port 0 and call it too.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rendezvous_actors::bridge::memory::MemoryBridge;
use rendezvous_actors::bridge::redis::conn::PipePolicy;
use rendezvous_actors::bridge::redis::RedisBridge;
use rendezvous_actors::bridge::Bridge;
use rendezvous_actors::protocol::close;
use rendezvous_actors::Engine;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, info, warn};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::front::{LogThrottle, Pending};
use crate::http::{serve_connection, App};
use crate::telemetry;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("redis: {0}")]
    Redis(#[from] rendezvous_actors::bridge::BridgeError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Moderation(#[from] rendezvous_actors::moderation::StateFileError),
    #[error("admin listener on {addr}: {source}")]
    AdminBind { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Serve on `listener` until `shutdown` resolves, then drain: refuse new sessions,
/// close every session with 1012, wait (bounded) for them to go, stop the workers.
/// Must run inside an actix `System`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    let anonymous = config.anonymous_allowed();
    if anonymous && !addr.ip().is_loopback() {
        warn!("ANONYMOUS MODE on a non-loopback address: anyone can connect as any user name. Use --jwt-secret in production.");
    } else if anonymous {
        warn!("anonymous mode is on (loopback bind): clients pick their own user id with ?user=; insecure outside development");
    }
    let node = config.engine.node_id.clone();
    let redis = match &config.redis_url {
        Some(url) => {
            let ack = PipePolicy {
                replicas: config.redis_ack_replicas,
                timeout_ms: config.redis_ack_timeout_ms,
                linger_ms: config.redis_linger_ms,
            };
            Some(RedisBridge::connect(url, &node, ack)?)
        }
        None => None,
    };
    let bridge: Arc<dyn Bridge> = match &redis {
        Some(r) => r.clone(),
        None => Arc::new(MemoryBridge::new(node.clone())),
    };
    // The recorder first: the engine takes its per-message metric handles from it.
    let metrics = telemetry::metrics_handle();
    let engine = Engine::start(config.engine.clone(), bridge);
    if redis.is_some() {
        info!(node = %node, redis = %redacted(config.redis_url.as_deref().unwrap_or_default()), "cluster mode: Redis bridge");
    }
    let records = engine.load_moderation()?;
    if let Some(file) = &config.engine.moderation_state_file {
        info!(file = %file.display(), records, "moderation state file loaded");
    }
    let admin_stop = start_admin(&config, &engine, &metrics).await?;
    let auth = Authenticator::from_config(&config);
    engine.install_token_verifier(auth.verifier());
    let mut app = App::new(engine.clone(), auth, metrics);
    app.allowed_origins = config.allowed_origins.clone();
    app.configure_front(&config);
    app.public_metrics = config.public_metrics;
    let app = Arc::new(app);
    info!(
        node = %config.engine.node_id,
        workers = engine.shared.workers.len(),
        shards = engine.shards.len(),
        max_sessions = app.session_cap,
        max_pending = app.admission.total_cap(),
        max_pending_per_ip = app.admission.per_ip_cap(),
        "rendezvous listening on http://{addr} (WebSocket: ws://{addr}/ws)"
    );

    // One warning per 10 s at most while connections are refused.
    let mut refusals = LogThrottle::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match app.admission.admit(peer.ip(), app.engine.shared.registry.len()) {
                    Ok(pending) => dispatch(stream, peer, &app, pending),
                    // Closed at once (the drop) and counted by `admit`.
                    Err(why) => {
                        debug!(%peer, reason = why.as_str(), "connection refused");
                        if let Some(n) = refusals.hit(tokio::time::Instant::now()) {
                            warn!(
                                refused = n,
                                last_reason = why.as_str(),
                                last_peer = %peer,
                                pending = app.admission.pending(),
                                "closing new connections at once: a pending-connection cap is reached (rendezvous_connections_refused_total)"
                            );
                        }
                    }
                },
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    info!("shutting down: draining sessions");
    drop(admin_stop);
    app.draining.store(true, Ordering::Release);
    drop(listener);
    let timeout = Duration::from_millis(config.engine.drain_timeout_ms);
    let left = engine.drain(close::RESTARTING, timeout).await;
    if left > 0 {
        warn!(sessions = left, "drain timed out; closing the rest");
    }
    if let Some(r) = redis {
        // Let the closed sessions' cancels reach the shards, then leave the cluster.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tokio::time::timeout(Duration::from_secs(3), r.leave()).await.is_err() {
            warn!("redis did not answer during the drain; peers will notice the missing heartbeat");
        }
    }
    engine.stop();
    info!("stopped");
    Ok(())
}

/// Bind and serve the admin API when `--admin-token` is set (else log that it is
/// off). Dropping the returned sender stops it.
async fn start_admin(
    config: &Config,
    engine: &Engine,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Option<tokio::sync::oneshot::Sender<()>>, ServerError> {
    let Some(token) = config.admin_token.clone() else {
        info!("admin API off: set --admin-token to serve it on --admin-bind");
        return Ok(None);
    };
    let addr = config.admin_bind;
    let listener =
        TcpListener::bind(addr).await.map_err(|source| ServerError::AdminBind { addr, source })?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(%bound, "the admin API listens beyond loopback: keep it behind a firewall or a private network");
    }
    info!("admin API serving http://{bound} (page at /, token required for /api and /metrics)");
    let app = Arc::new(crate::admin::AdminApp::new(engine.clone(), metrics.clone(), token));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    actix_rt::spawn(crate::admin::serve(listener, app, async move {
        let _ = rx.await;
    }));
    Ok(Some(tx))
}

/// Hand an accepted socket to the next worker arbiter. The socket is registered
/// with that arbiter's runtime (an I/O resource belongs to the runtime that
/// registered it), so the session actor and its writer run there too. `pending`
/// goes with it and counts it until it is upgraded or closed.
fn dispatch(stream: TcpStream, peer: std::net::SocketAddr, app: &Arc<App>, pending: Pending) {
    let _ = stream.set_nodelay(true);
    // A fixed kernel send buffer: with autotuning, a client that stops reading can
    // make the kernel hold megabytes for it before any write blocks.
    let sndbuf = app.engine.shared.config.socket_send_buffer_bytes;
    if sndbuf > 0 {
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(sndbuf) {
            debug!(error = %e, "could not set SO_SNDBUF");
        }
    }
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "could not detach accepted socket"),
    };
    let app = app.clone();
    let worker = app.engine.shared.next_worker();
    worker.spawn_fn(move || {
        actix_rt::spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => serve_connection(stream, peer, app, pending).await,
                Err(e) => warn!(error = %e, "could not register socket on worker"),
            }
        });
    });
}

/// A Redis URL with its password hidden, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
