//! Test harness: a real server on `127.0.0.1:0` (the same `run` the binary calls, in
//! its own actix system thread) and real WebSocket clients speaking the protocol
//! types. No fixed ports, no sleeps to wait for state: clients wait for frames.
#![allow(dead_code)]
pub mod chat;
pub mod cluster;

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rendezvous::config::{AnonymousMode, Config};
use rendezvous_actors::protocol::{ClientFrame, ServerFrame};
use rendezvous_actors::LadderStep;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for tests: anonymous on loopback, a ladder that relaxes in well under
/// a second, short grace periods, and workers pinned to 2 like this machine.
pub fn test_config() -> Config {
    // Storm tests hold thousands of sockets (client and server side) in one process.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut c = Config { bind: "127.0.0.1:0".parse().expect("addr"), ..Config::default() };
    c.anonymous = AnonymousMode::Auto;
    let e = &mut c.engine;
    e.node_id = "test-node".into();
    e.workers = 2;
    e.pool_shards = 2;
    e.match_tick_ms = 20;
    e.ladder = vec![
        LadderStep { after_ms: 0, same_region: true, min_shared: 2 },
        LadderStep { after_ms: 300, same_region: true, min_shared: 1 },
        LadderStep { after_ms: 600, same_region: false, min_shared: 1 },
        LadderStep { after_ms: 900, same_region: false, min_shared: 0 },
    ];
    e.search_timeout_ms = 10_000;
    e.reconnect_grace_ms = 2_000;
    e.empty_room_grace_ms = 500;
    c
}

/// A running server; stopped (drained) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.bind).await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                rendezvous::run(listener, config, shutdown).await.expect("server run");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("server started");
        TestServer { addr, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(&format!("user={user}"))).await
    }

    /// Stop the server (drain) and wait for its thread.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plain HTTP GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client.
pub struct Client {
    pub ws: Ws,
    pub user_id: String,
    pub welcome: ServerFrame,
}

/// What ended a connection, as a test sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    /// Connect and read the `welcome` frame.
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url, &[]).await.expect("websocket connect")
    }

    /// Connect with extra headers; Err carries the HTTP status of a refused upgrade.
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(http_header_name(k), v.parse().expect("header value"));
        }
        let ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        let mut c = Client { ws, user_id: String::new(), welcome: ServerFrame::NoMatchFound {} };
        let welcome = c.recv().await;
        match &welcome {
            ServerFrame::Welcome { user_id, .. } => c.user_id = user_id.clone(),
            other => panic!("first frame was not welcome: {other:?}"),
        }
        c.welcome = welcome;
        Ok(c)
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned().into())).await.expect("send");
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        self.send_json(serde_json::to_value(f).expect("json")).await;
    }

    pub async fn find_match(&mut self, interests: &[&str]) {
        self.send_json(json!({"action": "find_match", "interests": interests})).await;
    }

    /// Next server frame (pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> ServerFrame {
        match self.try_recv(FRAME_TIMEOUT).await {
            Some(f) => f,
            None => panic!("{}: no frame within {FRAME_TIMEOUT:?}", self.user_id),
        }
    }

    /// Next server frame within `wait`, or None.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("bad frame {t}: {e}")),
                    )
                }
                Some(Ok(Message::Close(c))) => panic!("{}: closed: {c:?}", self.user_id),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: socket error {e}", self.user_id),
                None => panic!("{}: stream ended", self.user_id),
            }
        }
    }

    /// Skip frames until one of `kind` (`"match_found"`, …) arrives.
    pub async fn recv_kind(&mut self, kind: &str) -> ServerFrame {
        loop {
            let f = self.recv().await;
            if f.kind() == kind {
                return f;
            }
        }
    }

    /// Assert that no frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(f) = self.try_recv(wait).await {
            panic!("{}: expected silence, got {f:?}", self.user_id);
        }
    }

    /// Read until the server closes; the close code (or Dropped).
    pub async fn closed(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(FRAME_TIMEOUT, self.ws.next()).await {
                Err(_) => panic!("{}: not closed within {FRAME_TIMEOUT:?}", self.user_id),
                Ok(Some(Ok(Message::Close(Some(f))))) => return Ended::Closed(u16::from(f.code)),
                Ok(Some(Ok(Message::Close(None)))) => return Ended::Closed(1005),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Ended::Dropped,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

fn http_header_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name")
}

/// The room of a `match_found`.
pub fn room_of(f: &ServerFrame) -> String {
    match f {
        ServerFrame::MatchFound { room_id, .. } => room_id.clone(),
        other => panic!("expected match_found, got {other:?}"),
    }
}

/// Two clients matched with each other; returns them and the room id.
pub async fn matched_pair(server: &TestServer, a: &str, b: &str) -> (Client, Client, String) {
    let mut ca = server.client(a).await;
    let mut cb = server.client(b).await;
    ca.find_match(&["chess", "go"]).await;
    assert_eq!(ca.recv().await.kind(), "searching");
    cb.find_match(&["chess", "go"]).await;
    assert_eq!(cb.recv().await.kind(), "searching");
    let ra = room_of(&ca.recv_kind("match_found").await);
    let rb = room_of(&cb.recv_kind("match_found").await);
    assert_eq!(ra, rb);
    (ca, cb, ra)
}
