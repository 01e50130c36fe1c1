//! Redis Cluster: a real cluster of six `redis-server` processes (three primaries,
//! each with a replica; harness: `common::redis_cluster`) and `rendezvous` nodes
//! joined through its `redis+cluster://` URL.
//!
//! * The harness itself: the cluster forms, a `kill -9` primary is replaced by
//!   its replica, a slot migrates with its keys.
//! * The engine on it: a storm of 2,000 searches over three nodes with no double
//!   or asymmetric match; groups of three with one member per node; cross-node
//!   chat with nothing lost, doubled or out of order; `kill -9` of a primary
//!   during a storm and during chat (no double match, nothing acknowledged lost,
//!   `/readyz` 503 then 200, service back within `cluster-node-timeout` + 5 s);
//!   a room's slot migrated during chat; a node's channel slot migrated; a
//!   classic subscription that stops delivering (`/readyz` 503, then 200); a node
//!   started later that learns the pools, rooms and blocks.
//!
//! The tests take one lock in turn: each runs nine processes and some kill them.

use rendezvous_test_support as common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chat::*;
use common::cluster::{wait_http_status, Node, Resp};
use common::redis_cluster::{RedisCluster, ShardedCluster, NODE_TIMEOUT_MS, SLOTS};
use common::search::{pair, Found, Search};
use common::storm::{interests_for, Seen, Storm};
use common::Client;
use rendezvous_actors::protocol::{ErrorCode, PresenceStatus, ServerFrame};
use serde_json::{json, Value};
use tokio::sync::{watch, Barrier, Mutex, Semaphore};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// How these tests search (see the module doc of `search`).
const SEARCH: Search = Search::AMID_PRESENCE;

/// How long a node may take to answer `/readyz` 200 once started.
const READY: Duration = Duration::from_secs(20);

/// The node timeout as a duration.
const NODE_TIMEOUT: Duration = Duration::from_millis(NODE_TIMEOUT_MS);

/// What the issue allows after a primary's promotion for matching and chat to
/// come back: `cluster-node-timeout` plus 5 s, counted here from the promotion
/// (the promotion itself takes the node timeout and an election).
const RESUME: Duration = Duration::from_secs(5);

/// Longest a replica may take to be promoted after a `kill -9` of its primary
/// (the node timeout, failure agreement, an election; on a busy box).
const PROMOTION: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the harness

/// Three primaries share every slot, each has a replica, the seed URL names three
/// members, and a key written through its owner is read back there.
#[tokio::test]
async fn the_harness_forms_a_cluster_of_three_primaries_with_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{}", cluster.describe());
    for p in &primaries {
        assert_eq!(cluster.replicas_of(*p).len(), 1, ":{p}\n{}", cluster.describe());
    }
    let owners: std::collections::BTreeSet<u16> =
        [0, SLOTS / 2, SLOTS - 1].iter().map(|s| cluster.primary_of_slot(*s)).collect();
    assert_eq!(owners.len(), 3, "slots 0, 8192 and 16383 are on three primaries");
    assert_eq!(cluster.url().matches("127.0.0.1:").count(), 3, "{}", cluster.url());
    assert!(cluster.url().starts_with("redis+cluster://"), "{}", cluster.url());

    let key = "rdv:room:{harness}:seq";
    let owner = cluster.primary_of_key(key);
    assert_eq!(cluster.cmd(owner, &["SET", key, "7"]), Resp::Simple("OK".into()));
    assert_eq!(cluster.cmd_key(key, &["GET", key]), Resp::Bulk(Some("7".into())));
    let other = *primaries.iter().find(|p| **p != owner).expect("another primary");
    match cluster.cmd(other, &["GET", key]) {
        Resp::Error(e) => assert!(e.starts_with("MOVED "), "{e}"),
        reply => panic!("a primary that does not own {key} answered {reply:?}"),
    }
    assert!(cluster.info_cpu(owner) > 0.0);
}

/// `kill -9` of a primary: its replica is promoted, owns the slot, and the
/// cluster is `ok` again (seen from the survivors) within the node timeout plus a
/// few seconds; the data written before the kill (and replicated) is there.
#[tokio::test]
async fn the_harness_kills_a_primary_and_its_replica_takes_over() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start();
    let key = "rdv:room:{failover}:seq";
    let slot = cluster.slot_of(key);
    let owner = cluster.primary_of_slot(slot);
    let replica = cluster.replicas_of(owner)[0];
    // WAIT on the connection that wrote (it counts that connection's writes).
    let replies = cluster.cmds(owner, &[&["SET", key, "41"], &["WAIT", "1", "2000"]]);
    assert_eq!(replies, [Resp::Simple("OK".into()), Resp::Int(1)], "written and replicated");

    let killed = cluster.kill9_primary_of_slot(slot);
    assert_eq!(killed, owner);
    let took = cluster
        .wait_promoted(slot, Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(15));
    eprintln!("replica :{replica} promoted {took:?} after the kill of :{killed}");
    assert_eq!(cluster.primary_of_slot(slot), replica);
    assert_eq!(cluster.cmd_key(key, &["GET", key]), Resp::Bulk(Some("41".into())));
    assert!(!cluster.live_ports().contains(&killed));

    // Back with its old nodes.conf, the killed primary rejoins as a replica of the
    // promoted one.
    cluster.restart(killed);
    cluster.wait_healthy(Duration::from_secs(20));
    assert_eq!(cluster.primary_of_slot(slot), replica);
    assert_eq!(cluster.replicas_of(replica), vec![killed], "{}", cluster.describe());
}

/// A slot with keys in it moves to another primary: every key is readable there,
/// the old owner redirects with `MOVED`, and every member agrees on the owner.
#[tokio::test]
async fn the_harness_migrates_a_slot_with_its_keys() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    let keys: Vec<String> = (0..25).map(|i| format!("rdv:room:{{moving}}:k{i}")).collect();
    let slot = cluster.slot_of(&keys[0]);
    let from = cluster.primary_of_slot(slot);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cluster.cmd(from, &["SET", k, &i.to_string()]), Resp::Simple("OK".into()));
    }
    let to = *cluster.primaries().iter().find(|p| **p != from).expect("another primary");
    let moved = cluster.migrate_slot_paced(slot, to, 4, Duration::from_millis(20));
    assert_eq!(moved, keys.len());
    assert_eq!(cluster.primary_of_slot(slot), to);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cluster.cmd(to, &["GET", k]), Resp::Bulk(Some(i.to_string())), "{k}");
    }
    match cluster.cmd(from, &["GET", &keys[0]]) {
        Resp::Error(e) => assert!(e.starts_with(&format!("MOVED {slot} ")), "{e}"),
        reply => panic!("the old owner answered {reply:?}"),
    }
    assert_eq!(cluster.cmd(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), Resp::Int(0));
}

// ---------------------------------------------------------------- helpers

/// A fresh Redis Cluster and `n` engine nodes on it, each answering `/readyz` 200.
async fn engines(n: usize, extra: &[(&str, &str)]) -> ShardedCluster {
    let cluster = ShardedCluster::start(n, extra).await;
    for node in &cluster.nodes {
        wait_http_status(node, "/readyz", 200, READY).await;
    }
    cluster
}

/// The key of a room that decides its slot (the hash tag is the room id).
fn room_key(room: &str) -> String {
    format!("rdv:room:{{{room}}}:seq")
}

/// A node's shard channel (node-to-node traffic); the hash tag is `node:NODE`.
fn node_channel(node: &str) -> String {
    format!("rdv:{{node:{node}}}:ev")
}

/// The key of the English matching pool (the hash tag is `pool:en`).
fn pool_key(lang: &str) -> String {
    format!("rdv:{{pool:{lang}}}:entries")
}

/// Run a blocking harness call (process kills, polling Redis) on this worker
/// thread while the runtime's other tasks (clients) go on elsewhere.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Wait until every node answers `/readyz` `want`, each within `within` of `since`
/// (at least 1 s); the longest time since `since`.
async fn wait_ready_all(nodes: &[Node], want: u16, since: Instant, within: Duration) -> Duration {
    for node in nodes {
        let left = within.saturating_sub(since.elapsed()).max(Duration::from_secs(1));
        wait_http_status(node, "/readyz", want, left).await;
    }
    since.elapsed()
}

/// [`wait_ready_all`] that reports instead of panicking, so that a test checks
/// its invariants before it fails on readiness: the longest time since `since`, or
/// what the nodes still answered when `within` (from `since`, at least 1 s) ran out.
async fn try_ready_all(
    nodes: &[Node],
    want: u16,
    since: Instant,
    within: Duration,
) -> Result<Duration, String> {
    let deadline = since + within.max(Duration::from_secs(1));
    loop {
        let mut wrong = Vec::new();
        for node in nodes {
            let (status, body) = common::http_get(node.addr, "/readyz").await;
            if status != want {
                wrong.push(format!("{}: {status} {}", node.id, body.trim()));
            }
        }
        if wrong.is_empty() {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "/readyz not {want} on every node within {within:?}: {}",
                wrong.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The match invariants of a storm of pair or group searches, from what every
/// client saw: exactly one outcome per client; no user matched twice, with
/// themselves, or asymmetrically; every room reported by exactly its members, each
/// naming the same members and shared interests; nobody in two rooms. The rooms
/// (room -> members) and how many got `no_match_found`.
fn check_matches(seen: &[Seen], group_size: usize) -> (BTreeMap<String, Vec<String>>, usize) {
    let mut by_user: HashMap<&str, &Found> = HashMap::new();
    let mut unmatched = 0;
    for s in seen {
        assert!(s.other.is_empty(), "{}: unexpected frames {:?}", s.user, s.other);
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
        let distinct: BTreeSet<&String> = m.members.iter().collect();
        assert_eq!(distinct.len(), m.members.len(), "{}: repeated member {:?}", s.user, m.members);
        assert_eq!(m.members.len(), group_size, "{}: room {} has {:?}", s.user, m.room, m.members);
        assert!(m.members.contains(&s.user), "{}: not among own members {:?}", s.user, m.members);
        assert_eq!(m.score as usize, m.shared.len(), "{}: score is the shared count", s.user);
        if group_size == 2 {
            let p = m.partner.as_deref().unwrap_or_else(|| panic!("{}: no partner_id", s.user));
            assert_ne!(p, s.user, "self-match in room {}", m.room);
            assert!(
                m.members.iter().any(|u| u == p),
                "{}: partner {p} not in {:?}",
                s.user,
                m.members
            );
        } else {
            assert_eq!(m.partner, None, "{}: partner_id in a group", s.user);
        }
        by_user.insert(&s.user, m);
    }
    for (user, m) in &by_user {
        for other in &m.members {
            let theirs = by_user
                .get(other.as_str())
                .unwrap_or_else(|| panic!("{user} matched with {other}, who saw no match"));
            assert_eq!(theirs.room, m.room, "{user} and {other} disagree on the room");
            assert_eq!(theirs.members, m.members, "{user} and {other} disagree on the members");
            assert_eq!(theirs.shared, m.shared, "{user} and {other} disagree on shared interests");
        }
        if let Some(p) = &m.partner {
            assert_eq!(by_user[p.as_str()].partner.as_deref(), Some(*user), "asymmetric pair");
        }
    }
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

/// A storm of `n` clients spread over the first three nodes (`s00000`, …), each
/// sending [`storm_search`]: what each saw (members sorted), the clients, and how
/// long until every outcome.
async fn storm_over_three_nodes(
    cluster: &ShardedCluster,
    n: usize,
) -> (Vec<Seen>, Vec<Client>, Duration) {
    let urls = (0..n).map(|i| cluster.node(i % 3).ws_url(&format!("s{i:05}"))).collect();
    let plan = Storm {
        urls,
        outcome_within: Duration::from_secs(30),
        linger: Duration::from_millis(1_000),
    };
    let (mut seen, clients, took) =
        tokio::time::timeout(Duration::from_secs(55), plan.run(storm_search))
            .await
            .expect("storm finished in time");
    seen.iter_mut().flat_map(|s| s.matches.iter_mut()).for_each(Found::sort);
    (seen, clients, took)
}

/// The `find_match` of storm client `i`: its interests, in English.
fn storm_search(i: usize) -> Value {
    json!({"action": "find_match", "interests": interests_for(i), "language": "en"})
}

/// A storm whose clients keep searching through a failover: all connect, then
/// client `i` sends its `find_match` (`search(i)`) `spread * i / n` after the start (so searches
/// begin before, during and after whatever the test does meanwhile) and sends it
/// again after every `unavailable` (after `retry_after_ms`, at most 500 ms). It
/// stops at its first outcome and keeps reading until the storm ends (`linger`
/// after the last outcome), so a second `match_found` is seen. `started` fires when
/// the first searches go out. What each saw, the clients, and how many
/// `find_match` were refused as `unavailable`.
async fn staggered_storm(
    urls: Vec<String>,
    spread: Duration,
    outcome_within: Duration,
    linger: Duration,
    search: fn(usize) -> Value,
    started: tokio::sync::oneshot::Sender<()>,
) -> (Vec<Seen>, Vec<Client>, usize) {
    let n = urls.len();
    let slots = Arc::new(Semaphore::new(64));
    let ready = Arc::new(Barrier::new(n + 1));
    let decided = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for (i, url) in urls.into_iter().enumerate() {
        let (slots, ready, decided, refused) =
            (slots.clone(), ready.clone(), decided.clone(), refused.clone());
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = {
                let _slot = slots.acquire().await.expect("connect semaphore");
                Client::connect(&url).await
            };
            ready.wait().await;
            tokio::time::sleep(spread.mul_f64(i as f64 / n as f64)).await;
            c.send_json(search(i)).await;
            let mut seen = Seen {
                user: c.user_id.clone(),
                searching: 0,
                matches: Vec::new(),
                no_match: 0,
                other: Vec::new(),
            };
            loop {
                let f = tokio::select! {
                    _ = stop.changed() => break,
                    f = c.try_recv(Duration::from_secs(3_600)) => f,
                };
                let Some(f) = f else { continue };
                let undecided = seen.matches.is_empty() && seen.no_match == 0;
                match f {
                    ServerFrame::Searching { .. } => seen.searching += 1,
                    ServerFrame::MatchFound { .. } => {
                        let mut found = Found::of(&seen.user, f);
                        found.sort();
                        seen.matches.push(found);
                    }
                    ServerFrame::NoMatchFound {} => seen.no_match += 1,
                    ServerFrame::Presence { .. } => continue,
                    ServerFrame::Error { code: ErrorCode::Unavailable, retry_after_ms, .. }
                        if undecided =>
                    {
                        refused.fetch_add(1, Ordering::SeqCst);
                        let wait = retry_after_ms.unwrap_or_else(|| {
                            panic!("{}: unavailable without retry_after_ms", seen.user)
                        });
                        tokio::time::sleep(Duration::from_millis(wait.clamp(20, 500))).await;
                        c.send_json(search(i)).await;
                        continue;
                    }
                    other => {
                        seen.other.push(other);
                        continue;
                    }
                }
                if undecided && !(seen.matches.is_empty() && seen.no_match == 0) {
                    decided.fetch_add(1, Ordering::SeqCst);
                }
            }
            (seen, c)
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), ready.wait())
        .await
        .expect("all storm clients connected within 60 s");
    let _ = started.send(());
    let deadline = Instant::now() + outcome_within;
    while decided.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} clients got an outcome within {outcome_within:?}",
            decided.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(linger).await;
    stop_tx.send(true).expect("stop the storm readers");
    let mut seen = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for t in tasks {
        let (s, c) = t.await.expect("storm client task");
        seen.push(s);
        clients.push(c);
    }
    (seen, clients, refused.load(Ordering::SeqCst))
}

/// A member after a background chat: it, what it got acknowledged (seq -> text)
/// and how many of its sends were refused as `unavailable`.
type Chatted = (Member, BTreeMap<u64, String>, u32);

/// Two members chatting concurrently until told to stop: each sends
/// `USER #I` (id `USER-I`) until acknowledged, one after the other with `pace`
/// between, and stops once `stop` is set and it has sent `after_stop` more. Each
/// member back with what it got acknowledged (seq -> text).
fn chat_in_background(
    members: Vec<Member>,
    room: &str,
    pace: Duration,
    acked_total: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    after_stop: usize,
) -> Vec<tokio::task::JoinHandle<Chatted>> {
    members
        .into_iter()
        .map(|mut m| {
            let (room, acked_total, stop) = (room.to_owned(), acked_total.clone(), stop.clone());
            tokio::spawn(async move {
                let user = m.c.user_id.clone();
                let mut acked = BTreeMap::new();
                let mut refused = 0;
                let mut since_stop = 0;
                let within = NODE_TIMEOUT + PROMOTION + RESUME;
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        if since_stop == after_stop {
                            break;
                        }
                        since_stop += 1;
                    }
                    let text = format!("{user} #{i}");
                    let (seq, r) =
                        m.send_until_acked(&room, &text, &format!("{user}-{i}"), within).await;
                    refused += r;
                    assert!(
                        acked.insert(seq, text).is_none(),
                        "{user}: seq {seq} acknowledged twice"
                    );
                    acked_total.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pace).await;
                }
                (m, acked, refused)
            })
        })
        .collect()
}

/// Wait (bounded) until `counter` reaches `n`.
async fn wait_count(counter: &AtomicUsize, n: usize, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} within {within:?}",
            counter.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a background chat: each member got exactly the other's acknowledged
/// messages, once each and in order, and the history read from each member's node
/// is every acknowledged message, once.
async fn check_chat(room: &str, mut done: Vec<Chatted>) {
    let all: BTreeMap<u64, String> = done.iter().flat_map(|(_, acked, _)| acked.clone()).collect();
    let total: usize = done.iter().map(|(_, acked, _)| acked.len()).sum();
    assert_eq!(all.len(), total, "one seq acknowledged to two members");
    for i in 0..done.len() {
        let others: BTreeMap<u64, String> = done
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, (_, acked, _))| acked.clone())
            .collect();
        let m = &mut done[i].0;
        m.wait_for(&others, Duration::from_secs(15)).await;
        // A stray duplicate would arrive right behind the last message.
        while let Some(f) = m.c.try_recv(Duration::from_millis(300)).await {
            if let ServerFrame::Message(msg) = f {
                if msg.sender != m.c.user_id {
                    m.got.push(msg);
                }
            }
        }
        m.check_got(&others);
        let stored = m.full_history(room).await;
        assert_eq!(stored, all, "{}: the history vs every acknowledged message", m.c.user_id);
    }
}

// ---------------------------------------------------------------- matching

/// 2,000 clients spread round-robin over three nodes search at the same moment in
/// one language: every client gets exactly one outcome; no double, self or
/// asymmetric match; every room has exactly two members who agree on it; all but a
/// handful are matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_two_thousand_over_three_nodes_has_no_double_or_asymmetric_match() {
    const N: usize = 2_000;
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let cluster = engines(3, &[("--search-timeout-ms", "15000")]).await;
    let (seen, clients, took) = storm_over_three_nodes(&cluster, N).await;
    for s in &seen {
        assert_eq!(s.searching, 1, "{}: one searching per find_match", s.user);
    }
    let (rooms, unmatched) = check_matches(&seen, 2);
    let node_of = |user: &str| user[1..].parse::<usize>().expect("storm user number") % 3;
    let cross = rooms.values().filter(|m| node_of(&m[0]) != node_of(&m[1])).count();
    eprintln!(
        "redis cluster storm: {N} clients on 3 nodes, {} rooms ({cross} across nodes), \
         {unmatched} without a match, outcomes in {took:?}, total {:?}",
        rooms.len(),
        t0.elapsed()
    );
    assert_eq!(rooms.len() * 2 + unmatched, N);
    assert!(unmatched * 100 <= N, "{unmatched} of {N} clients got no_match_found");
    drop(clients);
}

/// One hot language split into six parts (`--language-parts en=6`): a storm of
/// 1,500 English searches over three nodes still makes no double or asymmetric
/// match and leaves nobody waiting, and the pool traffic is spread over the
/// parts' slots: every part's sharded channel carries events, and those channels
/// live on more than one primary (which one owns a slot is the cluster's
/// layout; the parts' names decide their slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_in_one_split_language_spreads_over_its_parts_with_no_double_match() {
    use common::redis_cluster::ShardListener;
    const N: usize = 1_500;
    const PARTS: usize = 6;
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let parts = format!("en={PARTS}");
    let cluster =
        engines(3, &[("--search-timeout-ms", "15000"), ("--language-parts", &parts)]).await;
    let channels: Vec<String> = (0..PARTS).map(|p| format!("rdv:{{pool:en~{p}}}:ev")).collect();
    let owners: Vec<u16> = channels.iter().map(|c| cluster.redis.primary_of_key(c)).collect();
    let distinct: BTreeSet<u16> = owners.iter().copied().collect();
    assert!(distinct.len() > 1, "the parts' slots are all on one primary: {owners:?}");
    let listeners: Vec<ShardListener> =
        channels.iter().zip(&owners).map(|(c, &port)| ShardListener::start(port, c)).collect();
    let (seen, clients, took) = storm_over_three_nodes(&cluster, N).await;
    let (rooms, unmatched) = check_matches(&seen, 2);
    let events: Vec<usize> = listeners.iter().map(ShardListener::count).collect();
    let mut by_primary: BTreeMap<u16, usize> = BTreeMap::new();
    for (port, n) in owners.iter().zip(&events) {
        *by_primary.entry(*port).or_default() += n;
    }
    eprintln!(
        "split-language storm: {N} clients, {} rooms, {unmatched} without a match, outcomes in \
         {took:?}, total {:?}; pool events per part {events:?}, per primary {by_primary:?}",
        rooms.len(),
        t0.elapsed()
    );
    assert_eq!(rooms.len() * 2 + unmatched, N);
    assert!(unmatched * 100 <= N, "{unmatched} of {N} clients got no_match_found");
    for (p, n) in events.iter().enumerate() {
        assert!(*n > 0, "part en~{p} carried no pool event: {events:?}");
    }
    drop(clients);
}

/// 1,200 clients in 600 designated pairs, the two of a pair on different nodes and
/// sharing an interest nobody else has (the ladder asks for one shared interest,
/// never less): every match is a cross-node claim and offer. Each client is
/// matched exactly once, with its designated partner, symmetrically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_cross_node_pairs_matches_each_with_its_partner_once() {
    const N: usize = 1_200;
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let cluster = engines(3, &[("--ladder", "0:any:1"), ("--search-timeout-ms", "20000")]).await;
    let urls = (0..N).map(|i| cluster.node(i % 3).ws_url(&format!("x{i:05}"))).collect();
    let plan = Storm {
        urls,
        outcome_within: Duration::from_secs(40),
        linger: Duration::from_millis(1_000),
    };
    let search = |i: usize| json!({"action": "find_match", "interests": [format!("pair{}", i / 2)], "language": "en"});
    let (mut seen, clients, took) = tokio::time::timeout(Duration::from_secs(55), plan.run(search))
        .await
        .expect("storm finished in time");
    seen.iter_mut().flat_map(|s| s.matches.iter_mut()).for_each(Found::sort);
    let (rooms, unmatched) = check_matches(&seen, 2);
    eprintln!(
        "cross-node pair storm: {N} clients, {} rooms, {unmatched} without a match, outcomes in \
         {took:?}, total {:?}",
        rooms.len(),
        t0.elapsed()
    );
    for (i, s) in seen.iter().enumerate() {
        let partner = format!("x{:05}", i ^ 1);
        let m = s.matches.first().unwrap_or_else(|| panic!("{}: not matched", s.user));
        assert_eq!(m.partner.as_deref(), Some(partner.as_str()), "{}: {m:?}", s.user);
    }
    assert_eq!(rooms.len(), N / 2);
    drop(clients);
}

/// Groups of three with one member on each node: each group fills one room,
/// everyone gets the same room and all three members, no `partner_id`, and
/// nothing more.
#[tokio::test]
async fn groups_of_three_with_one_member_per_node_get_one_room() {
    let _serial = SERIAL.lock().await;
    let cluster = engines(3, &[]).await;
    for round in 0..4 {
        let names: Vec<String> = ["g", "h", "i"].iter().map(|p| format!("{p}{round}")).collect();
        let interests = [format!("grp{round}-x"), format!("grp{round}-y")];
        let interests: Vec<&str> = interests.iter().map(String::as_str).collect();
        let mut clients = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut c = cluster.client(i, name).await;
            SEARCH.search(&mut c, &interests, json!({"group_size": 3})).await;
            clients.push(c);
        }
        let mut found = Vec::new();
        for c in &mut clients {
            found.push(SEARCH.expect_match(c).await);
        }
        let mut want = names.clone();
        want.sort();
        for f in &found {
            assert_eq!(f.room, found[0].room, "round {round}: one room: {found:?}");
            assert_eq!(f.members, want, "round {round}: {f:?}");
            assert_eq!(f.partner, None, "round {round}: partner_id in a group: {f:?}");
        }
        for c in &mut clients {
            SEARCH.quiet(c, Duration::from_millis(300)).await;
        }
    }
}

// ---------------------------------------------------------------- chat

/// Three rooms, each with members on two different nodes (a-b, b-c, c-a), every
/// member pipelining 150 messages at once: in every room both members get all 300
/// exactly once, in one identical gap-free order, and the history from either
/// node is that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_chat_loses_doubles_and_reorders_nothing() {
    const EACH: usize = 150;
    let _serial = SERIAL.lock().await;
    let cluster = engines(3, &[]).await;
    let mut rooms = Vec::new();
    for (i, j) in [(0, 1), (1, 2), (2, 0)] {
        let (a, b) = (format!("u{i}{j}a"), format!("u{i}{j}b"));
        let (ca, cb, room) = pair(&cluster.nodes, (i, &a), (j, &b)).await;
        rooms.push((room, vec![ca, cb]));
    }
    let tail = || Tail { quiet: Duration::from_millis(500), presence_after: true };
    let mut runs = Vec::new();
    for (room, clients) in rooms {
        runs.push(tokio::spawn(async move {
            let views = pipeline(clients, &room, EACH, tail()).await;
            (room, views)
        }));
    }
    for run in runs {
        let (room, mut views) = run.await.expect("room pipeline");
        let reference = check_one_order(&views, EACH);
        for (_, c) in &mut views {
            let mut stored = history(c, &room, 0, Some(200)).await;
            let after = stored.last().map(|m| m.seq).unwrap_or(0);
            stored.extend(history(c, &room, after, Some(200)).await);
            let got: Vec<(u64, String, String, String)> =
                stored.into_iter().map(|m| (m.seq, m.msg_id, m.sender, m.text)).collect();
            assert_eq!(got, reference, "{}: history of {room}", c.user_id);
        }
    }
}

// ---------------------------------------------------------------- failover

/// `kill -9` of the primary that holds the English pool during a storm of
/// staggered searches over three nodes: every node's `/readyz` goes 503 and back
/// to 200 within 5 s of the replica's promotion; every client gets exactly one
/// outcome (resending after `unavailable`, never seeing `internal`); no double or
/// asymmetric match; then a fresh cross-node pair is matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_match_storm_makes_no_double_match() {
    kill_a_primary_during_a_storm(&[], storm_search, false).await;
}

/// The same with designated cross-node pairs (as in
/// [`a_storm_of_cross_node_pairs_matches_each_with_its_partner_once`]): every
/// match in flight at the kill is a cross-node claim and offer, the case where a
/// claim lost with the primary could be made twice. A client is matched with its
/// designated partner or with nobody, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_cross_node_storm_makes_no_double_match() {
    let extra = [("--ladder", "0:any:1"), ("--search-timeout-ms", "15000")];
    kill_a_primary_during_a_storm(&extra, designated_pair_search, true).await;
}

/// Client `i`'s search in a designated-pair storm: an interest only it and client
/// `i ^ 1` (on another node) have.
fn designated_pair_search(i: usize) -> Value {
    json!({"action": "find_match", "interests": [format!("pair{}", i / 2)], "language": "en"})
}

/// 600 staggered searches over three nodes (`search(i)`; nodes started with
/// `extra`), `kill -9` of the English pool's primary 2 s in; see the two tests.
/// With `designated`, a match must be with the client's designated partner.
async fn kill_a_primary_during_a_storm(
    extra: &[(&str, &str)],
    search: fn(usize) -> Value,
    designated: bool,
) {
    const N: usize = 600;
    let _serial = SERIAL.lock().await;
    let mut cluster = engines(3, extra).await;
    let urls: Vec<String> =
        (0..N).map(|i| cluster.node(i % 3).ws_url(&format!("k{i:05}"))).collect();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let storm = tokio::spawn(staggered_storm(
        urls,
        Duration::from_secs(8),
        Duration::from_secs(40),
        Duration::from_millis(1_500),
        search,
        started_tx,
    ));
    started_rx.await.expect("the storm started");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let slot = cluster.redis.slot_of(&pool_key("en"));
    let killed_port = blocking(|| cluster.redis.kill9_primary_of_slot(slot));
    let killed = Instant::now();
    eprintln!("killed the primary :{killed_port} of slot {slot} (the pool) 2 s into the storm");
    let down = wait_ready_all(&cluster.nodes, 503, killed, NODE_TIMEOUT + RESUME).await;
    eprintln!("readyz 503 on every node {down:?} after the kill");
    let promoted = blocking(|| cluster.redis.wait_promoted(slot, PROMOTION));
    eprintln!("replica promoted {promoted:?} after the kill");
    // Checked last (below), so that a failure to get ready still shows the rest.
    let up = try_ready_all(&cluster.nodes, 200, killed, promoted + RESUME).await;
    eprintln!("readyz 200 on every node after the kill: {up:?}");

    let (mut seen, clients, refused) = storm.await.expect("storm task");
    seen.iter_mut().flat_map(|s| s.matches.iter_mut()).for_each(Found::sort);
    let (rooms, unmatched) = check_matches(&seen, 2);
    let node_of = |user: &str| user[1..].parse::<usize>().expect("storm user number") % 3;
    let cross = rooms.values().filter(|m| node_of(&m[0]) != node_of(&m[1])).count();
    eprintln!(
        "failover storm: {N} clients, {} rooms ({cross} across nodes), {unmatched} without a \
         match, {refused} find_match refused as unavailable",
        rooms.len()
    );
    if designated {
        for (i, s) in seen.iter().enumerate() {
            if let Some(m) = s.matches.first() {
                let partner = format!("k{:05}", i ^ 1);
                assert_eq!(m.partner.as_deref(), Some(partner.as_str()), "{}: {m:?}", s.user);
            }
        }
    }
    drop(clients);

    // Matching across nodes works (within the resume bound of the promotion).
    let t = Instant::now();
    let (_a, _b, _room) = tokio::time::timeout(
        (promoted + RESUME).saturating_sub(killed.elapsed()).max(Duration::from_secs(5)),
        pair(&cluster.nodes, (0, "after-a"), (1, "after-b")),
    )
    .await
    .expect("a cross-node pair matched after the failover");
    eprintln!("a fresh pair matched in {:?}", t.elapsed());
    if let Err(e) = up {
        panic!("after the promotion ({promoted:?} after the kill): {e}");
    }
}

/// `kill -9` of the primary holding a room's slot while its two members (on
/// different nodes) chat: sends in flight are acknowledged or refused as
/// `unavailable` (never `internal`), `/readyz` goes 503 and back to 200 within 5 s
/// of the promotion, chat resumes by resending, and every acknowledged message is
/// delivered to the other member once, in order, and is in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_chat_loses_nothing_acknowledged() {
    kill_a_primary_during_chat(|room| (room_key(room), format!("room {room}"))).await;
}

/// `kill -9` of the primary holding node-a's own shard channel (node-to-node
/// traffic: offers, its heartbeat) while alice (node-a) and bob (node-b) chat: as
/// above, and node-a follows the promoted replica (its subscription is made anew:
/// Redis says nothing when a dead node's slots move), so its `/readyz` is 200
/// again and matches across nodes, which travel over node channels, work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_a_nodes_own_channel_is_followed() {
    kill_a_primary_during_chat(|_| (node_channel("node-a"), "node-a's channel".into())).await;
}

/// Chat between alice (node-a) and bob (node-b) in the background; `kill -9` of
/// the primary owning the slot of `victim(room)`'s key (with a label for the log);
/// `/readyz` 503 on every node, the promotion, `/readyz` 200 within [`RESUME`] of
/// it; chat resumes within that bound; every acknowledged message delivered once,
/// in order, and in the history; then fresh cross-node pairs are matched.
async fn kill_a_primary_during_chat(victim: impl Fn(&str) -> (String, String)) {
    let _serial = SERIAL.lock().await;
    let mut cluster = engines(3, &[]).await;
    let (a, b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let members = vec![Member::new(a), Member::new(b)];
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chat = chat_in_background(
        members,
        &room,
        Duration::from_millis(10),
        acked.clone(),
        stop.clone(),
        20,
    );
    wait_count(&acked, 30, "acknowledged before the kill", Duration::from_secs(20)).await;

    let (key, label) = victim(&room);
    let slot = cluster.redis.slot_of(&key);
    let killed_port = blocking(|| cluster.redis.kill9_primary_of_slot(slot));
    let killed = Instant::now();
    let at_kill = acked.load(Ordering::SeqCst);
    eprintln!(
        "killed the primary :{killed_port} of slot {slot} ({label}; room {room} is in slot \
         {}) after {at_kill} acks",
        cluster.redis.slot_of(&room_key(&room))
    );
    let down = wait_ready_all(&cluster.nodes, 503, killed, NODE_TIMEOUT + RESUME).await;
    eprintln!("readyz 503 on every node {down:?} after the kill");
    let promoted = blocking(|| cluster.redis.wait_promoted(slot, PROMOTION));
    eprintln!("replica promoted {promoted:?} after the kill");
    // Checked last (below), so that a failure to get ready still shows the rest.
    let up = try_ready_all(&cluster.nodes, 200, killed, promoted + RESUME).await;
    eprintln!("readyz 200 on every node after the kill: {up:?}");
    // Chat resumes within the bound: more messages are acknowledged.
    let left = (promoted + RESUME).saturating_sub(killed.elapsed()).max(Duration::from_secs(1));
    let resumed_at = acked.load(Ordering::SeqCst) + 2;
    wait_count(&acked, resumed_at, "acknowledged after the promotion", left).await;
    eprintln!("chat resumed {:?} after the kill", killed.elapsed());
    stop.store(true, Ordering::SeqCst);

    let mut done = Vec::new();
    for t in chat {
        done.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("chat ended")
                .expect("chat task"),
        );
    }
    let refused: u32 = done.iter().map(|d| d.2).sum();
    eprintln!(
        "{} acknowledged, {refused} sends refused as unavailable",
        acked.load(Ordering::SeqCst)
    );
    check_chat(&room, done).await;

    // Matching across nodes, both ways through node-a.
    for (i, j, x, y) in [(0, 2, "carol", "dave"), (2, 0, "erin", "fred")] {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), pair(&cluster.nodes, (i, x), (j, y)))
            .await
            .unwrap_or_else(|_| panic!("{x} (node {i}) and {y} (node {j}) not matched in 10 s"));
        eprintln!("{x} and {y} matched across nodes in {:?}", t.elapsed());
    }
    if let Err(e) = up {
        panic!("after the promotion ({promoted:?} after the kill): {e}");
    }
}

/// The slot of a room's keys moves to another primary (key by key, with pauses,
/// so that the engine meets `ASK`/`TRYAGAIN` midway) while its members on two
/// nodes chat: nothing is lost, doubled or out of order, and the history is every
/// acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_rooms_slot_during_chat_loses_doubles_and_reorders_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = engines(3, &[]).await;
    let (a, b, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    let members = vec![Member::new(a), Member::new(b)];
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chat = chat_in_background(
        members,
        &room,
        Duration::from_millis(10),
        acked.clone(),
        stop.clone(),
        30,
    );
    wait_count(&acked, 20, "acknowledged before the migration", Duration::from_secs(20)).await;

    let slot = cluster.redis.slot_of(&room_key(&room));
    let from = cluster.redis.primary_of_slot(slot);
    let to = *cluster.redis.primaries().iter().find(|p| **p != from).expect("another primary");
    let before = acked.load(Ordering::SeqCst);
    let t = Instant::now();
    let moved =
        blocking(|| cluster.redis.migrate_slot_paced(slot, to, 1, Duration::from_millis(150)));
    let during = acked.load(Ordering::SeqCst) - before;
    eprintln!(
        "slot {slot} of room {room}: {moved} keys moved :{from} -> :{to} in {:?}, {during} \
         messages acknowledged meanwhile",
        t.elapsed()
    );
    assert!(moved >= 1, "the room's slot held no key: the migration moved nothing");
    stop.store(true, Ordering::SeqCst);
    let mut done = Vec::new();
    for t in chat {
        done.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("chat ended")
                .expect("chat task"),
        );
    }
    let refused: u32 = done.iter().map(|d| d.2).sum();
    eprintln!(
        "{} acknowledged, {refused} sends refused as unavailable",
        acked.load(Ordering::SeqCst)
    );
    check_chat(&room, done).await;
    assert_eq!(cluster.redis.primary_of_key(&room_key(&room)), to);
}

/// The slot of node-a's own shard channel moves to another primary (Redis drops
/// the channel's subscribers with an unsolicited `sunsubscribe`): node-a
/// subscribes again on the new owner, so it stays ready, its room keeps
/// working both ways, and matches across nodes (offers travel over node channels)
/// still work in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_nodes_channel_slot_keeps_it_reachable() {
    let _serial = SERIAL.lock().await;
    let cluster = engines(3, &[]).await;
    let (mut alice, mut bob, room) = pair(&cluster.nodes, (0, "alice"), (1, "bob")).await;
    exchange(&mut alice, &mut bob, &room, "before", "a1").await;
    let slot = cluster.redis.slot_of(&node_channel("node-a"));
    let from = cluster.redis.primary_of_slot(slot);
    let to = *cluster.redis.primaries().iter().find(|p| **p != from).expect("another primary");
    let moved = blocking(|| cluster.redis.migrate_slot(slot, to));
    eprintln!("slot {slot} of node-a's channel moved :{from} -> :{to} ({moved} keys in it)");
    let moved_at = Instant::now();
    let ready = wait_ready_all(&cluster.nodes, 200, moved_at, Duration::from_secs(10)).await;
    eprintln!("readyz 200 on every node {ready:?} after the move");
    for (i, j, x, y) in [(0, 2, "carol", "dave"), (2, 0, "erin", "fred")] {
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), pair(&cluster.nodes, (i, x), (j, y)))
            .await
            .unwrap_or_else(|_| panic!("{x} (node {i}) and {y} (node {j}) not matched in 10 s"));
        eprintln!("{x} and {y} matched across nodes in {:?}", t.elapsed());
    }
    let m = exchange(&mut bob, &mut alice, &room, "after", "b1").await;
    assert_eq!(m.seq, 2);
    let m = exchange(&mut alice, &mut bob, &room, "after too", "a2").await;
    assert_eq!(m.seq, 3);
    // Still ready a while later: the probe and heartbeat on the moved channel work.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_ready_all(&cluster.nodes, 200, Instant::now(), Duration::from_secs(1)).await;
}

/// The classic subscription (`rdv:cluster` and a node's `rdv:node:ID`: node
/// goodbyes and kicks) rides another connection than the shard channels and is
/// proved alive on its own: each beat also goes to the node's classic channel.
/// Here the cluster refuses classic `PUBLISH` (an ACL rule on every server), so
/// those beats stop coming back while the shard traffic and its probes still flow:
/// every node reports `/readyz` 503 within the subscription timeout (3 s) plus a
/// beat; once `PUBLISH` is allowed again, every node is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_subscription_that_stops_delivering_makes_the_node_unready() {
    let _serial = SERIAL.lock().await;
    let cluster = engines(2, &[]).await;
    let ports = cluster.redis.live_ports();
    let acl = |rule: &str| {
        for port in &ports {
            let reply = cluster.redis.cmd(*port, &["ACL", "SETUSER", "default", rule]);
            assert!(
                matches!(reply, Resp::Simple(ref ok) if ok == "OK"),
                ":{port} {rule}: {reply:?}"
            );
        }
    };
    // Ready for a while first: the classic beats come back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_ready_all(&cluster.nodes, 200, Instant::now(), Duration::from_secs(1)).await;
    blocking(|| acl("-publish"));
    let cut = Instant::now();
    let unready = wait_ready_all(&cluster.nodes, 503, cut, Duration::from_secs(8)).await;
    eprintln!("classic PUBLISH refused: /readyz 503 on every node after {unready:?}");
    blocking(|| acl("+publish"));
    let allowed = Instant::now();
    let ready = wait_ready_all(&cluster.nodes, 200, allowed, Duration::from_secs(15)).await;
    eprintln!("classic PUBLISH allowed again: /readyz 200 on every node after {ready:?}");
}

// ---------------------------------------------------------------- a late node

/// A node started after the others learns from the cluster what they hold: a
/// search waiting on node-a is matched by a client of the late node; a member who
/// reconnects to the late node within the grace period gets the room in `welcome`,
/// its history, and chats on; a block made before it started keeps the two apart
/// there.
#[tokio::test]
async fn a_node_started_later_learns_pools_rooms_and_blocks() {
    let _serial = SERIAL.lock().await;
    let mut cluster = engines(2, &[]).await;
    // A room across node-a and node-b.
    let (mut ann, mut bob, room) = pair(&cluster.nodes, (0, "ann"), (1, "bob")).await;
    let m1 = exchange(&mut ann, &mut bob, &room, "before the late node", "a1").await;
    // A block: xena blocks yuri (both on node-b: see moderation_cluster.rs for a
    // block across nodes).
    let (mut xena, mut yuri, _) = pair(&cluster.nodes, (1, "xena"), (1, "yuri")).await;
    xena.send_json(json!({"action": "block", "user_id": "yuri"})).await;
    assert_eq!(next(&mut xena).await.kind(), "blocked");
    assert_eq!(next(&mut yuri).await.kind(), "room_closed");
    // A search waiting on node-a.
    let mut carol = cluster.client(0, "carol").await;
    SEARCH.search(&mut carol, &["late-x", "late-y"], json!({})).await;
    SEARCH.quiet(&mut carol, Duration::from_millis(500)).await;

    let late = cluster.spawn_node(&[]);
    cluster.wait_formed().await;
    wait_http_status(cluster.node(late), "/readyz", 200, READY).await;

    // Pools: a client of the late node takes carol's search.
    let mut dave = cluster.client(late, "dave").await;
    SEARCH.search(&mut dave, &["late-x", "late-y"], json!({})).await;
    let fd = SEARCH.expect_match(&mut dave).await;
    let fc = SEARCH.expect_match(&mut carol).await;
    assert_eq!(fd.partner.as_deref(), Some("carol"), "{fd:?}");
    assert_eq!(fc.room, fd.room);
    assert_eq!(fc.members, strings(&["carol", "dave"]));

    // Rooms: ann comes back on the late node within the grace period.
    drop(ann);
    expect_presence(&mut bob, &room, "ann", PresenceStatus::Offline).await;
    let mut ann = cluster.client(late, "ann").await;
    assert_eq!(ann.welcome_rooms(), vec![room.clone()], "welcome on the late node");
    expect_presence(&mut bob, &room, "ann", PresenceStatus::Online).await;
    assert_eq!(history(&mut ann, &room, 0, None).await, vec![m1], "history on the late node");
    let m2 = exchange(&mut ann, &mut bob, &room, "from the late node", "a2").await;
    assert_eq!(m2.seq, 2);

    // Blocks: xena and yuri, both on the late node now, are kept apart.
    common::admin::kept_apart(cluster.node(late), "xena", "yuri", "zoe").await;
    drop((xena, yuri));
}
