//! What a client SDK relies on to recover by itself, against real servers: the
//! protocol version and room details in `welcome`, `history` telling a trimmed gap
//! from "nothing missed", error frames naming the failed `client_msg_id`, the
//! retryable `unavailable` code, and a resent `send` stored once. Each on one node
//! (an in-process server) and, where the cluster stores the facts, on two
//! `rendezvous` processes joined through a private `redis-server`.

use rendezvous_test_support as common;

use std::time::Duration;

use common::chat::*;
use common::cluster::*;
use common::search::pair;
use common::{matched_pair, Client, TestServer};
use rendezvous_actors::protocol::client as wire;
use rendezvous_actors::protocol::{
    ChatMessage, ErrorCode, HistoryItem, PresenceStatus, RoomDetail, RoomKind, ServerFrame,
};
use serde_json::json;

// ---------------------------------------------------------------- helpers

/// `history` after `after_seq`: the messages and the frame's `first_seq` / `last_seq`.
async fn history_page(
    c: &mut Client,
    room: &str,
    after_seq: u64,
) -> (Vec<ChatMessage>, Option<u64>, Option<u64>) {
    c.send_json(history_request(room, after_seq, None)).await;
    match next(c).await {
        ServerFrame::History { room_id, messages, first_seq, last_seq } => {
            assert_eq!(room_id, room);
            (messages.into_iter().map(|HistoryItem::Message(m)| m).collect(), first_seq, last_seq)
        }
        other => panic!("{}: expected history, got {other:?}", c.user_id),
    }
}

/// The welcome's `protocol` and `room_details` (members sorted).
fn welcome_details(c: &Client) -> (u32, Vec<RoomDetail>) {
    match &c.welcome {
        ServerFrame::Welcome { protocol, room_details, .. } => {
            let mut details = room_details.clone();
            for d in &mut details {
                d.members.sort();
            }
            (*protocol, details)
        }
        other => panic!("not a welcome: {other:?}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- welcome

/// A fresh session's `welcome` says `"protocol":1` and lists no room details; a
/// reconnect within the grace lists each kept room with its kind, its members and
/// its last seq, and the messages stored while the user was away follow through
/// `history` after that seq.
#[tokio::test]
async fn welcome_carries_the_protocol_and_the_members_of_kept_rooms() {
    let server = TestServer::start_with(|_| {});
    let mut fresh = server.client("carol").await;
    assert_eq!(welcome_details(&fresh), (1, Vec::new()));
    // The raw frame, as a client in another language reads it.
    let mut raw = wire::connect(server.ws_url("user=dave")).await.expect("connect");
    let deadline = tokio::time::Instant::now() + common::FRAME_TIMEOUT;
    let text = wire::recv_text(&mut raw, deadline).await.expect("welcome");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (&v["type"], &v["protocol"], &v["room_details"]),
        (&json!("welcome"), &json!(1), &json!([])),
        "{text}"
    );

    let (a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    send_text(&mut b, &room, "one", "b1").await;
    let m1 = sent(&mut b, &room, "b1").await;
    drop(a);
    expect_presence(&mut b, &room, "alice", PresenceStatus::Offline).await;
    send_text(&mut b, &room, "two", "b2").await;
    let m2 = sent(&mut b, &room, "b2").await;

    let mut a = server.client("alice").await;
    assert_eq!(a.welcome_rooms(), vec![room.clone()]);
    let (protocol, details) = welcome_details(&a);
    assert_eq!(protocol, 1);
    assert_eq!(
        details,
        vec![RoomDetail {
            room_id: room.clone(),
            kind: RoomKind::Match,
            members: strings(&["alice", "bob"]),
            last_seq: 2,
        }]
    );
    let (missed, first_seq, last_seq) = history_page(&mut a, &room, 0).await;
    assert_eq!(missed, vec![m1, m2]);
    assert_eq!((first_seq, last_seq), (Some(1), Some(2)));

    // A public room is listed with its kind too.
    fresh.send_json(json!({"action":"join","room_id":"pub:lobby"})).await;
    assert_eq!(next(&mut fresh).await.kind(), "joined");
    drop(fresh);
    let again = server.client("carol").await;
    let (_, details) = welcome_details(&again);
    assert_eq!(details.len(), 1, "{details:?}");
    assert_eq!(
        (details[0].room_id.as_str(), details[0].kind, &details[0].members),
        ("pub:lobby", RoomKind::Public, &strings(&["carol"]))
    );
}

// ---------------------------------------------------------------- history

/// One node keeps `history_len` messages per room: `history` from the start says
/// the oldest it still has (`first_seq`), so the client sees that 1 and 2 are lost
/// for good, and an answer past the gap says nothing was lost.
#[tokio::test]
async fn history_on_one_node_says_where_the_trimmed_gap_ends() {
    let server = TestServer::start_with(|e| e.history_len = 3);
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let (empty, first, last) = history_page(&mut a, &room, 0).await;
    assert!(empty.is_empty());
    assert_eq!((first, last), (Some(1), Some(0)), "nothing stored, nothing lost");
    for i in 1..=5 {
        exchange(&mut a, &mut b, &room, &format!("m{i}"), &format!("a{i}")).await;
    }
    let (kept, first, last) = history_page(&mut a, &room, 0).await;
    assert_eq!(seqs(&kept), [3, 4, 5]);
    assert_eq!((first, last), (Some(3), Some(5)), "1 and 2 were trimmed");
    let (tail, first, _) = history_page(&mut b, &room, 3).await;
    assert_eq!(seqs(&tail), [4, 5]);
    assert!(first.is_some_and(|f| f <= 4), "no gap after seq 3: first_seq {first:?}");
}

/// Through Redis the room's stream is capped in bytes: a member whose node's ring
/// does not reach back asks the stream, and `first_seq` is its oldest entry, so
/// the trimmed gap is visible there too. A member who reconnects to the other node
/// is welcomed with the room's members and last seq.
#[tokio::test]
async fn history_through_redis_says_where_the_trimmed_gap_ends() {
    // A ring of 2 on each node sends every longer request to the store, whose
    // stream keeps about 600 bytes of stored messages (a few of these).
    let cluster =
        Cluster::start_with(2, &[("--history-len", "2"), ("--history-bytes", "600")]).await;
    let (mut a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let text = "x".repeat(100);
    let mut all = Vec::new();
    for i in 1..=8 {
        all.push(exchange(&mut a, &mut b, &room, &text, &format!("a{i}")).await);
    }
    let (kept, first, last) = history_page(&mut b, &room, 0).await;
    assert_eq!(last, Some(8));
    let first = first.expect("first_seq");
    assert!(first > 1 && first <= 8, "the stream was trimmed: first_seq {first}");
    assert_eq!(seqs(&kept), (first..=8).collect::<Vec<_>>(), "from first_seq to the end");
    assert_eq!(kept, all[(first - 1) as usize..].to_vec());

    // bob moves to node-a within the grace: the welcome there describes the room.
    drop(b);
    expect_presence(&mut a, &room, "bob", PresenceStatus::Offline).await;
    let b = cluster.client(0, "bob").await;
    let (protocol, details) = welcome_details(&b);
    assert_eq!(protocol, 1);
    assert_eq!(
        details,
        vec![RoomDetail {
            room_id: room.clone(),
            kind: RoomKind::Match,
            members: strings(&["alice", "bob"]),
            last_seq: 8,
        }]
    );
}

// ---------------------------------------------------------------- errors

/// The next frame is an error with `code`, naming `action` and echoing
/// `client_msg_id`; its `retry_after_ms`.
async fn expect_error(
    c: &mut Client,
    code: ErrorCode,
    action: &str,
    client_msg_id: Option<&str>,
) -> Option<u64> {
    match next(c).await {
        ServerFrame::Error { code: got, action: a, client_msg_id: id, retry_after_ms, message } => {
            assert_eq!(
                (got, a.as_deref(), id.as_deref()),
                (code, Some(action), client_msg_id),
                "{}: {message}",
                c.user_id
            );
            retry_after_ms
        }
        other => panic!("{}: expected error {code:?}, got {other:?}", c.user_id),
    }
}

/// Every refused `send` names its `client_msg_id`, whether the session refused it
/// (bad field, over a limit, a frame that does not parse) or the room did (not a
/// member); a send without one gets an error without the field.
#[tokio::test]
async fn error_frames_echo_the_failed_client_msg_id() {
    let server = TestServer::start_with(|_| {});
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    send_text(&mut a, "r-none", "hi", "c1").await;
    expect_error(&mut a, ErrorCode::NotInRoom, "send", Some("c1")).await;
    send_text(&mut a, &room, &"x".repeat(4_097), "c2").await;
    expect_error(&mut a, ErrorCode::TooLarge, "send", Some("c2")).await;
    send_text(&mut a, &room, "   ", "c3").await;
    expect_error(&mut a, ErrorCode::BadRequest, "send", Some("c3")).await;
    // Not a valid frame (no text): the id is still found.
    a.send_json(json!({"action":"send","room_id":room,"client_msg_id":"c4"})).await;
    expect_error(&mut a, ErrorCode::BadRequest, "send", Some("c4")).await;
    // bob is in the room, but not in this one (the room answers, not the session).
    let (mut c, mut d, other_room) = matched_pair(&server, "carol", "dave").await;
    send_text(&mut b, &other_room, "hi", "c5").await;
    assert_eq!(b.recv_value().await["client_msg_id"], "c5");
    // No id, no field.
    a.send_json(json!({"action":"send","room_id":"r-none","text":"hi"})).await;
    let v = a.recv_value().await;
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("not_in_room")));
    assert!(v.get("client_msg_id").is_none(), "{v}");
    // The good sends still go through, and the errors stored nothing.
    exchange(&mut a, &mut b, &room, "fine", "c6").await;
    assert_eq!(seqs(&history(&mut a, &room, 0, None).await), [1]);
    exchange(&mut c, &mut d, &other_room, "fine", "c7").await;
}

/// While the cluster's Redis is down, a `send` in a room whose members are on two
/// nodes is refused with the retryable `unavailable` (with `retry_after_ms`,
/// naming the `client_msg_id`); sent again once Redis is back, it is stored.
#[tokio::test]
async fn a_send_while_redis_is_down_is_unavailable_then_goes_through() {
    let mut cluster = Cluster::start(2).await;
    let (mut a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    exchange(&mut a, &mut b, &room, "before", "a1").await;
    cluster.redis.stop();
    for node in &cluster.nodes {
        wait_http_status(node, "/readyz", 503, Duration::from_secs(10)).await;
    }
    send_text(&mut a, &room, "while down", "a2").await;
    let wait = expect_error(&mut a, ErrorCode::Unavailable, "send", Some("a2")).await;
    assert!(wait.is_some_and(|ms| ms > 0), "retry_after_ms {wait:?}");
    b.expect_silence(Duration::from_millis(300)).await;

    cluster.redis.restart();
    for node in &cluster.nodes {
        wait_http_status(node, "/readyz", 200, Duration::from_secs(20)).await;
    }
    let m = exchange(&mut a, &mut b, &room, "while down", "a2").await;
    assert_eq!(m.seq, 2);
}

// ---------------------------------------------------------------- duplicate sends

/// The next frame other than presence and messages up to `seq_at_most` is an
/// `ack` (a resend gets no second copy of its message); the ack's seq and msg_id.
async fn expect_ack(c: &mut Client, room: &str, client_msg_id: &str) -> (u64, String) {
    loop {
        match next(c).await {
            ServerFrame::Ack { client_msg_id: id, room_id, seq, msg_id } => {
                assert_eq!((id.as_deref(), room_id.as_str()), (Some(client_msg_id), room));
                return (seq, msg_id);
            }
            other => panic!("{}: expected ack of {client_msg_id}, got {other:?}", c.user_id),
        }
    }
}

/// On one node a `send` repeating a `client_msg_id` of the same user in the same
/// room gets the original `ack` (same seq and msg_id) and is neither stored nor
/// delivered again, also from a new session after a reconnect; another user's
/// send with the same id is their own message.
#[tokio::test]
async fn a_resent_send_is_stored_once_on_one_node() {
    let server = TestServer::start_with(|_| {});
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let m1 = exchange(&mut a, &mut b, &room, "hello", "x1").await;
    send_text(&mut a, &room, "hello", "x1").await;
    assert_eq!(expect_ack(&mut a, &room, "x1").await, (m1.seq, m1.msg_id.clone()));
    b.expect_silence(Duration::from_millis(300)).await;
    let m2 = exchange(&mut b, &mut a, &room, "mine", "x1").await;
    assert_eq!(m2.seq, 2, "bob's x1 is bob's own");

    drop(a);
    expect_presence(&mut b, &room, "alice", PresenceStatus::Offline).await;
    let mut a = server.client("alice").await;
    send_text(&mut a, &room, "hello", "x1").await;
    assert_eq!(expect_ack(&mut a, &room, "x1").await, (m1.seq, m1.msg_id.clone()));
    let stored = history(&mut a, &room, 0, None).await;
    assert_eq!(stored, vec![m1, m2]);
    expect_presence(&mut b, &room, "alice", PresenceStatus::Online).await;
    b.expect_silence(Duration::from_millis(300)).await;
}

/// Past `--dedup-max-per-room` the oldest ids are forgotten: a resend of one is
/// stored again (what the docs promise a client past the bound).
#[tokio::test]
async fn past_the_bound_a_forgotten_id_is_stored_again() {
    let server = TestServer::start_with(|e| e.dedup_max_per_room = 2);
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    for i in 1..=3 {
        exchange(&mut a, &mut b, &room, "m", &format!("y{i}")).await;
    }
    send_text(&mut a, &room, "m", "y3").await;
    assert_eq!(expect_ack(&mut a, &room, "y3").await.0, 3, "y3 is remembered");
    let again = exchange(&mut a, &mut b, &room, "m", "y1").await;
    assert_eq!(again.seq, 4, "y1 was forgotten: stored anew");
}

/// In a cluster the store remembers the ids: alice's send reaches node-a, which
/// stores it, but her connection drops before she reads the `ack`. She reconnects
/// to node-b and sends it again with the same `client_msg_id`: she gets the
/// original `ack`, bob gets the message once, and history holds it once.
#[tokio::test]
async fn a_resend_after_a_reconnect_to_the_other_node_is_stored_once() {
    let cluster = Cluster::start(2).await;
    let (mut a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let m1 = exchange(&mut a, &mut b, &room, "first", "a1").await;
    send_text(&mut a, &room, "lost ack", "a2").await;
    drop(a);
    let m2 = expect_message(&mut b).await;
    assert_eq!((m2.seq, m2.text.as_str()), (2, "lost ack"));
    expect_presence(&mut b, &room, "alice", PresenceStatus::Offline).await;

    let mut a = cluster.client(1, "alice").await;
    assert_eq!(a.welcome_rooms(), vec![room.clone()]);
    send_text(&mut a, &room, "lost ack", "a2").await;
    // The welcome may be followed by message 2 (stored while she was away).
    let ack = loop {
        match next(&mut a).await {
            ServerFrame::Message(m) if m == m2 => continue,
            ServerFrame::Ack { client_msg_id, seq, msg_id, .. } => {
                assert_eq!(client_msg_id.as_deref(), Some("a2"));
                break (seq, msg_id);
            }
            other => panic!("alice: expected the original ack, got {other:?}"),
        }
    };
    assert_eq!(ack, (m2.seq, m2.msg_id.clone()), "the original ack");
    assert_eq!(history(&mut a, &room, 0, None).await, vec![m1.clone(), m2.clone()]);
    expect_presence(&mut b, &room, "alice", PresenceStatus::Online).await;
    b.expect_silence(Duration::from_millis(500)).await;
    // And the room goes on with the next seq.
    let m3 = exchange(&mut a, &mut b, &room, "next", "a3").await;
    assert_eq!(m3.seq, 3);
}

// ---------------------------------------------------------------- bad input

/// `find_match` without `interests` is a `bad_request` naming the field; an empty
/// list is a search like any other.
#[tokio::test]
async fn find_match_without_interests_is_a_bad_request() {
    let server = TestServer::start_with(|_| {});
    let mut a = server.client("alice").await;
    a.send_json(json!({"action":"find_match","language":"en"})).await;
    let v = a.recv_value().await;
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("bad_request")));
    assert!(v["message"].as_str().is_some_and(|m| m.contains("interests")), "{v}");
    a.send_json(json!({"action":"find_match","interests":[]})).await;
    assert_eq!(a.recv().await.kind(), "searching");
}

// ---------------------------------------------------------------- ICE servers

/// With `--ice-servers` and `--turn-secret`, `welcome` and `/api/client-config`
/// hand each user the STUN URLs and the TURN URLs with time-limited credentials
/// for that user (`EXPIRY:USER`, HMAC-SHA1 of it under the secret); without them
/// the welcome has no `ice_servers` and the endpoint an empty list.
#[tokio::test]
async fn ice_servers_come_with_time_limited_turn_credentials() {
    let server = TestServer::start_with(|e| {
        e.ice_servers =
            vec!["stun:stun.example.org:3478".into(), "turn:turn.example.org:3478".into()];
        e.turn_secret = Some("north-secret".into());
        e.turn_ttl_secs = 600;
    });
    let a = server.client("alice").await;
    let ServerFrame::Welcome { ice_servers, .. } = &a.welcome else { unreachable!() };
    assert_eq!(ice_servers.len(), 2, "{ice_servers:?}");
    assert_eq!(ice_servers[0].urls, ["stun:stun.example.org:3478"]);
    assert_eq!(ice_servers[0].username, None);
    let turn = &ice_servers[1];
    assert_eq!(turn.urls, ["turn:turn.example.org:3478"]);
    let username = turn.username.clone().expect("TURN username");
    let (expiry, user) = username.split_once(':').expect("EXPIRY:USER");
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().expect("expiry in seconds");
    let now = now_ms() / 1_000;
    assert!(expiry.abs_diff(now + 600) < 60, "expires in about 600 s: {expiry} vs now {now}");
    let (_, credential) = rendezvous_actors::ice::turn_credentials("north-secret", "alice", expiry);
    assert_eq!(turn.credential.as_deref(), Some(credential.as_str()));

    let (status, body) = common::http_get(server.addr, "/api/client-config?user=bob").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!((v["protocol"].as_u64(), v["user_id"].as_str()), (Some(1), Some("bob")));
    assert_eq!(v["ice_servers"][0]["urls"], json!(["stun:stun.example.org:3478"]));
    let bob_user = v["ice_servers"][1]["username"].as_str().expect("username").to_owned();
    assert!(bob_user.ends_with(":bob"), "{bob_user}");

    let plain = TestServer::start_with(|_| {});
    let mut raw = wire::connect(plain.ws_url("user=carol")).await.expect("connect");
    let deadline = tokio::time::Instant::now() + common::FRAME_TIMEOUT;
    let text = wire::recv_text(&mut raw, deadline).await.expect("welcome");
    assert!(!text.contains("ice_servers"), "{text}");
    let (status, body) = common::http_get(plain.addr, "/api/client-config").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["ice_servers"], json!([]));
}
