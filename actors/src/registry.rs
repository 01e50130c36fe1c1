//! Who is connected to this node: user → the live session's handles. Routes local
//! deliveries without a central actor. Entries are looked up and cloned out; no
//! guard is ever held across an `.await`.

use actix::Recipient;
use dashmap::DashMap;

use crate::ids::UserId;
use crate::outbox::Outbox;
use crate::session::messages::SessionEvent;

/// The handles of one live session.
#[derive(Clone, Debug)]
pub struct SessionEntry {
    /// Distinguishes a user's successive connections (replace-on-reconnect).
    pub session_id: u64,
    pub outbox: Outbox,
    pub events: Recipient<SessionEvent>,
    /// The worker arbiter the session runs on ([`crate::state::current_worker`]),
    /// so a room can be placed beside its members.
    pub worker: Option<usize>,
    /// The client's address (the admin API lists it; an address ban names it).
    pub ip: Option<std::net::IpAddr>,
}

/// Sharded map (DashMap) because every worker thread inserts and removes sessions
/// and every room reads it; a single lock would serialize all of them.
#[derive(Default)]
pub struct Registry {
    map: DashMap<UserId, SessionEntry>,
}

impl Registry {
    /// Register a session; returns the one it replaces, if any.
    pub fn insert(&self, user: UserId, entry: SessionEntry) -> Option<SessionEntry> {
        self.map.insert(user, entry)
    }

    /// Remove the user's entry only if it is still `session_id` (a newer session
    /// may have replaced it). True when removed: the user is now offline here.
    pub fn remove_if_current(&self, user: &UserId, session_id: u64) -> bool {
        self.map.remove_if(user, |_, e| e.session_id == session_id).is_some()
    }

    pub fn get(&self, user: &str) -> Option<SessionEntry> {
        self.map.get(user).map(|e| e.value().clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every user with a session here (a snapshot; the cluster bridge refreshes
    /// their keys in Redis).
    pub fn users(&self) -> Vec<UserId> {
        self.map.iter().map(|e| e.key().clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every live session here, with its user (a snapshot, for the admin API).
    pub fn entries(&self) -> Vec<(UserId, SessionEntry)> {
        self.map.iter().map(|e| (e.key().clone(), e.value().clone())).collect()
    }

    /// Frames queued for all sessions, and the fullest queue.
    pub fn queued_frames(&self) -> (usize, usize) {
        self.map.iter().fold((0, 0), |(sum, max), e| {
            let q = e.value().outbox.queued();
            (sum + q, max.max(q))
        })
    }

    /// Ask every session to close with `code` (drain).
    pub fn close_all(&self, code: u16) {
        for e in self.map.iter() {
            e.value().outbox.close(code);
        }
    }
}
