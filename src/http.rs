//! One port for everything: `GET /ws` upgrades to WebSocket (after authentication),
//! and the plain HTTP endpoints `/healthz`, `/readyz`, `/metrics`, `/api/stats`,
//! `/api/trending`, and the browser client (src/web/) at `/`, `/app.js`, `/style.css`.
//! Served by hyper on the worker arbiter that accepted the socket; the upgraded stream
//! stays on that arbiter, where its session actor is started. Until the upgrade, a
//! watchdog holds the connection to the deadlines of [`crate::front::ConnClock`].

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use rendezvous_actors::metrics as m;
use rendezvous_actors::protocol::{close, ErrorCode, ServerFrame};
use rendezvous_actors::session::SessionActor;
use rendezvous_actors::Engine;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::front::{self, Admission, ConnClock, Pending};

/// What every connection handler needs.
pub struct App {
    pub engine: Engine,
    pub auth: Authenticator,
    pub metrics: PrometheusHandle,
    pub ws_config: WebSocketConfig,
    /// Set when a drain starts: new upgrades are refused with 503 and `/readyz` fails.
    pub draining: AtomicBool,
    /// Origins allowed to open `/ws` (empty = any).
    pub allowed_origins: Vec<String>,
    /// Sessions this node takes at most (config, or 95% of the open-file limit).
    pub session_cap: usize,
    /// The soft open-file limit read at start-up.
    pub open_file_limit: u64,
    /// Caps and deadlines of connections not yet upgraded, and the trusted proxies.
    pub admission: Arc<Admission>,
    /// Serve `/metrics` and `/api/stats` here (`--public-metrics`); else only on
    /// the admin address.
    pub public_metrics: bool,
}

impl App {
    pub fn new(engine: Engine, auth: Authenticator, metrics: PrometheusHandle) -> Self {
        let max = engine.shared.config.max_frame_bytes;
        // Buffers sized on purpose: tungstenite's 128 KiB default read buffer per
        // connection would cost gigabytes at tens of thousands of sessions, and
        // even 4 KiB was 40% of an idle session's memory. Chat frames are a few
        // hundred bytes; a larger frame is read in several chunks.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024);
        // Read after main() raised the soft limit to the hard one.
        let nofile =
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024);
        let session_cap = engine.shared.config.session_cap(nofile);
        let admission = Arc::new(admission(&Config::default(), nofile));
        Self {
            engine,
            auth,
            metrics,
            ws_config,
            draining: AtomicBool::new(false),
            allowed_origins: Vec::new(),
            session_cap,
            open_file_limit: nofile,
            admission,
            public_metrics: true,
        }
    }

    /// Take the front-door settings (pending caps, deadlines, trusted proxies) of
    /// `config`. Call before serving.
    pub fn configure_front(&mut self, config: &Config) {
        self.admission = Arc::new(admission(config, self.open_file_limit));
    }
}

fn admission(config: &Config, open_file_limit: u64) -> Admission {
    use std::time::Duration;
    Admission::new(
        front::pending_cap(config.max_pending_connections),
        config.max_pending_per_ip,
        front::TrustedProxies::new(config.trusted_proxies.clone()),
        Duration::from_millis(config.handshake_timeout_ms),
        Duration::from_millis(config.http_idle_timeout_ms),
        config.max_header_bytes,
        open_file_limit,
    )
}

pub(crate) type Body = Full<Bytes>;

/// Serve HTTP/1.1 on one accepted connection (keep-alive, upgrades) until it is
/// upgraded, closed, or a deadline of its [`ConnClock`] passes (then the socket is
/// closed without an answer). `pending` counts it as not yet upgraded until this
/// returns.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    pending: Pending,
) {
    let admission = app.admission.clone();
    // Shared by the service (which moves it at each request and response) and the
    // watchdog below; both run in this one task, so the lock is never contended.
    let clock = Arc::new(Mutex::new(ConnClock::new(
        pending.accepted_at,
        admission.handshake_timeout,
        admission.idle_timeout,
    )));
    let svc_clock = clock.clone();
    let svc = service_fn(move |req| {
        let app = app.clone();
        let clock = svc_clock.clone();
        lock(&clock).on_request();
        async move {
            let response = route(req, app, peer).await;
            lock(&clock).on_response(tokio::time::Instant::now());
            Ok::<_, Infallible>(response)
        }
    });
    let conn = http1::Builder::new()
        .max_buf_size(admission.max_header_bytes)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let timer = tokio::time::sleep_until(pending.accepted_at + admission.handshake_timeout);
    tokio::pin!(timer);
    // Reads the clock on every poll: `conn` is polled first (`biased`), so a request
    // or response it just handled has already moved the deadline.
    let watchdog = poll_fn(|cx| {
        let Some((at, phase)) = lock(&clock).deadline() else { return Poll::Pending };
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).map(|()| phase)
    });
    tokio::select! {
        biased;
        ended = &mut conn => {
            if let Err(e) = ended {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        () = pending.displaced() => {
            debug!(%peer, "closing a stalled connection to make room for a new one");
        }
        phase = watchdog => {
            metrics::counter!(m::CONNECTIONS_TIMED_OUT_TOTAL, "phase" => phase.as_str())
                .increment(1);
            debug!(%peer, phase = phase.as_str(), "closing a connection past its deadline");
        }
    }
    drop(pending);
}

pub(crate) fn lock(clock: &Mutex<ConnClock>) -> std::sync::MutexGuard<'_, ConnClock> {
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub(crate) fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// The browser client (src/web/), compiled into the binary: no files to deploy.
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");
// The JavaScript SDK (clients/js/src) the client is built on, served as ES modules
// under /sdk/ so a page can `import … from "/sdk/index.js"`.
const SDK_FILES: [(&str, &str); 4] = [
    ("/sdk/index.js", include_str!("../clients/js/src/index.js")),
    ("/sdk/client.js", include_str!("../clients/js/src/client.js")),
    ("/sdk/core.js", include_str!("../clients/js/src/core.js")),
    ("/sdk/webrtc.js", include_str!("../clients/js/src/webrtc.js")),
];

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn route(req: Request<Incoming>, app: Arc<App>, peer: SocketAddr) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match req.uri().path() {
        "/ws" => {
            let client = front::client_ip(peer.ip(), req.headers(), &app.admission.trusted);
            upgrade(req, app, client)
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&app).await,
        "/metrics" | "/api/stats" if !app.public_metrics => {
            text(StatusCode::NOT_FOUND, "not found\n")
        }
        "/metrics" => metrics_page(&app.metrics),
        "/api/stats" => stats(&app).await,
        "/api/trending" => trending(req.uri().query(), &app).await,
        "/api/client-config" => client_config(&req, &app),
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        path => match SDK_FILES.iter().find(|(p, _)| *p == path) {
            Some((_, body)) => asset(body, "text/javascript; charset=utf-8"),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `/metrics`: Prometheus text (also served on the admin address).
pub fn metrics_page(metrics: &PrometheusHandle) -> Response<Body> {
    crate::telemetry::collect_process();
    let mut r = text(StatusCode::OK, metrics.render());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// `GET /api/client-config`: what a client needs before it connects, chiefly the
/// ICE servers for calls. TURN credentials name a user, so with a TURN secret set
/// the request must identify one the way `/ws` does (token, or `?user=` where
/// anonymous mode is on); otherwise 401.
fn client_config(req: &Request<Incoming>, app: &App) -> Response<Body> {
    let cfg = &app.engine.shared.config;
    let user = match app.auth.identify(req.uri().query(), req.headers()) {
        Ok(identity) => Some(identity.user.to_string()),
        Err(_) if cfg.turn_secret.is_none() => None,
        Err(e) => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": e.to_string()}),
            )
        }
    };
    let ice = rendezvous_actors::ice::for_user(cfg, user.as_deref().unwrap_or_default());
    json_response(
        StatusCode::OK,
        json!({
            "protocol": rendezvous_actors::protocol::PROTOCOL_VERSION,
            "node": cfg.node_id,
            "user_id": user,
            "ice_servers": ice,
        }),
    )
}

async fn readyz(app: &App) -> Response<Body> {
    if app.draining.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match app.engine.shared.bridge.health().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn stats(app: &App) -> Response<Body> {
    json_response(StatusCode::OK, stats_json(&app.engine).await)
}

/// What `/api/stats` answers (the admin API's overview starts from it).
pub async fn stats_json(engine: &Engine) -> serde_json::Value {
    let shared = &engine.shared;
    let nodes = shared.bridge.nodes().await.unwrap_or(1);
    let trending = shared.bridge.trending(10).await.unwrap_or_default();
    json!({
        "node": shared.config.node_id,
        "online": shared.registry.len(),
        "searching": shared.searching.load(Ordering::Relaxed),
        "rooms": engine.rooms.directory.len(),
        "nodes": nodes,
        "trending": trending_json(trending),
        "uptime_secs": shared.started_at.elapsed().as_secs(),
    })
}

fn trending_json(top: Vec<(String, u64)>) -> serde_json::Value {
    top.into_iter().map(|(interest, score)| json!({"interest": interest, "score": score})).collect()
}

async fn trending(query: Option<&str>, app: &App) -> Response<Body> {
    let mut limit = 10usize;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "limit" {
            match v.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => limit = n,
                _ => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "limit must be a whole number from 1 to 100"}),
                    )
                }
            }
        }
    }
    match app.engine.shared.bridge.trending(limit).await {
        Ok(top) => json_response(StatusCode::OK, trending_json(top)),
        Err(e) => json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e.to_string()})),
    }
}

fn refuse(status: StatusCode, reason: &'static str, message: String) -> Response<Body> {
    metrics::counter!(m::HANDSHAKES_REFUSED_TOTAL, "reason" => reason).increment(1);
    json_response(status, json!({"error": reason, "message": message}))
}

/// Validate the handshake, authenticate, answer 101 and start the session once
/// hyper hands over the upgraded stream. `client` is the client's address (the TCP
/// peer, or whom a trusted proxy names): what the per-IP session cap counts.
fn upgrade(mut req: Request<Incoming>, app: Arc<App>, client: IpAddr) -> Response<Body> {
    let headers = req.headers();
    let wants_ws = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| wants_ws && version_ok) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "expected a WebSocket upgrade (version 13)".into(),
        );
    };
    if let Some(origin) = headers.get(ORIGIN) {
        let allowed = app.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|o| app.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this Origin may not open a session here".into(),
            );
        }
    }
    let shared = &app.engine.shared;
    let per_ip = shared.config.max_sessions_per_ip;
    let full = if shared.registry.len() >= app.session_cap {
        Some("node is full; connect to another node")
    } else if per_ip > 0 && shared.per_ip.get(&client).is_some_and(|n| *n >= per_ip) {
        Some("too many sessions from this address")
    } else {
        None
    };
    // Browsers (which always send `Origin`) cannot read the status of a refused
    // upgrade, only a close code: them we accept, then close with 4001, 1012 or
    // 1013 and say why in an error frame. Other clients get the HTTP status.
    let browser = headers.contains_key(ORIGIN);
    if let Some(why) = full {
        if !browser {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "full", why.into());
        }
    }
    let outcome = match app.auth.identify(req.uri().query(), headers) {
        Err(e) if browser => Err((close::UNAUTHORIZED, ErrorCode::Unauthorized, e.to_string())),
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()),
        Ok(_) if app.draining.load(Ordering::Acquire) && browser => Err((
            close::RESTARTING,
            ErrorCode::Unavailable,
            "node is draining; connect to another node".to_owned(),
        )),
        Ok(_) if app.draining.load(Ordering::Acquire) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "node is draining; connect to another node".into(),
            )
        }
        Ok(_) if full.is_some() => Err((
            close::TRY_AGAIN_LATER,
            ErrorCode::Unavailable,
            full.unwrap_or_default().to_owned(),
        )),
        Ok(id) => match shared.moderation.banned(id.user.as_str(), Some(client)) {
            Some(ban) if browser => Err((
                close::BANNED,
                ErrorCode::Unauthorized,
                rendezvous_actors::session::banned_message(ban.until_ms),
            )),
            Some(ban) => {
                metrics::counter!(m::BANNED_REFUSALS_TOTAL, "at" => "connect").increment(1);
                return refuse(
                    StatusCode::FORBIDDEN,
                    "banned",
                    rendezvous_actors::session::banned_message(ban.until_ms),
                );
            }
            None => Ok(id),
        },
    };
    if let Err((close_code, _, _)) = &outcome {
        let reason = match *close_code {
            close::UNAUTHORIZED => "unauthorized",
            close::BANNED => {
                metrics::counter!(m::BANNED_REFUSALS_TOTAL, "at" => "connect").increment(1);
                "banned"
            }
            close::TRY_AGAIN_LATER => "full",
            _ => "draining",
        };
        metrics::counter!(m::HANDSHAKES_REFUSED_TOTAL, "reason" => reason).increment(1);
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = app.ws_config;
    let engine = app.engine.clone();
    actix_rt::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return warn!(%client, error = %e, "websocket upgrade failed"),
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match outcome {
            Ok(user) => {
                SessionActor::start_from(ws, user, engine, Some(client));
            }
            Err((close_code, code, message)) => {
                // Draining or full: worth retrying (elsewhere, or in a while).
                let retry_after_ms = (code == ErrorCode::Unavailable).then_some(1_000);
                let frame = ServerFrame::Error {
                    code,
                    message,
                    retry_after_ms,
                    action: None,
                    client_msg_id: None,
                };
                let bye =
                    CloseFrame { code: CloseCode::from(close_code), reason: code.as_str().into() };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    ws.send(Message::Text(frame.to_json().into())).await?;
                    ws.close(Some(bye)).await
                })
                .await;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
