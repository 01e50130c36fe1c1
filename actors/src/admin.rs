//! What operators can do, and how a node carries it out. [`Admin`] is the handle
//! the server's admin API holds: it lists what this node serves (sessions, rooms)
//! and makes changes (kick, ban, unban, close a room, resolve a report) through the
//! one path every moderation change takes: [`Shared::moderate`] (record, store,
//! tell every node), then [`enforce`] here. Other nodes run [`enforce`] when the
//! change reaches them (`crate::inbound`), so a ban closes the user's session
//! wherever they are connected.
//!
//! Lists are this node's: each node's admin API shows its own sessions and rooms.
//! Bans and reports are the cluster's (every node holds the whole record).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rendezvous_protocol::close;
use serde::Serialize;

use crate::clock::now_ms;
use crate::ids::{RoomId, UserId};
use crate::moderation::{Ban, ModEvent, Report, Resolution};
use crate::rooms::messages::CloseRoom;
use crate::rooms::Rooms;
use crate::state::Shared;

/// Carry out a moderation event on this node: close the sessions and rooms it
/// names, keep a lasting block's pair apart. The record itself was already
/// updated ([`crate::moderation::Moderation::apply`]).
pub fn enforce(shared: &Shared, rooms: &Rooms, ev: &ModEvent) {
    match ev {
        ModEvent::Ban(ban) => {
            if ban.until_ms <= now_ms() {
                return;
            }
            if let Some(entry) = shared.registry.get(&ban.user) {
                tracing::info!(user = %ban.user, "closing a banned user's session");
                close_match_rooms(shared, rooms, &UserId::from(ban.user.as_str()), "banned");
                entry.outbox.close(close::BANNED);
            }
            if let Some(ip) = ban.ip {
                for (user, entry) in shared.registry.entries() {
                    if entry.ip == Some(ip) {
                        close_match_rooms(shared, rooms, &user, "banned");
                        entry.outbox.close(close::BANNED);
                    }
                }
            }
        }
        ModEvent::Kick { user } => {
            if let Some(entry) = shared.registry.get(user) {
                tracing::info!(user = %user, "kicking a user");
                entry.outbox.close(close::KICKED);
            }
        }
        ModEvent::CloseRoom { room } => {
            if let Some(addr) = rooms.directory.get(room.as_str()) {
                addr.do_send(CloseRoom { reason: "closed_by_operator", with: None });
            }
        }
        ModEvent::Block(b) => {
            let ttl = Duration::from_millis(b.until_ms.saturating_sub(now_ms()));
            if !ttl.is_zero() {
                shared.avoid.add(&UserId::from(b.a.as_str()), &UserId::from(b.b.as_str()), ttl);
            }
        }
        ModEvent::Unban { .. } | ModEvent::Report(_) => {}
    }
}

/// Close the match rooms `user` holds a seat in on this node (their partners are
/// told `room_closed` with `reason`).
fn close_match_rooms(shared: &Shared, rooms: &Rooms, user: &UserId, reason: &'static str) {
    for room_id in shared.rooms_of(user) {
        if room_id.is_public() {
            continue;
        }
        if let Some(room) = rooms.directory.get(&room_id) {
            room.do_send(CloseRoom { reason, with: None });
        }
    }
}

/// One live session, as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub user_id: String,
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    pub rooms: Vec<String>,
    pub queued_frames: usize,
}

/// One room open on this node.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    pub room_id: String,
    pub public: bool,
    /// Members with a seat on this node (remote members of a replica are not listed).
    pub members: Vec<String>,
}

/// Why an admin action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
}

/// The operators' handle on one engine. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    rooms: Rooms,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, rooms: Rooms) -> Self {
        Self { shared, rooms }
    }

    /// Record `ev` everywhere and carry it out here.
    fn act(&self, action: &'static str, ev: ModEvent) {
        tracing::info!(action, event = ?ev, "moderation action");
        metrics::counter!(crate::metrics::MODERATION_ACTIONS_TOTAL, "action" => action)
            .increment(1);
        self.shared.moderate(&ev);
        enforce(&self.shared, &self.rooms, &ev);
    }

    /// Sessions on this node whose user id contains `find` (all when empty), by
    /// user id, at most `limit`.
    pub fn sessions(&self, find: &str, limit: usize) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self
            .shared
            .registry
            .entries()
            .into_iter()
            .filter(|(user, _)| find.is_empty() || user.as_str().contains(find))
            .map(|(user, e)| SessionInfo {
                rooms: self.shared.rooms_of(&user).iter().map(|r| r.to_string()).collect(),
                user_id: user.to_string(),
                session_id: format!("s{}", e.session_id),
                ip: e.ip,
                queued_frames: e.outbox.queued(),
            })
            .collect();
        all.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        all.truncate(limit);
        all
    }

    /// Rooms open on this node whose id contains `find`, with their local members.
    pub fn rooms(&self, find: &str, limit: usize) -> Vec<RoomInfo> {
        let mut members: std::collections::HashMap<RoomId, Vec<String>> = Default::default();
        for e in self.shared.memberships.iter() {
            for room in e.value() {
                members.entry(room.clone()).or_default().push(e.key().to_string());
            }
        }
        let mut all: Vec<RoomInfo> = self
            .rooms
            .directory
            .ids()
            .into_iter()
            .filter(|r| find.is_empty() || r.as_str().contains(find))
            .map(|r| {
                let mut m = members.remove(&r).unwrap_or_default();
                m.sort();
                RoomInfo { public: r.is_public(), room_id: r.to_string(), members: m }
            })
            .collect();
        all.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        all.truncate(limit);
        all
    }

    /// Close the user's session wherever it is (4004); they may reconnect.
    pub fn kick(&self, user: &str) -> Result<(), AdminError> {
        let user = check_user(user)?;
        self.act("kick", ModEvent::Kick { user });
        Ok(())
    }

    /// Ban `user` (and connections from `ip`) for `duration`: their session closes
    /// with 4003 on every node, and connecting or searching is refused until then.
    pub fn ban(
        &self,
        user: &str,
        ip: Option<IpAddr>,
        duration: Duration,
        reason: String,
    ) -> Result<Ban, AdminError> {
        let user = check_user(user)?;
        if duration.is_zero() {
            return Err(AdminError::BadRequest("duration_secs must be above 0".into()));
        }
        let now = now_ms();
        let ban = Ban {
            user,
            ip,
            until_ms: now.saturating_add(duration.as_millis() as u64),
            reason,
            at_ms: now,
        };
        self.act("ban", ModEvent::Ban(ban.clone()));
        Ok(ban)
    }

    /// Lift a ban.
    pub fn unban(&self, user: &str) -> Result<(), AdminError> {
        let user = check_user(user)?;
        if self.shared.moderation.banned(&user, None).is_none() {
            return Err(AdminError::NotFound(format!("ban of `{user}`")));
        }
        self.act("unban", ModEvent::Unban { user });
        Ok(())
    }

    pub fn bans(&self) -> Vec<Ban> {
        self.shared.moderation.bans()
    }

    /// Close a room for everyone (`room_closed`, reason `closed_by_operator`), on
    /// whichever node holds it.
    pub fn close_room(&self, room: &str) -> Result<(), AdminError> {
        if room.is_empty() || room.len() > 256 {
            return Err(AdminError::BadRequest("room id must be 1 to 256 bytes".into()));
        }
        self.act("close_room", ModEvent::CloseRoom { room: room.to_owned() });
        Ok(())
    }

    pub fn reports(&self, open_only: bool) -> Vec<Report> {
        self.shared.moderation.reports(open_only)
    }

    /// Mark a report resolved with `outcome`.
    pub fn resolve(&self, id: &str, outcome: String) -> Result<Report, AdminError> {
        let Some(mut report) = self.shared.moderation.report(id) else {
            return Err(AdminError::NotFound(format!("report `{id}`")));
        };
        let outcome = if outcome.trim().is_empty() { "resolved".to_owned() } else { outcome };
        report.resolution = Some(Resolution { outcome, at_ms: now_ms() });
        self.act("resolve", ModEvent::Report(report.clone()));
        Ok(report)
    }

    /// Open reports now.
    pub fn open_reports(&self) -> usize {
        self.shared.moderation.open_reports()
    }
}

fn check_user(user: &str) -> Result<String, AdminError> {
    let user = user.trim();
    if user.is_empty() || user.len() > 256 {
        return Err(AdminError::BadRequest("user id must be 1 to 256 bytes".into()));
    }
    Ok(user.to_owned())
}
