//! The bridge between nodes: the facts that must agree across every node of a
//! cluster, behind one trait so that sessions, pools and rooms never know whether
//! they run alone or in a cluster.
//!
//! * [`memory::MemoryBridge`]: the embedded single-node default. Every fact lives in
//!   this process; rooms keep their own `seq` and history.
//! * [`redis::RedisBridge`]: several nodes as one through Redis. Claims are one Lua
//!   script, pools are replicated over pub/sub, rooms take `seq` from Redis and keep
//!   history in a capped stream.
//!
//! Guarantees every implementation must give (the contract the tests check):
//! * **One search per user.** [`Bridge::begin_search`] makes the ad's ticket the
//!   user's only valid search; any earlier ticket of that user stops being claimable.
//! * **At most one match per search.** [`Bridge::claim_match`] succeeds only if every
//!   member's ticket is still their valid search, and then ends all of them in one
//!   atomic step. Two claims that share a ticket can never both succeed, on any node.
//! * **Order.** Calls made from one thread reach the shared store in the order they
//!   were made (a `begin_search` before the `claim_match` that names its ticket).
//! * **Trending** counts each interest once per successful match.
//!
//! The room methods (`room_*`) are only called when [`Bridge::clustered`] is true;
//! the in-process bridge keeps their defaults, which refuse.
//!
//! A bridge imports nothing above the leaf modules: what it hears from other nodes
//! it hands up through a [`ClusterSink`] it is given once the engine runs
//! ([`Bridge::attach`]), and holds that sink weakly, so the bridge never keeps the
//! engine alive. `tests/bridge_contract.rs` runs one suite against both bridges.

pub mod events;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use actix::ArbiterHandle;
use rendezvous_protocol::ChatMessage;
use serde::{Deserialize, Serialize};

pub use self::events::{ClusterEvent, RoomEv};
use crate::config::EngineConfig;
use crate::ids::{Interest, RoomId, UserId};

/// Where a bridge hands up what it hears: the engine's inbound router implements it
/// (`crate::inbound`). Every method runs on the bridge's task, so an implementation
/// only routes (`do_send`, map look-ups) and never waits.
pub trait ClusterSink: Send + Sync + 'static {
    /// One event from another node (or one a node sent to itself).
    fn deliver(&self, event: ClusterEvent);
    /// `node` stopped beating: forget its searches, start the grace of its members.
    fn node_lost(&self, node: &str);
    /// The store is reachable again after a (re)connect: drop every replica of other
    /// nodes' searches (the bridge reloads them) and announce every local one again.
    fn reconnected(&self);
    /// After a reconnect: every room this node holds restores what the store lacks
    /// and catches up on what it missed.
    fn resync_rooms(&self);
    /// What this node holds, so the bridge can keep its keys in the store alive.
    fn held(&self) -> Held;
    /// Redis Cluster: the bridge (re)subscribed to `room`'s channel and the
    /// store's seq of the room is `store_seq`; the replica fetches what it
    /// missed before (what was published while it was not subscribed).
    fn room_subscribed(&self, _room: &RoomId, _store_seq: u64) {}
}

/// What a node holds, as [`ClusterSink::held`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Rooms this node holds (its own or a replica).
    pub rooms: Vec<RoomId>,
    /// Users with a live session on this node.
    pub sessions: Vec<UserId>,
    /// Users with a seat in a room on this node (possibly offline, in their grace).
    pub seated: Vec<UserId>,
}

/// The engine's settings a bridge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeSettings {
    /// How long a member who went offline keeps their seat.
    pub reconnect_grace_ms: u64,
    /// How long past the grace a user's and a room's keys live without a refresh.
    pub key_margin_ms: u64,
    /// Byte cap of a room's stored history.
    pub history_bytes: usize,
    /// How long the store remembers a `client_msg_id` for duplicate sends.
    pub dedup_window_ms: u64,
    /// Most `client_msg_id`s remembered per room.
    pub dedup_max_per_room: usize,
}

impl From<&EngineConfig> for BridgeSettings {
    fn from(c: &EngineConfig) -> Self {
        Self {
            reconnect_grace_ms: c.reconnect_grace_ms,
            key_margin_ms: c.cluster_key_margin_ms,
            history_bytes: c.history_bytes,
            dedup_window_ms: c.dedup_window_ms,
            dedup_max_per_room: c.dedup_max_per_room,
        }
    }
}

impl Default for BridgeSettings {
    fn default() -> Self {
        Self::from(&EngineConfig::default())
    }
}

/// What the engine hands a bridge once it runs ([`Bridge::attach`]).
pub struct Attachment {
    /// Where inbound events go. Weak: the engine owns its router, the bridge only
    /// reaches it while the engine lives (no `Arc` cycle through `Shared`).
    pub sink: Weak<dyn ClusterSink>,
    /// Where the bridge runs its tasks: the engine's first worker, beside sessions,
    /// rooms and shards, so a message crosses no thread between an actor and the
    /// store's socket.
    pub worker: ArbiterHandle,
    pub settings: BridgeSettings,
}

/// A search ticket: unique per node and increasing with arrival time, so ordering by
/// ticket is ordering by wait ("ties go to the longest wait").
pub type Ticket = u64;

/// Boxed future returned by bridge calls, so actors can `into_actor` it.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BridgeError>> + Send + 'static>>;

/// Why a bridge call failed. Every variant is recoverable: the engine keeps serving
/// local users and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    /// The shared store cannot be reached now.
    #[error("bridge unavailable: {0}")]
    Unavailable(String),
    /// Redis Cluster answered that the key is served elsewhere. Only the Redis
    /// bridge's router sees it (it follows the redirect); callers get
    /// `Unavailable` if it cannot.
    #[error("redis cluster redirect: {0:?}")]
    Redirected(self::redis::cluster::Redirect),
}

fn refused<T: Send + 'static>() -> BoxFut<T> {
    Box::pin(async { Err(BridgeError::Unavailable("not clustered".into())) })
}

/// Result of [`Bridge::claim_match`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Every member's search ended in this match.
    Claimed,
    /// These members' tickets were no longer valid; nothing was changed.
    Lost(Vec<UserId>),
}

/// How a cross-node offer ended, as recorded once for every node that asks
/// ([`Bridge::decide_offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferOutcome {
    /// The creator opened this room: every member with its node, and the interests
    /// they share.
    Opened { room: RoomId, members: Vec<(UserId, Arc<str>)>, shared: Vec<Interest> },
    /// Nobody was matched: every held search goes back to its pool.
    Aborted,
}

/// [`OfferOutcome::Opened`] as stored.
#[derive(Serialize, Deserialize)]
struct StoredOpened {
    room: String,
    members: Vec<(String, String)>,
    shared: Vec<String>,
}

/// What [`OfferOutcome::Aborted`] is stored as (an opened outcome is a JSON object).
const ABORTED: &str = "aborted";

impl OfferOutcome {
    /// The stored form: `aborted`, or the opened room as JSON.
    pub fn encode(&self) -> String {
        match self {
            OfferOutcome::Aborted => ABORTED.to_owned(),
            OfferOutcome::Opened { room, members, shared } => {
                let stored = StoredOpened {
                    room: room.to_string(),
                    members: members.iter().map(|(u, n)| (u.to_string(), n.to_string())).collect(),
                    shared: shared.iter().map(|i| i.to_string()).collect(),
                };
                serde_json::to_string(&stored).unwrap_or_else(|_| ABORTED.to_owned())
            }
        }
    }

    /// Read a stored outcome back; `None` for anything [`Self::encode`] never wrote.
    pub fn decode(stored: &str) -> Option<Self> {
        if stored == ABORTED {
            return Some(OfferOutcome::Aborted);
        }
        let s: StoredOpened = serde_json::from_str(stored).ok()?;
        Some(OfferOutcome::Opened {
            room: RoomId::from(s.room),
            members: s.members.into_iter().map(|(u, n)| (UserId::from(u), Arc::from(n))).collect(),
            shared: s.shared.into_iter().map(Interest::from).collect(),
        })
    }
}

/// A search as every node sees it: what the origin node publishes when it starts,
/// and what other nodes keep a replica of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchAd {
    /// Node the searcher is connected to.
    pub node: String,
    /// The origin node's ticket.
    pub ticket: Ticket,
    pub user: String,
    pub language: String,
    pub interests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub group_size: u8,
    /// Wall-clock start of the wait (ms since the epoch): the ladder runs on it.
    pub joined_ms: u64,
    /// Wall-clock end of the wait.
    pub deadline_ms: u64,
}

/// One member of a claim: the user, the node that holds their search (`None` =
/// this node) and that node's ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMember {
    pub user: UserId,
    pub node: Option<Arc<str>>,
    pub ticket: Ticket,
}

/// Members of a room and the node each is connected to.
pub type Seats = Vec<(UserId, Arc<str>)>;

/// Kind of a room, as stored in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    Match,
    Public,
}

/// A room as the cluster stores it: enough for a node to open a replica.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub kind: StoredKind,
    pub last_seq: u64,
    /// Members and the node each is connected to.
    pub members: Seats,
}

/// What [`Bridge::room_append_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored with this seq.
    Stored(u64),
    /// A resend of a message already stored as `seq` / `msg_id`; not stored again.
    Duplicate { seq: u64, msg_id: String },
    /// Stored (`fresh`: now, as `seq`; else earlier, and this was a resend), but
    /// fewer replicas than required confirmed it in time: a failover could still
    /// lose it, so it must not be acknowledged. The sender is told to resend (with
    /// the same `client_msg_id`, which finds it stored and waits again).
    Unconfirmed { seq: u64, fresh: bool },
}

/// A page of a room's stored history, with what the store still holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Stored messages with `seq > after_seq`, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The oldest seq still stored (`last_seq + 1` when none is).
    pub first_seq: u64,
    /// The room's newest seq.
    pub last_seq: u64,
}

/// What a node sends to re-create a room that the store lost (Redis restarted
/// empty) or that moved on without it (degraded while the store was down).
#[derive(Debug, Clone)]
pub struct RoomSeed {
    pub kind: StoredKind,
    pub members: Seats,
    pub last_seq: u64,
    /// Newest messages this node holds, oldest first.
    pub messages: Vec<ChatMessage>,
}

/// The cross-node facts. Methods take owned arguments and return `'static` futures so
/// an actor can spawn them into its context.
pub trait Bridge: Send + Sync + 'static {
    /// Name of this node.
    fn node_id(&self) -> &str;
    /// Hand the bridge its sink and start its background work (connections,
    /// subscriber, heartbeat). Nothing is received before; called once.
    fn attach(self: Arc<Self>, attachment: Attachment);
    /// True when other nodes exist (rooms are then replicated through the bridge).
    fn clustered(&self) -> bool {
        false
    }
    /// Make the ad's ticket the user's one valid search, superseding any other, and
    /// show it to every node.
    fn begin_search(&self, ad: SearchAd);
    /// End the user's search if `ticket` is still the valid one (cancel, timeout).
    fn end_search(&self, user: &UserId, ticket: Ticket, language: &str);
    /// Atomically end every member's search if all are still valid.
    fn claim_match(&self, language: &str, members: Vec<ClaimMember>) -> BoxFut<ClaimOutcome>;
    /// Count the shared interests of a successful match.
    fn record_match(&self, interests: Vec<Interest>);
    /// Most counted interests, highest first.
    fn trending(&self, limit: usize) -> BoxFut<Vec<(String, u64)>>;
    /// Live nodes in the cluster (1 for the embedded bridge).
    fn nodes(&self) -> BoxFut<usize>;
    /// Ok when the shared store is reachable; drives `/readyz`.
    fn health(&self) -> BoxFut<()>;
    /// False while the store cannot take a room's messages in order: it is down,
    /// or this node reconnected and has not yet re-seeded its rooms (a message
    /// stored before the re-seed could take a `seq` the members were already given).
    /// A room with members on other nodes refuses `send` meanwhile.
    fn writable(&self) -> bool {
        true
    }

    /// Leave the cluster (drain): tell the peers, withdraw this node's searches, and
    /// resolve once everything queued before has reached the store.
    fn shutdown(&self) -> BoxFut<()> {
        Box::pin(async { Ok(()) })
    }
    /// Send one event to one node (two-phase cross-node matches).
    fn send_to_node(&self, _node: &str, _event: ClusterEvent) {}
    /// Record how offer `offer` of `creator`'s pool `pool` ends, unless an outcome
    /// is recorded already, and answer the recorded one: the first proposal wins,
    /// and every node that asks later gets the same answer. The creator proposes the
    /// room it is about to open; a member node that never heard the end proposes
    /// `Aborted`. An error means the answer is unknown (ask again). With no other
    /// node there is nobody to disagree with: the proposal is the outcome.
    fn decide_offer(
        &self,
        _creator: &str,
        _pool: &str,
        _offer: u64,
        proposal: OfferOutcome,
    ) -> BoxFut<OfferOutcome> {
        Box::pin(async move { Ok(proposal) })
    }
    /// A replica of `room` opened (`on`) or stopped here: on Redis Cluster the
    /// bridge subscribes to the room's shard channel while one is open.
    fn watch_room(&self, _room: &RoomId, _on: bool) {}
    /// Send one event to every other node.
    fn broadcast(&self, _event: ClusterEvent) {}
    /// Count one use of `action` by `user` in a window of `window_secs` across the
    /// cluster; Ok(n) is the count so far in this window.
    fn count_action(
        &self,
        _user: &UserId,
        _action: &'static str,
        _window_secs: u64,
    ) -> BoxFut<u64> {
        refused()
    }
    /// The user connects to this node: their session elsewhere is closed (4009).
    fn user_connected(&self, _user: &UserId) {}
    /// Rooms the user holds a seat in, anywhere in the cluster.
    fn user_rooms(&self, _user: &UserId) -> BoxFut<Vec<RoomId>> {
        refused()
    }

    /// Create a room with its members (a claimed match).
    fn room_open(&self, _room: &RoomId, _kind: StoredKind, _members: Seats) {}
    /// Store a message and send it to every other member node; this node delivers
    /// it itself with the returned seq. `Ok(None)`: the sender is not a member.
    /// The message's `seq` is ignored; the stored one is returned.
    fn room_append(&self, _msg: &ChatMessage) -> BoxFut<Option<u64>> {
        refused()
    }
    /// [`Bridge::room_append`] that stores a `send` once: when `client_msg_id` is
    /// given and the same sender stored a message with it within the dedup window
    /// ([`BridgeSettings::dedup_window_ms`]), nothing is stored and the original's
    /// seq and msg_id come back as [`Appended::Duplicate`]. Checked and recorded
    /// in the same atomic step as the append, so two resends racing on two nodes
    /// store one message.
    fn room_append_once(
        &self,
        _msg: &ChatMessage,
        _client_msg_id: Option<&str>,
    ) -> BoxFut<Option<Appended>> {
        refused()
    }
    /// Send an event to the other nodes that hold members of the room.
    fn room_event(&self, _room: &RoomId, _event: RoomEv) {}
    /// Seat `user` (on this node) in a public room; the room as it is after.
    fn room_join(&self, _room: &RoomId, _user: &UserId) -> BoxFut<RoomSnapshot> {
        refused()
    }
    /// Remove `user` (only if still on `on_node`, when given); tells the others.
    /// True when this call removed them.
    fn room_leave(
        &self,
        _room: &RoomId,
        _user: &UserId,
        _on_node: Option<Arc<str>>,
        _kind: StoredKind,
    ) -> BoxFut<bool> {
        refused()
    }
    /// Close the room for everyone.
    fn room_close(&self, _room: &RoomId, _reason: &str) {}
    /// The user's seat moves to this node (reconnect); the room as it is after.
    fn room_rehome(&self, _room: &RoomId, _user: &UserId) -> BoxFut<Option<RoomSnapshot>> {
        refused()
    }
    /// Stored messages with `seq > after_seq`, oldest first.
    fn room_history(
        &self,
        _room: &RoomId,
        _after_seq: u64,
        _limit: usize,
    ) -> BoxFut<Vec<ChatMessage>> {
        refused()
    }
    /// Store (or remove) one lasting moderation record under `key` (see
    /// [`crate::moderation::StoreKey`]); `data` is the event's JSON. The Redis
    /// bridge keeps it with a TTL and replays every stored record to a node on each
    /// (re)connect as [`ClusterEvent::Moderation`]. Single node: nothing (the state
    /// file keeps the record).
    fn moderation_store(&self, _key: crate::moderation::StoreKey, _data: String) {}
    /// Like [`Bridge::room_history`], with what the store still holds: the oldest
    /// stored seq (`last_seq + 1` when none) and the room's last seq. When the
    /// page starts past `after_seq + 1`, `first_seq` says so (a trimmed gap).
    fn room_history_page(
        &self,
        _room: &RoomId,
        _after_seq: u64,
        _limit: usize,
    ) -> BoxFut<HistoryPage> {
        refused()
    }
    /// Restore what the store lacks of a room this node holds (after a reconnect).
    /// Returns the store's `seq` before the call and the members as stored after.
    fn room_reseed(&self, _room: &RoomId, _seed: RoomSeed) -> BoxFut<(u64, Seats)> {
        refused()
    }
}
