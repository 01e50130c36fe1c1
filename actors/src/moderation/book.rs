//! The moderation record as a pure state machine: bans, blocks and reports, what a
//! change does to them ([`Book::apply`]) and what is in force at a given time.
//! Time is an argument (milliseconds since the epoch), never read here, so every
//! rule is a unit test of a few lines. No I/O: [`super::Moderation`] persists the
//! [`Snapshot`] to the state file, the Redis bridge stores each [`ModEvent`] under
//! its [`ModEvent::store_key`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use rendezvous_protocol::ChatMessage;
use serde::{Deserialize, Serialize};

/// An operator's ban of a user id (and optionally a client address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub user: String,
    /// Connections from this address are refused too, whoever they claim to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// When the ban ends (ms since the epoch).
    pub until_ms: u64,
    #[serde(default)]
    pub reason: String,
    /// When it was made.
    pub at_ms: u64,
}

/// A user's `block` of another: the two are not matched again until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Who asked.
    pub a: String,
    pub b: String,
    pub until_ms: u64,
}

/// What an operator decided about a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Free text: `dismissed`, `banned`, a note.
    pub outcome: String,
    pub at_ms: u64,
}

/// A `report` with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Unique across nodes: `NODE-MS-N`.
    pub id: String,
    pub reporter: String,
    pub reported: String,
    pub room_id: String,
    #[serde(default)]
    pub reason: String,
    pub at_ms: u64,
    /// When the report is forgotten.
    pub until_ms: u64,
    /// The room's last messages when the report was filed, oldest first.
    #[serde(default)]
    pub evidence: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

/// One change to the moderation record, or one order to carry out. The same value
/// is applied locally, sent to every node (`ClusterEvent::Moderation`) and, for
/// the lasting kinds, stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum ModEvent {
    /// Ban (or re-ban with new terms) a user; their sessions close with 4003.
    Ban(Ban),
    /// Lift a user's ban.
    Unban { user: String },
    /// A block that must outlive the process.
    Block(Block),
    /// A new report, or one resolved (same id: replaces).
    Report(Report),
    /// Close the user's session (4004); nothing is stored.
    Kick { user: String },
    /// Close a room for everyone; nothing is stored.
    CloseRoom { room: String },
}

/// Where a lasting event is stored, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKey {
    /// Store (or replace) under this key until `until_ms`.
    Put { key: String, until_ms: u64 },
    /// Remove this key.
    Remove { key: String },
}

impl ModEvent {
    /// How the event lasts: `None` for orders (kick, close) that are only carried out.
    pub fn store_key(&self) -> Option<StoreKey> {
        match self {
            ModEvent::Ban(b) => Some(StoreKey::Put { key: ban_key(&b.user), until_ms: b.until_ms }),
            ModEvent::Unban { user } => Some(StoreKey::Remove { key: ban_key(user) }),
            ModEvent::Block(b) => {
                Some(StoreKey::Put { key: format!("block:{}\t{}", b.a, b.b), until_ms: b.until_ms })
            }
            ModEvent::Report(r) => {
                Some(StoreKey::Put { key: format!("report:{}", r.id), until_ms: r.until_ms })
            }
            ModEvent::Kick { .. } | ModEvent::CloseRoom { .. } => None,
        }
    }
}

fn ban_key(user: &str) -> String {
    format!("ban:{user}")
}

/// What a node persists of the record (the state file's content).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default)]
    pub bans: Vec<Ban>,
    #[serde(default)]
    pub blocks: Vec<Block>,
    #[serde(default)]
    pub reports: Vec<Report>,
}

impl Snapshot {
    /// The snapshot as the events that rebuild it.
    pub fn into_events(self) -> Vec<ModEvent> {
        let bans = self.bans.into_iter().map(ModEvent::Ban);
        let blocks = self.blocks.into_iter().map(ModEvent::Block);
        let reports = self.reports.into_iter().map(ModEvent::Report);
        bans.chain(blocks).chain(reports).collect()
    }
}

/// Bans, blocks and reports in force. Entries past their end are ignored at once
/// and dropped by [`Book::expire`].
#[derive(Debug, Default)]
pub struct Book {
    bans: HashMap<String, Ban>,
    /// Who asked → whom they block → until when; at most `max_blocks` per asker
    /// (like the avoid list, the earliest-ending go first).
    blocks: HashMap<String, HashMap<String, u64>>,
    max_blocks: usize,
    /// By id; ids start with the filing time's node and ms, so this is roughly
    /// filing order per node. Listing sorts by `at_ms`.
    reports: BTreeMap<String, Report>,
    /// Most reports kept.
    max_reports: usize,
}

impl Book {
    /// An empty record keeping at most `max_reports` reports and `max_blocks`
    /// blocks per user.
    pub fn new(max_reports: usize, max_blocks: usize) -> Self {
        Self { max_reports: max_reports.max(1), max_blocks: max_blocks.max(1), ..Self::default() }
    }

    /// Apply one event at `now_ms`. True when the lasting record changed (the
    /// state file needs writing). Expired entries are refused.
    pub fn apply(&mut self, ev: &ModEvent, now_ms: u64) -> bool {
        match ev {
            ModEvent::Ban(b) => {
                if b.until_ms <= now_ms {
                    return false;
                }
                self.bans.insert(b.user.clone(), b.clone());
                true
            }
            ModEvent::Unban { user } => self.bans.remove(user).is_some(),
            ModEvent::Block(b) => {
                if b.until_ms <= now_ms {
                    return false;
                }
                let mine = self.blocks.entry(b.a.clone()).or_default();
                let until = mine.entry(b.b.clone()).or_default();
                let changed = *until < b.until_ms;
                *until = (*until).max(b.until_ms);
                while mine.len() > self.max_blocks {
                    let first = mine.iter().min_by_key(|(_, &u)| u).map(|(k, _)| k.clone());
                    match first {
                        Some(k) => mine.remove(&k),
                        None => break,
                    };
                }
                changed
            }
            ModEvent::Report(r) => {
                if r.until_ms <= now_ms {
                    return false;
                }
                self.reports.insert(r.id.clone(), r.clone());
                self.cap_reports();
                true
            }
            ModEvent::Kick { .. } | ModEvent::CloseRoom { .. } => false,
        }
    }

    /// Past the cap: drop the oldest resolved reports first, then the oldest.
    fn cap_reports(&mut self) {
        while self.reports.len() > self.max_reports {
            let victim = self
                .reports
                .values()
                .filter(|r| r.resolution.is_some())
                .min_by_key(|r| r.at_ms)
                .or_else(|| self.reports.values().min_by_key(|r| r.at_ms))
                .map(|r| r.id.clone());
            match victim {
                Some(id) => self.reports.remove(&id),
                None => break,
            };
        }
    }

    /// The ban that keeps `user` (or a connection from `ip`) out at `now_ms`.
    pub fn banned(&self, user: &str, ip: Option<IpAddr>, now_ms: u64) -> Option<&Ban> {
        let live = |b: &&Ban| b.until_ms > now_ms;
        self.bans.get(user).filter(live).or_else(|| {
            let ip = ip?;
            self.bans.values().filter(live).find(|b| b.ip == Some(ip))
        })
    }

    /// Bans in force, the longest first.
    pub fn bans(&self, now_ms: u64) -> Vec<Ban> {
        let mut v: Vec<Ban> = self.bans.values().filter(|b| b.until_ms > now_ms).cloned().collect();
        v.sort_by(|a, b| b.until_ms.cmp(&a.until_ms).then(a.user.cmp(&b.user)));
        v
    }

    /// Blocks in force.
    pub fn blocks(&self, now_ms: u64) -> Vec<Block> {
        self.blocks
            .iter()
            .flat_map(|(a, mine)| mine.iter().map(move |(b, &until_ms)| (a, b, until_ms)))
            .filter(|(_, _, until)| *until > now_ms)
            .map(|(a, b, until_ms)| Block { a: a.clone(), b: b.clone(), until_ms })
            .collect()
    }

    /// Reports, newest first; only the open ones when `open_only`.
    pub fn reports(&self, open_only: bool, now_ms: u64) -> Vec<Report> {
        let mut v: Vec<Report> = self
            .reports
            .values()
            .filter(|r| r.until_ms > now_ms && (!open_only || r.resolution.is_none()))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
        v
    }

    pub fn report(&self, id: &str) -> Option<&Report> {
        self.reports.get(id)
    }

    /// Open reports in force.
    pub fn open_reports(&self, now_ms: u64) -> usize {
        self.reports.values().filter(|r| r.until_ms > now_ms && r.resolution.is_none()).count()
    }

    /// Drop what ended; true when anything was dropped.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let blocks =
            |b: &HashMap<String, HashMap<String, u64>>| b.values().map(HashMap::len).sum::<usize>();
        let before = self.bans.len() + blocks(&self.blocks) + self.reports.len();
        self.bans.retain(|_, b| b.until_ms > now_ms);
        for mine in self.blocks.values_mut() {
            mine.retain(|_, until| *until > now_ms);
        }
        self.blocks.retain(|_, mine| !mine.is_empty());
        self.reports.retain(|_, r| r.until_ms > now_ms);
        before != self.bans.len() + blocks(&self.blocks) + self.reports.len()
    }

    /// What is in force, for the state file.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        Snapshot {
            bans: self.bans(now_ms),
            blocks: self.blocks(now_ms),
            reports: self.reports(false, now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(user: &str, ip: Option<&str>, until_ms: u64) -> ModEvent {
        ModEvent::Ban(Ban {
            user: user.into(),
            ip: ip.map(|i| i.parse().expect("ip")),
            until_ms,
            reason: "spam".into(),
            at_ms: 0,
        })
    }

    fn report(id: &str, at_ms: u64, resolved: bool) -> Report {
        Report {
            id: id.into(),
            reporter: "a".into(),
            reported: "b".into(),
            room_id: "r1".into(),
            reason: String::new(),
            at_ms,
            until_ms: 1_000_000,
            evidence: vec![],
            resolution: resolved.then(|| Resolution { outcome: "dismissed".into(), at_ms }),
        }
    }

    #[test]
    fn a_ban_holds_until_it_ends_or_is_lifted() {
        let mut book = Book::new(10, 10);
        assert!(book.apply(&ban("u1", None, 100), 0));
        assert!(book.banned("u1", None, 99).is_some());
        assert!(book.banned("u1", None, 100).is_none(), "ended at until_ms");
        assert!(book.banned("u2", None, 0).is_none());
        assert!(book.apply(&ModEvent::Unban { user: "u1".into() }, 1));
        assert!(book.banned("u1", None, 1).is_none());
        assert!(!book.apply(&ModEvent::Unban { user: "u1".into() }, 1), "nothing to lift");
        assert!(!book.apply(&ban("u3", None, 5), 5), "an ended ban is refused");
    }

    #[test]
    fn an_address_ban_keeps_out_any_user_from_that_address() {
        let mut book = Book::new(10, 10);
        book.apply(&ban("u1", Some("10.0.0.7"), 100), 0);
        let ip = "10.0.0.7".parse().ok();
        assert_eq!(book.banned("someone-else", ip, 50).map(|b| b.user.as_str()), Some("u1"));
        assert!(book.banned("someone-else", "10.0.0.8".parse().ok(), 50).is_none());
        assert!(book.banned("someone-else", ip, 100).is_none());
    }

    #[test]
    fn a_block_keeps_its_latest_end_and_expires() {
        let mut book = Book::new(10, 10);
        let block = |until_ms| ModEvent::Block(Block { a: "a".into(), b: "b".into(), until_ms });
        assert!(book.apply(&block(100), 0));
        assert!(!book.apply(&block(50), 0), "an earlier end changes nothing");
        assert_eq!(book.blocks(0)[0].until_ms, 100);
        assert!(book.blocks(100).is_empty());
        assert!(book.expire(100));
        assert!(!book.expire(100));
    }

    #[test]
    fn a_users_blocks_are_capped_the_earliest_ending_first() {
        let mut book = Book::new(10, 2);
        for (b, until_ms) in [("x", 30), ("y", 10), ("z", 20)] {
            book.apply(&ModEvent::Block(Block { a: "a".into(), b: b.into(), until_ms }), 0);
        }
        let mut kept: Vec<String> = book.blocks(0).into_iter().map(|b| b.b).collect();
        kept.sort();
        assert_eq!(kept, ["x", "z"]);
    }

    #[test]
    fn resolving_replaces_the_report_and_the_cap_drops_resolved_ones_first() {
        let mut book = Book::new(2, 10);
        book.apply(&ModEvent::Report(report("n-1", 1, false)), 0);
        book.apply(&ModEvent::Report(report("n-2", 2, false)), 0);
        assert_eq!(book.open_reports(0), 2);
        book.apply(&ModEvent::Report(report("n-2", 2, true)), 0);
        assert_eq!(book.open_reports(0), 1);
        assert_eq!(book.reports(true, 0)[0].id, "n-1");
        book.apply(&ModEvent::Report(report("n-3", 3, false)), 0);
        let ids: Vec<String> = book.reports(false, 0).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["n-3", "n-1"], "the resolved n-2 went first, newest listed first");
        book.apply(&ModEvent::Report(report("n-4", 4, false)), 0);
        let ids: Vec<String> = book.reports(false, 0).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["n-4", "n-3"], "then the oldest open one");
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_book() {
        let mut book = Book::new(10, 10);
        book.apply(&ban("u1", Some("::1"), 100), 0);
        book.apply(&ModEvent::Block(Block { a: "a".into(), b: "b".into(), until_ms: 90 }), 0);
        book.apply(&ModEvent::Report(report("n-1", 1, false)), 0);
        let snap = book.snapshot(0);
        let json = serde_json::to_string(&snap).expect("json");
        let back: Snapshot = serde_json::from_str(&json).expect("parse");
        let mut again = Book::new(10, 10);
        for ev in back.into_events() {
            again.apply(&ev, 0);
        }
        assert_eq!(again.snapshot(0), snap);
    }

    #[test]
    fn lasting_events_have_store_keys_and_orders_do_not() {
        assert_eq!(
            ban("u1", None, 7).store_key(),
            Some(StoreKey::Put { key: "ban:u1".into(), until_ms: 7 })
        );
        assert_eq!(
            ModEvent::Unban { user: "u1".into() }.store_key(),
            Some(StoreKey::Remove { key: "ban:u1".into() })
        );
        assert_eq!(ModEvent::Kick { user: "u1".into() }.store_key(), None);
        assert_eq!(ModEvent::CloseRoom { room: "r".into() }.store_key(), None);
    }
}
