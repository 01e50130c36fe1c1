//! A room as plain data: members, the per-room sequence and the bounded history
//! ring. The actor around it only translates messages and fans out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rendezvous_protocol::ChatMessage;

use super::dedup::SentIds;
use crate::ids::{RoomId, UserId};
use crate::outbox::Outbox;

/// Match rooms close when one member is left; public rooms when empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    Match,
    Public,
}

/// One seat in a room.
#[derive(Debug)]
pub struct Member {
    pub user: UserId,
    /// Node the member is connected to, when it is another node (cluster rooms);
    /// `None` for members of this node.
    pub node: Option<Arc<str>>,
    /// Session that holds the seat (a newer session takes it over).
    pub session_id: u64,
    /// Where to deliver; `None` while the user is offline (grace period).
    pub outbox: Option<Outbox>,
    pub offline_since: Option<Instant>,
}

/// Members, sequence and history of one room.
#[derive(Debug)]
pub struct RoomState {
    pub id: RoomId,
    pub kind: RoomKind,
    pub members: Vec<Member>,
    /// Last assigned seq; the next message gets `last_seq + 1` (starts at 1).
    pub last_seq: u64,
    history: VecDeque<Arc<ChatMessage>>,
    history_cap: usize,
    /// Most bytes of text the ring holds (`history_bytes`); the oldest drop out
    /// first, but the newest message always stays.
    history_bytes_cap: usize,
    /// Bytes of text in the ring now.
    history_bytes: usize,
    /// `client_msg_id`s stored recently, for duplicate sends.
    pub sent: SentIds,
}

impl RoomState {
    /// An empty room keeping at most `history_cap` messages and `history_bytes`
    /// bytes of their text.
    pub fn new(id: RoomId, kind: RoomKind, history_cap: usize, history_bytes: usize) -> Self {
        Self {
            id,
            kind,
            members: Vec::new(),
            last_seq: 0,
            history: VecDeque::new(),
            history_cap,
            history_bytes_cap: history_bytes,
            history_bytes: 0,
            sent: SentIds::new(0, 0),
        }
    }

    /// Remember `client_msg_id`s for `window_ms`, at most `cap` (see [`SentIds`]).
    pub fn remembering_ids(mut self, window_ms: u64, cap: usize) -> Self {
        self.sent = SentIds::new(window_ms, cap);
        self
    }

    /// Push onto the ring, dropping the oldest messages past either bound.
    fn keep(&mut self, msg: Arc<ChatMessage>) {
        self.history_bytes += msg.text.len();
        self.history.push_back(msg);
        while self.history.len() > 1
            && (self.history.len() > self.history_cap
                || self.history_bytes > self.history_bytes_cap)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.text.len();
            }
        }
    }

    /// Bytes of message text held in the ring.
    pub fn history_text_bytes(&self) -> usize {
        self.history_bytes
    }

    pub fn member(&self, user: &UserId) -> Option<&Member> {
        self.members.iter().find(|m| &m.user == user)
    }

    pub fn member_mut(&mut self, user: &UserId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &m.user == user)
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.member(user).is_some()
    }

    /// Add or refresh a seat. True when the user was not a member before.
    pub fn seat(&mut self, user: UserId, session_id: u64, outbox: Option<Outbox>) -> bool {
        if let Some(m) = self.member_mut(&user) {
            m.node = None;
            m.session_id = session_id;
            m.offline_since = if outbox.is_some() { None } else { Some(Instant::now()) };
            m.outbox = outbox;
            return false;
        }
        let offline_since = if outbox.is_some() { None } else { Some(Instant::now()) };
        self.members.push(Member { user, node: None, session_id, outbox, offline_since });
        true
    }

    /// Add or refresh the seat of a member connected to another node. True when
    /// the user was not a member before.
    pub fn seat_remote(&mut self, user: UserId, node: Arc<str>) -> bool {
        if let Some(m) = self.member_mut(&user) {
            m.node = Some(node);
            m.outbox = None;
            m.offline_since = None;
            return false;
        }
        self.members.push(Member {
            user,
            node: Some(node),
            session_id: 0,
            outbox: None,
            offline_since: None,
        });
        true
    }

    /// Members connected to this node.
    pub fn has_local_members(&self) -> bool {
        self.members.iter().any(|m| m.node.is_none())
    }

    /// Members connected to other nodes.
    pub fn has_remote_members(&self) -> bool {
        self.members.iter().any(|m| m.node.is_some())
    }

    /// Store a message whose `seq` was assigned elsewhere (the cluster), the next
    /// one after `last_seq`.
    pub fn push_stored(&mut self, msg: ChatMessage) -> Arc<ChatMessage> {
        self.last_seq = msg.seq;
        let msg = Arc::new(msg);
        self.keep(msg.clone());
        msg
    }

    /// Every message held in the ring, oldest first.
    pub fn held_messages(&self) -> Vec<ChatMessage> {
        self.history.iter().map(|m| (**m).clone()).collect()
    }

    /// Remove a seat. True when the user was a member.
    pub fn unseat(&mut self, user: &UserId) -> bool {
        let before = self.members.len();
        self.members.retain(|m| &m.user != user);
        before != self.members.len()
    }

    /// Store a message: assign the next seq and push it into the ring.
    pub fn append(
        &mut self,
        msg_id: String,
        sender: &UserId,
        text: String,
        ts: u64,
    ) -> Arc<ChatMessage> {
        self.append_draft(ChatMessage {
            room_id: self.id.to_string(),
            seq: 0,
            msg_id,
            sender: sender.to_string(),
            text,
            ts,
        })
    }

    /// Store a message written out already: assign it the next seq and push it
    /// into the ring.
    pub fn append_draft(&mut self, mut msg: ChatMessage) -> Arc<ChatMessage> {
        self.last_seq += 1;
        msg.seq = self.last_seq;
        let msg = Arc::new(msg);
        self.keep(msg.clone());
        msg
    }

    /// Up to `limit` stored messages with `seq > after_seq`, oldest first.
    pub fn history_after(&self, after_seq: u64, limit: usize) -> Vec<ChatMessage> {
        // The ring holds consecutive seqs, so the start index is arithmetic.
        let first = match self.history.front() {
            Some(m) => m.seq,
            None => return Vec::new(),
        };
        let skip = after_seq.saturating_sub(first - 1) as usize;
        self.history.iter().skip(skip).take(limit).map(|m| (**m).clone()).collect()
    }

    /// The oldest seq the ring still holds; `last_seq + 1` when it holds none.
    /// A client that asks for `after_seq < first_held_seq() - 1` lost the
    /// messages in between (trimmed by `history_len` / `history_bytes`).
    pub fn first_held_seq(&self) -> u64 {
        self.history.front().map_or(self.last_seq + 1, |m| m.seq)
    }

    pub fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.user.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_gap_free_and_history_is_a_ring() {
        let mut r = RoomState::new(RoomId::from("r1"), RoomKind::Match, 3, 1 << 20);
        let u = UserId::from("u");
        for i in 1..=5u64 {
            assert_eq!(r.append(format!("m{i}"), &u, format!("t{i}"), i).seq, i);
        }
        let seqs = |v: Vec<ChatMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(r.history_after(0, 10)), [3, 4, 5], "ring keeps the newest 3");
        assert_eq!(seqs(r.history_after(3, 10)), [4, 5]);
        assert_eq!(seqs(r.history_after(3, 1)), [4]);
        assert!(r.history_after(5, 10).is_empty());
        assert!(r.history_after(99, 10).is_empty());
        assert_eq!(r.first_held_seq(), 3, "1 and 2 were trimmed");
    }

    #[test]
    fn first_held_seq_of_an_empty_room_is_past_its_last() {
        let mut r = RoomState::new(RoomId::from("r1"), RoomKind::Match, 3, 1 << 20);
        assert_eq!(r.first_held_seq(), 1, "nothing stored, nothing lost");
        r.append("m1".into(), &UserId::from("u"), "t".into(), 1);
        assert_eq!(r.first_held_seq(), 1);
    }

    #[test]
    fn history_drops_the_oldest_past_its_bytes() {
        let mut r = RoomState::new(RoomId::from("r1"), RoomKind::Match, 100, 1_000);
        let u = UserId::from("u");
        for i in 1..=30u64 {
            r.append(format!("m{i}"), &u, "x".repeat(100), i);
        }
        let held = r.history_after(0, 100);
        assert_eq!(held.iter().map(|m| m.seq).collect::<Vec<_>>(), (21..=30).collect::<Vec<_>>());
        assert_eq!(r.history_text_bytes(), 1_000);
        // One message over the whole bound replaces everything but is itself kept.
        r.append("big".into(), &u, "y".repeat(5_000), 31);
        assert_eq!(r.history_after(0, 100).iter().map(|m| m.seq).collect::<Vec<_>>(), [31]);
        r.append("small".into(), &u, "z".into(), 32);
        assert_eq!(r.history_after(0, 100).iter().map(|m| m.seq).collect::<Vec<_>>(), [32]);
        assert_eq!(r.history_text_bytes(), 1);
    }

    #[test]
    fn seats_are_unique_per_user() {
        let mut r = RoomState::new(RoomId::from("pub:x"), RoomKind::Public, 10, 1 << 20);
        assert!(r.seat(UserId::from("a"), 1, None));
        assert!(!r.seat(UserId::from("a"), 2, None));
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.members[0].session_id, 2);
        assert!(r.unseat(&UserId::from("a")));
        assert!(!r.unseat(&UserId::from("a")));
    }
}
