//! Inbox of a [`super::MatchShard`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Message, Recipient};

use super::pool::Criteria;
use crate::bridge::events::OfferMember;
use crate::bridge::{SearchAd, Ticket};
use crate::ids::UserId;
use crate::session::messages::SessionEvent;

/// How a shard reaches the searcher.
#[derive(Debug, Clone)]
pub struct SearchLink {
    pub session_id: u64,
    pub events: Recipient<SessionEvent>,
}

/// Who a pool entry belongs to: a session on this node, or a replica of a search
/// waiting on another node (that node's ticket, so claims and offers can name it).
#[derive(Debug, Clone)]
pub enum Link {
    Local(SearchLink),
    Remote { node: Arc<str>, ticket: Ticket },
}

impl Link {
    /// Whether the searcher can still be told about a match. Remote searches count
    /// as alive: their own node answers for them when offered.
    pub fn alive(&self) -> bool {
        match self {
            Link::Local(l) => l.events.connected(),
            Link::Remote { .. } => true,
        }
    }
}

/// Session → MatchShard: enter the pool. No reply: the outcome arrives later as a
/// [`SessionEvent`] (`Matched` or `SearchExpired`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EnqueueSearch {
    pub ticket: Ticket,
    pub user: UserId,
    pub criteria: Criteria,
    pub joined: Instant,
    pub max_wait: Duration,
    pub link: SearchLink,
}

/// Why a search is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Cancelled,
    Disconnected,
}

/// Session → MatchShard: leave the pool. Reply: whether it was still waiting.
#[derive(Debug, Message)]
#[rtype(result = "CancelOutcome")]
pub struct CancelSearch {
    pub user: UserId,
    pub ticket: Ticket,
    pub reason: CancelReason,
}

/// Reply to [`CancelSearch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, actix::MessageResponse)]
pub enum CancelOutcome {
    /// Removed from the pool; no outcome will follow.
    Cancelled,
    /// Not waiting any more: a match (or expiry) is already on its way; or, if the
    /// pending match falls through, `SessionEvent::SearchCancelled`.
    NotWaiting,
}

/// Bridge → MatchShard: a search on another node, to replicate.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AddRemoteSearch {
    pub ad: SearchAd,
}

/// Bridge → MatchShard: searches on `node` left the pool.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoveRemoteSearches {
    pub node: Arc<str>,
    pub tickets: Vec<Ticket>,
}

/// Bridge → MatchShard: forget every replica of `node` (it died or left), or of
/// every node (`None`: the store was lost and replicas will be reloaded).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DropRemoteSearches {
    pub node: Option<Arc<str>>,
}

/// Bridge → MatchShard: re-announce every local search (after a reconnect).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RepublishSearches;

/// Bridge → MatchShard (member node): the creator claimed these local searches.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OfferReceived {
    pub creator: Arc<str>,
    pub offer: u64,
    pub language: String,
    pub members: Vec<OfferMember>,
}

/// Bridge → MatchShard (creator): a member node's answer to an offer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OfferAnswered {
    pub from: Arc<str>,
    pub offer: u64,
    pub ok: bool,
    pub gone: Vec<UserId>,
}

/// Bridge → MatchShard (member node): the offer's room exists (`Some`), or the match
/// fell through (`None`) and the held searches go back to the pool.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OfferSettled {
    pub creator: Arc<str>,
    pub offer: u64,
    pub room: Option<(crate::ids::RoomId, Vec<UserId>, Vec<crate::ids::Interest>)>,
}

/// Housekeeping → any actor: answered at once; the round trip measures how long
/// a message waits in the actor's mailbox.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Probe;
