//! Talking to a node's admin API (`--admin-bind`, `--admin-token`) as an operator:
//! requests with or without the token, JSON in and out.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Node;
use crate::search::Search;

use crate::http::raw_exchange;

/// The token test nodes are started with ([`ADMIN_ARGS`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// `Node::spawn` arguments that serve the admin API on a free loopback port.
pub const ADMIN_ARGS: &[(&str, &str)] =
    &[("--admin-token", ADMIN_TOKEN), ("--admin-bind", "127.0.0.1:0")];

/// One request (`Connection: close`) with `token` as the Bearer token, if any, and
/// `body` as JSON, if any: (status, body text).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let (status, _, text) = raw_exchange(addr, &req).await;
    (status, text)
}

fn json(addr: SocketAddr, path: &str, status: u16, text: &str) -> Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{path} on {addr} ({status}): not JSON ({e}): {text}"))
}

/// `GET path` with the token; asserts 200 and returns the JSON.
pub async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, text) = request(addr, "GET", path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "GET {path} on admin {addr}: {text}");
    json(addr, path, status, &text)
}

/// `POST path` with the token and a JSON body: (status, JSON answer).
pub async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = request(addr, "POST", path, Some(ADMIN_TOKEN), Some(&body)).await;
    (status, json(addr, path, status, &text))
}

/// `a` and `b`, kept apart by a block, search together on `node`: neither hears
/// of a match for longer than the test nodes' ladder takes to match anyone (900 ms,
/// plus ticks and a hop through Redis); `third` then matches one of them.
pub async fn kept_apart(node: &Node, a: &str, b: &str, third: &str) {
    /// Longer than [`crate::cluster::NODE_DEFAULTS`]'s ladder takes to match anyone.
    const PAST_FULL_RELAX: Duration = Duration::from_millis(2_000);
    let s = Search::AMID_PRESENCE;
    let mut ca = node.client(a).await;
    let mut cb = node.client(b).await;
    s.search(&mut ca, &["chess"], json!({})).await;
    s.search(&mut cb, &["chess"], json!({})).await;
    s.quiet(&mut ca, PAST_FULL_RELAX).await;
    let mut cc = node.client(third).await;
    s.search(&mut cc, &["chess"], json!({})).await;
    let found = s.expect_match(&mut cc).await;
    assert!(found.members.iter().any(|m| m == a || m == b), "{found:?}");
}
