//! Capacity limits: sessions per node and per IP, rooms per user, members per
//! public room, and the Origin allow-list. Each refusal is clear (HTTP status for
//! programs, a close code for browsers, an error frame inside a session) and
//! leaves everyone else alone.

use rendezvous_test_support as common;

use std::time::Duration;

use common::*;
use rendezvous_actors::protocol::{ErrorCode, ServerFrame};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn expect_error(c: &mut Client, want: ErrorCode) {
    loop {
        match c.recv().await {
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, want);
                return;
            }
            ServerFrame::Presence { .. } => continue,
            other => panic!("expected error {want:?}, got {other:?}"),
        }
    }
}

/// Connect as a browser would (with an `Origin`), returning the socket.
async fn browser(server: &TestServer, user: &str, origin: &str) -> Result<Client, u16> {
    let mut req = server.ws_url(&format!("user={user}")).into_client_request().expect("request");
    req.headers_mut().insert("Origin", origin.parse().expect("origin"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            Ok(Client { ws, user_id: user.into(), welcome: ServerFrame::NoMatchFound {} })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// Past `max_sessions_per_ip`, connections from that address get 503; a slot that
/// frees up is usable again; sessions already open are untouched.
#[tokio::test]
async fn sessions_per_ip_are_capped() {
    let server = TestServer::start_with(|e| e.max_sessions_per_ip = 3);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(server.client(&format!("u{i}")).await);
    }
    let refused = Client::try_connect(&server.ws_url("user=u3"), &[]).await.err();
    assert_eq!(refused, Some(503));
    let first = open.remove(0);
    first.close().await;
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = Client::try_connect(&server.ws_url("user=u3"), &[]).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a freed slot is usable again");
    open[0].send_json(json!({"action":"cancel_match"})).await;
    assert_eq!(open[0].recv().await.kind(), "match_cancelled");
}

/// Past `max_sessions` the node refuses new sessions: 503 for programs, close 1013
/// with an error frame for browsers.
#[tokio::test]
async fn a_full_node_refuses_new_sessions_cleanly() {
    let server = TestServer::start_with(|e| e.max_sessions = 2);
    let [_a, _b] = server.clients(["a", "b"]).await;
    assert_eq!(Client::try_connect(&server.ws_url("user=c"), &[]).await.err(), Some(503));
    let mut c = browser(&server, "c", "http://127.0.0.1").await.expect("upgraded");
    match c.try_recv(Duration::from_secs(5)).await {
        Some(ServerFrame::Error { .. }) => {}
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(c.closed().await, Ended::Closed(1013));
    let (status, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("rendezvous_handshakes_refused_total{reason=\"full\"}"), "{body}");
}

/// A user may hold at most `max_rooms_per_user` seats: joining one more, or
/// searching for a new match room, is `too_large`; rejoining a room they are in
/// is fine.
#[tokio::test]
async fn rooms_per_user_are_capped() {
    let server = TestServer::start_with(|e| e.max_rooms_per_user = 2);
    let mut u = server.client("u").await;
    for room in ["pub:a", "pub:b"] {
        u.send_json(json!({"action":"join","room_id":room})).await;
        assert_eq!(u.recv_kind("joined").await.kind(), "joined");
    }
    u.send_json(json!({"action":"join","room_id":"pub:c"})).await;
    expect_error(&mut u, ErrorCode::TooLarge).await;
    u.send_json(json!({"action":"join","room_id":"pub:a"})).await;
    assert_eq!(u.recv_kind("joined").await.kind(), "joined");
    u.find_match(&["chess"]).await;
    expect_error(&mut u, ErrorCode::TooLarge).await;
    u.send_json(json!({"action":"leave","room_id":"pub:b"})).await;
    assert_eq!(u.recv_kind("left").await.kind(), "left");
    u.find_match(&["chess"]).await;
    assert_eq!(u.recv_kind("searching").await.kind(), "searching");
}

/// A public room holds at most `max_public_room_members`; the next joiner gets
/// `too_large` and the members carry on.
#[tokio::test]
async fn public_rooms_are_capped() {
    let server = TestServer::start_with(|e| e.max_public_room_members = 2);
    let [mut a, mut b, mut c] = server.clients(["a", "b", "c"]).await;
    for x in [&mut a, &mut b] {
        x.send_json(json!({"action":"join","room_id":"pub:lobby"})).await;
        assert_eq!(x.recv_kind("joined").await.kind(), "joined");
    }
    c.send_json(json!({"action":"join","room_id":"pub:lobby"})).await;
    expect_error(&mut c, ErrorCode::TooLarge).await;
    a.send_json(json!({"action":"send","room_id":"pub:lobby","text":"still here"})).await;
    assert_eq!(b.recv_kind("message").await.kind(), "message");
}

/// With an Origin allow-list, a page from another origin cannot open a session
/// (403); listed origins and non-browser clients (no Origin) can.
#[tokio::test]
async fn the_origin_allow_list_keeps_other_sites_out() {
    let mut config = test_config();
    config.allowed_origins = vec!["https://chat.example".into()];
    let server = TestServer::start(config);
    assert_eq!(browser(&server, "evil", "https://evil.example").await.err(), Some(403));
    let mut good = browser(&server, "good", "https://chat.example").await.expect("allowed");
    assert_eq!(good.recv().await.kind(), "welcome");
    let _plain = server.client("plain").await;
}
