//! Moderation state of one node: the record of bans, blocks and reports
//! ([`book::Book`], pure), recently closed match rooms kept for reports
//! ([`recent::RecentRooms`], pure), the per-user report limit, and the optional
//! state file that keeps the record across restarts of a single node.
//!
//! What it does not do: reach other nodes or act on sessions and rooms. A change
//! is made through [`crate::state::Shared::moderate`] (apply here, store, tell the
//! other nodes) and carried out by [`crate::admin::enforce`] (close sessions and
//! rooms). In a cluster Redis stores the record (keys with TTLs under the bridge)
//! and a node loads it on every (re)connect; the state file is for single nodes.
//!
//! Enforcement reads the book under a `std::sync::Mutex`: every critical section
//! is a map probe or an insert, never held across an await.

pub mod book;
pub mod recent;

use std::io::Write;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rendezvous_protocol::ChatMessage;

pub use self::book::{Ban, Block, Book, ModEvent, Report, Resolution, Snapshot, StoreKey};
use self::recent::RecentRooms;
use crate::clock::now_ms;
use crate::config::EngineConfig;
use crate::ids::UserId;

/// Bytes of members and messages kept for recently closed rooms (all rooms of the
/// node together).
pub const RECENT_ROOMS_BYTES: usize = 16 << 20;

/// Why the state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read moderation state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("moderation state file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// The node's moderation state. One per engine, in [`crate::state::Shared`].
pub struct Moderation {
    book: Mutex<Book>,
    recent: Mutex<RecentRooms>,
    /// The state file, if any.
    file: Option<PathBuf>,
    /// The record changed since the file was last written.
    dirty: AtomicBool,
    /// `report`s per user per hour.
    limiter: DefaultKeyedRateLimiter<UserId>,
    clock: DefaultClock,
    next_id: AtomicU64,
    node: String,
    window_ms: u64,
    report_ttl_ms: u64,
    evidence_messages: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Moderation {
    pub fn new(cfg: &EngineConfig, clock: DefaultClock) -> Self {
        let per_hour = NonZeroU32::new(cfg.reports_per_hour.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(Duration::from_secs(3600) / per_hour.get())
            .unwrap_or_else(|| Quota::per_hour(per_hour))
            .allow_burst(per_hour);
        Self {
            book: Mutex::new(Book::new(cfg.max_reports, cfg.max_blocks_per_user)),
            recent: Mutex::new(RecentRooms::new(RECENT_ROOMS_BYTES)),
            file: cfg.moderation_state_file.clone(),
            dirty: AtomicBool::new(false),
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            next_id: AtomicU64::new(1),
            node: cfg.node_id.clone(),
            window_ms: cfg.report_window_secs.saturating_mul(1000),
            report_ttl_ms: cfg.report_ttl_secs.saturating_mul(1000),
            evidence_messages: cfg.report_evidence_messages,
        }
    }

    /// How many messages a report keeps.
    pub fn evidence_messages(&self) -> usize {
        self.evidence_messages
    }

    /// The state file's record as events to apply; empty when there is no file
    /// (yet).
    pub fn read_file(&self) -> Result<Vec<ModEvent>, StateFileError> {
        let Some(path) = &self.file else { return Ok(Vec::new()) };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateFileError::Read { path: path.clone(), source }),
        };
        let snap: Snapshot = serde_json::from_str(&text)
            .map_err(|source| StateFileError::Parse { path: path.clone(), source })?;
        Ok(snap.into_events())
    }

    /// Apply one event to the record; true when the lasting record changed.
    pub fn apply(&self, ev: &ModEvent) -> bool {
        let changed = lock(&self.book).apply(ev, now_ms());
        if changed {
            self.dirty.store(true, Ordering::Release);
        }
        changed
    }

    /// The ban keeping `user` (or a connection from `ip`) out now.
    pub fn banned(&self, user: &str, ip: Option<IpAddr>) -> Option<Ban> {
        lock(&self.book).banned(user, ip, now_ms()).cloned()
    }

    pub fn bans(&self) -> Vec<Ban> {
        lock(&self.book).bans(now_ms())
    }

    pub fn reports(&self, open_only: bool) -> Vec<Report> {
        lock(&self.book).reports(open_only, now_ms())
    }

    pub fn report(&self, id: &str) -> Option<Report> {
        lock(&self.book).report(id).cloned()
    }

    pub fn open_reports(&self) -> usize {
        lock(&self.book).open_reports(now_ms())
    }

    /// A match room closed: its members may report each other for the window.
    pub fn room_closed(&self, room: &str, members: Vec<String>, evidence: Vec<ChatMessage>) {
        if self.window_ms == 0 || members.len() < 2 {
            return;
        }
        lock(&self.recent).remember(room, members, evidence, now_ms() + self.window_ms);
    }

    /// Evidence of a closed room both users were in, within the window.
    pub fn recent_evidence(
        &self,
        room: &str,
        reporter: &str,
        reported: &str,
    ) -> Option<Vec<ChatMessage>> {
        lock(&self.recent).evidence(room, reporter, reported, now_ms())
    }

    /// Count one report of `user`; Err(wait) when over `reports_per_hour`.
    pub fn check_report_rate(&self, user: &UserId) -> Result<(), Duration> {
        self.limiter.check_key(user).map_err(|nu| nu.wait_time_from(self.clock.now()))
    }

    /// A new report filed now.
    pub fn new_report(
        &self,
        reporter: &UserId,
        reported: &UserId,
        room: &str,
        reason: String,
        evidence: Vec<ChatMessage>,
    ) -> Report {
        let now = now_ms();
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Report {
            id: format!("{}-{now}-{n}", self.node),
            reporter: reporter.to_string(),
            reported: reported.to_string(),
            room_id: room.to_owned(),
            reason,
            at_ms: now,
            until_ms: now.saturating_add(self.report_ttl_ms),
            evidence,
            resolution: None,
        }
    }

    /// Periodic: drop ended entries, forget closed rooms past their window and
    /// rate-limit state nobody uses.
    pub fn sweep(&self) {
        let now = now_ms();
        if lock(&self.book).expire(now) {
            self.dirty.store(true, Ordering::Release);
        }
        lock(&self.recent).expire(now);
        self.limiter.retain_recent();
    }

    /// Write the state file if the record changed since the last write. Atomic: a
    /// temporary file beside it is written and synced, then renamed over it, so a
    /// crash leaves the old file or the new one, never half of one.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let snap = lock(&self.book).snapshot(now_ms());
        let result = write_atomically(path, &snap);
        if result.is_err() {
            // Try again at the next flush.
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

fn write_atomically(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_written_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("rdv-mod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        let cfg =
            EngineConfig { moderation_state_file: Some(path.clone()), ..EngineConfig::default() };
        let m = Moderation::new(&cfg, DefaultClock::default());
        assert!(m.read_file().expect("no file yet is fine").is_empty());
        let until_ms = now_ms() + 60_000;
        m.apply(&ModEvent::Block(Block { a: "a".into(), b: "b".into(), until_ms }));
        m.flush().expect("write");
        assert!(!path.with_extension("json.tmp").exists(), "the temporary file was renamed");
        let again = Moderation::new(&cfg, DefaultClock::default());
        let events = again.read_file().expect("read");
        assert_eq!(events, vec![ModEvent::Block(Block { a: "a".into(), b: "b".into(), until_ms })]);
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(again.read_file(), Err(StateFileError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_are_rate_limited_per_user() {
        let cfg = EngineConfig { reports_per_hour: 2, ..EngineConfig::default() };
        let m = Moderation::new(&cfg, DefaultClock::default());
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        assert!(m.check_report_rate(&a).is_ok());
        assert!(m.check_report_rate(&a).is_ok());
        let wait = m.check_report_rate(&a).expect_err("third in the hour");
        assert!(wait > Duration::from_secs(60), "{wait:?}");
        assert!(m.check_report_rate(&b).is_ok(), "per user");
    }
}
