//! Redis holds what is online, not who ever came: against two real `rendezvous`
//! processes and one real `redis-server` (harness: `common::cluster`).
//!
//! * 100,000 short visits (connect, `find_match`, match, `leave` or disconnect) leave
//!   no per-user routing or membership key, no key of a closed room, no pool entry
//!   and no language in `rdv:pool:langs` once the reconnect grace plus the key
//!   margin has passed (rate-limit windows expire on their own and are left out).
//! * A node killed with SIGKILL leaves none of its users' keys, nor its rooms',
//!   beyond the grace plus the margin, while the keys of the users and rooms of the
//!   surviving node outlive that lifetime (they are refreshed).
//! * A room chatting across the nodes for longer than its keys' lifetime keeps them.
//! * A resend of a `client_msg_id` after `--dedup-window-ms` is a new message.
//! * A room's stream in Redis is capped in bytes (`--history-bytes`), oldest first.
//! * A language whose pool is empty leaves `rdv:pool:langs`.
//!
//! The tests take one lock in turn: each starts its own cluster, and the visit
//! storm wants both cores.

use rendezvous_test_support as common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chat::*;
use common::cluster::*;
use common::Client;
use futures_util::{SinkExt, StreamExt};
use rendezvous_actors::protocol::ServerFrame;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Taken by every test (see the module doc).
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Reconnect grace of every node here (ms).
const GRACE_MS: u64 = 2_000;
/// `--cluster-key-margin-ms` of every node here (the smallest allowed).
const MARGIN_MS: u64 = 5_000;
/// Slack for Redis to expire keys and the nodes to finish their last round trips.
const SLACK: Duration = Duration::from_secs(3);

fn node_args() -> Vec<(&'static str, &'static str)> {
    vec![("--reconnect-grace-ms", "2000"), ("--cluster-key-margin-ms", "5000")]
}

fn key_ttl() -> Duration {
    Duration::from_millis(GRACE_MS + MARGIN_MS)
}

// ---------------------------------------------------------------- redis helpers

fn bulk(r: &Resp) -> String {
    match r {
        Resp::Bulk(Some(s)) | Resp::Simple(s) => s.clone(),
        Resp::Int(i) => i.to_string(),
        other => panic!("not a string reply: {other:?}"),
    }
}

fn array(r: Resp) -> Vec<Resp> {
    match r {
        Resp::Array(Some(a)) => a,
        other => panic!("not an array reply: {other:?}"),
    }
}

fn int(r: Resp) -> i64 {
    match r {
        Resp::Int(i) => i,
        other => panic!("not an integer reply: {other:?}"),
    }
}

/// Every key in Redis (SCAN; keys past their expiry are not returned).
fn all_keys(redis: &RedisServer) -> Vec<String> {
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    loop {
        let mut reply = array(redis.cmd(&["SCAN", &cursor, "COUNT", "10000"]));
        let page = array(reply.pop().expect("scan keys"));
        cursor = bulk(&reply.pop().expect("scan cursor"));
        keys.extend(page.iter().map(bulk));
        if cursor == "0" {
            return keys;
        }
    }
}

/// What a key is, for the accounting of what Redis still holds.
fn class_of(key: &str) -> &'static str {
    if key.starts_with("rdv:user:") {
        let tail = key.rsplit("}:").next().unwrap_or_default();
        if tail.starts_with("rl:") {
            "user rate-limit window (expires with its window)"
        } else if tail.contains("block") || tail.contains("ban") {
            "user block/ban (meant to last)"
        } else {
            "user routing/membership"
        }
    } else if key.starts_with("rdv:room:") {
        "room"
    } else if key.starts_with("rdv:{pool:") {
        "pool search/entries"
    } else if key.starts_with("rdv:{node:") && key.contains("}:offer:") {
        "offer record (expires on its own)"
    } else if key == "rdv:pool:langs" {
        "pool languages"
    } else if key == "rdv:nodes" || key == "rdv:trending" {
        "cluster-wide (bounded)"
    } else {
        "other"
    }
}

/// Keys that must be gone once nobody is online: everything but rate-limit windows,
/// blocks/bans and the two bounded cluster-wide sets.
fn leftovers(keys: &[String]) -> BTreeMap<&'static str, Vec<String>> {
    let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for k in keys {
        let class = class_of(k);
        if matches!(
            class,
            "user rate-limit window (expires with its window)"
                | "user block/ban (meant to last)"
                | "cluster-wide (bounded)"
                | "offer record (expires on its own)"
        ) {
            continue;
        }
        out.entry(class).or_default().push(k.clone());
    }
    out
}

fn summary(found: &BTreeMap<&'static str, Vec<String>>) -> String {
    found
        .iter()
        .map(|(class, keys)| {
            format!("{class}: {} (e.g. {:?})", keys.len(), &keys[..keys.len().min(5)])
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `MEMORY USAGE` of up to 50 keys of each class, averaged (printed for sizing).
fn memory_sample(redis: &RedisServer, keys: &[String]) {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for k in keys {
        let kind = if k.starts_with("rdv:user:") {
            format!(
                "rdv:user:*:{}",
                k.rsplit("}:").next().unwrap_or_default().split(':').next().unwrap_or("")
            )
        } else if k.starts_with("rdv:room:") {
            format!("rdv:room:*:{}", k.rsplit("}:").next().unwrap_or_default())
        } else if k.starts_with("rdv:{node:") {
            format!(
                "rdv:{{node:*}}:{}:*",
                k.rsplit("}:").next().unwrap_or_default().split(':').next().unwrap_or("")
            )
        } else if k.starts_with("rdv:{pool:") {
            format!(
                "rdv:{{pool:*}}:{}",
                k.rsplit("}:").next().unwrap_or_default().split(':').next().unwrap_or("")
            )
        } else {
            k.clone()
        };
        let slot = by.entry(kind).or_default();
        if slot.1 >= 50 {
            continue;
        }
        if let Ok(Resp::Int(n)) = redis.try_cmd(&["MEMORY", "USAGE", k, "SAMPLES", "0"]) {
            slot.0 += n as u64;
            slot.1 += 1;
        }
    }
    for (kind, (sum, n)) in by {
        if let Some(avg) = sum.checked_div(n) {
            eprintln!("memory usage {kind}: {avg} bytes on average over {n} keys");
        }
    }
}

/// Poll (every 50 ms) until `f` holds; panics after `within`. A node's writes reach
/// Redis through its own pipe, a moment after the client heard back.
async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info = bulk(&redis.cmd(&["INFO", "memory"]));
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

// ---------------------------------------------------------------- the visit storm

/// One visit of a fresh user: connect, `find_match`, wait for the match, then
/// `leave` (or just disconnect), close. Ok(true) when matched.
async fn visit(url: String, leave: bool) -> Result<bool, String> {
    let step = Duration::from_secs(15);
    let (mut ws, _) = tokio::time::timeout(step, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    async fn frame(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        within: Duration,
    ) -> Result<Value, String> {
        loop {
            match tokio::time::timeout(within, ws.next()).await {
                Err(_) => return Err("no frame in time".into()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return serde_json::from_str(t.as_str()).map_err(|e| format!("bad frame: {e}"))
                }
                Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed: {c:?}")),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(format!("socket: {e}")),
                Ok(None) => return Err("stream ended".into()),
            }
        }
    }
    let welcome = frame(&mut ws, step).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("first frame {welcome}"));
    }
    let find = json!({"action": "find_match", "interests": []}).to_string();
    ws.send(Message::Text(find.into())).await.map_err(|e| format!("send: {e}"))?;
    let room = loop {
        let f = frame(&mut ws, step).await?;
        match f["type"].as_str() {
            Some("match_found") => break f["room_id"].as_str().map(str::to_owned),
            Some("no_match_found") => break None,
            Some("error") => return Err(format!("find_match refused: {f}")),
            _ => continue,
        }
    };
    if let (Some(room), true) = (&room, leave) {
        let l = json!({"action": "leave", "room_id": room}).to_string();
        ws.send(Message::Text(l.into())).await.map_err(|e| format!("send: {e}"))?;
        // `left`, or the partner left first (`room_closed`, then `not_in_room`).
        loop {
            let f = frame(&mut ws, step).await?;
            if matches!(f["type"].as_str(), Some("left" | "error")) {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(room.is_some())
}

/// Visits to run (env `RDV_VISITS`, default 100,000) and how many at once
/// (env `RDV_VISIT_CONCURRENCY`, default 48).
fn storm_size() -> (usize, usize) {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    (env("RDV_VISITS", 100_000), env("RDV_VISIT_CONCURRENCY", 48))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_visits_leave_no_per_user_key_behind() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(2, &node_args()).await;
    let (visits, concurrency) = storm_size();
    // `ws://ADDR/ws?user=` of each node; a visit appends its user's name.
    let urls: Arc<Vec<String>> = Arc::new((0..2).map(|i| cluster.node(i).ws_url("")).collect());
    let before = used_memory(&cluster.redis);
    let next = Arc::new(AtomicUsize::new(0));
    let matched = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let peak_keys = Arc::new(AtomicU64::new(0));
    let run_tag = std::process::id();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (urls, next, matched, failed) =
            (urls.clone(), next.clone(), matched.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= visits {
                    return errors;
                }
                // Fresh user every visit, alternating nodes; every other one leaves
                // its room, the others just disconnect (their seat waits out the grace).
                let url = format!("{}v{run_tag}x{n}", urls[n % 2]);
                match visit(url, n % 4 < 2).await {
                    Ok(true) => {
                        matched.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if errors.len() < 3 {
                            errors.push(e);
                        }
                    }
                }
            }
        }));
    }
    // Watch the key count while the storm runs (bounded by the storm's end).
    let watcher = {
        let (next, peak) = (next.clone(), peak_keys.clone());
        let port = cluster.redis.port();
        tokio::spawn(async move {
            let mut last_report = Instant::now();
            while next.load(Ordering::Relaxed) < visits {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Resp::Int(n)) = try_redis_cmd(port, &["DBSIZE"]) {
                    peak.fetch_max(n as u64, Ordering::Relaxed);
                    if last_report.elapsed() > Duration::from_secs(10) {
                        eprintln!("visits started {}, keys {n}", next.load(Ordering::Relaxed));
                        last_report = Instant::now();
                    }
                }
            }
        })
    };
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.expect("visit worker"));
    }
    let _ = watcher.await;
    let took = started.elapsed();
    let (matched, failed) = (matched.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{visits} visits in {took:?} ({:.0}/s, {concurrency} at once): {matched} matched, \
         {failed} failed {errors:?}; peak {} keys",
        visits as f64 / took.as_secs_f64(),
        peak_keys.load(Ordering::Relaxed)
    );
    assert!(failed * 100 <= visits, "{failed} of {visits} visits failed: {errors:?}");
    assert!(matched * 10 >= visits * 9, "only {matched} of {visits} visits were matched");

    // What the last visits left, for sizing (OPERATIONS.md).
    let keys = all_keys(&cluster.redis);
    eprintln!(
        "right after the storm: {} keys, used_memory {} (before {before})",
        keys.len(),
        used_memory(&cluster.redis)
    );
    memory_sample(&cluster.redis, &keys);

    // A seat outlives its session by the grace; the user's keys then live at most
    // the grace plus the margin past their last refresh.
    tokio::time::sleep(Duration::from_millis(GRACE_MS) + key_ttl() + SLACK).await;
    let keys = all_keys(&cluster.redis);
    let left = leftovers(&keys);
    eprintln!(
        "after grace + key lifetime: {} keys in all, used_memory {}",
        keys.len(),
        used_memory(&cluster.redis)
    );
    assert!(left.is_empty(), "Redis still holds: {}", summary(&left));
    assert_eq!(int(cluster.redis.cmd(&["SCARD", "rdv:pool:langs"])), 0);
    // What is left are rate-limit windows, each on its way out with its window,
    // and the records of the last cross-node offers, which live 30 s at the most
    // here (the key lifetime, 7 s, is shorter).
    for k in keys.iter().filter(|k| class_of(k).starts_with("user rate-limit")).take(200) {
        let pttl = int(cluster.redis.cmd(&["PTTL", k]));
        assert!(pttl == -2 || (1..=60_000).contains(&pttl), "{k}: PTTL {pttl}");
    }
    for k in keys.iter().filter(|k| class_of(k).starts_with("offer record")).take(200) {
        let pttl = int(cluster.redis.cmd(&["PTTL", k]));
        assert!(pttl == -2 || (1..=30_000).contains(&pttl), "{k}: PTTL {pttl}");
    }
    // The nodes are still serving.
    let [mut a, mut b] = cluster.clients([(0, "after-a"), (1, "after-b")]).await;
    alive(&mut a).await;
    alive(&mut b).await;
}

/// `cancel_match` is always answered with `match_cancelled`: proof of a live session.
async fn alive(c: &mut Client) {
    c.send_json(json!({"action":"cancel_match"})).await;
    match next(c).await {
        ServerFrame::MatchCancelled {} => {}
        other => panic!("{}: expected match_cancelled, got {other:?}", c.user_id),
    }
}

// ---------------------------------------------------------------- kill -9

/// `a` on node `a.0` and `b` on node `b.0` search with two interests only they share
/// and are matched with each other; the clients and the room.
async fn pair(cluster: &Cluster, a: (usize, &str), b: (usize, &str)) -> (Client, Client, String) {
    let tag = format!("{}{}", a.1, b.1);
    let interests = [format!("{tag}x"), format!("{tag}y")];
    let mut ca = cluster.client(a.0, a.1).await;
    let mut cb = cluster.client(b.0, b.1).await;
    for c in [&mut ca, &mut cb] {
        c.send_json(json!({"action":"find_match","interests":interests})).await;
        assert_eq!(next(c).await.kind(), "searching", "{}", c.user_id);
    }
    let ra = match next(&mut ca).await {
        ServerFrame::MatchFound { room_id, .. } => room_id,
        other => panic!("{}: expected match_found, got {other:?}", ca.user_id),
    };
    let rb = match next(&mut cb).await {
        ServerFrame::MatchFound { room_id, .. } => room_id,
        other => panic!("{}: expected match_found, got {other:?}", cb.user_id),
    };
    assert_eq!(ra, rb);
    (ca, cb, ra)
}

fn keys_of_user<'a>(keys: &'a [String], user: &str) -> Vec<&'a String> {
    let tag = format!("rdv:user:{{{user}}}:");
    keys.iter().filter(|k| k.starts_with(&tag) && !k[tag.len()..].starts_with("rl:")).collect()
}

fn keys_of_room<'a>(keys: &'a [String], room: &str) -> Vec<&'a String> {
    let tag = format!("rdv:room:{{{room}}}:");
    keys.iter().filter(|k| k.starts_with(&tag)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_per_user_keys_beyond_the_grace_and_margin() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_with(2, &node_args()).await;
    // Survivors: a room wholly on node a, whose keys must outlive the lifetime.
    let (mut a1, mut a2, room_a) = pair(&cluster, (0, "ka1"), (0, "ka2")).await;
    sent_ok(&mut a1, &room_a, "before").await;
    assert_eq!(expect_message(&mut a2).await.seq, 1);
    // A room across the nodes, and one wholly on the victim.
    let (_x1, _x2, room_x) = pair(&cluster, (0, "kx1"), (1, "kx2")).await;
    let (_b1, _b2, room_b) = pair(&cluster, (1, "kb1"), (1, "kb2")).await;
    // A search waiting on the victim, in its own language, and an idle user there.
    let mut b3 = cluster.client(1, "kb3").await;
    b3.send_json(json!({"action":"find_match","interests":["zz"],"language":"fr"})).await;
    assert_eq!(next(&mut b3).await.kind(), "searching");
    let _b4 = cluster.client(1, "kb4").await;
    let victims: Vec<String> =
        [&_x2, &_b1, &_b2, &b3, &_b4].iter().map(|c| c.user_id.clone()).collect();
    let keys = all_keys(&cluster.redis);
    for v in &victims {
        assert!(!keys_of_user(&keys, v).is_empty(), "{v} has no key before the kill");
    }
    assert!(!keys_of_room(&keys, &room_b).is_empty());
    wait_until("fr in rdv:pool:langs", Duration::from_secs(5), || {
        int(cluster.redis.cmd(&["SISMEMBER", "rdv:pool:langs", "fr"])) == 1
    })
    .await;

    cluster.node_mut(1).kill9();
    let killed = Instant::now();
    // Per-user keys of the victim's users: gone within the grace plus the margin.
    tokio::time::sleep(key_ttl() + SLACK).await;
    let keys = all_keys(&cluster.redis);
    let theirs: Vec<&String> = victims.iter().flat_map(|v| keys_of_user(&keys, v)).collect();
    assert!(theirs.is_empty(), "{:?} after the kill, still: {theirs:?}", killed.elapsed());
    assert!(keys_of_room(&keys, &room_b).is_empty(), "room wholly on the victim: {keys:?}");
    // The cross-node room closes once the survivor removes the victim's seat (peer
    // timeout + grace); its keys then live one lifetime.
    tokio::time::sleep(Duration::from_millis(3_500 + GRACE_MS) + SLACK).await;
    let keys = all_keys(&cluster.redis);
    assert!(keys_of_room(&keys, &room_x).is_empty(), "cross-node room: {keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("rdv:{pool:fr}")), "fr pool: {keys:?}");
    assert_eq!(int(cluster.redis.cmd(&["SISMEMBER", "rdv:pool:langs", "fr"])), 0);

    // The survivors' keys were refreshed all along (older than one lifetime now).
    assert!(killed.elapsed() > key_ttl());
    for u in [&a1.user_id, &a2.user_id] {
        let mine = keys_of_user(&keys, u);
        assert_eq!(mine.len(), 2, "{u}'s node and rooms keys: {mine:?}");
    }
    // The four room keys, plus the records of its `client_msg_id`s (a hash and its
    // list), living 1.5 dedup windows (15 min) from their last renewal.
    let room_keys = keys_of_room(&keys, &room_a);
    let dedup = |k: &str| k.ends_with(":sent") || k.ends_with(":sentids");
    assert_eq!(
        room_keys.iter().filter(|k| !dedup(k.as_str())).count(),
        4,
        "live room's keys: {keys:?}"
    );
    assert_eq!(room_keys.iter().filter(|k| dedup(k.as_str())).count(), 2, "{keys:?}");
    for k in room_keys.iter().filter(|k| dedup(k.as_str())) {
        let ttl = int(cluster.redis.cmd(&["TTL", k]));
        assert!((1..=900).contains(&ttl), "{k}: TTL {ttl}");
    }
    // The room goes on with its seq.
    assert_eq!(sent_ok(&mut a1, &room_a, "after").await, 2);
    assert_eq!(expect_message(&mut a2).await.seq, 2);
}

/// Send and wait for the sender's ack and own copy; the seq.
async fn sent_ok(c: &mut Client, room: &str, id: &str) -> u64 {
    send_text(c, room, &format!("text {id}"), id).await;
    sent(c, room, id).await.seq
}

/// A resend within `--dedup-window-ms` gets the original `ack` and is not stored or
/// delivered again; one after the window is a new message. The record's stored time
/// decides, not its key's lifetime (the room's records live longer than a window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_the_dedup_window_is_a_new_message() {
    let _serial = SERIAL.lock().await;
    let mut args = node_args();
    args.push(("--dedup-window-ms", "1500"));
    let cluster = Cluster::start_with(2, &args).await;
    let (mut c1, mut c2, room) = pair(&cluster, (0, "dw1"), (1, "dw2")).await;
    let first = exchange(&mut c1, &mut c2, &room, "hello", "same").await;
    assert_eq!(first.seq, 1);
    send_text(&mut c1, &room, "hello again", "same").await;
    match next(&mut c1).await {
        ServerFrame::Ack { client_msg_id, seq, msg_id, .. } => {
            assert_eq!(client_msg_id.as_deref(), Some("same"));
            assert_eq!((seq, msg_id), (1, first.msg_id.clone()), "the original ack");
        }
        other => panic!("expected the original ack, got {other:?}"),
    }
    let records = format!("rdv:room:{{{room}}}:sent");
    let life = int(cluster.redis.cmd(&["PTTL", &records]));
    assert!(life > 1_500, "the records outlive one window: PTTL {life}");
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let again = exchange(&mut c1, &mut c2, &room, "hello after", "same").await;
    assert_eq!((again.seq, again.text.as_str()), (2, "hello after"), "stored as new");
    // Past half a window since they were last renewed, a send renews the records
    // (else about 550 ms would be left now).
    let renewed = int(cluster.redis.cmd(&["PTTL", &records]));
    assert!(renewed > 1_500, "a send past half a window renews the records: PTTL {renewed}");
    // Both clients saw nothing else: the resend within the window was not delivered.
    let last = exchange(&mut c2, &mut c1, &room, "bye", "b1").await;
    assert_eq!(last.seq, 3);
}

/// Each node renews a room's duplicate-send records once per half window, not on
/// every send: a second send soon after does not touch their lifetime, the other
/// node's first send renews them (it never did), and a send half a window after a
/// node's renewal renews them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_renews_a_rooms_records_once_per_half_window() {
    let _serial = SERIAL.lock().await;
    let mut args = node_args();
    // Records live 4.5 s from a renewal; a node renews after 1.5 s.
    args.push(("--dedup-window-ms", "3000"));
    let cluster = Cluster::start_with(2, &args).await;
    let (mut c1, mut c2, room) = pair(&cluster, (0, "rn1"), (1, "rn2")).await;
    let records = format!("rdv:room:{{{room}}}:sent");
    let life = |redis: &RedisServer| int(redis.cmd(&["PTTL", &records]));
    let renewed_at = Instant::now();
    exchange(&mut c1, &mut c2, &room, "r1", "r1").await;
    assert!(life(&cluster.redis) > 4_200, "made with 1.5 windows");
    tokio::time::sleep(Duration::from_millis(600)).await;
    exchange(&mut c1, &mut c2, &room, "r2", "r2").await;
    let left = life(&cluster.redis);
    assert!(left < 4_200, "node 0 renewed 0.6 s ago: not renewed again (PTTL {left})");
    exchange(&mut c2, &mut c1, &room, "r3", "r3").await;
    let left = life(&cluster.redis);
    assert!(left > 4_200, "node 1's first send renews (PTTL {left})");
    tokio::time::sleep(Duration::from_millis(600)).await;
    exchange(&mut c2, &mut c1, &room, "r4", "r4").await;
    let left = life(&cluster.redis);
    assert!(left < 4_200, "node 1 renewed 0.6 s ago (PTTL {left})");
    tokio::time::sleep(Duration::from_millis(2_000).saturating_sub(renewed_at.elapsed())).await;
    exchange(&mut c1, &mut c2, &room, "r5", "r5").await;
    let left = life(&cluster.redis);
    assert!(left > 4_200, "half a window after node 0's renewal, it renews (PTTL {left})");
    // Every send was stored once, in order.
    let h = history(&mut c1, &room, 0, None).await;
    let texts: Vec<&str> = h.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["r1", "r2", "r3", "r4", "r5"]);
}

/// A room whose members chat across the nodes for two key lifetimes keeps its keys:
/// sends renew none of them (append.lua), the node holding the room does, every
/// third of the margin. The duplicate-send records (one per send) live at least one
/// dedup window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_chatting_past_its_key_lifetime_keeps_its_keys() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(2, &node_args()).await;
    let (mut c1, mut c2, room) = pair(&cluster, (0, "tc1"), (1, "tc2")).await;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < 2 * key_ttl() {
        seq += 1;
        let (from, to) = if seq % 2 == 1 { (&mut c1, &mut c2) } else { (&mut c2, &mut c1) };
        assert_eq!(sent_ok(from, &room, &format!("t{seq}")).await, seq);
        assert_eq!(expect_message(to).await.seq, seq);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let keys = all_keys(&cluster.redis);
    let tag = format!("rdv:room:{{{room}}}:");
    for what in ["members", "seq", "log", "meta"] {
        let key = format!("{tag}{what}");
        let ttl = int(cluster.redis.cmd(&["PTTL", &key]));
        assert!(ttl > 0 && ttl <= key_ttl().as_millis() as i64, "{key}: PTTL {ttl} ({keys:?})");
    }
    let records = format!("{tag}sent");
    assert_eq!(
        int(cluster.redis.cmd(&["HLEN", &records])),
        seq as i64 + 1,
        "one record per send, and the field \"~\""
    );
    // "~" holds a long value, so even a few records are a hash table (searched by
    // hash, not end to end as a listpack is).
    assert!(seq < 128, "few enough records for a listpack: {seq}");
    assert_eq!(
        bulk(&cluster.redis.cmd(&["OBJECT", "ENCODING", &records])),
        "hashtable",
        "the records' encoding"
    );
    for k in [records, format!("{tag}sentids")] {
        let ttl = int(cluster.redis.cmd(&["PTTL", &k]));
        assert!(
            ttl > 600_000 - 2 * key_ttl().as_millis() as i64 && ttl <= 900_000,
            "{k}: PTTL {ttl}"
        );
    }
    // The room goes on with its seq, on both nodes.
    assert_eq!(sent_ok(&mut c2, &room, "after").await, seq + 1);
    assert_eq!(expect_message(&mut c1).await.seq, seq + 1);
}

// ---------------------------------------------------------------- byte cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_stream_in_redis_is_capped_in_bytes_oldest_first() {
    let _serial = SERIAL.lock().await;
    let mut args = node_args();
    args.push(("--history-bytes", "4096"));
    let cluster = Cluster::start_with(2, &args).await;
    let (mut a, mut b, room) = pair(&cluster, (0, "ca"), (1, "cb")).await;
    let text = "x".repeat(400);
    let meta = format!("rdv:room:{{{room}}}:meta");
    for i in 1..=40u64 {
        if i == 25 {
            // meta loses its running byte count: the next send counts on from the
            // newest entry's, so the cap still holds.
            assert_eq!(int(cluster.redis.cmd(&["HDEL", &meta, "bend"])), 1, "meta had bend");
        }
        let id = format!("c{i}");
        send_text(&mut a, &room, &text, &id).await;
        assert_eq!(sent(&mut a, &room, &id).await.seq, i);
        assert_eq!(expect_message(&mut b).await.seq, i);
    }
    let entries =
        array(cluster.redis.cmd(&["XRANGE", &format!("rdv:room:{{{room}}}:log"), "-", "+"]));
    let mut bytes = 0;
    let mut seqs = Vec::new();
    let mut last = String::new();
    for e in entries {
        let mut parts = array(e);
        let fields = array(parts.pop().expect("fields"));
        let id = bulk(&parts.pop().expect("id"));
        let seq = id.split('-').next().and_then(|s| s.parse::<u64>().ok()).expect("seq id");
        seqs.push(seq);
        let (j, c) = (bulk(&fields[1]), bulk(&fields[3]));
        // Every entry's running count (`c`) is the bytes of all messages up to it,
        // across the lost count too (the 40 stored messages have one size).
        assert_eq!(c, (seq as usize * j.len()).to_string(), "entry {id}: running count");
        bytes += j.len();
        last = c;
    }
    assert_eq!(bulk(&cluster.redis.cmd(&["HGET", &meta, "bend"])), last, "meta's count");
    memory_sample(&cluster.redis, &all_keys(&cluster.redis));
    assert!(bytes <= 4096, "the stream holds {bytes} bytes: {seqs:?}");
    assert!(seqs.len() >= 5 && seqs.len() < 40, "kept {seqs:?}");
    let expected: Vec<u64> = ((41 - seqs.len() as u64)..=40).collect();
    assert_eq!(seqs, expected, "the newest are kept, oldest dropped first");
    // History still ends with the newest.
    let h = history(&mut b, &room, 0, Some(200)).await;
    assert_eq!(h.last().map(|m| m.seq), Some(40));
}

// ---------------------------------------------------------------- languages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_whose_pool_is_empty_leaves_redis() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(2, &node_args()).await;
    let langs: Vec<String> = (0..30u8)
        .map(|i| format!("{}{}", (b'a' + i / 26) as char, (b'a' + i % 26) as char))
        .collect();
    let mut clients = Vec::new();
    for (i, lang) in langs.iter().enumerate() {
        let mut c = cluster.client(i % 2, &format!("l{i}")).await;
        c.send_json(json!({"action":"find_match","interests":["q"],"language":lang})).await;
        assert_eq!(next(&mut c).await.kind(), "searching");
        clients.push(c);
    }
    wait_until("30 languages in rdv:pool:langs", Duration::from_secs(5), || {
        int(cluster.redis.cmd(&["SCARD", "rdv:pool:langs"])) == 30
    })
    .await;
    memory_sample(&cluster.redis, &all_keys(&cluster.redis));
    for c in &mut clients {
        c.send_json(json!({"action":"cancel_match"})).await;
        assert_eq!(next(c).await.kind(), "match_cancelled");
    }
    // The sweep runs every third of the margin.
    let deadline = Instant::now() + Duration::from_millis(MARGIN_MS) + SLACK;
    loop {
        let n = int(cluster.redis.cmd(&["SCARD", "rdv:pool:langs"]));
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} languages still in rdv:pool:langs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = all_keys(&cluster.redis);
    assert!(!keys.iter().any(|k| k.starts_with("rdv:{pool:")), "pool keys left: {keys:?}");
    // A new search brings its language back.
    clients[0].send_json(json!({"action":"find_match","interests":["q"],"language":"en"})).await;
    assert_eq!(next(&mut clients[0]).await.kind(), "searching");
    wait_until("en back in rdv:pool:langs", Duration::from_secs(5), || {
        int(cluster.redis.cmd(&["SISMEMBER", "rdv:pool:langs", "en"])) == 1
    })
    .await;
}
