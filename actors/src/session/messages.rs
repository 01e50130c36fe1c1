//! Inbox of a session actor: outcomes of its search and the end of its writer.

use actix::Message;

use crate::bridge::Ticket;

/// MatchShard / RoomSupervisor → Session: how the session's search ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum SessionEvent {
    /// The search `ticket` was matched; the room already exists (and `match_found`
    /// is queued on the session's outbox right after this).
    Matched { ticket: Ticket },
    /// The search `ticket` waited its longest without a match.
    SearchExpired { ticket: Ticket },
    /// The search `ticket` was cancelled while a match for it was being claimed,
    /// and that match fell through (the cancel had been answered `NotWaiting`).
    SearchCancelled { ticket: Ticket },
}

/// Writer task → Session: the socket's write side is finished (closed with `code`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WriterClosed {
    pub code: u16,
}
