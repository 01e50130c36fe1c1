//! Chat helpers: typed waits for the frames a member of a room gets, and many
//! members pipelining messages into one room at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rendezvous_protocol::client::{self as wire, RecvError};
use std::collections::BTreeMap;

use rendezvous_protocol::{ChatMessage, ErrorCode, HistoryItem, PresenceStatus, ServerFrame};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

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

/// `from` sends `text` (`client_msg_id`) to `room`: it is acknowledged ([`sent`])
/// and `to` receives it as its next frame other than presence. The message.
pub async fn exchange(
    from: &mut Client,
    to: &mut Client,
    room: &str,
    text: &str,
    client_msg_id: &str,
) -> ChatMessage {
    send_text(from, room, text, client_msg_id).await;
    let m = sent(from, room, client_msg_id).await;
    assert_eq!(expect_message(to).await, m, "{} got another message", to.user_id);
    m
}

pub async fn expect_message(c: &mut Client) -> ChatMessage {
    match next(c).await {
        ServerFrame::Message(m) => m,
        other => panic!("{}: expected message, got {other:?}", c.user_id),
    }
}

/// The `history` request for `room` after `after_seq`.
pub fn history_request(room: &str, after_seq: u64, limit: Option<u32>) -> Value {
    let mut req = json!({"action":"history","room_id":room,"after_seq":after_seq});
    if let Some(l) = limit {
        req["limit"] = json!(l);
    }
    req
}

/// The very next frame is this presence change.
pub async fn expect_presence(c: &mut Client, room: &str, user: &str, status: PresenceStatus) {
    match c.recv().await {
        ServerFrame::Presence { room_id, user_id, status: got } => assert_eq!(
            (room_id.as_str(), user_id.as_str(), got),
            (room, user, status),
            "{}: presence",
            c.user_id
        ),
        other => panic!("{}: expected presence {status:?} of {user}, got {other:?}", c.user_id),
    }
}

/// The seqs of `messages`, in order.
pub fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Stored messages after `after_seq`.
pub async fn history(
    c: &mut Client,
    room: &str,
    after_seq: u64,
    limit: Option<u32>,
) -> Vec<ChatMessage> {
    c.send_json(history_request(room, after_seq, limit)).await;
    match next(c).await {
        ServerFrame::History { room_id, messages, .. } => {
            assert_eq!(room_id, room);
            messages.into_iter().map(|HistoryItem::Message(m)| m).collect()
        }
        other => panic!("{}: expected history, got {other:?}", c.user_id),
    }
}

/// One member's view of a room under load.
#[derive(Debug, Default)]
pub struct RoomView {
    /// (seq, msg_id, sender, text) in arrival order.
    pub messages: Vec<(u64, String, String, String)>,
    /// (client_msg_id, seq, msg_id) in arrival order.
    pub acks: Vec<(String, u64, String)>,
}

/// What may arrive after a member has seen every message and ack of a
/// [`pipeline`]: nothing within `quiet`, or only `presence` when
/// `presence_after` is set.
pub struct Tail {
    pub quiet: Duration,
    pub presence_after: bool,
}

/// Every client (all members of `room`) pipelines `each` messages (`USER#I`,
/// client ids `cI`) at the same moment while a reader records what it gets until
/// it has every message of everyone and its own acks (30 s at most); then the
/// [`Tail`] holds. Each member's view and its client back, within 40 s.
pub async fn pipeline(
    clients: Vec<Client>,
    room: &str,
    each: usize,
    tail: Tail,
) -> Vec<(RoomView, Client)> {
    let total = clients.len() * each;
    let go = Arc::new(Barrier::new(clients.len()));
    let quiet = tail.quiet;
    let presence_after = tail.presence_after;
    let mut tasks = Vec::new();
    for c in clients {
        let (go, room) = (go.clone(), room.to_owned());
        tasks.push(tokio::spawn(async move {
            let Client { ws, user_id: user, welcome } = c;
            let (mut tx, mut rx) = ws.split();
            let (reader_user, reader_room) = (user.clone(), room.clone());
            let reader = tokio::spawn(async move {
                let mut view = RoomView::default();
                let deadline = Instant::now() + Duration::from_secs(30);
                while view.messages.len() < total || view.acks.len() < each {
                    let f = match wire::recv(&mut rx, deadline).await {
                        Ok(f) => f,
                        Err(RecvError::Timeout) => panic!(
                            "{reader_user}: stuck at {} messages, {} acks",
                            view.messages.len(),
                            view.acks.len()
                        ),
                        Err(e) => panic!("{reader_user}: {e}"),
                    };
                    match f {
                        ServerFrame::Message(m) => {
                            assert_eq!(m.room_id, reader_room);
                            view.messages.push((m.seq, m.msg_id, m.sender, m.text));
                        }
                        ServerFrame::Ack { client_msg_id, room_id, seq, msg_id } => {
                            assert_eq!(room_id, reader_room);
                            view.acks.push((client_msg_id.expect("client_msg_id"), seq, msg_id));
                        }
                        ServerFrame::Presence { .. } => {}
                        other => panic!("{reader_user}: unexpected {other:?}"),
                    }
                }
                // Nothing more may follow: no duplicates after the full set.
                let quiet_until = Instant::now() + quiet;
                while let Ok(f) = wire::recv(&mut rx, quiet_until).await {
                    if !(presence_after && matches!(f, ServerFrame::Presence { .. })) {
                        panic!("{reader_user}: extra frame after all messages: {f:?}");
                    }
                }
                (view, rx)
            });
            go.wait().await;
            for i in 0..each {
                let frame = json!({
                    "action": "send",
                    "room_id": room,
                    "text": format!("{user}#{i}"),
                    "client_msg_id": format!("c{i}"),
                });
                tx.send(Message::Text(frame.to_string().into())).await.expect("pipeline a send");
            }
            let (view, rx) = reader.await.expect("reader task");
            let ws = tx.reunite(rx).expect("reunite the halves of one socket");
            (view, Client { ws, user_id: user, welcome })
        }));
    }
    let mut views = Vec::new();
    for t in tasks {
        let done = tokio::time::timeout(Duration::from_secs(40), t).await;
        views.push(done.expect("member finished in time").expect("member task"));
    }
    views
}

/// The invariants of a [`pipeline`] of `each` messages per member: every member
/// got every message exactly once, `seq` 1..=total, in one order; texts are unique,
/// each sender's own order is kept and the sender field names the author; each
/// member's acks come in send order, increasing, each naming its message's seq and
/// id. The order everyone saw.
pub fn check_one_order(
    views: &[(RoomView, Client)],
    each: usize,
) -> Vec<(u64, String, String, String)> {
    let total = views.len() * each;
    let reference = views[0].0.messages.clone();
    let want: Vec<u64> = (1..=total as u64).collect();
    for (view, c) in views {
        let seqs: Vec<u64> = view.messages.iter().map(|m| m.0).collect();
        assert_eq!(seqs, want, "{}: seq not gap-free and in order", c.user_id);
        assert_eq!(view.messages, reference, "{} saw a different order", c.user_id);
    }
    let texts: BTreeSet<&str> = reference.iter().map(|m| m.3.as_str()).collect();
    assert_eq!(texts.len(), total, "duplicate texts");
    let mut next_i: HashMap<&str, usize> = HashMap::new();
    let mut by_text: HashMap<&str, (u64, &str)> = HashMap::new();
    for (seq, msg_id, sender, text) in &reference {
        let (who, i) = text.split_once('#').expect("text is USER#I");
        assert_eq!(who, sender, "sender field matches the author");
        let i: usize = i.parse().expect("message index");
        let expect = next_i.entry(sender.as_str()).or_default();
        assert_eq!(i, *expect, "{sender}'s messages out of order");
        *expect += 1;
        by_text.insert(text.as_str(), (*seq, msg_id.as_str()));
    }
    assert_eq!(next_i.len(), views.len(), "{next_i:?}");
    assert!(next_i.values().all(|&n| n == each), "{next_i:?}");
    for (view, c) in views {
        let user = &c.user_id;
        assert_eq!(view.acks.len(), each, "{user}");
        let mut last = 0;
        for (i, (cid, seq, msg_id)) in view.acks.iter().enumerate() {
            assert_eq!(cid, &format!("c{i}"), "{user}: acks out of order");
            assert!(*seq > last, "{user}: ack seqs not increasing");
            last = *seq;
            let text = format!("{user}#{i}");
            let (mseq, mid) = by_text[text.as_str()];
            assert_eq!((*seq, msg_id.as_str()), (mseq, mid), "{user}: ack {i} vs message");
        }
    }
    reference
}

/// A member of a chat across a failover (tests/sentinel.rs, tests/redis_cluster.rs)
/// and what it saw of the others' messages.
pub struct Member {
    pub c: Client,
    /// Messages of other senders, in arrival order.
    pub got: Vec<ChatMessage>,
}

/// How one send ended.
#[derive(Debug)]
pub enum Sent {
    Acked { seq: u64 },
    Unavailable { retry_after_ms: u64 },
}

impl Member {
    pub fn new(c: Client) -> Member {
        Member { c, got: Vec::new() }
    }

    /// Read frames until the answer to the send `cid` (an `ack`, or an `error`
    /// naming it, which must be `unavailable` with `retry_after_ms`); records the
    /// others' messages on the way.
    pub async fn answer(&mut self, cid: &str) -> Sent {
        loop {
            match self.c.recv().await {
                ServerFrame::Ack { client_msg_id, seq, .. }
                    if client_msg_id.as_deref() == Some(cid) =>
                {
                    return Sent::Acked { seq }
                }
                ServerFrame::Error { code, retry_after_ms, client_msg_id, message, .. }
                    if client_msg_id.as_deref() == Some(cid) =>
                {
                    assert_eq!(code, ErrorCode::Unavailable, "{cid}: {message}");
                    let retry_after_ms = retry_after_ms
                        .unwrap_or_else(|| panic!("{cid}: unavailable without retry_after_ms"));
                    return Sent::Unavailable { retry_after_ms };
                }
                ServerFrame::Error { code, message, .. } => {
                    panic!("{}: error {code:?} {message}", self.c.user_id)
                }
                ServerFrame::Message(m) if m.sender != self.c.user_id => self.got.push(m),
                _ => {}
            }
        }
    }

    /// Send `text` as `cid` until it is acknowledged, resending with the same id
    /// after every `unavailable` (at most every 200 ms); its seq and how many
    /// `unavailable` answers came first. Panics after `within`.
    pub async fn send_until_acked(
        &mut self,
        room: &str,
        text: &str,
        cid: &str,
        within: Duration,
    ) -> (u64, u32) {
        let started = std::time::Instant::now();
        let mut refused = 0;
        loop {
            send_text(&mut self.c, room, text, cid).await;
            match self.answer(cid).await {
                Sent::Acked { seq } => return (seq, refused),
                Sent::Unavailable { retry_after_ms } => {
                    refused += 1;
                    assert!(
                        started.elapsed() < within,
                        "{cid}: not acknowledged within {within:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.min(200))).await;
                }
            }
        }
    }

    /// Read until every seq of `want` arrived from the others (bounded).
    pub async fn wait_for(&mut self, want: &BTreeMap<u64, String>, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let have: HashMap<u64, &str> =
                self.got.iter().map(|m| (m.seq, m.text.as_str())).collect();
            if want.keys().all(|s| have.contains_key(s)) {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let missing: Vec<&u64> = want.keys().filter(|s| !have.contains_key(*s)).collect();
            assert!(
                !left.is_zero(),
                "{}: never got seqs {missing:?} of {want:?}; got {:?}",
                self.c.user_id,
                self.got
            );
            match self.c.try_recv(left).await {
                Some(ServerFrame::Message(m)) if m.sender != self.c.user_id => self.got.push(m),
                _ => {}
            }
        }
    }

    /// What it got from the others is exactly `want` (seq -> text): each once, in
    /// increasing seq order.
    pub fn check_got(&self, want: &BTreeMap<u64, String>) {
        let user = &self.c.user_id;
        let seqs: Vec<u64> = self.got.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{user}: out of order or doubled: {seqs:?}");
        let got: BTreeMap<u64, String> = self.got.iter().map(|m| (m.seq, m.text.clone())).collect();
        assert_eq!(&got, want, "{user}: deliveries vs the others' acknowledged messages");
    }

    /// The whole stored history of `room` (pages of 100), as seq -> text; the
    /// others' messages that arrive meanwhile are recorded.
    pub async fn full_history(&mut self, room: &str) -> BTreeMap<u64, String> {
        let mut out = BTreeMap::new();
        let mut after = 0;
        loop {
            self.c.send_json(history_request(room, after, Some(100))).await;
            let page = loop {
                match self.c.recv().await {
                    ServerFrame::History { messages, .. } => break messages,
                    ServerFrame::Message(m) if m.sender != self.c.user_id => self.got.push(m),
                    ServerFrame::Message(_) | ServerFrame::Presence { .. } => {}
                    other => panic!("{}: expected history, got {other:?}", self.c.user_id),
                }
            };
            if page.is_empty() {
                return out;
            }
            for rendezvous_actors::protocol::HistoryItem::Message(m) in page {
                assert!(
                    out.insert(m.seq, m.text.clone()).is_none(),
                    "{}: seq {} twice in the history",
                    self.c.user_id,
                    m.seq
                );
                after = after.max(m.seq);
            }
        }
    }
}
