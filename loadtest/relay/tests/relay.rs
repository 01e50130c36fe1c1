//! End-to-end test of the relay binary: real sockets, real frames.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The relay on a free port, killed when dropped.
struct Relay {
    child: Child,
    addr: String,
}

impl Relay {
    fn start() -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rendezvous-relay"))
            .args(["--bind", "127.0.0.1:0", "--threads", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn relay");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read banner");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in banner {line:?}"))
            .to_owned();
        Relay { child, addr }
    }

    async fn connect(&self, user: &str) -> Ws {
        let url = format!("ws://{}/ws?user={user}", self.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        let welcome = recv(&mut ws, "welcome").await;
        assert_eq!(welcome["user_id"], user);
        ws
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

/// Next frame of type `kind`, skipping others (an `error` fails the test).
async fn recv(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {kind}"))
            .expect("socket open")
            .expect("frame");
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).expect("json");
        assert_ne!(v["type"], "error", "waiting for {kind}: {v}");
        if v["type"] == kind {
            return v;
        }
    }
}

/// The `seq` of every `message` until one with `last` arrives.
async fn seqs_until(ws: &mut Ws, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        seen.push(recv(ws, "message").await["seq"].as_u64().expect("seq"));
    }
    seen
}

#[tokio::test]
async fn pairs_chat_and_public_rooms() {
    let relay = Relay::start();
    let mut a = relay.connect("alice").await;
    let mut b = relay.connect("bob").await;

    // Matching: A waits, B arrives; both see the same room and each other.
    send(&mut a, json!({"action": "find_match", "interests": ["chess"]})).await;
    recv(&mut a, "searching").await;
    send(&mut b, json!({"action": "find_match", "interests": ["Chess "]})).await;
    recv(&mut b, "searching").await;
    let fb = recv(&mut b, "match_found").await;
    let fa = recv(&mut a, "match_found").await;
    assert_eq!(fb["partner_id"], "alice");
    assert_eq!(fa["partner_id"], "bob");
    assert_eq!(fa["room_id"], fb["room_id"]);
    assert_eq!(fa["shared_interests"], json!(["chess"]));
    let room = fa["room_id"].as_str().expect("room").to_owned();

    // Chat: ack to the sender, message to both members, seq 1, 2.
    send(&mut a, json!({"action": "send", "room_id": room, "text": "hi", "client_msg_id": "c1"}))
        .await;
    let ack = recv(&mut a, "ack").await;
    assert_eq!((ack["seq"].as_u64(), ack["client_msg_id"].as_str()), (Some(1), Some("c1")));
    assert_eq!(ack["room_id"], room.as_str());
    let m = recv(&mut b, "message").await;
    assert_eq!(
        (m["seq"].as_u64(), &m["sender"], &m["text"]),
        (Some(1), &json!("alice"), &json!("hi"))
    );
    assert_eq!(m["msg_id"], ack["msg_id"]);
    assert_eq!(recv(&mut a, "message").await["seq"], 1, "sender gets its own message too");
    send(&mut b, json!({"action": "send", "room_id": room, "text": "yo", "client_msg_id": "c2"}))
        .await;
    assert_eq!(recv(&mut b, "ack").await["seq"], 2);
    let m = recv(&mut a, "message").await;
    assert_eq!((m["seq"].as_u64(), &m["sender"]), (Some(2), &json!("bob")));

    // Relayed frames.
    send(&mut b, json!({"action": "typing", "room_id": room, "active": true})).await;
    let t = recv(&mut a, "typing").await;
    assert_eq!((&t["user_id"], &t["active"]), (&json!("bob"), &json!(true)));
    send(&mut a, json!({"action": "signal", "room_id": room, "payload": {"sdp": "x"}})).await;
    assert_eq!(recv(&mut b, "signal").await["payload"]["sdp"], "x");

    // Not a member: an error frame, and the connection lives on.
    send(&mut a, json!({"action": "send", "room_id": "r-nope", "text": "x"})).await;
    let e = loop {
        let v = next_json(&mut a).await;
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(e["code"], "not_in_room");

    // next: A leaves and searches again; B is told the room is gone.
    send(&mut a, json!({"action": "next"})).await;
    assert_eq!(recv(&mut a, "left").await["room_id"], room.as_str());
    recv(&mut a, "searching").await;
    assert_eq!(recv(&mut b, "presence").await["status"], "left");
    assert_eq!(recv(&mut b, "room_closed").await["room_id"], room.as_str());
    send(&mut a, json!({"action": "cancel_match"})).await;
    recv(&mut a, "match_cancelled").await;

    // A room of three: each message reaches every member exactly once, in order.
    let mut c = relay.connect("carol").await;
    for ws in [&mut a, &mut b, &mut c] {
        send(ws, json!({"action": "join", "room_id": "pub:x"})).await;
        recv(ws, "joined").await;
    }
    send(
        &mut a,
        json!({"action": "send", "room_id": "pub:x", "text": "one", "client_msg_id": "1"}),
    )
    .await;
    send(
        &mut a,
        json!({"action": "send", "room_id": "pub:x", "text": "two", "client_msg_id": "2"}),
    )
    .await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(seqs_until(ws, 2).await, vec![1, 2]);
    }
    send(&mut c, json!({"action": "send", "room_id": "pub:x", "text": "three"})).await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(seqs_until(ws, 3).await, vec![3]);
    }
    // A disconnect is a leave.
    drop(c);
    let p = recv(&mut a, "presence").await;
    assert_eq!((&p["user_id"], &p["status"]), (&json!("carol"), &json!("left")));
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

#[test]
fn healthz_answers_200() {
    let relay = Relay::start();
    let mut s = std::net::TcpStream::connect(&relay.addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
