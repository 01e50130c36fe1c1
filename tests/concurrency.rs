//! Concurrency: thousands of real WebSocket clients searching at the same moment,
//! and many members posting into one room at once. The checks are global
//! invariants (no double or asymmetric matches, consistent rooms, gap-free `seq`
//! in one order for everyone), computed from what every client actually received.

use rendezvous_test_support as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::{Duration, Instant};

use common::chat::{check_one_order, pipeline, Tail};
use common::http::{stats, wait_stats};
use common::search::Found;
use common::storm::{interests_for, Seen, Storm};
use common::*;
use rendezvous::config::Config;
use rendezvous_actors::protocol::ServerFrame;
use serde_json::json;

/// Storm settings: every limit that a crowd on one machine would trip is raised,
/// and the ladder reaches "anyone in the language" after 400 ms.
fn storm_config() -> Config {
    let mut c = test_config();
    let e = &mut c.engine;
    e.ladder = vec![step(0, false, 2), step(200, false, 1), step(400, false, 0)];
    e.search_timeout_ms = 10_000;
    lift_rate_limits(e, 1_000);
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

/// Wait (bounded) until `/api/stats` shows `field == want`.
async fn wait_stat(server: &TestServer, field: &str, want: u64) {
    let (what, within) = (format!("{field} == {want}"), Duration::from_secs(5));
    wait_stats(server.addr, &what, within, |s| s[field].as_u64() == Some(want)).await;
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
    assert_eq!(stats(server.addr).await["online"].as_u64(), Some(N as u64));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_in_one_room_see_one_gap_free_order() {
    const MEMBERS: usize = 10;
    const EACH: usize = 60;
    const ROOM: &str = "pub:load";
    let server = TestServer::start_with(|e| lift_rate_limits(e, 1_000));

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

    let tail = Tail { quiet: Duration::from_millis(300), presence_after: false };
    let views = pipeline(clients, ROOM, EACH, tail).await;
    check_one_order(&views, EACH);
}
