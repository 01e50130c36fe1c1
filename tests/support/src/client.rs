//! [`Client`]: one protocol session as a test drives it, on the protocol crate's
//! client (the one the load tester uses). Whatever a test does not expect panics
//! with the user's name.

use std::time::Duration;

use rendezvous_protocol::client::{self as wire, RecvError, Ws};
use rendezvous_protocol::{ClientFrame, ServerFrame};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::Error as WsError;

pub use rendezvous_protocol::client::Ended;

/// How long a test waits for any one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A protocol client.
pub struct Client {
    pub ws: Ws,
    pub user_id: String,
    pub welcome: ServerFrame,
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
            let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
            req.headers_mut().insert(name, v.parse().expect("header value"));
        }
        let ws = match wire::connect(req).await {
            Ok(ws) => ws,
            Err(WsError::Http(resp)) => return Err(resp.status().as_u16()),
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
        self.send_raw(&v.to_string()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        wire::send_text(&mut self.ws, text).await.expect("send");
    }

    pub async fn send(&mut self, f: &ClientFrame) {
        wire::send(&mut self.ws, f).await.expect("send");
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
        match wire::recv(&mut self.ws, Instant::now() + wait).await {
            Ok(f) => Some(f),
            Err(RecvError::Timeout) => None,
            Err(e) => panic!("{}: {e}", self.user_id),
        }
    }

    /// Next frame as raw JSON (to check field names the typed frames hide).
    pub async fn recv_value(&mut self) -> Value {
        match wire::recv_text(&mut self.ws, Instant::now() + FRAME_TIMEOUT).await {
            Ok(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", self.user_id)),
            Err(RecvError::Timeout) => {
                panic!("{}: no frame within {FRAME_TIMEOUT:?}", self.user_id)
            }
            Err(e) => panic!("{}: {e}", self.user_id),
        }
    }

    /// The rooms the `welcome` listed.
    pub fn welcome_rooms(&self) -> Vec<String> {
        match &self.welcome {
            ServerFrame::Welcome { rooms, .. } => rooms.clone(),
            other => panic!("not a welcome: {other:?}"),
        }
    }

    /// Next server frame, however long it takes (for a reader that stops on a
    /// signal of its own).
    pub(crate) async fn recv_any(&mut self) -> ServerFrame {
        const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
        match self.try_recv(FOREVER).await {
            Some(f) => f,
            None => panic!("{}: no frame within a year", self.user_id),
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
        match wire::closed(&mut self.ws, Instant::now() + FRAME_TIMEOUT).await {
            Some(end) => end,
            None => panic!("{}: not closed within {FRAME_TIMEOUT:?}", self.user_id),
        }
    }

    pub async fn close(mut self) {
        let _ = wire::close(&mut self.ws, rendezvous_protocol::close::NORMAL, "bye").await;
    }
}

/// The room of a `match_found`.
pub fn room_of(f: &ServerFrame) -> String {
    match f {
        ServerFrame::MatchFound { room_id, .. } => room_id.clone(),
        other => panic!("expected match_found, got {other:?}"),
    }
}

/// Two clients on `server` matched with each other on chess and go; returns them
/// and the room id.
pub async fn matched_pair(
    server: &crate::TestServer,
    a: &str,
    b: &str,
) -> (Client, Client, String) {
    matched_pair_on(server, a, b, &["chess", "go"]).await
}

/// [`matched_pair`] on `interests`.
pub async fn matched_pair_on(
    server: &crate::TestServer,
    a: &str,
    b: &str,
    interests: &[&str],
) -> (Client, Client, String) {
    let mut ca = server.client(a).await;
    let mut cb = server.client(b).await;
    ca.find_match(interests).await;
    assert_eq!(ca.recv().await.kind(), "searching");
    cb.find_match(interests).await;
    assert_eq!(cb.recv().await.kind(), "searching");
    let ra = room_of(&ca.recv_kind("match_found").await);
    let rb = room_of(&cb.recv_kind("match_found").await);
    assert_eq!(ra, rb);
    (ca, cb, ra)
}
