//! Chat helpers shared by the multi-node suites (tests/multi_node.rs,
//! tests/cluster_faults.rs): typed waits for the frames a member of a room gets.

use std::time::{SystemTime, UNIX_EPOCH};

use rendezvous_protocol::{ChatMessage, HistoryItem, ServerFrame};
use serde_json::json;

use crate::Client;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// The next frame that is not `presence` (presence is asserted where it matters).
pub async fn next(c: &mut Client) -> ServerFrame {
    loop {
        let f = c.recv().await;
        if !matches!(f, ServerFrame::Presence { .. }) {
            return f;
        }
    }
}

pub async fn send_text(c: &mut Client, room: &str, text: &str, client_msg_id: &str) {
    c.send_json(json!({"action":"send","room_id":room,"text":text,"client_msg_id":client_msg_id}))
        .await;
}

/// After [`send_text`]: the sender's `ack` and its own copy of the message, in either
/// order (they may travel different paths between nodes). Checks they agree and
/// returns the message.
pub async fn sent(c: &mut Client, room: &str, client_msg_id: &str) -> ChatMessage {
    let (mut ack, mut own) = (None, None);
    while ack.is_none() || own.is_none() {
        match next(c).await {
            ServerFrame::Ack { client_msg_id: cid, room_id, seq, msg_id } if ack.is_none() => {
                assert_eq!(
                    cid.as_deref(),
                    Some(client_msg_id),
                    "{}: client_msg_id echoed",
                    c.user_id
                );
                assert_eq!(room_id, room, "{}: ack for another room", c.user_id);
                ack = Some((seq, msg_id));
            }
            ServerFrame::Message(m) if own.is_none() && m.sender == c.user_id => own = Some(m),
            other => panic!("{}: expected ack and own message, got {other:?}", c.user_id),
        }
    }
    let ((seq, msg_id), m) = (ack.expect("ack"), own.expect("own message"));
    assert_eq!((seq, msg_id.as_str()), (m.seq, m.msg_id.as_str()), "ack vs message");
    assert_eq!(m.room_id, room);
    assert!(m.ts.abs_diff(now_ms()) < 60_000, "ts {} is not near now", m.ts);
    m
}

pub async fn expect_message(c: &mut Client) -> ChatMessage {
    match next(c).await {
        ServerFrame::Message(m) => m,
        other => panic!("{}: expected message, got {other:?}", c.user_id),
    }
}

/// Stored messages after `after_seq`.
pub async fn history(
    c: &mut Client,
    room: &str,
    after_seq: u64,
    limit: Option<u32>,
) -> Vec<ChatMessage> {
    let mut req = json!({"action":"history","room_id":room,"after_seq":after_seq});
    if let Some(l) = limit {
        req["limit"] = json!(l);
    }
    c.send_json(req).await;
    match next(c).await {
        ServerFrame::History { room_id, messages } => {
            assert_eq!(room_id, room);
            messages.into_iter().map(|HistoryItem::Message(m)| m).collect()
        }
        other => panic!("{}: expected history, got {other:?}", c.user_id),
    }
}
