//! Two `rendezvous` nodes on a Sentinel-managed Redis (harness:
//! `common::sentinel`: a primary, a replica and three sentinels, each in its own
//! directory), joined with a `redis+sentinel://` URL:
//!
//! * matching and cross-node chat work through Sentinel, and a send is
//!   acknowledged only after `WAIT` (the primary has a replica);
//! * `kill -9` of the primary during cross-node chat: `/readyz` goes 503, the
//!   nodes follow the promoted replica (`/readyz` 200), chat and matching resume,
//!   every acknowledged message is in the peer's deliveries and in the history,
//!   nothing is delivered twice;
//! * a replica that stops answering (SIGSTOP) makes sends answer `unavailable`
//!   with `retry_after_ms`; once it runs again (SIGCONT) the resends with the same
//!   `client_msg_id` are acknowledged, each stored once;
//! * a switchover (`SENTINEL FAILOVER`) under the nodes: they follow the
//!   promoted replica and lose nothing acknowledged.
//!
//! The tests take one lock in turn: they kill processes and wait on failovers,
//! which should not overlap with another test's.

use rendezvous_test_support as common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::chat::*;
use common::cluster::*;
use common::search::pair;
use common::sentinel::{info_field, SentinelGroup, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS};
use rendezvous_actors::protocol::{HistoryItem, ServerFrame};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Two nodes joined through the group's sentinels, once each counts both.
async fn nodes(group: &SentinelGroup, extra: &[(&str, &str)]) -> Vec<Node> {
    let url = group.url();
    let nodes: Vec<Node> = (0..2).map(|i| Node::spawn(Some(&url), &node_name(i), extra)).collect();
    for node in &nodes {
        wait_nodes(node, 2, Duration::from_secs(15)).await;
        wait_http_status(node, "/readyz", 200, Duration::from_secs(10)).await;
    }
    nodes
}

/// `cmdstat_wait`'s `calls=` on `redis` (0 when WAIT never ran).
fn wait_calls(redis: &RedisServer) -> u64 {
    info_field(redis, "commandstats", "cmdstat_wait")
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")?.parse().ok()))
        .unwrap_or(0)
}

/// seq -> text of an `XRANGE` reply of a room stream (entry ids are `SEQ-1`).
fn stream_texts(reply: &Resp) -> BTreeMap<u64, String> {
    let Resp::Array(Some(entries)) = reply else { panic!("XRANGE: {reply:?}") };
    let mut out = BTreeMap::new();
    for e in entries {
        let Resp::Array(Some(parts)) = e else { continue };
        let (Some(Resp::Bulk(Some(id))), Some(Resp::Array(Some(fields)))) =
            (parts.first(), parts.get(1))
        else {
            continue;
        };
        let seq: u64 = id.split('-').next().and_then(|s| s.parse().ok()).expect("stream id");
        if let Some(Resp::Bulk(Some(json))) = fields.get(1) {
            let v: serde_json::Value = serde_json::from_str(json).expect("stored JSON");
            out.insert(seq, v["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

/// Matching and cross-node chat through Sentinel; the primary has a replica, so
/// (default policy) every acknowledged send was confirmed with `WAIT`.
#[tokio::test]
async fn cross_node_match_and_chat_work_through_sentinel() {
    let _serial = SERIAL.lock().await;
    let group = SentinelGroup::start();
    let nodes = nodes(&group, &[]).await;
    let (mut a, mut b, room) = pair(&nodes, (0, "alice"), (1, "bob")).await;
    let waits_before = wait_calls(&group.primary);
    for i in 0..6 {
        let (from, to) = if i % 2 == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let m = exchange(from, to, &room, &format!("hello #{i}"), &format!("c{i}")).await;
        assert_eq!(m.seq, i + 1);
    }
    let waits = wait_calls(&group.primary) - waits_before;
    assert!(waits >= 1, "no WAIT ran on the primary for 6 acknowledged sends");
    // The replica holds them.
    let log = format!("rdv:room:{{{room}}}:log");
    assert_eq!(group.replica.cmd(&["XLEN", &log]), Resp::Int(6), "the replica's copy of the room");
}

/// `kill -9` of the primary during cross-node chat.
#[tokio::test]
async fn a_killed_primary_is_followed_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut group = SentinelGroup::start();
    let nodes = nodes(&group, &[]).await;
    let (a, b, room) = pair(&nodes, (0, "alice"), (1, "bob")).await;
    let (mut alice, mut bob) = (Member::new(a), Member::new(b));
    // Every acknowledged message: seq -> text.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut by_alice: BTreeMap<u64, String> = BTreeMap::new();
    let mut by_bob: BTreeMap<u64, String> = BTreeMap::new();
    let patience = Duration::from_secs(5);
    for i in 0..6 {
        let (from, log) =
            if i % 2 == 0 { (&mut alice, &mut by_alice) } else { (&mut bob, &mut by_bob) };
        let text = format!("before #{i}");
        let (seq, _) = from.send_until_acked(&room, &text, &format!("pre{i}"), patience).await;
        assert!(acked.insert(seq, text.clone()).is_none(), "seq {seq} acknowledged twice");
        log.insert(seq, text);
    }

    // Three sends in flight, then the primary dies.
    for i in 0..3 {
        send_text(&mut alice.c, &room, &format!("in flight #{i}"), &format!("fly{i}")).await;
    }
    group.primary.stop();
    let killed = Instant::now();
    let mut unanswered = Vec::new();
    for i in 0..3 {
        let cid = format!("fly{i}");
        match alice.answer(&cid).await {
            Sent::Acked { seq } => {
                let text = format!("in flight #{i}");
                assert!(acked.insert(seq, text.clone()).is_none(), "seq {seq} acknowledged twice");
                by_alice.insert(seq, text);
            }
            Sent::Unavailable { .. } => unanswered.push(i),
        }
    }
    eprintln!(
        "in flight at the kill: {} acknowledged, {unanswered:?} refused",
        3 - unanswered.len()
    );
    for node in &nodes {
        let left = Duration::from_secs(5).saturating_sub(killed.elapsed());
        wait_http_status(node, "/readyz", 503, left).await;
    }

    // The sentinels promote the replica; the nodes follow it.
    let failover = Duration::from_millis(DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS);
    let promoted = group.wait_promoted(failover + Duration::from_secs(10));
    eprintln!("replica promoted {promoted:?} after the kill");
    for node in &nodes {
        let left = (promoted + Duration::from_secs(5)).saturating_sub(killed.elapsed());
        let left = left.max(Duration::from_secs(1));
        wait_http_status(node, "/readyz", 200, left).await;
    }
    eprintln!("readyz 200 on both nodes {:?} after the kill", killed.elapsed());

    // The refused ones are resent with their ids; chat goes on both ways.
    let within = Duration::from_secs(10);
    for i in unanswered {
        let text = format!("in flight #{i}");
        let (seq, _) = alice.send_until_acked(&room, &text, &format!("fly{i}"), within).await;
        assert!(acked.insert(seq, text.clone()).is_none(), "seq {seq} acknowledged twice");
        by_alice.insert(seq, text);
    }
    for i in 0..6 {
        let (from, log) =
            if i % 2 == 0 { (&mut alice, &mut by_alice) } else { (&mut bob, &mut by_bob) };
        let text = format!("after #{i}");
        let (seq, _) = from.send_until_acked(&room, &text, &format!("post{i}"), within).await;
        assert!(acked.insert(seq, text.clone()).is_none(), "seq {seq} acknowledged twice");
        log.insert(seq, text);
    }
    eprintln!("chat resumed {:?} after the kill", killed.elapsed());

    // Each got every message the other had acknowledged, each seq once, in order.
    bob.wait_for(&by_alice, Duration::from_secs(10)).await;
    alice.wait_for(&by_bob, Duration::from_secs(10)).await;
    for (m, want) in [(&alice, &by_bob), (&bob, &by_alice)] {
        let seqs: Vec<u64> = m.got.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}: seqs {seqs:?}", m.c.user_id);
        let mut texts: Vec<&str> = m.got.iter().map(|m| m.text.as_str()).collect();
        texts.sort_unstable();
        let n = texts.len();
        texts.dedup();
        assert_eq!(texts.len(), n, "{}: a message delivered twice: {:?}", m.c.user_id, m.got);
        for (seq, text) in want {
            let got = m.got.iter().find(|g| g.seq == *seq).map(|g| g.text.as_str());
            assert_eq!(got, Some(text.as_str()), "{}: acknowledged seq {seq}", m.c.user_id);
        }
    }
    // The store (the promoted replica) holds every acknowledged message.
    bob.c.send_json(history_request(&room, 0, Some(100))).await;
    let stored: BTreeMap<u64, String> = loop {
        match bob.c.recv().await {
            ServerFrame::History { messages, .. } => {
                break messages.into_iter().map(|HistoryItem::Message(m)| (m.seq, m.text)).collect()
            }
            ServerFrame::Message(m) if m.sender != "bob" => bob.got.push(m),
            _ => {}
        }
    };
    for (seq, text) in &acked {
        assert_eq!(stored.get(seq), Some(text), "history after the failover, seq {seq}");
    }

    // Matching across the nodes works again.
    let (_c, _d, _room) = pair(&nodes, (0, "carol"), (1, "dave")).await;
    eprintln!("matched again {:?} after the kill", killed.elapsed());
}

/// With a replica the default policy waits for it: a stopped replica (SIGSTOP)
/// makes sends answer `unavailable` with `retry_after_ms` (the message reaches
/// the peer, is not acknowledged); after SIGCONT the resends with the same ids
/// are acknowledged with the original seqs, and each is stored once.
#[tokio::test]
async fn sends_wait_for_the_replica() {
    let _serial = SERIAL.lock().await;
    let group = SentinelGroup::start();
    let nodes = nodes(&group, &[("--redis-ack-timeout-ms", "300")]).await;
    let (a, b, room) = pair(&nodes, (0, "alice"), (1, "bob")).await;
    let (mut alice, mut bob) = (Member::new(a), Member::new(b));
    let (seq, refused) = alice.send_until_acked(&room, "first", "c0", Duration::from_secs(5)).await;
    assert_eq!((seq, refused), (1, 0));

    group.replica.signal("STOP");
    let mut refused_seqs = Vec::new();
    for i in 1..=3 {
        let cid = format!("c{i}");
        send_text(&mut alice.c, &room, &format!("while stopped #{i}"), &cid).await;
        match alice.answer(&cid).await {
            Sent::Unavailable { retry_after_ms } => assert!(retry_after_ms > 0),
            Sent::Acked { seq } => panic!("{cid} acknowledged as {seq} with the replica stopped"),
        }
        refused_seqs.push(i);
    }
    // A resend while still stopped is refused again, not stored again.
    send_text(&mut alice.c, &room, "while stopped #1", "c1").await;
    assert!(matches!(alice.answer("c1").await, Sent::Unavailable { .. }));
    group.replica.signal("CONT");

    let mut acked = BTreeMap::new();
    for i in refused_seqs {
        let text = format!("while stopped #{i}");
        let (seq, _) =
            alice.send_until_acked(&room, &text, &format!("c{i}"), Duration::from_secs(10)).await;
        acked.insert(seq, text);
    }
    assert_eq!(acked.keys().copied().collect::<Vec<_>>(), [2, 3, 4], "the original seqs");
    bob.wait_for(&acked, Duration::from_secs(5)).await;
    let seqs: Vec<u64> = bob.got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "bob got each once");
    let log = format!("rdv:room:{{{room}}}:log");
    assert_eq!(group.replica.cmd(&["XLEN", &log]), Resp::Int(4), "stored once each");
}

/// A switchover (`SENTINEL FAILOVER`) while the nodes are connected to the
/// primary. Until Sentinel demotes it (seconds later) the old primary still
/// takes writes; started with `min-replicas-to-write 1`, as OPERATIONS.md
/// advises, it refuses them (`NOREPLICAS`) once its replica was promoted away,
/// and a `WAIT` that falls short makes the nodes ask the sentinels again: they
/// follow the promoted replica, chat goes on, every acknowledged message is
/// delivered and stored on the promoted replica.
#[tokio::test]
async fn a_switchover_is_followed() {
    let _serial = SERIAL.lock().await;
    let group = SentinelGroup::start_with(&[
        "--min-replicas-to-write",
        "1",
        "--min-replicas-max-lag",
        "10",
    ]);
    let nodes = nodes(&group, &[]).await;
    let (a, b, room) = pair(&nodes, (0, "alice"), (1, "bob")).await;
    let (mut alice, mut bob) = (Member::new(a), Member::new(b));
    let mut by_alice = BTreeMap::new();
    let mut by_bob = BTreeMap::new();
    let within = Duration::from_secs(10);
    for i in 0..4 {
        let (from, log) =
            if i % 2 == 0 { (&mut alice, &mut by_alice) } else { (&mut bob, &mut by_bob) };
        let text = format!("before #{i}");
        let (seq, _) = from.send_until_acked(&room, &text, &format!("pre{i}"), within).await;
        log.insert(seq, text);
    }
    let reply = group.sentinels[0].cmd(&["SENTINEL", "FAILOVER", common::sentinel::MASTER_NAME]);
    assert_eq!(reply, Resp::Simple("OK".into()), "SENTINEL FAILOVER");
    let promoted = group.wait_promoted(Duration::from_secs(15));
    eprintln!("switchover done in {promoted:?}");
    for i in 0..8 {
        let (from, log) =
            if i % 2 == 0 { (&mut alice, &mut by_alice) } else { (&mut bob, &mut by_bob) };
        let text = format!("after #{i}");
        let (seq, _) = from.send_until_acked(&room, &text, &format!("post{i}"), within).await;
        assert!(!log.contains_key(&seq), "seq {seq} acknowledged twice");
        log.insert(seq, text);
    }
    bob.wait_for(&by_alice, within).await;
    alice.wait_for(&by_bob, within).await;
    for m in [&alice, &bob] {
        let seqs: Vec<u64> = m.got.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}: seqs {seqs:?}", m.c.user_id);
    }
    // The promoted replica holds every message, and the demoted primary follows it.
    let log = format!("rdv:room:{{{room}}}:log");
    let stored = stream_texts(&group.replica.cmd(&["XRANGE", &log, "-", "+"]));
    for (seq, text) in by_alice.iter().chain(&by_bob) {
        assert_eq!(stored.get(seq), Some(text), "the new primary's stream, seq {seq}");
    }
    assert_eq!(stored.len(), by_alice.len() + by_bob.len(), "stored once each: {stored:?}");
    for node in &nodes {
        wait_http_status(node, "/readyz", 200, within).await;
    }
}
