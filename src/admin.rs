//! The admin API and page, on their own listener (`--admin-bind`, loopback by
//! default), apart from the port clients use. Started only when `--admin-token`
//! is set: with no token there is nothing to check a request against, so the safe
//! choice is to serve nothing (the server logs that it is off).
//!
//! Every API path and `/metrics` need `Authorization: Bearer TOKEN` (compared in
//! constant time); without it, or with another token, the answer is 401. The
//! page's three static files (`/`, `/admin.js`, `/admin.css`, compiled in like the
//! demo client) are served without it: they hold no data, and the page asks the
//! operator for the token and sends it with every call. Browsers never attach a
//! Bearer header on their own, so another site cannot make an operator's browser
//! act here (no cookies, no CORS answers).
//!
//! Lists of sessions and rooms are this node's; bans and reports are the
//! cluster's (see [`rendezvous_actors::admin`]). The API:
//!
//! | method and path | body / query | answer |
//! |---|---|---|
//! | `GET /api/overview` | | `/api/stats` plus `open_reports`, `bans`, `pools` |
//! | `GET /api/sessions` | `?find=TEXT&limit=N` | this node's sessions |
//! | `GET /api/rooms` | `?find=TEXT&limit=N` | this node's rooms and their local members |
//! | `GET /api/pools` | | searches waiting per language |
//! | `GET /api/reports` | `?status=open\|all` | reports, newest first, with evidence |
//! | `POST /api/reports/resolve` | `{"report_id","outcome"?}` | the resolved report |
//! | `GET /api/bans` | | bans in force |
//! | `POST /api/bans` | `{"user_id","duration_secs","ip"?,"reason"?}` | the ban |
//! | `POST /api/unban` | `{"user_id"}` | `{"ok":true}` |
//! | `POST /api/kick` | `{"user_id"}` | `{"ok":true}` |
//! | `POST /api/rooms/close` | `{"room_id"}` | `{"ok":true}` |

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use rendezvous_actors::admin::{Admin, AdminError};
use rendezvous_actors::metrics as m;
use rendezvous_actors::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::http::{json_response, metrics_page, stats_json, text, Body};

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Admin connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;
/// Longest life of one admin connection (a keep-alive one is closed after it;
/// the page's next poll opens a new one).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Most rows of a list answer, whatever `limit` asks.
const MAX_LIST: usize = 1_000;

const INDEX_HTML: &str = include_str!("web/admin/index.html");
const ADMIN_JS: &str = include_str!("web/admin/admin.js");
const ADMIN_CSS: &str = include_str!("web/admin/admin.css");

/// What every admin request needs.
pub struct AdminApp {
    pub engine: Engine,
    pub admin: Admin,
    pub metrics: PrometheusHandle,
    token: String,
}

impl AdminApp {
    pub fn new(engine: Engine, metrics: PrometheusHandle, token: String) -> Self {
        Self { admin: engine.admin(), engine, metrics, token }
    }

    /// True when the request carries `Authorization: Bearer <the token>`.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        given.trim().as_bytes().ct_eq(self.token.as_bytes()).into()
    }
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Arc<AdminApp>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let app = app.clone();
                    let slots = slots.clone();
                    actix_rt::spawn(async move {
                        let Ok(_slot) = slots.acquire_owned().await else { return };
                        let svc = service_fn(move |req| {
                            let app = app.clone();
                            async move { Ok::<_, Infallible>(route(req, &app, peer).await) }
                        });
                        let conn = http1::Builder::new()
                            .max_buf_size(MAX_BODY_BYTES.max(8192))
                            .serve_connection(TokioIo::new(stream), svc);
                        // A timeout ends a connection past its lifetime; not an error.
                        if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                            debug!(%peer, error = %e, "admin connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!("admin API stopped");
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, json!({"error": message.into()}))
}

fn unauthorized() -> Response<Body> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "send the admin token as `Authorization: Bearer TOKEN` (--admin-token)",
    );
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn admin_error(e: AdminError) -> Response<Body> {
    match e {
        AdminError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        e @ AdminError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

fn ok() -> Response<Body> {
    json_response(StatusCode::OK, json!({"ok": true}))
}

async fn route(req: Request<Incoming>, app: &AdminApp, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/" | "/index.html") => {
            return asset(INDEX_HTML, "text/html; charset=utf-8")
        }
        (&Method::GET, "/admin.js") => return asset(ADMIN_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/admin.css") => return asset(ADMIN_CSS, "text/css; charset=utf-8"),
        _ => {}
    }
    if !app.authorized(&req) {
        debug!(%peer, %path, "admin request without the token");
        return unauthorized();
    }
    let query = Query::parse(req.uri().query());
    match (method, path.as_str()) {
        (Method::GET, "/metrics") => metrics_page(&app.metrics),
        (Method::GET, "/api/overview") => overview(app).await,
        (Method::GET, "/api/sessions") => {
            json_response(StatusCode::OK, json!(app.admin.sessions(&query.find, query.limit)))
        }
        (Method::GET, "/api/rooms") => {
            json_response(StatusCode::OK, json!(app.admin.rooms(&query.find, query.limit)))
        }
        (Method::GET, "/api/pools") => json_response(StatusCode::OK, pools(&app.metrics)),
        (Method::GET, "/api/reports") => {
            json_response(StatusCode::OK, json!(app.admin.reports(query.status != "all")))
        }
        (Method::GET, "/api/bans") => json_response(StatusCode::OK, json!(app.admin.bans())),
        (Method::POST, "/api/reports/resolve") => match body::<ResolveBody>(req).await {
            Ok(b) => match app.admin.resolve(&b.report_id, b.outcome) {
                Ok(r) => json_response(StatusCode::OK, json!(r)),
                Err(e) => admin_error(e),
            },
            Err(r) => r,
        },
        (Method::POST, "/api/bans") => match body::<BanBody>(req).await {
            Ok(b) => {
                let ip = match b.ip.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                    None => None,
                    Some(s) => match s.parse::<IpAddr>() {
                        Ok(ip) => Some(ip),
                        Err(_) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("ip `{s}` is not an IP address"),
                            )
                        }
                    },
                };
                let duration = Duration::from_secs(b.duration_secs);
                match app.admin.ban(&b.user_id, ip, duration, b.reason) {
                    Ok(ban) => json_response(StatusCode::OK, json!(ban)),
                    Err(e) => admin_error(e),
                }
            }
            Err(r) => r,
        },
        (Method::POST, "/api/unban") => match body::<UserBody>(req).await {
            Ok(b) => app.admin.unban(&b.user_id).map_or_else(admin_error, |()| ok()),
            Err(r) => r,
        },
        (Method::POST, "/api/kick") => match body::<UserBody>(req).await {
            Ok(b) => app.admin.kick(&b.user_id).map_or_else(admin_error, |()| ok()),
            Err(r) => r,
        },
        (Method::POST, "/api/rooms/close") => match body::<RoomBody>(req).await {
            Ok(b) => app.admin.close_room(&b.room_id).map_or_else(admin_error, |()| ok()),
            Err(r) => r,
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn overview(app: &AdminApp) -> Response<Body> {
    let mut v = stats_json(&app.engine).await;
    if let Some(o) = v.as_object_mut() {
        o.insert("open_reports".into(), json!(app.admin.open_reports()));
        o.insert("bans".into(), json!(app.admin.bans().len()));
        o.insert("pools".into(), pools(&app.metrics));
    }
    json_response(StatusCode::OK, v)
}

/// Searches waiting per language, as this node's `rendezvous_pool_waiting_by_language`
/// gauge counts them (its own searches and its replicas of other nodes').
fn pools(metrics: &PrometheusHandle) -> Value {
    let prefix = format!("{}{{", m::POOL_WAITING_BY_LANGUAGE);
    let mut out = serde_json::Map::new();
    for line in metrics.render().lines() {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some(lang) = rest.split("language=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let Some(n) = rest.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) else {
            continue;
        };
        out.insert(lang.to_owned(), json!(n as u64));
    }
    Value::Object(out)
}

/// The query parameters the list endpoints take.
struct Query {
    find: String,
    limit: usize,
    status: String,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut q = Query { find: String::new(), limit: 200, status: "open".into() };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "find" => q.find = v.into_owned(),
                "limit" => q.limit = v.parse().unwrap_or(200).clamp(1, MAX_LIST),
                "status" => q.status = v.into_owned(),
                _ => {}
            }
        }
        q
    }
}

#[derive(Deserialize)]
struct UserBody {
    user_id: String,
}

#[derive(Deserialize)]
struct RoomBody {
    room_id: String,
}

#[derive(Deserialize)]
struct BanBody {
    user_id: String,
    duration_secs: u64,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct ResolveBody {
    report_id: String,
    #[serde(default)]
    outcome: String,
}

/// Read a JSON body of at most [`MAX_BODY_BYTES`]; a 400 (or 413) answer when it
/// is not one.
async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body unreadable or over {MAX_BODY_BYTES} bytes: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body is not the expected JSON: {e}")))
}
