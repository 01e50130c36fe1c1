//! The cluster contract, against real `rendezvous` processes joined through a
//! private `redis-server` (harness: `common::cluster`). Matches, rooms, presence,
//! reconnects, the `find_match` rate limit and trending span nodes; a node that is
//! killed or drained is noticed by the others; Redis going away degrades every node
//! to local service, and the cluster re-forms when it comes back.
//!
//! Every test starts its own Redis and nodes on free ports. The storm takes the CPU
//! lock exclusively, so that the timing bounds of the other tests (a dead node is
//! noticed within 5 s, …) are never measured while 2,100 storm clients own both cores.

use rendezvous_test_support as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::{Duration, Instant};

use common::chat::*;
use common::cluster::*;
use common::search::{pair, Found, Search};
use common::storm::{interests_for, Seen, Storm};
use common::{http_get, Client, Ended};
use rendezvous_actors::protocol::{ErrorCode, PresenceStatus, ServerFrame};
use serde_json::json;
use tokio::sync::RwLock;

/// How these tests search (see the module doc of `search`).
const SEARCH: Search = Search::AMID_PRESENCE;

/// Shared by every test, taken exclusively by the storm (see the module doc).
static CPU: RwLock<()> = RwLock::const_new(());

/// Past the default ladder's full relaxation (900 ms) plus ticks and a hop through
/// Redis: a pair that is ever going to be matched is matched within this window.
const PAST_FULL_RELAX: Duration = Duration::from_millis(1_500);

// ---------------------------------------------------------------- helpers

/// Join a public room; the `joined` member list, sorted.
async fn join(c: &mut Client, room: &str) -> Vec<String> {
    c.send_json(json!({"action":"join","room_id":room})).await;
    match next(c).await {
        ServerFrame::Joined { room_id, mut members } => {
            assert_eq!(room_id, room);
            members.sort();
            members
        }
        other => panic!("{}: expected joined, got {other:?}", c.user_id),
    }
}

/// `cancel_match` is always answered with `match_cancelled`: proof of a live session.
async fn alive(c: &mut Client) {
    c.send_json(json!({"action":"cancel_match"})).await;
    match next(c).await {
        ServerFrame::MatchCancelled {} => {}
        other => panic!("{}: expected match_cancelled, got {other:?}", c.user_id),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- matching

/// Two users on different nodes with the same interests are paired with each other:
/// `searching` for both, then exactly one `match_found` each, naming the same room,
/// the other as partner, both as members and both interests as shared.
#[tokio::test]
async fn a_pair_on_two_nodes_is_matched_into_one_room() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(2).await;
    let [mut a, mut b] = cluster.clients([(0, "alice"), (1, "bob")]).await;
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    let fa = SEARCH.expect_match(&mut a).await;
    let fb = SEARCH.expect_match(&mut b).await;
    assert_eq!(fa.room, fb.room, "one room for both");
    assert_eq!(fa.partner.as_deref(), Some("bob"));
    assert_eq!(fb.partner.as_deref(), Some("alice"));
    for f in [&fa, &fb] {
        assert_eq!(f.members, strings(&["alice", "bob"]), "{f:?}");
        assert_eq!(f.shared, strings(&["chess", "go"]), "{f:?}");
        assert_eq!(f.score, 2, "{f:?}");
    }
    // One match_found per search: nothing follows, on either node.
    tokio::join!(SEARCH.quiet(&mut a, PAST_FULL_RELAX), SEARCH.quiet(&mut b, PAST_FULL_RELAX));
}

/// A group search of three users on three different nodes fills one room: everyone
/// gets the same room and all three members, and no `partner_id`.
#[tokio::test]
async fn a_group_of_three_on_three_nodes_gets_one_room() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    let names = ["gina", "hugo", "ivan"];
    let mut clients = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut c = cluster.client(i, name).await;
        SEARCH.search(&mut c, &["chess", "go"], json!({"group_size": 3})).await;
        clients.push(c);
    }
    let mut found = Vec::new();
    for c in &mut clients {
        found.push(SEARCH.expect_match(c).await);
    }
    for f in &found {
        assert_eq!(f.room, found[0].room, "one room for the group: {found:?}");
        assert_eq!(f.members, strings(&names), "{f:?}");
        assert_eq!(f.partner, None, "partner_id in a group: {f:?}");
    }
    for c in &mut clients {
        SEARCH.quiet(c, Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------- chat

/// Chat in a room whose members are on different nodes: `ack` and `message` with
/// `seq` 1, 2, …; `typing`, `read` and `signal` reach the other member (and are not
/// echoed to their author); `history` is the same from both nodes.
#[tokio::test]
async fn chat_typing_read_and_signal_cross_nodes() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(2).await;
    let (mut a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;

    send_text(&mut a, &room, "hello bob", "a1").await;
    let m1 = sent(&mut a, &room, "a1").await;
    assert_eq!((m1.seq, m1.sender.as_str(), m1.text.as_str()), (1, "alice", "hello bob"));
    assert_eq!(expect_message(&mut b).await, m1, "bob got alice's message as stored");

    send_text(&mut b, &room, "hi alice", "b1").await;
    let m2 = sent(&mut b, &room, "b1").await;
    assert_eq!((m2.seq, m2.sender.as_str(), m2.text.as_str()), (2, "bob", "hi alice"));
    assert_eq!(expect_message(&mut a).await, m2);

    a.send_json(json!({"action":"typing","room_id":room,"active":true})).await;
    match next(&mut b).await {
        ServerFrame::Typing { room_id, user_id, active } => {
            assert_eq!((room_id.as_str(), user_id.as_str(), active), (room.as_str(), "alice", true))
        }
        other => panic!("bob: expected typing, got {other:?}"),
    }

    b.send_json(json!({"action":"read","room_id":room,"seq":2})).await;
    // alice's next frame is bob's receipt: her own typing was not echoed to her.
    match next(&mut a).await {
        ServerFrame::Read { room_id, user_id, seq } => {
            assert_eq!((room_id.as_str(), user_id.as_str(), seq), (room.as_str(), "bob", 2))
        }
        other => panic!("alice: expected read, got {other:?}"),
    }

    a.send_json(json!({"action":"signal","room_id":room,"payload":{"sdp":"x"}})).await;
    match next(&mut b).await {
        ServerFrame::Signal { room_id, from, payload } => {
            assert_eq!((room_id.as_str(), from.as_str()), (room.as_str(), "alice"));
            assert_eq!(payload, json!({"sdp":"x"}));
        }
        other => panic!("bob: expected signal, got {other:?}"),
    }

    // Each side's next frame is its history: no echo of the signal or the receipt.
    let ha = history(&mut a, &room, 0, None).await;
    let hb = history(&mut b, &room, 0, None).await;
    assert_eq!(ha, vec![m1.clone(), m2.clone()], "history on node-a");
    assert_eq!(hb, ha, "history on node-b");
}

/// Two members on different nodes each pipeline 300 messages at the same moment:
/// both receive all 600 exactly once, in one identical order, with `seq` 1..=600;
/// every `ack` names the `seq` of its own message; `history` from either node
/// returns the first 200 in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_two_nodes_see_one_gap_free_order() {
    const EACH: usize = 300;
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(2).await;
    let (a, b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;

    let tail = Tail { quiet: Duration::from_millis(500), presence_after: true };
    let mut views = pipeline(vec![a, b], &room, EACH, tail).await;
    let reference = check_one_order(&views, EACH);
    // History from either node: the first 200 in the same order, then the rest.
    for (_, c) in &mut views {
        let h = history(c, &room, 0, Some(200)).await;
        let got: Vec<(u64, String, String, String)> =
            h.into_iter().map(|m| (m.seq, m.msg_id, m.sender, m.text)).collect();
        assert_eq!(got, reference[..200], "{}: history after 0", c.user_id);
        let h = history(c, &room, 400, Some(200)).await;
        let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (401..=600).collect::<Vec<u64>>(), "{}: history after 400", c.user_id);
    }
}

// ---------------------------------------------------------------- public rooms

/// A public room spans nodes: `joined` lists everyone already in, wherever they are
/// connected, and the others get `presence online`; messages posted at once from
/// three nodes reach every member in one `seq` order; `leave` answers `left`, the
/// rest get `presence left`, and the leaver gets nothing more.
#[tokio::test]
async fn a_public_room_spans_nodes() {
    const ROOM: &str = "pub:lobby";
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0, "alice").await;
    assert_eq!(join(&mut a, ROOM).await, strings(&["alice"]));
    let mut b = cluster.client(1, "bob").await;
    assert_eq!(join(&mut b, ROOM).await, strings(&["alice", "bob"]));
    expect_presence(&mut a, ROOM, "bob", PresenceStatus::Online).await;
    let mut c = cluster.client(2, "carol").await;
    assert_eq!(join(&mut c, ROOM).await, strings(&["alice", "bob", "carol"]));
    expect_presence(&mut a, ROOM, "carol", PresenceStatus::Online).await;
    expect_presence(&mut b, ROOM, "carol", PresenceStatus::Online).await;

    // All three post before reading anything.
    for (cl, cid) in [(&mut a, "a1"), (&mut b, "b1"), (&mut c, "c1")] {
        let text = format!("from {}", cl.user_id);
        send_text(cl, ROOM, &text, cid).await;
    }
    let mut views = Vec::new();
    for (cl, cid) in [(&mut a, "a1"), (&mut b, "b1"), (&mut c, "c1")] {
        let (mut messages, mut ack) = (Vec::new(), None);
        while messages.len() < 3 || ack.is_none() {
            match next(cl).await {
                ServerFrame::Message(m) => messages.push(m),
                ServerFrame::Ack { client_msg_id, seq, .. } if ack.is_none() => {
                    assert_eq!(client_msg_id.as_deref(), Some(cid));
                    ack = Some(seq);
                }
                other => panic!("{}: unexpected {other:?}", cl.user_id),
            }
        }
        let own = messages.iter().find(|m| m.sender == cl.user_id).expect("own message");
        assert_eq!(ack, Some(own.seq), "{}: ack vs own message", cl.user_id);
        views.push(messages);
    }
    assert_eq!(views[0].iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(views[1], views[0], "bob's order differs from alice's");
    assert_eq!(views[2], views[0], "carol's order differs from alice's");
    let senders: BTreeSet<&str> = views[0].iter().map(|m| m.sender.as_str()).collect();
    assert_eq!(senders, BTreeSet::from(["alice", "bob", "carol"]));

    b.send_json(json!({"action":"leave","room_id":ROOM})).await;
    match next(&mut b).await {
        ServerFrame::Left { room_id } => assert_eq!(room_id, ROOM),
        other => panic!("bob: expected left, got {other:?}"),
    }
    expect_presence(&mut a, ROOM, "bob", PresenceStatus::Left).await;
    expect_presence(&mut c, ROOM, "bob", PresenceStatus::Left).await;

    let m = exchange(&mut a, &mut c, ROOM, "bob is gone", "a2").await;
    assert_eq!(m.seq, 4);
    b.expect_silence(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------- storm

fn storm_user(i: usize) -> String {
    format!("s{i:05}")
}

/// `n` clients connect round-robin to the nodes and search in one language; see
/// [`Storm::run`]. Members and shared interests come back sorted.
async fn storm(cluster: &Cluster, n: usize) -> (Vec<Seen>, Vec<Client>, Duration) {
    let urls = (0..n).map(|i| cluster.node(i % cluster.nodes.len()).ws_url(&storm_user(i)));
    // Everyone has an outcome within the search timeout (15 s) plus slack; a stray
    // second match_found (from another node) has a second to arrive.
    let plan = Storm {
        urls: urls.collect(),
        outcome_within: Duration::from_secs(30),
        linger: Duration::from_millis(1_000),
    };
    let (mut seen, clients, took) = plan
        .run(|i| json!({"action": "find_match", "interests": interests_for(i), "language": "en"}))
        .await;
    seen.iter_mut().flat_map(|s| s.matches.iter_mut()).for_each(Found::sort);
    (seen, clients, took)
}

/// The pair invariants across the whole storm; returns (rooms, unmatched users).
fn check_storm(seen: &[Seen]) -> (BTreeMap<String, Vec<String>>, usize) {
    let index: HashMap<&str, usize> =
        seen.iter().enumerate().map(|(i, s)| (s.user.as_str(), i)).collect();
    let mut by_user: HashMap<&str, &Found> = HashMap::new();
    let mut unmatched = 0;
    for (i, s) in seen.iter().enumerate() {
        assert!(s.other.is_empty(), "{}: unexpected frames {:?}", s.user, s.other);
        assert_eq!(s.searching, 1, "{}: one searching per find_match", s.user);
        assert_eq!(
            s.matches.len() + s.no_match,
            1,
            "{}: exactly one outcome, got {} match_found + {} no_match_found: {:?}",
            s.user,
            s.matches.len(),
            s.no_match,
            s.matches
        );
        let Some(m) = s.matches.first() else {
            unmatched += 1;
            continue;
        };
        assert_eq!(m.members.len(), 2, "{}: room {} has {:?}", s.user, m.room, m.members);
        assert!(m.members.contains(&s.user), "{}: not among own members {:?}", s.user, m.members);
        let p = m.partner.as_deref().unwrap_or_else(|| panic!("{}: no partner_id", s.user));
        assert_ne!(p, s.user, "self-match in room {}", m.room);
        assert!(m.members.iter().any(|u| u == p), "{}: partner {p} not in {:?}", s.user, m.members);
        assert_eq!(m.score as usize, m.shared.len(), "{}: score is the shared count", s.user);
        let j = *index.get(p).unwrap_or_else(|| panic!("{}: partner {p} is no storm user", s.user));
        let (mine, theirs) = (interests_for(i), interests_for(j));
        for x in &m.shared {
            assert!(
                mine.contains(&x.as_str()) && theirs.contains(&x.as_str()),
                "{}: shared {x} is not in both {mine:?} and {theirs:?}",
                s.user
            );
        }
        by_user.insert(&s.user, m);
    }
    // Symmetry: the partner reports the same room, members and shared interests,
    // and names this user as partner.
    for (user, m) in &by_user {
        let p = m.partner.as_deref().expect("checked above");
        let theirs =
            by_user.get(p).unwrap_or_else(|| panic!("{user} matched with {p}, who saw no match"));
        assert_eq!(theirs.partner.as_deref(), Some(*user), "asymmetric pair {user} -> {p}");
        assert_eq!(theirs.room, m.room, "{user} and {p} disagree on the room");
        assert_eq!(theirs.members, m.members, "{user} and {p} disagree on the members");
        assert_eq!(theirs.shared, m.shared, "{user} and {p} disagree on shared interests");
    }
    // Rooms: each reported by exactly its two members; nobody in two rooms.
    let mut rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut room_of_member: HashMap<&str, &str> = HashMap::new();
    for (user, m) in &by_user {
        rooms.entry(m.room.clone()).or_default().push(user.to_string());
        for member in &m.members {
            if let Some(prev) = room_of_member.insert(member, &m.room) {
                assert_eq!(prev, m.room, "{member} is in two rooms: {prev} and {}", m.room);
            }
        }
    }
    for (room, reporters) in &mut rooms {
        reporters.sort();
        assert_eq!(reporters, &by_user[reporters[0].as_str()].members, "room {room}");
    }
    (rooms, unmatched)
}

/// 2,100 clients spread round-robin over three nodes search at the same moment in
/// one language (the ladder reaches "anyone" at 900 ms): every client gets exactly
/// one outcome; no user is matched twice, with themselves, or asymmetrically; every
/// room has exactly two members and both report the same room, members and shared
/// interests; all but a handful are matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_three_nodes_pairs_everyone_at_most_once() {
    const N: usize = 2_100;
    let _cpu = CPU.write().await;
    let t0 = Instant::now();
    let cluster = Cluster::start_with(3, &[("--search-timeout-ms", "15000")]).await;
    let (seen, clients, took) = tokio::time::timeout(Duration::from_secs(120), storm(&cluster, N))
        .await
        .expect("storm finished in time");
    assert_eq!(seen.len(), N);
    let (rooms, unmatched) = check_storm(&seen);
    let node_of = |user: &str| user[1..].parse::<usize>().expect("storm user number") % 3;
    let cross = rooms.values().filter(|m| node_of(&m[0]) != node_of(&m[1])).count();
    eprintln!(
        "cluster storm: {N} clients on 3 nodes, {} rooms ({cross} across nodes), {unmatched} \
         without a match, outcomes in {took:?}, total {:?}",
        rooms.len(),
        t0.elapsed()
    );
    assert_eq!(rooms.len() * 2 + unmatched, N);
    // Everyone is compatible at the last ladder step, so only a few may be left over
    // by races between nodes (a correct bridge leaves none: N is even).
    assert!(unmatched * 100 <= N, "{unmatched} of {N} clients got no_match_found");
    for node in &cluster.nodes {
        wait_stats(node, "searching == 0", Duration::from_secs(5), |s| s["searching"] == 0).await;
    }
    drop(clients);
}

// ---------------------------------------------------------------- sessions

/// A user whose socket drops comes back on another node within the grace period:
/// the partner sees `offline`, then `online`; the room is in `welcome.rooms`;
/// `history` has what was said before; new messages flow both ways with the next
/// `seq`.
#[tokio::test]
async fn reconnecting_to_another_node_within_grace_keeps_the_seat() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    let (mut a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let m1 = exchange(&mut a, &mut b, &room, "before", "a1").await;
    assert_eq!(m1.seq, 1);

    // alice's connection dies without a close handshake.
    drop(a);
    let dropped = Instant::now();
    expect_presence(&mut b, &room, "alice", PresenceStatus::Offline).await;
    let mut a = cluster.client(2, "alice").await;
    assert!(
        dropped.elapsed() < Duration::from_millis(2_500),
        "precondition: back within the 3 s grace, took {:?}",
        dropped.elapsed()
    );
    assert_eq!(a.welcome_rooms(), vec![room.clone()], "welcome on node-c lists the kept room");
    expect_presence(&mut b, &room, "alice", PresenceStatus::Online).await;
    assert_eq!(history(&mut a, &room, 0, None).await, vec![m1], "history from node-c");

    let m2 = exchange(&mut a, &mut b, &room, "now on node-c", "a2").await;
    assert_eq!(m2.seq, 2);
    let m3 = exchange(&mut b, &mut a, &room, "welcome back", "b1").await;
    assert_eq!(m3.seq, 3);
}

/// A member who reconnects to the node that created their match (it claimed the
/// two searches, both from other nodes, so it holds no member of the room) reads
/// the room's history and carries on. That node once kept a replica of the room
/// that never heard its messages, found it on the reconnect and answered
/// `history` with nothing. Which node creates a match is a race, so the check
/// runs over enough pairs for the third node to create several.
#[tokio::test]
async fn reconnecting_to_the_node_that_created_the_match_keeps_the_history() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    // node-c creates about one match in twelve here: go on until it has created
    // three (at most 200 pairs, which leave it none with odds below 1 in 10^7).
    const MAX_PAIRS: usize = 200;
    let created_on_c = || async {
        let (_, metrics) = http_get(cluster.nodes[2].addr, "/metrics").await;
        metrics
            .lines()
            .filter(|l| l.starts_with("rendezvous_matches_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut pairs = 0;
    while pairs < MAX_PAIRS && created_on_c().await < 3.0 {
        let i = pairs;
        pairs += 1;
        let (alice, bob) = (format!("alice{i}"), format!("bob{i}"));
        let (mut a, mut b, room) = pair(&cluster.nodes, (0, &alice), (1, &bob)).await;
        let m1 = exchange(&mut a, &mut b, &room, "before", "a1").await;
        drop(a);
        expect_presence(&mut b, &room, &alice, PresenceStatus::Offline).await;
        let mut a = cluster.client(2, &alice).await;
        assert_eq!(a.welcome_rooms(), vec![room.clone()], "pair {i}: welcome on node-c");
        expect_presence(&mut b, &room, &alice, PresenceStatus::Online).await;
        assert_eq!(history(&mut a, &room, 0, None).await, vec![m1], "pair {i}: history on node-c");
        send_text(&mut a, &room, "after", "a2").await;
        let m2 = sent(&mut a, &room, "a2").await;
        assert_eq!(m2.seq, 2, "pair {i}");
        assert_eq!(expect_message(&mut b).await, m2, "pair {i}");
    }
    let created = created_on_c().await;
    eprintln!("node-c created {created} of {pairs} matches");
    assert!(created >= 1.0, "node-c created none of {pairs} matches: the case was not exercised");
}

/// A second connection of the same user on another node replaces the first: the
/// old socket is closed with 4009 and the new one serves.
#[tokio::test]
async fn a_second_connection_on_another_node_replaces_the_first() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(2).await;
    let [mut old, mut new] = cluster.clients([(0, "alice"), (1, "alice")]).await;
    assert_eq!(old.closed().await, Ended::Closed(4009));
    alive(&mut new).await;
}

/// The search of a connection that was replaced from another node dies with it: the
/// user's new search is never matched with the old one, and pairs with someone else.
#[tokio::test]
async fn a_replaced_connection_leaves_no_search_behind() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    let mut old = cluster.client(0, "sam").await;
    SEARCH.search(&mut old, &["chess", "go"], json!({})).await;
    let mut new = cluster.client(1, "sam").await;
    assert_eq!(old.closed().await, Ended::Closed(4009));
    SEARCH.search(&mut new, &["chess", "go"], json!({})).await;
    SEARCH.quiet(&mut new, PAST_FULL_RELAX).await;

    let mut pat = cluster.client(2, "pat").await;
    SEARCH.search(&mut pat, &["chess", "go"], json!({})).await;
    let fs = SEARCH.expect_match(&mut new).await;
    let fp = SEARCH.expect_match(&mut pat).await;
    assert_eq!(fs.partner.as_deref(), Some("pat"));
    assert_eq!(fp.partner.as_deref(), Some("sam"));
    assert_eq!(fs.room, fp.room);
}

// ---------------------------------------------------------------- node failure

/// kill -9 of a node is noticed by the others within 5 s: a partner on another node
/// gets `presence offline`, and the survivors' `/api/stats` count one node less.
#[tokio::test]
async fn a_killed_node_is_noticed_by_partners_and_peers_within_five_seconds() {
    let _cpu = CPU.read().await;
    let mut cluster = Cluster::start(3).await;
    let (a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let budget = Duration::from_secs(6); // 5 s plus polling and scheduling slack

    cluster.node_mut(0).kill9();
    let killed = Instant::now();
    match b.try_recv(Duration::from_secs(10)).await {
        Some(ServerFrame::Presence { room_id, user_id, status }) => {
            assert_eq!((room_id.as_str(), user_id.as_str()), (room.as_str(), "alice"));
            assert_eq!(status, PresenceStatus::Offline);
        }
        other => panic!("bob: expected presence offline of alice, got {other:?}"),
    }
    let noticed = killed.elapsed();
    assert!(noticed < budget, "bob learned alice was offline after {noticed:?}");
    for i in [1, 2] {
        let left = budget.saturating_sub(killed.elapsed());
        wait_nodes(cluster.node(i), 2, left).await;
    }
    eprintln!("offline after {noticed:?}; nodes == 2 after {:?}", killed.elapsed());
    drop(a);
}

/// The survivors notice a killed node one at a time: the first to see its beat
/// run out removes it from `rdv:nodes`, so a node whose check comes later finds
/// no entry to age. That node must still learn of the death (from the first
/// one's `node_bye` on the dead node's behalf). Here node-b is paused (SIGSTOP)
/// over the moment node-c notices, for less than the peer timeout, so that
/// node-c is first for certain; bob, on node-b, must still get `presence offline`.
#[tokio::test]
async fn a_node_that_checks_after_another_removed_a_dead_peer_still_learns_it() {
    let _cpu = CPU.write().await;
    let mut cluster = Cluster::start(3).await;
    let (a, mut b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let signal = |sig: &str, pid: u32| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}: {status}");
    };
    let paused = cluster.node(1).pid();
    cluster.node_mut(0).kill9();
    let killed = Instant::now();
    // node-a's last beat was at most 0.5 s before the kill, and a peer is dead
    // past 3 s: nobody can see it dead before 2.5 s, and node-c sees it by 3.5 s.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    signal("-STOP", paused);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    signal("-CONT", paused);
    match b.try_recv(Duration::from_secs(6)).await {
        Some(ServerFrame::Presence { room_id, user_id, status }) => {
            assert_eq!((room_id.as_str(), user_id.as_str()), (room.as_str(), "alice"));
            assert_eq!(status, PresenceStatus::Offline);
        }
        other => panic!("bob: expected presence offline of alice, got {other:?}"),
    }
    eprintln!("offline after {:?}", killed.elapsed());
    wait_nodes(cluster.node(1), 2, Duration::from_secs(5)).await;
    drop(a);
}

/// A user searching on a node that is killed is never matched afterwards: once the
/// node is gone, a search with the same interests on another node finds nobody
/// (the ladder reaches "anyone in the language", so any ghost would be taken).
#[tokio::test]
async fn a_search_on_a_killed_node_is_never_matched() {
    let _cpu = CPU.read().await;
    let mut cluster = Cluster::start(3).await;
    let mut carol = cluster.client(0, "carol").await;
    SEARCH.search(&mut carol, &["rare-x", "rare-y"], json!({})).await;
    // No frame tells when the search is visible to other nodes; give it time to get
    // there, or an early kill would make the test vacuous.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.node_mut(0).kill9();
    let killed = Instant::now();
    for i in [1, 2] {
        wait_nodes(cluster.node(i), 2, Duration::from_secs(6)).await;
    }
    // "Within a few seconds everywhere": search after 5 s.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
    let mut dave = cluster.client(1, "dave").await;
    SEARCH.search(&mut dave, &["rare-x", "rare-y"], json!({"max_wait_ms": 3_000})).await;
    match SEARCH.outcome(&mut dave).await {
        ServerFrame::NoMatchFound {} => {}
        other => panic!("dave was matched after carol's node died: {other:?}"),
    }
    drop(carol);
}

/// With Redis gone, nodes keep serving locally: `/readyz` turns 503 within 3 s while
/// `/healthz` stays 200, and two users on the same node still match and chat. When
/// Redis is back on the same port, `/readyz` is 200 again within 10 s, the cluster
/// re-forms and cross-node matching works again. No node exits at any point.
#[tokio::test]
async fn nodes_survive_a_redis_outage_and_rejoin_when_it_returns() {
    let _cpu = CPU.read().await;
    let mut cluster = Cluster::start(2).await;

    cluster.redis.stop();
    let stopped = Instant::now();
    for node in &cluster.nodes {
        let left = Duration::from_secs(4).saturating_sub(stopped.elapsed()); // 3 s + slack
        wait_http_status(node, "/readyz", 503, left).await;
    }
    eprintln!("readyz 503 on both after {:?}", stopped.elapsed());
    for node in &cluster.nodes {
        assert_eq!(http_get(node.addr, "/healthz").await.0, 200, "{}: healthz", node.id);
    }

    // Local matching and chat on node-a while Redis is down.
    let (mut x, mut y, room) = pair(&cluster.nodes, (0, "xena"), (0, "yuri")).await;
    let m = exchange(&mut x, &mut y, &room, "redis is down", "x1").await;
    assert_eq!(m.seq, 1);
    for node in &mut cluster.nodes {
        assert!(node.try_wait().is_none(), "{} exited while Redis was down", node.id);
        assert_eq!(http_get(node.addr, "/healthz").await.0, 200, "{}: healthz", node.id);
    }

    cluster.redis.restart();
    let restarted = Instant::now();
    for node in &cluster.nodes {
        let left = Duration::from_secs(10).saturating_sub(restarted.elapsed());
        wait_http_status(node, "/readyz", 200, left).await;
    }
    eprintln!("readyz 200 on both after {:?}", restarted.elapsed());
    cluster.wait_formed().await;

    let (mut p, mut q, room) = pair(&cluster.nodes, (0, "pia"), (1, "quin")).await;
    exchange(&mut p, &mut q, &room, "redis is back", "p1").await;
    for node in &mut cluster.nodes {
        assert!(node.try_wait().is_none(), "{} exited", node.id);
    }
}

/// SIGTERM drains a node: its sessions are closed with 1012, it exits 0, and the
/// other node counts one node within 5 s while its own sessions carry on.
#[tokio::test]
async fn sigterm_drains_a_node_and_the_cluster_shrinks() {
    let _cpu = CPU.read().await;
    let mut cluster = Cluster::start(2).await;
    let [mut a, mut b] = cluster.clients([(0, "alice"), (1, "bob")]).await;
    cluster.node(0).sigterm();
    assert_eq!(a.closed().await, Ended::Closed(1012));
    assert_eq!(cluster.node_mut(0).wait_exit(Duration::from_secs(10)), 0, "exit code");
    let shrunk = wait_nodes(cluster.node(1), 1, Duration::from_secs(5)).await;
    eprintln!("node-b counted 1 node {shrunk:?} after node-a exited");
    alive(&mut b).await;
}

// ---------------------------------------------------------------- shared state

/// The `find_match` rate limit is per user across the cluster: with 3 per minute,
/// two searches on node-a and one on node-b pass, and the fourth (on node-b) is
/// refused with `rate_limited` and a `retry_after_ms`.
#[tokio::test]
async fn the_find_match_rate_limit_is_shared_by_all_nodes() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start_with(2, &[("--find-match-per-minute", "3")]).await;
    let mut u = cluster.client(0, "uma").await;
    for _ in 0..2 {
        SEARCH.search(&mut u, &["chess"], json!({})).await;
        alive(&mut u).await; // cancel_match -> match_cancelled
    }
    let mut u2 = cluster.client(1, "uma").await;
    assert_eq!(u.closed().await, Ended::Closed(4009));
    SEARCH.search(&mut u2, &["chess"], json!({})).await;
    alive(&mut u2).await;
    u2.find_match(&["chess"]).await;
    match next(&mut u2).await {
        ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, .. } => {
            let retry = retry_after_ms.expect("retry_after_ms on rate_limited");
            assert!(retry > 0 && retry <= 60_000, "retry_after_ms = {retry}");
        }
        other => panic!("4th search: expected rate_limited, got {other:?}"),
    }
}

/// Trending is one cluster-wide count: after three cross-node matches sharing
/// `zither` and `yodel`, `/api/trending?limit=5` answers the same on every node and
/// counts each of the two exactly once per match.
#[tokio::test]
async fn trending_is_the_same_on_every_node() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(3).await;
    let mut keep = Vec::new();
    for (i, j) in [(0, 1), (1, 2), (2, 0)] {
        let (a, b) = (format!("t{i}{j}a"), format!("t{i}{j}b"));
        let mut ca = cluster.client(i, &a).await;
        let mut cb = cluster.client(j, &b).await;
        SEARCH.search(&mut ca, &["zither", "yodel"], json!({})).await;
        SEARCH.search(&mut cb, &["yodel", "zither"], json!({})).await;
        let fa = SEARCH.expect_match(&mut ca).await;
        let fb = SEARCH.expect_match(&mut cb).await;
        assert_eq!((fa.partner.as_deref(), fa.room.as_str()), (Some(b.as_str()), fb.room.as_str()));
        assert_eq!(fa.shared, strings(&["yodel", "zither"]));
        keep.extend([ca, cb]);
    }
    let want = BTreeSet::from([("yodel".to_string(), 3), ("zither".to_string(), 3)]);
    let started = Instant::now();
    let answers = loop {
        let mut answers = Vec::new();
        for node in &cluster.nodes {
            let (status, v) = get_json(node, "/api/trending?limit=5").await;
            assert_eq!(status, 200, "{}: trending {v}", node.id);
            answers.push(v);
        }
        let counted: BTreeSet<(String, u64)> = answers[0]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let name = e["interest"].as_str().unwrap_or_default().to_string();
                        (name, e["score"].as_u64().unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if answers.iter().all(|v| v == &answers[0]) && counted == want {
            break answers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "trending never agreed on {want:?}: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("trending on every node: {}", answers[0]);
    drop(keep);
}

// ---------------------------------------------------------------- undeliverable

/// A claimed cross-node match that cannot be delivered (the partner's node stops
/// answering between the claim and the notification) puts the other member back in
/// the pool at their old place: alice never hears of bob, and is matched with the
/// next compatible searcher ahead of a newer one.
#[tokio::test]
async fn an_undeliverable_match_puts_the_others_back_at_their_old_place() {
    let _cpu = CPU.read().await;
    let cluster = Cluster::start(2).await;
    let mut bob = cluster.client(1, "bob").await;
    SEARCH.search(&mut bob, &["kite", "loom"], json!({})).await;
    // bob's search reaches node-a's pool as a replica; then node-b freezes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = cluster.node(1).pid().to_string();
    let st = std::process::Command::new("kill").args(["-STOP", &frozen]).status().expect("kill");
    assert!(st.success());
    let mut alice = cluster.client(0, "alice").await;
    SEARCH.search(&mut alice, &["kite", "loom"], json!({})).await;
    // node-a claims {alice, bob} and offers bob's node, which cannot answer: after
    // the offer times out alice is back in the pool, with her original ticket.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let mut carol = cluster.client(0, "carol").await;
    SEARCH.search(&mut carol, &["kite", "loom"], json!({})).await;
    let mut dave = cluster.client(0, "dave").await;
    SEARCH.search(&mut dave, &["kite", "loom"], json!({})).await;
    let fa = SEARCH.expect_match(&mut alice).await;
    assert_eq!(fa.partner.as_deref(), Some("carol"), "alice waited longest: {fa:?}");
    let fc = SEARCH.expect_match(&mut carol).await;
    assert_eq!(fc.room, fa.room);
    let st = std::process::Command::new("kill").args(["-CONT", &frozen]).status().expect("kill");
    assert!(st.success());
    // Once node-b is back, bob (still searching) is matched with dave, never alice.
    let fd = SEARCH.expect_match(&mut dave).await;
    assert_eq!(fd.partner.as_deref(), Some("bob"), "{fd:?}");
    let fb = SEARCH.expect_match(&mut bob).await;
    assert_eq!(fb.room, fd.room);
    cluster.wait_formed().await;
}
