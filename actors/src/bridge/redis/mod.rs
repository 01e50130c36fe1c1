//! The Redis bridge: several nodes act as one through one Redis.
//!
//! * Commands go through the ordered pipe in [`conn`]; scripts live in
//!   `scripts/*.lua`, each with a KEYS/ARGV header. Two files are fragments, not
//!   scripts: `trim_bytes.lua` (the stream's byte cap) and `tell_nodes.lua` (publish
//!   to every other node of a room), prepended with `concat!` where used.
//! * One pub/sub connection subscribes to `rdv:cluster` (every node) and
//!   `rdv:node:{id}` (this node); events go to the [`ClusterSink`] the engine
//!   attached (the engine's inbound router).
//! * A heartbeat task writes this node's liveness (`rdv:nodes`, a sorted set of
//!   last-beat times), publishes a probe to its own channel (a dead subscription
//!   counts as down), and declares peers dead when their beat is older than
//!   [`PEER_TIMEOUT`].
//! * After every (re)connect of either connection, a resync replaces this node's
//!   pool entries in Redis, reloads replicas of the others', and asks every room
//!   replica to restore what the store lacks and fetch what it missed.
//! * Redis holds what is online, not who ever came: every per-user and per-room key
//!   has a lifetime of the reconnect grace plus `cluster_key_margin_ms`, and a
//!   refresh task renews, every third of the margin and in pipelined batches, the
//!   keys of the users this node serves and of the rooms it holds (with their
//!   members). Keys of users who left, of closed rooms and of a killed node's users
//!   and rooms expire on their own. The same task drops languages whose pool is
//!   empty from `rdv:pool:langs`.
//!
//! Key layout (see CLUSTER.md, "Key layout", for the full table): `rdv:{pool:LANG}:search:USER`,
//! `rdv:{pool:LANG}:entries`, `rdv:pool:langs`, `rdv:nodes`, `rdv:trending`,
//! `rdv:user:{USER}:node|rooms|rl:*`, `rdv:room:{ROOM}:members|seq|log|meta`. The
//! braces are Redis Cluster hash tags: every script's keys share one slot.

pub mod cluster;
pub mod conn;
pub mod renew;
pub mod store;
pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{Cmd, Value};
use rendezvous_protocol::ChatMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use self::cluster::Router;
use self::conn::{Pace, PipePolicy};
use self::store::Store;
use self::target::Target;
use super::events::{ClusterEvent, MemberStatus, RoomEv};
use super::memory::MemoryBridge;
use super::{
    Appended, Attachment, BoxFut, Bridge, BridgeError, BridgeSettings, ClaimMember, ClaimOutcome,
    ClusterSink, HistoryPage, OfferOutcome, RoomSeed, RoomSnapshot, SearchAd, Seats, StoredKind,
    Ticket,
};
use crate::clock::now_ms;
use crate::ids::{Interest, RoomId, UserId};
use crate::metrics as m;

/// How often a node beats.
const BEAT: Duration = Duration::from_millis(500);
/// A peer whose last beat is older than this is dead.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(3_000);
/// A subscription whose own probe is older than this counts as dead.
const SUB_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Messages kept per room stream (approximate: MAXLEN ~); the stream is also
/// capped in bytes by `history_bytes`.
const STREAM_CAP: u64 = 10_000;
/// Scripts per pipeline when a node renews its keys. The pipe is one FIFO
/// connection, so every send and claim queued behind a refresh chunk waits for
/// all of it (and, with one worker, so does everything the node's thread does
/// while it builds and reads the chunk). Measured with `multi-node-match`
/// (1,000 arrivals/s over two nodes, `--workers 1`, p99 of 3 runs): chunks of
/// 1,000 held cross-node matches up by about 60 ms once per refresh round (p99
/// 30-37 ms, 1.7 ms with no refresh during the run), chunks of 100 gave 8-10 ms,
/// chunks of 20 give 2.7-3.8 ms for a round trip per 20 keys.
const REFRESH_CHUNK: usize = 20;

/// The shortest life of an offer's recorded outcome: far longer than a member node
/// takes to ask for it (after `HELD_CHECK`, 5 s, then every `DECIDE_RETRY` while
/// the store does not answer). Records live as long as a user's keys (the
/// reconnect grace plus the key margin), and never less than this.
const OFFER_RECORD_MIN_TTL: Duration = Duration::from_secs(30);

/// Shortest pause between two refreshes of this node's keys.
const MIN_REFRESH: Duration = Duration::from_millis(500);

struct Scripts {
    begin: redis::Script,
    end: redis::Script,
    claim: redis::Script,
    connect: redis::Script,
    count: redis::Script,
    room_open: redis::Script,
    append: redis::Script,
    event: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    close: redis::Script,
    rehome: redis::Script,
    reseed: redis::Script,
    touch_user: redis::Script,
    touch_room: redis::Script,
    mod_put: redis::Script,
    mod_load: redis::Script,
    offer: redis::Script,
}

const SOURCES: [&str; 18] = [
    concat!(include_str!("scripts/pool_publish.lua"), include_str!("scripts/begin.lua")),
    concat!(include_str!("scripts/pool_publish.lua"), include_str!("scripts/end.lua")),
    concat!(include_str!("scripts/pool_publish.lua"), include_str!("scripts/claim.lua")),
    include_str!("scripts/connect.lua"),
    include_str!("scripts/count.lua"),
    include_str!("scripts/room_open.lua"),
    concat!(
        include_str!("scripts/trim_bytes.lua"),
        include_str!("scripts/tell_nodes.lua"),
        include_str!("scripts/append.lua")
    ),
    concat!(include_str!("scripts/tell_nodes.lua"), include_str!("scripts/event.lua")),
    concat!(include_str!("scripts/tell_nodes.lua"), include_str!("scripts/join.lua")),
    concat!(include_str!("scripts/tell_nodes.lua"), include_str!("scripts/leave.lua")),
    concat!(include_str!("scripts/tell_nodes.lua"), include_str!("scripts/close.lua")),
    concat!(include_str!("scripts/tell_nodes.lua"), include_str!("scripts/rehome.lua")),
    concat!(include_str!("scripts/trim_bytes.lua"), include_str!("scripts/reseed.lua")),
    include_str!("scripts/touch_user.lua"),
    include_str!("scripts/touch_room.lua"),
    include_str!("scripts/mod_put.lua"),
    include_str!("scripts/mod_load.lua"),
    include_str!("scripts/offer.lua"),
];

/// The room scripts' way of telling the other nodes of a room: one `PUBLISH` per
/// node on one server, one `SPUBLISH` on the room's shard channel on a cluster.
const TELL_NODES: &str = include_str!("scripts/tell_nodes.lua");
const TELL_NODES_SHARDED: &str = include_str!("scripts/tell_nodes_sharded.lua");
/// How a pool change is shown to every node: `PUBLISH rdv:cluster` on one server,
/// `SPUBLISH` on the language's shard channel on a cluster.
const POOL_PUBLISH: &str = include_str!("scripts/pool_publish.lua");
const POOL_PUBLISH_SHARDED: &str = include_str!("scripts/pool_publish_sharded.lua");

/// Where the append script is in [`SOURCES`].
const APPEND: usize = 6;

/// The scripts' sources as loaded: on a cluster with the sharded fragments; the
/// append script starts with the settings it reads as constants (append.lua).
fn sources(cluster: bool, settings: &BridgeSettings) -> Arc<[String]> {
    SOURCES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = if cluster {
                s.replace(TELL_NODES, TELL_NODES_SHARDED)
                    .replace(POOL_PUBLISH, POOL_PUBLISH_SHARDED)
            } else {
                (*s).to_owned()
            };
            if i == APPEND {
                append_constants(settings) + &s
            } else {
                s
            }
        })
        .collect()
}

/// The append script's first line: the node's settings it uses, as constants
/// (texts where they only go to Redis, numbers where the script counts with them).
fn append_constants(s: &BridgeSettings) -> String {
    format!(
        "local STREAM_CAP, BYTE_CAP, KEY_TTL, WINDOW, MAX = '{STREAM_CAP}', {}, '{}', {}, {}\n",
        history_bytes(s),
        key_ttl_ms(s),
        s.dedup_window_ms.max(1),
        s.dedup_max_per_room,
    )
}

/// Lifetime (ms) of a per-user or per-room key without a refresh, and of a closed
/// room's `seq` and stream: the reconnect grace plus the margin.
fn key_ttl_ms(s: &BridgeSettings) -> u64 {
    s.reconnect_grace_ms.saturating_add(s.key_margin_ms).max(1)
}

/// Byte cap of a room's stream (`history_bytes`).
fn history_bytes(s: &BridgeSettings) -> usize {
    s.history_bytes.max(1)
}

impl Scripts {
    fn new(sources: &[String]) -> Self {
        let s = |i: usize| redis::Script::new(&sources[i]);
        Self {
            begin: s(0),
            end: s(1),
            claim: s(2),
            connect: s(3),
            count: s(4),
            room_open: s(5),
            append: s(6),
            event: s(7),
            join: s(8),
            leave: s(9),
            close: s(10),
            rehome: s(11),
            reseed: s(12),
            touch_user: s(13),
            touch_room: s(14),
            mod_put: s(15),
            mod_load: s(16),
            offer: s(17),
        }
    }
}

/// A mutex's guard, poisoned or not (nothing that holds these panics midway).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `EVALSHA` of a script with its keys and arguments (the pipe loaded the script).
fn evalsha(script: &redis::Script, keys: &[String], args: &[String]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(k);
    }
    for a in args {
        c.arg(a);
    }
    c
}

/// One attempt to subscribe, bounded by `within`: what it made, or `None` after
/// a pause of `backoff` (doubled, up to 2 s, after an error). Success resets the
/// backoff.
async fn subscribe_attempt<T>(
    made: impl std::future::Future<Output = redis::RedisResult<T>>,
    within: Duration,
    backoff: &mut Duration,
) -> Option<T> {
    match tokio::time::timeout(within, made).await {
        Ok(Ok(v)) => {
            *backoff = Duration::from_millis(100);
            return Some(v);
        }
        Ok(Err(e)) => {
            debug!(error = %e, "subscribe failed");
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(Duration::from_secs(2));
        }
        Err(_) => tokio::time::sleep(*backoff).await,
    }
    None
}

/// A chat message as the room stream stores it (`seq` is the entry id).
#[derive(Serialize, Deserialize)]
struct StoredMsg {
    msg_id: String,
    sender: String,
    text: String,
    ts: u64,
}

// ---- keys ----
fn search_key(lang: &str, user: &str) -> String {
    format!("rdv:{{pool:{lang}}}:search:{user}")
}
fn entries_key(lang: &str) -> String {
    format!("rdv:{{pool:{lang}}}:entries")
}
const LANGS_KEY: &str = "rdv:pool:langs";
const NODES_KEY: &str = "rdv:nodes";
const TRENDING_KEY: &str = "rdv:trending";
/// Interests kept in the trending set (the most counted).
const TRENDING_CAP: usize = crate::bridge::memory::TRENDING_CAP;
const CLUSTER_CHANNEL: &str = "rdv:cluster";
/// On a cluster: the start of every probe channel, `rdv:{probe:N}:NODE`.
const PROBE_PREFIX: &str = "rdv:{probe:";
fn node_channel(node: &str) -> String {
    format!("rdv:node:{node}")
}
/// On a cluster: a node's shard channel (node-to-node traffic: offers, probes).
fn node_shard_channel(node: &str) -> String {
    format!("rdv:{{node:{node}}}:ev")
}
/// On a cluster: a language's shard channel (its pool's changes), in the slot of
/// the pool's keys (see `pool_publish_sharded.lua`).
fn pool_channel(lang: &str) -> String {
    format!("rdv:{{pool:{lang}}}:ev")
}
/// On a cluster: a room's shard channel, in the slot of the room's keys (see
/// `tell_nodes_sharded.lua`).
fn room_channel(room: &str) -> String {
    room_key(room, "ev")
}
/// The moderation record: two keys in one hash slot (`{mod}`), so its scripts run
/// on Redis Cluster too. `ends`: record key → end (ms); `data`: record key → JSON.
const MOD_KEYS: [&str; 2] = ["rdv:{mod}:ends", "rdv:{mod}:data"];
/// Where the outcome of `creator`'s offer `offer` in `pool` is recorded: in the
/// creator's slot, so offers spread over the cluster by node, not by language.
fn offer_key(creator: &str, pool: &str, offer: u64) -> String {
    format!("rdv:{{node:{creator}}}:offer:{pool}:{offer}")
}
fn user_key(user: &str, what: &str) -> String {
    format!("rdv:user:{{{user}}}:{what}")
}
fn room_key(room: &str, what: &str) -> String {
    format!("rdv:room:{{{room}}}:{what}")
}
/// The field of `sender`'s `client_msg_id` in its room's hash of records
/// (append.lua): the sender's length first, so no two (sender, id) pairs share one.
fn sent_field(sender: &str, client_msg_id: &str) -> String {
    format!("{}:{sender}:{client_msg_id}", sender.len())
}
/// The four keys of a room, in the order the scripts take them.
fn room_keys(room: &str) -> [String; 4] {
    [
        room_key(room, "members"),
        room_key(room, "seq"),
        room_key(room, "log"),
        room_key(room, "meta"),
    ]
}
fn gid(node: &str, ticket: Ticket) -> String {
    format!("{node}:{ticket}")
}

fn unavailable(e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Unavailable(e.to_string())
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(kv) => kv.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// `user, node, user, node, ...` into pairs.
fn member_pairs(flat: &[Value]) -> Vec<(UserId, Arc<str>)> {
    flat.chunks_exact(2)
        .filter_map(|p| Some((UserId::from(as_string(&p[0])?), Arc::from(as_string(&p[1])?))))
        .collect()
}

/// Health of the two connections and the peers, shared by the bridge's tasks.
/// What the cluster subscriber is asked to follow.
enum Watch {
    /// A room replica opened (true) or stopped (false) here.
    Room(RoomId, bool),
    /// A search in this language began here.
    Lang(String),
}

struct Health {
    /// When this node last heard its own probe on its subscription (ms).
    sub_seen_ms: AtomicU64,
    /// On a cluster: when this node last heard its own beat on its classic
    /// channel (ms). The classic subscriptions (`rdv:cluster`, this node's
    /// `rdv:node:ID`: node goodbyes, kicks) ride another connection than the
    /// shard ones, so they are proved alive on their own.
    classic_seen_ms: AtomicU64,
    /// Peers and their last beat (ms), from the last read of `rdv:nodes`.
    peers: Mutex<HashMap<String, u64>>,
    /// Peers already declared dead (so each is handled once).
    lost: Mutex<HashSet<String>>,
}

/// The bridge. Construct with [`RedisBridge::connect`]; the engine then
/// [`Bridge::attach`]es its sink (nothing reaches Redis before).
pub struct RedisBridge {
    node: String,
    pipe: Store,
    /// Made at [`Bridge::attach`] ([`RedisBridge::scripts`]).
    scripts: OnceLock<Scripts>,
    /// What the connections load: the same sources, set with `scripts`.
    script_set: conn::ScriptSet,
    /// When this node last renewed each room's duplicate-send records.
    renewals: Arc<Mutex<renew::Renewals>>,
    health: Arc<Health>,
    /// Local searches, for claims of all-local groups while Redis is down.
    mirror: Arc<MemoryBridge>,
    /// Where inbound events go (the engine's router, held weakly).
    sink: OnceLock<Weak<dyn ClusterSink>>,
    /// The engine's settings, from [`Bridge::attach`] (defaults before).
    settings: OnceLock<BridgeSettings>,
    /// Bumped on every reconnect of the command connection.
    connected: watch::Receiver<u64>,
    /// Where connections go (a fixed server, or the sentinels' primary).
    target: Target,
    /// A resync task runs.
    resyncing: AtomicBool,
    /// Another resync was asked for while one ran.
    resync_again: AtomicBool,
    /// The last resync has finished (pools and rooms agree with Redis again).
    synced: AtomicBool,
    /// Set by the pipe when it reconnects, cleared when the resync after it has
    /// finished: until then rooms across nodes refuse sends ([`Bridge::writable`]).
    reseed_pending: Arc<AtomicBool>,
    /// The pipe's task until [`Bridge::attach`] spawns it.
    runner: Mutex<Option<conn::Runner>>,
    /// On a cluster: rooms to subscribe to (true) or leave (false), for the
    /// subscriber task ([`Bridge::watch_room`]).
    watch_tx: tokio::sync::mpsc::UnboundedSender<Watch>,
    watch_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Watch>>>,
    /// On a cluster: each primary's probe channel and when this node last heard
    /// its own probe on it (ms).
    probes: Mutex<HashMap<String, (String, u64)>>,
}

impl RedisBridge {
    /// Make the bridge. Its connections are made once [`Bridge::attach`] has
    /// started its tasks, in the background and retried for ever. `url` is any
    /// form [`target::parse`] reads; `ack` says how many replicas must confirm a
    /// chat message before it is acknowledged, and how long a busy pipe gathers.
    pub fn connect(
        url: &str,
        node: &str,
        ack: PipePolicy,
    ) -> Result<Arc<RedisBridge>, BridgeError> {
        // rediss:// needs a process-wide TLS crypto provider; a second install fails
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Nagle off (redis-rs leaves it on): the pipe writes one pipeline and waits
        // for its answer, and a pipeline's last partial segment must not wait for
        // a delayed ACK of the ones before it.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let target = Target::new(url, tcp).map_err(unavailable)?;
        let (tx, rx) = watch::channel(0u64);
        // The pipe sets it on a reconnect, before anything is sent on the new
        // connection; the resync clears it.
        let reseed_pending = Arc::new(AtomicBool::new(false));
        let tx = Arc::new(tx);
        let script_set = conn::ScriptSet::default();
        let (pipe, runner) = match &target {
            Target::Cluster(c) => {
                let router =
                    Router::new(c.clone(), script_set.clone(), ack, tx, reseed_pending.clone());
                (Store::Cluster(router), None)
            }
            _ => {
                let (pipe, runner) =
                    conn::new(target.clone(), script_set.clone(), tx, ack, reseed_pending.clone());
                (Store::One(pipe), Some(runner))
            }
        };
        let (watch_tx, watch_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(RedisBridge {
            node: node.to_owned(),
            pipe,
            scripts: OnceLock::new(),
            script_set,
            renewals: Arc::default(),
            health: Arc::new(Health {
                sub_seen_ms: AtomicU64::new(0),
                classic_seen_ms: AtomicU64::new(0),
                peers: Mutex::new(HashMap::new()),
                lost: Mutex::new(HashSet::new()),
            }),
            mirror: Arc::new(MemoryBridge::new(node)),
            sink: OnceLock::new(),
            settings: OnceLock::new(),
            connected: rx,
            target,
            resyncing: AtomicBool::new(false),
            resync_again: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            reseed_pending,
            runner: Mutex::new(runner),
            watch_tx,
            watch_rx: Mutex::new(Some(watch_rx)),
            probes: Mutex::new(HashMap::new()),
        }))
    }

    /// The engine's router, while the engine lives.
    fn sink(&self) -> Option<Arc<dyn ClusterSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    fn settings(&self) -> BridgeSettings {
        self.settings.get().copied().unwrap_or_default()
    }

    /// Lifetime (ms) of a per-user or per-room key without a refresh, and of a
    /// closed room's `seq` and stream: the reconnect grace plus the margin.
    fn key_ttl_ms(&self) -> u64 {
        key_ttl_ms(&self.settings())
    }

    /// How often this node renews its keys: a third of the margin, so two missed
    /// or late rounds still leave a live key alive.
    fn refresh_every(&self) -> Duration {
        Duration::from_millis(self.settings().key_margin_ms / 3).max(MIN_REFRESH)
    }

    /// Byte cap of a room's stream (`history_bytes`).
    fn history_bytes(&self) -> usize {
        history_bytes(&self.settings())
    }

    fn renewals(&self) -> std::sync::MutexGuard<'_, renew::Renewals> {
        lock(&self.renewals)
    }

    /// The scripts, made from the engine's settings the first time they are
    /// needed: in [`Bridge::attach`], before any connection loads them.
    fn scripts(&self) -> &Scripts {
        self.scripts.get_or_init(|| {
            let sources = sources(self.target.is_cluster(), &self.settings());
            self.script_set.set(sources.clone());
            Scripts::new(&sources)
        })
    }

    /// Renew this node's keys, then drop empty languages, every
    /// [`RedisBridge::refresh_every`], while Redis is reachable.
    async fn refresher(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.refresh_every()).await;
            let half = renew::half_window(self.settings().dedup_window_ms);
            self.renewals().prune(Instant::now(), half);
            if !self.pipe.is_up() {
                continue;
            }
            let t0 = Instant::now();
            if let Err(e) = self.refresh_keys().await {
                debug!(error = %e, "key refresh incomplete; retried next round");
            }
            if let Err(e) = self.sweep_languages().await {
                debug!(error = %e, "language sweep incomplete; retried next round");
            }
            debug!(took = ?t0.elapsed(), "refreshed keys");
        }
    }

    /// Renew the keys of every room this node holds a replica of (they name their
    /// members), then the keys of every user with a session here or a seat in one
    /// of those rooms: one script per room and per user, sent in pipelined chunks
    /// of [`REFRESH_CHUNK`] (one round trip per chunk, not one per key).
    async fn refresh_keys(&self) -> Result<(), BridgeError> {
        let Some(held) = self.sink().map(|s| s.held()) else { return Ok(()) };
        let ttl = self.key_ttl_ms().to_string();
        let rooms = held.rooms;
        let here: HashSet<UserId> = held.sessions.into_iter().collect();
        let mut seated: HashSet<UserId> = held.seated.into_iter().collect();
        for chunk in rooms.chunks(REFRESH_CHUNK) {
            let cmds = chunk
                .iter()
                .map(|r| {
                    evalsha(
                        &self.scripts().touch_room,
                        &room_keys(r.as_str()),
                        std::slice::from_ref(&ttl),
                    )
                })
                .collect();
            for members in self.pipe.call_many("touch_room", cmds).await?.into_iter().flatten() {
                seated.extend(as_array(members).iter().filter_map(as_string).map(UserId::from));
            }
        }
        let users: Vec<(&UserId, bool)> = here
            .iter()
            .map(|u| (u, true))
            .chain(seated.iter().filter(|u| !here.contains(*u)).map(|u| (u, false)))
            .collect();
        for chunk in users.chunks(REFRESH_CHUNK) {
            let cmds = chunk
                .iter()
                .map(|(u, is_here)| {
                    let node = if *is_here { self.node.clone() } else { String::new() };
                    evalsha(
                        &self.scripts().touch_user,
                        &[user_key(u.as_str(), "node"), user_key(u.as_str(), "rooms")],
                        &[ttl.clone(), node],
                    )
                })
                .collect();
            self.pipe.call_many("touch_user", cmds).await?;
        }
        Ok(())
    }

    /// Drop from `rdv:pool:langs` every language whose pool is empty. The set and
    /// the pools are in different hash slots (Redis Cluster), so this is not one
    /// script: remove, then look again and put back any that a search entered
    /// meanwhile (`begin_search` adds the language after its search is stored, so
    /// a search is never left out for longer than this round trip).
    async fn sweep_languages(&self) -> Result<(), BridgeError> {
        let langs = self.languages().await?;
        let sizes = self.pool_sizes(&langs).await?;
        let empty: Vec<&String> =
            langs.iter().zip(sizes).filter(|(_, n)| *n == Some(0)).map(|(l, _)| l).collect();
        if empty.is_empty() {
            return Ok(());
        }
        let mut srem = redis::cmd("SREM");
        srem.arg(LANGS_KEY);
        for l in &empty {
            srem.arg(l.as_str());
        }
        self.pipe.call("srem", srem).await?;
        let again: Vec<String> = empty.into_iter().cloned().collect();
        let sizes = self.pool_sizes(&again).await?;
        let back: Vec<&String> =
            again.iter().zip(sizes).filter(|(_, n)| *n != Some(0)).map(|(l, _)| l).collect();
        if !back.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(LANGS_KEY);
            for l in back {
                sadd.arg(l.as_str());
            }
            self.pipe.fire("sadd", sadd);
        }
        Ok(())
    }

    /// The languages in `rdv:pool:langs`.
    async fn languages(&self) -> Result<Vec<String>, BridgeError> {
        let v = self.pipe.call("smembers", redis::cmd("SMEMBERS").arg(LANGS_KEY).clone()).await?;
        Ok(as_array(v).iter().filter_map(as_string).collect())
    }

    /// Entries in each language's pool (`None`: unknown), batched.
    async fn pool_sizes(&self, langs: &[String]) -> Result<Vec<Option<i64>>, BridgeError> {
        let mut out = Vec::with_capacity(langs.len());
        for chunk in langs.chunks(conn::MANY_CHUNK) {
            let cmds = chunk.iter().map(|l| redis::cmd("HLEN").arg(entries_key(l)).clone());
            let replies = self.pipe.call_many("hlen", cmds.collect()).await?;
            out.extend(replies.into_iter().map(|r| r.ok().as_ref().and_then(as_i64)));
        }
        Ok(out)
    }

    fn healthy(&self) -> bool {
        let now = now_ms();
        let sub_age = now.saturating_sub(self.health.sub_seen_ms.load(Ordering::Acquire));
        self.pipe.is_up() && sub_age < SUB_TIMEOUT.as_millis() as u64 && self.probes_fresh(now)
    }

    /// On a cluster: every primary's probe came back lately, and so did this
    /// node's beat on its classic channel (a subscription that stays connected
    /// but stopped delivering is caught here).
    fn probes_fresh(&self, now: u64) -> bool {
        let Some(router) = self.pipe.router() else { return true };
        let classic = self.health.classic_seen_ms.load(Ordering::Acquire);
        if now.saturating_sub(classic) >= SUB_TIMEOUT.as_millis() as u64 {
            return false;
        }
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        router.primaries().iter().all(|(addr, _)| {
            probes
                .get(addr)
                .is_some_and(|(_, seen)| now.saturating_sub(*seen) < SUB_TIMEOUT.as_millis() as u64)
        })
    }

    /// The command that shows a pool change of `lang` to every node.
    fn pool_event(&self, lang: &str, payload: String) -> Cmd {
        if self.pipe.router().is_some() {
            redis::cmd("SPUBLISH").arg(pool_channel(lang)).arg(payload).clone()
        } else {
            redis::cmd("PUBLISH").arg(CLUSTER_CHANNEL).arg(payload).clone()
        }
    }

    /// Send an event to one node: its shard channel on a cluster, else its channel.
    fn tell_node(&self, node: &str, payload: String) {
        if self.pipe.router().is_some() {
            let cmd = redis::cmd("SPUBLISH").arg(node_shard_channel(node)).arg(payload).clone();
            self.pipe.fire("spublish", cmd);
        } else {
            self.publish(node_channel(node), payload);
        }
    }

    fn publish(&self, channel: String, payload: String) {
        self.pipe.fire("publish", redis::cmd("PUBLISH").arg(channel).arg(payload).clone());
    }

    /// The pub/sub loop: (re)subscribe with backoff, route every event. Every
    /// subscription asks the target for the server (the current primary); one is
    /// also dropped and made again when the command connection reconnects, so
    /// both follow a failover to the same primary.
    async fn subscriber(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut pipe_generation = self.connected.clone();
        loop {
            let sub = async {
                let client = self.target.client().await?;
                let server = target::addr_of(&client);
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(CLUSTER_CHANNEL).await?;
                ps.subscribe(node_channel(&self.node)).await?;
                Ok::<_, redis::RedisError>((ps, server))
            };
            // A reconnect of the pipe from here on makes this subscription again.
            pipe_generation.borrow_and_update();
            let Some((ps, server)) =
                subscribe_attempt(sub, Duration::from_secs(3), &mut backoff).await
            else {
                continue;
            };
            info!(node = %self.node, %server, "subscribed to cluster channels");
            // Whatever was published while the subscription was down is lost.
            self.clone().spawn_resync();
            let mut stream = ps.into_on_message();
            loop {
                let msg = tokio::select! {
                    msg = stream.next() => msg,
                    changed = pipe_generation.changed(), if self.target.is_sentinel() => {
                        if changed.is_err() {
                            return;
                        }
                        info!("command connection reconnected; subscribing again on the primary");
                        None
                    }
                };
                let Some(msg) = msg else { break };
                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                match serde_json::from_slice::<ClusterEvent>(&payload) {
                    Ok(ClusterEvent::Beat { node, .. }) if node == self.node => {
                        self.health.sub_seen_ms.store(now_ms(), Ordering::Release);
                    }
                    Ok(ev) => {
                        if let Some(sink) = self.sink() {
                            sink.deliver(ev);
                        }
                    }
                    Err(e) => debug!(error = %e, "ignored an unreadable cluster event"),
                }
            }
            warn!(%server, "cluster subscription ended; resubscribing");
            self.health.sub_seen_ms.store(0, Ordering::Release);
        }
    }

    /// Redis Cluster's pub/sub: one RESP3 cluster connection (redis-rs keeps one
    /// per node it needs and subscribes again after a reconnect). Classic channels
    /// for the rare cluster-wide events (`rdv:cluster`, and this node's own channel
    /// for kicks a user's script sends); shard channels for this node's traffic,
    /// each room it holds a replica of, and one probe per primary. A shard
    /// subscription Redis drops when its slot moves (an unsolicited `sunsubscribe`)
    /// is made again, and a room then fetches what it missed. When a probe stops
    /// coming back while the connection looks fine, the connection is made anew.
    async fn cluster_subscriber(self: Arc<Self>) {
        let Some(router) = self.pipe.router().cloned() else { return };
        let Target::Cluster(ct) = &self.target else { return };
        let ct = ct.clone();
        let Some(mut watch_rx) = self.watch_rx.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        // Rooms watched, with how many replicas asked (a room may reopen before
        // the old replica's stop is seen).
        let mut rooms: HashMap<RoomId, usize> = HashMap::new();
        // Languages whose pool channel is subscribed (never left: a language
        // swept while empty may come back at any moment).
        let mut langs: HashSet<String> = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut moves = router.moves();
        loop {
            moves.borrow_and_update();
            let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
            let nodes: Vec<redis::ConnectionInfo> =
                ct.url.seeds.iter().map(|(h, p)| ct.node_info(h, *p, true)).collect();
            let made = async {
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(3))
                    .build()?;
                let mut con = client.get_async_connection().await?;
                con.subscribe(&[CLUSTER_CHANNEL.to_owned(), node_channel(&self.node)]).await?;
                con.ssubscribe(node_shard_channel(&self.node)).await?;
                Ok::<_, redis::RedisError>(con)
            };
            let Some(con) = subscribe_attempt(made, Duration::from_secs(5), &mut backoff).await
            else {
                continue;
            };
            self.probes.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.refresh_probes(&router, &con);
            for room in rooms.keys() {
                self.subscribe_room(&con, room.clone());
            }
            for lang in &langs {
                self.subscribe_pool(&con, lang.clone());
            }
            info!(node = %self.node, "subscribed to the redis cluster's channels");
            // Whatever was published while the subscription was down is lost.
            self.clone().spawn_resync();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut stale_since: Option<u64> = None;
            loop {
                tokio::select! {
                    push = push_rx.recv() => {
                        let Some(push) = push else { break };
                        self.on_push(push, &rooms, &con);
                    }
                    w = watch_rx.recv() => {
                        let (room, on) = match w {
                            None => return,
                            Some(Watch::Lang(lang)) => {
                                if langs.insert(lang.clone()) {
                                    self.subscribe_pool(&con, lang);
                                }
                                continue;
                            }
                            Some(Watch::Room(room, on)) => (room, on),
                        };
                        if on {
                            let n = rooms.entry(room.clone()).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                self.subscribe_room(&con, room);
                            }
                        } else if let Some(n) = rooms.get_mut(&room) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                rooms.remove(&room);
                                let mut c = con.clone();
                                tokio::spawn(async move {
                                    let _ = c.sunsubscribe(room_channel(room.as_str())).await;
                                });
                            }
                        }
                    }
                    _ = moves.changed() => {
                        // Shard subscriptions on a failed or migrated slot are gone
                        // or going: make them all again on the new owners.
                        info!("redis cluster slots changed owner; subscribing anew");
                        break;
                    }
                    _ = tick.tick() => {
                        self.refresh_probes(&router, &con);
                        // Languages other nodes began searches in.
                        if let Ok(all) = self.languages().await {
                            for lang in all {
                                if langs.insert(lang.clone()) {
                                    self.subscribe_pool(&con, lang);
                                }
                            }
                        }
                        let now = now_ms();
                        let sub_age = now.saturating_sub(self.health.sub_seen_ms.load(Ordering::Acquire));
                        let fresh = self.probes_fresh(now) && sub_age < SUB_TIMEOUT.as_millis() as u64;
                        if !router.is_up() || fresh {
                            stale_since = None;
                            continue;
                        }
                        let since = *stale_since.get_or_insert(now);
                        if now.saturating_sub(since) > 2 * SUB_TIMEOUT.as_millis() as u64 {
                            warn!("a redis cluster subscription stopped delivering this node's probe; subscribing anew");
                            break;
                        }
                    }
                }
            }
            self.health.sub_seen_ms.store(0, Ordering::Release);
            self.health.classic_seen_ms.store(0, Ordering::Release);
        }
    }

    /// One push of the cluster subscription.
    fn on_push(
        &self,
        push: redis::PushInfo,
        rooms: &HashMap<RoomId, usize>,
        con: &redis::cluster_async::ClusterConnection,
    ) {
        use redis::PushKind;
        let channel = push.data.first().and_then(as_string).unwrap_or_default();
        let classic = push.kind == PushKind::Message;
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else { return };
                if channel.starts_with(PROBE_PREFIX) {
                    let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                    for (ch, seen) in probes.values_mut() {
                        if *ch == channel {
                            *seen = now_ms();
                        }
                    }
                    return;
                }
                match serde_json::from_slice::<ClusterEvent>(payload) {
                    Ok(ClusterEvent::Beat { node, .. }) if node == self.node => {
                        let seen = if classic {
                            &self.health.classic_seen_ms
                        } else {
                            &self.health.sub_seen_ms
                        };
                        seen.store(now_ms(), Ordering::Release);
                    }
                    // A room's channel carries this node's own events back.
                    Ok(ClusterEvent::Room { origin, .. }) if origin == self.node => {}
                    Ok(ev) => {
                        if let Some(sink) = self.sink() {
                            sink.deliver(ev);
                        }
                    }
                    Err(e) => debug!(error = %e, "ignored an unreadable cluster event"),
                }
            }
            PushKind::SUnsubscribe => {
                // Solicited (a room this node left) or Redis dropping it because
                // the slot moved: make it again if it is still wanted.
                if let Some(room) = channel
                    .strip_prefix("rdv:room:{")
                    .and_then(|r| r.strip_suffix("}:ev"))
                    .map(RoomId::from)
                {
                    if rooms.contains_key(&room) {
                        info!(%room, "room subscription dropped by redis (slot moved); subscribing again");
                        self.subscribe_room(con, room);
                    }
                } else if channel == node_shard_channel(&self.node)
                    || channel.starts_with(PROBE_PREFIX)
                    || channel.starts_with("rdv:{pool:")
                {
                    info!(%channel, "shard subscription dropped by redis (slot moved); subscribing again");
                    let mut c = con.clone();
                    tokio::spawn(async move {
                        if let Err(e) = c.ssubscribe(&channel).await {
                            warn!(%channel, error = %e, "could not subscribe again");
                        }
                    });
                }
            }
            _ => {}
        }
    }

    /// Subscribe to `lang`'s pool channel, then load the language's searches
    /// (those announced before the subscription took were not delivered here).
    fn subscribe_pool(&self, con: &redis::cluster_async::ClusterConnection, lang: String) {
        let mut c = con.clone();
        let pipe = self.pipe.clone();
        let sink = self.sink();
        let me = self.node.clone();
        let live: HashSet<String> =
            self.health.peers.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        tokio::spawn(async move {
            if let Err(e) = c.ssubscribe(pool_channel(&lang)).await {
                warn!(%lang, error = %e, "could not subscribe to a language's pool channel");
                return;
            }
            let all = redis::cmd("HGETALL").arg(entries_key(&lang)).clone();
            let (Ok(v), Some(sink)) = (pipe.call("hgetall", all).await, sink) else { return };
            for pair in as_array(v).chunks_exact(2) {
                let Some(json) = as_string(&pair[1]) else { continue };
                let Ok(ad) = serde_json::from_str::<SearchAd>(&json) else { continue };
                if ad.node != me && (live.is_empty() || live.contains(&ad.node)) {
                    sink.deliver(ClusterEvent::PoolAdd { ad });
                }
            }
        });
    }

    /// Subscribe to `room`'s shard channel, then have the replica fetch what was
    /// stored before the subscription took (it was not delivered to this node).
    fn subscribe_room(&self, con: &redis::cluster_async::ClusterConnection, room: RoomId) {
        let mut c = con.clone();
        let pipe = self.pipe.clone();
        let sink = self.sink();
        tokio::spawn(async move {
            if let Err(e) = c.ssubscribe(room_channel(room.as_str())).await {
                warn!(%room, error = %e, "could not subscribe to a room's channel");
                return;
            }
            let get = redis::cmd("GET").arg(room_key(room.as_str(), "seq")).clone();
            if let Ok(v) = pipe.call("get", get).await {
                let seq = as_i64(&v).unwrap_or(0).max(0) as u64;
                if let Some(sink) = sink {
                    sink.room_subscribed(&room, seq);
                }
            }
        });
    }

    /// Keep one probe channel per primary (a hash tag in one of its slots) and
    /// subscribe to the new ones.
    fn refresh_probes(&self, router: &Router, con: &redis::cluster_async::ClusterConnection) {
        let primaries = router.primaries();
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.retain(|addr, _| primaries.iter().any(|(a, _)| a == addr));
        for (addr, _) in primaries {
            if probes.contains_key(&addr) {
                continue;
            }
            let owned = |i: &u32| {
                let slot = cluster::slot(format!("probe:{i}").as_bytes());
                router.owner_of(slot).as_deref() == Some(addr.as_str())
            };
            let Some(i) = (0..100_000u32).find(owned) else { continue };
            let channel = format!("{PROBE_PREFIX}{i}}}:{}", self.node);
            probes.insert(addr, (channel.clone(), 0));
            let mut c = con.clone();
            tokio::spawn(async move {
                if let Err(e) = c.ssubscribe(&channel).await {
                    debug!(%channel, error = %e, "probe subscription failed; retried");
                }
            });
        }
    }

    /// Publish this node's probe on each primary's probe channel.
    fn send_probes(&self, _now: u64) {
        if self.pipe.router().is_none() {
            return;
        }
        let channels: Vec<String> = {
            let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
            probes.values().map(|(ch, _)| ch.clone()).collect()
        };
        for ch in channels {
            self.pipe.fire("probe", redis::cmd("SPUBLISH").arg(ch).arg("p").clone());
        }
    }

    /// Beat, read the peers, declare dead ones.
    async fn heartbeat(self: Arc<Self>) {
        let mut every = tokio::time::interval(BEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = now_ms();
            metrics::gauge!(m::BRIDGE_UP).set(if self.healthy() { 1.0 } else { 0.0 });
            self.pipe
                .fire("zadd", redis::cmd("ZADD").arg(NODES_KEY).arg(now).arg(&self.node).clone());
            let beat = ClusterEvent::Beat { node: self.node.clone(), at_ms: now }.to_json();
            if self.pipe.router().is_some() {
                // The classic subscription's probe: a cluster copies a classic
                // PUBLISH to every shard, one small message per node and beat.
                self.publish(node_channel(&self.node), beat.clone());
            }
            self.tell_node(&self.node, beat);
            self.send_probes(now);
            let read = self.pipe.call(
                "zrange",
                redis::cmd("ZRANGE").arg(NODES_KEY).arg(0).arg(-1).arg("WITHSCORES").clone(),
            );
            let Ok(v) = read.await else { continue };
            let flat = as_array(v);
            let mut peers = HashMap::new();
            for pair in flat.chunks_exact(2) {
                let (Some(node), Some(score)) = (as_string(&pair[0]), as_string(&pair[1])) else {
                    continue;
                };
                let at = score.parse::<f64>().unwrap_or(0.0) as u64;
                if node != self.node {
                    peers.insert(node, at);
                }
            }
            let now = now_ms();
            let mut dead = Vec::new();
            for (node, at) in &peers {
                let age = now.saturating_sub(*at);
                metrics::gauge!(m::BRIDGE_PEER_HEARTBEAT_AGE_SECONDS, "node" => node.clone())
                    .set(age as f64 / 1000.0);
                if age > PEER_TIMEOUT.as_millis() as u64 {
                    dead.push(node.clone());
                }
            }
            {
                let mut lost = self.health.lost.lock().unwrap_or_else(|p| p.into_inner());
                // A node that beats again (restarted with the same id) is alive.
                lost.retain(|n| {
                    !peers.get(n).is_some_and(|at| {
                        now.saturating_sub(*at) <= PEER_TIMEOUT.as_millis() as u64
                    })
                });
                dead.retain(|n| lost.insert(n.clone()));
            }
            peers.retain(|_, at| now.saturating_sub(*at) <= PEER_TIMEOUT.as_millis() as u64);
            *self.health.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
            for node in dead {
                self.peer_lost(&node, true).await;
            }
        }
    }

    /// A peer died or left: drop it everywhere here, and (once, cluster-wide) purge
    /// its searches from Redis.
    ///
    /// The node whose `ZREM` removes the dead peer also says goodbye on its behalf
    /// (`node_bye` on the cluster channel). A node whose beat comes later would
    /// otherwise never see the peer's stale entry, which is gone by then, and would
    /// never learn that the peer died.
    async fn peer_lost(&self, node: &str, purge: bool) {
        warn!(peer = node, "node lost");
        metrics::counter!(m::BRIDGE_NODES_LOST_TOTAL).increment(1);
        if let Some(sink) = self.sink() {
            sink.node_lost(node);
        }
        if !purge {
            return;
        }
        let removed =
            self.pipe.call("zrem", redis::cmd("ZREM").arg(NODES_KEY).arg(node).clone()).await;
        if removed.ok().and_then(|v| as_i64(&v)) == Some(1) {
            let bye = ClusterEvent::NodeBye { node: node.to_owned() }.to_json();
            self.publish(CLUSTER_CHANNEL.to_owned(), bye);
            self.purge_searches_of(node).await;
        }
    }

    /// Every search ad Redis holds: (language, search id, ad). Every language's
    /// pool is read in one pipelined round trip (per [`conn::MANY_CHUNK`]
    /// languages), not one per language.
    async fn stored_searches(&self) -> Vec<(String, String, SearchAd)> {
        let langs = self.languages().await.unwrap_or_default();
        let mut out = Vec::new();
        for chunk in langs.chunks(conn::MANY_CHUNK) {
            let cmds = chunk.iter().map(|l| redis::cmd("HGETALL").arg(entries_key(l)).clone());
            let Ok(replies) = self.pipe.call_many("hgetall", cmds.collect()).await else {
                continue;
            };
            for (lang, all) in chunk.iter().zip(replies) {
                let flat = as_array(all.unwrap_or(Value::Nil));
                for pair in flat.chunks_exact(2) {
                    let (Some(id), Some(json)) = (as_string(&pair[0]), as_string(&pair[1])) else {
                        continue;
                    };
                    if let Ok(ad) = serde_json::from_str::<SearchAd>(&json) {
                        out.push((lang.clone(), id, ad));
                    }
                }
            }
        }
        out
    }

    /// Remove every search of `node` from Redis (it died, or this node restarts).
    async fn purge_searches_of(&self, node: &str) {
        let prefix = format!("{node}:");
        for (lang, id, ad) in self.stored_searches().await {
            if !id.starts_with(&prefix) {
                continue;
            }
            let cmd = evalsha(
                &self.scripts().end,
                &[search_key(&lang, &ad.user), entries_key(&lang)],
                &[id, String::new()],
            );
            self.pipe.fire("end", cmd);
        }
    }

    /// Drain: withdraw whatever searches of this node Redis still holds, then leave
    /// the cluster (see [`Bridge::shutdown`]).
    pub async fn leave(self: Arc<Self>) -> Result<(), BridgeError> {
        self.purge_searches_of(&self.node).await;
        self.shutdown().await
    }

    /// Resync after every reconnect of the command connection.
    async fn resync_on_connect(self: Arc<Self>) {
        let mut rx = self.connected.clone();
        while rx.changed().await.is_ok() {
            self.clone().spawn_resync();
        }
    }

    /// Run a resync now, or once more after the one under way. `/readyz` stays 503
    /// until it has finished.
    fn spawn_resync(self: Arc<Self>) {
        self.synced.store(false, Ordering::Release);
        self.resync_again.store(true, Ordering::Release);
        if self.resyncing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            while self.resync_again.swap(false, Ordering::AcqRel) {
                // Let both connections settle (a restart reconnects both at once).
                tokio::time::sleep(Duration::from_millis(100)).await;
                let t0 = Instant::now();
                self.resync().await;
                metrics::histogram!(m::BRIDGE_RESYNC_SECONDS).record(t0.elapsed().as_secs_f64());
            }
            self.synced.store(true, Ordering::Release);
            self.reseed_pending.store(false, Ordering::Release);
            self.resyncing.store(false, Ordering::Release);
            // A trigger that raced the end of the loop runs again.
            if self.resync_again.load(Ordering::Acquire) {
                self.spawn_resync();
            }
        });
    }

    async fn resync(&self) {
        let Some(sink) = self.sink() else { return };
        info!(node = %self.node, "resyncing with redis");
        self.pipe
            .fire("zadd", redis::cmd("ZADD").arg(NODES_KEY).arg(now_ms()).arg(&self.node).clone());
        // 1. This node's searches: replace whatever Redis holds with what waits now.
        self.purge_searches_of(&self.node).await;
        sink.reconnected();
        // 2. Replicas of every live peer's searches.
        let live: HashSet<String> =
            self.health.peers.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for (_, _, ad) in self.stored_searches().await {
            if ad.node != self.node && (live.is_empty() || live.contains(&ad.node)) {
                sink.deliver(ClusterEvent::PoolAdd { ad });
            }
        }
        // 3. Rooms: restore and catch up.
        sink.resync_rooms();
        // 4. The moderation record: every stored ban, block and report, applied
        // like the live events (a node started later enforces them all).
        self.load_moderation(&sink).await;
    }

    /// Hand every stored moderation record to the sink.
    async fn load_moderation(&self, sink: &Arc<dyn ClusterSink>) {
        let keys = MOD_KEYS.map(str::to_owned);
        let cmd = evalsha(&self.scripts().mod_load, &keys, &[now_ms().to_string()]);
        match self.pipe.call("mod_load", cmd).await {
            Ok(v) => {
                let records = as_array(v);
                let n = records.len();
                for json in records.iter().filter_map(as_string) {
                    match serde_json::from_str(&json) {
                        Ok(ev) => {
                            sink.deliver(ClusterEvent::Moderation { origin: String::new(), ev })
                        }
                        Err(e) => warn!(error = %e, "unreadable moderation record in redis"),
                    }
                }
                debug!(records = n, "moderation record loaded");
            }
            Err(e) => warn!(error = %e, "could not load the moderation record"),
        }
    }

    /// Add `room` to the user's membership set, which lives as long as any key of
    /// theirs (renewed by the refresh while they are here or seated).
    fn seat_user(&self, user: &UserId, room: &str, ttl: u64) {
        let key = user_key(user.as_str(), "rooms");
        self.pipe.fire("sadd", redis::cmd("SADD").arg(&key).arg(room).clone());
        self.pipe.fire("pexpire", redis::cmd("PEXPIRE").arg(&key).arg(ttl).clone());
    }

    /// The append script's first two arguments (append.lua): the room event of
    /// `msg` up to its `seq` (ending `"seq":`), and the message as the room's stream
    /// stores it, which is also the rest of the event. The stored JSON is cut from
    /// the event's own text (the fields after `seq`, in braces of their own), so the
    /// script's `prefix .. seq .. ',' .. stored-without-its-brace .. '}'` is the
    /// event exactly, and the text crosses to Redis once. `None` if the event's
    /// layout ever stops being "`seq`, then the stored fields, then the ends"
    /// (unit tests below pin it).
    fn append_payloads(&self, msg: &ChatMessage) -> Option<(String, String)> {
        let ev = ClusterEvent::Room {
            room: msg.room_id.clone(),
            origin: self.node.clone(),
            ev: RoomEv::Message {
                seq: u64::MAX,
                msg_id: msg.msg_id.clone(),
                sender: msg.sender.clone(),
                text: msg.text.clone(),
                ts: msg.ts,
            },
        };
        let json = ev.to_json();
        // The event's tag comes first, then `seq` (u64::MAX): `"message","seq":MAX`
        // can only be the field itself (inside a JSON string every quote is escaped,
        // so a room name or text cannot contain that run of characters). Written out
        // whole, so a send makes no string to search for.
        const FIELD: &str = "\"message\",\"seq\":";
        const MARKED: &str = "\"message\",\"seq\":18446744073709551615";
        let at = json.find(MARKED)?;
        // `,"msg_id":…,"ts":…}}`: the message's fields, the end of `ev`, the event's.
        let fields = json[at + MARKED.len()..].strip_prefix(',')?.strip_suffix('}')?;
        Some((json[..at + FIELD.len()].to_owned(), format!("{{{fields}")))
    }

    fn room_event_json(&self, room: &RoomId, ev: RoomEv) -> String {
        ClusterEvent::Room { room: room.to_string(), origin: self.node.clone(), ev }.to_json()
    }

    /// The room event "`user`, on this node, is now `status`".
    fn member_here_json(&self, room: &RoomId, user: &UserId, status: MemberStatus) -> String {
        let ev = RoomEv::Member { user: user.to_string(), node: self.node.clone(), status };
        self.room_event_json(room, ev)
    }
}

/// Drop `room` from each user's membership set (the room closed under them).
/// Messages of a room's stream from an XRANGE reply (entries `SEQ-1` with the
/// stored JSON in field `j`); unreadable entries are skipped.
fn log_messages(room: &str, reply: Value) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    for entry in as_array(reply) {
        let parts = as_array(entry);
        let (Some(id), Some(fields)) = (parts.first().and_then(as_string), parts.get(1).cloned())
        else {
            continue;
        };
        let Some(seq) = id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let fields = as_array(fields);
        let Some(json) = fields.get(1).and_then(as_string) else { continue };
        let Ok(m) = serde_json::from_str::<StoredMsg>(&json) else { continue };
        out.push(ChatMessage {
            room_id: room.to_owned(),
            seq,
            msg_id: m.msg_id,
            sender: m.sender,
            text: m.text,
            ts: m.ts,
        });
    }
    out
}

fn unseat_users(pipe: &Store, room: &str, users: &[Value]) {
    for u in users.iter().filter_map(as_string) {
        pipe.fire("srem", redis::cmd("SREM").arg(user_key(&u, "rooms")).arg(room).clone());
    }
}

fn kind_str(kind: StoredKind) -> &'static str {
    match kind {
        StoredKind::Match => "match",
        StoredKind::Public => "public",
    }
}

impl Bridge for RedisBridge {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn clustered(&self) -> bool {
        true
    }

    /// Start the pipe, subscriber, heartbeat, resync and refresh tasks on the
    /// engine's first worker arbiter, beside sessions, rooms and shards, not on the
    /// main thread: with one worker a message then crosses no thread between its
    /// `send` and the Redis socket, nor between the subscription and a member's
    /// socket. Each crossing is a wake-up through the kernel; doing without them
    /// saved 8–9 % of each node's CPU at 21,000 cross-node messages/s
    /// (BENCHMARKS.md).
    fn attach(self: Arc<Self>, attachment: Attachment) {
        let Attachment { sink, worker, settings } = attachment;
        let _ = self.sink.set(sink);
        let _ = self.settings.set(settings);
        // The scripts carry settings: made now, before any connection loads them.
        if self.scripts.get().is_some() {
            warn!(
                "redis scripts were made before attach: the append script keeps default settings"
            );
        }
        self.scripts();
        let runner = self.runner.lock().ok().and_then(|mut r| r.take());
        if let Some(runner) = runner {
            worker.spawn(runner.run());
        }
        if let Some(router) = self.pipe.router() {
            worker.spawn(router.clone().run());
            worker.spawn(self.clone().cluster_subscriber());
        } else {
            worker.spawn(self.clone().subscriber());
        }
        worker.spawn(self.clone().heartbeat());
        worker.spawn(self.clone().resync_on_connect());
        worker.spawn(self.refresher());
    }

    fn begin_search(&self, ad: SearchAd) {
        self.mirror.begin(&UserId::from(ad.user.as_str()), ad.ticket);
        if self.pipe.router().is_some() {
            let _ = self.watch_tx.send(Watch::Lang(ad.language.clone()));
        }
        let ttl = ad.deadline_ms.saturating_sub(now_ms()) + 5_000;
        let keys = [search_key(&ad.language, &ad.user), entries_key(&ad.language)];
        let json = serde_json::to_string(&ad).unwrap_or_default();
        let id = gid(&ad.node, ad.ticket);
        let lang = ad.language.clone();
        let event = ClusterEvent::PoolAdd { ad }.to_json();
        let cmd = evalsha(&self.scripts().begin, &keys, &[id, ttl.to_string(), json, event]);
        self.pipe.fire("begin", cmd);
        // After the search is stored: a sweep that removes the language between the
        // two sees the search when it looks again (see `sweep_languages`).
        self.pipe.fire("sadd", redis::cmd("SADD").arg(LANGS_KEY).arg(lang).clone());
    }

    fn end_search(&self, user: &UserId, ticket: Ticket, language: &str) {
        self.mirror.end(user, ticket);
        let keys = [search_key(language, user.as_str()), entries_key(language)];
        let event = ClusterEvent::PoolRemove {
            node: self.node.clone(),
            language: language.to_owned(),
            tickets: vec![ticket],
        };
        let cmd = evalsha(&self.scripts().end, &keys, &[gid(&self.node, ticket), event.to_json()]);
        self.pipe.fire("end", cmd);
    }

    fn claim_match(&self, language: &str, members: Vec<ClaimMember>) -> BoxFut<ClaimOutcome> {
        let all_local = members.iter().all(|m| m.node.is_none());
        let local: Vec<(UserId, Ticket)> = members
            .iter()
            .filter(|m| m.node.is_none())
            .map(|m| (m.user.clone(), m.ticket))
            .collect();
        if all_local && !self.pipe.is_up() {
            // Redis is down: local matching goes on, decided here. The resync after
            // the reconnect replaces this node's entries in Redis.
            let outcome = self.mirror.claim_now(&local);
            return Box::pin(async move { Ok(outcome) });
        }
        let mut keys = vec![entries_key(language)];
        let mut args = Vec::with_capacity(members.len() + 1);
        let mut removed: HashMap<String, Vec<Ticket>> = HashMap::new();
        for m in &members {
            let node = m.node.as_deref().unwrap_or(&self.node);
            keys.push(search_key(language, m.user.as_str()));
            args.push(gid(node, m.ticket));
            removed.entry(node.to_owned()).or_default().push(m.ticket);
        }
        // One removal event per node named in the claim (replicas key on node).
        let events: Vec<String> = removed
            .into_iter()
            .map(|(node, tickets)| {
                ClusterEvent::PoolRemove { node, language: language.to_owned(), tickets }.to_json()
            })
            .collect();
        // The script publishes one payload; several nodes' removals are sent after.
        let (first, rest) =
            events.split_first().map(|(f, r)| (f.clone(), r.to_vec())).unwrap_or_default();
        args.push(first);
        let fut = self.pipe.call("claim", evalsha(&self.scripts().claim, &keys, &args));
        let pipe = self.pipe.clone();
        let rest: Vec<Cmd> = rest.into_iter().map(|e| self.pool_event(language, e)).collect();
        let mirror_claim: Vec<(UserId, Ticket)> = local;
        let users: Vec<UserId> = members.iter().map(|m| m.user.clone()).collect();
        let mirror_bridge = self.mirror.clone();
        Box::pin(async move {
            match fut.await {
                Ok(v) => {
                    let lost: Vec<UserId> = as_array(v)
                        .iter()
                        .filter_map(as_i64)
                        .filter_map(|i| users.get((i as usize).wrapping_sub(1)).cloned())
                        .collect();
                    if lost.is_empty() {
                        for cmd in rest {
                            pipe.fire("publish", cmd);
                        }
                        for (u, t) in &mirror_claim {
                            mirror_bridge.end(u, *t);
                        }
                        Ok(ClaimOutcome::Claimed)
                    } else {
                        Ok(ClaimOutcome::Lost(lost))
                    }
                }
                Err(e) if all_local => {
                    debug!(error = %e, "claim fell back to the local decision");
                    Ok(mirror_bridge.claim_now(&mirror_claim))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn record_match(&self, interests: Vec<Interest>) {
        if interests.is_empty() {
            return;
        }
        for i in interests {
            self.pipe.fire(
                "zincrby",
                redis::cmd("ZINCRBY").arg(TRENDING_KEY).arg(1).arg(i.as_str()).clone(),
            );
        }
        // Interests are whatever users type: keep the most counted ones only, or
        // the set grows with every one-off interest ever matched.
        let keep = -(TRENDING_CAP as i64) - 1;
        self.pipe.fire(
            "zremrangebyrank",
            redis::cmd("ZREMRANGEBYRANK").arg(TRENDING_KEY).arg(0).arg(keep).clone(),
        );
    }

    fn trending(&self, limit: usize) -> BoxFut<Vec<(String, u64)>> {
        let stop = limit.max(1) as i64 - 1;
        let fut = self.pipe.call(
            "zrevrange",
            redis::cmd("ZREVRANGE").arg(TRENDING_KEY).arg(0).arg(stop).arg("WITHSCORES").clone(),
        );
        Box::pin(async move {
            let flat = as_array(fut.await?);
            Ok(flat
                .chunks_exact(2)
                .filter_map(|p| {
                    let score = as_string(&p[1])?.parse::<f64>().ok()? as u64;
                    Some((as_string(&p[0])?, score))
                })
                .collect())
        })
    }

    fn nodes(&self) -> BoxFut<usize> {
        let n = self.health.peers.lock().unwrap_or_else(|p| p.into_inner()).len() + 1;
        Box::pin(async move { Ok(n) })
    }

    fn writable(&self) -> bool {
        self.pipe.is_up() && !self.reseed_pending.load(Ordering::Acquire)
    }

    fn health(&self) -> BoxFut<()> {
        let up = self.pipe.is_up();
        let healthy = self.healthy();
        let synced = self.synced.load(Ordering::Acquire);
        Box::pin(async move {
            match (up, healthy, synced) {
                (_, true, true) => Ok(()),
                (false, _, _) => Err(BridgeError::Unavailable("redis unreachable".into())),
                (true, false, _) => {
                    Err(BridgeError::Unavailable("cluster subscription is down".into()))
                }
                (true, true, false) => Err(BridgeError::Unavailable("resyncing with redis".into())),
            }
        })
    }

    fn shutdown(&self) -> BoxFut<()> {
        let bye = ClusterEvent::NodeBye { node: self.node.clone() }.to_json();
        self.publish(CLUSTER_CHANNEL.to_owned(), bye);
        self.pipe.fire("zrem", redis::cmd("ZREM").arg(NODES_KEY).arg(&self.node).clone());
        let pipe = self.pipe.clone();
        Box::pin(async move {
            // Everything queued before this ping has been applied once it answers.
            pipe.barrier().await
        })
    }

    fn send_to_node(&self, node: &str, event: ClusterEvent) {
        self.tell_node(node, event.to_json());
    }

    fn decide_offer(
        &self,
        creator: &str,
        pool: &str,
        offer: u64,
        proposal: OfferOutcome,
    ) -> BoxFut<OfferOutcome> {
        let key = offer_key(creator, pool, offer);
        let ttl = self.key_ttl_ms().max(OFFER_RECORD_MIN_TTL.as_millis() as u64);
        let args = [proposal.encode(), ttl.to_string()];
        let cmd = evalsha(&self.scripts().offer, &[key], &args);
        // Durable: an outcome a failover could lose would let the other side record
        // the opposite one.
        let fut = self.pipe.call_durable("offer", cmd, Pace::Now);
        Box::pin(async move {
            let (reply, confirmed) = fut.await?;
            if !confirmed {
                return Err(BridgeError::Unavailable(
                    "offer outcome not confirmed by replicas".into(),
                ));
            }
            let stored = as_string(&reply).unwrap_or_default();
            OfferOutcome::decode(&stored).ok_or_else(|| {
                BridgeError::Unavailable(format!("unreadable offer outcome {stored:?}"))
            })
        })
    }

    fn watch_room(&self, room: &RoomId, on: bool) {
        if self.pipe.router().is_some() {
            let _ = self.watch_tx.send(Watch::Room(room.clone(), on));
        }
    }

    fn broadcast(&self, event: ClusterEvent) {
        self.publish(CLUSTER_CHANNEL.to_owned(), event.to_json());
    }

    fn moderation_store(&self, key: crate::moderation::StoreKey, data: String) {
        use crate::moderation::StoreKey;
        let (key, until_ms) = match key {
            StoreKey::Put { key, until_ms } => (key, until_ms),
            StoreKey::Remove { key } => (key, 0),
        };
        let args = [key, until_ms.to_string(), data, now_ms().to_string()];
        let cmd = evalsha(&self.scripts().mod_put, &MOD_KEYS.map(str::to_owned), &args);
        self.pipe.fire("mod_put", cmd);
    }

    fn count_action(&self, user: &UserId, action: &'static str, window_secs: u64) -> BoxFut<u64> {
        let window = now_ms() / (window_secs.max(1) * 1_000);
        let key = user_key(user.as_str(), &format!("rl:{action}:{window}"));
        let cmd = evalsha(&self.scripts().count, &[key], &[(window_secs * 1_000).to_string()]);
        let fut = self.pipe.call("count", cmd);
        Box::pin(async move { Ok(as_i64(&fut.await?).unwrap_or(0).max(0) as u64) })
    }

    fn user_connected(&self, user: &UserId) {
        let kick = ClusterEvent::Kick { user: user.to_string(), node: self.node.clone() }.to_json();
        let cmd = evalsha(
            &self.scripts().connect,
            &[user_key(user.as_str(), "node"), user_key(user.as_str(), "rooms")],
            &[self.node.clone(), kick, self.key_ttl_ms().to_string()],
        );
        self.pipe.fire("connect", cmd);
    }

    fn user_rooms(&self, user: &UserId) -> BoxFut<Vec<RoomId>> {
        let key = user_key(user.as_str(), "rooms");
        let fut = self.pipe.call("smembers", redis::cmd("SMEMBERS").arg(&key).clone());
        let pipe = self.pipe.clone();
        let user = user.to_string();
        Box::pin(async move {
            let rooms: Vec<String> = as_array(fut.await?).iter().filter_map(as_string).collect();
            let mut kept = Vec::new();
            for chunk in rooms.chunks(conn::MANY_CHUNK) {
                let cmds = chunk
                    .iter()
                    .map(|r| redis::cmd("HEXISTS").arg(room_key(r, "members")).arg(&user).clone())
                    .collect();
                let seats = pipe.call_many("hexists", cmds).await?;
                for (room, seat) in chunk.iter().zip(seats) {
                    match seat.ok().as_ref().and_then(as_i64) {
                        Some(1) => kept.push(RoomId::from(room.as_str())),
                        Some(_) => {
                            pipe.fire("srem", redis::cmd("SREM").arg(&key).arg(room).clone())
                        }
                        None => {}
                    }
                }
            }
            Ok(kept)
        })
    }

    fn room_open(&self, room: &RoomId, kind: StoredKind, members: Vec<(UserId, Arc<str>)>) {
        let r = room.as_str();
        let ttl = self.key_ttl_ms();
        let mut args = vec![kind_str(kind).to_owned(), ttl.to_string()];
        for (u, n) in &members {
            args.push(u.to_string());
            args.push(n.to_string());
            self.seat_user(u, r, ttl);
        }
        let cmd = evalsha(
            &self.scripts().room_open,
            &[room_key(r, "members"), room_key(r, "meta")],
            &args,
        );
        self.pipe.fire("room_open", cmd);
    }

    fn room_append(&self, msg: &ChatMessage) -> BoxFut<Option<u64>> {
        let fut = self.room_append_once(msg, None);
        Box::pin(async move {
            Ok(fut.await?.map(|a| match a {
                Appended::Stored(seq)
                | Appended::Duplicate { seq, .. }
                | Appended::Unconfirmed { seq, .. } => seq,
            }))
        })
    }

    fn room_append_once(
        &self,
        msg: &ChatMessage,
        client_msg_id: Option<&str>,
    ) -> BoxFut<Option<Appended>> {
        let r = msg.room_id.as_str();
        let settings = self.settings();
        // No records are kept when the room remembers no ids.
        let field = client_msg_id
            .filter(|id| !id.is_empty() && settings.dedup_max_per_room > 0)
            .map(|id| sent_field(&msg.sender, id));
        // Whether this send renews the room's records (renew.rs).
        let asked = Instant::now();
        let half = renew::half_window(settings.dedup_window_ms);
        let renew = field.is_some() && self.renewals().due(r, asked, half);
        let Some((prefix, stored)) = self.append_payloads(msg) else {
            error!(room = r, "the message event no longer splits around its seq; not sent");
            return Box::pin(async { Err(BridgeError::Unavailable("message layout".into())) });
        };
        let cmd = evalsha(
            &self.scripts().append,
            &[
                room_key(r, "seq"),
                room_key(r, "log"),
                room_key(r, "members"),
                room_key(r, "meta"),
                room_key(r, "sent"),
                room_key(r, "sentids"),
            ],
            &[
                prefix,
                stored,
                msg.sender.clone(),
                self.node.clone(),
                // "+": renew the records (append.lua); a field starts with a digit.
                match field {
                    Some(f) if renew => format!("+{f}"),
                    f => f.unwrap_or_default(),
                },
                format!("{} {}", now_ms(), msg.msg_id),
            ],
        );
        // Acknowledged only once the replicas asked for hold it (`WAIT`); may wait
        // for a busy pipe's linger, gathered with other sends.
        let fut = self.pipe.call_durable("append", cmd, Pace::Gather);
        let renewals = renew.then(|| (self.renewals.clone(), msg.room_id.clone()));
        Box::pin(async move {
            let (reply, confirmed) = fut.await?;
            if let Value::Array(original) = &reply {
                // A resend: the original's seq and msg_id.
                let seq = original.first().and_then(as_i64).unwrap_or(0).max(0) as u64;
                let msg_id = original.get(1).and_then(as_string).unwrap_or_default();
                if seq > 0 && !confirmed {
                    return Ok(Some(Appended::Unconfirmed { seq, fresh: false }));
                }
                return Ok((seq > 0).then_some(Appended::Duplicate { seq, msg_id }));
            }
            let seq = as_i64(&reply).unwrap_or(-1);
            if seq > 0 && !confirmed {
                return Ok(Some(Appended::Unconfirmed { seq: seq as u64, fresh: true }));
            }
            // Stored, so the script renewed as asked, and the replicas hold it.
            if let Some((renewals, room)) = renewals.filter(|_| seq > 0) {
                lock(&renewals).renewed(&room, asked);
            }
            Ok((seq > 0).then_some(Appended::Stored(seq as u64)))
        })
    }

    fn room_event(&self, room: &RoomId, event: RoomEv) {
        let payload = self.room_event_json(room, event);
        let cmd = evalsha(
            &self.scripts().event,
            &[room_key(room.as_str(), "members")],
            &[payload, self.node.clone()],
        );
        self.pipe.fire("event", cmd);
    }

    fn room_join(&self, room: &RoomId, user: &UserId) -> BoxFut<RoomSnapshot> {
        let r = room.as_str();
        let payload = self.member_here_json(room, user, MemberStatus::Joined);
        let ttl = self.key_ttl_ms();
        self.seat_user(user, r, ttl);
        let cmd = evalsha(
            &self.scripts().join,
            &room_keys(r),
            &[user.to_string(), self.node.clone(), payload, "public".into(), ttl.to_string()],
        );
        let fut = self.pipe.call("join", cmd);
        Box::pin(async move {
            let out = as_array(fut.await?);
            let seq = out.first().and_then(as_i64).unwrap_or(0).max(0) as u64;
            Ok(RoomSnapshot {
                kind: StoredKind::Public,
                last_seq: seq,
                members: member_pairs(out.get(1..).unwrap_or(&[])),
            })
        })
    }

    fn room_leave(
        &self,
        room: &RoomId,
        user: &UserId,
        on_node: Option<Arc<str>>,
        kind: StoredKind,
    ) -> BoxFut<bool> {
        let r = room.as_str();
        let left_node = on_node.as_deref().unwrap_or(&self.node).to_owned();
        let left = self.room_event_json(
            room,
            RoomEv::Member { user: user.to_string(), node: left_node, status: MemberStatus::Left },
        );
        let closed = self.room_event_json(room, RoomEv::Closed { reason: "partner_left".into() });
        self.pipe
            .fire("srem", redis::cmd("SREM").arg(user_key(user.as_str(), "rooms")).arg(r).clone());
        let cmd = evalsha(
            &self.scripts().leave,
            &room_keys(r),
            &[
                user.to_string(),
                on_node.map(|n| n.to_string()).unwrap_or_default(),
                left,
                closed,
                kind_str(kind).into(),
                self.key_ttl_ms().to_string(),
                self.node.clone(),
            ],
        );
        let fut = self.pipe.call("leave", cmd);
        let pipe = self.pipe.clone();
        let room = r.to_owned();
        Box::pin(async move {
            let out = as_array(fut.await?);
            // The room closed with this leave: its other seats went with it.
            unseat_users(&pipe, &room, out.get(1..).unwrap_or(&[]));
            Ok(out.first().and_then(as_i64) == Some(1))
        })
    }

    fn room_close(&self, room: &RoomId, reason: &str) {
        let r = room.as_str();
        let payload = self.room_event_json(room, RoomEv::Closed { reason: reason.to_owned() });
        let cmd = evalsha(
            &self.scripts().close,
            &room_keys(r),
            &[payload, self.node.clone(), self.key_ttl_ms().to_string()],
        );
        let fut = self.pipe.call("close", cmd);
        let pipe = self.pipe.clone();
        let room = r.to_owned();
        tokio::spawn(async move {
            if let Ok(members) = fut.await {
                unseat_users(&pipe, &room, &as_array(members));
            }
        });
    }

    fn room_rehome(&self, room: &RoomId, user: &UserId) -> BoxFut<Option<RoomSnapshot>> {
        let r = room.as_str();
        let payload = self.member_here_json(room, user, MemberStatus::Online);
        let cmd = evalsha(
            &self.scripts().rehome,
            &room_keys(r),
            &[user.to_string(), self.node.clone(), payload, self.key_ttl_ms().to_string()],
        );
        let fut = self.pipe.call("rehome", cmd);
        let snapshot = move |out: Vec<Value>, this_kind: fn(&str) -> StoredKind| {
            if out.len() < 2 {
                return None;
            }
            let seq = as_i64(&out[0]).unwrap_or(0).max(0) as u64;
            let kind = this_kind(&as_string(&out[1]).unwrap_or_default());
            Some(RoomSnapshot { kind, last_seq: seq, members: member_pairs(&out[2..]) })
        };
        Box::pin(async move {
            let out = as_array(fut.await?);
            Ok(snapshot(
                out,
                |k| if k == "public" { StoredKind::Public } else { StoredKind::Match },
            ))
        })
    }

    fn room_history(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<Vec<ChatMessage>> {
        let r = room.to_string();
        let cmd = redis::cmd("XRANGE")
            .arg(room_key(&r, "log"))
            .arg(format!("{}-0", after_seq + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .clone();
        let fut = self.pipe.call("xrange", cmd);
        Box::pin(async move { Ok(log_messages(&r, fut.await?)) })
    }

    fn room_history_page(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<HistoryPage> {
        let r = room.to_string();
        let log = room_key(&r, "log");
        // One round trip, page first: a trim between the reads can only make the
        // oldest entry read after it newer, never hide a gap (see below).
        let cmds = vec![
            redis::cmd("XRANGE")
                .arg(&log)
                .arg(format!("{}-0", after_seq + 1))
                .arg("+")
                .arg("COUNT")
                .arg(limit.max(1))
                .clone(),
            redis::cmd("XRANGE").arg(&log).arg("-").arg("+").arg("COUNT").arg(1).clone(),
            redis::cmd("GET").arg(room_key(&r, "seq")).clone(),
        ];
        let fut = self.pipe.call_many("history_page", cmds);
        Box::pin(async move {
            let mut replies = fut.await?.into_iter();
            let mut next = || replies.next().unwrap_or(Ok(Value::Nil));
            let messages = log_messages(&r, next()?);
            let oldest = log_messages(&r, next()?).first().map(|m| m.seq);
            let seq_reply = next()?;
            let stored_seq = as_i64(&seq_reply).unwrap_or(0).max(0) as u64;
            let last_seq = stored_seq.max(messages.last().map_or(0, |m| m.seq));
            // The page's first message was the oldest at or after `after_seq + 1`
            // when it was read, so it bounds the oldest stored then.
            let first_seq = match (messages.first(), oldest) {
                (Some(m), Some(o)) => m.seq.min(o),
                (Some(m), None) => m.seq,
                (None, Some(o)) => o,
                (None, None) => last_seq + 1,
            };
            Ok(HistoryPage { messages, first_seq, last_seq })
        })
    }

    fn room_reseed(&self, room: &RoomId, seed: RoomSeed) -> BoxFut<(u64, Seats)> {
        let r = room.as_str();
        let ttl = self.key_ttl_ms();
        let mut args = vec![
            kind_str(seed.kind).to_owned(),
            seed.last_seq.to_string(),
            STREAM_CAP.to_string(),
            self.history_bytes().to_string(),
            ttl.to_string(),
            seed.members.len().to_string(),
        ];
        for (u, n) in &seed.members {
            args.push(u.to_string());
            args.push(n.to_string());
            if **n == *self.node {
                // The user's membership key may have expired meanwhile (a long
                // cut-off): their seat here is the truth.
                self.seat_user(u, r, ttl);
            }
        }
        for m in &seed.messages {
            args.push(m.seq.to_string());
            let stored = StoredMsg {
                msg_id: m.msg_id.clone(),
                sender: m.sender.clone(),
                text: m.text.clone(),
                ts: m.ts,
            };
            args.push(serde_json::to_string(&stored).unwrap_or_default());
        }
        let cmd = evalsha(&self.scripts().reseed, &room_keys(r), &args);
        let fut = self.pipe.call("reseed", cmd);
        Box::pin(async move {
            let out = as_array(fut.await?);
            let seq = out.first().and_then(as_i64).unwrap_or(0).max(0) as u64;
            Ok((seq, member_pairs(out.get(1..).unwrap_or(&[]))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_seq_mark_is_found_even_when_names_and_text_imitate_it() {
        // No server is needed: connecting happens in the background.
        let bridge =
            RedisBridge::connect("redis://127.0.0.1:1", "n1", PipePolicy::default()).expect("url");
        let fake = "\"message\",\"seq\":18446744073709551615";
        let msg = ChatMessage {
            room_id: format!("pub:{fake}"),
            seq: 0,
            msg_id: "m1".into(),
            sender: "u".into(),
            text: fake.into(),
            ts: 5,
        };
        let (event, stored) = assembled(&bridge, &msg, 42);
        match event {
            ClusterEvent::Room { room, ev: RoomEv::Message { seq, text, .. }, .. } => {
                assert_eq!((room.as_str(), seq, text.as_str()), (msg.room_id.as_str(), 42, fake));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stored.text, fake);
    }

    /// What append.lua publishes and stores for `msg` at `seq`, from the two
    /// arguments the node gives it, assembled the way the script does; the
    /// published text must be exactly the event the node would have written.
    fn assembled(bridge: &RedisBridge, msg: &ChatMessage, seq: u64) -> (ClusterEvent, StoredMsg) {
        let (prefix, stored) = bridge.append_payloads(msg).expect("the event splits at its seq");
        let published = format!("{prefix}{seq},{}}}", &stored[1..]);
        let direct = ClusterEvent::Room {
            room: msg.room_id.clone(),
            origin: bridge.node.clone(),
            ev: RoomEv::Message {
                seq,
                msg_id: msg.msg_id.clone(),
                sender: msg.sender.clone(),
                text: msg.text.clone(),
                ts: msg.ts,
            },
        };
        assert_eq!(published, direct.to_json());
        // Byte for byte what the stream held before (and nodes of the previous
        // version still store): the message serialized on its own.
        let own = StoredMsg {
            msg_id: msg.msg_id.clone(),
            sender: msg.sender.clone(),
            text: msg.text.clone(),
            ts: msg.ts,
        };
        assert_eq!(stored, serde_json::to_string(&own).expect("serializes"));
        let event = serde_json::from_str(&published).expect("valid JSON");
        (event, serde_json::from_str(&stored).expect("the stored JSON reads back"))
    }

    #[tokio::test]
    async fn the_stored_json_is_the_rest_of_the_event_whatever_the_text() {
        let bridge =
            RedisBridge::connect("redis://127.0.0.1:1", "n1", PipePolicy::default()).expect("url");
        for text in ["", "}", "{\"a\":1}", "quote \" backslash \\ brace }}", "é 🎉 \n\t", ","] {
            let msg = ChatMessage {
                room_id: "room-1".into(),
                seq: 0,
                msg_id: "m-7".into(),
                sender: "ann".into(),
                text: text.into(),
                ts: 1_796_321_086_987,
            };
            let (_, stored) = assembled(&bridge, &msg, 9);
            let back = (stored.msg_id, stored.sender, stored.text, stored.ts);
            assert_eq!(back, (msg.msg_id, msg.sender, msg.text, msg.ts));
        }
    }
}
