//! Bad input, end to end: every malformed, oversized, misdirected or abusive frame
//! gets the protocol's answer (an `error` frame with the right `code`, or the right
//! close code), the offending session keeps working whenever the protocol says it
//! should, and other users on the same server never notice.

use rendezvous_test_support as common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rendezvous_actors::protocol::{ErrorCode, HistoryItem, PresenceStatus, ServerFrame};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The next frame that is not a presence update; it must be an `error` of `code`.
/// Returns (message, retry_after_ms, action).
async fn recv_error(c: &mut Client, code: ErrorCode) -> (String, Option<u64>, Option<String>) {
    loop {
        match c.recv().await {
            ServerFrame::Presence { .. } => continue,
            ServerFrame::Error { code: got, message, retry_after_ms, action, .. } => {
                assert_eq!(got, code, "{}: wrong error code ({message})", c.user_id);
                return (message, retry_after_ms, action);
            }
            other => panic!("{}: expected error {code:?}, got {other:?}", c.user_id),
        }
    }
}

/// The next frame that is not a presence update; it must be of `kind`.
async fn recv_strict(c: &mut Client, kind: &str) -> ServerFrame {
    loop {
        let f = c.recv().await;
        match f {
            ServerFrame::Presence { .. } => continue,
            f if f.kind() == kind => return f,
            other => panic!("{}: expected {kind}, got {other:?}", c.user_id),
        }
    }
}

/// The next presence frame (skipping nothing else): (user, status).
async fn recv_strict_presence(c: &mut Client) -> (String, PresenceStatus) {
    match c.recv().await {
        ServerFrame::Presence { user_id, status, .. } => (user_id, status),
        other => panic!("{}: expected presence, got {other:?}", c.user_id),
    }
}

/// `from` posts `text` to `room`: `from` gets the ack and its own echo, `to` gets
/// the message as the very next non-presence frame. Proves both sessions work and
/// that nothing unexpected was queued for either of them.
async fn chat_ok(from: &mut Client, to: &mut Client, room: &str, text: &str) -> u64 {
    from.send_json(json!({"action":"send","room_id":room,"text":text,"client_msg_id":"ok"})).await;
    let seq = loop {
        match from.recv().await {
            ServerFrame::Ack { room_id, seq, client_msg_id, .. } => {
                assert_eq!(room_id, room);
                assert_eq!(client_msg_id.as_deref(), Some("ok"));
                break seq;
            }
            ServerFrame::Presence { .. } => continue,
            other => panic!("{}: expected ack, got {other:?}", from.user_id),
        }
    };
    // The sender gets its own message too, right after the ack.
    match recv_strict(from, "message").await {
        ServerFrame::Message(m) => {
            assert_eq!((m.seq, m.sender.as_str()), (seq, from.user_id.as_str()))
        }
        _ => unreachable!(),
    }
    match recv_strict(to, "message").await {
        ServerFrame::Message(m) => {
            assert_eq!(m.text, text);
            assert_eq!(m.sender, from.user_id);
            assert_eq!(m.seq, seq);
        }
        _ => unreachable!(),
    }
    seq
}

/// The next frame is `who` going offline.
async fn expect_offline(c: &mut Client, who: &str) {
    match recv_strict_presence(c).await {
        (user, PresenceStatus::Offline) => assert_eq!(user, who),
        other => panic!("expected {who} offline, got {other:?}"),
    }
}

/// `c` sends `text` to `room` and gets the ack and its own copy.
async fn send_acked(c: &mut Client, room: &str, text: &str) {
    c.send_json(json!({"action":"send","room_id":room,"text":text})).await;
    recv_strict(c, "ack").await;
    recv_strict(c, "message").await;
}

/// A server on `config` with two matched pairs: alice and bob (whom a test
/// provokes), carol and dave (bystanders who must not notice).
async fn two_pairs(
    config: rendezvous::config::Config,
) -> (TestServer, (Client, Client, String), (Client, Client, String)) {
    let server = TestServer::start(config);
    let ab = matched_pair(&server, "alice", "bob").await;
    let cd = matched_pair(&server, "carol", "dave").await;
    (server, ab, cd)
}

/// A server allowing 50 frames a second (burst 100, 20 strikes), a bystander pair
/// (carol and dave) and a flooder who has sent `frame` 500 times without reading.
async fn pipelined_flood(frame: Message) -> (TestServer, Client, (Client, Client, String)) {
    let server = TestServer::start_with(|e| {
        e.frames_per_second = 50;
        e.frames_burst = 100;
        e.flood_strikes = 20;
    });
    let mut flooder = server.client("flooder").await;
    let bystanders = matched_pair(&server, "carol", "dave").await;
    for _ in 0..500 {
        if flooder.ws.feed(frame.clone()).await.is_err() {
            break;
        }
    }
    let _ = flooder.ws.flush().await;
    (server, flooder, bystanders)
}

/// After `from` sent `text`: its ack and its own copy, then `to` gets the message.
async fn delivered(from: &mut Client, to: &mut Client, text: &str) {
    recv_strict(from, "ack").await;
    recv_strict(from, "message").await;
    match recv_strict(to, "message").await {
        ServerFrame::Message(m) => assert_eq!(m.text, text),
        _ => unreachable!(),
    }
}

/// A session with no search running answers `cancel_match` with `match_cancelled`.
async fn alive(c: &mut Client) {
    c.send_json(json!({"action":"cancel_match"})).await;
    recv_strict(c, "match_cancelled").await;
}

/// What a raw read of the socket saw.
#[derive(Debug)]
enum Event {
    Frame(ServerFrame),
    Closed(u16),
    Dropped,
}

async fn next_event(c: &mut Client) -> Event {
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, c.ws.next()).await {
            Err(_) => panic!("{}: nothing within {FRAME_TIMEOUT:?}", c.user_id),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Event::Frame(serde_json::from_str(t.as_str()).expect("server frame"))
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => return Event::Closed(u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) => return Event::Closed(1005),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Event::Dropped,
        }
    }
}

/// Connect with a tiny kernel receive buffer (set before connecting, which also
/// turns off receive-buffer autotuning), so a client that stops reading backs up
/// the server after a few hundred KiB rather than tens of MiB.
async fn connect_small_rcvbuf(server: &TestServer, user: &str) -> Client {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(server.addr).await.expect("tcp connect");
    let req = server.ws_url(&format!("user={user}")).into_client_request().expect("request");
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .expect("websocket handshake");
    let mut c = Client { ws, user_id: user.to_owned(), welcome: ServerFrame::NoMatchFound {} };
    let welcome = c.recv().await;
    assert!(matches!(&welcome, ServerFrame::Welcome { user_id, .. } if user_id == user));
    c.welcome = welcome;
    c
}

/// Match two already connected clients with each other; the room id.
async fn pair_up(a: &mut Client, b: &mut Client) -> String {
    a.find_match(&["chess", "go"]).await;
    recv_strict(a, "searching").await;
    b.find_match(&["chess", "go"]).await;
    recv_strict(b, "searching").await;
    let ra = room_of(&recv_strict(a, "match_found").await);
    let rb = room_of(&recv_strict(b, "match_found").await);
    assert_eq!(ra, rb);
    ra
}

/// Sum of every sample of metric `name` (all label sets) on `/metrics`; 0 if absent.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let (status, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `send` frame for `room` padded with an ignored field to exactly `len` bytes.
fn padded_frame(room: &str, len: usize) -> String {
    let base = json!({"action":"send","room_id":room,"text":"padded","pad":""}).to_string();
    assert!(base.len() <= len);
    let frame =
        json!({"action":"send","room_id":room,"text":"padded","pad":"x".repeat(len - base.len())})
            .to_string();
    assert_eq!(frame.len(), len);
    frame
}

// ---------------------------------------------------------------------------------
// Malformed frames
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_session_goes_on() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let bad: Vec<String> = vec![
        // Not JSON.
        r#"{"action":"send","room_id":"#.into(),
        "hello there".into(),
        "".into(),
        "\u{0}\u{1}".into(),
        // JSON, but not an object.
        "[1,2,3]".into(),
        r#""send""#.into(),
        "42".into(),
        "null".into(),
        "true".into(),
        // Unknown action / missing or mistyped action.
        r#"{"action":"dance"}"#.into(),
        r#"{"action":"SEND","room_id":"x","text":"hi"}"#.into(),
        json!({"room_id": room, "text": "hi"}).to_string(),
        r#"{"action":42}"#.into(),
        r#"{"action":null}"#.into(),
        // Missing required fields.
        r#"{"action":"send","text":"hi"}"#.into(),
        json!({"action":"send","room_id": room}).to_string(),
        r#"{"action":"typing","active":true}"#.into(),
        r#"{"action":"block"}"#.into(),
        // Mistyped fields.
        json!({"action":"read","room_id": room,"seq":"7"}).to_string(),
        json!({"action":"read","room_id": room,"seq":-1}).to_string(),
        json!({"action":"typing","room_id": room,"active":1}).to_string(),
        json!({"action":"send","room_id": room,"text":7}).to_string(),
        json!({"action":"send","room_id": [room],"text":"hi"}).to_string(),
        json!({"action":"find_match","interests":"chess"}).to_string(),
        json!({"action":"find_match","interests":[1,2]}).to_string(),
        json!({"action":"find_match","group_size":300}).to_string(),
        // Well-typed but invalid values.
        json!({"action":"find_match","group_size":1}).to_string(),
        json!({"action":"find_match","group_size":9}).to_string(),
        json!({"action":"find_match","interests":["  "]}).to_string(),
        json!({"action":"send","room_id":"","text":"hi"}).to_string(),
        json!({"action":"join","room_id":"lobby"}).to_string(),
        json!({"action":"block","user_id":"alice"}).to_string(),
        json!({"action":"block","user_id":""}).to_string(),
    ];
    for (i, frame) in bad.iter().enumerate() {
        a.send_raw(frame).await;
        let (message, retry, _) = recv_error(&mut a, ErrorCode::BadRequest).await;
        assert!(!message.is_empty(), "error frames explain themselves: {frame}");
        assert_eq!(retry, None, "{frame}");
        // The session still works, and the partner saw nothing of the bad frame.
        chat_ok(&mut a, &mut b, &room, &format!("still here {i}")).await;
    }
    // The partner's own session is untouched too.
    chat_ok(&mut b, &mut a, &room, "and me").await;
    a.expect_silence(Duration::from_millis(100)).await;
    b.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn binary_frames_get_bad_request_and_the_session_goes_on() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let payload = json!({"action":"send","room_id":room,"text":"as binary"}).to_string();
    a.ws.send(Message::Binary(payload.into_bytes().into())).await.expect("send");
    recv_error(&mut a, ErrorCode::BadRequest).await;
    a.ws.send(Message::Binary(vec![0xff, 0x00, 0x13].into())).await.expect("send");
    recv_error(&mut a, ErrorCode::BadRequest).await;
    chat_ok(&mut a, &mut b, &room, "text still works").await;
    chat_ok(&mut b, &mut a, &room, "for both").await;
}

#[tokio::test]
async fn broken_websocket_framing_ends_only_that_connection_with_1007_or_1002() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let (server, (mut a, mut b, room), (mut c, mut d, room2)) = two_pairs(test_config()).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(a.closed().await, Ended::Closed(1007));
    expect_offline(&mut b, "alice").await;
    send_acked(&mut b, &room, "hello?").await;
    chat_ok(&mut c, &mut d, &room2, "unaffected").await;

    // An unmasked frame from a client breaks the framing rules: 1002.
    let mut e = server.client("erin").await;
    {
        use tokio::io::AsyncWriteExt;
        let raw = e.ws.get_mut();
        raw.write_all(&[0x81, 0x02, b'h', b'i']).await.expect("raw write");
        raw.flush().await.expect("flush");
    }
    assert_eq!(e.closed().await, Ended::Closed(1002));
    chat_ok(&mut d, &mut c, &room2, "still unaffected").await;
    // Alice can reconnect and carry on in her room.
    let mut a2 = server.client("alice").await;
    chat_ok(&mut a2, &mut b, &room, "back").await;
}

#[tokio::test]
async fn frames_over_64_kib_close_with_1009_and_nobody_else_notices() {
    let (server, (mut a, mut b, room), (mut c, mut d, room2)) = two_pairs(test_config()).await;

    // A frame of exactly 64 KiB is legal (the padding field is ignored).
    a.send_raw(&padded_frame(&room, 64 * 1024)).await;
    delivered(&mut a, &mut b, "padded").await;
    chat_ok(&mut a, &mut b, &room, "after 64 KiB").await;

    // One byte more closes the connection with 1009.
    a.send_raw(&padded_frame(&room, 64 * 1024 + 1)).await;
    assert_eq!(a.closed().await, Ended::Closed(1009));

    // The partner sees the seat go offline; nothing else happens to them.
    expect_offline(&mut b, "alice").await;
    b.send_json(json!({"action":"send","room_id":room,"text":"anyone?"})).await;
    recv_strict(&mut b, "ack").await;
    // Another pair on the same server chats on.
    chat_ok(&mut c, &mut d, &room2, "unaffected").await;
    chat_ok(&mut d, &mut c, &room2, "indeed").await;
    // And alice can come back.
    let mut a2 = server.client("alice").await;
    alive(&mut a2).await;
}

// ---------------------------------------------------------------------------------
// Field limits
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn text_limits_are_4096_characters_and_not_blank() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;

    // Exactly at the limit, in ASCII and in two-byte characters: accepted whole.
    for text in ["a".repeat(4096), "é".repeat(4096)] {
        chat_ok(&mut a, &mut b, &room, &text).await;
    }
    // One character over: too_large, and nothing reaches the partner.
    for text in ["a".repeat(4097), "é".repeat(4097), "x".repeat(20_000)] {
        a.send_json(json!({"action":"send","room_id":room,"text":text})).await;
        recv_error(&mut a, ErrorCode::TooLarge).await;
    }
    // Empty or blank: bad_request.
    for text in ["", " ", "\n\t  "] {
        a.send_json(json!({"action":"send","room_id":room,"text":text})).await;
        recv_error(&mut a, ErrorCode::BadRequest).await;
    }
    // A client_msg_id over the name limit is too_large as well.
    a.send_json(json!({"action":"send","room_id":room,"text":"hi","client_msg_id":"c".repeat(65)}))
        .await;
    recv_error(&mut a, ErrorCode::TooLarge).await;
    // Refused messages took no sequence numbers: the next one is seq 3.
    assert_eq!(chat_ok(&mut a, &mut b, &room, "back to normal").await, 3);
    chat_ok(&mut b, &mut a, &room, "fine here").await;
}

#[tokio::test]
async fn interest_limits_are_20_interests_of_32_characters() {
    let server = TestServer::start(test_config());
    let [mut a, mut other] = server.clients(["alice", "olga"]).await;

    let many: Vec<String> = (0..21).map(|i| format!("topic{i}")).collect();
    a.send_json(json!({"action":"find_match","interests":many})).await;
    recv_error(&mut a, ErrorCode::TooLarge).await;
    alive(&mut a).await;

    let long = "x".repeat(33);
    a.send_json(json!({"action":"find_match","interests":["chess", long]})).await;
    recv_error(&mut a, ErrorCode::TooLarge).await;
    alive(&mut a).await;

    let too_long_language = "l".repeat(65);
    a.send_json(json!({"action":"find_match","interests":["chess"],"language":too_long_language}))
        .await;
    recv_error(&mut a, ErrorCode::TooLarge).await;

    // The refused searches started nothing; the limits themselves are accepted.
    let max: Vec<String> = (0..20).map(|i| format!("{i:0>32}")).collect();
    a.send_json(json!({"action":"find_match","interests":max})).await;
    recv_strict(&mut a, "searching").await;
    alive(&mut a).await;

    // Someone else on the server can search and cancel as usual.
    other.find_match(&["chess"]).await;
    recv_strict(&mut other, "searching").await;
    alive(&mut other).await;
    a.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn signal_payloads_are_objects_of_at_most_16_kib() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;

    // `{"sdp":"…"}` serialized is 10 bytes plus the string.
    let at_limit = json!({"sdp": "x".repeat(16 * 1024 - 10)});
    assert_eq!(at_limit.to_string().len(), 16 * 1024);
    a.send_json(json!({"action":"signal","room_id":room,"payload":at_limit})).await;
    match recv_strict(&mut b, "signal").await {
        ServerFrame::Signal { from, payload, room_id } => {
            assert_eq!(from, "alice");
            assert_eq!(room_id, room);
            assert_eq!(payload, at_limit);
        }
        _ => unreachable!(),
    }

    let over = json!({"sdp": "x".repeat(16 * 1024 - 9)});
    a.send_json(json!({"action":"signal","room_id":room,"payload":over})).await;
    recv_error(&mut a, ErrorCode::TooLarge).await;

    for payload in [json!("v=0 sdp"), json!([1, 2]), json!(null), json!(3), json!(true)] {
        a.send_json(json!({"action":"signal","room_id":room,"payload":payload})).await;
        recv_error(&mut a, ErrorCode::BadRequest).await;
    }
    a.send_json(json!({"action":"signal","room_id":room})).await;
    recv_error(&mut a, ErrorCode::BadRequest).await;

    // Signals to a user who is not another member of the room.
    for to in ["mallory", "alice"] {
        a.send_json(json!({"action":"signal","room_id":room,"payload":{},"to":to})).await;
        recv_error(&mut a, ErrorCode::NotInRoom).await;
    }

    // Bob saw none of the refused signals; both carry on.
    chat_ok(&mut a, &mut b, &room, "after signals").await;
    a.send_json(json!({"action":"signal","room_id":room,"payload":{"type":"offer"},"to":"bob"}))
        .await;
    match recv_strict(&mut b, "signal").await {
        ServerFrame::Signal { payload, .. } => assert_eq!(payload, json!({"type":"offer"})),
        _ => unreachable!(),
    }
    chat_ok(&mut b, &mut a, &room, "got it").await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;

    let depth = 10_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let frame =
        format!(r#"{{"action":"signal","room_id":"{room}","payload":{{"deep":{arrays}}}}}"#);
    assert!(frame.len() < 64 * 1024);
    a.send_raw(&frame).await;
    recv_error(&mut a, ErrorCode::BadRequest).await;

    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let frame = format!(r#"{{"action":"signal","room_id":"{room}","payload":{objects}}}"#);
    assert!(frame.len() < 64 * 1024);
    a.send_raw(&frame).await;
    recv_error(&mut a, ErrorCode::BadRequest).await;

    // Nested at the top level, before any field the parser could look at.
    a.send_raw(&"[".repeat(60_000)).await;
    recv_error(&mut a, ErrorCode::BadRequest).await;

    // Moderate nesting is a perfectly fine payload.
    let nested = serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(50), "]".repeat(50)))
        .expect("json");
    a.send_json(json!({"action":"signal","room_id":room,"payload":{"n":nested}})).await;
    recv_strict(&mut b, "signal").await;

    chat_ok(&mut a, &mut b, &room, "no crash").await;
    chat_ok(&mut b, &mut a, &room, "none here either").await;
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn history_requests_are_bounded_and_typed() {
    let server = TestServer::start_with(|e| e.history_limit_max = 3);
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    for i in 1..=5 {
        chat_ok(&mut a, &mut b, &room, &format!("m{i}")).await;
    }
    let seqs = |f: ServerFrame| match f {
        ServerFrame::History { messages, .. } => {
            messages.into_iter().map(|HistoryItem::Message(m)| m.seq).collect::<Vec<_>>()
        }
        other => panic!("expected history, got {other:?}"),
    };
    // A limit over the maximum is capped, not an error.
    a.send_json(json!({"action":"history","room_id":room,"limit":1_000_000})).await;
    assert_eq!(seqs(recv_strict(&mut a, "history").await), [1, 2, 3]);
    a.send_json(json!({"action":"history","room_id":room,"after_seq":2,"limit":200})).await;
    assert_eq!(seqs(recv_strict(&mut a, "history").await), [3, 4, 5]);
    a.send_json(json!({"action":"history","room_id":room,"after_seq":u64::MAX})).await;
    assert_eq!(seqs(recv_strict(&mut a, "history").await), Vec::<u64>::new());
    for bad in [
        json!({"action":"history","room_id":room,"limit":-1}),
        json!({"action":"history","room_id":room,"limit":"3"}),
        json!({"action":"history","room_id":room,"limit":5_000_000_000u64}),
        json!({"action":"history","room_id":room,"after_seq":"0"}),
        json!({"action":"history","room_id":room,"after_seq":1.5}),
    ] {
        a.send_json(bad).await;
        recv_error(&mut a, ErrorCode::BadRequest).await;
    }
    chat_ok(&mut b, &mut a, &room, "fine").await;
}

// ---------------------------------------------------------------------------------
// Rooms one is not in
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn acting_on_a_room_you_are_not_in_gets_not_in_room() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let mut eve = server.client("eve").await;

    let actions = |room: &str| {
        vec![
            json!({"action":"send","room_id":room,"text":"let me in"}),
            json!({"action":"typing","room_id":room,"active":true}),
            json!({"action":"read","room_id":room,"seq":1}),
            json!({"action":"history","room_id":room}),
            json!({"action":"leave","room_id":room}),
            json!({"action":"signal","room_id":room,"payload":{"type":"offer"}}),
            json!({"action":"signal","room_id":room,"payload":{},"to":"alice"}),
        ]
    };
    // A room that exists (someone else's) and rooms that do not.
    for target in [room.as_str(), "r-does-not-exist", "pub:nobody-here"] {
        for frame in actions(target) {
            eve.send_json(frame.clone()).await;
            recv_error(&mut eve, ErrorCode::NotInRoom).await;
        }
    }
    // The members saw nothing (chat_ok checks the very next frame), the room's
    // history holds no message from eve, and eve's session still works.
    assert_eq!(chat_ok(&mut a, &mut b, &room, "just us").await, 1);
    alive(&mut eve).await;
    eve.send_json(json!({"action":"join","room_id":"pub:lobby"})).await;
    recv_strict(&mut eve, "joined").await;

    // After leaving, the room is no longer one's own.
    a.send_json(json!({"action":"leave","room_id":room})).await;
    recv_strict(&mut a, "left").await;
    for frame in actions(&room) {
        a.send_json(frame).await;
        recv_error(&mut a, ErrorCode::NotInRoom).await;
    }
    alive(&mut a).await;
    // Bob was told, once, and is still connected.
    let mut kinds = Vec::new();
    while let Some(f) = b.try_recv(Duration::from_millis(300)).await {
        kinds.push(f.kind());
    }
    assert_eq!(kinds, ["presence", "room_closed"]);
    alive(&mut b).await;
}

// ---------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn find_match_is_limited_to_10_per_minute() {
    let server = TestServer::start(test_config());
    let [mut a, mut b] = server.clients(["alice", "bob"]).await;
    for _ in 0..10 {
        a.find_match(&["chess"]).await;
        recv_strict(&mut a, "searching").await;
        a.send_json(json!({"action":"cancel_match"})).await;
        recv_strict(&mut a, "match_cancelled").await;
    }
    a.find_match(&["chess"]).await;
    let (_, retry, action) = recv_error(&mut a, ErrorCode::RateLimited).await;
    let retry = retry.expect("retry_after_ms");
    assert!(retry > 0 && retry <= 60_000, "retry_after_ms = {retry}");
    assert_eq!(action.as_deref(), Some("find_match"));
    // `next` searches too, so it counts against the same limit.
    a.send_json(json!({"action":"next"})).await;
    let (_, retry, action) = recv_error(&mut a, ErrorCode::RateLimited).await;
    assert!(retry.expect("retry_after_ms") > 0);
    assert_eq!(action.as_deref(), Some("next"));
    // Refused searches did not start: there is nothing to cancel, nobody is matched.
    alive(&mut a).await;

    // The limit is per user: bob searches as usual, and is not matched with alice.
    b.find_match(&["chess"]).await;
    recv_strict(&mut b, "searching").await;
    b.expect_silence(Duration::from_millis(400)).await;
    alive(&mut b).await;
    // Alice's other actions are not limited.
    a.send_json(json!({"action":"join","room_id":"pub:lobby"})).await;
    recv_strict(&mut a, "joined").await;
    a.send_json(json!({"action":"send","room_id":"pub:lobby","text":"hello lobby"})).await;
    recv_strict(&mut a, "ack").await;
}

#[tokio::test]
async fn send_bursts_past_40_are_rate_limited() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    let n = 60;
    for i in 0..n {
        a.send_json(json!({"action":"send","room_id":room,"text":format!("m{i}"),"client_msg_id":format!("c{i}")}))
            .await;
    }
    let (mut acks, mut limited, mut echoes) = (Vec::new(), Vec::new(), 0);
    while acks.len() + limited.len() < n {
        match a.recv().await {
            ServerFrame::Ack { seq, .. } => acks.push(seq),
            ServerFrame::Message(_) => echoes += 1,
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, action, .. } => {
                let retry = retry_after_ms.expect("retry_after_ms");
                assert!(retry > 0 && retry <= 1_000, "retry_after_ms = {retry}");
                assert_eq!(action.as_deref(), Some("send"));
                limited.push(retry);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acks.len() >= 40 && acks.len() < n, "{} acks of {n}", acks.len());
    assert_eq!(acks, (1..=acks.len() as u64).collect::<Vec<_>>(), "gap-free seqs");
    // The partner got exactly the accepted messages.
    let mut got = 0;
    while got < acks.len() {
        match recv_strict(&mut b, "message").await {
            ServerFrame::Message(m) => assert_eq!(m.seq, got as u64 + 1),
            _ => unreachable!(),
        }
        got += 1;
    }
    while echoes < acks.len() {
        recv_strict(&mut a, "message").await;
        echoes += 1;
    }
    b.expect_silence(Duration::from_millis(200)).await;
    // Still connected; after the advertised wait, sending works again.
    let wait = *limited.iter().max().expect("some were limited");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    chat_ok(&mut a, &mut b, &room, "after the wait").await;
    chat_ok(&mut b, &mut a, &room, "bob was never limited").await;
}

/// The `send` bucket is the user's, not the connection's: reconnecting right after
/// a burst does not buy a fresh one.
#[tokio::test]
async fn a_reconnect_does_not_refill_the_send_bucket() {
    let server = TestServer::start(test_config());
    let (mut a, _b, room) = matched_pair(&server, "alice", "bob").await;
    let n = 45;
    for i in 0..n {
        a.send_json(json!({"action":"send","room_id":room,"text":format!("m{i}")})).await;
    }
    let limited = send_answers(&mut a, n, |other| panic!("unexpected {other:?}")).await;
    assert!(limited > 0, "the burst of {n} went past the limit");
    // A new connection of the same user (replacing the old one) finds the bucket
    // still empty: a token comes back every 50 ms, so of a burst's worth of sends
    // at once some are refused. With a fresh bucket all of them would be
    // acknowledged. (A whole burst, not five: on a busy machine the reconnect
    // alone can take the 250 ms that five tokens need to come back.)
    let burst = test_config().engine.send_burst as usize;
    let mut a2 = server.client("alice").await;
    for i in 0..burst {
        a2.send_json(json!({"action":"send","room_id":room,"text":format!("again {i}")})).await;
    }
    let limited = send_answers(&mut a2, burst, |_| {}).await;
    assert!(limited >= 1, "the reconnected session had a full bucket");
}

/// Read until `n` sends are answered (acked or refused by the send limit, which
/// must name `send`), passing any other frame but a message to `other`; returns
/// how many were refused.
async fn send_answers(c: &mut Client, n: usize, other: impl Fn(ServerFrame)) -> usize {
    let (mut answered, mut limited) = (0, 0);
    while answered < n {
        match c.recv().await {
            ServerFrame::Ack { .. } => answered += 1,
            ServerFrame::Message(_) => {}
            ServerFrame::Error { code: ErrorCode::RateLimited, action, .. } => {
                assert_eq!(action.as_deref(), Some("send"));
                answered += 1;
                limited += 1;
            }
            frame => other(frame),
        }
    }
    limited
}

#[tokio::test]
async fn sustained_send_flooding_closes_with_4008_and_nobody_else_notices() {
    let strikes = test_config().engine.flood_strikes as usize;
    let (_server, (mut a, mut b, room), (mut c, mut d, room2)) = two_pairs(test_config()).await;

    let (mut acks, mut limited, mut sent) = (0usize, 0usize, 0usize);
    let code = 'flood: loop {
        assert!(sent < 1_000, "still open after {sent} frames");
        let _ =
            a.ws.send(Message::Text(
                json!({"action":"send","room_id":room,"text":"spam"}).to_string().into(),
            ))
            .await;
        sent += 1;
        loop {
            match next_event(&mut a).await {
                Event::Frame(ServerFrame::Ack { .. }) => {
                    acks += 1;
                    break;
                }
                Event::Frame(ServerFrame::Message(_)) => continue,
                Event::Frame(ServerFrame::Error { code: ErrorCode::RateLimited, .. }) => {
                    limited += 1;
                    break;
                }
                Event::Frame(other) => panic!("unexpected {other:?}"),
                Event::Closed(code) => break 'flood Some(code),
                Event::Dropped => break 'flood None,
            }
        }
    };
    assert_eq!(code, Some(4008), "after {acks} acks and {limited} refusals");
    assert!(acks >= 40, "the burst went through first ({acks})");
    assert!(limited < strikes, "closed on the {strikes}th refusal, saw {limited}");
    assert!(limited >= strikes - 1, "not closed before {strikes} refusals ({limited})");

    // Bob sees alice go offline and keeps chatting; so do carol and dave.
    let mut received = 0;
    loop {
        match b.recv().await {
            ServerFrame::Message(_) => received += 1,
            ServerFrame::Presence { user_id, status: PresenceStatus::Offline, .. } => {
                assert_eq!(user_id, "alice");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, acks);
    b.send_json(json!({"action":"send","room_id":room,"text":"still here"})).await;
    recv_strict(&mut b, "ack").await;
    chat_ok(&mut c, &mut d, &room2, "unaffected").await;
    chat_ok(&mut d, &mut c, &room2, "same").await;
}

#[tokio::test]
async fn a_pipelined_frame_flood_closes_with_4008() {
    // 500 frames without reading a single answer.
    let frame = Message::Text(json!({"action":"cancel_match"}).to_string().into());
    let (server, mut flooder, (mut c, mut d, room)) = pipelined_flood(frame).await;
    let (mut answered, mut limited) = (0, 0);
    let ended = loop {
        match next_event(&mut flooder).await {
            Event::Frame(ServerFrame::MatchCancelled {}) => answered += 1,
            Event::Frame(ServerFrame::Error { code: ErrorCode::RateLimited, action, .. }) => {
                assert_eq!(action, None, "the frame limit is not an action's");
                limited += 1;
            }
            Event::Frame(other) => panic!("unexpected {other:?}"),
            Event::Closed(code) => break Ended::Closed(code),
            Event::Dropped => break Ended::Dropped,
        }
    };
    assert_eq!(ended, Ended::Closed(4008), "after {answered} answers, {limited} refusals");
    assert!(answered >= 100, "the burst was served ({answered})");
    assert!(limited < 20);
    chat_ok(&mut c, &mut d, &room, "unaffected").await;
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_binary_frame_flood_is_rate_limited_and_closed_with_4008() {
    // Binary frames are frames too: they count against the same limit as text.
    let (_server, mut flooder, (mut c, mut d, room)) =
        pipelined_flood(Message::Binary(vec![1, 2, 3].into())).await;
    let (mut refused, mut limited) = (0, 0);
    let ended = loop {
        match next_event(&mut flooder).await {
            Event::Frame(ServerFrame::Error { code: ErrorCode::BadRequest, .. }) => refused += 1,
            Event::Frame(ServerFrame::Error { code: ErrorCode::RateLimited, .. }) => limited += 1,
            Event::Frame(other) => panic!("unexpected {other:?}"),
            Event::Closed(code) => break Ended::Closed(code),
            Event::Dropped => break Ended::Dropped,
        }
    };
    assert_eq!(ended, Ended::Closed(4008), "after {refused} refusals, {limited} rate limited");
    assert!((100..500).contains(&refused), "{refused}");
    chat_ok(&mut c, &mut d, &room, "unaffected").await;
}

// ---------------------------------------------------------------------------------
// Clients that stop reading
// ---------------------------------------------------------------------------------

/// A client whose outbound queue overflows is cut off at once, even though its
/// socket writes would be allowed to block for a minute.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_when_its_queue_overflows() {
    slow_consumer_scenario(16, 60_000).await;
}

/// A client whose socket write blocks past `write_timeout_ms` is cut off, even when
/// its queue has room to spare.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_when_a_write_times_out() {
    slow_consumer_scenario(4_096, 300).await;
}

/// One client in a match room stops reading while its partner sends ~16 KB
/// messages as fast as acks come back, and an unrelated pair chats alongside. The
/// slow client must be disconnected in bounded time and queue size, every
/// ack and chat stays prompt throughout (no one waits on the slow socket), what the
/// slow client did get is a gap-free prefix, and `history` recovers the rest.
async fn slow_consumer_scenario(outbound_queue: usize, write_timeout_ms: u64) {
    let server = TestServer::start_with(|e| {
        e.outbound_queue = outbound_queue;
        e.write_timeout_ms = write_timeout_ms;
        // Sends, frames and the byte budget (for the catch-up's history pages).
        lift_rate_limits(e, 100_000);
        e.reconnect_grace_ms = 30_000;
        e.history_len = 10_000;
        // 16 KB messages: the byte bound of the ring must hold the gap too.
        e.history_bytes = 1 << 30;
    });
    let mut a = server.client("alice").await;
    let mut slow = connect_small_rcvbuf(&server, "slowpoke").await;
    let room = pair_up(&mut a, &mut slow).await;
    let (mut c, mut d, room2) = matched_pair(&server, "carol", "dave").await;

    // ~16 KB per message (4000 four-byte characters), well inside every limit.
    let text = "😀".repeat(4_000);
    let mut worst = Duration::ZERO;
    let mut sent = 0u64;
    let mut slow_gone = false;
    // Bounded in time (the write timeout, or at once for a full queue, plus slack
    // for the close) and in count (the history ring must still hold the gap).
    let cut_by = Duration::from_millis(write_timeout_ms.min(5_000) + 3_000);
    let started = Instant::now();
    while !slow_gone {
        assert!(
            sent < 9_000 && started.elapsed() < cut_by,
            "slowpoke still connected after {sent} messages and {:?}",
            started.elapsed()
        );
        let t0 = Instant::now();
        a.send_json(json!({"action":"send","room_id":room,"text":text})).await;
        sent += 1;
        // The ack, then alice's own copy of the message.
        let mut acked = false;
        loop {
            match a.recv().await {
                ServerFrame::Ack { seq, .. } => {
                    assert_eq!(seq, sent);
                    worst = worst.max(t0.elapsed());
                    acked = true;
                }
                ServerFrame::Message(m) if acked => {
                    assert_eq!(m.seq, sent);
                    break;
                }
                ServerFrame::Presence { user_id, status: PresenceStatus::Offline, .. } => {
                    assert_eq!(user_id, "slowpoke");
                    slow_gone = true;
                }
                other => panic!("unexpected {}", other.kind()),
            }
        }
        if sent % 25 == 0 {
            let t0 = Instant::now();
            chat_ok(&mut c, &mut d, &room2, &format!("tick {sent}")).await;
            worst = worst.max(t0.elapsed());
        }
    }
    eprintln!("slow consumer cut off after {sent} messages; slowest ack {worst:?}");
    assert!(worst < Duration::from_millis(2_000), "an ack or chat took {worst:?}");
    // The sender and the other pair are fine after the cut as well.
    for _ in 0..5 {
        send_acked(&mut a, &room, "after").await;
    }
    chat_ok(&mut c, &mut d, &room2, "after").await;

    // What the slow client did get is a gap-free prefix, then the close.
    let mut last = 0;
    let ended = loop {
        match next_event(&mut slow).await {
            Event::Frame(ServerFrame::Message(m)) => {
                assert_eq!(m.seq, last + 1, "essential frames are never skipped");
                last = m.seq;
            }
            Event::Frame(other) => panic!("unexpected {}", other.kind()),
            Event::Closed(code) => break Ended::Closed(code),
            Event::Dropped => break Ended::Dropped,
        }
    };
    eprintln!("slow consumer read {last} messages, then {ended:?}");
    assert!(matches!(ended, Ended::Closed(4008) | Ended::Dropped), "{ended:?}");
    assert!(last < sent, "it cannot have had everything ({last} of {sent})");

    // Reconnecting within the grace period, history fills the gap.
    let mut again = server.client("slowpoke").await;
    match &again.welcome {
        ServerFrame::Welcome { rooms, .. } => assert_eq!(rooms, &vec![room.clone()]),
        _ => unreachable!(),
    }
    again.send_json(json!({"action":"history","room_id":room,"after_seq":last,"limit":3})).await;
    match recv_strict(&mut again, "history").await {
        ServerFrame::History { messages, .. } => {
            let seqs: Vec<u64> = messages.iter().map(|HistoryItem::Message(m)| m.seq).collect();
            assert_eq!(seqs, vec![last + 1, last + 2, last + 3]);
        }
        _ => unreachable!(),
    }
    chat_ok(&mut again, &mut a, &room, "back").await;
}

#[tokio::test]
async fn typing_to_a_full_queue_is_dropped_not_disconnected() {
    let server = TestServer::start_with(|e| {
        e.outbound_queue = 16;
        e.write_timeout_ms = 60_000;
        // Typing draws on the per-user byte budget too; this test is about the queue.
        lift_rate_limits(e, 1_000_000);
    });
    // Long names make each typing frame ~200 bytes, so fewer fill the buffers.
    let room = format!("pub:{}", "r".repeat(64));
    let talker = "t".repeat(64);
    let mut a = server.client(&talker).await;
    let mut slow = connect_small_rcvbuf(&server, "slowpoke").await;
    a.send_json(json!({"action":"join","room_id":room})).await;
    recv_strict(&mut a, "joined").await;
    slow.send_json(json!({"action":"join","room_id":room})).await;
    recv_strict(&mut slow, "joined").await;

    let before = metric(&server, "rendezvous_frames_dropped_total").await;
    let chunk = 2_000;
    let mut sent = 0u64;
    loop {
        assert!(sent < 400_000, "no drops after {sent} typing frames");
        for i in 0..chunk {
            let f = json!({"action":"typing","room_id":room,"active":i % 2 == 0}).to_string();
            a.ws.feed(Message::Text(f.into())).await.expect("feed");
        }
        sent += chunk;
        // Barrier: the room answers history after it relayed every typing frame.
        a.send_json(json!({"action":"history","room_id":room})).await;
        recv_strict(&mut a, "history").await;
        if metric(&server, "rendezvous_frames_dropped_total").await - before >= 1_000.0 {
            break;
        }
    }
    let after = metric(&server, "rendezvous_frames_dropped_total").await;

    // Now read: typing frames (fewer than sent), never a close.
    let mut got = 0u64;
    while let Some(f) = slow.try_recv(Duration::from_millis(1_000)).await {
        match f {
            ServerFrame::Typing { user_id, .. } => {
                assert_eq!(user_id, talker);
                got += 1;
            }
            ServerFrame::Presence { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let dropped = sent - got;
    eprintln!("typing: sent {sent}, delivered {got}, metric +{}", after - before);
    assert!(dropped > 0, "all {sent} typing frames arrived: the queue never filled");
    assert!(
        after - before >= dropped as f64,
        "{dropped} dropped but the metric rose by {}",
        after - before
    );
    // Still connected, and essential frames flow both ways.
    send_acked(&mut slow, &room, "still here").await;
    match recv_strict(&mut a, "message").await {
        ServerFrame::Message(m) => assert_eq!(m.sender, "slowpoke"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn fragmented_messages_are_capped_at_64_kib_too() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;

    // A legal message in three fragments is one frame to the engine.
    let whole = json!({"action":"send","room_id":room,"text":"in pieces"}).to_string();
    let (p1, rest) = whole.split_at(10);
    let (p2, p3) = rest.split_at(10);
    for (i, part) in [p1, p2, p3].into_iter().enumerate() {
        let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let frame = Frame::message(part.as_bytes().to_vec(), op, i == 2);
        a.ws.send(Message::Frame(frame)).await.expect("send");
    }
    delivered(&mut a, &mut b, "in pieces").await;

    // Five fragments of 16 KiB, each small, together over the limit: 1009.
    let chunk = "x".repeat(16 * 1024);
    for i in 0..5 {
        let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let frame = Frame::message(chunk.clone().into_bytes(), op, i == 4);
        if a.ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    assert_eq!(a.closed().await, Ended::Closed(1009));
    expect_offline(&mut b, "alice").await;
    alive(&mut b).await;
}
