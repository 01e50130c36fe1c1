//! Concurrency: thousands of real WebSocket clients searching at the same moment,
//! and many members posting into one room at once. The checks are global
//! invariants (no double or asymmetric matches, consistent rooms, gap-free `seq`
//! in one order for everyone), computed from what every client actually received.

use rendezvous_test_support as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::search::Found;
use common::storm::{interests_for, Seen, Storm};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rendezvous::config::Config;
use rendezvous_actors::protocol::ServerFrame;
use rendezvous_actors::LadderStep;
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

/// Storm settings: every limit that a crowd on one machine would trip is raised,
/// and the ladder reaches "anyone in the language" after 400 ms.
fn storm_config() -> Config {
    let mut c = test_config();
    let e = &mut c.engine;
    e.ladder = vec![
        LadderStep { after_ms: 0, same_region: false, min_shared: 2 },
        LadderStep { after_ms: 200, same_region: false, min_shared: 1 },
        LadderStep { after_ms: 400, same_region: false, min_shared: 0 },
    ];
    e.search_timeout_ms = 10_000;
    e.find_match_per_minute = 1_000;
    e.frames_per_second = 1_000;
    e.frames_burst = 1_000;
    c
}

/// `n` clients (users `{prefix}00000`, …) storm `server` with `find_match` for
/// groups of `group_size` in one language; see [`Storm::run`].
async fn storm(
    server: &TestServer,
    prefix: &str,
    n: usize,
    group_size: u8,
) -> (Vec<Seen>, Vec<Client>, Duration) {
    let urls = (0..n).map(|i| server.ws_url(&format!("user={prefix}{i:05}"))).collect();
    // Everyone has an outcome within the search timeout (10 s) plus slack.
    let plan =
        Storm { urls, outcome_within: Duration::from_secs(25), linger: Duration::from_millis(500) };
    plan.run(|i| {
        json!({
            "action": "find_match",
            "interests": interests_for(i),
            "language": "en",
            "group_size": group_size,
        })
    })
    .await
}

/// The invariants every storm must hold; returns (rooms, users without a match).
fn check_storm(seen: &[Seen], group_size: usize) -> (usize, usize) {
    let mut by_user: HashMap<&str, &Found> = HashMap::new();
    let mut rooms: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unmatched = 0;
    for s in seen {
        assert!(s.other.is_empty(), "{}: unexpected frames {:?}", s.user, s.other);
        assert_eq!(s.searching, 1, "{}: one searching per find_match", s.user);
        let outcomes = s.matches.len() + s.no_match;
        assert_eq!(
            outcomes,
            1,
            "{}: exactly one outcome, got {} match_found + {} no_match_found",
            s.user,
            s.matches.len(),
            s.no_match
        );
        if s.no_match == 1 {
            unmatched += 1;
            continue;
        }
        let m = &s.matches[0];
        let Found { room, partner, members, shared, score } = m;
        let distinct: BTreeSet<&String> = members.iter().collect();
        assert_eq!(distinct.len(), members.len(), "{}: repeated member {members:?}", s.user);
        assert_eq!(members.len(), group_size, "{}: room {room} has {members:?}", s.user);
        assert!(members.contains(&s.user), "{}: not among own members {members:?}", s.user);
        assert_eq!(*score as usize, shared.len(), "{}: score is the shared count", s.user);
        if group_size == 2 {
            let p = partner.as_deref().unwrap_or_else(|| panic!("{}: no partner_id", s.user));
            assert_ne!(p, s.user, "self-match");
            assert!(members.iter().any(|u| u == p), "{}: partner {p} not in {members:?}", s.user);
        } else {
            assert_eq!(*partner, None, "{}: partner_id in a group", s.user);
        }
        by_user.insert(&s.user, m);
        rooms.entry(room).or_default().push(&s.user);
    }
    // Symmetry: everyone a user was matched with reports the same room and members.
    for (user, Found { room, partner, members, shared, .. }) in &by_user {
        for other in members {
            let theirs = by_user
                .get(other.as_str())
                .unwrap_or_else(|| panic!("{user} matched with {other}, who saw no match"));
            assert_eq!(&theirs.room, room, "{user} and {other} disagree on the room");
            let (mut a, mut b) = (members.clone(), theirs.members.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "{user} and {other} disagree on the members");
            assert_eq!(&theirs.shared, shared, "{user} and {other} disagree on shared interests");
        }
        if let Some(p) = partner {
            assert_eq!(by_user[p.as_str()].partner.as_deref(), Some(*user), "asymmetric pair");
        }
    }
    // Every room has exactly `group_size` members, and each of them reported it.
    for (room, reporters) in &rooms {
        assert_eq!(reporters.len(), group_size, "room {room} reported by {reporters:?}");
    }
    (rooms.len(), unmatched)
}

async fn stats(server: &TestServer) -> Value {
    let (status, body) = http_get(server.addr, "/api/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("stats json {body}: {e}"))
}

/// Wait (bounded) until `/api/stats` shows `field == want`.
async fn wait_stat(server: &TestServer, field: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats(server).await;
        if s[field].as_u64() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{field} never reached {want}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_two_thousand_pairs_up_everyone_exactly_once() {
    const N: usize = 2_000;
    let t0 = Instant::now();
    let server = TestServer::start(storm_config());
    let (seen, clients, took) =
        tokio::time::timeout(Duration::from_secs(50), storm(&server, "s", N, 2))
            .await
            .expect("storm finished in time");
    assert_eq!(seen.len(), N);
    let (rooms, unmatched) = check_storm(&seen, 2);
    eprintln!(
        "storm: {N} clients, {rooms} rooms, {unmatched} without a match, outcomes in {took:?}, total {:?}",
        t0.elapsed()
    );
    // 2,000 is even and everyone is compatible at the last step: nobody is left over.
    assert_eq!(unmatched, 0, "{unmatched} clients got no_match_found");
    assert_eq!(rooms, N / 2);
    wait_stat(&server, "searching", 0).await;
    wait_stat(&server, "rooms", rooms as u64).await;
    assert_eq!(stats(&server).await["online"].as_u64(), Some(N as u64));
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_storm_fills_rooms_of_three_consistently() {
    const N: usize = 300;
    let server = TestServer::start(storm_config());
    let (seen, clients, took) =
        tokio::time::timeout(Duration::from_secs(40), storm(&server, "g", N, 3))
            .await
            .expect("group storm finished in time");
    let (rooms, unmatched) = check_storm(&seen, 3);
    eprintln!("group storm: {N} clients, {rooms} rooms, {unmatched} unmatched in {took:?}");
    assert_eq!(unmatched, 0, "300 is a multiple of 3; nobody should be left over");
    assert_eq!(rooms, N / 3);
    wait_stat(&server, "searching", 0).await;
    wait_stat(&server, "rooms", rooms as u64).await;
    drop(clients);
}

/// One member's view of the load room.
#[derive(Default)]
struct RoomView {
    /// (seq, msg_id, sender, text) in arrival order.
    messages: Vec<(u64, String, String, String)>,
    /// (client_msg_id, seq, msg_id) in arrival order.
    acks: Vec<(String, u64, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_in_one_room_see_one_gap_free_order() {
    const MEMBERS: usize = 10;
    const EACH: usize = 60;
    const TOTAL: usize = MEMBERS * EACH;
    const ROOM: &str = "pub:load";
    let mut cfg = test_config();
    cfg.engine.send_per_second = 1_000;
    cfg.engine.send_burst = 1_000;
    cfg.engine.frames_per_second = 1_000;
    cfg.engine.frames_burst = 1_000;
    let server = TestServer::start(cfg);

    let mut clients = Vec::new();
    for i in 0..MEMBERS {
        let mut c = server.client(&format!("m{i:02}")).await;
        c.send_json(json!({"action": "join", "room_id": ROOM})).await;
        match c.recv_kind("joined").await {
            ServerFrame::Joined { room_id, members } => {
                assert_eq!(room_id, ROOM);
                assert_eq!(members.len(), i + 1, "{members:?}");
            }
            _ => unreachable!(),
        }
        clients.push(c);
    }

    let go = Arc::new(Barrier::new(MEMBERS));
    let mut tasks = Vec::new();
    for c in clients {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            let user = c.user_id.clone();
            let (mut tx, mut rx) = c.ws.split();
            let reader_user = user.clone();
            let reader = tokio::spawn(async move {
                let mut view = RoomView::default();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while view.messages.len() < TOTAL || view.acks.len() < EACH {
                    let msg =
                        tokio::time::timeout_at(deadline, rx.next()).await.unwrap_or_else(|_| {
                            panic!(
                                "{reader_user}: stuck at {} messages, {} acks",
                                view.messages.len(),
                                view.acks.len()
                            )
                        });
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(f))) => panic!("{reader_user}: closed {f:?}"),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => panic!("{reader_user}: socket error {e}"),
                        None => panic!("{reader_user}: stream ended"),
                    };
                    match serde_json::from_str::<ServerFrame>(text.as_str()).expect("frame") {
                        ServerFrame::Message(m) => {
                            assert_eq!(m.room_id, ROOM);
                            view.messages.push((m.seq, m.msg_id, m.sender, m.text));
                        }
                        ServerFrame::Ack { client_msg_id, room_id, seq, msg_id } => {
                            assert_eq!(room_id, ROOM);
                            view.acks.push((client_msg_id.expect("client_msg_id"), seq, msg_id));
                        }
                        ServerFrame::Presence { .. } => {}
                        other => panic!("{reader_user}: unexpected {other:?}"),
                    }
                }
                // Nothing more may follow: no duplicates after the full set.
                if let Ok(Some(Ok(Message::Text(t)))) =
                    tokio::time::timeout(Duration::from_millis(300), rx.next()).await
                {
                    panic!("{reader_user}: extra frame after all messages: {t}");
                }
                view
            });
            go.wait().await;
            for i in 0..EACH {
                let frame = json!({
                    "action": "send",
                    "room_id": ROOM,
                    "text": format!("{user}#{i}"),
                    "client_msg_id": format!("c{i}"),
                });
                tx.send(Message::Text(frame.to_string().into())).await.expect("send");
            }
            let view = reader.await.expect("reader");
            (user, view, tx)
        }));
    }
    let mut views = Vec::new();
    for t in tasks {
        let (user, view, tx) = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .expect("member done")
            .expect("task");
        views.push((user, view, tx));
    }

    // Every member: every message exactly once, seq 1..=TOTAL in arrival order.
    let reference = &views[0].1.messages;
    for (user, view, _) in &views {
        let seqs: Vec<u64> = view.messages.iter().map(|m| m.0).collect();
        let want: Vec<u64> = (1..=TOTAL as u64).collect();
        assert_eq!(seqs, want, "{user}: seq not gap-free and in order");
        assert_eq!(&view.messages, reference, "{user} saw a different order");
    }
    // Texts unique and exactly the expected set; each sender's own order preserved.
    let texts: BTreeSet<&str> = reference.iter().map(|m| m.3.as_str()).collect();
    assert_eq!(texts.len(), TOTAL, "duplicate texts");
    let mut next_i: HashMap<&str, usize> = HashMap::new();
    let mut by_text: HashMap<&str, (u64, &str)> = HashMap::new();
    for (seq, msg_id, sender, text) in reference {
        let (who, i) = text.split_once('#').expect("text shape");
        assert_eq!(who, sender, "sender field matches the author");
        let i: usize = i.parse().expect("index");
        let expect = next_i.entry(sender.as_str()).or_default();
        assert_eq!(i, *expect, "{sender}'s messages out of order");
        *expect += 1;
        by_text.insert(text.as_str(), (*seq, msg_id.as_str()));
    }
    assert_eq!(next_i.len(), MEMBERS);
    assert!(next_i.values().all(|&n| n == EACH), "{next_i:?}");
    // Acks: one per message, in send order, seqs increasing and equal to the message's.
    for (user, view, _) in &views {
        assert_eq!(view.acks.len(), EACH, "{user}");
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
}
