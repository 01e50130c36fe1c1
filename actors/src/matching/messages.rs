//! Inbox of a [`super::MatchShard`].

use std::time::{Duration, Instant};

use actix::{Message, Recipient};

use super::pool::Criteria;
use crate::bridge::Ticket;
use crate::ids::UserId;
use crate::session::messages::SessionEvent;

/// How a shard reaches the searcher.
#[derive(Debug, Clone)]
pub struct SearchLink {
    pub session_id: u64,
    pub events: Recipient<SessionEvent>,
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
    /// Not waiting any more: a match (or expiry) is already on its way.
    NotWaiting,
}
