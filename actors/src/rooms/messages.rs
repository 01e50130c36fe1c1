//! Inboxes of the room supervisor and of room actors. Replies to clients go straight
//! to the requesting session's [`Outbox`], so senders never wait on a room.

use std::sync::Arc;

use actix::{Message, Recipient};
use serde_json::Value;

use crate::bridge::events::RoomEv;
use crate::bridge::Ticket;
use crate::budget::Budget;
use crate::ids::{Interest, RoomId, UserId};
use crate::outbox::Outbox;
use crate::session::messages::SessionEvent;

// ---- RoomSupervisor ----

/// One member of a claimed match.
#[derive(Debug, Clone)]
pub struct MatchedMember {
    pub user: UserId,
    pub session_id: u64,
    pub ticket: Ticket,
    pub events: Recipient<SessionEvent>,
}

/// MatchShard → RoomSupervisor: open a room for a claimed match and tell every member.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CreateMatchRoom {
    pub room_id: RoomId,
    /// Members on this node.
    pub members: Vec<MatchedMember>,
    /// Members on other nodes (cross-node match), with their node.
    pub remote: Vec<(UserId, Arc<str>)>,
    pub shared: Vec<Interest>,
    /// For a cross-node match: whom to tell that the room exists.
    pub confirm: Option<OfferConfirmation>,
}

/// The offer a cross-node match room settles, and the member nodes to confirm to.
#[derive(Debug)]
pub struct OfferConfirmation {
    pub creator: Arc<str>,
    pub offer: u64,
    pub language: String,
    pub nodes: Vec<Arc<str>>,
}

/// Session (or a closing room, bouncing a late join) → RoomSupervisor: join the named
/// public room, creating it if needed. The room answers `joined` to `outbox`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct JoinPublicRoom {
    pub room_id: RoomId,
    pub user: UserId,
    pub session_id: u64,
    pub outbox: Outbox,
    /// The joiner's byte budget, charged for the members told of the join.
    pub budget: Budget,
}

// ---- RoomActor ----

/// Session → Room: store a chat message, `ack` the sender, fan out `message`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PostMessage {
    pub user: UserId,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub reply: Outbox,
}

/// What a [`RelayEvent`] carries.
#[derive(Debug, Clone)]
pub enum Relay {
    Typing { active: bool },
    Read { seq: u64 },
    Signal { payload: Value, to: Option<UserId> },
}

/// Session → Room: relay typing, read receipts and signaling to other members.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayEvent {
    pub user: UserId,
    pub event: Relay,
    pub reply: Outbox,
    /// The sender's byte budget; the session charged one recipient, the room
    /// charges the rest of the fan-out.
    pub budget: Budget,
}

/// Session → Room: send `history` after `after_seq`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FetchHistory {
    pub user: UserId,
    pub after_seq: u64,
    pub limit: usize,
    pub reply: Outbox,
    /// The requester's byte budget, charged the bytes of the page returned.
    pub budget: Budget,
}

/// Session (welcome) → Room: the room as `welcome.room_details` reports it; `None`
/// when the room closed meanwhile.
#[derive(Debug, Message)]
#[rtype(result = "Option<rendezvous_protocol::RoomDetail>")]
pub struct DescribeRoom;

/// RoomSupervisor → Room: add a member to a public room.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct JoinRoom {
    pub join: JoinPublicRoom,
}

/// Why a member leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// `leave` action: the leaver gets `left`.
    Leave,
    /// `next`: the session already told the client; partners are skipped for a while.
    Next,
    /// The reconnect grace period ran out.
    Gone,
}

/// Session → Room: remove a member.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    pub user: UserId,
    pub reason: LeaveReason,
    pub reply: Outbox,
    /// The leaver's byte budget, charged for the members told.
    pub budget: Budget,
}

/// Session → Room: the user is connected again (new session); deliver to `outbox`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MemberOnline {
    pub user: UserId,
    pub session_id: u64,
    pub outbox: Outbox,
    /// The `last_seq` the session's `welcome` reported for this room: the room
    /// sends the new outbox every held message after it first.
    pub replay_after: Option<u64>,
}

/// Session → Room: the user's session `session_id` ended; keep the seat for the grace.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MemberOffline {
    pub user: UserId,
    pub session_id: u64,
}

/// Session (report) → Room: the room's last `limit` messages, when both users hold
/// a seat in it; `None` otherwise.
#[derive(Debug, Message)]
#[rtype(result = "Option<Vec<rendezvous_protocol::ChatMessage>>")]
pub struct Evidence {
    pub reporter: UserId,
    pub reported: UserId,
    pub limit: usize,
}

/// Session (block) → Room: close the room for everyone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseRoom {
    pub reason: &'static str,
    /// Close only if this user holds a seat (on any node): a block closes the
    /// rooms the two share, and only the room knows its members on other nodes.
    pub with: Option<UserId>,
}

/// Bridge → Room: an event from another node (or, for messages, from the store in
/// `seq` order, including this node's own).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RoomInbound {
    pub origin: Arc<str>,
    pub ev: RoomEv,
}

/// Bridge → Room: `node` is gone; its members are offline (and leave after the grace).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct NodeLost {
    pub node: Arc<str>,
}

/// Bridge → Room: the connection to the store is back; restore what it lacks and
/// fetch what this node missed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ResyncRoom;

/// A match settled on another node (this node holds some of its members): the
/// supervisor announces it to them, the one path that writes `match_found`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MatchSettled {
    pub room_id: RoomId,
    /// This node's members, with the sessions that searched.
    pub members: Vec<MatchedMember>,
    /// Every member of the room with its node: `match_found` names them, and the
    /// room's replica here seats them.
    pub all: Vec<(UserId, Arc<str>)>,
    pub shared: Vec<Interest>,
}

/// Redis Cluster: this node now receives the room's channel; the store's seq was
/// `store_seq` just after. The replica fetches what it missed before.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomSubscribed {
    pub store_seq: u64,
}
