//! Plain HTTP over a raw socket, as a client that owes the server nothing: exactly
//! the bytes a test writes, the whole answer read until the server closes; and
//! waits on what `/api/stats` and the other endpoints answer.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::FRAME_TIMEOUT;

/// `GET path` (HTTP/1.1, `Connection: close`): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw_request(addr, &req).await
}

/// Send a raw HTTP/1.1 request (it must ask for `Connection: close`); (status, body).
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, _, body) = raw_exchange(addr, request).await;
    (status, body)
}

/// Like [`raw_request`], also returning the response head (status line, headers).
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    parse_response(&buf)
}

/// A whole HTTP response: (status, head, body); status 0 when there is none.
pub fn parse_response(bytes: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(bytes);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// How often the waits below ask again.
const POLL: Duration = Duration::from_millis(20);

/// `GET path` as JSON (asserts 200).
pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path} on {addr}: {body}");
    serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: not JSON ({e}): {body}"))
}

/// `GET /api/stats` as JSON (asserts 200).
pub async fn stats(addr: SocketAddr) -> Value {
    get_json(addr, "/api/stats").await
}

/// Poll `/api/stats` until `pred` holds; the stats that satisfied it. Panics
/// after `within` with the last stats.
pub async fn wait_stats(
    addr: SocketAddr,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = stats(addr).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{addr}: `{what}` not seen within {within:?}: {v}");
        tokio::time::sleep(POLL).await;
    }
}

/// Poll `GET path` until it answers `want`. Panics after `within` with the last
/// answer.
pub async fn wait_status(addr: SocketAddr, path: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http_get(addr, path).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: {path} still {status} (want {want}) after {within:?}: {body}"
        );
        tokio::time::sleep(POLL).await;
    }
}
