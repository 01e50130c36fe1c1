//! Hostile inputs: what one client can make the node create, keep or copy is
//! bounded. Languages must be tags (and may be narrowed to a list), per-language
//! metric series are capped, blocks are capped per user, costly actions draw on a
//! per-user byte budget, broadcast signals are for small rooms, a burst of joins
//! cannot pass the rooms-per-user cap, public rooms per node and history bytes per
//! room are capped. Each test runs a real server and real WebSocket clients.

use rendezvous_test_support as common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::chat::{history, next, send_text, sent};
use common::*;
use rendezvous_actors::protocol::{ErrorCode, ServerFrame};
use rendezvous_actors::EngineConfig;
use serde_json::json;

/// The next frame that is not presence; it must be an `error` of `code`.
/// Returns (message, retry_after_ms, action).
async fn recv_error(c: &mut Client, code: ErrorCode) -> (String, Option<u64>, Option<String>) {
    match next(c).await {
        ServerFrame::Error { code: got, message, retry_after_ms, action, .. } => {
            assert_eq!(got, code, "{}: wrong error code ({message})", c.user_id);
            (message, retry_after_ms, action)
        }
        other => panic!("{}: expected error {code:?}, got {other:?}", c.user_id),
    }
}

/// The next frame that is not presence; it must be of `kind`.
async fn recv_strict(c: &mut Client, kind: &str) -> ServerFrame {
    let f = next(c).await;
    assert_eq!(f.kind(), kind, "{}: expected {kind}, got {f:?}", c.user_id);
    f
}

/// Every sample line of metric `name` on `/metrics`: (labels, value).
async fn samples(server: &TestServer, name: &str) -> Vec<(String, f64)> {
    let (status, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None; // another metric sharing the prefix
            }
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A server with the rate limits lifted, so that a flood gets through to the
/// limit under test, and `edit` applied.
fn flood_server(edit: impl FnOnce(&mut EngineConfig)) -> TestServer {
    TestServer::start_with(|e| {
        lift_rate_limits(e, 1_000_000);
        edit(e);
    })
}

/// A language must be a tag (2–3 letters, then `-` subtags of 1–8 letters or
/// digits), and one of `--languages` when that is set; the refusal names them.
#[tokio::test]
async fn languages_must_be_tags_from_the_allow_list() {
    let server =
        TestServer::start_with(|e| e.languages = vec!["en".into(), "fr".into(), "pt-BR".into()]);
    let mut c = server.client("lang").await;
    for bad in ["english", "en_US", "e", "12", "en-", "zh-toolongsubtag", "<script>"] {
        c.send_json(json!({"action":"find_match","interests":["chess"],"language":bad})).await;
        let (message, _, action) = recv_error(&mut c, ErrorCode::BadRequest).await;
        assert!(message.contains("language tag"), "{bad}: {message}");
        assert_eq!(action.as_deref(), Some("find_match"));
    }
    // Well-formed but not offered here: refused, naming the offered ones.
    c.send_json(json!({"action":"find_match","interests":["chess"],"language":"de"})).await;
    let (message, _, _) = recv_error(&mut c, ErrorCode::BadRequest).await;
    assert!(message.contains("en, fr, pt-BR"), "names the allowed languages: {message}");
    // Offered ones pass, in any case, and the session carries on.
    for good in ["PT-br", "fr", "en"] {
        c.send_json(json!({"action":"find_match","interests":["chess"],"language":good})).await;
        recv_strict(&mut c, "searching").await;
        c.send_json(json!({"action":"cancel_match"})).await;
        recv_strict(&mut c, "match_cancelled").await;
    }
    // Normalised: `PT-br` and `pt-BR` meet in one pool.
    let [mut a, mut b] = server.clients(["lang-a", "lang-b"]).await;
    a.send_json(json!({"action":"find_match","interests":["chess"],"language":"PT-br"})).await;
    recv_strict(&mut a, "searching").await;
    b.send_json(json!({"action":"find_match","interests":["chess"],"language":"pt-BR"})).await;
    recv_strict(&mut b, "searching").await;
    assert_eq!(room_of(&recv_strict(&mut a, "match_found").await), room_of(&next(&mut b).await));
}

/// The three-letter tags `aaa`, `aab`, … (never a real default like `en`).
fn invented_language(i: usize) -> String {
    let l = |n: usize| char::from(b'a' + (n % 26) as u8);
    format!("{}{}{}", l(i / 676), l(i / 26), l(i))
}

/// 2,000 searches in 2,000 different well-formed languages leave at most
/// `--language-series` per-language series; the rest are summed as `other`.
#[tokio::test]
async fn per_language_series_are_bounded() {
    const SERIES: usize = 20;
    let server = flood_server(|e| e.language_series = SERIES);
    let mut c = server.client("polyglot").await;
    let languages: BTreeSet<String> = (0..2_000).map(invented_language).collect();
    assert_eq!(languages.len(), 2_000);
    for lang in &languages {
        c.send_json(json!({"action":"find_match","interests":["chess"],"language":lang})).await;
        recv_strict(&mut c, "searching").await;
        c.send_json(json!({"action":"cancel_match"})).await;
        recv_strict(&mut c, "match_cancelled").await;
    }
    let series = samples(&server, "rendezvous_pool_waiting_by_language").await;
    let ours: Vec<&String> = series
        .iter()
        .filter_map(|(labels, _)| {
            let lang = labels.strip_prefix("{language=\"")?.strip_suffix("\"}")?;
            languages.contains(lang).then_some(labels)
        })
        .collect();
    assert!(!ours.is_empty(), "the first languages get their own series");
    assert!(
        ours.len() <= SERIES,
        "{} invented languages have a series, e.g. {:?}",
        ours.len(),
        &ours[..5]
    );
    assert!(
        series.iter().any(|(labels, _)| labels == "{language=\"other\"}"),
        "the rest are summed under `other`"
    );
}

/// 10,000 `block`s from one user keep at most `--max-blocks-per-user` pairs (the
/// `rendezvous_avoid_pairs` gauge): the earliest blocked are forgotten (and can be
/// matched again), the latest still are not.
#[tokio::test]
async fn blocks_are_capped_per_user_oldest_first() {
    const CAP: usize = 1_000;
    let server = flood_server(|e| e.max_blocks_per_user = CAP);
    let mut blocker = server.client("blocker").await;
    let mut targets = vec!["early".to_owned()];
    targets.extend((0..10_000).map(|i| format!("filler-{i}")));
    targets.push("late".to_owned());
    for batch in targets.chunks(500) {
        for t in batch {
            blocker.send_json(json!({"action":"block","user_id":t})).await;
        }
        for t in batch {
            match next(&mut blocker).await {
                ServerFrame::Blocked { user_id } => assert_eq!(&user_id, t),
                other => panic!("expected blocked {t}, got {other:?}"),
            }
        }
    }
    let pairs: f64 = samples(&server, "rendezvous_avoid_pairs").await.iter().map(|s| s.1).sum();
    assert!(pairs > 0.0, "the gauge counts stored pairs");
    assert!(pairs <= CAP as f64, "{pairs} pairs stored for one user, the cap is {CAP}");

    // `late` is still blocked: no match, even once the ladder accepts anyone.
    blocker.find_match(&["chess"]).await;
    recv_strict(&mut blocker, "searching").await;
    let mut late = server.client("late").await;
    late.find_match(&["chess"]).await;
    recv_strict(&mut late, "searching").await;
    late.expect_silence(Duration::from_millis(1_500)).await;
    late.send_json(json!({"action":"cancel_match"})).await;
    recv_strict(&mut late, "match_cancelled").await;
    // `early` was forgotten: matched with the blocker at once.
    let mut early = server.client("early").await;
    early.find_match(&["chess"]).await;
    recv_strict(&mut early, "searching").await;
    let room = room_of(&recv_strict(&mut early, "match_found").await);
    assert_eq!(room_of(&recv_strict(&mut blocker, "match_found").await), room);
}

/// A burst of 200 `join`s to distinct public rooms seats the user in at most
/// `max_rooms_per_user` rooms: the seat is reserved in the same step as the count.
#[tokio::test]
async fn a_burst_of_joins_seats_at_most_the_room_cap() {
    const MAX: usize = 20;
    let server = flood_server(|e| e.max_rooms_per_user = MAX);
    let mut u = server.client("joiner").await;
    for i in 0..200 {
        u.send_json(json!({"action":"join","room_id":format!("pub:burst-{i}")})).await;
    }
    let (mut joined, mut refused) = (0, 0);
    for _ in 0..200 {
        match next(&mut u).await {
            ServerFrame::Joined { .. } => joined += 1,
            ServerFrame::Error { code: ErrorCode::TooLarge, .. } => refused += 1,
            other => panic!("expected joined or too_large, got {other:?}"),
        }
    }
    assert!(joined <= MAX, "{joined} joins seated, the cap is {MAX}");
    assert_eq!(joined + refused, 200);
    drop(u);
    let fresh = server.client("joiner").await;
    let ServerFrame::Welcome { rooms, .. } = &fresh.welcome else { unreachable!() };
    assert!(rooms.len() <= MAX, "welcome lists {} rooms: {rooms:?}", rooms.len());
    assert_eq!(rooms.len(), joined, "the rooms joined are the rooms held");
}

/// Past `--max-public-rooms` open on the node, a join that would open a new public
/// room is refused (`too_large`, and the reserved seat is given back); joining an
/// open one still works.
#[tokio::test]
async fn public_rooms_per_node_are_capped() {
    let server = TestServer::start_with(|e| e.max_public_rooms = 3);
    let mut a = server.client("opener").await;
    for room in ["pub:one", "pub:two", "pub:three"] {
        a.send_json(json!({"action":"join","room_id":room})).await;
        recv_strict(&mut a, "joined").await;
    }
    let mut b = server.client("latecomer").await;
    b.send_json(json!({"action":"join","room_id":"pub:four"})).await;
    let (message, _, action) = recv_error(&mut b, ErrorCode::TooLarge).await;
    assert!(message.contains("public rooms (3)"), "{message}");
    assert_eq!(action.as_deref(), Some("join"));
    b.send_json(json!({"action":"join","room_id":"pub:two"})).await;
    match recv_strict(&mut b, "joined").await {
        ServerFrame::Joined { room_id, members } => {
            assert_eq!(room_id, "pub:two");
            assert_eq!(members.len(), 2);
        }
        _ => unreachable!(),
    }
    drop(b);
    // The refused room's reservation was given back: only the joined one is held.
    let again = server.client("latecomer").await;
    let ServerFrame::Welcome { rooms, .. } = &again.welcome else { unreachable!() };
    assert_eq!(rooms, &["pub:two"]);
}

/// A room's history keeps at most `--history-bytes` of message text: the oldest
/// messages drop out first and `history` returns the newest that fit.
#[tokio::test]
async fn history_keeps_the_newest_messages_within_its_bytes() {
    let server = TestServer::start_with(|e| e.history_bytes = 1_000);
    let (mut a, mut b, room) = matched_pair(&server, "hist-a", "hist-b").await;
    let mut last = 0;
    for i in 0..30 {
        let text = format!("{i:03}{}", "x".repeat(97));
        send_text(&mut a, &room, &text, &format!("c{i}")).await;
        last = sent(&mut a, &room, &format!("c{i}")).await.seq;
        assert_eq!(common::chat::expect_message(&mut b).await.seq, last);
    }
    let held = history(&mut b, &room, 0, Some(200)).await;
    let bytes: usize = held.iter().map(|m| m.text.len()).sum();
    assert!(bytes <= 1_000, "{bytes} bytes of history kept");
    let seqs: Vec<u64> = held.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (last - 9..=last).collect::<Vec<_>>(), "the newest ten of 100 bytes");
}

/// A `signal` without `to` goes to every member only in rooms of at most
/// `--max-signal-broadcast-members`; in a bigger room it is refused with a hint to
/// name the recipient, and a signal with `to` still works.
#[tokio::test]
async fn broadcast_signals_only_in_small_rooms() {
    let server = TestServer::start(test_config());
    let mut members = Vec::new();
    for i in 0..9 {
        let mut c = server.client(&format!("sig-{i}")).await;
        c.send_json(json!({"action":"join","room_id":"pub:webrtc"})).await;
        recv_strict(&mut c, "joined").await;
        members.push(c);
    }
    let offer = json!({"type":"offer","sdp":"v=0"});
    members[0].send_json(json!({"action":"signal","room_id":"pub:webrtc","payload":offer})).await;
    let (message, _, _) = recv_error(&mut members[0], ErrorCode::BadRequest).await;
    assert!(message.contains("`to`") && message.contains('8'), "{message}");
    members[0]
        .send_json(json!({"action":"signal","room_id":"pub:webrtc","payload":offer,"to":"sig-1"}))
        .await;
    match next(&mut members[1]).await {
        ServerFrame::Signal { from, payload, .. } => {
            assert_eq!((from.as_str(), &payload), ("sig-0", &offer))
        }
        other => panic!("expected signal, got {other:?}"),
    }
    // Down to 8 members: a broadcast reaches everyone else.
    members[8].send_json(json!({"action":"leave","room_id":"pub:webrtc"})).await;
    recv_strict(&mut members[8], "left").await;
    members[0].send_json(json!({"action":"signal","room_id":"pub:webrtc","payload":offer})).await;
    for c in &mut members[1..8] {
        match next(c).await {
            ServerFrame::Signal { from, .. } => assert_eq!(from, "sig-0"),
            other => panic!("{}: expected signal, got {other:?}", c.user_id),
        }
    }
    // The sender does not get its own signal back (presence of the leaver aside).
    while let Some(f) = members[0].try_recv(Duration::from_millis(200)).await {
        assert!(matches!(f, ServerFrame::Presence { .. }), "sender got {f:?}");
    }
}

/// Costly actions draw on a per-user byte budget: a flood of large signals, and
/// of history pages, gets `rate_limited` with `retry_after_ms` well before the
/// frame limit, while a user in another room signals, chats and reads history as
/// usual.
#[tokio::test]
async fn costly_actions_are_rate_limited_by_bytes_and_others_are_unaffected() {
    let server = TestServer::start(test_config());
    let (mut attacker, mut partner, room) = matched_pair(&server, "flooder", "flood-peer").await;
    // The partner reads everything, so the flood is refused by the budget and not
    // by a full queue.
    let drained = tokio::spawn(async move {
        let mut signals = 0;
        while let Some(f) = partner.try_recv(Duration::from_secs(2)).await {
            if f.kind() == "signal" {
                signals += 1;
            }
        }
        signals
    });
    let big = json!({"type":"offer","sdp":"x".repeat(15_000)});
    for _ in 0..100 {
        attacker.send_json(json!({"action":"signal","room_id":room,"payload":big})).await;
    }
    let mut refused = 0;
    while let Some(f) = attacker.try_recv(Duration::from_millis(500)).await {
        match f {
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, action, .. } => {
                assert_eq!(action.as_deref(), Some("signal"));
                assert!(retry_after_ms.is_some_and(|ms| ms > 0));
                refused += 1;
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }
    let delivered = drained.await.expect("partner task");
    assert!(refused > 0, "100 signals of 15 KB within the frame limit were all accepted");
    assert_eq!(delivered + refused, 100, "each signal is delivered or refused");
    // About 1 MiB of signals went through first: the default burst is honoured.
    assert!(delivered >= 60, "{delivered} signals delivered");

    // History pages: charged by the bytes they return.
    let (mut reader, mut poster, room2) = matched_pair(&server, "pager", "pager-peer").await;
    for i in 0..30 {
        send_text(&mut poster, &room2, &"h".repeat(4_000), &format!("p{i}")).await;
        sent(&mut poster, &room2, &format!("p{i}")).await;
        common::chat::expect_message(&mut reader).await;
    }
    let mut pages = 0;
    let limited = loop {
        assert!(pages < 40, "40 pages of 120 KB were all served");
        reader
            .send_json(json!({"action":"history","room_id":room2,"after_seq":0,"limit":200}))
            .await;
        match next(&mut reader).await {
            ServerFrame::History { messages, .. } => {
                assert_eq!(messages.len(), 30);
                pages += 1;
            }
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, action, .. } => {
                break (retry_after_ms, action);
            }
            other => panic!("expected history or rate_limited, got {other:?}"),
        }
    };
    assert!(pages >= 5, "the burst serves several large pages first ({pages})");
    assert_eq!(limited.1.as_deref(), Some("history"));
    assert!(limited.0.is_some_and(|ms| ms > 0));

    // Someone else, in another room, notices nothing.
    let (mut n1, mut n2, room3) = matched_pair(&server, "normal-1", "normal-2").await;
    for i in 0..20 {
        let cand = json!({"candidate": format!("candidate:{i} 1 udp 2122260223 10.0.0.1 5000{i} typ host")});
        n1.send_json(json!({"action":"signal","room_id":room3,"payload":cand,"to":"normal-2"}))
            .await;
        match next(&mut n2).await {
            ServerFrame::Signal { from, .. } => assert_eq!(from, "normal-1"),
            other => panic!("expected signal, got {other:?}"),
        }
    }
    send_text(&mut n1, &room3, "hello", "n1").await;
    sent(&mut n1, &room3, "n1").await;
    common::chat::expect_message(&mut n2).await;
    assert_eq!(history(&mut n2, &room3, 0, Some(50)).await.len(), 1);
}
