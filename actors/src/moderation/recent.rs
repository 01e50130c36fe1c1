//! Match rooms that closed a short while ago: who was in them and their last
//! messages, so a member can still `report` a partner who left (or whom they
//! blocked, which closes the room) and the report still carries evidence. Pure:
//! time is an argument. Bounded by a byte budget over all rooms; past it the
//! oldest rooms are forgotten first.

use std::collections::{HashMap, VecDeque};

use rendezvous_protocol::ChatMessage;

/// Bytes counted per message besides its text (ids, numbers).
const MESSAGE_OVERHEAD: usize = 96;

#[derive(Debug)]
struct Recent {
    members: Vec<String>,
    evidence: Vec<ChatMessage>,
    until_ms: u64,
    bytes: usize,
}

/// Recently closed match rooms, by id.
#[derive(Debug)]
pub struct RecentRooms {
    rooms: HashMap<String, Recent>,
    /// Room ids in the order they were remembered (ends are in that order too, as
    /// every room is kept for the same window).
    order: VecDeque<String>,
    bytes: usize,
    cap_bytes: usize,
}

impl RecentRooms {
    /// Keep at most about `cap_bytes` of members and messages.
    pub fn new(cap_bytes: usize) -> Self {
        Self { rooms: HashMap::new(), order: VecDeque::new(), bytes: 0, cap_bytes }
    }

    /// Remember a room that closed (or that a member left), until `until_ms`. A
    /// room remembered before keeps its earlier members too (a partner who left
    /// with `next` before the room closed) and takes the newer evidence.
    pub fn remember(
        &mut self,
        room: &str,
        mut members: Vec<String>,
        evidence: Vec<ChatMessage>,
        until_ms: u64,
    ) {
        if let Some(old) = self.rooms.get(room) {
            for m in &old.members {
                if !members.contains(m) {
                    members.push(m.clone());
                }
            }
        }
        let bytes = members.iter().map(|m| m.len() + 16).sum::<usize>()
            + evidence.iter().map(|m| m.text.len() + MESSAGE_OVERHEAD).sum::<usize>()
            + room.len();
        if let Some(old) = self.rooms.remove(room) {
            self.bytes -= old.bytes;
            self.order.retain(|r| r != room);
        }
        self.rooms.insert(room.to_owned(), Recent { members, evidence, until_ms, bytes });
        self.order.push_back(room.to_owned());
        self.bytes += bytes;
        while self.bytes > self.cap_bytes {
            if !self.drop_oldest() {
                break;
            }
        }
    }

    fn drop_oldest(&mut self) -> bool {
        let Some(room) = self.order.pop_front() else { return false };
        if let Some(old) = self.rooms.remove(&room) {
            self.bytes -= old.bytes;
        }
        true
    }

    /// The remembered messages of `room` when both users were members of it and
    /// it is still within its window at `now_ms`.
    pub fn evidence(
        &self,
        room: &str,
        reporter: &str,
        reported: &str,
        now_ms: u64,
    ) -> Option<Vec<ChatMessage>> {
        let r = self.rooms.get(room).filter(|r| r.until_ms > now_ms)?;
        let member = |u: &str| r.members.iter().any(|m| m == u);
        (member(reporter) && member(reported)).then(|| r.evidence.clone())
    }

    /// Forget rooms whose window ended.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(first) = self.order.front() {
            match self.rooms.get(first) {
                Some(r) if r.until_ms > now_ms => break,
                _ => {
                    self.drop_oldest();
                }
            }
        }
    }

    /// Rooms remembered now.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, text: &str) -> ChatMessage {
        ChatMessage {
            room_id: "r".into(),
            seq,
            msg_id: format!("m{seq}"),
            sender: "b".into(),
            text: text.into(),
            ts: seq,
        }
    }

    #[test]
    fn only_members_within_the_window_get_the_evidence() {
        let mut recent = RecentRooms::new(1 << 20);
        recent.remember("r1", vec!["a".into(), "b".into()], vec![msg(1, "hi")], 100);
        assert_eq!(recent.evidence("r1", "a", "b", 50).map(|e| e.len()), Some(1));
        assert!(recent.evidence("r1", "a", "c", 50).is_none(), "c was not in the room");
        assert!(recent.evidence("r1", "c", "b", 50).is_none());
        assert!(recent.evidence("r1", "a", "b", 100).is_none(), "the window ended");
        assert!(recent.evidence("r2", "a", "b", 50).is_none());
        recent.expire(100);
        assert!(recent.is_empty());
    }

    #[test]
    fn a_member_who_left_before_the_room_closed_is_still_reportable() {
        let mut recent = RecentRooms::new(1 << 20);
        recent.remember("r1", vec!["a".into(), "b".into()], vec![msg(1, "hi")], 100);
        // b left (`next`); the room closed later with only a.
        recent.remember("r1", vec!["a".into()], vec![msg(1, "hi"), msg(2, "bye")], 200);
        assert_eq!(recent.evidence("r1", "a", "b", 150).map(|e| e.len()), Some(2));
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn the_byte_budget_forgets_the_oldest_rooms() {
        let mut recent = RecentRooms::new(2_000);
        for i in 0..10 {
            let text = "x".repeat(400);
            recent.remember(
                &format!("r{i}"),
                vec!["a".into(), "b".into()],
                vec![msg(1, &text)],
                1_000,
            );
        }
        assert!(recent.len() < 10 && recent.len() >= 3, "kept {}", recent.len());
        assert!(recent.evidence("r9", "a", "b", 0).is_some(), "the newest is kept");
        assert!(recent.evidence("r0", "a", "b", 0).is_none(), "the oldest went first");
    }
}
