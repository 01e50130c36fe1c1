use common::*;
use rendezvous_actors::protocol::ServerFrame;
use rendezvous_test_support as common;
use serde_json::json;

#[tokio::test]
async fn two_strangers_match_and_chat() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "alice", "bob").await;
    a.send_json(json!({"action":"send","room_id": room,"text":"hi","client_msg_id":"c1"})).await;
    let ack = a.recv_kind("ack").await;
    assert!(matches!(ack, ServerFrame::Ack { seq: 1, .. }), "{ack:?}");
    let m = b.recv_kind("message").await;
    assert!(
        matches!(m, ServerFrame::Message(ref msg) if msg.text == "hi" && msg.sender == "alice"),
        "{m:?}"
    );
}
