//! Matching behaviour through real WebSocket clients against a real server: who is
//! paired with whom, when criteria relax, and how searches end (timeout, cancel,
//! `next`, `block`, disconnects). Each test runs its own server on a free port.

use rendezvous_test_support as common;

use std::time::{Duration, Instant};

use common::http::{stats, wait_stats};
use common::search::Search;
use common::*;
use rendezvous::config::Config;
use rendezvous_actors::protocol::{ErrorCode, PresenceStatus, ServerFrame};
use rendezvous_actors::LadderStep;
use serde_json::{json, Value};

/// How these tests search (see the module doc of `search`).
const SEARCH: Search = Search::AMID_CHATTER;

/// Longer than the test ladder's full relaxation (900 ms) plus a few ticks: a pair
/// that is ever going to be matched by relaxation is matched within this window.
const PAST_FULL_RELAX: Duration = Duration::from_millis(1_300);

fn config_with_ladder(ladder: Vec<LadderStep>) -> Config {
    let mut c = test_config();
    c.engine.ladder = ladder;
    c
}

async fn expect_no_match(c: &mut Client) {
    let f = SEARCH.outcome(c).await;
    assert!(
        matches!(f, ServerFrame::NoMatchFound {}),
        "{}: expected no_match_found, got {f:?}",
        c.user_id
    );
}

fn error_code(f: &ServerFrame) -> Option<ErrorCode> {
    match f {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Wait (bounded) until `/api/stats` reports `searching == want`.
async fn wait_searching(server: &TestServer, want: u64, within: Duration) {
    let what = format!("searching == {want}");
    wait_stats(server.addr, &what, within, |s| s["searching"].as_u64() == Some(want)).await;
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_pair_gets_searching_then_the_same_match() {
    let server = TestServer::start(test_config());
    let [mut a, mut b] = server.clients(["alice", "bob"]).await;
    SEARCH.search(&mut a, &["Chess", "go", "poker"], json!({})).await;
    SEARCH.search(&mut b, &["go", "chess", "tennis"], json!({})).await;
    let fa = SEARCH.expect_match(&mut a).await;
    let fb = SEARCH.expect_match(&mut b).await;

    assert_eq!(fa.room, fb.room);
    assert!(!fa.room.is_empty());
    assert_eq!(fa.partner.as_deref(), Some("bob"));
    assert_eq!(fb.partner.as_deref(), Some("alice"));
    assert_eq!(fa.members, sorted(&["alice", "bob"]));
    assert_eq!(fb.members, fa.members);
    assert_eq!(fa.shared, sorted(&["chess", "go"]), "interests are normalized and intersected");
    assert_eq!(fb.shared, fa.shared);
    assert_eq!(fa.score, 2);
    assert_eq!(fb.score, 2);
    // Exactly one match per search.
    a.expect_silence(Duration::from_millis(200)).await;
    b.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_best_score_wins_over_the_longest_wait() {
    // One shared interest is enough from the start, so both waiters are eligible
    // for the newcomer; they share nothing with each other, so they keep waiting.
    let server = TestServer::start(config_with_ladder(vec![step(0, false, 1)]));
    let [mut one, mut three] = server.clients(["zoe", "amy"]).await;
    SEARCH.search(&mut one, &["x"], json!({})).await; // longest waiter, shares 1
    SEARCH.search(&mut three, &["y", "z", "w"], json!({})).await; // shares 3
    let mut newcomer = server.client("neo").await;
    SEARCH.search(&mut newcomer, &["x", "y", "z", "w"], json!({})).await;

    let f = SEARCH.expect_match(&mut newcomer).await;
    assert_eq!(f.partner.as_deref(), Some("amy"), "the 3-share candidate is chosen: {f:?}");
    assert_eq!(f.shared, sorted(&["w", "y", "z"]));
    assert_eq!(f.score, 3);
    let g = SEARCH.expect_match(&mut three).await;
    assert_eq!(g.room, f.room);
    assert_eq!(g.partner.as_deref(), Some("neo"));
    // The 1-share waiter was passed over and still waits.
    one.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ties_go_to_the_longest_waiter() {
    let server = TestServer::start(config_with_ladder(vec![step(0, false, 1)]));
    // Oldest first; names sort the other way so ordering by name would fail.
    let [mut oldest, mut middle, mut newest] = server.clients(["zed", "mia", "abe"]).await;
    SEARCH.search(&mut oldest, &["x"], json!({})).await;
    SEARCH.search(&mut middle, &["y"], json!({})).await;
    SEARCH.search(&mut newest, &["z"], json!({})).await;

    let mut n = server.client("neo").await;
    SEARCH.search(&mut n, &["z", "y", "x"], json!({})).await; // shares exactly 1 with each
    let f = SEARCH.expect_match(&mut n).await;
    assert_eq!(f.partner.as_deref(), Some("zed"), "equal scores: the longest waiter wins: {f:?}");
    assert_eq!(f.score, 1);
    assert_eq!(f.shared, sorted(&["x"]));
    assert_eq!(SEARCH.expect_match(&mut oldest).await.room, f.room);

    // Next tie: the remaining oldest is mia.
    let mut m = server.client("max").await;
    SEARCH.search(&mut m, &["y", "z"], json!({})).await;
    let f = SEARCH.expect_match(&mut m).await;
    assert_eq!(f.partner.as_deref(), Some("mia"), "{f:?}");
    assert_eq!(SEARCH.expect_match(&mut middle).await.room, f.room);
    newest.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn languages_never_mix_unless_one_side_gives_none() {
    let server = TestServer::start(test_config());
    let [mut en, mut de] = server.clients(["en1", "de1"]).await;
    let started = Instant::now();
    SEARCH.search(&mut en, &["chess", "go"], json!({"language": "en", "max_wait_ms": 1_500})).await;
    SEARCH.search(&mut de, &["chess", "go"], json!({"language": "de", "max_wait_ms": 1_500})).await;
    // The ladder fully relaxes at 900 ms; still no match across languages.
    expect_no_match(&mut en).await;
    expect_no_match(&mut de).await;
    assert!(started.elapsed() >= Duration::from_millis(1_500), "timed out early");

    // No language: a wildcard (it starts in the default pool, `en`, and moves on).
    let mut de2 = server.client("de2").await;
    SEARCH.search(&mut de2, &["chess", "go"], json!({"language": "de"})).await;
    let mut none = server.client("nolang").await;
    SEARCH.search(&mut none, &["chess", "go"], json!({})).await;
    let f = SEARCH.expect_match(&mut none).await;
    assert_eq!(f.partner.as_deref(), Some("de2"));
    assert_eq!(SEARCH.expect_match(&mut de2).await.room, f.room);

    // Languages are normalized: " EN " meets "en".
    let [mut en2, mut en3] = server.clients(["en2", "en3"]).await;
    SEARCH.search(&mut en3, &["chess", "go"], json!({"language": "en"})).await;
    SEARCH.search(&mut en2, &["chess", "go"], json!({"language": " EN "})).await;
    let f = SEARCH.expect_match(&mut en2).await;
    assert_eq!(f.partner.as_deref(), Some("en3"));
    assert_eq!(SEARCH.expect_match(&mut en3).await.room, f.room);
}

#[tokio::test]
async fn the_same_region_is_preferred() {
    let server =
        TestServer::start(config_with_ladder(vec![step(0, true, 0), step(3_000, false, 0)]));
    // `far` waits longest and shares more with the newcomer, but is in another region.
    let [mut far, mut near] = server.clients(["far", "near"]).await;
    SEARCH.search(&mut far, &["chess", "go"], json!({"region": "us"})).await;
    SEARCH.search(&mut near, &["chess"], json!({"region": "eu"})).await;
    let mut n = server.client("newbie").await;
    SEARCH.search(&mut n, &["chess", "go"], json!({"region": "EU"})).await;
    let f = SEARCH.expect_match(&mut n).await;
    assert_eq!(f.partner.as_deref(), Some("near"), "same region first: {f:?}");
    assert_eq!(SEARCH.expect_match(&mut near).await.room, f.room);
    far.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn different_regions_match_once_the_server_relaxes() {
    let server =
        TestServer::start(config_with_ladder(vec![step(0, true, 0), step(1_000, false, 0)]));
    let [mut us, mut eu] = server.clients(["us1", "eu1"]).await;
    let started = Instant::now();
    SEARCH.search(&mut us, &["chess"], json!({"region": "us"})).await;
    SEARCH.search(&mut eu, &["chess"], json!({"region": "eu"})).await;
    us.expect_silence(Duration::from_millis(600)).await;
    // No resubmission: the server's own relaxation pairs them.
    let f = SEARCH.expect_match(&mut us).await;
    let g = SEARCH.expect_match(&mut eu).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1_000), "matched before relaxing: {waited:?}");
    assert!(waited < Duration::from_millis(5_000), "relaxation too slow: {waited:?}");
    assert_eq!(f.room, g.room);
    assert_eq!(f.partner.as_deref(), Some("eu1"));
    assert_eq!(g.partner.as_deref(), Some("us1"));
}

#[tokio::test]
async fn no_shared_interests_match_only_at_the_last_step() {
    let server = TestServer::start(config_with_ladder(vec![
        step(0, true, 2),
        step(500, true, 1),
        step(1_000, false, 1),
        step(1_500, false, 0),
    ]));
    let [mut a, mut b] = server.clients(["knitter", "surfer"]).await;
    let started = Instant::now();
    SEARCH.search(&mut a, &["knitting"], json!({})).await;
    SEARCH.search(&mut b, &["surfing", "diving"], json!({})).await;
    a.expect_silence(Duration::from_millis(1_100)).await;
    let f = SEARCH.expect_match(&mut a).await;
    let g = SEARCH.expect_match(&mut b).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1_500), "matched before the last step: {waited:?}");
    assert!(waited < Duration::from_millis(5_000), "relaxation too slow: {waited:?}");
    assert_eq!(f.room, g.room);
    assert_eq!(f.partner.as_deref(), Some("surfer"));
    assert!(f.shared.is_empty() && g.shared.is_empty());
    assert_eq!((f.score, g.score), (0, 0));
}

#[tokio::test]
async fn a_group_of_three_gets_one_room() {
    let server = TestServer::start(test_config());
    let mut cs = Vec::new();
    for name in ["g1", "g2", "g3"] {
        let mut c = server.client(name).await;
        SEARCH.search(&mut c, &["chess", "go"], json!({"group_size": 3})).await;
        cs.push(c);
    }
    let mut seen = Vec::new();
    for c in &mut cs {
        seen.push(SEARCH.expect_match(c).await);
    }
    for f in &seen {
        assert_eq!(f.room, seen[0].room);
        assert_eq!(f.partner, None, "no partner_id in a group: {f:?}");
        assert_eq!(f.members, sorted(&["g1", "g2", "g3"]));
        assert_eq!(f.shared, sorted(&["chess", "go"]));
        assert_eq!(f.score, 2);
    }
    for c in &mut cs {
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pair_search_never_joins_a_group_search() {
    let server = TestServer::start(test_config());
    let [mut g1, mut g2] = server.clients(["g1", "g2"]).await;
    SEARCH.search(&mut g1, &["chess", "go"], json!({"group_size": 3})).await;
    SEARCH.search(&mut g2, &["chess", "go"], json!({"group_size": 3})).await;
    let mut p = server.client("pair").await;
    SEARCH.search(&mut p, &["chess", "go"], json!({"group_size": 2, "max_wait_ms": 1_500})).await;
    expect_no_match(&mut p).await;
    g1.expect_silence(Duration::from_millis(100)).await;
    g2.expect_silence(Duration::from_millis(100)).await;

    // The two group searches were waiting all along: a third completes them.
    let mut g3 = server.client("g3").await;
    SEARCH.search(&mut g3, &["chess"], json!({"group_size": 3})).await;
    let f = SEARCH.expect_match(&mut g3).await;
    assert_eq!(f.members, sorted(&["g1", "g2", "g3"]));
    assert_eq!(f.partner, None);
    assert_eq!(SEARCH.expect_match(&mut g1).await.room, f.room);
    assert_eq!(SEARCH.expect_match(&mut g2).await.room, f.room);
}

#[tokio::test]
async fn a_search_times_out_with_no_match_found() {
    let server = TestServer::start(test_config());
    let mut a = server.client("lonely").await;
    let started = Instant::now();
    SEARCH.search(&mut a, &["chess"], json!({"max_wait_ms": 600})).await;
    expect_no_match(&mut a).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "expired early: {waited:?}");
    assert!(waited < Duration::from_millis(3_000), "expired late: {waited:?}");
    a.expect_silence(Duration::from_millis(200)).await;
    wait_searching(&server, 0, Duration::from_secs(2)).await;

    // max_wait_ms is capped by the server's search timeout.
    let mut cfg = test_config();
    cfg.engine.search_timeout_ms = 500;
    let server = TestServer::start(cfg);
    let mut b = server.client("capped").await;
    let started = Instant::now();
    SEARCH.search(&mut b, &["chess"], json!({"max_wait_ms": 60_000})).await;
    expect_no_match(&mut b).await;
    assert!(started.elapsed() < Duration::from_millis(3_000), "cap ignored");
}

#[tokio::test]
async fn cancel_match_withdraws_the_search() {
    let server = TestServer::start(test_config());
    let mut a = server.client("quitter").await;
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    a.send_json(json!({"action": "cancel_match"})).await;
    let f = SEARCH.next(&mut a).await;
    assert_eq!(f.kind(), "match_cancelled", "{f:?}");
    wait_searching(&server, 0, Duration::from_secs(2)).await;

    let mut b = server.client("stayer").await;
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    b.expect_silence(PAST_FULL_RELAX).await;
    a.expect_silence(Duration::from_millis(100)).await;

    // The canceller can search again and is matched with the waiting user.
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    let f = SEARCH.expect_match(&mut a).await;
    assert_eq!(f.partner.as_deref(), Some("stayer"));
    assert_eq!(SEARCH.expect_match(&mut b).await.room, f.room);
}

#[tokio::test]
async fn cancel_without_a_search_is_acknowledged() {
    let server = TestServer::start(test_config());
    let mut a = server.client("idle").await;
    a.send_json(json!({"action": "cancel_match"})).await;
    assert_eq!(SEARCH.next(&mut a).await.kind(), "match_cancelled");
    // And after a search has ended (timed out) too.
    SEARCH.search(&mut a, &["chess"], json!({"max_wait_ms": 300})).await;
    expect_no_match(&mut a).await;
    a.send_json(json!({"action": "cancel_match"})).await;
    assert_eq!(SEARCH.next(&mut a).await.kind(), "match_cancelled");
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_second_find_match_while_searching_is_refused() {
    let server = TestServer::start(test_config());
    let mut a = server.client("eager").await;
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    a.find_match(&["poker"]).await;
    let f = SEARCH.next(&mut a).await;
    assert_eq!(error_code(&f), Some(ErrorCode::AlreadySearching), "{f:?}");
    assert_eq!(stats(server.addr).await["searching"].as_u64(), Some(1), "still one search");

    // The first search is intact and ends in exactly one match.
    let mut b = server.client("calm").await;
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    let f = SEARCH.expect_match(&mut a).await;
    assert_eq!(f.partner.as_deref(), Some("calm"));
    assert_eq!(f.shared, sorted(&["chess", "go"]), "the first search's criteria were kept");
    assert_eq!(SEARCH.expect_match(&mut b).await.room, f.room);
    a.expect_silence(Duration::from_millis(300)).await;
}

/// Both members of a pair skip at once: whichever `next` reaches the room second
/// finds it closed, and that user just searches again, with no error about a room
/// it could not have left any better.
#[tokio::test]
async fn both_skipping_at_once_search_again_without_an_error() {
    let server = TestServer::start(test_config());
    for i in 0..20 {
        let (mut a, mut b, room) = matched_pair(&server, &format!("a{i}"), &format!("b{i}")).await;
        let next = json!({"action": "next"});
        tokio::join!(a.send_json(next.clone()), b.send_json(next));
        for c in [&mut a, &mut b] {
            let mut seen = Vec::new();
            while let Some(f) = c.try_recv(Duration::from_millis(150)).await {
                seen.push(f);
            }
            assert!(seen.iter().any(|f| f.kind() == "searching"), "{}: {seen:?}", c.user_id);
            assert!(
                !seen.iter().any(|f| f.kind() == "error"),
                "{} got an error after next in {room}: {seen:?}",
                c.user_id
            );
        }
    }
}

#[tokio::test]
async fn next_leaves_and_never_rematches_the_skipped_partner() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "a", "b").await;

    a.send_json(json!({"action": "next"})).await;
    match SEARCH.next(&mut a).await {
        ServerFrame::Left { room_id } => assert_eq!(room_id, room),
        other => panic!("expected left, got {other:?}"),
    }
    assert_eq!(SEARCH.next(&mut a).await.kind(), "searching");
    match b.recv().await {
        ServerFrame::Presence { room_id, user_id, status } => {
            assert_eq!((room_id.as_str(), user_id.as_str()), (room.as_str(), "a"));
            assert_eq!(status, PresenceStatus::Left);
        }
        other => panic!("expected presence left, got {other:?}"),
    }
    match b.recv().await {
        ServerFrame::RoomClosed { room_id, .. } => assert_eq!(room_id, room),
        other => panic!("expected room_closed, got {other:?}"),
    }

    // B searches too, with the very same interests: both wait past full relaxation.
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    a.expect_silence(PAST_FULL_RELAX).await;
    b.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(stats(server.addr).await["searching"].as_u64(), Some(2));

    // Fresh users pair with each of them instead.
    let mut c = server.client("c").await;
    SEARCH.search(&mut c, &["chess", "go"], json!({})).await;
    let fc = SEARCH.expect_match(&mut c).await;
    let first = fc.partner.clone().expect("partner");
    assert!(first == "a" || first == "b", "{fc:?}");
    let mut d = server.client("d").await;
    SEARCH.search(&mut d, &["chess", "go"], json!({})).await;
    let fd = SEARCH.expect_match(&mut d).await;
    let second = fd.partner.clone().expect("partner");
    assert_ne!(first, second);
    assert!(second == "a" || second == "b", "{fd:?}");
    let (fa, fb) = (SEARCH.expect_match(&mut a).await, SEARCH.expect_match(&mut b).await);
    assert_ne!(fa.partner.as_deref(), Some("b"));
    assert_ne!(fb.partner.as_deref(), Some("a"));
    assert_ne!(fa.room, fb.room);
    for f in [&fa, &fb] {
        assert!(f.room == fc.room || f.room == fd.room, "{f:?}");
    }
}

#[tokio::test]
async fn block_closes_the_room_and_keeps_the_two_apart() {
    let server = TestServer::start(test_config());
    let (mut a, mut b, room) = matched_pair(&server, "a", "b").await;

    a.send_json(json!({"action": "block", "user_id": "b"})).await;
    match SEARCH.next(&mut a).await {
        ServerFrame::Blocked { user_id } => assert_eq!(user_id, "b"),
        other => panic!("expected blocked, got {other:?}"),
    }
    for c in [&mut a, &mut b] {
        match SEARCH.next(c).await {
            ServerFrame::RoomClosed { room_id, .. } => assert_eq!(room_id, room),
            other => panic!("{}: expected room_closed, got {other:?}", c.user_id),
        }
    }

    // Same interests, full relaxation: never each other.
    SEARCH.search(&mut a, &["chess", "go"], json!({"max_wait_ms": 1_500})).await;
    SEARCH.search(&mut b, &["chess", "go"], json!({"max_wait_ms": 1_500})).await;
    expect_no_match(&mut a).await;
    expect_no_match(&mut b).await;

    // The block outlives B's session.
    b.close().await;
    let mut b = server.client("b").await;
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    a.expect_silence(PAST_FULL_RELAX).await;
    // Someone else is still welcome.
    let mut c = server.client("c").await;
    SEARCH.search(&mut c, &["chess", "go"], json!({})).await;
    let fc = SEARCH.expect_match(&mut c).await;
    let p = fc.partner.clone().expect("partner");
    assert!(p == "a" || p == "b", "{fc:?}");
}

#[tokio::test]
async fn a_dropped_connection_leaves_the_pool_at_once() {
    let server = TestServer::start(test_config());
    let mut a = server.client("dropper").await;
    SEARCH.search(&mut a, &["chess", "go"], json!({})).await;
    wait_searching(&server, 1, Duration::from_secs(2)).await;
    // Drop the socket without a close handshake.
    drop(a);
    wait_searching(&server, 0, Duration::from_secs(2)).await;

    let mut b = server.client("survivor").await;
    SEARCH.search(&mut b, &["chess", "go"], json!({"max_wait_ms": 1_500})).await;
    wait_searching(&server, 1, Duration::from_secs(2)).await;
    expect_no_match(&mut b).await;
    wait_searching(&server, 0, Duration::from_secs(2)).await;
    assert_eq!(stats(server.addr).await["rooms"].as_u64(), Some(0), "no room was opened");
}

#[tokio::test]
async fn a_user_is_never_matched_with_their_own_old_search() {
    let server = TestServer::start(test_config());
    let mut old = server.client("sam").await;
    SEARCH.search(&mut old, &["chess", "go"], json!({})).await;
    wait_searching(&server, 1, Duration::from_secs(2)).await;

    let mut new = server.client("sam").await;
    assert_eq!(old.closed().await, Ended::Closed(4009));
    SEARCH.search(&mut new, &["chess", "go"], json!({})).await;
    new.expect_silence(PAST_FULL_RELAX).await;
    assert_eq!(stats(server.addr).await["searching"].as_u64(), Some(1), "one search for sam");

    // The new search is alive and pairs with someone else.
    let mut other = server.client("pat").await;
    SEARCH.search(&mut other, &["chess", "go"], json!({})).await;
    let f = SEARCH.expect_match(&mut new).await;
    assert_eq!(f.partner.as_deref(), Some("pat"));
    assert_eq!(f.members, sorted(&["pat", "sam"]));
    assert_eq!(SEARCH.expect_match(&mut other).await.room, f.room);
    new.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn invalid_find_match_inputs_are_refused_and_the_session_keeps_working() {
    let server = TestServer::start(test_config());
    let mut a = server.client("fuzzy").await;
    let many: Vec<String> = (0..21).map(|i| format!("i{i}")).collect();
    let cases: Vec<(&str, Value, ErrorCode)> = vec![
        ("group_size 1", json!({"interests": ["x"], "group_size": 1}), ErrorCode::BadRequest),
        ("group_size 9", json!({"interests": ["x"], "group_size": 9}), ErrorCode::BadRequest),
        ("group_size 300", json!({"interests": ["x"], "group_size": 300}), ErrorCode::BadRequest),
        ("21 interests", json!({"interests": many}), ErrorCode::TooLarge),
        ("33-char interest", json!({"interests": ["x".repeat(33)]}), ErrorCode::TooLarge),
        ("empty interest", json!({"interests": ["chess", ""]}), ErrorCode::BadRequest),
        ("blank interest", json!({"interests": ["   "]}), ErrorCode::BadRequest),
        ("interests not an array", json!({"interests": "chess"}), ErrorCode::BadRequest),
        ("max_wait_ms 0", json!({"interests": ["x"], "max_wait_ms": 0}), ErrorCode::BadRequest),
    ];
    for (what, mut body, code) in cases {
        body["action"] = json!("find_match");
        a.send_json(body).await;
        let f = SEARCH.next(&mut a).await;
        assert_eq!(error_code(&f), Some(code), "{what}: {f:?}");
    }
    assert_eq!(stats(server.addr).await["searching"].as_u64(), Some(0), "no search started");

    // At the limits exactly: 20 interests, one of 32 characters.
    let mut ok: Vec<String> = (0..19).map(|i| format!("i{i}")).collect();
    ok.push("y".repeat(32));
    let ok_refs: Vec<&str> = ok.iter().map(String::as_str).collect();
    SEARCH.search(&mut a, &ok_refs, json!({"group_size": 2})).await;
    let mut b = server.client("steady").await;
    SEARCH.search(&mut b, &ok_refs, json!({})).await;
    let f = SEARCH.expect_match(&mut a).await;
    assert_eq!(f.partner.as_deref(), Some("steady"));
    assert_eq!(f.score, 20);
    assert_eq!(SEARCH.expect_match(&mut b).await.room, f.room);
}

/// `next` from a new connection of the same user (a reload within the grace period)
/// uses the criteria of their last search, leaves the room, and skips the partner.
#[tokio::test]
async fn next_works_after_a_reconnect() {
    let server = TestServer::start(test_config());
    let (a, mut b, room) = matched_pair(&server, "a", "b").await;
    drop(a);
    let mut a = server.client("a").await;
    match &a.welcome {
        ServerFrame::Welcome { rooms, .. } => assert_eq!(rooms, &vec![room.clone()]),
        other => panic!("{other:?}"),
    }
    a.send_json(json!({"action": "next"})).await;
    match SEARCH.next(&mut a).await {
        ServerFrame::Left { room_id } => assert_eq!(room_id, room),
        other => panic!("expected left, got {other:?}"),
    }
    assert_eq!(SEARCH.next(&mut a).await.kind(), "searching");
    assert_eq!(b.recv_kind("room_closed").await.kind(), "room_closed");
    SEARCH.search(&mut b, &["chess", "go"], json!({})).await;
    a.expect_silence(PAST_FULL_RELAX).await;
}

/// A user who leaves with no seat anywhere takes their last search with them (the
/// node keeps no state for users who are gone): `next` from their new connection
/// is a `bad_request`, while one who still holds a seat keeps it (above).
#[tokio::test]
async fn a_user_gone_without_a_seat_leaves_no_search_behind() {
    let server = TestServer::start(test_config());
    let mut a = server.client("a").await;
    SEARCH.search(&mut a, &["chess"], json!({})).await;
    drop(a);
    // The old session has ended before the new one starts.
    wait_stats(server.addr, "online 0", Duration::from_secs(5), |s| s["online"] == 0).await;
    let mut a = server.client("a").await;
    a.send_json(json!({"action": "next"})).await;
    let f = a.recv().await;
    assert_eq!(error_code(&f), Some(ErrorCode::BadRequest), "{f:?}");
}
