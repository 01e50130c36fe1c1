//! What nodes tell each other, as JSON on Redis pub/sub. Two kinds of channel:
//! `rdv:cluster` (every node: pool replication, node lifecycle) and
//! `rdv:node:{id}` (one node: match offers, room events for its members, kicks).
//! Unknown event kinds are ignored, so a newer node can talk to an older one.

use serde::{Deserialize, Serialize};

use super::{SearchAd, Ticket};

/// One member of a cross-node match offer, on the node that receives the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferMember {
    pub user: String,
    /// That node's own ticket for the user's search.
    pub ticket: Ticket,
}

/// One event between nodes. `origin` is the node that sent it; a node ignores its
/// own broadcasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A search started (or came back after a failed match) on `ad.node`.
    PoolAdd { ad: SearchAd },
    /// Searches left the pool (cancelled, expired, claimed).
    PoolRemove { node: String, language: String, tickets: Vec<Ticket> },
    /// A node is leaving (drain); its users are gone.
    NodeBye { node: String },
    /// Keep two users apart (a `next` skip or a `block`) for `ttl_ms`.
    Avoid { a: String, b: String, ttl_ms: u64 },
    /// Pub/sub liveness probe a node sends to its own channel.
    Beat { node: String, at_ms: u64 },
    /// Creator → member node: these searches were claimed for a match; hold them.
    Offer { creator: String, offer: u64, language: String, members: Vec<OfferMember> },
    /// Member node → creator: held (`ok`) or not (`gone` could not be found).
    OfferReply { from: String, offer: u64, language: String, ok: bool, gone: Vec<String> },
    /// Creator → member node: the room exists; tell the held members.
    OfferConfirm {
        creator: String,
        offer: u64,
        language: String,
        room: String,
        /// Every member and their node.
        members: Vec<(String, String)>,
        shared: Vec<String>,
    },
    /// Creator → member node: the match fell through; put the held searches back.
    OfferAbort { creator: String, offer: u64, language: String },
    /// Close the user's session on this node: they connected to `node`.
    Kick { user: String, node: String },
    /// Something happened in a room that has members on this node.
    Room { room: String, origin: String, ev: RoomEv },
    /// A ban, unban, lasting block, report, kick or room close (every node applies
    /// it; a node that (re)connects also gets every stored one).
    /// `origin` is the node that made the change (`""`: replayed from the store).
    Moderation { origin: String, ev: crate::moderation::ModEvent },
}

/// Room events carried by [`ClusterEvent::Room`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum RoomEv {
    /// A stored chat message (published by the append script, in `seq` order).
    Message {
        seq: u64,
        msg_id: String,
        sender: String,
        text: String,
        ts: u64,
    },
    Typing {
        user: String,
        active: bool,
    },
    Read {
        user: String,
        seq: u64,
    },
    Signal {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        payload: serde_json::Value,
    },
    /// A member joined, came online (possibly on another node), went offline, left.
    Member {
        user: String,
        node: String,
        status: MemberStatus,
    },
    Closed {
        reason: String,
    },
}

/// What happened to a member, in [`RoomEv::Member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Joined,
    Online,
    Offline,
    Left,
}

/// `ClusterEvent::kind`: each variant's wire tag, written once per variant.
macro_rules! event_kinds {
    ($($variant:ident = $tag:literal),+ $(,)?) => {
        impl ClusterEvent {
            /// Every variant's wire tag (the metrics export each at zero).
            pub const KINDS: &'static [&'static str] = &[$($tag),+];

            /// The event's wire tag (`t`), for metric labels.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(ClusterEvent::$variant { .. } => $tag,)+
                }
            }
        }
    };
}

event_kinds!(
    PoolAdd = "pool_add",
    PoolRemove = "pool_remove",
    NodeBye = "node_bye",
    Avoid = "avoid",
    Beat = "beat",
    Offer = "offer",
    OfferReply = "offer_reply",
    OfferConfirm = "offer_confirm",
    OfferAbort = "offer_abort",
    Kick = "kick",
    Room = "room",
    Moderation = "moderation",
);

impl ClusterEvent {
    pub fn to_json(&self) -> String {
        // unwrap-free: these types always serialize (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_unknown_kinds_fail_cleanly() {
        let ev = ClusterEvent::Room {
            room: "r1".into(),
            origin: "a".into(),
            ev: RoomEv::Message {
                seq: 3,
                msg_id: "m".into(),
                sender: "u".into(),
                text: "hi \"there\"".into(),
                ts: 9,
            },
        };
        let json = ev.to_json();
        let back: ClusterEvent = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, ev);
        assert!(json.starts_with(&format!("{{\"t\":\"{}\"", ev.kind())), "{json}");
        assert!(serde_json::from_str::<ClusterEvent>(r#"{"t":"from_the_future"}"#).is_err());
    }
}
