//! Plain HTTP over a raw socket, as a client that owes the server nothing: exactly
//! the bytes a test writes, the whole answer read until the server closes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
