//! One contract suite for the `Bridge` trait (`actors/src/bridge/mod.rs`), run
//! against both bridges: the in-process one and the Redis one (two bridge instances,
//! nodes `a` and `b`, on a private `redis-server`). Every test body below runs once
//! per backend (the `contract!` macro at the end); each gets a fresh store.
//!
//! The in-process bridge is one node. Where a body says "the other node" it gets
//! the same node there, and a claim names its members as local (`node: None`).
//! Where the two legitimately differ, the body says so and asserts each side:
//! * rooms (`room_*`), `user_rooms` and `count_action` are cluster facts; the
//!   in-process bridge refuses them (`clustered()` is false and rooms keep their
//!   own `seq` and history);
//! * `broadcast` and `room_event` reach nobody on one node; `send_to_node` reaches
//!   a node's sink on both (in process: only this node's own);
//! * only the Redis bridge connects, so only it reports reconnects and lost peers.

use rendezvous_test_support as common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};

use actix::{Arbiter, ArbiterHandle};
use common::cluster::RedisServer;
use rendezvous_actors::bridge::events::{MemberStatus, OfferMember};
use rendezvous_actors::bridge::memory::MemoryBridge;
use rendezvous_actors::bridge::redis::RedisBridge;
use rendezvous_actors::bridge::{
    Attachment, Bridge, BridgeError, BridgeSettings, ClaimMember, ClaimOutcome, ClusterEvent,
    ClusterSink, Held, OfferOutcome, RoomEv, RoomSeed, SearchAd, StoredKind, Ticket,
};
use rendezvous_actors::ids::{Interest, RoomId, UserId};
use rendezvous_actors::protocol::ChatMessage;

/// How long any one expected state or event may take.
const WAIT: Duration = Duration::from_secs(10);
/// The byte cap of a room's history in these tests (small, so a test can pass it).
const HISTORY_BYTES: usize = 4_096;
/// Most `client_msg_id`s a room remembers in these tests (small, so a test can pass it).
const DEDUP_MAX: usize = 5;

// ---------------------------------------------------------------- the sink

/// A sink that records what its bridge hands up.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<ClusterEvent>>,
    lost: Mutex<Vec<String>>,
    reconnects: AtomicUsize,
    room_resyncs: AtomicUsize,
}

impl ClusterSink for Recorder {
    fn deliver(&self, event: ClusterEvent) {
        self.events.lock().expect("events").push(event);
    }
    fn node_lost(&self, node: &str) {
        self.lost.lock().expect("lost").push(node.to_owned());
    }
    fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::SeqCst);
    }
    fn resync_rooms(&self) {
        self.room_resyncs.fetch_add(1, Ordering::SeqCst);
    }
    fn held(&self) -> Held {
        Held::default()
    }
}

impl Recorder {
    fn events(&self) -> Vec<ClusterEvent> {
        self.events.lock().expect("events").clone()
    }

    /// Wait until an event matching `want` has been delivered; return it.
    async fn wait_event(&self, what: &str, want: impl Fn(&ClusterEvent) -> bool) -> ClusterEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.events().into_iter().find(&want) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------- fixture

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Memory,
    Redis,
}

struct Node {
    id: String,
    bridge: Arc<dyn Bridge>,
    sink: Arc<Recorder>,
}

struct Fixture {
    backend: Backend,
    nodes: Vec<Node>,
    redis: Option<RedisServer>,
    worker: ArbiterHandle,
}

impl Fixture {
    /// Memory: node `a`. Redis: nodes `a` and `b` on a fresh server, both ready
    /// (subscribed, resynced, each counting the other).
    async fn start(backend: Backend) -> Fixture {
        let worker = Arbiter::new().handle();
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        let ids: &[&str] = match backend {
            Backend::Memory => &["a"],
            Backend::Redis => &["a", "b"],
        };
        let settings = BridgeSettings {
            history_bytes: HISTORY_BYTES,
            dedup_max_per_room: DEDUP_MAX,
            ..BridgeSettings::default()
        };
        let mut nodes = Vec::new();
        for id in ids {
            let bridge: Arc<dyn Bridge> = match &redis {
                Some(r) => {
                    RedisBridge::connect(&r.url(), id, Default::default()).expect("redis url")
                }
                None => Arc::new(MemoryBridge::new(*id)),
            };
            let sink = Arc::new(Recorder::default());
            let weak: Weak<dyn ClusterSink> = Arc::downgrade(&sink) as Weak<dyn ClusterSink>;
            bridge.clone().attach(Attachment { sink: weak, worker: worker.clone(), settings });
            nodes.push(Node { id: (*id).to_owned(), bridge, sink });
        }
        let fx = Fixture { backend, nodes, redis, worker };
        let deadline = Instant::now() + WAIT;
        for n in &fx.nodes {
            loop {
                let ready = n.bridge.health().await.is_ok()
                    && n.bridge.nodes().await.ok() == Some(fx.nodes.len());
                if ready {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} not ready within {WAIT:?}", n.id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        fx
    }

    fn a(&self) -> &Node {
        &self.nodes[0]
    }

    /// The other node (on one node: the same one).
    fn b(&self) -> &Node {
        self.nodes.last().expect("a node")
    }

    fn clustered(&self) -> bool {
        self.backend == Backend::Redis
    }
}

/// Run `body` against `backend` in an actix system (the bridges' tasks run on one
/// of its arbiters), bounded in time.
fn run<Fut: Future<Output = ()>>(backend: Backend, body: fn(Arc<Fixture>) -> Fut) {
    actix::System::new().block_on(async move {
        let fx = Arc::new(Fixture::start(backend).await);
        let bounded = tokio::time::timeout(Duration::from_secs(60), body(fx.clone())).await;
        fx.worker.stop();
        bounded.expect("the test finished within 60 s");
    });
}

// ---------------------------------------------------------------- helpers

fn user(name: &str) -> UserId {
    UserId::from(name)
}

fn ad(node: &Node, name: &str, ticket: Ticket) -> SearchAd {
    SearchAd {
        node: node.id.clone(),
        ticket,
        user: name.to_owned(),
        language: "en".into(),
        interests: vec![],
        region: None,
        group_size: 2,
        joined_ms: 0,
        deadline_ms: rendezvous_actors::clock::now_ms() + 60_000,
    }
}

/// A member of a claim made on `claimer` for a search begun on `origin`.
fn member(claimer: &Node, origin: &Node, name: &str, ticket: Ticket) -> ClaimMember {
    let node = (claimer.id != origin.id).then(|| Arc::from(origin.id.as_str()));
    ClaimMember { user: user(name), node, ticket }
}

/// Resolves once everything `node` sent before has reached the store ("Order":
/// calls from one thread reach the store in the order they were made).
async fn settle(node: &Node) {
    node.bridge.trending(1).await.expect("store reachable");
}

async fn claim(node: &Node, members: Vec<ClaimMember>) -> ClaimOutcome {
    node.bridge.claim_match("en", members).await.expect("claim answered")
}

fn refused<T: std::fmt::Debug>(what: &str, got: Result<T, BridgeError>) {
    assert!(matches!(got, Err(BridgeError::Unavailable(_))), "{what}: {got:?}");
}

fn msg(room: &RoomId, sender: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.to_string(),
        seq: 0,
        msg_id: format!("{sender}-{text}"),
        sender: sender.into(),
        text: text.into(),
        ts: 1,
    }
}

fn seats(members: &[(UserId, Arc<str>)]) -> HashMap<String, String> {
    members.iter().map(|(u, n)| (u.to_string(), n.to_string())).collect()
}

fn expect_seats(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(u, n)| ((*u).to_owned(), (*n).to_owned())).collect()
}

/// On one node rooms are not the bridge's: every room call refuses (the room
/// keeps its own seq and history). True when the bridge keeps rooms.
async fn keeps_rooms(fx: &Fixture) -> bool {
    let (b, r, u) = (&fx.a().bridge, RoomId::from("r"), user("x"));
    assert_eq!(b.clustered(), fx.clustered());
    if b.clustered() {
        return true;
    }
    refused("room_append", b.room_append(&msg(&r, "x", "hi")).await);
    refused("room_join", b.room_join(&r, &u).await);
    refused("room_leave", b.room_leave(&r, &u, None, StoredKind::Public).await);
    refused("room_rehome", b.room_rehome(&r, &u).await);
    refused("room_history", b.room_history(&r, 0, 10).await);
    let seed = RoomSeed { kind: StoredKind::Match, members: vec![], last_seq: 0, messages: vec![] };
    refused("room_reseed", b.room_reseed(&r, seed).await);
    refused("user_rooms", b.user_rooms(&u).await);
    false
}

/// Open match room `name` with x on node a and y on node b; `None` (after
/// [`keeps_rooms`] checked the refusals) on a bridge that keeps no rooms.
async fn pair_room(fx: &Fixture, name: &str) -> Option<RoomId> {
    if !keeps_rooms(fx).await {
        return None;
    }
    let r = RoomId::from(name);
    let members = vec![(user("x"), Arc::from("a")), (user("y"), Arc::from("b"))];
    fx.a().bridge.room_open(&r, StoredKind::Match, members);
    Some(r)
}

// ---------------------------------------------------------------- searches and claims

async fn a_newer_search_supersedes_the_older(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    a.bridge.begin_search(ad(a, "x", 1));
    a.bridge.begin_search(ad(a, "x", 2));
    settle(a).await;
    assert_eq!(claim(b, vec![member(b, a, "x", 1)]).await, ClaimOutcome::Lost(vec![user("x")]));
    assert_eq!(claim(b, vec![member(b, a, "x", 2)]).await, ClaimOutcome::Claimed);
    // A claimed search is over.
    assert_eq!(claim(b, vec![member(b, a, "x", 2)]).await, ClaimOutcome::Lost(vec![user("x")]));
}

async fn ending_a_search_needs_its_valid_ticket(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    a.bridge.begin_search(ad(a, "x", 1));
    a.bridge.end_search(&user("x"), 99, "en");
    settle(a).await;
    assert_eq!(claim(b, vec![member(b, a, "x", 1)]).await, ClaimOutcome::Claimed);
    a.bridge.begin_search(ad(a, "x", 2));
    a.bridge.end_search(&user("x"), 2, "en");
    settle(a).await;
    assert_eq!(claim(b, vec![member(b, a, "x", 2)]).await, ClaimOutcome::Lost(vec![user("x")]));
}

async fn a_lost_claim_names_the_taken_and_changes_nothing(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    for (name, t) in [("x", 1), ("y", 2), ("z", 3)] {
        a.bridge.begin_search(ad(a, name, t));
    }
    settle(a).await;
    let xy = vec![member(b, a, "x", 1), member(b, a, "y", 2)];
    assert_eq!(claim(b, xy).await, ClaimOutcome::Claimed);
    let zy = vec![member(a, a, "z", 3), member(a, a, "y", 2)];
    assert_eq!(claim(a, zy).await, ClaimOutcome::Lost(vec![user("y")]));
    // z was left as it was by the failed claim.
    assert_eq!(claim(b, vec![member(b, a, "z", 3)]).await, ClaimOutcome::Claimed);
}

async fn racing_claims_have_exactly_one_winner(fx: Arc<Fixture>) {
    const RACERS: usize = 16;
    for round in 0..5u64 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let a = fx.a();
        a.bridge.begin_search(ad(a, &x, 2 * round + 1));
        a.bridge.begin_search(ad(a, &y, 2 * round + 2));
        settle(a).await;
        // Every racer makes its call at once from its own thread, half on each node.
        let gate = Barrier::new(RACERS);
        let claims: Vec<_> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..RACERS)
                .map(|i| {
                    let (fx, gate, x, y) = (&fx, &gate, &x, &y);
                    s.spawn(move || {
                        let on = &fx.nodes[i % fx.nodes.len()];
                        let members = vec![
                            member(on, fx.a(), x, 2 * round + 1),
                            member(on, fx.a(), y, 2 * round + 2),
                        ];
                        gate.wait();
                        on.bridge.claim_match("en", members)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().expect("racer")).collect()
        });
        let outcomes: Vec<ClaimOutcome> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .map(|o| o.expect("claim answered"))
            .collect();
        let won = outcomes.iter().filter(|o| **o == ClaimOutcome::Claimed).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        let taken = ClaimOutcome::Lost(vec![user(&x), user(&y)]);
        assert!(
            outcomes.iter().all(|o| *o == ClaimOutcome::Claimed || *o == taken),
            "round {round}: {outcomes:?}"
        );
    }
}

/// The outcome of a cross-node offer is recorded once: whoever asks first decides,
/// and everyone after gets that answer, per (creator, pool, offer). On one node
/// there is nobody to disagree with: each proposal is its own answer.
async fn the_first_recorded_offer_outcome_is_every_nodes_answer(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    let room = OfferOutcome::Opened {
        room: RoomId::from("r-offer"),
        members: vec![(user("x"), Arc::from(a.id.as_str())), (user("y"), Arc::from(b.id.as_str()))],
        shared: vec![Interest::from("chess")],
    };
    let decide = |n: &Node, pool: &str, offer: u64, p: &OfferOutcome| {
        n.bridge.decide_offer(&a.id, pool, offer, p.clone())
    };
    let aborted = OfferOutcome::Aborted;
    assert_eq!(decide(a, "en", 7, &room).await.expect("decided"), room);
    assert_eq!(decide(b, "fr", 7, &aborted).await.expect("decided"), aborted, "another pool");
    assert_eq!(decide(b, "en", 8, &aborted).await.expect("decided"), aborted);
    if !fx.clustered() {
        assert_eq!(decide(b, "en", 7, &aborted).await.expect("decided"), aborted);
        return;
    }
    assert_eq!(decide(b, "en", 7, &aborted).await.expect("decided"), room, "the room was first");
    assert_eq!(decide(a, "en", 8, &room).await.expect("decided"), aborted, "the abort was first");
    assert_eq!(decide(a, "fr", 7, &room).await.expect("decided"), aborted);
    // Racing proposals from both nodes at once: one answer for all.
    for offer in 100..105u64 {
        let asks: Vec<_> = (0..16)
            .map(|i| {
                let on = &fx.nodes[i % 2];
                decide(on, "en", offer, if i % 3 == 0 { &room } else { &aborted })
            })
            .collect();
        let answers: Vec<OfferOutcome> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .map(|o| o.expect("decided"))
            .collect();
        assert!(answers.iter().all(|o| *o == answers[0]), "offer {offer}: {answers:?}");
    }
}

// ---------------------------------------------------------------- cluster-wide counts

async fn trending_counts_each_match_highest_first(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    a.bridge.record_match(vec![Interest::from("chess"), Interest::from("go")]);
    b.bridge.record_match(vec![Interest::from("chess")]);
    b.bridge.record_match(vec![]);
    settle(a).await;
    settle(b).await;
    let want = vec![("chess".to_owned(), 2), ("go".to_owned(), 1)];
    assert_eq!(a.bridge.trending(10).await.expect("trending"), want);
    assert_eq!(b.bridge.trending(1).await.expect("trending"), want[..1].to_vec());
}

async fn every_node_counts_the_cluster_and_is_healthy(fx: Arc<Fixture>) {
    for n in &fx.nodes {
        assert_eq!(n.bridge.nodes().await.expect("nodes"), fx.nodes.len());
        n.bridge.health().await.expect("healthy");
        assert_eq!(n.bridge.node_id(), n.id);
    }
}

async fn count_action_counts_per_user_action_and_window(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    let x = user("x");
    if !fx.clustered() {
        // One node: the session's own limiter is the whole count.
        refused("count_action", a.bridge.count_action(&x, "find_match", 1).await);
        return;
    }
    // Start early in a one-second window so the three counts fall in one.
    while rendezvous_actors::clock::now_ms() % 1_000 > 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let count = |n: &Node, u: &UserId, action| n.bridge.count_action(u, action, 1);
    assert_eq!(count(a, &x, "find_match").await.expect("count"), 1);
    assert_eq!(count(b, &x, "find_match").await.expect("count"), 2);
    assert_eq!(count(a, &x, "find_match").await.expect("count"), 3);
    assert_eq!(count(a, &user("y"), "find_match").await.expect("count"), 1);
    assert_eq!(count(b, &x, "next").await.expect("count"), 1);
    // The next window starts from one again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(count(b, &x, "find_match").await.expect("count"), 1);
}

// ---------------------------------------------------------------- rooms

async fn appends_get_consecutive_seqs_and_history_returns_them(fx: Arc<Fixture>) {
    let Some(r) = pair_room(&fx, "m1").await else { return };
    let (a, b) = (fx.a(), fx.b());
    // Sent together from one node: stored in the order sent.
    let sent = futures_util::future::join_all(
        ["one", "two", "three"].map(|t| a.bridge.room_append(&msg(&r, "x", t))),
    )
    .await;
    let seqs: Vec<Option<u64>> = sent.into_iter().map(|s| s.expect("append")).collect();
    assert_eq!(seqs, vec![Some(1), Some(2), Some(3)]);
    assert_eq!(b.bridge.room_append(&msg(&r, "y", "four")).await.expect("append"), Some(4));
    // Only members post.
    assert_eq!(b.bridge.room_append(&msg(&r, "stranger", "no")).await.expect("append"), None);

    let history = |after, limit| b.bridge.room_history(&r, after, limit);
    let all = history(0, 100).await.expect("history");
    let got: Vec<(u64, &str, &str)> =
        all.iter().map(|m| (m.seq, m.sender.as_str(), m.text.as_str())).collect();
    assert_eq!(got, vec![(1, "x", "one"), (2, "x", "two"), (3, "x", "three"), (4, "y", "four")]);
    assert!(all
        .iter()
        .all(|m| m.room_id == "m1" && m.msg_id == format!("{}-{}", m.sender, m.text)));
    let seqs = |v: Vec<ChatMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(history(2, 100).await.expect("history")), vec![3, 4]);
    assert_eq!(seqs(history(0, 2).await.expect("history")), vec![1, 2]);
    assert_eq!(seqs(history(4, 10).await.expect("history")), Vec::<u64>::new());

    // The other member node heard every message with its seq, in order.
    b.sink.wait_event("the third message", |e| is_message(e, 3)).await;
    let heard: Vec<u64> = b.sink.events().iter().filter_map(message_seq).collect();
    assert_eq!(heard, vec![1, 2, 3]);
}

fn message_seq(ev: &ClusterEvent) -> Option<u64> {
    match ev {
        ClusterEvent::Room { ev: RoomEv::Message { seq, .. }, .. } => Some(*seq),
        _ => None,
    }
}

fn is_message(ev: &ClusterEvent, want: u64) -> bool {
    message_seq(ev) == Some(want)
}

async fn history_keeps_the_newest_within_its_byte_cap(fx: Arc<Fixture>) {
    if !keeps_rooms(&fx).await {
        return;
    }
    let (a, r) = (fx.a(), RoomId::from("m2"));
    a.bridge.room_open(&r, StoredKind::Match, vec![(user("x"), Arc::from("a"))]);
    let text = "t".repeat(200);
    for i in 1..=60u64 {
        let m = msg(&r, "x", &format!("{i}{text}"));
        assert_eq!(a.bridge.room_append(&m).await.expect("append"), Some(i));
    }
    let kept = a.bridge.room_history(&r, 0, 1_000).await.expect("history");
    let seqs: Vec<u64> = kept.iter().map(|m| m.seq).collect();
    assert!(!kept.is_empty() && kept.len() < 60, "kept {seqs:?}");
    assert_eq!(seqs.last(), Some(&60));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a gap in {seqs:?}");
    let bytes: usize = kept.iter().map(|m| m.text.len()).sum();
    assert!(bytes <= HISTORY_BYTES, "{bytes} bytes kept");
}

/// A room's stream holds about its newest 10,000 messages (the bridge's message
/// cap, applied approximately every 64th send) when the byte cap is set high
/// enough not to bind first.
async fn the_stream_keeps_about_its_newest_ten_thousand_messages(fx: Arc<Fixture>) {
    if !keeps_rooms(&fx).await {
        return;
    }
    let Some(redis) = &fx.redis else { return };
    // A node of its own, whose byte cap is far above 10,000 short messages.
    let settings = BridgeSettings { history_bytes: 64 << 20, ..BridgeSettings::default() };
    let (c, _sink) = third_node(&fx, redis, settings).await;
    let r = RoomId::from("cap1");
    c.room_open(&r, StoredKind::Match, vec![(user("x"), Arc::from("c"))]);
    const CAP: u64 = 10_000;
    let total = CAP + 300;
    for chunk in (1..=total).collect::<Vec<u64>>().chunks(500) {
        let sent = futures_util::future::join_all(
            chunk.iter().map(|i| c.room_append(&msg(&r, "x", &format!("m{i}")))),
        )
        .await;
        let seqs: Vec<Option<u64>> = sent.into_iter().map(|s| s.expect("append")).collect();
        assert_eq!(seqs, chunk.iter().map(|i| Some(*i)).collect::<Vec<_>>());
    }
    let len = match redis.cmd(&["XLEN", "rdv:room:{cap1}:log"]) {
        common::cluster::Resp::Int(n) => n as u64,
        other => panic!("XLEN: {other:?}"),
    };
    // Trimmed at seq 10,048 and 10,112 ... 10,240 (MAXLEN ~ drops whole stream
    // nodes of 100 entries), never below the cap.
    assert!((CAP..=CAP + 100 + 63).contains(&len), "{len} entries kept");
    let newest = c.room_history(&r, total - 5, 10).await.expect("history");
    let seqs: Vec<u64> = newest.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (total - 4..=total).collect::<Vec<_>>());
}

/// A send with a `client_msg_id` is stored once: a resend (on either node) gets the
/// original seq and msg_id and takes no seq; the record is the sender's; the room
/// remembers its last `DEDUP_MAX` messages' ids (a resend of an older one is stored
/// again) and the store holds a bounded number of records per room.
async fn resends_get_the_original_within_the_rooms_last_ids(fx: Arc<Fixture>) {
    use rendezvous_actors::bridge::Appended;
    let Some(r) = pair_room(&fx, "d1").await else { return };
    let (a, b) = (fx.a(), fx.b());
    let once = |n: &Node, sender: &str, text: &str, cid: &str| {
        n.bridge.room_append_once(&msg(&r, sender, text), Some(cid))
    };
    assert_eq!(once(a, "x", "one", "c1").await.expect("append"), Some(Appended::Stored(1)));
    let original = Appended::Duplicate { seq: 1, msg_id: "x-one".into() };
    assert_eq!(once(b, "x", "one again", "c1").await.expect("append"), Some(original.clone()));
    assert_eq!(once(a, "x", "one again", "c1").await.expect("append"), Some(original));
    // The resends took no seq; the same id from another sender is its own.
    assert_eq!(a.bridge.room_append(&msg(&r, "x", "two")).await.expect("append"), Some(2));
    assert_eq!(once(b, "y", "three", "c1").await.expect("append"), Some(Appended::Stored(3)));
    // A non-member's resend is refused like its send.
    assert_eq!(once(a, "stranger", "no", "c1").await.expect("append"), None);

    // Past the room's last DEDUP_MAX messages an id is forgotten: stored again.
    let mut seq = 3;
    for i in 0..DEDUP_MAX as u64 {
        seq += 1;
        let got = once(a, "x", &format!("m{i}"), &format!("k{i}")).await.expect("append");
        assert_eq!(got, Some(Appended::Stored(seq)));
    }
    let last = format!("k{}", DEDUP_MAX - 1);
    let within = Appended::Duplicate { seq, msg_id: format!("x-m{}", DEDUP_MAX - 1) };
    assert_eq!(once(b, "x", "again", &last).await.expect("append"), Some(within));
    seq += 1;
    assert_eq!(once(b, "y", "three", "c1").await.expect("append"), Some(Appended::Stored(seq)));

    // Many more: the store keeps a bounded number of records for the room (the
    // most it remembers and one batch of 31), living at least one dedup window.
    for i in 0..100u64 {
        seq += 1;
        let got = once(a, "x", &format!("n{i}"), &format!("n{i}")).await.expect("append");
        assert_eq!(got, Some(Appended::Stored(seq)));
    }
    let Some(redis) = &fx.redis else { return };
    let int = |args: &[&str]| match redis.cmd(args) {
        common::cluster::Resp::Int(n) => n,
        other => panic!("{args:?}: {other:?}"),
    };
    // Besides the records, the field "~" (it keeps the hash a hash table).
    assert_eq!(int(&["HEXISTS", "rdv:room:{d1}:sent", "~"]), 1);
    let records = int(&["HLEN", "rdv:room:{d1}:sent"]) as usize - 1;
    assert!((DEDUP_MAX..=DEDUP_MAX + 31).contains(&records), "{records} records");
    assert_eq!(int(&["HEXISTS", "rdv:room:{d1}:sent", "1:x:n99"]), 1);
    // Renewed to 1.5 windows when less than one was left: at least one left now.
    let window = BridgeSettings::default().dedup_window_ms as i64;
    for key in ["rdv:room:{d1}:sent", "rdv:room:{d1}:sentids"] {
        let ttl = int(&["PTTL", key]);
        assert!(ttl > window - 60_000 && ttl <= window * 3 / 2, "{key}: TTL {ttl} ms");
    }
}

async fn seats_join_move_leave_and_close(fx: Arc<Fixture>) {
    if !keeps_rooms(&fx).await {
        return;
    }
    let (a, b, p) = (fx.a(), fx.b(), RoomId::from("pub:chess"));
    let (x, y) = (user("x"), user("y"));
    let joined = a.bridge.room_join(&p, &x).await.expect("join");
    assert_eq!((joined.kind, joined.last_seq), (StoredKind::Public, 0));
    assert_eq!(seats(&joined.members), expect_seats(&[("x", "a")]));
    let joined = b.bridge.room_join(&p, &y).await.expect("join");
    assert_eq!(seats(&joined.members), expect_seats(&[("x", "a"), ("y", "b")]));
    // The node of the other member hears of the join.
    a.sink
        .wait_event("y joined", |e| {
            matches!(e, ClusterEvent::Room { room, origin, ev: RoomEv::Member { user, node, status: MemberStatus::Joined } }
                if room == "pub:chess" && origin == "b" && user == "y" && node == "b")
        })
        .await;
    assert_eq!(b.bridge.user_rooms(&x).await.expect("rooms"), vec![p.clone()]);

    // x reconnects to b: the seat moves, the room is as stored.
    let moved = b.bridge.room_rehome(&p, &x).await.expect("rehome").expect("x has a seat");
    assert_eq!((moved.kind, moved.last_seq), (StoredKind::Public, 0));
    assert_eq!(seats(&moved.members), expect_seats(&[("x", "b"), ("y", "b")]));
    assert!(b.bridge.room_rehome(&p, &user("stranger")).await.expect("rehome").is_none());

    // Leave only if still on the node named; once.
    let on_a = Some(Arc::from("a"));
    assert!(!b.bridge.room_leave(&p, &y, on_a, StoredKind::Public).await.expect("leave"));
    assert!(b.bridge.room_leave(&p, &y, None, StoredKind::Public).await.expect("leave"));
    assert!(!b.bridge.room_leave(&p, &y, None, StoredKind::Public).await.expect("leave"));
    assert_eq!(b.bridge.user_rooms(&y).await.expect("rooms"), Vec::<RoomId>::new());

    b.bridge.room_close(&p, "blocked");
    settle(b).await;
    assert_eq!(a.bridge.user_rooms(&x).await.expect("rooms"), Vec::<RoomId>::new());
    assert!(a.bridge.room_rehome(&p, &x).await.expect("rehome").is_none(), "closed");
}

async fn a_match_room_left_by_one_of_two_closes(fx: Arc<Fixture>) {
    let Some(r) = pair_room(&fx, "m3").await else { return };
    let (a, b) = (fx.a(), fx.b());
    settle(a).await;
    assert_eq!(a.bridge.user_rooms(&user("x")).await.expect("rooms"), vec![r.clone()]);
    assert!(b.bridge.room_leave(&r, &user("y"), None, StoredKind::Match).await.expect("leave"));
    a.sink
        .wait_event("the close", |e| {
            matches!(e, ClusterEvent::Room { room, ev: RoomEv::Closed { reason }, .. }
                if room == "m3" && reason == "partner_left")
        })
        .await;
    let left = a.sink.events().iter().position(|e| {
        matches!(
            e,
            ClusterEvent::Room { ev: RoomEv::Member { status: MemberStatus::Left, .. }, .. }
        )
    });
    let closed = a
        .sink
        .events()
        .iter()
        .position(|e| matches!(e, ClusterEvent::Room { ev: RoomEv::Closed { .. }, .. }));
    assert!(left.is_some() && left < closed, "left before closed: {:?}", a.sink.events());
    assert_eq!(a.bridge.user_rooms(&user("x")).await.expect("rooms"), Vec::<RoomId>::new());
}

async fn a_reseed_restores_what_the_store_lost(fx: Arc<Fixture>) {
    if !keeps_rooms(&fx).await {
        return;
    }
    let (a, r) = (fx.a(), RoomId::from("m4"));
    let members = vec![(user("x"), Arc::from("a")), (user("y"), Arc::from("b"))];
    let held = |seq, text: &str| ChatMessage { seq, ..msg(&r, "x", text) };
    let seed = RoomSeed {
        kind: StoredKind::Match,
        members: members.clone(),
        last_seq: 2,
        messages: vec![held(1, "one"), held(2, "two")],
    };
    let (before, stored) = a.bridge.room_reseed(&r, seed).await.expect("reseed");
    assert_eq!(before, 0);
    assert_eq!(seats(&stored), seats(&members));
    let texts: Vec<String> = a
        .bridge
        .room_history(&r, 0, 10)
        .await
        .expect("history")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, vec!["one", "two"]);
    // Appends go on after the restored seq; a second reseed changes nothing.
    assert_eq!(a.bridge.room_append(&msg(&r, "y", "three")).await.expect("append"), Some(3));
    let again = RoomSeed { kind: StoredKind::Match, members, last_seq: 1, messages: vec![] };
    assert_eq!(a.bridge.room_reseed(&r, again).await.expect("reseed").0, 3);
}

// ---------------------------------------------------------------- events to the sink

async fn send_to_node_reaches_that_nodes_sink(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    let offer = ClusterEvent::Offer {
        creator: a.id.clone(),
        offer: 7,
        language: "en".into(),
        members: vec![OfferMember { user: "y".into(), ticket: 3 }],
    };
    a.bridge.send_to_node(
        "nowhere",
        ClusterEvent::OfferAbort { creator: a.id.clone(), offer: 6, language: "en".into() },
    );
    a.bridge.send_to_node(&b.id, offer.clone());
    let got = b.sink.wait_event("the offer", |e| matches!(e, ClusterEvent::Offer { .. })).await;
    assert_eq!(got, offer);
    // Nothing went to a node nobody is.
    let aborts = |n: &Node| {
        n.sink.events().iter().filter(|e| matches!(e, ClusterEvent::OfferAbort { .. })).count()
    };
    assert_eq!(fx.nodes.iter().map(aborts).sum::<usize>(), 0);
}

async fn broadcasts_and_room_events_reach_the_other_nodes(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    let avoid = ClusterEvent::Avoid { a: "x".into(), b: "y".into(), ttl_ms: 1_000 };
    a.bridge.broadcast(avoid.clone());
    if !fx.clustered() {
        // One node: there is no other node to reach.
        settle(a).await;
        assert_eq!(a.sink.events(), vec![]);
        return;
    }
    assert_eq!(b.sink.wait_event("the avoid", |e| *e == avoid).await, avoid);

    let Some(r) = pair_room(&fx, "m5").await else { return };
    let typing = RoomEv::Typing { user: "x".into(), active: true };
    a.bridge.room_event(&r, typing.clone());
    // Sent after the room event, on the same channel: when a hears it, it would
    // have heard the room event before it.
    let marker = ClusterEvent::Kick { user: "marker".into(), node: "b".into() };
    a.bridge.send_to_node("a", marker.clone());
    let want = ClusterEvent::Room { room: "m5".into(), origin: "a".into(), ev: typing };
    assert_eq!(b.sink.wait_event("the typing", |e| *e == want).await, want);
    a.sink.wait_event("the marker", |e| *e == marker).await;
    assert!(!a.sink.events().contains(&want), "the origin heard its own room event");
}

/// A node "c" on the fixture's Redis with `settings`, once it is ready (healthy
/// and counting all three nodes); its sink records what it hears.
async fn third_node(
    fx: &Fixture,
    redis: &RedisServer,
    settings: BridgeSettings,
) -> (Arc<RedisBridge>, Arc<Recorder>) {
    let c = RedisBridge::connect(&redis.url(), "c", Default::default()).expect("redis url");
    let sink = Arc::new(Recorder::default());
    let weak: Weak<dyn ClusterSink> = Arc::downgrade(&sink) as Weak<dyn ClusterSink>;
    c.clone().attach(Attachment { sink: weak, worker: fx.worker.clone(), settings });
    let deadline = Instant::now() + WAIT;
    while !(c.health().await.is_ok() && c.nodes().await.ok() == Some(3)) {
        assert!(Instant::now() < deadline, "node c not ready within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (c, sink)
}

/// A message reaches each other node that holds members exactly once, however many
/// members it holds, and never its sender's node: a room of four over three nodes
/// (two members on b).
async fn each_other_node_hears_a_message_once(fx: Arc<Fixture>) {
    if !keeps_rooms(&fx).await {
        return;
    }
    let Some(redis) = &fx.redis else { return };
    // A third node for this test alone.
    let settings = BridgeSettings { history_bytes: HISTORY_BYTES, ..BridgeSettings::default() };
    let (_c, c_sink) = third_node(&fx, redis, settings).await;
    let (a, b, r) = (fx.a(), fx.b(), RoomId::from("p4"));
    let on = |u: &str, n: &str| (user(u), Arc::<str>::from(n));
    a.bridge.room_open(
        &r,
        StoredKind::Match,
        vec![on("w", "a"), on("x", "b"), on("y", "b"), on("z", "c")],
    );
    settle(a).await;
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let seq = a.bridge.room_append(&msg(&r, "w", text)).await.expect("append");
        assert_eq!(seq, Some(i as u64 + 1));
    }
    let seqs = |sink: &Recorder| -> Vec<u64> {
        sink.events()
            .iter()
            .filter_map(|e| match e {
                ClusterEvent::Room { room, ev: RoomEv::Message { seq, .. }, .. }
                    if room == "p4" =>
                {
                    Some(*seq)
                }
                _ => None,
            })
            .collect()
    };
    for (name, sink) in [("b", &b.sink), ("c", &c_sink)] {
        sink.wait_event("the third message", |e| {
            matches!(e, ClusterEvent::Room { room, ev: RoomEv::Message { seq: 3, .. }, .. } if room == "p4")
        })
        .await;
        // Anything told twice would have arrived by the time a marker sent after it does.
        let marker = ClusterEvent::Kick { user: "marker".into(), node: name.into() };
        a.bridge.send_to_node(name, marker.clone());
        sink.wait_event("the marker", |e| *e == marker).await;
        assert_eq!(seqs(sink), vec![1, 2, 3], "node {name} heard the messages");
    }
    settle(a).await;
    assert_eq!(seqs(&a.sink), Vec::<u64>::new(), "the sender's node heard its own messages");
}

async fn a_user_connecting_elsewhere_is_kicked_where_they_were(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    a.bridge.user_connected(&user("x"));
    settle(a).await;
    b.bridge.user_connected(&user("x"));
    settle(b).await;
    if !fx.clustered() {
        // One node: its registry replaces the session itself; nothing is sent.
        assert_eq!(a.sink.events(), vec![]);
        return;
    }
    let kick = ClusterEvent::Kick { user: "x".into(), node: "b".into() };
    assert_eq!(a.sink.wait_event("the kick", |e| *e == kick).await, kick);
}

async fn reconnects_and_lost_nodes_reach_the_sink(fx: Arc<Fixture>) {
    let (a, b) = (fx.a(), fx.b());
    if !fx.clustered() {
        // One node and no store to lose: none of these ever happens.
        a.bridge.shutdown().await.expect("shutdown");
        assert_eq!(a.sink.reconnects.load(Ordering::SeqCst), 0);
        assert_eq!(a.sink.room_resyncs.load(Ordering::SeqCst), 0);
        assert!(a.sink.lost.lock().expect("lost").is_empty());
        return;
    }
    // Being ready means each has connected and resynced at least once.
    for n in &fx.nodes {
        assert!(n.sink.reconnects.load(Ordering::SeqCst) >= 1, "{} reconnected", n.id);
        assert!(n.sink.room_resyncs.load(Ordering::SeqCst) >= 1, "{} resynced rooms", n.id);
    }
    // A peer whose beat is old is lost, once. The first node to see it so also
    // removes it from `rdv:nodes`, so a node that reads the set after that never
    // sees it at all: today only "at least one node" is promised (a known gap).
    let redis = fx.redis.as_ref().expect("redis");
    let old = (rendezvous_actors::clock::now_ms() - 60_000).to_string();
    redis.cmd(&["ZADD", "rdv:nodes", &old, "ghost"]);
    let lost = |n: &Node| n.sink.lost.lock().expect("lost").clone();
    let deadline = Instant::now() + WAIT;
    while fx.nodes.iter().all(|n| lost(n).is_empty()) {
        assert!(Instant::now() < deadline, "ghost not declared lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two more beats: nobody declares it again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for n in &fx.nodes {
        assert!(lost(n).is_empty() || lost(n) == vec!["ghost".to_owned()], "{}", n.id);
    }
    // A node that leaves says goodbye to the others.
    a.bridge.shutdown().await.expect("shutdown");
    let bye = ClusterEvent::NodeBye { node: "a".into() };
    assert_eq!(b.sink.wait_event("the goodbye", |e| *e == bye).await, bye);
}

// ---------------------------------------------------------------- both backends

macro_rules! contract {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(#[test]
            fn $name() {
                super::run(super::Backend::Memory, super::$name);
            })+
        }
        mod redis {
            $(#[test]
            fn $name() {
                super::run(super::Backend::Redis, super::$name);
            })+
        }
    };
}

contract!(
    a_newer_search_supersedes_the_older,
    ending_a_search_needs_its_valid_ticket,
    a_lost_claim_names_the_taken_and_changes_nothing,
    racing_claims_have_exactly_one_winner,
    the_first_recorded_offer_outcome_is_every_nodes_answer,
    trending_counts_each_match_highest_first,
    every_node_counts_the_cluster_and_is_healthy,
    count_action_counts_per_user_action_and_window,
    appends_get_consecutive_seqs_and_history_returns_them,
    history_keeps_the_newest_within_its_byte_cap,
    the_stream_keeps_about_its_newest_ten_thousand_messages,
    resends_get_the_original_within_the_rooms_last_ids,
    seats_join_move_leave_and_close,
    a_match_room_left_by_one_of_two_closes,
    a_reseed_restores_what_the_store_lost,
    send_to_node_reaches_that_nodes_sink,
    broadcasts_and_room_events_reach_the_other_nodes,
    each_other_node_hears_a_message_once,
    a_user_connecting_elsewhere_is_kicked_where_they_were,
    reconnects_and_lost_nodes_reach_the_sink,
);
